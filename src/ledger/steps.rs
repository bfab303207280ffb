//! Step state transitions. Each is one statement guarded by the status it expects (and,
//! for a running step, by its lease token), so two workers racing for one step cannot both
//! win, and a worker that lost its lease cannot record anything.

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
/// duplicate delivery.
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
        "WITH claimed AS (
             UPDATE offboard.steps
             SET status = 'running', attempts = attempts + 1, lease_token = gen_random_uuid(),
                 lease_owner = $2, lease_expires_at = clock_timestamp() + make_interval(secs => $3),
                 started_at = coalesce(started_at, now()), queued_at = NULL, done_at_claim = done
             WHERE id = $1 AND status = 'queued'
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
/// taken over, or the run canceled): the caller must roll back. The first transaction
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
         RETURNING done, total, cursor",
    )
    .bind(step_id)
    .bind(token)
    .bind(secs(lease))
    .fetch_optional(&mut *tx)
    .await
}

/// Records a batch of a batched step in the transaction that moved it, if the lease is
/// still `token`'s. `false` means it was lost: the caller must roll back the batch.
pub async fn record_progress(
    tx: &mut PgConnection,
    step_id: i64,
    token: Uuid,
    done: i64,
    total: i64,
    cursor: &Value,
) -> Result<bool, sqlx::Error> {
    let recorded = sqlx::query(
        "UPDATE offboard.steps SET done = $3, total = $4, cursor = $5
         WHERE id = $1 AND lease_token = $2 AND status = 'running'",
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
/// each other.
pub async fn complete(
    tx: &mut PgConnection,
    step_id: i64,
    token: Uuid,
    result: &Value,
    done: i64,
    total: i64,
) -> Result<Option<Completion>, sqlx::Error> {
    sqlx::query_as(
        "WITH finished AS (
             UPDATE offboard.steps
             SET status = 'succeeded', finished_at = now(), result = $3, done = $4, total = $5,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 last_error_code = NULL, last_error_message = NULL
             WHERE id = $1 AND lease_token = $2 AND status = 'running'
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
/// step is dead. Returns the step's new status, or `None` if the lease was already lost.
pub async fn fail(
    pool: &PgPool,
    step_id: i64,
    token: Uuid,
    failure: &Failure<'_>,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH failed AS (
             UPDATE offboard.steps
             SET status = CASE WHEN $3 OR attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
                 next_attempt_at = now() + make_interval(secs => $6),
                 finished_at = CASE WHEN $3 OR attempts >= max_attempts THEN now() END,
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
             SELECT run_id, CASE WHEN status = 'dead' THEN 'step_dead' ELSE 'step_retry_scheduled' END,
                    name, 'system',
                    jsonb_build_object('attempt', attempts, 'code', $4,
                                       'delay_ms', CASE WHEN status = 'dead' THEN NULL
                                                        ELSE round($6 * 1000)::bigint END,
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
    .fetch_optional(pool)
    .await
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

/// A step whose lease expired (its worker died or hung) goes back to ready. The attempt
/// counts, unless the lost worker had committed progress (a batched step resumes from its
/// cursor, so it is not poison); a step that used all its attempts without getting anywhere
/// is quarantined as dead, so a step that kills its worker cannot loop forever.
pub async fn reap_expired_leases(
    pool: &PgPool,
) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "WITH expired AS (
             SELECT id, attempts - CASE WHEN done > done_at_claim THEN 1 ELSE 0 END AS counted
             FROM offboard.steps
             WHERE status = 'running' AND lease_expires_at < clock_timestamp()
             ORDER BY lease_expires_at LIMIT 1000
             FOR UPDATE SKIP LOCKED),
         reaped AS (
             UPDATE offboard.steps s
             SET attempts = e.counted,
                 status = CASE WHEN e.counted >= s.max_attempts THEN 'dead' ELSE 'ready' END,
                 finished_at = CASE WHEN e.counted >= s.max_attempts THEN now() END,
                 next_attempt_at = now(),
                 last_error_code = CASE WHEN e.counted >= s.max_attempts
                                        THEN 'quarantined' ELSE 'lease_expired' END,
                 last_error_message = CASE WHEN e.counted >= s.max_attempts
                     THEN 'the worker was lost on every one of ' || e.counted || ' attempts'
                     ELSE 'the worker running attempt ' || s.attempts || ' was lost' END,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
             FROM expired e WHERE s.id = e.id
             RETURNING s.run_id, s.name, s.status, s.attempts, s.last_error_code),
         failed_runs AS (
             UPDATE offboard.runs r
             SET status = 'failed', error_code = 'quarantined',
                 error_message = 'step ' || x.name || ' is dead: its worker was lost on every attempt'
             FROM reaped x WHERE r.id = x.run_id AND x.status = 'dead' AND r.status = 'running'
             RETURNING r.id),
         history AS (
             INSERT INTO offboard.run_events (run_id, kind, step, actor, detail)
             SELECT run_id, CASE WHEN status = 'dead' THEN 'step_dead' ELSE 'lease_expired' END,
                    name, 'system', jsonb_build_object('attempt', attempts, 'code', last_error_code)
             FROM reaped)
         SELECT run_id, name, status FROM reaped",
    )
    .fetch_all(pool)
    .await
}

/// Limits that keep Redis small and tenants fair.
#[derive(Debug, Clone, Copy)]
pub struct DispatchLimits {
    pub max_in_flight: i64,
    pub max_in_flight_per_company: i64,
}

/// `ready -> queued` for the steps that may start now, within the global and per-company
/// limits, taking companies in turn (each company's oldest ready step first). Dispatchers
/// in several processes take turns on an advisory lock, so the limits hold across them.
/// Returns the step ids to push to Redis after the commit.
///
/// The cost follows the companies with ready steps, not the backlog: the companies are
/// found by a skip scan over `steps_ready_by_company`, and each contributes at most the
/// turns this pass can use — room / companies, rounded up, and never past its own limit.
/// A pass may so take fewer steps than there is room for (when some companies have fewer
/// ready steps than their share); the dispatcher then runs again, and the order in which
/// steps start is the same.
pub async fn dispatch_ready(
    pool: &PgPool,
    limits: DispatchLimits,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('offboard.dispatch'))")
            .fetch_one(&mut *tx)
            .await?;
    if !locked {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = sqlx::query_scalar(
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
             SELECT c.id
             FROM ready_companies r
             LEFT JOIN in_flight f ON f.company_id = r.company_id
             CROSS JOIN LATERAL (
                 SELECT s.id, row_number() OVER (ORDER BY s.next_attempt_at, s.id) AS turn
                 FROM offboard.steps s
                 WHERE s.company_id = r.company_id AND s.status = 'ready'
                   AND s.next_attempt_at <= now()
                 ORDER BY s.next_attempt_at, s.id
                 LIMIT least(greatest(0, $2 - coalesce(f.n, 0)), (SELECT turns FROM room))) c
             WHERE r.company_id IS NOT NULL
             ORDER BY c.turn, c.id
             LIMIT (SELECT n FROM room))
         UPDATE offboard.steps s SET status = 'queued', queued_at = now()
         FROM picked p WHERE s.id = p.id AND s.status = 'ready'
         RETURNING s.id",
    )
    .bind(limits.max_in_flight)
    .bind(limits.max_in_flight_per_company)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
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
