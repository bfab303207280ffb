//! A shutdown signal shared by the API, the dispatcher and the workers: a
//! `tokio_util` [`CancellationToken`], with the process' signal handling.

use tokio_util::sync::CancellationToken;

/// Cloneable; every clone sees the trigger.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the shutdown has been triggered.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// The token itself, for code that takes one.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Triggers on the first SIGINT or SIGTERM; a second one exits the process at once
    /// (leases recover whatever was still running).
    pub fn on_signals(&self) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: no new steps; running ones get the shutdown timeout");
            shutdown.trigger();
            wait_for_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
