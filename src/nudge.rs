//! Nudges between processes, over PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! Inside a process a commit that made steps ready wakes the dispatcher through a
//! [`Notify`]. When the API runs apart from the workers (`offboard api` beside
//! `offboard worker`), [`forward`] turns the API's nudges into `NOTIFY offboard_dispatch`
//! and every workers process [`listen`]s on that channel, so a run starts at once instead
//! of at the dispatcher's next interval. Both ends coalesce: a `Notify` keeps one permit
//! however many nudges came, and the forwarder sends one notification at a time, outside any
//! transaction (a `NOTIFY` inside the enqueue transaction would serialize every enqueue on
//! PostgreSQL's notification queue lock at commit).

use std::{sync::Arc, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgListener, PgPoolOptions},
};
use tokio::sync::Notify;

use crate::shutdown::Shutdown;

/// The channel the API's commits are announced on to the workers' dispatchers.
pub const DISPATCH_CHANNEL: &str = "offboard_dispatch";

/// Pause before reconnecting a lost listener or retrying a failed notification.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The least time between two notifications a forwarder sends: the dispatcher's own gap
/// between passes ([`crate::dispatch::PASS_GAP`]), so a burst of commits costs PostgreSQL
/// at most 100 `NOTIFY`s a second (not one per commit), and the workers' dispatchers no
/// more wake-ups than passes they would make.
pub const FORWARD_GAP: Duration = crate::dispatch::PASS_GAP;

/// Wakes `wake` on every notification on `channel` until `shutdown`, reconnecting when the
/// connection is lost. Notifications sent while it is not connected are missed: whoever
/// listens also polls on an interval (and once when it starts).
pub async fn listen(pool: PgPool, channel: &'static str, wake: Arc<Notify>, shutdown: Shutdown) {
    // A listener holds its connection for good: its own, not one of the pool's (a test's
    // pool has five).
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    drop(pool);
    loop {
        let listened = async {
            let mut listener = PgListener::connect_with(&own).await?;
            listener.listen(channel).await?;
            loop {
                listener.recv().await?;
                wake.notify_one();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            result = listened => {
                if let Err(e) = result {
                    tracing::debug!(channel, error = %e, "listener lost; reconnecting");
                }
            }
            _ = shutdown.wait() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Sends `NOTIFY channel` after nudges of `local`, one at a time and at least
/// [`FORWARD_GAP`] apart (the nudges in between become the next one), until `shutdown`.
pub async fn forward(pool: PgPool, channel: &'static str, local: Arc<Notify>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = local.notified() => {}
            _ = shutdown.wait() => return,
        }
        let sent = tokio::time::Instant::now();
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(channel).execute(&pool).await {
            tracing::debug!(channel, error = %e, "notifying failed; the workers' interval covers it");
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                _ = shutdown.wait() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(sent + FORWARD_GAP) => {}
            _ = shutdown.wait() => return,
        }
    }
}
