//! A run that succeeded: marked so with its receipt, in the transaction of its last step.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::{RUN_COLUMNS, RunRow, StepRow, steps_of};
use crate::domain::Actor;

/// A run [`finish`] marked succeeded.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The run as it was read before it was marked.
    pub run: RunRow,
    /// When its company's policy deletes the user: for a deactivation, `delete_after_days`
    /// after it finished, if the policy sets it.
    pub deletion_due: Option<DateTime<Utc>>,
}

/// Marks a run whose last step just succeeded as succeeded, with its receipt. Runs in the
/// transaction that completed the step, so the receipt and the last effect commit together;
/// the step's completion left the run's row to this statement (its counter to 0, and its
/// start when its first group ended it), so the run is written once.
/// The statement that marks it also reads its company's policy, for the deletion that
/// follows a deactivation ([`Finished::deletion_due`]).
pub async fn finish(tx: &mut PgConnection, run_id: Uuid) -> Result<Finished, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Finishing {
        #[sqlx(flatten)]
        run: RunRow,
        now: DateTime<Utc>,
    }
    let Finishing { mut run, now: finished_at } = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS}, now() AS now FROM offboard.runs WHERE id = $1"
    )))
    .bind(run_id)
    .fetch_one(&mut *tx)
    .await?;
    // A run its first group ended was never written started: it starts now (the
    // transaction's time, as the group would have written it).
    run.started_at.get_or_insert(finished_at);
    let steps = steps_of(&mut *tx, run_id).await?;
    let receipt = build_receipt(&run, &steps, finished_at);
    let deletion_due = sqlx::query_scalar(
        "WITH finished AS (
             UPDATE offboard.runs
             SET status = 'succeeded', steps_remaining = 0, started_at = $4, finished_at = $2,
                 receipt = $3, params = params - 'display_name'
             WHERE id = $1 AND status IN ('queued', 'running')
             RETURNING id, company_id, action, finished_at),
         event AS (
             INSERT INTO offboard.run_events (run_id, kind, actor)
             SELECT id, 'succeeded', 'system' FROM finished)
         SELECT f.finished_at + make_interval(days => p.delete_after_days)
         FROM finished f JOIN offboard.offboarding_policies p ON p.company_id = f.company_id
         WHERE f.action = 'deactivate' AND p.delete_after_days IS NOT NULL",
    )
    .bind(run_id)
    .bind(finished_at)
    .bind(&receipt)
    .bind(run.started_at)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(Finished { run, deletion_due })
}

/// What was done, counts per step, who asked and when. Ids only, never personal data.
pub fn build_receipt(run: &RunRow, steps: &[StepRow], finished_at: DateTime<Utc>) -> Value {
    let result_of =
        |name: &str| steps.iter().find(|s| s.name == name).and_then(|s| s.result.clone());
    let mut reassigned = serde_json::Map::new();
    for step in steps {
        if let (Some(item), Some(result)) = (step.name.strip_prefix("reassign_"), &step.result) {
            reassigned.insert(item.to_string(), result.clone());
        }
    }
    let review = result_of("review_automations");
    let needs_review = json!({
        "automations": review.as_ref().and_then(|r| r.get("automations_needing_review").cloned()).unwrap_or(json!([])),
        "assignment_rules": review.as_ref().and_then(|r| r.get("assignment_rules_needing_review").cloned()).unwrap_or(json!([])),
    });
    let purge = result_of("finish_deactivation").map(|r| {
        json!({"id": r.get("private_email_purge_id"), "due_at": r.get("private_email_purge_due_at")})
    });
    let mut receipt = json!({
        "run_id": run.id,
        "company_id": run.company_id,
        "user_id": run.user_id,
        "action": run.action,
        "actor_user_id": run.actor_user_id,
        "requested_by": run.requested_by,
        "approved_by": run.approver_user_id.map(Actor::User),
        "requested_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": finished_at,
        "steps": steps.iter().map(|s| json!({
            "name": s.name,
            "status": s.status,
            "attempts": s.attempts,
            "started_at": s.started_at,
            "finished_at": s.finished_at,
            "counts": s.result.clone().unwrap_or(json!({})),
        })).collect::<Vec<_>>(),
        "needs_review": needs_review,
        "reassigned": reassigned,
        "private_email_purge": purge,
    });
    // An undo's receipt says what went back and what was left (changed since).
    if let Some(undo) = result_of("undo_transfer") {
        receipt["undo_transfer"] = undo;
    }
    receipt
}
