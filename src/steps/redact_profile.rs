//! Redact a deactivated user without deleting them: a new display name and/or no profile
//! picture, keeping the user and their history. The new name leaves the ledger once applied.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "redact_profile",
    stage: Stage::Fixed,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let params = &cx.run.params;
    let updated = sqlx::query(
        "UPDATE crm.users
         SET name = coalesce($3, name),
             picture_url = CASE WHEN $4 THEN NULL ELSE picture_url END
         WHERE id = $2 AND company_id = $1 AND status = 'deactivated'",
    )
    .bind(cx.company())
    .bind(cx.user())
    .bind(params.display_name.as_deref())
    .bind(params.remove_picture)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(StepError::permanent(
            "user_not_deactivated",
            "only a deactivated user can be redacted",
        ));
    }
    sqlx::query("UPDATE offboard.runs SET params = params - 'display_name' WHERE id = $1")
        .bind(cx.run.id)
        .execute(&mut *tx)
        .await?;
    Ok(Finished::with_counts(json!({
        "renamed": params.display_name.is_some(),
        "picture_removed": params.remove_picture,
    })))
}
