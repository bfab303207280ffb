//! Company offboarding policies (`offboard.offboarding_policies`): one row per company,
//! the settings as [`OffboardingPolicy`] holds them; a company without a row has the
//! default policy.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::{FieldError, OffboardingPolicy, OnDelete};

/// A stored policy and who last changed it.
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    pub policy: OffboardingPolicy,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

#[derive(sqlx::FromRow)]
struct PolicyRow {
    transfer: serde_json::Value,
    on_deactivate: String,
    on_delete: String,
    delete_after_days: Option<i32>,
    require_approval: bool,
    approval_ttl_hours: i32,
    updated_at: DateTime<Utc>,
    updated_by: String,
}

/// The company's policy, or the default one when none was set.
pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
) -> Result<StoredPolicy, sqlx::Error> {
    let row: Option<PolicyRow> = sqlx::query_as(
        "SELECT transfer, on_deactivate, on_delete, delete_after_days, require_approval,
                approval_ttl_hours, updated_at, updated_by
         FROM offboard.offboarding_policies WHERE company_id = $1",
    )
    .bind(company_id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(StoredPolicy {
            policy: OffboardingPolicy::default(),
            updated_at: None,
            updated_by: None,
        });
    };
    let stored = serde_json::json!({
        "transfer": row.transfer, "on_deactivate": row.on_deactivate, "on_delete": row.on_delete,
        "delete_after_days": row.delete_after_days, "require_approval": row.require_approval,
        "approval_ttl_hours": row.approval_ttl_hours,
    });
    // Written only after the same parse; a row that no longer parses is a bug, not input.
    let policy = OffboardingPolicy::parse(&stored)
        .map_err(|e: FieldError| sqlx::Error::Decode(format!("stored policy: {e}").into()))?;
    Ok(StoredPolicy { policy, updated_at: Some(row.updated_at), updated_by: Some(row.updated_by) })
}

/// Writes the company's policy (insert or replace).
pub async fn put<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    policy: &OffboardingPolicy,
    updated_by: &str,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO offboard.offboarding_policies
             (company_id, transfer, on_deactivate, on_delete, updated_at, updated_by,
              delete_after_days, require_approval, approval_ttl_hours)
         VALUES ($1, $2, $3, $4, now(), $5, $6, $7, $8)
         ON CONFLICT (company_id) DO UPDATE
         SET transfer = EXCLUDED.transfer, on_deactivate = EXCLUDED.on_deactivate,
             on_delete = EXCLUDED.on_delete, updated_at = EXCLUDED.updated_at,
             delete_after_days = EXCLUDED.delete_after_days,
             require_approval = EXCLUDED.require_approval,
             approval_ttl_hours = EXCLUDED.approval_ttl_hours,
             updated_by = EXCLUDED.updated_by
         RETURNING updated_at",
    )
    .bind(company_id)
    .bind(policy.transfer.to_json())
    .bind(policy.on_deactivate.as_str())
    .bind(match policy.on_delete {
        OnDelete::Delete => "delete",
        OnDelete::DeactivateAndDelete => "deactivate_and_delete",
    })
    .bind(updated_by)
    .bind(policy.delete_after_days.map(i32::from))
    .bind(policy.require_approval)
    .bind(i32::from(policy.approval_ttl_hours))
    .fetch_one(db)
    .await
}
