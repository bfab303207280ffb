//! Block login: revoke every session and API token first, so no new data arrives while
//! the rest of the offboarding runs.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step =
    Step { name: "block_login", stage: Stage::Fixed, apply: |cx, tx, _| Box::pin(apply(cx, tx)) };

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let (sessions, tokens): (i64, i64) = sqlx::query_as(
        "WITH s AS (DELETE FROM crm.sessions WHERE company_id = $1 AND user_id = $2 RETURNING 1),
              t AS (DELETE FROM crm.api_tokens WHERE company_id = $1 AND user_id = $2 RETURNING 1)
         SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM t)",
    )
    .bind(cx.company())
    .bind(cx.user())
    .fetch_one(&mut *tx)
    .await?;
    Ok(Finished::with_counts(json!({"sessions_revoked": sessions, "api_tokens_revoked": tokens})))
}
