//! Uninstall the marketplace apps the user installed; when the user was an admin, also
//! every app shared company-wide (they were installed on the admin's authority).

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "uninstall_apps",
    stage: Stage::WhileDeactivating,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let (own, shared): (i64, i64) = sqlx::query_as(
        "WITH u AS (SELECT role = 'admin' AS is_admin FROM crm.users WHERE id = $2 AND company_id = $1),
              a AS (UPDATE crm.app_installs SET status = 'uninstalled', uninstalled_at = now()
                    WHERE company_id = $1 AND status = 'installed'
                      AND (installed_by = $2 OR (shared AND coalesce((SELECT is_admin FROM u), false)))
                    RETURNING installed_by = $2 AS own)
         SELECT count(*) FILTER (WHERE own), count(*) FILTER (WHERE NOT own) FROM a",
    )
    .bind(cx.company())
    .bind(cx.user())
    .fetch_one(&mut *tx)
    .await?;
    Ok(Finished::with_counts(json!({
        "apps_uninstalled": own + shared,
        "shared_apps_of_others_uninstalled": shared,
    })))
}
