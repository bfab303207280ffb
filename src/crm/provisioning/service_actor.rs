//! The company's service actor, created the first time an identity provider needs it.

use sqlx::PgConnection;

/// The company's service actor: an active user with account-settings access, no seat and
/// no admin role, recorded as the actor of the runs an identity provider starts. Created
/// the first time it is needed; `None` when the company does not exist.
pub async fn service_actor(
    conn: &mut PgConnection,
    company_id: i64,
) -> Result<Option<i64>, sqlx::Error> {
    // Two first uses at once: the one that loses the insert may not see the winner's row
    // in its statement's snapshot, so it reads again.
    for _ in 0..2 {
        let id: Option<i64> = sqlx::query_scalar(
            "WITH created AS (
                 INSERT INTO crm.users
                     (company_id, name, role, account_settings_access, status, holds_seat, kind)
                 SELECT id, 'Identity provider (SCIM)', 'regular', true, 'active', false, 'service'
                 FROM crm.companies WHERE id = $1
                 ON CONFLICT (company_id) WHERE kind = 'service' DO NOTHING
                 RETURNING id)
             SELECT id FROM created
             UNION ALL
             SELECT id FROM crm.users WHERE company_id = $1 AND kind = 'service'
             LIMIT 1",
        )
        .bind(company_id)
        .fetch_optional(&mut *conn)
        .await?;
        if id.is_some() {
            return Ok(id);
        }
        let company: Option<i64> = sqlx::query_scalar("SELECT id FROM crm.companies WHERE id = $1")
            .bind(company_id)
            .fetch_optional(&mut *conn)
            .await?;
        if company.is_none() {
            return Ok(None);
        }
    }
    Ok(None)
}
