//! Who receives what a leaving user shared with the company: its first admin who stays.

use sqlx::PgConnection;

use super::StepError;

/// The first admin of `$1` other than `$2` who is not leaving, locked `FOR SHARE`.
///
/// Each candidate is checked for a leaving run by its key, `(company_id, user_id)`, however
/// few runs the statistics say there are, in two parts:
/// - `OFFSET 0` keeps the check a subquery run per candidate; as a join, PostgreSQL read
///   every active run of the company to rule out the first admin;
/// - the statement is not kept prepared ([`first_admin`]), so each call is planned for the
///   ledger as it is: a plan PostgreSQL kept from calls made while the ledger was empty
///   scanned `runs` whole. In `bench layoff` it read a thousand buffers a call.
const FIRST_ADMIN_SQL: &str = concat!(
    "SELECT u.id FROM crm.users u
     WHERE u.company_id = $1 AND u.role = 'admin' AND u.status = 'active' AND u.id <> $2
       AND NOT EXISTS (
           SELECT 1 FROM offboard.runs r
           WHERE r.company_id = u.company_id AND r.user_id = u.id
             AND r.action IN ('deactivate', 'deactivate_and_delete')
             AND r.status IN ",
    crate::active_run_statuses_sql!(),
    "
           OFFSET 0)
     ORDER BY u.id LIMIT 1
     FOR SHARE OF u",
);

/// The first admin of the company other than `excluding` who is not leaving (no active
/// run deactivates them): who receives shared dashboards, chatbot playbooks and web forms.
/// The admin's row is locked `FOR SHARE` for the transaction, so their own deactivation
/// cannot commit in between.
pub async fn first_admin(
    tx: &mut PgConnection,
    company_id: i64,
    excluding: i64,
) -> Result<i64, StepError> {
    let admin: Option<i64> = sqlx::query_scalar(FIRST_ADMIN_SQL)
        .persistent(false)
        .bind(company_id)
        .bind(excluding)
        .fetch_optional(&mut *tx)
        .await?;
    admin.ok_or_else(|| {
        StepError::permanent(
            "no_active_admin",
            "the company has no other active admin who is not being offboarded",
        )
    })
}
