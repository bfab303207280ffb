//! Scheduled runs: written `scheduled` with every step pending, started by the sweeper once
//! their `effective_at` has passed ([`start_next_due`]), rescheduled by an operator
//! ([`reschedule`]), and the deletion a company policy's `delete_after_days` schedules
//! when a deactivation succeeds ([`schedule_deletion`]).
//!
//! The run's row is the promise: nothing of it lives in Redis, so a flushed Redis or
//! workers down at its time only delay it until the next sweep, and the start reads the
//! database clock, so it is never early.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::runs::{self, NewRun, OperatorRefusal};
use crate::{
    domain::{Action, Actor, RunStatus, Service, UserStatus},
    steps::StepSpec,
};

/// How a due scheduled run started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Its plan still holds: the run is queued, its first steps ready.
    Queued,
    /// Its plan no longer holds: the run failed with this error code and nothing moved.
    Refused(&'static str),
}

/// A due scheduled run as the start reads it.
#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    company_id: i64,
    user_id: i64,
    action: Action,
    plan: Value,
}

/// What the start re-reads of the store: the rules the enqueue checked that can have
/// changed since.
#[derive(sqlx::FromRow)]
struct Recheck {
    user_status: Option<UserStatus>,
    is_admin: bool,
    admin_remains: bool,
    bad_target: Option<i64>,
}

/// Starts the scheduled run due longest ago, if any, in one transaction: re-checks its
/// plan (the user still in the status the action needs, an admin's deactivation still
/// leaving an admin, every target still an active user of the company that no run is
/// deactivating) and either queues it, its steps without dependencies ready, or fails it
/// with a stable error code (`user_state_changed`, `last_admin`, `target_unavailable`),
/// its steps canceled, so nothing moves; the run's `failed` status fires the
/// `offboarding.failed` webhook event (the runs trigger). Runs another transaction holds
/// are skipped. Returns the run and how it started; `None` when nothing is due.
pub async fn start_next_due(pool: &PgPool) -> Result<Option<(Uuid, Start)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM offboard.runs
         WHERE status = 'scheduled' AND effective_at <= now()
         ORDER BY effective_at
         LIMIT 1
         FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(run_id) = due else { return Ok(None) };
    let start = start_locked(&mut tx, run_id).await?;
    tx.commit().await?;
    Ok(Some((run_id, start)))
}

/// Starts a waiting run (`scheduled`, or `awaiting_approval` just approved) whose row the
/// caller's transaction has locked: the re-check and the transition of
/// [`start_next_due`].
pub async fn start_locked(tx: &mut PgConnection, run_id: Uuid) -> Result<Start, sqlx::Error> {
    let due: Due = sqlx::query_as(
        "SELECT id, company_id, user_id, action, plan FROM offboard.runs WHERE id = $1",
    )
    .bind(run_id)
    .fetch_one(&mut *tx)
    .await?;
    let recheck: Recheck = sqlx::query_as(concat!(
        "WITH targets AS (
             SELECT DISTINCT (t #>> '{}')::bigint AS id
             FROM jsonb_array_elements(jsonb_path_query_array($3::jsonb, '$.*.targets[*].user_id')) t)
         SELECT
             (SELECT status FROM crm.users WHERE id = $2 AND company_id = $1) AS user_status,
             coalesce((SELECT role = 'admin' FROM crm.users WHERE id = $2 AND company_id = $1),
                      false) AS is_admin,
             EXISTS (SELECT 1 FROM crm.users u
                     WHERE u.company_id = $1 AND u.role = 'admin' AND u.status = 'active'
                       AND u.id <> $2
                       AND NOT EXISTS (
                           SELECT 1 FROM offboard.runs r
                           WHERE r.company_id = u.company_id AND r.user_id = u.id
                             AND r.status IN ",
        crate::active_run_statuses_sql!(),
        "
                             AND r.action IN ('deactivate', 'deactivate_and_delete'))) AS admin_remains,
             (SELECT t.id FROM targets t
              LEFT JOIN crm.users u ON u.id = t.id AND u.company_id = $1
              WHERE u.id IS NULL OR u.status <> 'active' OR u.id = $2
                 OR EXISTS (SELECT 1 FROM offboard.runs r
                            WHERE r.company_id = $1 AND r.user_id = t.id
                              AND r.status IN ",
        crate::active_run_statuses_sql!(),
        "
                              AND r.action IN ('deactivate', 'deactivate_and_delete'))
              ORDER BY t.id LIMIT 1) AS bad_target"
    ))
    .bind(due.company_id)
    .bind(due.user_id)
    .bind(&due.plan)
    .fetch_one(&mut *tx)
    .await?;

    let action = due.action;
    let refusal = if recheck.user_status != Some(action.required_status()) {
        Some((
            "user_state_changed",
            format!(
                "{action} needs a {} user; user {} is {}",
                action.required_status(),
                due.user_id,
                recheck.user_status.map_or("gone", UserStatus::as_str)
            ),
        ))
    } else if action.deactivates() && recheck.is_admin && !recheck.admin_remains {
        Some(("last_admin", "the company must keep at least one active admin".to_string()))
    } else {
        recheck.bad_target.map(|id| {
            (
                "target_unavailable",
                format!(
                    "user {id}, a target of the plan, is no longer an active user of the company that no run is deactivating"
                ),
            )
        })
    };

    let start = match refusal {
        None => {
            sqlx::query(
                "WITH started AS (
                     UPDATE offboard.runs SET status = 'queued'
                     WHERE id = $1 AND status IN ('scheduled', 'awaiting_approval')
                     RETURNING id, effective_at),
                 steps AS (
                     UPDATE offboard.steps SET status = 'ready', next_attempt_at = now()
                     WHERE run_id = $1 AND status = 'pending' AND deps_remaining = 0)
                 INSERT INTO offboard.run_events (run_id, kind, actor, detail)
                 SELECT id, 'started', 'system', jsonb_build_object('effective_at', effective_at)
                 FROM started",
            )
            .bind(due.id)
            .execute(&mut *tx)
            .await?;
            Start::Queued
        }
        Some((code, message)) => {
            let message = format!("{message}; nothing was changed (cancel the run and ask again)");
            sqlx::query(
                "WITH steps AS (
                     UPDATE offboard.steps SET status = 'canceled', finished_at = now()
                     WHERE run_id = $1 AND status = 'pending'),
                 failed AS (
                     UPDATE offboard.runs SET status = 'failed', error_code = $2, error_message = $3
                     WHERE id = $1 AND status IN ('scheduled', 'awaiting_approval')
                     RETURNING id)
                 INSERT INTO offboard.run_events (run_id, kind, actor, detail)
                 SELECT id, 'failed', 'system', jsonb_build_object('code', $2::text) FROM failed",
            )
            .bind(due.id)
            .bind(code)
            .bind(&message)
            .execute(&mut *tx)
            .await?;
            Start::Refused(code)
        }
    };
    Ok(start)
}

/// Moves a scheduled run to `at`, recorded in its history with `actor`. Only a run still
/// `scheduled` can be moved.
pub async fn reschedule(
    pool: &PgPool,
    run_id: Uuid,
    company: Option<i64>,
    at: DateTime<Utc>,
    actor: Actor,
) -> Result<Result<(), OperatorRefusal>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    match runs::lock_for_operator(&mut tx, run_id, company).await? {
        Err(refusal) => return Ok(Err(refusal)),
        Ok(status) if status != RunStatus::Scheduled => {
            return Ok(Err(OperatorRefusal::WrongState));
        }
        Ok(_) => {}
    }
    sqlx::query(
        "WITH before AS (SELECT effective_at FROM offboard.runs WHERE id = $1),
         moved AS (UPDATE offboard.runs SET effective_at = $2 WHERE id = $1)
         INSERT INTO offboard.run_events (run_id, kind, actor, detail)
         SELECT $1, 'rescheduled', $3,
                jsonb_build_object('from', before.effective_at, 'to', $2::timestamptz)
         FROM before",
    )
    .bind(run_id)
    .bind(at)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(()))
}

/// Writes the deletion a company's policy schedules after `deactivation` (which just
/// succeeded, in the caller's transaction; see [`runs::Finished::deletion_due`]) as a
/// scheduled run due at `due`, asked for by the same actor and recorded as
/// `service:policy`. `steps` are a deletion's steps. Returns the new run.
pub async fn schedule_deletion(
    tx: &mut PgConnection,
    deactivation: &runs::RunRow,
    due: DateTime<Utc>,
    steps: Vec<StepSpec>,
    max_attempts: i32,
) -> Result<Uuid, sqlx::Error> {
    let run = NewRun {
        id: runs::new_run_id(),
        company_id: deactivation.company_id,
        user_id: deactivation.user_id,
        action: Action::Delete,
        plan: json!({}),
        params: json!({"started_by": Service::Policy}),
        actor_user_id: deactivation.actor_user_id,
        idempotency_key: None,
        steps,
        max_attempts,
        status: RunStatus::Scheduled,
        effective_at: Some(due),
    };
    runs::insert(tx, &run, None).await?;
    Ok(run.id)
}
