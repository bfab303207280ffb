//! Planning a step's calls: one ledger row per grant still live, or per install a vendor
//! wants to hear of, each with its destination host and idempotency key.

use sqlx::PgConnection;
use uuid::Uuid;

use super::CallKind;
use crate::domain::StepKey;

/// Whose calls: the run, its company and its user.
#[derive(Debug, Clone, Copy)]
pub struct Subject {
    pub run_id: Uuid,
    pub company_id: i64,
    pub user_id: i64,
}

/// The host (and port) of a URL column, in SQL: what the ledger records as destination.
macro_rules! host_of {
    ($col:literal) => {
        concat!(
            "coalesce(substring(",
            $col,
            " from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)'), 'invalid')"
        )
    };
}

/// Plans the step's calls in the caller's transaction: one row per grant still live (or
/// per install a vendor wants to hear of) that has none yet. Returns how many of the
/// step's calls have not succeeded.
///
/// The idempotency key of a revocation is drawn per call (a grant is revoked by one run:
/// its user's). That of an uninstall callback derives from the install, so when two runs
/// tell the vendor of one shared install (two admins leaving together), the vendor sees
/// one `webhook-id` and dedupes.
pub async fn plan(
    tx: &mut PgConnection,
    kind: CallKind,
    subject: Subject,
    step: StepKey,
) -> Result<i64, sqlx::Error> {
    let sql = match kind {
        CallKind::RevokeGrant => concat!(
            "INSERT INTO offboard.outbound_calls
                 (run_id, position, company_id, kind, target_id, host, idempotency_key)
             SELECT $1, $2, s.company_id, 'revoke_grant', s.id, ",
            host_of!("p.revocation_url"),
            ", gen_random_uuid()
             FROM crm.account_syncs s JOIN crm.oauth_providers p ON p.id = s.provider_id
             WHERE s.company_id = $3 AND s.user_id = $4 AND s.refresh_token IS NOT NULL
             ORDER BY s.id
             ON CONFLICT (run_id, position, kind, target_id) DO NOTHING"
        ),
        CallKind::UninstallCallback => concat!(
            "INSERT INTO offboard.outbound_calls
                 (run_id, position, company_id, kind, target_id, host, idempotency_key)
             SELECT $1, $2, i.company_id, 'uninstall_callback', i.id, ",
            host_of!("a.vendor_uninstall_url"),
            ", md5('uninstall_callback:' || i.id)::uuid
             FROM crm.app_installs i JOIN crm.apps a ON a.key = i.app_key
             WHERE i.company_id = $3 AND i.status = 'installed'
               AND a.vendor_uninstall_url IS NOT NULL
               AND (i.installed_by = $4
                    OR (i.shared AND coalesce((SELECT u.role = 'admin' FROM crm.users u
                                               WHERE u.id = $4 AND u.company_id = $3), false)))
             ORDER BY i.id
             ON CONFLICT (run_id, position, kind, target_id) DO NOTHING"
        ),
    };
    sqlx::query(sql)
        .bind(step.run_id)
        .bind(step.position)
        .bind(subject.company_id)
        .bind(subject.user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query_scalar(
        "SELECT count(*) FROM offboard.outbound_calls
         WHERE run_id = $1 AND position = $2 AND status <> 'succeeded'",
    )
    .bind(step.run_id)
    .bind(step.position)
    .fetch_one(&mut *tx)
    .await
}
