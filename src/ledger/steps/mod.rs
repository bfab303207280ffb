//! Step state transitions. Each is one statement guarded by the status it expects (and,
//! for a running step, by its lease token), so two workers racing for one step cannot both
//! win, and a worker that lost its lease cannot record anything.
//!
//! Lock order: whatever writes a run's steps locks the run's row first, then the steps,
//! then their dependents (a claim, a fence, a completion, a group transaction, a failure,
//! the lease reaper, an operator's retry or cancel), so no two of them wait for each other
//! in a circle. A step of a run that is `canceling` stops at its next transaction: the
//! fence, the progress record and the completion refuse it, and [`stop_canceled`] ends it.

mod dispatch;
mod failure;
mod group;
mod leases;

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{Action, RunStatus, StepKey, StepStatus};

pub use self::{
    dispatch::{
        DISPATCH_LOCK_SQL, DISPATCH_SQL, DispatchLimits, Dispatched, LIGHT_COMPANY_IN_FLIGHT,
        Lanes, MAX_STEPS_PER_TASK, dispatch_ready, into_lanes, into_tasks, try_dispatch_ready,
    },
    failure::{Failure, defer, fail, stop_canceled},
    group::{Completed, Completions, GoesOn, claim_locked, complete_many, lock_queued},
    leases::{reap_expired_leases, renew_leases, take_stale_queued},
};

/// A step a worker has just claimed, with what it needs to run it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claim {
    pub run_id: Uuid,
    pub position: i32,
    pub name: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub lease_token: Uuid,
    pub company_id: i64,
    pub user_id: i64,
    pub action: Action,
    pub plan: Value,
    pub params: Value,
    pub actor_user_id: i64,
    /// Progress as of the claim (what earlier attempts committed), so the first
    /// transaction of the attempt needs no fence to read it.
    pub done: i64,
    pub total: Option<i64>,
    pub cursor: Option<Value>,
}

impl Claim {
    pub fn key(&self) -> StepKey {
        StepKey::new(self.run_id, self.position)
    }
}

/// Progress of a running step, read while renewing its lease.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Fenced {
    pub done: i64,
    pub total: Option<i64>,
    pub cursor: Option<Value>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Takes a queued step: `queued -> running`, counting an attempt and issuing a fresh lease
/// token, and returns the step's progress. Commits on its own, so the attempt counts even
/// if the worker then dies (that is how a step that kills its worker is eventually
/// quarantined). `None` when the step is not queued (already taken, done, or canceled): a
/// duplicate delivery. The run's row is locked first, as everywhere (see the module doc).
///
/// The commit does not wait for the WAL flush (`synchronous_commit` off for this statement's
/// own transaction): the claim is visible at once and reaches disk within the WAL writer's
/// delay, or sooner with the next synchronous commit — the step's own transaction flushes
/// it with its effects. A worker that dies still leaves its attempt counted; only a crash
/// of PostgreSQL itself in that window can forget a claim, and the step is then queued
/// again, its interrupted attempt uncounted. Saves a flush per step.
pub async fn claim(
    pool: &PgPool,
    step: StepKey,
    worker: &str,
    lease: Duration,
) -> Result<Option<Claim>, sqlx::Error> {
    sqlx::query_as(
        "WITH run AS (
             SELECT r.id FROM offboard.runs r
             WHERE r.id = $1 AND r.status NOT IN ('canceling', 'canceled')
             FOR NO KEY UPDATE),
         claimed AS (
             UPDATE offboard.steps
             SET status = 'running', attempts = attempts + 1, lease_token = gen_random_uuid(),
                 lease_owner = $2, lease_expires_at = clock_timestamp() + make_interval(secs => $3),
                 started_at = coalesce(started_at, now()), queued_at = NULL, done_at_claim = done
             WHERE run_id = (SELECT id FROM run) AND position = $4 AND status = 'queued'
             RETURNING run_id, position, name, attempts, max_attempts, lease_token, done, total, cursor),
         started AS (
             UPDATE offboard.runs r SET status = 'running', started_at = coalesce(r.started_at, now())
             FROM claimed c WHERE r.id = c.run_id AND r.status = 'queued'
             RETURNING r.id),
         no_flush_wait AS (SELECT set_config('synchronous_commit', 'off', true))
         SELECT c.run_id, c.position, c.name, c.attempts, c.max_attempts, c.lease_token,
                r.company_id, r.user_id, r.action, r.plan, r.params, r.actor_user_id,
                c.done, c.total, c.cursor
         FROM claimed c JOIN offboard.runs r ON r.id = c.run_id CROSS JOIN no_flush_wait",
    )
    .bind(step.run_id)
    .bind(worker)
    .bind(secs(lease))
    .bind(step.position)
    .fetch_optional(pool)
    .await
}

/// The first statement of a transaction that continues a step after an earlier transaction
/// of the same attempt (the next batch): renews the lease, locks the step row for the
/// transaction, and returns fresh progress. `None` means the lease was lost (expired and
/// taken over, or the run is canceling: see [`stop_canceled`]): the caller must roll back.
/// The run's row is locked first (`FOR KEY SHARE`: concurrent steps of one run do not wait
/// for each other; an operator's cancel waits for the batch), so the completion at the end
/// of the transaction takes its locks in the order every writer does. The first transaction
/// after the claim needs none: the claim has just issued the lease and read the progress,
/// and what the transaction records is fenced by the lease token itself.
pub async fn fence(
    tx: &mut PgConnection,
    step: StepKey,
    token: Uuid,
    lease: Duration,
) -> Result<Option<Fenced>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE offboard.steps SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)
         WHERE run_id = (SELECT r.id FROM offboard.runs r
                         WHERE r.id = $1 AND r.status <> 'canceling'
                         FOR KEY SHARE)
           AND position = $4 AND lease_token = $2 AND status = 'running'
         RETURNING done, total, cursor",
    )
    .bind(step.run_id)
    .bind(token)
    .bind(secs(lease))
    .bind(step.position)
    .fetch_optional(&mut *tx)
    .await
}

/// Records a batch of a batched step in the transaction that moved it, if the lease is
/// still `token`'s and the run is not canceling. `false` means it was lost (or the run is
/// stopping): the caller must roll back the batch.
pub async fn record_progress(
    tx: &mut PgConnection,
    step: StepKey,
    token: Uuid,
    done: i64,
    total: i64,
    cursor: &Value,
) -> Result<bool, sqlx::Error> {
    let recorded = sqlx::query(
        "UPDATE offboard.steps s SET done = $3, total = $4, cursor = $5
         WHERE run_id = $1 AND position = $6 AND lease_token = $2 AND status = 'running'
           AND NOT EXISTS (SELECT 1 FROM offboard.runs r
                           WHERE r.id = s.run_id AND r.status = 'canceling')",
    )
    .bind(step.run_id)
    .bind(token)
    .bind(done)
    .bind(total)
    .bind(cursor)
    .bind(step.position)
    .execute(&mut *tx)
    .await?;
    Ok(recorded.rows_affected() == 1)
}

/// What completing a step changed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Completion {
    /// Steps whose last dependency this was, now ready.
    pub unblocked: i64,
    /// Steps of the run not yet succeeded; 0 means this step finished the run.
    pub steps_remaining: i32,
    pub run_status: RunStatus,
}

/// `running -> succeeded` in the caller's transaction, together with the step's effects:
/// decrements the dependency counters of the steps waiting on it (making ready those that
/// reach 0) and the run's remaining-steps counter (except for the run's last step: then
/// [`crate::ledger::runs::finish`] writes the run, once), all in one statement. The counters are
/// updated row by row under row locks, so concurrent completions of one run never miss
/// each other. The run's row is locked first, then the step, then its dependents — the
/// order a group transaction, a cancel and a retry take too, so they cannot deadlock.
/// `None` when the lease was lost or the run is canceling (the caller rolls back).
pub async fn complete(
    tx: &mut PgConnection,
    step: StepKey,
    token: Uuid,
    result: &Value,
    done: i64,
    total: i64,
) -> Result<Option<Completion>, sqlx::Error> {
    sqlx::query_as(
        "WITH run_lock AS (
             SELECT r.id, r.status, r.steps_remaining FROM offboard.runs r WHERE r.id = $1
             FOR NO KEY UPDATE),
         finished AS (
             UPDATE offboard.steps
             SET status = 'succeeded', finished_at = now(), result = $3, done = $4, total = $5,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 last_error_code = NULL, last_error_message = NULL
             WHERE run_id = (SELECT id FROM run_lock WHERE status <> 'canceling')
               AND position = $6 AND lease_token = $2 AND status = 'running'
             RETURNING run_id, name),
         unblocked AS (
             UPDATE offboard.steps d
             SET deps_remaining = d.deps_remaining - 1,
                 status = CASE WHEN d.deps_remaining = 1 AND d.status = 'pending'
                               THEN 'ready' ELSE d.status END,
                 -- Left alone for a step that stays pending, so its row changes no indexed
                 -- column and the update can be HOT (no index entry).
                 next_attempt_at = CASE WHEN d.deps_remaining = 1 AND d.status = 'pending'
                                        THEN now() ELSE d.next_attempt_at END
             FROM finished f
             WHERE d.run_id = f.run_id AND f.name = ANY (d.depends_on)
             RETURNING d.status),
         -- The run's last step leaves the run to runs::finish, which writes it once.
         run AS (
             UPDATE offboard.runs r SET steps_remaining = r.steps_remaining - 1
             FROM finished f WHERE r.id = f.run_id AND r.steps_remaining > 1)
         SELECT (SELECT count(*) FROM unblocked WHERE status = 'ready') AS unblocked,
                l.steps_remaining - 1 AS steps_remaining, l.status AS run_status
         FROM run_lock l WHERE EXISTS (SELECT 1 FROM finished)",
    )
    .bind(step.run_id)
    .bind(token)
    .bind(result)
    .bind(done)
    .bind(total)
    .bind(step.position)
    .fetch_optional(&mut *tx)
    .await
}

/// Counts of steps by status, for health and metrics.
pub async fn counts_by_status<'e>(
    db: impl PgExecutor<'e>,
) -> Result<Vec<(StepStatus, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM offboard.steps GROUP BY status ORDER BY status")
        .fetch_all(db)
        .await
}
