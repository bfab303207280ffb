//! Operators' actions on a run: retry its dead steps, cancel it; and a canceling run
//! turning canceled once none of its steps runs.

use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use uuid::Uuid;

use super::{RUN_COLUMNS, RunRow, build_receipt, record_event, steps_of};
use crate::domain::{Actor, RunEventKind, RunStatus};

/// Why an operator action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRefusal {
    NotFound,
    /// The run is not in a state the action applies to; carries its status.
    WrongState,
    /// Another transaction held the run longer than the operator's lock timeout (a worker's
    /// batch, say): nothing changed; try again.
    Busy,
}

/// How long an operator's retry or cancel waits for a run's lock before it answers
/// [`OperatorRefusal::Busy`] instead of waiting.
pub const OPERATOR_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Locks a run for an operator action and returns its status, within
/// [`OPERATOR_LOCK_TIMEOUT`]. `Ok(Err(Busy))` when the lock was not had in time.
pub(in crate::ledger) async fn lock_for_operator(
    tx: &mut PgConnection,
    run_id: Uuid,
    company: Option<i64>,
) -> Result<Result<RunStatus, OperatorRefusal>, sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{}ms'",
        OPERATOR_LOCK_TIMEOUT.as_millis()
    )))
    .execute(&mut *tx)
    .await?;
    let status = sqlx::query_scalar(
        "SELECT status FROM offboard.runs WHERE id = $1 AND ($2::bigint IS NULL OR company_id = $2) FOR UPDATE",
    )
    .bind(run_id)
    .bind(company)
    .fetch_optional(&mut *tx)
    .await;
    match status {
        Ok(Some(status)) => Ok(Ok(status)),
        Ok(None) => Ok(Err(OperatorRefusal::NotFound)),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            Ok(Err(OperatorRefusal::Busy))
        }
        Err(e) => Err(e),
    }
}

/// Dead steps go back to ready with fresh attempts; the run resumes. Recorded with the
/// actor. Only a running or failed run has dead steps to retry (a canceling one is
/// stopping).
pub async fn retry(
    pool: &PgPool,
    run_id: Uuid,
    company: Option<i64>,
    actor: Actor,
) -> Result<Result<i64, OperatorRefusal>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    match lock_for_operator(&mut tx, run_id, company).await? {
        Err(refusal) => return Ok(Err(refusal)),
        Ok(status)
            if !matches!(status, RunStatus::Queued | RunStatus::Running | RunStatus::Failed) =>
        {
            return Ok(Err(OperatorRefusal::WrongState));
        }
        Ok(_) => {}
    }
    let revived = retry_locked(&mut tx, run_id, actor, json!({})).await?;
    if revived == 0 {
        return Ok(Err(OperatorRefusal::WrongState));
    }
    tx.commit().await?;
    Ok(Ok(revived))
}

/// [`retry`] of a run whose row the caller's transaction has locked: its dead steps go
/// back in line and the run resumes, recorded in its history as `retried` with `actor`
/// and `detail` (a bulk operation adds its id and filter). Returns the steps put back; 0
/// (and nothing written) when none was dead.
pub async fn retry_locked(
    tx: &mut PgConnection,
    run_id: Uuid,
    actor: Actor,
    detail: Value,
) -> Result<i64, sqlx::Error> {
    let revived: Vec<String> = sqlx::query_scalar(
        "UPDATE offboard.steps
         SET status = CASE WHEN deps_remaining = 0 THEN 'ready' ELSE 'pending' END,
             attempts = 0, next_attempt_at = now(), finished_at = NULL
         WHERE run_id = $1 AND status = 'dead'
         RETURNING name",
    )
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?;
    if revived.is_empty() {
        return Ok(0);
    }
    sqlx::query(
        "UPDATE offboard.runs SET status = 'running', error_code = NULL, error_message = NULL, finished_at = NULL
         WHERE id = $1",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    let mut detail = detail;
    if let Value::Object(map) = &mut detail {
        map.insert("steps".into(), json!(revived));
    }
    record_event(&mut *tx, run_id, RunEventKind::Retried, None, actor, detail).await?;
    Ok(revived.len() as i64)
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancellation {
    /// Steps that had not started (or were dead) and never will.
    pub steps_canceled: i64,
    /// Steps still running: each stops at its next batch boundary.
    pub steps_running: i64,
    /// `canceled` when no step was running, else `canceling`.
    pub status: RunStatus,
}

/// Stops a run: no new step starts (steps not running are canceled at once and never
/// become ready again), finished steps stay. With no step running the run is `canceled`
/// now, with its receipt; otherwise it is `canceling` — still the user's active run —
/// until its last running step stops at a batch boundary ([`finish_canceled_if_idle`]).
pub async fn cancel(
    pool: &PgPool,
    run_id: Uuid,
    company: Option<i64>,
    actor: Actor,
) -> Result<Result<Cancellation, OperatorRefusal>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    match lock_for_operator(&mut tx, run_id, company).await? {
        Err(refusal) => return Ok(Err(refusal)),
        Ok(status) if status == RunStatus::Canceling || !status.is_active() => {
            return Ok(Err(OperatorRefusal::WrongState));
        }
        Ok(_) => {}
    }
    let cancellation = cancel_locked(&mut tx, run_id, actor, json!({})).await?;
    tx.commit().await?;
    Ok(Ok(cancellation))
}

/// [`cancel`] of an active run whose row the caller's transaction has locked, recorded with
/// `actor` and `detail` (a bulk operation adds its id and filter).
pub async fn cancel_locked(
    tx: &mut PgConnection,
    run_id: Uuid,
    actor: Actor,
    detail: Value,
) -> Result<Cancellation, sqlx::Error> {
    let (canceled, running): (i64, i64) = sqlx::query_as(
        "WITH canceled AS (
             UPDATE offboard.steps SET status = 'canceled', finished_at = now()
             WHERE run_id = $1 AND status IN ('pending', 'ready', 'queued', 'dead')
             RETURNING position)
         SELECT (SELECT count(*) FROM canceled),
                (SELECT count(*) FROM offboard.steps WHERE run_id = $1 AND status = 'running')",
    )
    .bind(run_id)
    .fetch_one(&mut *tx)
    .await?;
    let mut detail = detail;
    if let Value::Object(map) = &mut detail {
        map.insert("steps_canceled".into(), json!(canceled));
    }
    sqlx::query("UPDATE offboard.runs SET status = 'canceling' WHERE id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    let status = if running == 0 {
        finish_canceled_if_idle_as(&mut *tx, run_id, actor, detail).await?;
        RunStatus::Canceled
    } else {
        if let Value::Object(map) = &mut detail {
            map.insert("steps_running".into(), json!(running));
        }
        record_event(&mut *tx, run_id, RunEventKind::Canceling, None, actor, detail).await?;
        RunStatus::Canceling
    };
    Ok(Cancellation { steps_canceled: canceled, steps_running: running, status })
}

/// A canceling run whose steps have all stopped becomes `canceled`, with its receipt (what
/// was done before the cancel). Called, with the run's row locked, by whatever ends a step
/// of a canceling run; does nothing while a step of it still runs. Returns whether the run
/// turned canceled.
pub async fn finish_canceled_if_idle(
    tx: &mut PgConnection,
    run_id: Uuid,
) -> Result<bool, sqlx::Error> {
    finish_canceled_if_idle_as(tx, run_id, Actor::System, json!({})).await
}

async fn finish_canceled_if_idle_as(
    tx: &mut PgConnection,
    run_id: Uuid,
    actor: Actor,
    detail: Value,
) -> Result<bool, sqlx::Error> {
    let run: Option<RunRow> = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE offboard.runs SET status = 'canceled', finished_at = now(), params = params - 'display_name'
         WHERE id = $1 AND status = 'canceling'
           AND NOT EXISTS (SELECT 1 FROM offboard.steps WHERE run_id = $1 AND status = 'running')
         RETURNING {RUN_COLUMNS}"
    )))
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(run) = run else { return Ok(false) };
    let steps = steps_of(&mut *tx, run_id).await?;
    let receipt = build_receipt(&run, &steps, run.finished_at.unwrap_or(run.created_at));
    // A deactivation stopped before the user was deactivated lifts the login block it set:
    // the user stays active. (Revoked sessions stay revoked.)
    sqlx::query(
        "WITH lifted AS (
             UPDATE crm.users SET login_blocked = false
             WHERE id = $2 AND company_id = $3 AND status = 'active' AND login_blocked)
         UPDATE offboard.runs SET receipt = $4 WHERE id = $1",
    )
    .bind(run_id)
    .bind(run.user_id)
    .bind(run.company_id)
    .bind(&receipt)
    .execute(&mut *tx)
    .await?;
    record_event(&mut *tx, run_id, RunEventKind::Canceled, None, actor, detail).await?;
    Ok(true)
}
