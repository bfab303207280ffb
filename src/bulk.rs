//! Works through bulk retries and cancels ([`ledger::bulk`]): the sweeper of every worker
//! process takes an unfinished operation nobody holds and works through it here, chunk
//! by chunk, each chunk one transaction that also moves the operation's cursor. A process
//! that dies leaves at most an uncommitted chunk; its lease runs out and the next sweeper
//! goes on from the cursor.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{config::WorkerSettings, ledger::bulk as ledger};

/// Works through operation `id`, held with lease `token`, until it is finished or the
/// lease is lost. A chunk that fails (a deadlock with a worker's transaction, a lost
/// connection) is tried again after a pause; nothing of it was committed.
pub async fn work_through(
    pool: PgPool,
    settings: WorkerSettings,
    nudge: Arc<Notify>,
    id: Uuid,
    token: Uuid,
) {
    let mut failures = 0u32;
    loop {
        match ledger::run_chunk(&pool, id, token, settings.bulk_chunk, settings.lease).await {
            Ok(Some(chunk)) => {
                failures = 0;
                if chunk.touched > 0 {
                    nudge.notify_one();
                }
                if chunk.finished {
                    tracing::info!(bulk_operation = %id, "bulk operation finished");
                    return;
                }
                tokio::time::sleep(settings.bulk_pause).await;
            }
            Ok(None) => {
                tracing::warn!(bulk_operation = %id, "bulk operation lease lost; another process goes on");
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(bulk_operation = %id, error = %e, failures, "bulk chunk failed; trying again");
                if failures >= 20 {
                    // Let the lease run out: another sweep (here or elsewhere) takes it up.
                    return;
                }
                tokio::time::sleep(
                    settings.bulk_pause.max(std::time::Duration::from_millis(100)) * failures,
                )
                .await;
            }
        }
    }
}

/// Takes one unfinished operation nobody holds, if any, and works through it in a task of
/// its own. Returns whether one was taken.
pub async fn take_one(
    pool: &PgPool,
    settings: &WorkerSettings,
    nudge: &Arc<Notify>,
) -> Result<bool, sqlx::Error> {
    let owner = format!("pid-{}", std::process::id());
    let Some((id, token)) = ledger::take_unfinished(pool, &owner, settings.lease).await? else {
        return Ok(false);
    };
    tracing::info!(bulk_operation = %id, "taking up a bulk operation");
    tokio::spawn(work_through(pool.clone(), settings.clone(), nudge.clone(), id, token));
    Ok(true)
}
