//! Uninstall the marketplace apps the user installed; when the user was an admin, also
//! every app shared company-wide (they were installed on the admin's authority). Before
//! this effect, the engine calls each app vendor's uninstall callback (signed, one ledger
//! row per call: `crate::outside`); an install is marked uninstalled only once its vendor
//! was told. The host hears `app.uninstalled` (written by a trigger on the install).

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "uninstall_apps",
    stage: Stage::WhileDeactivating,
    safe_to_repeat: true,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let (untold, told, calls): (i64, i64, i64) = sqlx::query_as(
        "WITH u AS (SELECT role = 'admin' AS is_admin FROM crm.users WHERE id = $2 AND company_id = $1)
         SELECT (SELECT count(*) FROM crm.app_installs i JOIN crm.apps a ON a.key = i.app_key
                 WHERE i.company_id = $1 AND i.status = 'installed'
                   AND a.vendor_uninstall_url IS NOT NULL
                   AND (i.installed_by = $2 OR (i.shared AND coalesce((SELECT is_admin FROM u), false)))
                   AND NOT EXISTS (SELECT 1 FROM offboard.outbound_calls c
                                   WHERE c.run_id = $3 AND c.kind = 'uninstall_callback'
                                     AND c.target_id = i.id AND c.status = 'succeeded')),
                (SELECT count(*) FROM offboard.outbound_calls
                 WHERE run_id = $3 AND kind = 'uninstall_callback' AND status = 'succeeded'),
                (SELECT count(*) FROM offboard.outbound_calls
                 WHERE run_id = $3 AND kind = 'uninstall_callback')",
    )
    .bind(cx.company())
    .bind(cx.user())
    .bind(cx.run.id)
    .fetch_one(&mut *tx)
    .await?;
    if untold > 0 {
        // An install that appeared after the calls were planned: the next attempt calls.
        return Err(StepError::retryable(
            "vendors_not_told",
            format!("{untold} app installs' vendors have not been told of the uninstall yet"),
        ));
    }
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
    let counts = json!({
        "apps_uninstalled": own + shared,
        "shared_apps_of_others_uninstalled": shared,
        "vendors_told": told,
    });
    Ok(if calls > 0 {
        Progress::Finished(Finished { counts, done: told, total: calls, after_commit: vec![] })
    } else {
        Finished::with_counts(counts)
    })
}
