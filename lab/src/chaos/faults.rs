//! The faults: worker processes SIGKILLed and restarted, Redis flushed and restarted,
//! PostgreSQL restarted. With `service_restarts` off (the mode for a shared development
//! machine) nothing outside the suite is touched: a flush deletes only the suite's own
//! Redis keys, a "PostgreSQL restart" terminates every connection to the suite's own
//! database, and Redis is not restarted.

use std::{
    fs::OpenOptions,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::{Rng, rngs::StdRng};
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::throwaway::delete_keys;

/// Environment of every worker process.
#[derive(Clone, Debug)]
pub struct WorkerEnv {
    pub vars: Vec<(String, String)>,
    pub log_dir: PathBuf,
}

struct Slot {
    child: Option<Child>,
    /// When a killed (or exited) worker comes back.
    restart_at: Option<Instant>,
}

/// The worker processes: `offboard worker`, this same executable.
pub struct Fleet {
    exe: PathBuf,
    env: WorkerEnv,
    slots: Vec<Slot>,
    pub started: usize,
    /// Workers that exited without being killed (for example at start while Redis was down).
    pub exited: usize,
}

impl Fleet {
    pub fn start(workers: usize, env: WorkerEnv) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the offboard executable")?;
        std::fs::create_dir_all(&env.log_dir)
            .with_context(|| format!("cannot create {}", env.log_dir.display()))?;
        let mut fleet = Self { exe, env, slots: Vec::new(), started: 0, exited: 0 };
        for k in 0..workers {
            let child = fleet.spawn(k)?;
            fleet.slots.push(Slot { child: Some(child), restart_at: None });
        }
        Ok(fleet)
    }

    fn spawn(&mut self, slot: usize) -> anyhow::Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.env.log_dir.join(format!("worker-{slot}.log")))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("worker")
            .env_remove("OFFBOARD_FAULTS")
            .envs(self.env.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        self.started += 1;
        command.spawn().context("cannot start an offboard worker process")
    }

    /// Pids of the workers running now.
    pub fn alive(&self) -> Vec<(usize, u32)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.child.as_ref().and_then(|c| c.id()).map(|pid| (k, pid)))
            .collect()
    }

    /// SIGKILL; the worker comes back after `down`.
    pub async fn kill(&mut self, slot: usize, down: Duration) {
        if let Some(mut child) = self.slots[slot].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.slots[slot].restart_at = Some(Instant::now() + down);
    }

    /// Restarts workers whose time has come, and notices workers that exited by themselves.
    pub fn tend(&mut self) -> anyhow::Result<()> {
        for k in 0..self.slots.len() {
            if let Some(child) = self.slots[k].child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.exited += 1;
                self.slots[k].child = None;
                self.slots[k].restart_at = Some(Instant::now() + Duration::from_millis(500));
            }
            if self.slots[k].child.is_none()
                && self.slots[k].restart_at.is_some_and(|at| at <= Instant::now())
            {
                let child = self.spawn(k)?;
                self.slots[k] = Slot { child: Some(child), restart_at: None };
            }
        }
        Ok(())
    }

    /// Brings every killed worker back at once (the faults are over).
    pub fn restart_all_now(&mut self) -> anyhow::Result<()> {
        for slot in &mut self.slots {
            if slot.child.is_none() {
                slot.restart_at = Some(Instant::now());
            }
        }
        self.tend()
    }

    pub async fn stop(&mut self) {
        for slot in &mut self.slots {
            if let Some(mut child) = slot.child.take() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            slot.restart_at = None;
        }
    }
}

/// What a killed worker was doing, read from the ledger just before the kill.
pub async fn held_by(pool: &PgPool, pid: u32) -> Option<(i64, i64)> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE name LIKE 'reassign\\_%' AND done > 0)
         FROM offboard.steps WHERE status = 'running' AND lease_owner LIKE $1",
    )
    .bind(format!("%-{pid}-%"))
    .fetch_one(pool)
    .await
    .ok()
}

/// Where Redis and PostgreSQL run, and how to disturb them.
#[derive(Clone, Debug)]
pub struct Services {
    pub redis_host: String,
    pub redis_port: u16,
    pub redis_url: String,
    pub prefix: String,
    pub database: String,
    /// Real restarts and FLUSHALL; otherwise only the suite's own keys and connections.
    pub service_restarts: bool,
}

impl Services {
    pub fn new(
        redis_url: &str,
        prefix: &str,
        database: &str,
        service_restarts: bool,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url).context("REDIS_URL is not a Redis URL")?;
        let (host, port) = match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            _ => bail!("the fault suite needs Redis over plain TCP"),
        };
        if service_restarts && !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1") {
            bail!(
                "the fault suite restarts Redis and PostgreSQL only on this machine; \
                 Redis is at {host} (use --no-service-restarts)"
            );
        }
        Ok(Self {
            redis_host: host,
            redis_port: port,
            redis_url: redis_url.into(),
            prefix: prefix.into(),
            database: database.into(),
            service_restarts,
        })
    }

    /// FLUSHALL, or only the suite's keys.
    pub async fn flush_redis(&self) -> anyhow::Result<u64> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        if self.service_restarts {
            let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
            redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
            return Ok(keys);
        }
        self.flush_own_keys().await
    }

    /// Deletes the suite's own keys (its key prefix) only.
    pub async fn flush_own_keys(&self) -> anyhow::Result<u64> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        Ok(delete_keys(&mut conn, &self.prefix).await?)
    }

    /// Shuts Redis down without saving, keeps it down for `down`, starts it again empty.
    pub async fn restart_redis(&self, down: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let port = self.redis_port.to_string();
        // The shutdown closes the connection; its "error" is the expected outcome.
        let _ =
            run("redis-cli", &["-h", &self.redis_host, "-p", &port, "shutdown", "nosave"]).await;
        tokio::time::sleep(down).await;
        let args = [
            "--daemonize",
            "yes",
            "--bind",
            &self.redis_host,
            "--port",
            &port,
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        // Others share this Redis: try hard to bring it back.
        let mut attempt = 0;
        while let Err(e) = run("redis-server", &args).await {
            attempt += 1;
            if attempt == 5 {
                return Err(e.context("Redis is DOWN: start it with redis-server"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.wait_for_redis(Duration::from_secs(20)).await?;
        Ok(started.elapsed())
    }

    async fn wait_for_redis(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let client = redis::Client::open(self.redis_url.as_str())?;
            let answered = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            }
            .await;
            match answered {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("Redis did not come back");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Restarts the PostgreSQL cluster, or terminates every connection to the suite's
    /// database. Returns how long it took, and how many connections were cut.
    pub async fn restart_postgres(&self, pool: &PgPool) -> anyhow::Result<(Duration, i64)> {
        let started = Instant::now();
        if !self.service_restarts {
            let cut: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&self.database)
            .fetch_one(pool)
            .await?;
            return Ok((started.elapsed(), cut));
        }
        // The cluster that serves the suite's database (by its port), never another one on
        // this machine.
        let port: i32 = sqlx::query_scalar("SELECT current_setting('port')::int")
            .fetch_one(pool)
            .await
            .context("cannot read the port of the suite's PostgreSQL")?;
        let (version, cluster) = cluster_on_port(port).await?;
        run("pg_ctlcluster", &["--skip-systemctl-redirect", &version, &cluster, "restart"]).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while sqlx::query("SELECT 1").execute(pool).await.is_err() {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not come back within a minute");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((started.elapsed(), -1))
    }
}

/// The local cluster (version, name) listening on `port`, from `pg_lsclusters`.
async fn cluster_on_port(port: i32) -> anyhow::Result<(String, String)> {
    let output = Command::new("pg_lsclusters")
        .arg("--no-header")
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pg_lsclusters: cannot restart PostgreSQL here")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (version, cluster, on) = (fields.next()?, fields.next()?, fields.next()?);
            (on.parse::<i32>().ok()? == port).then(|| (version.to_string(), cluster.to_string()))
        })
        .next()
        .with_context(|| format!("no local PostgreSQL cluster listens on port {port}"))
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    // From /, so a daemon started here (redis-server) never holds on to a work tree.
    let output = Command::new(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Counts of what was done to the system.
#[derive(Debug, Default, Clone)]
pub struct FaultStats {
    pub kills: usize,
    pub kills_holding_steps: usize,
    pub kills_mid_reassignment: usize,
    /// Kills while webhook deliveries were being sent.
    pub kills_during_delivery: usize,
    pub flushes: usize,
    pub redis_restarts: usize,
    pub postgres_restarts: usize,
    /// Connections cut by a simulated restart (no-service-restarts mode).
    pub postgres_connections_cut: i64,
    pub worker_processes_started: usize,
    pub worker_exits: usize,
    pub errors: Vec<String>,
}

/// Which disturbance comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Flush,
    RestartRedis,
    RestartPostgres,
}

impl Fault {
    /// Kills most often; flushes; a Redis restart now and then. PostgreSQL restarts are
    /// scheduled separately (see `postgres_at`).
    pub fn random(rng: &mut StdRng, service_restarts: bool) -> Self {
        match rng.random_range(0..20) {
            0..13 => Fault::Kill,
            13..17 => Fault::Flush,
            _ if service_restarts => Fault::RestartRedis,
            _ => Fault::Flush,
        }
    }
}

/// When in the chaos phase PostgreSQL restarts: once in a short run, twice in a long one.
pub fn postgres_at(duration: Duration) -> Vec<Duration> {
    if duration >= Duration::from_secs(60) {
        vec![duration.mul_f64(0.3), duration.mul_f64(0.7)]
    } else {
        vec![duration.mul_f64(0.4)]
    }
}
