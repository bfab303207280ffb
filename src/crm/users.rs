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

/// A user named as a transfer target, as the target rules need it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TargetState {
    pub id: i64,
    pub status: UserStatus,
    /// An active run is deactivating this user.
    pub leaving: bool,
}

/// Each of the ids in the array `$ids` that is a user of `$1`, with its status and whether
/// an active run is deactivating it: one index probe per target (a company's active runs
/// are many during a layoff). Spliced into [`request_subject`] and [`target_states`].
macro_rules! target_states_sql {
    ($ids:literal) => {
        concat!(
            "SELECT u.id, u.status, l.leaving IS NOT NULL AS leaving
             FROM unnest(",
            $ids,
            ") AS t(id)
             JOIN crm.users u ON u.id = t.id AND u.company_id = $1
             LEFT JOIN LATERAL (
                 SELECT 1 AS leaving FROM offboard.runs r
                 WHERE r.company_id = u.company_id AND r.user_id = u.id
                   AND r.status IN ",
            crate::active_run_statuses_sql!(),
            "
                   AND r.action IN ('deactivate', 'deactivate_and_delete')
                 LIMIT 1) l ON true"
        )
    };
}

/// The targets among `ids` that are users of the company (see [`TargetState`]).
pub async fn target_states<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    ids: &[i64],
) -> Result<Vec<TargetState>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(target_states_sql!("$2::bigint[]"))
        .bind(company_id)
        .bind(ids)
        .fetch_all(db)
        .await
}

/// The targets [`request_subject`] reads in its one statement; a plan naming more users
/// costs it a second statement.
pub const TARGETS_READ_WITH_REQUEST: usize = 4;

/// Everything an offboarding request's rules read, in one statement.
#[derive(Debug, Clone)]
pub struct RequestSubject {
    /// The run and request hash already recorded under the request's idempotency key.
    pub idempotent_run: Option<(uuid::Uuid, String)>,
    /// The actor is an active user of the company with account-settings access.
    pub actor_permitted: bool,
    /// The user; `None` if not in the company.
    pub user: Option<UserRecord>,
    /// The user's active run (see [`crate::domain::run_status::ACTIVE_RUN_STATUSES`]), if any.
    pub active_run: Option<uuid::Uuid>,
    /// An active run (the oldest) that names the user as a target or replacement: items
    /// may still be moving to them.
    pub transfer_target_of: Option<uuid::Uuid>,
    /// The named targets that are users of the company.
    pub targets: Vec<TargetState>,
}

/// The idempotency key's run, the actor's permission, the user, the user's active run and
/// the named targets, in one round trip and without a lock: two requests about one user
/// that both read "no active run" cannot both write one, because the unique index on
/// active runs refuses the second at insert.
///
/// The targets travel as a fixed number of parameters (absent ones NULL), so the plan does
/// not depend on how many there are and PostgreSQL keeps one generic plan per connection.
/// Passed as one array, the custom plan for each array length looked cheaper than the
/// generic one, and the statement was planned again on every call: 0.55 ms of planning
/// for 0.15 ms of execution.
pub async fn request_subject(
    conn: &mut PgConnection,
    company_id: i64,
    actor_id: i64,
    user_id: i64,
    idempotency_key: Option<&str>,
    target_ids: &[i64],
) -> Result<RequestSubject, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        key_run_id: Option<uuid::Uuid>,
        key_hash: Option<String>,
        actor_permitted: bool,
        id: Option<i64>,
        role: Option<UserRole>,
        status: Option<UserStatus>,
        account_settings_access: Option<bool>,
        holds_seat: Option<bool>,
        active_run: Option<uuid::Uuid>,
        transfer_target_of: Option<uuid::Uuid>,
        target_ids: Vec<i64>,
        target_statuses: Vec<UserStatus>,
        target_leaving: Vec<bool>,
    }
    let read_inline = target_ids.len() <= TARGETS_READ_WITH_REQUEST;
    let inline = |i: usize| target_ids.get(i).filter(|_| read_inline);
    let row: Row = sqlx::query_as(concat!(
        "WITH targets AS (",
        target_states_sql!("ARRAY[$5, $6, $7, $8]::bigint[]"),
        ")
         SELECT k.run_id AS key_run_id, k.request_hash AS key_hash,
                coalesce((SELECT a.status = 'active' AND a.account_settings_access
                          FROM crm.users a WHERE a.id = $2 AND a.company_id = $1), false)
                    AS actor_permitted,
                s.id, s.role, s.status, s.account_settings_access, s.holds_seat,
                (SELECT r.id FROM offboard.runs r
                 WHERE r.company_id = $1 AND r.user_id = $3
                   AND r.status IN ",
        crate::active_run_statuses_sql!(),
        ") AS active_run,
                -- An aggregate, not ORDER BY … LIMIT 1: planned for its first row, that
                -- walked every active run of the company in creation order (a layoff's
                -- thousands), evaluating the JSON path of each; aggregated, it probes
                -- runs_active_targets.
                (SELECT (array_agg(r.id ORDER BY r.created_at))[1] FROM offboard.runs r
                 WHERE r.company_id = $1 AND r.status IN ",
        crate::active_run_statuses_sql!(),
        "
                   AND jsonb_path_query_array(r.plan, '$.*.targets[*].user_id') @> jsonb_build_array($3::bigint))
                    AS transfer_target_of,
                (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM targets) AS target_ids,
                (SELECT coalesce(array_agg(status ORDER BY id), '{}') FROM targets) AS target_statuses,
                (SELECT coalesce(array_agg(leaving ORDER BY id), '{}') FROM targets) AS target_leaving
         FROM (SELECT 1) AS one
         LEFT JOIN crm.users s ON s.id = $3 AND s.company_id = $1
         LEFT JOIN offboard.idempotency_keys k ON k.company_id = $1 AND k.key = $4"
    ))
    .bind(company_id)
    .bind(actor_id)
    .bind(user_id)
    .bind(idempotency_key)
    .bind(inline(0))
    .bind(inline(1))
    .bind(inline(2))
    .bind(inline(3))
    .fetch_one(&mut *conn)
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
    let targets = if read_inline {
        row.target_ids
            .into_iter()
            .zip(row.target_statuses)
            .zip(row.target_leaving)
            .map(|((id, status), leaving)| TargetState { id, status, leaving })
            .collect()
    } else {
        target_states(&mut *conn, company_id, target_ids).await?
    };
    Ok(RequestSubject {
        idempotent_run: row.key_run_id.zip(row.key_hash),
        actor_permitted: row.actor_permitted,
        user,
        active_run: row.active_run,
        transfer_target_of: row.transfer_target_of,
        targets,
    })
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
/// an XOR, so no id, however large, overflows).
pub async fn lock_for_enqueue(
    tx: &mut PgConnection,
    user_id: i64,
    leaving: bool,
    target_ids: &[i64],
) -> Result<(), sqlx::Error> {
    if !leaving && target_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT count(CASE WHEN exclusive THEN pg_advisory_xact_lock(key)
                           ELSE pg_advisory_xact_lock_shared(key) END)
         FROM (SELECT id # 72057594037927936 AS key, bool_or(exclusive) AS exclusive
               FROM (SELECT $1::bigint AS id, $2::bool AS exclusive
                     UNION ALL SELECT t, false FROM unnest($3::bigint[]) AS t) u
               GROUP BY id ORDER BY id) k",
    )
    .bind(user_id)
    .bind(leaving)
    .bind(target_ids)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
