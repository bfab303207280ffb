//! Step state transitions. Each is one statement guarded by the status it expects (and,
//! for a running step, by its lease token), so two workers racing for one step cannot both
//! win, and a worker that lost its lease cannot record anything.
//!
//! Lock order: whatever writes a run's steps locks the run's row first, then the steps,
//! then their dependents (a claim, a fence, a completion, a group transaction, a failure,
//! the lease reaper, an operator's retry or cancel), so no two of them wait for each other
//! in a circle. A step of a run that is `canceling` stops at its next transaction: the
//! fence, the progress record and the completion refuse it, and [`stop_canceled`] ends it.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

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
    pub action: String,
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
    pub run_status: String,
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

/// How a failed attempt is recorded.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub code: &'a str,
    pub message: &'a str,
    pub permanent: bool,
    /// When the next attempt may start (ignored when the step ends dead).
    pub retry_in: Duration,
    /// The backoff ceiling the delay was drawn under, kept in the run's history.
    pub ceiling: Duration,
}

/// `running -> ready` (later) or `running -> dead`, with the run marked failed when the
/// step is dead; `running -> canceled` when the run is canceling (a canceled step never
/// becomes ready again), and the run then `canceled` if no other step of it runs. The
/// run's row is locked first. Returns the step's new status, or `None` if the lease was
/// already lost.
pub async fn fail(
    pool: &PgPool,
    step_id: i64,
    token: Uuid,
    failure: &Failure<'_>,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some((run_id, canceling)) = lock_run_of(&mut tx, step_id).await? else {
        return Ok(None);
    };
    let status: Option<String> = sqlx::query_scalar(
        "WITH failed AS (
             UPDATE offboard.steps
             SET status = CASE WHEN $8 THEN 'canceled'
                               WHEN $3 OR attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
                 next_attempt_at = now() + make_interval(secs => $6),
                 finished_at = CASE WHEN $8 OR $3 OR attempts >= max_attempts THEN now() END,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 last_error_code = $4, last_error_message = $5
             WHERE id = $1 AND lease_token = $2 AND status = 'running'
             RETURNING run_id, name, status, attempts),
         run AS (
             UPDATE offboard.runs r
             SET status = 'failed', error_code = $4,
                 error_message = 'step ' || f.name || ' is dead: ' || $5
             FROM failed f WHERE r.id = f.run_id AND f.status = 'dead' AND r.status = 'running'
             RETURNING r.id),
         history AS (
             INSERT INTO offboard.run_events (run_id, kind, step, actor, detail)
             SELECT run_id, CASE status WHEN 'dead' THEN 'step_dead'
                                        WHEN 'canceled' THEN 'step_canceled'
                                        ELSE 'step_retry_scheduled' END,
                    name, 'system',
                    jsonb_build_object('attempt', attempts, 'code', $4,
                                       'delay_ms', CASE WHEN status = 'ready'
                                                        THEN round($6 * 1000)::bigint END,
                                       'ceiling_ms', round($7 * 1000)::bigint)
             FROM failed)
         SELECT status FROM failed",
    )
    .bind(step_id)
    .bind(token)
    .bind(failure.permanent)
    .bind(failure.code)
    .bind(failure.message)
    .bind(secs(failure.retry_in))
    .bind(secs(failure.ceiling))
    .bind(canceling)
    .fetch_optional(&mut *tx)
    .await?;
    if status.as_deref() == Some("canceled") {
        super::runs::finish_canceled_if_idle(&mut tx, run_id).await?;
    }
    tx.commit().await?;
    Ok(status)
}

/// `running -> ready` after `pause`, the attempt given back: the step could not start its
/// work (an outside destination's breaker is open, its rate limit spent) and waits off its
/// worker slot. `running -> canceled` when the run is canceling. Returns the new status, or
/// `None` if the lease was already lost.
pub async fn defer(
    pool: &PgPool,
    step_id: i64,
    token: Uuid,
    code: &str,
    message: &str,
    pause: Duration,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some((run_id, canceling)) = lock_run_of(&mut tx, step_id).await? else {
        return Ok(None);
    };
    let status: Option<String> = sqlx::query_scalar(
        "WITH deferred AS (
             UPDATE offboard.steps
             SET status = CASE WHEN $6 THEN 'canceled' ELSE 'ready' END,
                 attempts = greatest(attempts - 1, 0),
                 next_attempt_at = now() + make_interval(secs => $5),
                 finished_at = CASE WHEN $6 THEN now() END,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 last_error_code = $3, last_error_message = $4
             WHERE id = $1 AND lease_token = $2 AND status = 'running'
             RETURNING run_id, name, status, attempts),
         history AS (
             INSERT INTO offboard.run_events (run_id, kind, step, actor, detail)
             SELECT run_id, CASE status WHEN 'canceled' THEN 'step_canceled' ELSE 'step_deferred' END,
                    name, 'system',
                    jsonb_build_object('code', $3, 'delay_ms', round($5 * 1000)::bigint)
             FROM deferred)
         SELECT status FROM deferred",
    )
    .bind(step_id)
    .bind(token)
    .bind(code)
    .bind(message)
    .bind(secs(pause))
    .bind(canceling)
    .fetch_optional(&mut *tx)
    .await?;
    if status.as_deref() == Some("canceled") {
        super::runs::finish_canceled_if_idle(&mut tx, run_id).await?;
    }
    tx.commit().await?;
    Ok(status)
}

/// Locks the run of a step (`FOR NO KEY UPDATE`, the first lock every writer of a run's
/// steps takes) and says whether it is canceling. `None`: no such step.
async fn lock_run_of(
    tx: &mut PgConnection,
    step_id: i64,
) -> Result<Option<(Uuid, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.status = 'canceling' FROM offboard.runs r
         WHERE r.id = (SELECT run_id FROM offboard.steps WHERE id = $1)
         FOR NO KEY UPDATE",
    )
    .bind(step_id)
    .fetch_optional(&mut *tx)
    .await
}

/// A running step whose run is canceling stops here, at a batch boundary: `running ->
/// canceled` (fenced by its lease), and the run turns `canceled`, with its receipt, if no
/// other step of it runs. `false`: the lease was lost or the run is not canceling.
pub async fn stop_canceled(pool: &PgPool, step_id: i64, token: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some((run_id, true)) = lock_run_of(&mut tx, step_id).await? else {
        return Ok(false);
    };
    let stopped = sqlx::query(
        "WITH stopped AS (
             UPDATE offboard.steps
             SET status = 'canceled', finished_at = now(),
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_token = $2 AND status = 'running'
             RETURNING run_id, name, attempts, done)
         INSERT INTO offboard.run_events (run_id, kind, step, actor, detail)
         SELECT run_id, 'step_canceled', name, 'system',
                jsonb_build_object('attempt', attempts, 'done', done)
         FROM stopped",
    )
    .bind(step_id)
    .bind(token)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if stopped {
        super::runs::finish_canceled_if_idle(&mut tx, run_id).await?;
    }
    tx.commit().await?;
    Ok(stopped)
}

/// Renews the leases of steps this process is running. Rows locked by a transaction that
/// is working on them are skipped: that transaction either renewed the lease (its fence)
/// or is about to end the attempt or record a batch.
pub async fn renew_leases(
    pool: &PgPool,
    tokens: &[Uuid],
    lease: Duration,
) -> Result<u64, sqlx::Error> {
    if tokens.is_empty() {
        return Ok(0);
    }
    let renewed = sqlx::query(
        "UPDATE offboard.steps SET lease_expires_at = clock_timestamp() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM offboard.steps
                      WHERE lease_token = ANY ($1) AND status = 'running'
                      FOR UPDATE SKIP LOCKED)",
    )
    .bind(tokens)
    .bind(secs(lease))
    .execute(pool)
    .await?;
    Ok(renewed.rows_affected())
}

/// A step whose lease expired (its worker died or hung, or its attempt passed its
/// deadline) goes back to ready, after a backoff delay like any failed attempt (full
/// jitter under base·2^(attempt−1), capped). The attempt counts, unless the lost worker
/// had committed progress (a batched step resumes from its cursor, so it is not poison); a
/// step that used all its attempts without getting anywhere is quarantined as dead, so a
/// step that kills its worker cannot loop forever. A step of a canceling run is canceled
/// instead, and the run turns canceled if it was its last running step.
///
/// Runs are locked before their steps (skipping any locked by someone else: the next sweep
/// takes them), the order every writer of a run's steps keeps.
pub async fn reap_expired_leases(
    pool: &PgPool,
    backoff_base: Duration,
    backoff_cap: Duration,
) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let reaped: Vec<(Uuid, String, String)> = sqlx::query_as(
        "WITH due AS (
             SELECT DISTINCT run_id FROM offboard.steps
             WHERE status = 'running' AND lease_expires_at < clock_timestamp()
             LIMIT 1000),
         runs AS (
             SELECT r.id, r.status = 'canceling' AS canceling FROM offboard.runs r
             WHERE r.id IN (SELECT run_id FROM due)
             ORDER BY r.id
             FOR NO KEY UPDATE SKIP LOCKED),
         expired AS (
             SELECT s.id, l.canceling,
                    s.attempts - CASE WHEN s.done > s.done_at_claim THEN 1 ELSE 0 END AS counted
             FROM offboard.steps s JOIN runs l ON l.id = s.run_id
             WHERE s.status = 'running' AND s.lease_expires_at < clock_timestamp()
             FOR UPDATE OF s SKIP LOCKED),
         reaped AS (
             UPDATE offboard.steps s
             SET attempts = e.counted,
                 status = CASE WHEN e.canceling THEN 'canceled'
                               WHEN e.counted >= s.max_attempts THEN 'dead' ELSE 'ready' END,
                 finished_at = CASE WHEN e.canceling OR e.counted >= s.max_attempts THEN now() END,
                 next_attempt_at = now() + make_interval(secs =>
                     random() * least($2, $1 * power(2, greatest(e.counted, 1) - 1))),
                 last_error_code = CASE WHEN e.counted >= s.max_attempts AND NOT e.canceling
                                        THEN 'quarantined' ELSE 'lease_expired' END,
                 last_error_message = CASE WHEN e.counted >= s.max_attempts AND NOT e.canceling
                     THEN 'the worker was lost on every one of ' || e.counted || ' attempts'
                     ELSE 'the worker running attempt ' || s.attempts || ' was lost or passed its deadline' END,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
             FROM expired e WHERE s.id = e.id
             RETURNING s.run_id, s.name, s.status, s.attempts, s.last_error_code, s.next_attempt_at),
         failed_runs AS (
             UPDATE offboard.runs r
             SET status = 'failed', error_code = 'quarantined',
                 error_message = 'step ' || x.name || ' is dead: its worker was lost on every attempt'
             FROM reaped x WHERE r.id = x.run_id AND x.status = 'dead' AND r.status = 'running'
             RETURNING r.id),
         history AS (
             INSERT INTO offboard.run_events (run_id, kind, step, actor, detail)
             SELECT run_id, CASE status WHEN 'dead' THEN 'step_dead'
                                        WHEN 'canceled' THEN 'step_canceled'
                                        ELSE 'lease_expired' END,
                    name, 'system',
                    jsonb_build_object('attempt', attempts, 'code', last_error_code,
                                       'delay_ms', CASE WHEN status = 'ready' THEN
                                           greatest(0, round(extract(epoch FROM next_attempt_at - now()) * 1000))::bigint END)
             FROM reaped)
         SELECT run_id, name, status FROM reaped",
    )
    .bind(secs(backoff_base))
    .bind(secs(backoff_cap))
    .fetch_all(&mut *tx)
    .await?;
    let mut stopped: Vec<Uuid> =
        reaped.iter().filter(|(_, _, status)| status == "canceled").map(|r| r.0).collect();
    stopped.dedup();
    for run_id in stopped {
        super::runs::finish_canceled_if_idle(&mut tx, run_id).await?;
    }
    tx.commit().await?;
    Ok(reaped)
}

/// Limits that keep Redis small and tenants fair.
#[derive(Debug, Clone, Copy)]
pub struct DispatchLimits {
    pub max_in_flight: i64,
    pub max_in_flight_per_company: i64,
}

/// `ready -> queued` for the steps that may start now, within the global and per-company
/// limits, taking companies in turn. A turn is one task: the ready steps of the company's
/// oldest run with any (see [`into_tasks`]), so a run's steps that became ready together
/// travel together. Dispatchers in several processes take turns on an advisory lock, so the
/// limits hold across them. Returns the steps to push to Redis after the commit, in the
/// order they were picked.
///
/// The cost follows the companies with ready steps, not the backlog: the companies are
/// found by a skip scan over `steps_ready_by_company`, and each contributes at most the
/// turns this pass can use — room / companies, rounded up, and never past its own limit.
/// A pass may so take fewer steps than there is room for (when some companies have fewer
/// ready steps than their share); the dispatcher then runs again, and the order in which
/// steps start is the same.
///
/// Bitmap scans are off for the pass: the in-flight count then reads `steps_in_flight`
/// with a plain index scan, which marks the entries of steps that have finished as dead
/// for the next pass, where a bitmap scan checked every one of them in the heap each time
/// (ten times the live ones during a burst, before vacuum removes them).
pub async fn dispatch_ready(
    pool: &PgPool,
    limits: DispatchLimits,
) -> Result<Vec<Dispatched>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtext('offboard.dispatch'))
                AND set_config('enable_bitmapscan', 'off', true) = 'off'",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !locked {
        return Ok(Vec::new());
    }
    let picked: Vec<Dispatched> = sqlx::query_as(
        "WITH RECURSIVE ready_companies AS (
             (SELECT company_id FROM offboard.steps WHERE status = 'ready'
              ORDER BY company_id LIMIT 1)
             UNION ALL
             SELECT (SELECT s.company_id FROM offboard.steps s
                     WHERE s.status = 'ready' AND s.company_id > r.company_id
                     ORDER BY s.company_id LIMIT 1)
             FROM ready_companies r WHERE r.company_id IS NOT NULL),
         in_flight AS (
             SELECT company_id, count(*) AS n FROM offboard.steps
             WHERE status IN ('queued', 'running') GROUP BY company_id),
         room AS (
             SELECT f.n, ceil(f.n::numeric / greatest(1, (SELECT count(company_id) FROM ready_companies)))::bigint AS turns
             FROM (SELECT greatest(0, $1 - (SELECT coalesce(sum(n), 0) FROM in_flight)) AS n) f),
         picked AS (
             SELECT c.id, c.turn
             FROM ready_companies r
             LEFT JOIN in_flight f ON f.company_id = r.company_id
             CROSS JOIN LATERAL (
                 SELECT x.id, dense_rank() OVER (ORDER BY x.run_first) AS turn
                 FROM (SELECT y.id, min(y.position) OVER (PARTITION BY y.run_id) AS run_first
                       FROM (SELECT s.id, s.run_id,
                                    row_number() OVER (ORDER BY s.next_attempt_at, s.id) AS position
                             FROM offboard.steps s
                             WHERE s.company_id = r.company_id AND s.status = 'ready'
                               AND s.next_attempt_at <= now()
                             ORDER BY s.next_attempt_at, s.id
                             LIMIT least(greatest(0, $2 - coalesce(f.n, 0)),
                                         (SELECT turns FROM room) * $3)) y) x) c
             WHERE r.company_id IS NOT NULL AND c.turn <= (SELECT turns FROM room)
             ORDER BY c.turn, c.id
             LIMIT (SELECT n FROM room)),
         -- Rows an operator's cancel or retry holds are left for the next pass (no lock
         -- waits in the dispatcher), and a step of a run that is stopping is never queued.
         free AS (
             SELECT s.id FROM offboard.steps s JOIN picked p ON p.id = s.id
             WHERE s.status = 'ready'
               AND EXISTS (SELECT 1 FROM offboard.runs r
                           WHERE r.id = s.run_id AND r.status NOT IN ('canceling', 'canceled'))
             FOR UPDATE OF s SKIP LOCKED)
         UPDATE offboard.steps s SET status = 'queued', queued_at = now()
         FROM picked p WHERE s.id = p.id AND s.id IN (SELECT id FROM free)
         RETURNING s.id, s.run_id, s.attempts, p.turn",
    )
    .bind(limits.max_in_flight)
    .bind(limits.max_in_flight_per_company)
    .bind(MAX_STEPS_PER_TASK as i64)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut picked = picked;
    picked.sort_by_key(|d| (d.turn, d.id));
    Ok(picked)
}

/// A step the dispatcher moved to `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Dispatched {
    pub id: i64,
    pub run_id: Uuid,
    /// Attempts made before this one.
    pub attempts: i32,
    /// Its company's turn in this pass (companies take turns).
    pub turn: i64,
}

/// Steps one task carries at most.
pub const MAX_STEPS_PER_TASK: usize = 16;

/// Cuts dispatched steps into tasks, keeping their order: the steps of one run on their
/// first attempt travel together (up to [`MAX_STEPS_PER_TASK`]) and run in one transaction;
/// a step that has been attempted before travels alone, so a step that fails or kills its
/// worker cannot take its neighbours down with it again.
pub fn into_tasks(dispatched: &[Dispatched]) -> Vec<Vec<i64>> {
    let mut tasks: Vec<Vec<i64>> = Vec::new();
    let mut open: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    for step in dispatched {
        if step.attempts > 0 {
            tasks.push(vec![step.id]);
            continue;
        }
        match open.get(&step.run_id) {
            Some(&i) if tasks[i].len() < MAX_STEPS_PER_TASK => tasks[i].push(step.id),
            _ => {
                open.insert(step.run_id, tasks.len());
                tasks.push(vec![step.id]);
            }
        }
    }
    tasks
}

/// Queued steps no worker has claimed within `after`: their Redis task was lost (flush,
/// restart, a crash between commit and push) or is still waiting. Marks them re-queued now
/// and returns them to be pushed again; a duplicate delivery is harmless because a claim
/// only succeeds on a queued step.
pub async fn take_stale_queued(
    pool: &PgPool,
    after: Duration,
    limit: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE offboard.steps SET queued_at = now()
         WHERE id IN (SELECT id FROM offboard.steps
                      WHERE status = 'queued' AND queued_at < now() - make_interval(secs => $1)
                      ORDER BY queued_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(secs(after))
    .bind(limit)
    .fetch_all(pool)
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
