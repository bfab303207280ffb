//! `offboard-lab bench <scenario>`: throughput figures of the whole service on this machine,
//! each printed next to a baseline measured in the same run, so runs can be compared on a
//! noisy machine by their ratios.
//!
//! Every scenario creates its own database (`offboard_bench_<scenario>` on the server of
//! `DATABASE_URL`) and its own Redis key prefix, and removes both when it ends, so it never
//! touches a developer's data. Workers run as child processes (`offboard worker`), so their
//! peak resident memory can be read from `/proc`.
//!
//! Output lines are `<name>: <value> <unit>`; lines starting with `#` describe the setup.

mod enqueue;
mod journal;
mod layoff;
mod outside;
mod reassign;
mod remote;
mod steps;
mod webhooks;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sqlx::{Connection, Executor, PgPool, postgres::PgConnectOptions};
use tokio::sync::Notify;

use offboard::{api::AppState, app, config::Settings, ledger, queue::Queues, shutdown::Shutdown};

/// What `offboard-lab bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// HTTP enqueue throughput and latency; baselines `/healthz` and the raw transaction.
    Enqueue,
    /// 1,000 users of a 2,000-user company offboarded at once; fairness; 2 workers vs 1.
    Layoff,
    /// No-op steps through the whole path; baseline raw apalis-redis tasks.
    Steps,
    /// Reassigning 200,000 of 1,000,000 items; baseline one raw UPDATE.
    Reassign,
    /// Webhook deliveries to a receiver answering in 50 ms; baseline plain POSTs.
    Webhooks,
    /// A layoff whose steps revoke 3 grants and call 2 app vendors per user, providers
    /// answering in 100 ms vs at once; fairness while one vendor hangs.
    Outside,
    /// Every scenario, one after the other.
    All,
}

/// Knobs for a quicker (smaller) run while developing; figures are only comparable at 1.0.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Multiplies data sizes and durations.
    pub scale: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { scale: 1.0 }
    }
}

impl BenchOptions {
    /// `n` scaled, at least `min`.
    pub(crate) fn scaled(&self, n: usize, min: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(min)
    }

    pub(crate) fn scaled_duration(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale.clamp(0.1, 1.0))
    }
}

pub async fn run(
    settings: &Settings,
    scenario: Scenario,
    options: BenchOptions,
) -> anyhow::Result<()> {
    print_machine(settings).await?;
    if options.scale != 1.0 {
        println!("# scale {} (figures are comparable only at scale 1)", options.scale);
    }
    let all = [
        Scenario::Reassign,
        Scenario::Enqueue,
        Scenario::Layoff,
        Scenario::Steps,
        Scenario::Webhooks,
        Scenario::Outside,
    ];
    let chosen: Vec<Scenario> =
        if scenario == Scenario::All { all.to_vec() } else { vec![scenario] };
    let started = Instant::now();
    for scenario in chosen {
        let began = Instant::now();
        println!("# load average before {scenario:?}: {}", load_average());
        match scenario {
            Scenario::Reassign => reassign::run(settings, &options).await?,
            Scenario::Enqueue => enqueue::run(settings, &options).await?,
            Scenario::Layoff => layoff::run(settings, &options).await?,
            Scenario::Steps => steps::run(settings, &options).await?,
            Scenario::Webhooks => webhooks::run(settings, &options).await?,
            Scenario::Outside => outside::run(settings, &options).await?,
            Scenario::All => unreachable!("expanded above"),
        }
        println!(
            "# {scenario:?} took {:.0} s; load average after: {}",
            began.elapsed().as_secs_f64(),
            load_average()
        );
    }
    if scenario == Scenario::All {
        println!("# bench all took {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The machine, once per invocation: figures mean little without it.
async fn print_machine(settings: &Settings) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let options = PgConnectOptions::from_str(&settings.database_url)
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let mut conn = sqlx::PgConnection::connect_with(&options.database("postgres"))
        .await
        .context("cannot reach PostgreSQL")?;
    let pg: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
    let (max_conn, sync_commit): (String, String) = sqlx::query_as(
        "SELECT current_setting('max_connections'), current_setting('synchronous_commit')",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await.ok();
    let queues = Queues::connect(&settings.redis_url, "offboard-bench").await?;
    let mut redis = queues.connection();
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut redis).await?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    println!(
        "# machine: {cores} cores ({model}), {:.1} GiB RAM; PostgreSQL {pg} (max_connections {max_conn}, synchronous_commit {sync_commit}); Redis {redis_version}; all on loopback",
        ram_kib as f64 / 1024.0 / 1024.0
    );
    Ok(())
}

/// The 1, 5 and 15 minute load averages: other work on a shared machine shows here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One scenario's own database and Redis prefix, removed again by [`BenchEnv::teardown`].
pub(crate) struct BenchEnv {
    /// Settings pointing at the bench database and prefix.
    pub settings: Settings,
    pub pool: PgPool,
    pub queues: Queues,
    server: PgConnectOptions,
    database: String,
}

impl BenchEnv {
    pub async fn create(base: &Settings, scenario: &str) -> anyhow::Result<Self> {
        let database = format!("offboard_bench_{scenario}");
        let server = PgConnectOptions::from_str(&base.database_url)
            .context("DATABASE_URL is not a PostgreSQL URL")?
            .database("postgres");
        // A run that crashed may have left its database behind.
        drop_database(&server, &database).await?;
        let mut settings = base.clone();
        settings.database_url = with_database(&base.database_url, &database);
        settings.queue_prefix = format!(
            "offboard-bench-{scenario}-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        );
        settings.faults = Vec::new();
        let pool = ledger::connect_and_migrate(&settings.database_url, 8).await?;
        let queues = Queues::connect(&settings.redis_url, &settings.queue_prefix).await?;
        Ok(Self { settings, pool, queues, server, database })
    }

    /// Drops the database and deletes the prefix's Redis keys. Errors are reported, not
    /// returned: teardown runs after a failed scenario too.
    pub async fn teardown(self) {
        self.pool.close().await;
        if let Err(e) = drop_database(&self.server, &self.database).await {
            eprintln!("bench: could not drop database {}: {e:#}", self.database);
        }
        if let Err(e) = delete_redis_keys(&self.queues).await {
            eprintln!("bench: could not delete Redis keys {}:*: {e:#}", self.queues.prefix());
        }
    }
}

async fn drop_database(server: &PgConnectOptions, database: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect_with(server)
        .await
        .context("cannot connect to the postgres database")?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            database.replace('"', "\"\"")
        )))
        .await
        .with_context(|| format!("DROP DATABASE {database}"))?;
    admin.close().await.ok();
    Ok(())
}

/// The same URL naming another database.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

/// Deletes every key under the prefix (SCAN, never KEYS or FLUSH: Redis is shared) and the
/// prefix's entries in apalis' global queue list.
pub(crate) async fn delete_redis_keys(queues: &Queues) -> anyhow::Result<u64> {
    let mut conn = queues.connection();
    let pattern = format!("{}:*", queues.prefix());
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len() as u64;
            redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let members: Vec<String> =
        ["steps", "purges"].iter().map(|q| format!("{}:{q}:workers", queues.prefix())).collect();
    redis::cmd("ZREM")
        .arg("core:apalis:queues:list")
        .arg(&members)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(deleted)
}

/// An `offboard worker` child process on the bench database and prefix.
pub(crate) struct WorkerProcess {
    child: tokio::process::Child,
    pub pid: u32,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `offboard-lab worker` with the scenario's settings. Variables of the parent's
    /// environment pass through (so `OFFBOARD_WORKER_CONCURRENCY` etc. apply), except the
    /// database, prefix and fault injection.
    pub fn spawn(env: &BenchEnv, label: &str) -> anyhow::Result<Self> {
        Self::spawn_with(env, label, &[])
    }

    /// As [`WorkerProcess::spawn`], with more variables set for the worker.
    pub fn spawn_with(env: &BenchEnv, label: &str, vars: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::spawn_command(env, "worker", label, vars)
    }

    /// A service process of this binary: `worker`, `api` (what `offboard api` runs) or
    /// `serve` (what `offboard serve` runs), with the scenario's settings and `vars`.
    pub fn spawn_command(
        env: &BenchEnv,
        subcommand: &str,
        label: &str,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the offboard binary")?;
        let log = std::env::temp_dir().join(format!("{}-{label}.log", env.settings.queue_prefix));
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = tokio::process::Command::new(exe);
        command
            .arg(subcommand)
            .env("DATABASE_URL", &env.settings.database_url)
            .env("REDIS_URL", &env.settings.redis_url)
            .env("OFFBOARD_QUEUE_PREFIX", &env.settings.queue_prefix)
            .env_remove("OFFBOARD_FAULTS")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let child =
            command.spawn().with_context(|| format!("cannot start offboard {subcommand}"))?;
        let pid = child.id().context("worker exited at once")?;
        Ok(Self { child, pid, log })
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss_of(&format!("/proc/{}/status", self.pid))
    }

    /// SIGTERM, then waits for the graceful stop; returns the peak RSS read just before.
    pub async fn stop(mut self) -> anyhow::Result<u64> {
        let rss = self.peak_rss().unwrap_or(0);
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("worker exited early ({status}); see {}", self.log.display());
        }
        // std has no signal API and unsafe code is forbidden here: ask kill(1).
        let _ = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(&self.log);
        Ok(rss)
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("worker exited ({status}); see {}", self.log.display());
        }
        Ok(())
    }

    /// Waits (polling, 60 s at most: it migrates first) until the process's API at `addr`
    /// answers `/healthz` with 200.
    pub async fn wait_for_api(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let client = http_client(1)?;
        let url = format!("http://{addr}/healthz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the API at {addr} did not answer within 60 s; see {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A loopback address with a port free a moment ago, for a service process to bind.
pub(crate) fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Waits until `n` worker processes have registered their step worker with Redis.
pub(crate) async fn wait_for_workers(
    env: &BenchEnv,
    workers: &mut [WorkerProcess],
) -> anyhow::Result<()> {
    let key = format!("{}:steps:workers", env.queues.prefix());
    let mut conn = env.queues.connection();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for w in workers.iter_mut() {
            w.check_alive()?;
        }
        let registered: usize = redis::cmd("ZCARD").arg(&key).query_async(&mut conn).await?;
        if registered >= workers.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("workers did not register with Redis within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn peak_rss_of(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

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

/// The API in this process, on its own runtime (2 threads), so the load generator on the
/// main runtime does not share its scheduler.
pub(crate) struct ApiServer {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl ApiServer {
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new().name("bench-api".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bench-api")
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                // The pool and Redis connection belong to this runtime's reactor.
                let started = async {
                    let pool =
                        ledger::connect_and_migrate(&settings.database_url, settings.db_pool_size)
                            .await?;
                    let queues =
                        Queues::connect(&settings.redis_url, &settings.queue_prefix).await?;
                    // The bench's own API, on loopback, for the bench's own requests.
                    let mut settings = settings;
                    settings.dev_token = true;
                    settings.api_tokens.clear();
                    let state = AppState::new(pool, queues, settings, Arc::new(Notify::new()));
                    app::start_api(state, SocketAddr::from(([127, 0, 0, 1], 0)), stop).await
                }
                .await;
                match started {
                    Ok(server) => {
                        let _ = ready_tx.send(Ok(server.addr));
                        server.handle.await.context("API task")?
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        Ok(())
                    }
                }
            })
        })?;
        let addr = ready_rx.await.context("API thread ended")??;
        Ok(Self { addr, shutdown, thread })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("API thread panicked"))?
    }
}

/// An HTTP client for the layoff's status polling and single requests.
pub(crate) fn http_client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// One request of a load, built afresh for each send.
pub(crate) type LoadRequest = hyper::Request<Full<Bytes>>;

/// `GET path`, without a token.
pub(crate) fn get(path: &str) -> LoadRequest {
    hyper::Request::get(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// `POST path` with a JSON body, the development token and `headers`.
pub(crate) fn post_json(
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> LoadRequest {
    let mut request = hyper::Request::post(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", offboard::config::DEV_TOKEN))
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(Bytes::from(body.to_string()))).expect("a valid request")
}

/// What a load run saw within its measuring window.
#[derive(Debug, Default)]
pub(crate) struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Latency of each successful request in the window.
    pub latencies: Vec<Duration>,
    pub first_failure: Option<String>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).as_secs_f64() * 1000.0
    }
}

pub(crate) fn percentile(sorted_or_not: &[Duration], p: f64) -> Duration {
    if sorted_or_not.is_empty() {
        return Duration::ZERO;
    }
    let mut v = sorted_or_not.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// `connections` concurrent loops against `addr`, each on one keep-alive HTTP/1.1
/// connection of its own (bare hyper: no pool, no redirects, no per-request set-up, so
/// the generator takes as little as it can of the CPU it shares with the service), each
/// sending the next request from `next` (given a sequence number; `None` ends the load)
/// and expecting `expect`. Requests that complete within `[warmup, warmup + measure)` are
/// counted; the load stops after that window or when `next` runs out (the window then
/// ends at the last completion).
pub(crate) async fn http_load<F>(
    addr: SocketAddr,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    expect: hyper::StatusCode,
    next: F,
) -> anyhow::Result<LoadResult>
where
    F: Fn(usize) -> Option<LoadRequest> + Send + Sync + 'static,
{
    let next = Arc::new(next);
    let sequence = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + measure;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (next, sequence) = (next.clone(), sequence.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            let driver = tokio::spawn(connection);
            let mut seen = LoadResult::default();
            let mut last_done = start;
            while Instant::now() < window_end {
                let i = sequence.fetch_add(1, Ordering::Relaxed);
                let Some(request) = next(i) else { break };
                let sent = Instant::now();
                let outcome = match sender.ready().await {
                    Ok(()) => sender.send_request(request).await,
                    Err(e) => Err(e),
                };
                let outcome = match outcome {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.map(|b| (status, b.to_bytes()))
                    }
                    Err(e) => Err(e),
                };
                let done = Instant::now();
                match outcome {
                    Ok((status, _)) if status == expect => {
                        if done >= window_start && done < window_end {
                            seen.ok += 1;
                            seen.latencies.push(done - sent);
                            last_done = last_done.max(done);
                        }
                    }
                    Ok((status, body)) => {
                        seen.failed += 1;
                        seen.first_failure.get_or_insert_with(|| {
                            format!("{status}: {}", String::from_utf8_lossy(&body))
                        });
                    }
                    Err(e) => {
                        seen.failed += 1;
                        seen.first_failure.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            drop(sender);
            driver.abort();
            anyhow::Ok((seen, last_done))
        }));
    }
    let mut total = LoadResult::default();
    let mut last_done = window_start;
    for task in tasks {
        let (seen, done) = task.await??;
        total.ok += seen.ok;
        total.failed += seen.failed;
        total.latencies.extend(seen.latencies);
        if total.first_failure.is_none() {
            total.first_failure = seen.first_failure;
        }
        last_done = last_done.max(done);
    }
    total.elapsed = window_end.min(last_done.max(window_start)) - window_start;
    if total.elapsed.is_zero() {
        total.elapsed = Duration::from_millis(1);
    }
    Ok(total)
}

/// Polls until `done` says so, every `every`, failing after `limit`.
pub(crate) async fn wait_until<F, Fut>(
    what: &str,
    every: Duration,
    limit: Duration,
    mut done: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if done().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not finish within {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// `met` or `MISSED` for a target line.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_keeping_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/offboard", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "b"),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5432", "b"), "postgres://h:5432/b");
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
