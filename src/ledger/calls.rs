//! Outbound calls of steps, one row each (`offboard.outbound_calls`), and the breaker of
//! each destination host (`offboard.outbound_hosts`). The intent of a call is committed
//! before it is made ([`mark_sending`]), its outcome after ([`record`]); neither is ever
//! held open across the call.

use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{BreakerState, CallKind, CallStatus, StepKey};

/// A call as a step's attempt sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRow {
    pub id: i64,
    pub kind: CallKind,
    pub target_id: i64,
    pub host: String,
    pub idempotency_key: Uuid,
    pub status: CallStatus,
    pub attempts: i32,
}

/// The calls of a step, in planning order.
pub async fn of_step(tx: &mut PgConnection, step: StepKey) -> Result<Vec<CallRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, target_id, host, idempotency_key, status, attempts
         FROM offboard.outbound_calls WHERE run_id = $1 AND position = $2 ORDER BY id",
    )
    .bind(step.run_id)
    .bind(step.position)
    .fetch_all(&mut *tx)
    .await
}

/// The step's progress is its calls: `done` succeeded of `total`. Fenced by the lease.
pub async fn record_step_progress(
    tx: &mut PgConnection,
    step: StepKey,
    token: Uuid,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE offboard.steps s
         SET done = c.done, total = c.total
         FROM (SELECT count(*) FILTER (WHERE status = 'succeeded') AS done, count(*) AS total
               FROM offboard.outbound_calls WHERE run_id = $1 AND position = $3) c
         WHERE s.run_id = $1 AND s.position = $3 AND s.lease_token = $2 AND s.status = 'running'",
    )
    .bind(step.run_id)
    .bind(token)
    .bind(step.position)
    .execute(&mut *tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// The intent, committed before the call: `-> sending`, one attempt more. Returns the
/// attempt's number.
pub async fn mark_sending(pool: &PgPool, call_id: i64) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE offboard.outbound_calls
         SET status = 'sending', attempts = attempts + 1, updated_at = now()
         WHERE id = $1 RETURNING attempts",
    )
    .bind(call_id)
    .fetch_one(pool)
    .await
}

/// How a call ended: one of the [`CallStatus`]es a call can be left in once it went
/// (never `pending` or `sending`), so that what follows a call matches on three cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Succeeded,
    /// Worth another attempt (5xx, 408, 429, no answer).
    Failed,
    /// A permanent answer (another 4xx, a refused address): only an operator's retry
    /// sends it again.
    Dead,
}

impl CallOutcome {
    /// The status the call's row is left in.
    pub fn status(self) -> CallStatus {
        match self {
            CallOutcome::Succeeded => CallStatus::Succeeded,
            CallOutcome::Failed => CallStatus::Failed,
            CallOutcome::Dead => CallStatus::Dead,
        }
    }
}

/// The outcome of one call, in the caller's transaction.
pub async fn record(
    tx: &mut PgConnection,
    call_id: i64,
    outcome: CallOutcome,
    code: Option<u16>,
    error: Option<&str>,
    latency: Option<Duration>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE offboard.outbound_calls
         SET status = $2, last_status_code = $3, last_error = $4,
             last_latency_ms = coalesce($5, last_latency_ms), updated_at = now(),
             succeeded_at = CASE WHEN $2 = 'succeeded' THEN now() END
         WHERE id = $1",
    )
    .bind(call_id)
    .bind(outcome.status())
    .bind(code.map(i32::from))
    .bind(error)
    .bind(latency.map(|l| l.as_millis().min(i32::MAX as u128) as i32))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether a call to `host` may go now, by its breaker. Closed: yes. Open: no, until the
/// pause is over. Half-open (the pause is over): one caller takes the probe, for
/// `probe_lease`; the others wait for its outcome.
pub async fn breaker_admit(
    pool: &PgPool,
    host: &str,
    probe_lease: Duration,
) -> Result<Result<(), Duration>, sqlx::Error> {
    // One statement: the probe is taken by whoever updates the row first.
    let row: Option<(Option<f64>, bool)> = sqlx::query_as(
        "WITH h AS (SELECT host, open_until, probe_until FROM offboard.outbound_hosts
                    WHERE host = $1 AND open_until IS NOT NULL FOR UPDATE),
              probe AS (
                  UPDATE offboard.outbound_hosts o
                  SET probe_until = clock_timestamp() + make_interval(secs => $2), updated_at = now()
                  FROM h WHERE o.host = h.host AND h.open_until <= clock_timestamp()
                    AND (h.probe_until IS NULL OR h.probe_until <= clock_timestamp())
                  RETURNING o.host)
         SELECT extract(epoch FROM greatest(h.open_until, coalesce(h.probe_until, h.open_until))
                                  - clock_timestamp())::float8,
                EXISTS (SELECT 1 FROM probe)
         FROM h",
    )
    .bind(host)
    .bind(probe_lease.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None | Some((_, true)) => Ok(()),
        Some((wait, false)) => {
            Err(Duration::from_secs_f64(wait.unwrap_or(0.0).max(0.0))
                .max(Duration::from_millis(50)))
        }
    })
}

/// A call's effect on its host's breaker, in the caller's transaction: a success closes
/// it; a failure counts, and `after` in a row open it for `pause` (a failed probe reopens
/// it at once).
pub async fn breaker_record(
    tx: &mut PgConnection,
    host: &str,
    succeeded: bool,
    after: i32,
    pause: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO offboard.outbound_hosts AS o (host, consecutive_failures, open_until)
         VALUES ($1, CASE WHEN $2 THEN 0 ELSE 1 END,
                 CASE WHEN NOT $2 AND $3 <= 1 THEN now() + make_interval(secs => $4) END)
         ON CONFLICT (host) DO UPDATE
         SET consecutive_failures = CASE WHEN $2 THEN 0 ELSE o.consecutive_failures + 1 END,
             open_until = CASE WHEN $2 THEN NULL
                               WHEN o.open_until IS NOT NULL OR o.consecutive_failures + 1 >= $3
                               THEN now() + make_interval(secs => $4)
                               ELSE NULL END,
             probe_until = NULL, updated_at = now()",
    )
    .bind(host)
    .bind(succeeded)
    .bind(after)
    .bind(pause.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A destination host's breaker, for metrics and the dashboard.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BreakerView {
    pub host: String,
    pub state: BreakerState,
    pub consecutive_failures: i32,
    pub open_until: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn breakers<'e>(db: impl PgExecutor<'e>) -> Result<Vec<BreakerView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT host,
                CASE WHEN open_until IS NULL THEN 'closed'
                     WHEN open_until > now() THEN 'open' ELSE 'half_open' END AS state,
                consecutive_failures, open_until
         FROM offboard.outbound_hosts ORDER BY host LIMIT 1000",
    )
    .fetch_all(db)
    .await
}

/// A call as the run's detail shows it: no URL, no token, ids and codes only.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CallView {
    #[serde(skip)]
    pub step: String,
    pub kind: CallKind,
    /// The account sync (grant) or app install the call is about.
    pub target_id: i64,
    /// The destination host (and port).
    pub destination: String,
    /// `failed` will be retried; `dead` waits for an operator's retry.
    pub status: crate::domain::CallStatus,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i32>,
}

/// The calls of a run's steps.
pub async fn of_run<'e>(
    db: impl PgExecutor<'e>,
    run_id: Uuid,
) -> Result<Vec<CallView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.name AS step, c.kind, c.target_id, c.host AS destination, c.status, c.attempts,
                c.last_status_code, c.last_error, c.last_latency_ms
         FROM offboard.outbound_calls c
         JOIN offboard.steps s ON s.run_id = c.run_id AND s.position = c.position
         WHERE c.run_id = $1 ORDER BY c.position, c.id",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
}
