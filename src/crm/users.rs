//! Users as the request rules need them. Never logged: only ids leave this module.

use sqlx::PgExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRecord {
    pub id: i64,
    pub company_id: i64,
    pub role: String,
    pub status: String,
    pub account_settings_access: bool,
    pub holds_seat: bool,
}

impl UserRecord {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    pub fn is_active(&self) -> bool {
        self.status == "active"
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

/// What an offboarding request is about, read in one statement.
#[derive(Debug, Clone)]
pub struct RequestSubject {
    /// The actor is an active user of the company with account-settings access.
    pub actor_permitted: bool,
    /// The user, locked for the request's transaction; `None` if not in the company.
    pub user: Option<UserRecord>,
    /// The user's active run (queued, running or failed), if any.
    pub active_run: Option<uuid::Uuid>,
}

/// The actor's permission, the user (row-locked, so two requests about one user serialize)
/// and the user's active run, in one round trip. A run committed by a request this one
/// waited for may be missed here; the unique index on active runs refuses it at insert.
pub async fn request_subject(
    db: impl PgExecutor<'_>,
    company_id: i64,
    actor_id: i64,
    user_id: i64,
) -> Result<RequestSubject, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        actor_permitted: bool,
        id: Option<i64>,
        role: Option<String>,
        status: Option<String>,
        account_settings_access: Option<bool>,
        holds_seat: Option<bool>,
        active_run: Option<uuid::Uuid>,
    }
    let row: Row = sqlx::query_as(
        "WITH subject AS (
             SELECT id, role, status, account_settings_access, holds_seat
             FROM crm.users WHERE id = $3 AND company_id = $1 FOR UPDATE)
         SELECT coalesce((SELECT status = 'active' AND account_settings_access
                          FROM crm.users WHERE id = $2 AND company_id = $1), false) AS actor_permitted,
                s.id, s.role, s.status, s.account_settings_access, s.holds_seat,
                (SELECT r.id FROM offboard.runs r
                 WHERE r.company_id = $1 AND r.user_id = $3
                   AND r.status IN ('queued', 'running', 'failed')) AS active_run
         FROM (SELECT 1) AS one LEFT JOIN subject s ON true",
    )
    .bind(company_id)
    .bind(actor_id)
    .bind(user_id)
    .fetch_one(db)
    .await?;
    let user = match (row.id, row.role, row.status) {
        (Some(id), Some(role), Some(status)) => Some(UserRecord {
            id,
            company_id,
            role,
            status,
            account_settings_access: row.account_settings_access.unwrap_or(false),
            holds_seat: row.holds_seat.unwrap_or(false),
        }),
        _ => None,
    };
    Ok(RequestSubject { actor_permitted: row.actor_permitted, user, active_run: row.active_run })
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
    sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM crm.users u
             LEFT JOIN LATERAL (
                 SELECT 1 AS leaving FROM offboard.runs r
                 WHERE r.company_id = u.company_id AND r.user_id = u.id
                   AND r.status IN ('queued', 'running', 'failed')
                   AND r.action IN ('deactivate', 'deactivate_and_delete')
                 LIMIT 1) l ON true
             WHERE u.company_id = $1 AND u.role = 'admin' AND u.status = 'active' AND u.id <> $2
               AND l.leaving IS NULL)",
    )
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
