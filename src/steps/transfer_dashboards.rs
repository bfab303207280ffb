//! Insights: shared dashboards go to the company's first admin, public dashboard links are
//! turned off, and reports the user shared become inaccessible to others. The dashboards
//! handed over are journaled (`offboard.transfer_journal`), so an undo can give them back.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError, first_admin};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "transfer_dashboards",
    stage: Stage::WhileDeactivating,
    safe_to_repeat: true,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let admin = first_admin(tx, cx.company(), cx.user()).await?;
    let (transferred, links_off, reports): (i64, i64, i64) = sqlx::query_as(
        "WITH links AS (UPDATE crm.dashboards SET public_link_enabled = false
                        WHERE company_id = $1 AND owner_id = $2 AND public_link_enabled RETURNING 1),
              moved AS (UPDATE crm.dashboards SET owner_id = $3, public_link_enabled = false
                        WHERE company_id = $1 AND owner_id = $2 AND shared RETURNING id),
              journal AS (INSERT INTO offboard.transfer_journal
                              (run_id, company_id, item_type, previous_owner_id, item_ids, new_owner_ids)
                          SELECT $4, $1, 'dashboards', $2, array_agg(id), array_fill($3::bigint, ARRAY[count(*)::int])
                          FROM moved HAVING count(*) > 0),
              closed AS (UPDATE crm.reports SET closed_at = now()
                         WHERE company_id = $1 AND owner_id = $2 AND shared AND closed_at IS NULL
                         RETURNING 1)
         SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM links), (SELECT count(*) FROM closed)",
    )
    .bind(cx.company())
    .bind(cx.user())
    .bind(admin)
    .bind(cx.run.id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Finished::with_counts(json!({
        "dashboards_transferred": transferred,
        "new_dashboard_owner_id": admin,
        "public_links_disabled": links_off,
        "shared_reports_closed": reports,
    })))
}
