//! A run's steps on their first attempt, run in one transaction (the executor's group):
//! locked together, then completed together or handed a lease each to go on alone.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Claim, secs};
use crate::domain::StepKey;

/// Locks the queued steps among `steps` (steps of one run on their first attempt) for a
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
    steps: &[StepKey],
) -> Result<Vec<Claim>, sqlx::Error> {
    let Some(first) = steps.first() else {
        return Ok(Vec::new());
    };
    // Keys of another run than the first's are not locked (a task is one run's).
    let positions: Vec<i32> =
        steps.iter().filter(|k| k.run_id == first.run_id).map(|k| k.position).collect();
    sqlx::query_as(
        "SELECT s.run_id, s.position, s.name, s.attempts + 1 AS attempts, s.max_attempts,
                '00000000-0000-0000-0000-000000000000'::uuid AS lease_token,
                r.company_id, r.user_id, r.action, r.plan, r.params, r.actor_user_id,
                s.done, s.total, s.cursor
         FROM offboard.steps s JOIN offboard.runs r ON r.id = s.run_id
         WHERE s.run_id = (SELECT l.id FROM offboard.runs l
                           WHERE l.id = $1 AND l.status NOT IN ('canceling', 'canceled')
                           FOR NO KEY UPDATE)
           AND s.position = ANY ($2) AND s.status = 'queued'
         ORDER BY s.position
         FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(first.run_id)
    .bind(&positions)
    .fetch_all(&mut *tx)
    .await
}

/// A locked step that finished, for [`complete_many`].
#[derive(Debug, Clone)]
pub struct Completed<'a> {
    pub step: StepKey,
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
/// steps among them, and the run is marked started. A run whose last steps these are is
/// not written here: it is one of [`Completions::finished_runs`], and
/// [`crate::ledger::runs::finish`] writes it once, started and succeeded (a run is a
/// dozen index entries a version, and one its group ends never shows `running`).
pub async fn complete_many(
    tx: &mut PgConnection,
    steps: &[Completed<'_>],
) -> Result<Completions, sqlx::Error> {
    let runs: Vec<Uuid> = steps.iter().map(|s| s.step.run_id).collect();
    let positions: Vec<i32> = steps.iter().map(|s| s.step.position).collect();
    let results: Vec<&Value> = steps.iter().map(|s| s.result).collect();
    let done: Vec<i64> = steps.iter().map(|s| s.done).collect();
    let total: Vec<i64> = steps.iter().map(|s| s.total).collect();
    sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $5::integer[], $2::jsonb[], $3::bigint[], $4::bigint[])
                 AS i(run_id, position, result, done, total)),
         finished AS (
             UPDATE offboard.steps s
             SET status = 'succeeded', attempts = s.attempts + 1,
                 started_at = coalesce(s.started_at, now()), finished_at = now(), queued_at = NULL,
                 result = i.result, done = i.done, total = i.total,
                 last_error_code = NULL, last_error_message = NULL
             FROM input i
             WHERE s.run_id = i.run_id AND s.position = i.position AND s.status = 'queued'
             RETURNING s.run_id, s.name),
         waiting AS (
             SELECT d.run_id, d.position, count(*) AS n
             FROM finished f JOIN offboard.steps d ON d.run_id = f.run_id AND f.name = ANY (d.depends_on)
             GROUP BY d.run_id, d.position),
         unblocked AS (
             UPDATE offboard.steps d
             SET deps_remaining = d.deps_remaining - w.n,
                 status = CASE WHEN d.deps_remaining = w.n AND d.status = 'pending'
                               THEN 'ready' ELSE d.status END,
                 next_attempt_at = CASE WHEN d.deps_remaining = w.n AND d.status = 'pending'
                                        THEN now() ELSE d.next_attempt_at END
             FROM waiting w WHERE d.run_id = w.run_id AND d.position = w.position
             RETURNING d.status),
         per_run AS (SELECT run_id, count(*) AS n FROM finished GROUP BY run_id),
         run AS (
             UPDATE offboard.runs r
             SET steps_remaining = r.steps_remaining - p.n,
                 status = CASE WHEN r.status = 'queued' THEN 'running' ELSE r.status END,
                 started_at = coalesce(r.started_at, now())
             FROM per_run p WHERE r.id = p.run_id AND r.steps_remaining > p.n),
         -- A run these steps end is left for runs::finish to write once, succeeded: it was
         -- locked by lock_queued, so what this statement reads of it is current.
         ending AS (
             SELECT r.id FROM offboard.runs r JOIN per_run p ON p.run_id = r.id
             WHERE r.steps_remaining = p.n AND r.status IN ('queued', 'running'))
         SELECT (SELECT count(*) FROM finished) AS completed,
                (SELECT count(*) FROM unblocked WHERE status = 'ready') AS unblocked,
                (SELECT coalesce(array_agg(id), '{}') FROM ending) AS finished_runs",
    )
    .bind(&runs)
    .bind(&results)
    .bind(&done)
    .bind(&total)
    .bind(&positions)
    .fetch_one(&mut *tx)
    .await
}

/// A locked step that goes on alone after its group's transaction, with what that
/// transaction did of it.
#[derive(Debug, Clone)]
pub struct GoesOn<'a> {
    pub step: StepKey,
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
) -> Result<Vec<(StepKey, Uuid)>, sqlx::Error> {
    let runs: Vec<Uuid> = steps.iter().map(|s| s.step.run_id).collect();
    let positions: Vec<i32> = steps.iter().map(|s| s.step.position).collect();
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
             FROM unnest($1::uuid[], $8::integer[], $2::bigint[], $3::bigint[], $4::jsonb[],
                         $7::bigint[])
                 AS i(run_id, position, done, total, cursor, before)
             WHERE s.run_id = i.run_id AND s.position = i.position AND s.status = 'queued'
             RETURNING s.run_id, s.position, s.lease_token),
         started AS (
             UPDATE offboard.runs r SET status = 'running', started_at = coalesce(r.started_at, now())
             WHERE r.id IN (SELECT run_id FROM claimed) AND r.status = 'queued')
         SELECT run_id, position, lease_token FROM claimed",
    )
    .bind(&runs)
    .bind(&done)
    .bind(&total)
    .bind(&cursors)
    .bind(worker)
    .bind(secs(lease))
    .bind(&before)
    .bind(&positions)
    .fetch_all(&mut *tx)
    .await
    .map(|rows: Vec<(Uuid, i32, Uuid)>| {
        rows.into_iter().map(|(run, position, token)| (StepKey::new(run, position), token)).collect()
    })
}
