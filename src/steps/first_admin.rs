//! Who receives what a leaving user shared with the company: its first admin who stays.

use sqlx::PgConnection;

use super::StepError;

/// The first admin of the company other than `excluding` who is not leaving (no active
/// run deactivates them): who receives shared dashboards, chatbot playbooks and web forms.
/// The admin's row is locked `FOR SHARE` for the transaction, so their own deactivation
/// cannot commit in between.
pub(crate) async fn first_admin(
    tx: &mut PgConnection,
    company_id: i64,
    excluding: i64,
) -> Result<i64, StepError> {
    let admin: Option<i64> = sqlx::query_scalar(concat!(
        "SELECT u.id FROM crm.users u
         WHERE u.company_id = $1 AND u.role = 'admin' AND u.status = 'active' AND u.id <> $2
           AND NOT EXISTS (
               SELECT 1 FROM offboard.runs r
               WHERE r.company_id = u.company_id AND r.user_id = u.id
                 AND r.action IN ('deactivate', 'deactivate_and_delete')
                 AND r.status IN ",
        crate::active_run_statuses_sql!(),
        ")
         ORDER BY u.id LIMIT 1
         FOR SHARE OF u",
    ))
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
