//! Who receives what a leaving user shared with the company: its first admin who stays.

use sqlx::PgConnection;

use super::StepError;

/// The first admin of `$1` other than `$2` who is not leaving, locked `FOR SHARE`: the
/// function `offboard.first_admin` (migration `20261208100001`). Its query is planned once
/// per connection, generic, with sequential scans off, so each candidate's runs are probed
/// by key, `(company_id, user_id)`, whatever the statistics say: a plan made while the
/// ledger was empty read `runs` whole for each candidate (a thousand buffers a call in
/// `bench layoff`), and planning it anew on every call cost 0.37 ms a call, two a run.
pub const FIRST_ADMIN_SQL: &str = "SELECT offboard.first_admin($1, $2)";

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
        .bind(company_id)
        .bind(excluding)
        .fetch_one(&mut *tx)
        .await?;
    admin.ok_or_else(|| {
        StepError::permanent(
            "no_active_admin",
            "the company has no other active admin who is not being offboarded",
        )
    })
}

#[cfg(test)]
mod tests {
    /// The function's active statuses are the ledger's list, as every other rule states it.
    #[test]
    fn the_function_s_active_statuses_are_the_ledger_s() {
        let migration =
            include_str!("../../migrations/20261208100001_first_admin_planned_once.sql");
        assert!(migration.contains(concat!("r.status IN ", crate::active_run_statuses_sql!())));
    }
}
