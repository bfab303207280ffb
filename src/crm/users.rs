//! Users as the request rules need them. Never logged: only ids leave this module.

use sqlx::{PgConnection, PgExecutor};

use crate::domain::{UserRole, UserStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRecord {
    pub id: i64,
    pub company_id: i64,
    pub role: UserRole,
    pub status: UserStatus,
    pub account_settings_access: bool,
    pub holds_seat: bool,
}

impl UserRecord {
    pub fn is_admin(&self) -> bool {
        self.role == UserRole::Admin
    }

    pub fn is_active(&self) -> bool {
        self.status == UserStatus::Active
    }
}

/// A user of the company; a user of another company is not found.
pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    user_id: i64,
) -> Result<Option<UserRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, company_id, role, status, account_settings_access, holds_seat
         FROM crm.users WHERE id = $1 AND company_id = $2",
    )
    .bind(user_id)
    .bind(company_id)
    .fetch_optional(db)
    .await
}

/// Whether the company keeps an active admin other than `excluding` that no active run is
/// about to deactivate: whether this deactivation may go through.
///
/// Stops at the first such admin, with one index probe into the active runs per admin
/// (the LATERAL ... LIMIT 1 keeps the planner from reading every active run of the
/// company instead). Counting them all read every active run of the company for every
/// admin's request, which grew with the very layoff being enqueued.
pub async fn has_remaining_admin<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    excluding: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT EXISTS (
             SELECT 1 FROM crm.users u
             LEFT JOIN LATERAL (
                 SELECT 1 AS leaving FROM offboard.runs r
                 WHERE r.company_id = u.company_id AND r.user_id = u.id
                   AND r.status IN ",
        crate::active_run_statuses_sql!(),
        "
                   AND r.action IN ('deactivate', 'deactivate_and_delete')
                 LIMIT 1) l ON true
             WHERE u.company_id = $1 AND u.role = 'admin' AND u.status = 'active' AND u.id <> $2
               AND l.leaving IS NULL)"
    ))
    .bind(company_id)
    .bind(excluding)
    .fetch_one(db)
    .await
}

/// Seats of the company: (total, held).
pub async fn seats<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
) -> Result<Option<(i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.seats, (SELECT count(*) FROM crm.users u WHERE u.company_id = c.id AND u.holds_seat)
         FROM crm.companies c WHERE c.id = $1",
    )
    .bind(company_id)
    .fetch_optional(db)
    .await
}

/// Locks the company row: serializes the requests that count admins or seats.
pub async fn lock_company<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
) -> Result<bool, sqlx::Error> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT id FROM crm.companies WHERE id = $1 FOR UPDATE")
            .bind(company_id)
            .fetch_optional(db)
            .await?;
    Ok(found.is_some())
}

/// Whether an email address is taken in the company (case-insensitive).
pub async fn email_taken<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    email: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM crm.users WHERE company_id = $1 AND lower(email) = lower($2))")
        .bind(company_id)
        .bind(email)
        .fetch_one(db)
        .await
}

/// Creates the replacement user of "delete and replace": active, regular, with the seat
/// given now (`holds_seat`) or at the end of the deactivation it replaces.
pub async fn create_replacement<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    name: &str,
    email: &str,
    holds_seat: bool,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO crm.users (company_id, name, email, role, account_settings_access, status, holds_seat)
         VALUES ($1, $2, $3, 'regular', false, 'active', $4) RETURNING id",
    )
    .bind(company_id)
    .bind(name)
    .bind(email)
    .bind(holds_seat)
    .fetch_one(db)
    .await
}

/// Serializes the requests that could make a user both leaving and a transfer target:
/// takes an advisory lock per user, exclusive on the user a request deactivates or deletes
/// (`leaving`), shared on every user it names as a target, in the order of their ids (so
/// two requests naming each other wait, never deadlock). Held to the end of the caller's
/// transaction, whose next statement then sees every run committed before it — the rules'
/// "is the user a target of an active run?" and "is a target leaving?" cannot both pass
/// for two concurrent requests. The keys live in their own range (ids with bit 56 set;
/// an XOR, so no id, however large, overflows): `offboard.lock_users`, the function the
/// enqueue's rules take them with (`runs::judge`, `runs::insert_if_clear`).
pub async fn lock_for_enqueue(
    tx: &mut PgConnection,
    user_id: i64,
    leaving: bool,
    target_ids: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT offboard.lock_users($1, $2, $3)")
        .bind(user_id)
        .bind(leaving)
        .bind(target_ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
