//! Counts of a user's items, shared by the dry run (preview) and the reassignment steps.

// Dynamic SQL here only splices fixed table names and conditions from `ItemType`.
use sqlx::{AssertSqlSafe, PgExecutor};

use crate::domain::{ItemType, Scope};

/// How many items of a type the user owns within a scope.
pub async fn count_in_scope<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    user_id: i64,
    item: ItemType,
    scope: Scope,
) -> Result<i64, sqlx::Error> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE company_id = $1 AND owner_id = $2 AND {}",
        item.table(),
        item.scope_condition(scope)
    );
    sqlx::query_scalar(AssertSqlSafe(sql)).bind(company_id).bind(user_id).fetch_one(db).await
}
