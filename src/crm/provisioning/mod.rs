//! Users as an identity provider provisions them (SCIM): the attributes it keeps, reads
//! with the user's current offboarding run, creation under the company's seat count, and
//! updates. The company's service actor — the user recorded as the actor of the runs an
//! identity provider starts — lives here too.
//!
//! Everything here but ids is personal data: it goes back to the identity provider that
//! sent it and nowhere else (never into logs or errors).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{Action, RunStatus, UserStatus, debug_without_personal_data};

mod service_actor;
mod writes;

pub use self::{
    service_actor::service_actor,
    writes::{Refusal, collision, create, update},
};

/// What an identity provider sets on a user.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserAttributes {
    pub user_name: String,
    pub external_id: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    /// The CRM's display name (`name`).
    pub display_name: Option<String>,
    pub email: Option<String>,
    /// `work`, `home`, `other`, …; `work` when not said.
    pub email_type: Option<String>,
    /// Whether the identity provider marked the email primary; `None` when it did not say.
    pub email_primary: Option<bool>,
    /// Whether the identity provider took the offboarding extension off the resource.
    pub extension_hidden: bool,
}

debug_without_personal_data!(UserAttributes { email_type, email_primary, extension_hidden });

/// A provisioned user with the run an identity provider sees on it.
#[derive(Clone, sqlx::FromRow)]
pub struct ProvisionedUser {
    pub id: i64,
    /// Active or deactivated (deleted users and users a run is deleting are gone).
    pub status: UserStatus,
    pub user_name: Option<String>,
    pub external_id: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub email_type: Option<String>,
    pub email_primary: Option<bool>,
    pub extension_hidden: bool,
    pub created_at: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    /// The user's active run, else the latest one.
    pub run_id: Option<Uuid>,
    pub run_action: Option<Action>,
    pub run_status: Option<RunStatus>,
    pub run_active: bool,
}

impl ProvisionedUser {
    /// The attributes as they stand.
    pub fn attributes(&self) -> UserAttributes {
        UserAttributes {
            user_name: self.user_name.clone().unwrap_or_default(),
            external_id: self.external_id.clone(),
            given_name: self.given_name.clone(),
            family_name: self.family_name.clone(),
            display_name: self.display_name.clone(),
            email: self.email.clone(),
            email_type: self.email_type.clone(),
            email_primary: self.email_primary,
            extension_hidden: self.extension_hidden,
        }
    }

    /// Whether the user is, or is becoming, active: an active user no run is deactivating,
    /// or a deactivated user a run is reactivating.
    pub fn is_active(&self) -> bool {
        let running = |action: Action| self.run_active && self.run_action == Some(action);
        match self.status {
            UserStatus::Active => !running(Action::Deactivate),
            UserStatus::Deactivated | UserStatus::Deleted => running(Action::Reactivate),
        }
    }
}

/// The provisioned users of `$1`: people, not deleted, no active run deleting them; each
/// with its current run. `$extra` is a further condition on `u`.
macro_rules! provisioned_sql {
    ($extra:expr, $tail:literal) => {
        concat!(
            "SELECT u.id, u.status, coalesce(u.user_name, u.email) AS user_name, u.external_id,
                    u.given_name, u.family_name, u.name AS display_name, u.email, u.email_type,
                    u.email_primary, u.scim_extension_hidden AS extension_hidden,
                    u.created_at,
                    greatest(u.created_at, u.deactivated_at, r.created_at, r.finished_at) AS last_modified,
                    r.id AS run_id, r.action AS run_action, r.status AS run_status,
                    coalesce(r.status IN ",
            crate::active_run_statuses_sql!(),
            ", false) AS run_active
             FROM crm.users u
             LEFT JOIN LATERAL (
                 SELECT id, action, status, created_at, finished_at FROM offboard.runs r
                 WHERE r.company_id = u.company_id AND r.user_id = u.id
                 ORDER BY (r.status IN ",
            crate::active_run_statuses_sql!(),
            ") DESC, r.created_at DESC
                 LIMIT 1) r ON true
             WHERE u.company_id = $1 AND u.kind = 'person' AND u.status <> 'deleted'
               AND NOT (coalesce(r.status IN ",
            crate::active_run_statuses_sql!(),
            ", false) AND r.action IN ('delete', 'deactivate_and_delete'))
               AND ",
            $extra,
            $tail
        )
    };
}

/// One provisioned user of the company.
pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    user_id: i64,
) -> Result<Option<ProvisionedUser>, sqlx::Error> {
    sqlx::query_as(provisioned_sql!("u.id = $2", ""))
        .bind(company_id)
        .bind(user_id)
        .fetch_optional(db)
        .await
}

debug_without_personal_data!(ProvisionedUser {
    id,
    status,
    email_type,
    email_primary,
    extension_hidden,
    created_at,
    last_modified,
    run_id,
    run_action,
    run_status,
    run_active,
});

/// Equality filters on a list (all must hold; `None` means any).
#[derive(Clone, Default)]
pub struct UserFilter {
    pub id: Option<i64>,
    /// Compared case-insensitively.
    pub user_name: Option<String>,
    pub external_id: Option<String>,
    /// Compared case-insensitively.
    pub email: Option<String>,
    /// The email's type the email filter asks for (`emails[type eq "work"]`).
    pub email_type: Option<String>,
}

debug_without_personal_data!(UserFilter { id, email_type });

/// The conditions of a [`UserFilter`] on `u`, as `$2`-`$6`.
macro_rules! filter_condition {
    () => {
        "($2::bigint IS NULL OR u.id = $2)
         AND ($3::text IS NULL OR lower(coalesce(u.user_name, u.email)) = lower($3))
         AND ($4::text IS NULL OR u.external_id = $4)
         AND ($5::text IS NULL OR lower(u.email) = lower($5))
         AND ($6::text IS NULL OR coalesce(u.email_type, 'work') = $6)"
    };
}

/// A page of the provisioned users matching the filter, in id order (stable across pages),
/// and how many match in all. `offset` counts from 0.
pub async fn list(
    conn: &mut PgConnection,
    company_id: i64,
    filter: &UserFilter,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<ProvisionedUser>), sqlx::Error> {
    let total: i64 = sqlx::query_scalar(concat!(
        "SELECT count(*) FROM (",
        provisioned_sql!(filter_condition!(), ") AS matching")
    ))
    .bind(company_id)
    .bind(filter.id)
    .bind(filter.user_name.as_deref())
    .bind(filter.external_id.as_deref())
    .bind(filter.email.as_deref())
    .bind(filter.email_type.as_deref())
    .fetch_one(&mut *conn)
    .await?;
    if limit == 0 || offset >= total {
        return Ok((total, Vec::new()));
    }
    let page =
        sqlx::query_as(provisioned_sql!(filter_condition!(), " ORDER BY u.id OFFSET $7 LIMIT $8"))
            .bind(company_id)
            .bind(filter.id)
            .bind(filter.user_name.as_deref())
            .bind(filter.external_id.as_deref())
            .bind(filter.email.as_deref())
            .bind(filter.email_type.as_deref())
            .bind(offset)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
    Ok((total, page))
}
