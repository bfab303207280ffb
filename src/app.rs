//! Process wiring shared by the binaries: logging, connections, and the three ways to run —
//! API and workers in one process (`offboard serve`), the API only (`offboard api`), or
//! workers only (`offboard worker`, `offboard-worker`).

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::Notify};

use crate::{
    api::{self, AppState},
    config::{LogFormat, Settings},
    ledger,
    queue::Queues,
    shutdown::Shutdown,
    worker::Workers,
};

/// Default log filter of the service: info, with the libraries quieter.
pub const DEFAULT_LOG_FILTER: &str =
    "info,apalis=warn,apalis_core=warn,apalis_redis=warn,sqlx=warn";

/// Logs to stderr, text or JSON. `RUST_LOG` overrides `default_filter`.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// PostgreSQL (migrated, created if missing) and Redis.
#[derive(Clone)]
pub struct Services {
    /// The API's and the command line's connections (`OFFBOARD_DB_POOL`).
    pub pool: PgPool,
    /// The workers' own (`OFFBOARD_WORKER_DB_POOL`), opened when first used: a step's
    /// transaction never waits for a connection behind the API's requests, nor they
    /// behind it.
    pub worker_pool: PgPool,
    pub queues: Queues,
    pub settings: Settings,
}

impl Services {
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let pool = ledger::connect_and_migrate_with(
            &settings.database_url,
            settings.db_pool_size,
            &settings.db_timeouts,
        )
        .await?;
        let worker_pool = ledger::connect_lazy_with(
            &settings.database_url,
            settings.worker.db_pool_size,
            &settings.db_timeouts,
        )?;
        let queues = Queues::connect(&settings.redis_url, &settings.queue_prefix).await?;
        Ok(Self { pool, worker_pool, queues, settings })
    }

    /// Connects, retrying with a growing pause while PostgreSQL or Redis is not up yet (a
    /// container starting before its database, a database restarting), until `shutdown`.
    pub async fn connect_until_ready(
        settings: Settings,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let mut pause = std::time::Duration::from_millis(200);
        loop {
            match Self::connect(settings.clone()).await {
                Ok(services) => return Ok(services),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = pause.as_millis() as u64, "not ready yet");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.wait() => return Err(e),
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    pub fn workers(&self, nudge: Arc<Notify>) -> Workers {
        Workers::new(self.worker_pool.clone(), self.queues.clone(), &self.settings, nudge)
    }

    pub fn app_state(&self, nudge: Arc<Notify>) -> AppState {
        AppState::new(self.pool.clone(), self.queues.clone(), self.settings.clone(), nudge)
    }
}

/// A running API server: its address, and a handle that ends when it stopped.
pub struct Server {
    pub addr: SocketAddr,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds the API (port 0 picks a free port) and serves until `shutdown`.
pub async fn start_api(
    state: AppState,
    bind: SocketAddr,
    shutdown: Shutdown,
) -> anyhow::Result<Server> {
    let listener =
        TcpListener::bind(bind).await.with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    let router = api::router(state);
    let handle = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
            .context("HTTP server failed")
    });
    Ok(Server { addr, handle })
}

/// The API of a process without workers: [`start_api`], and the forwarder that turns the
/// nudges of its commits into `NOTIFY`s, so the workers' dispatchers in other processes
/// start a run at once rather than at their next interval ([`crate::nudge`]). The forwarder
/// ends with `shutdown`.
pub async fn start_api_alone(
    state: AppState,
    bind: SocketAddr,
    shutdown: Shutdown,
) -> anyhow::Result<Server> {
    let (pool, nudge) = (state.pool.clone(), state.nudge.clone());
    let server = start_api(state, bind, shutdown.clone()).await?;
    tokio::spawn(crate::nudge::forward(pool, crate::nudge::DISPATCH_CHANNEL, nudge, shutdown));
    Ok(server)
}

/// API and workers in one process, until SIGINT/SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    settings.check_serving()?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let services = Services::connect_until_ready(settings, &shutdown).await?;
    let nudge = Arc::new(Notify::new());
    let server =
        start_api(services.app_state(nudge.clone()), services.settings.bind, shutdown.clone())
            .await?;
    tracing::info!(addr = %server.addr, "API listening");
    let workers = services.workers(nudge).run(shutdown.clone());
    let (api, workers) = tokio::join!(server.handle, workers);
    api??;
    workers
}

/// The API only, until SIGINT/SIGTERM: no workers, dispatcher or sweeper. Its commits wake
/// the workers' dispatchers in other processes (`LISTEN`/`NOTIFY`, see [`crate::nudge`]).
pub async fn serve_api(settings: Settings) -> anyhow::Result<()> {
    settings.check_serving()?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let services = Services::connect_until_ready(settings, &shutdown).await?;
    let nudge = Arc::new(Notify::new());
    let server =
        start_api_alone(services.app_state(nudge), services.settings.bind, shutdown.clone())
            .await?;
    tracing::info!(addr = %server.addr, "API listening (no workers in this process)");
    let served = server.handle.await;
    // The forwarder ends with the shutdown that ended the server.
    served?
}

/// Workers only; several such processes share one queue.
pub async fn run_workers(settings: Settings) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let services = Services::connect_until_ready(settings, &shutdown).await?;
    services.workers(Arc::new(Notify::new())).run(shutdown).await
}
