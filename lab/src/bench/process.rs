//! The processes a scenario measures: `offboard worker`, `api` and `serve` — the shipped
//! binary, see [`service_binary`] — as child processes (their peak memory read from
//! `/proc`), and the API in this process on a runtime of its own.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::sync::Notify;

use super::{BenchEnv, http_client};
use offboard::{api::AppState, app, config::Settings, ledger, queue::Queues, shutdown::Shutdown};

/// The binary the service processes run, and where it was found.
pub(crate) struct ServiceBinary {
    pub path: PathBuf,
    /// How it was chosen, for the report's header.
    pub source: &'static str,
}

/// The binary the scenarios' service processes run. The shipped `offboard` — what
/// operators deploy, so its memory and CPU are the figures that matter — taken from
/// `OFFBOARD_BIN`, or beside this binary, where `cargo build --release --workspace` puts
/// both. Failing both, this binary's hidden `worker`, `api` and `serve` subcommands: the
/// same product code, in a larger binary whose memory is not the shipped one's.
pub(crate) fn service_binary() -> anyhow::Result<ServiceBinary> {
    let lab = std::env::current_exe().context("cannot find the offboard-lab binary")?;
    choose_service_binary(std::env::var_os("OFFBOARD_BIN").map(PathBuf::from), lab)
}

fn choose_service_binary(named: Option<PathBuf>, lab: PathBuf) -> anyhow::Result<ServiceBinary> {
    if let Some(path) = named {
        if !path.is_file() {
            bail!("OFFBOARD_BIN={} is not a file", path.display());
        }
        return Ok(ServiceBinary { path, source: "OFFBOARD_BIN" });
    }
    let beside = lab.with_file_name(format!("offboard{}", std::env::consts::EXE_SUFFIX));
    if beside.is_file() {
        return Ok(ServiceBinary { path: beside, source: "beside offboard-lab" });
    }
    Ok(ServiceBinary { path: lab, source: "offboard-lab itself: no offboard binary beside it" })
}

/// An `offboard worker` child process on the bench database and prefix.
pub(crate) struct WorkerProcess {
    child: tokio::process::Child,
    pub pid: u32,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `offboard worker` with the scenario's settings. Variables of the parent's
    /// environment pass through (so `OFFBOARD_WORKER_CONCURRENCY` etc. apply), except the
    /// database, prefix and fault injection.
    pub fn spawn(env: &BenchEnv, label: &str) -> anyhow::Result<Self> {
        Self::spawn_with(env, label, &[])
    }

    /// As [`WorkerProcess::spawn`], with more variables set for the worker.
    pub fn spawn_with(env: &BenchEnv, label: &str, vars: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::spawn_command(env, "worker", label, vars)
    }

    /// A service process of [`service_binary`]: `worker`, `api` or `serve`, with the
    /// scenario's settings and `vars`.
    pub fn spawn_command(
        env: &BenchEnv,
        subcommand: &str,
        label: &str,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let exe = service_binary()?.path;
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
            let logs: Vec<String> = workers.iter().map(|w| w.log.display().to_string()).collect();
            bail!(
                "workers did not register with Redis within 30 s; is {} built from this \
                 checkout? (cargo build --release --workspace) Their logs: {}",
                service_binary()?.path.display(),
                logs.join(", ")
            );
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

/// The API in this process, as `offboard api` runs it (its commits wake the worker processes
/// over `NOTIFY`), on its own runtime (2 threads), so the load generator on the
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
                    // As `offboard api` runs it: its commits wake the worker processes.
                    app::start_api_alone(state, SocketAddr::from(([127, 0, 0, 1], 0)), stop).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temporary one, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("offboard-lab-{name}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, b"").unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    #[test]
    fn the_shipped_binary_beside_the_lab_is_the_one_measured() {
        let dir = Dir::new("beside");
        let lab = dir.file("offboard-lab");
        let shipped = dir.file(&format!("offboard{}", std::env::consts::EXE_SUFFIX));
        let chosen = choose_service_binary(None, lab).unwrap();
        assert_eq!(chosen.path, shipped);
        assert_eq!(chosen.source, "beside offboard-lab");
    }

    #[test]
    fn without_a_shipped_binary_beside_it_the_lab_runs_its_own_subcommands() {
        let dir = Dir::new("alone");
        let lab = dir.file("offboard-lab");
        let chosen = choose_service_binary(None, lab.clone()).unwrap();
        assert_eq!(chosen.path, lab);
    }

    #[test]
    fn offboard_bin_wins_and_must_name_a_file() {
        let dir = Dir::new("named");
        let lab = dir.file("offboard-lab");
        dir.file("offboard");
        let named = dir.file("offboard-elsewhere");
        let chosen = choose_service_binary(Some(named.clone()), lab.clone()).unwrap();
        assert_eq!((chosen.path, chosen.source), (named, "OFFBOARD_BIN"));
        let missing = dir.0.join("missing");
        let error = choose_service_binary(Some(missing), lab).err().expect("a missing file");
        assert!(error.to_string().contains("is not a file"), "{error}");
    }
}
