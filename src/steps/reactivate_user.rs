//! Reactivate a deactivated (not deleted) user: take a seat, and cancel the pending
//! private-email purge. Items that were transferred stay where they went.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "reactivate_user",
    stage: Stage::Fixed,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    // Locking the company serializes seat accounting with other reactivations.
    let (seats, used): (i32, i64) = sqlx::query_as(
        "SELECT c.seats, (SELECT count(*) FROM crm.users u WHERE u.company_id = c.id AND u.holds_seat)
         FROM crm.companies c WHERE c.id = $1 FOR UPDATE",
    )
    .bind(cx.company())
    .fetch_one(&mut *tx)
    .await?;
    if used >= i64::from(seats) {
        return Err(StepError::permanent("no_free_seat", format!("all {seats} seats are taken")));
    }
    let reactivated = sqlx::query(
        "UPDATE crm.users SET status = 'active', holds_seat = true, deactivated_at = NULL
         WHERE id = $2 AND company_id = $1 AND status = 'deactivated'",
    )
    .bind(cx.company())
    .bind(cx.user())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if reactivated == 0 {
        return Err(StepError::permanent(
            "user_not_deactivated",
            "only a deactivated user can be reactivated",
        ));
    }
    let canceled = sqlx::query(
        "UPDATE offboard.scheduled_purges SET status = 'canceled', canceled_at = now()
         WHERE company_id = $1 AND user_id = $2 AND status = 'scheduled'",
    )
    .bind(cx.company())
    .bind(cx.user())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(Finished::with_counts(json!({
        "reactivated": 1,
        "seat_taken": true,
        "private_email_purges_canceled": canceled,
    })))
}
