//! Stop the email, contacts, calendar and Google Drive syncs, and expire the public
//! meeting-scheduler link. Before this effect, the engine revokes each sync's OAuth grant
//! at its provider (RFC 7009, one ledger row per call: `crate::outside`); a grant is
//! overwritten once revoked, and the syncs stop only when none is left.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "stop_syncs",
    stage: Stage::WhileDeactivating,
    safe_to_repeat: true,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM crm.account_syncs
         WHERE company_id = $1 AND user_id = $2 AND refresh_token IS NOT NULL
           AND provider_id IS NOT NULL",
    )
    .bind(cx.company())
    .bind(cx.user())
    .fetch_one(&mut *tx)
    .await?;
    if live > 0 {
        // A grant that appeared after the calls were planned: the next attempt revokes it.
        return Err(StepError::retryable(
            "grants_not_revoked",
            format!("{live} OAuth grants of the user are not revoked yet"),
        ));
    }
    let (revoked, calls): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*)
         FROM offboard.outbound_calls WHERE run_id = $1 AND kind = 'revoke_grant'",
    )
    .bind(cx.run.id)
    .fetch_one(&mut *tx)
    .await?;
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
    let counts = json!({
        "syncs_stopped": kinds.len(),
        "sync_kinds": kinds,
        "scheduler_links_expired": links,
        "grants_revoked": revoked,
    });
    // Progress is the calls made, when there were any.
    Ok(if calls > 0 {
        Progress::Finished(Finished { counts, done: revoked, total: calls, after_commit: vec![] })
    } else {
        Finished::with_counts(counts)
    })
}
