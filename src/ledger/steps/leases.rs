//! Leases of running steps: renewed by the process running them, reaped when they
//! expire; and queued steps whose Redis task was lost, taken back to be pushed again.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::secs;
use crate::domain::{StepKey, StepStatus};

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
         WHERE (run_id, position) IN (SELECT run_id, position FROM offboard.steps
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
) -> Result<Vec<(Uuid, String, StepStatus)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let reaped: Vec<(Uuid, String, StepStatus)> = sqlx::query_as(
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
             SELECT s.run_id, s.position, l.canceling,
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
             FROM expired e WHERE s.run_id = e.run_id AND s.position = e.position
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
    let mut stopped: Vec<Uuid> = reaped
        .iter()
        .filter(|(_, _, status)| *status == StepStatus::Canceled)
        .map(|r| r.0)
        .collect();
    stopped.dedup();
    for run_id in stopped {
        crate::ledger::runs::finish_canceled_if_idle(&mut tx, run_id).await?;
    }
    tx.commit().await?;
    Ok(reaped)
}

/// Queued steps no worker has claimed within `after`: their Redis task was lost (flush,
/// restart, a crash between commit and push) or is still waiting. Marks them re-queued now
/// and returns them to be pushed again; a duplicate delivery is harmless because a claim
/// only succeeds on a queued step.
pub async fn take_stale_queued(
    pool: &PgPool,
    after: Duration,
    limit: i64,
) -> Result<Vec<StepKey>, sqlx::Error> {
    let taken: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE offboard.steps SET queued_at = now()
         WHERE (run_id, position) IN (
             SELECT run_id, position FROM offboard.steps
             WHERE status = 'queued' AND queued_at < now() - make_interval(secs => $1)
             ORDER BY queued_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING run_id, position",
    )
    .bind(secs(after))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(taken.into_iter().map(|(run, position)| StepKey::new(run, position)).collect())
}
