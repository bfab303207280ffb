//! Disable the webhooks the user created: they would otherwise keep sending the company's
//! data on the authority of someone who left.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "disable_webhooks",
    stage: Stage::WhileDeactivating,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let disabled = sqlx::query(
        "UPDATE crm.webhooks SET active = false, disabled_at = now()
         WHERE company_id = $1 AND created_by = $2 AND active",
    )
    .bind(cx.company())
    .bind(cx.user())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(Finished::with_counts(json!({"webhooks_disabled": disabled})))
}
