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
mod leases;

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{Action, RunStatus};

pub use self::{
    dispatch::{DispatchLimits, Dispatched, MAX_STEPS_PER_TASK, dispatch_ready, into_tasks},
    failure::{Failure, defer, fail, stop_canceled},
    leases::{reap_expired_leases, renew_leases, take_stale_queued},
};

/// A step a worker has just claimed, with what it needs to run it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claim {
    pub step_id: i64,
    pub run_id: Uuid,
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
    step_id: i64,
    worker: &str,
    lease: Duration,
) -> Result<Option<Claim>, sqlx::Error> {
    sqlx::query_as(
        "WITH run AS (
             SELECT r.id FROM offboard.runs r
             WHERE r.id = (SELECT run_id FROM offboard.steps WHERE id = $1)
               AND r.status NOT IN ('canceling', 'canceled')
             FOR NO KEY UPDATE),
         claimed AS (
             UPDATE offboard.steps
             SET status = 'running', attempts = attempts + 1, lease_token = gen_random_uuid(),
                 lease_owner = $2, lease_expires_at = clock_timestamp() + make_interval(secs => $3),
                 started_at = coalesce(started_at, now()), queued_at = NULL, done_at_claim = done
             WHERE id = $1 AND status = 'queued' AND run_id = (SELECT id FROM run)
             RETURNING id, run_id, name, attempts, max_attempts, lease_token, done, total, cursor),
         started AS (
             UPDATE offboard.runs r SET status = 'running', started_at = coalesce(r.started_at, now())
             FROM claimed c WHERE r.id = c.run_id AND r.status = 'queued'
             RETURNING r.id),
         no_flush_wait AS (SELECT set_config('synchronous_commit', 'off', true))
         SELECT c.id AS step_id, c.run_id, c.name, c.attempts, c.max_attempts, c.lease_token,
                r.company_id, r.user_id, r.action, r.plan, r.params, r.actor_user_id,
                c.done, c.total, c.cursor
         FROM claimed c JOIN offboard.runs r ON r.id = c.run_id CROSS JOIN no_flush_wait",
    )
    .bind(step_id)
    .bind(worker)
    .bind(secs(lease))
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
    step_id: i64,
    token: Uuid,
    lease: Duration,
) -> Result<Option<Fenced>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE offboard.steps SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)
         WHERE id = $1 AND lease_token = $2 AND status = 'running'
           AND run_id = (SELECT r.id FROM offboard.runs r
                         WHERE r.id = (SELECT run_id FROM offboard.steps WHERE id = $1)
                           AND r.status <> 'canceling'
                         FOR KEY SHARE)
         RETURNING done, total, cursor",
    )
    .bind(step_id)
    .bind(token)
    .bind(secs(lease))
    .fetch_optional(&mut *tx)
    .await
}

/// Records a batch of a batched step in the transaction that moved it, if the lease is
/// still `token`'s and the run is not canceling. `false` means it was lost (or the run is
/// stopping): the caller must roll back the batch.
pub async fn record_progress(
    tx: &mut PgConnection,
    step_id: i64,
    token: Uuid,
    done: i64,
    total: i64,
    cursor: &Value,
) -> Result<bool, sqlx::Error> {
    let recorded = sqlx::query(
        "UPDATE offboard.steps s SET done = $3, total = $4, cursor = $5
         WHERE id = $1 AND lease_token = $2 AND status = 'running'
           AND NOT EXISTS (SELECT 1 FROM offboard.runs r
                           WHERE r.id = s.run_id AND r.status = 'canceling')",
    )
    .bind(step_id)
    .bind(token)
    .bind(done)
    .bind(total)
    .bind(cursor)
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
/// reach 0) and the run's remaining-steps counter, all in one statement. The counters are
/// updated row by row under row locks, so concurrent completions of one run never miss
/// each other. The run's row is locked first, then the step, then its dependents — the
/// order a group transaction, a cancel and a retry take too, so they cannot deadlock.
/// `None` when the lease was lost or the run is canceling (the caller rolls back).
pub async fn complete(
    tx: &mut PgConnection,
    step_id: i64,
    token: Uuid,
    result: &Value,
    done: i64,
    total: i64,
) -> Result<Option<Completion>, sqlx::Error> {
    sqlx::query_as(
        "WITH run_lock AS (
             SELECT r.id, r.status FROM offboard.runs r
             WHERE r.id = (SELECT run_id FROM offboard.steps WHERE id = $1)
             FOR NO KEY UPDATE),
         finished AS (
             UPDATE offboard.steps
             SET status = 'succeeded', finished_at = now(), result = $3, done = $4, total = $5,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 last_error_code = NULL, last_error_message = NULL
             WHERE id = $1 AND lease_token = $2 AND status = 'running'
               AND run_id = (SELECT id FROM run_lock WHERE status <> 'canceling')
             RETURNING run_id, name),
         unblocked AS (
             UPDATE offboard.steps d
             SET deps_remaining = d.deps_remaining - 1,
                 status = CASE WHEN d.deps_remaining = 1 AND d.status = 'pending'
                               THEN 'ready' ELSE d.status END,
                 next_attempt_at = now()
             FROM finished f
             WHERE d.run_id = f.run_id AND f.name = ANY (d.depends_on)
             RETURNING d.status),
         run AS (
             UPDATE offboard.runs r SET steps_remaining = r.steps_remaining - 1
             FROM finished f WHERE r.id = f.run_id
             RETURNING r.steps_remaining, r.status)
         SELECT (SELECT count(*) FROM unblocked WHERE status = 'ready') AS unblocked,
                run.steps_remaining, run.status AS run_status
         FROM run",
    )
    .bind(step_id)
    .bind(token)
    .bind(result)
    .bind(done)
    .bind(total)
    .fetch_optional(&mut *tx)
    .await
}

/// Locks the queued steps among `step_ids` (steps of one run on their first attempt) for a
/// transaction that will run them all, and returns them as claims without a lease: the
/// transaction that applies them completes them too ([`complete_many`]), or hands those
/// that go on alone a lease ([`claim_locked`]). Their attempt is counted when that
/// transaction commits; if the worker dies first, nothing of it remains and the steps are
/// still queued, to be pushed again alone (`OFFBOARD_REDELIVER_AFTER`).
///
/// The run's row is locked first, as the operator's retry and cancel lock it, so a cancel
/// waits for the group instead of deadlocking with it. Steps locked by someone else (a
/// duplicate delivery being run) are skipped.
pub async fn lock_queued(
    tx: &mut PgConnection,
    step_ids: &[i64],
) -> Result<Vec<Claim>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.id AS step_id, s.run_id, s.name, s.attempts + 1 AS attempts, s.max_attempts,
                '00000000-0000-0000-0000-000000000000'::uuid AS lease_token,
                r.company_id, r.user_id, r.action, r.plan, r.params, r.actor_user_id,
                s.done, s.total, s.cursor
         FROM offboard.steps s JOIN offboard.runs r ON r.id = s.run_id
         WHERE s.id = ANY ($1) AND s.status = 'queued'
           AND r.id = (SELECT l.id FROM offboard.runs l
                       WHERE l.id = (SELECT run_id FROM offboard.steps WHERE id = $1[1])
                         AND l.status NOT IN ('canceling', 'canceled')
                       FOR NO KEY UPDATE)
         ORDER BY s.id
         FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(step_ids)
    .fetch_all(&mut *tx)
    .await
}

/// A locked step that finished, for [`complete_many`].
#[derive(Debug, Clone)]
pub struct Completed<'a> {
    pub step_id: i64,
    pub result: &'a Value,
    pub done: i64,
    pub total: i64,
}

/// What completing several steps at once changed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Completions {
    /// Steps completed: fewer than asked means one was not queued after all, and the
    /// caller must roll back.
    pub completed: i64,
    /// Steps whose last dependencies these were, now ready.
    pub unblocked: i64,
    /// Runs whose last steps these were: the caller finishes them.
    pub finished_runs: Vec<Uuid>,
}

/// `queued -> succeeded` for steps locked by [`lock_queued`], in the caller's transaction
/// with their effects, counting their attempt, in one statement: each dependent's counter
/// goes down by the number of its dependencies among them, the run's by the number of its
/// steps among them, and the run is marked started.
pub async fn complete_many(
    tx: &mut PgConnection,
    steps: &[Completed<'_>],
) -> Result<Completions, sqlx::Error> {
    let ids: Vec<i64> = steps.iter().map(|s| s.step_id).collect();
    let results: Vec<&Value> = steps.iter().map(|s| s.result).collect();
    let done: Vec<i64> = steps.iter().map(|s| s.done).collect();
    let total: Vec<i64> = steps.iter().map(|s| s.total).collect();
    sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::bigint[], $2::jsonb[], $3::bigint[], $4::bigint[])
                 AS i(id, result, done, total)),
         finished AS (
             UPDATE offboard.steps s
             SET status = 'succeeded', attempts = s.attempts + 1,
                 started_at = coalesce(s.started_at, now()), finished_at = now(), queued_at = NULL,
                 result = i.result, done = i.done, total = i.total,
                 last_error_code = NULL, last_error_message = NULL
             FROM input i
             WHERE s.id = i.id AND s.status = 'queued'
             RETURNING s.run_id, s.name),
         waiting AS (
             SELECT d.id, count(*) AS n
             FROM finished f JOIN offboard.steps d ON d.run_id = f.run_id AND f.name = ANY (d.depends_on)
             GROUP BY d.id),
         unblocked AS (
             UPDATE offboard.steps d
             SET deps_remaining = d.deps_remaining - w.n,
                 status = CASE WHEN d.deps_remaining = w.n AND d.status = 'pending'
                               THEN 'ready' ELSE d.status END,
                 next_attempt_at = now()
             FROM waiting w WHERE d.id = w.id
             RETURNING d.status),
         per_run AS (SELECT run_id, count(*) AS n FROM finished GROUP BY run_id),
         run AS (
             UPDATE offboard.runs r
             SET steps_remaining = r.steps_remaining - p.n,
                 status = CASE WHEN r.status = 'queued' THEN 'running' ELSE r.status END,
                 started_at = coalesce(r.started_at, now())
             FROM per_run p WHERE r.id = p.run_id
             RETURNING r.id, r.steps_remaining, r.status)
         SELECT (SELECT count(*) FROM finished) AS completed,
                (SELECT count(*) FROM unblocked WHERE status = 'ready') AS unblocked,
                (SELECT coalesce(array_agg(id), '{}') FROM run
                 WHERE steps_remaining = 0 AND status = 'running') AS finished_runs",
    )
    .bind(&ids)
    .bind(&results)
    .bind(&done)
    .bind(&total)
    .fetch_one(&mut *tx)
    .await
}

/// A locked step that goes on alone after its group's transaction, with what that
/// transaction did of it.
#[derive(Debug, Clone)]
pub struct GoesOn<'a> {
    pub step_id: i64,
    /// Progress when the group's transaction began (what earlier attempts did).
    pub done_before: i64,
    pub done: i64,
    pub total: Option<i64>,
    pub cursor: Option<&'a Value>,
}

/// `queued -> running` for steps locked by [`lock_queued`] that continue alone: counts
/// their attempt, issues each a lease and records their progress, in the caller's
/// transaction; the attempt's progress is counted from where the group began, so a worker
/// lost after it is not held against the step ([`reap_expired_leases`]). Returns each
/// step's lease token.
pub async fn claim_locked(
    tx: &mut PgConnection,
    steps: &[GoesOn<'_>],
    worker: &str,
    lease: Duration,
) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
    let ids: Vec<i64> = steps.iter().map(|s| s.step_id).collect();
    let before: Vec<i64> = steps.iter().map(|s| s.done_before).collect();
    let done: Vec<i64> = steps.iter().map(|s| s.done).collect();
    let total: Vec<Option<i64>> = steps.iter().map(|s| s.total).collect();
    let cursors: Vec<Option<&Value>> = steps.iter().map(|s| s.cursor).collect();
    sqlx::query_as(
        "WITH claimed AS (
             UPDATE offboard.steps s
             SET status = 'running', attempts = s.attempts + 1, lease_token = gen_random_uuid(),
                 lease_owner = $5, lease_expires_at = clock_timestamp() + make_interval(secs => $6),
                 started_at = coalesce(s.started_at, now()), queued_at = NULL,
                 done = i.done, total = i.total, cursor = i.cursor, done_at_claim = i.before
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::jsonb[], $7::bigint[])
                 AS i(id, done, total, cursor, before)
             WHERE s.id = i.id AND s.status = 'queued'
             RETURNING s.id, s.run_id, s.lease_token),
         started AS (
             UPDATE offboard.runs r SET status = 'running', started_at = coalesce(r.started_at, now())
             WHERE r.id IN (SELECT run_id FROM claimed) AND r.status = 'queued')
         SELECT id, lease_token FROM claimed",
    )
    .bind(&ids)
    .bind(&done)
    .bind(&total)
    .bind(&cursors)
    .bind(worker)
    .bind(secs(lease))
    .bind(&before)
    .fetch_all(&mut *tx)
    .await
}

/// Counts of steps by status, for health and metrics.
pub async fn counts_by_status<'e>(
    db: impl PgExecutor<'e>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM offboard.steps GROUP BY status ORDER BY status")
        .fetch_all(db)
        .await
}
