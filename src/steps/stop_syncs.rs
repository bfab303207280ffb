//! Stop the email, contacts, calendar and Google Drive syncs, and expire the public
//! meeting-scheduler link.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "stop_syncs",
    stage: Stage::WhileDeactivating,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let (kinds, links): (Vec<String>, i64) = sqlx::query_as(
        "WITH s AS (UPDATE crm.account_syncs SET enabled = false, stopped_at = now()
                    WHERE company_id = $1 AND user_id = $2 AND enabled RETURNING kind),
              l AS (UPDATE crm.scheduler_links SET expires_at = now()
                    WHERE company_id = $1 AND user_id = $2
                      AND (expires_at IS NULL OR expires_at > now()) RETURNING 1)
         SELECT coalesce((SELECT array_agg(kind ORDER BY kind) FROM s), '{}'),
                (SELECT count(*) FROM l)",
    )
    .bind(cx.company())
    .bind(cx.user())
    .fetch_one(&mut *tx)
    .await?;
    Ok(Finished::with_counts(json!({
        "syncs_stopped": kinds.len(),
        "sync_kinds": kinds,
        "scheduler_links_expired": links,
    })))
}
