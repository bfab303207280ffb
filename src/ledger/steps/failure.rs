//! A failed attempt: retried later, dead, or (its run canceling) canceled; a step that
//! waits on an outside destination, deferred without spending an attempt.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::secs;
use crate::domain::{StepKey, StepStatus};

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
    step: StepKey,
    token: Uuid,
    failure: &Failure<'_>,
) -> Result<Option<StepStatus>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some((run_id, canceling)) = lock_run_of(&mut tx, step.run_id).await? else {
        return Ok(None);
    };
    let status: Option<StepStatus> = sqlx::query_scalar(
        "WITH failed AS (
             UPDATE offboard.steps
             SET status = CASE WHEN $8 THEN 'canceled'
                               WHEN $3 OR attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
                 next_attempt_at = now() + make_interval(secs => $6),
                 finished_at = CASE WHEN $8 OR $3 OR attempts >= max_attempts THEN now() END,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 last_error_code = $4, last_error_message = $5
             WHERE run_id = $1 AND position = $9 AND lease_token = $2 AND status = 'running'
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
    .bind(step.run_id)
    .bind(token)
    .bind(failure.permanent)
    .bind(failure.code)
    .bind(failure.message)
    .bind(secs(failure.retry_in))
    .bind(secs(failure.ceiling))
    .bind(canceling)
    .bind(step.position)
    .fetch_optional(&mut *tx)
    .await?;
    if status == Some(StepStatus::Canceled) {
        crate::ledger::runs::finish_canceled_if_idle(&mut tx, run_id).await?;
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
    step: StepKey,
    token: Uuid,
    code: &str,
    message: &str,
    pause: Duration,
) -> Result<Option<StepStatus>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some((run_id, canceling)) = lock_run_of(&mut tx, step.run_id).await? else {
        return Ok(None);
    };
    let status: Option<StepStatus> = sqlx::query_scalar(
        "WITH deferred AS (
             UPDATE offboard.steps
             SET status = CASE WHEN $6 THEN 'canceled' ELSE 'ready' END,
                 attempts = greatest(attempts - 1, 0),
                 next_attempt_at = now() + make_interval(secs => $5),
                 finished_at = CASE WHEN $6 THEN now() END,
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 last_error_code = $3, last_error_message = $4
             WHERE run_id = $1 AND position = $7 AND lease_token = $2 AND status = 'running'
             RETURNING run_id, name, status, attempts),
         history AS (
             INSERT INTO offboard.run_events (run_id, kind, step, actor, detail)
             SELECT run_id, CASE status WHEN 'canceled' THEN 'step_canceled' ELSE 'step_deferred' END,
                    name, 'system',
                    jsonb_build_object('code', $3, 'delay_ms', round($5 * 1000)::bigint)
             FROM deferred)
         SELECT status FROM deferred",
    )
    .bind(step.run_id)
    .bind(token)
    .bind(code)
    .bind(message)
    .bind(secs(pause))
    .bind(canceling)
    .bind(step.position)
    .fetch_optional(&mut *tx)
    .await?;
    if status == Some(StepStatus::Canceled) {
        crate::ledger::runs::finish_canceled_if_idle(&mut tx, run_id).await?;
    }
    tx.commit().await?;
    Ok(status)
}

/// Locks the run of a step (`FOR NO KEY UPDATE`, the first lock every writer of a run's
/// steps takes) and says whether it is canceling. `None`: no such run.
async fn lock_run_of(
    tx: &mut PgConnection,
    run_id: Uuid,
) -> Result<Option<(Uuid, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.status = 'canceling' FROM offboard.runs r WHERE r.id = $1
         FOR NO KEY UPDATE",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await
}

/// A running step whose run is canceling stops here, at a batch boundary: `running ->
/// canceled` (fenced by its lease), and the run turns `canceled`, with its receipt, if no
/// other step of it runs. `false`: the lease was lost or the run is not canceling.
pub async fn stop_canceled(pool: &PgPool, step: StepKey, token: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some((run_id, true)) = lock_run_of(&mut tx, step.run_id).await? else {
        return Ok(false);
    };
    let stopped = sqlx::query(
        "WITH stopped AS (
             UPDATE offboard.steps
             SET status = 'canceled', finished_at = now(),
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
             WHERE run_id = $1 AND position = $3 AND lease_token = $2 AND status = 'running'
             RETURNING run_id, name, attempts, done)
         INSERT INTO offboard.run_events (run_id, kind, step, actor, detail)
         SELECT run_id, 'step_canceled', name, 'system',
                jsonb_build_object('attempt', attempts, 'done', done)
         FROM stopped",
    )
    .bind(step.run_id)
    .bind(token)
    .bind(step.position)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if stopped {
        crate::ledger::runs::finish_canceled_if_idle(&mut tx, run_id).await?;
    }
    tx.commit().await?;
    Ok(stopped)
}
