//! Webhook endpoints: created, listed, changed, deleted, their signing secret rotated.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// An endpoint as the API shows it (never its secrets).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EndpointRow {
    pub id: Uuid,
    pub company_id: i64,
    pub url: String,
    pub description: Option<String>,
    /// Event types it receives; empty means all.
    pub events: Vec<String>,
    pub enabled: bool,
    /// `gone` (the receiver answered 410) or `api`.
    pub disabled_reason: Option<String>,
    /// A delivery used up its retry schedule since the endpoint last succeeded.
    pub failing: bool,
    /// The breaker holds deliveries back until then.
    pub paused_until: Option<DateTime<Utc>>,
    /// After a rotation, until when the previous secret signs too.
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "id, company_id, url, description, event_types AS events, enabled, \
     disabled_reason, failing, paused_until, previous_secret_until, created_at, updated_at";

/// A new endpoint.
pub struct NewEndpoint<'a> {
    pub company_id: i64,
    pub url: &'a str,
    pub description: Option<&'a str>,
    pub events: &'a [String],
    pub secret: &'a str,
}

pub async fn create_endpoint(
    pool: &PgPool,
    endpoint: &NewEndpoint<'_>,
) -> Result<EndpointRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO offboard.webhook_endpoints (id, company_id, url, description, event_types, secret)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(endpoint.company_id)
    .bind(endpoint.url)
    .bind(endpoint.description)
    .bind(endpoint.events)
    .bind(endpoint.secret)
    .fetch_one(pool)
    .await
}

/// An endpoint; with `company` given, another company's is not found.
pub async fn find_endpoint<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    company: Option<i64>,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM offboard.webhook_endpoints
         WHERE id = $1 AND ($2::bigint IS NULL OR company_id = $2)"
    )))
    .bind(id)
    .bind(company)
    .fetch_optional(db)
    .await
}

/// Endpoints, oldest first, of one company or all.
pub async fn list_endpoints(
    pool: &PgPool,
    company: Option<i64>,
) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM offboard.webhook_endpoints
         WHERE ($1::bigint IS NULL OR company_id = $1) ORDER BY created_at, id LIMIT 1000"
    )))
    .bind(company)
    .fetch_all(pool)
    .await
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct EndpointChange<'a> {
    pub url: Option<&'a str>,
    pub description: Option<Option<&'a str>>,
    pub events: Option<&'a [String]>,
    pub enabled: Option<bool>,
}

/// Applies `change`. Enabling clears the reason it was disabled, the failing flag and the
/// breaker: the host says the receiver is back.
pub async fn update_endpoint(
    pool: &PgPool,
    id: Uuid,
    company: Option<i64>,
    change: &EndpointChange<'_>,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE offboard.webhook_endpoints SET
             url = coalesce($3, url),
             description = CASE WHEN $4 THEN $5 ELSE description END,
             event_types = coalesce($6, event_types),
             enabled = coalesce($7, enabled),
             disabled_reason = CASE WHEN $7 IS NULL THEN disabled_reason
                                    WHEN $7 THEN NULL ELSE 'api' END,
             failing = CASE WHEN $7 THEN false ELSE failing END,
             consecutive_failures = CASE WHEN $7 THEN 0 ELSE consecutive_failures END,
             paused_until = CASE WHEN $7 THEN NULL ELSE paused_until END,
             updated_at = now()
         WHERE id = $1 AND ($2::bigint IS NULL OR company_id = $2)
         RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(id)
    .bind(company)
    .bind(change.url)
    .bind(change.description.is_some())
    .bind(change.description.flatten())
    .bind(change.events)
    .bind(change.enabled)
    .fetch_optional(pool)
    .await
}

/// Deletes an endpoint and its deliveries. `false`: not found.
pub async fn delete_endpoint(
    pool: &PgPool,
    id: Uuid,
    company: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM offboard.webhook_endpoints WHERE id = $1 AND ($2::bigint IS NULL OR company_id = $2)",
    )
    .bind(id)
    .bind(company)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// A new secret signs from now on; the current one keeps signing beside it for `overlap`.
pub async fn rotate_secret(
    pool: &PgPool,
    id: Uuid,
    company: Option<i64>,
    secret: &str,
    overlap: Duration,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE offboard.webhook_endpoints
         SET previous_secret = secret, secret = $3,
             previous_secret_until = now() + make_interval(secs => $4), updated_at = now()
         WHERE id = $1 AND ($2::bigint IS NULL OR company_id = $2)
         RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(id)
    .bind(company)
    .bind(secret)
    .bind(overlap.as_secs_f64())
    .fetch_optional(pool)
    .await
}
