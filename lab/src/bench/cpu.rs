//! CPU time per component of a scenario (workers, PostgreSQL, Redis, the API, the bench
//! itself), read from `/proc`.

use std::time::Duration;

use super::{BenchEnv, WorkerProcess};

/// CPU time (user + system) per component, read from `/proc`: where the time of a scenario
/// goes, immune to how busy the rest of the machine is.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cpu {
    pub workers: Duration,
    /// Backends connected to the scenario's database.
    pub postgres: Duration,
    pub redis: Duration,
    /// Threads of this process named `bench-api` (the in-process API's runtime).
    pub api: Duration,
    /// This process without the API threads (load generator, polling).
    pub bench: Duration,
    /// Service processes of the scenario (`offboard api`, `offboard serve`), apart from workers.
    pub service: Duration,
    /// Other load generators (`wrk`), sampled by the caller.
    pub wrk: Duration,
}

impl Cpu {
    /// A snapshot now. Backends are found by the database name, so the pools must be open.
    pub async fn sample(env: &BenchEnv, workers: &[&WorkerProcess]) -> anyhow::Result<Self> {
        Self::sample_with(env, workers, &[]).await
    }

    /// [`Cpu::sample`], with service processes (`offboard api` or `serve`) counted apart.
    pub async fn sample_with(
        env: &BenchEnv,
        workers: &[&WorkerProcess],
        services: &[&WorkerProcess],
    ) -> anyhow::Result<Self> {
        let backends: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(&env.pool)
        .await?;
        let mut redis = env.queues.connection();
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut redis).await?;
        let redis_pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim);
        let (mut api, mut all) = (Duration::ZERO, Duration::ZERO);
        for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
            let path = task.path();
            let time = cpu_of(path.join("stat")).unwrap_or_default();
            all += time;
            if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "bench-api") {
                api += time;
            }
        }
        Ok(Self {
            workers: workers.iter().filter_map(|w| cpu_of(format!("/proc/{}/stat", w.pid))).sum(),
            postgres: backends.iter().filter_map(|pid| cpu_of(format!("/proc/{pid}/stat"))).sum(),
            redis: redis_pid
                .and_then(|pid| cpu_of(format!("/proc/{pid}/stat")))
                .unwrap_or_default(),
            api,
            bench: all.saturating_sub(api),
            service: services.iter().filter_map(|w| cpu_of(format!("/proc/{}/stat", w.pid))).sum(),
            wrk: Duration::ZERO,
        })
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            workers: self.workers.saturating_sub(earlier.workers),
            // Backends that exited in between are missed; ones that started are whole.
            postgres: self.postgres.saturating_sub(earlier.postgres),
            redis: self.redis.saturating_sub(earlier.redis),
            api: self.api.saturating_sub(earlier.api),
            bench: self.bench.saturating_sub(earlier.bench),
            service: self.service.saturating_sub(earlier.service),
            wrk: self.wrk.saturating_sub(earlier.wrk),
        }
    }

    /// `cpu <component>: <ms> ms/<unit>` lines for the components that did something.
    pub fn report(&self, per: f64, unit: &str) {
        self.report_for("", per, unit)
    }

    /// [`Cpu::report`], the lines named `<name> cpu <component>` (`cpu …` when `name` is empty).
    pub fn report_for(&self, name: &str, per: f64, unit: &str) {
        let prefix = if name.is_empty() { "cpu".to_string() } else { format!("{name} cpu") };
        let line = |component: &str, d: Duration| {
            if !d.is_zero() {
                println!(
                    "{prefix} {component}: {:.3} ms/{unit}",
                    d.as_secs_f64() * 1000.0 / per.max(1.0)
                );
            }
        };
        line("postgres", self.postgres);
        line("workers", self.workers);
        line("api", self.api);
        line("redis", self.redis);
        line("bench", self.bench);
        line("service process", self.service);
        line("wrk", self.wrk);
    }
}

/// User + system time of a process or thread, from its `stat` file.
pub(crate) fn cpu_of(stat: impl AsRef<std::path::Path>) -> Option<Duration> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Clock ticks per second of `/proc` times (USER_HZ): 100 on every mainstream Linux.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}
