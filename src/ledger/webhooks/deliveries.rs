//! Deliveries as the API shows them: listed, found, and replayed (one, or every failed one
//! of an endpoint).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::find_endpoint;
use crate::domain::DeliveryStatus;

/// A delivery as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeliveryRow {
    pub id: i64,
    /// The `webhook-id` header: the same on every attempt and replay of the event.
    pub webhook_id: String,
    pub event_type: String,
    pub endpoint_id: Uuid,
    pub company_id: i64,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const DELIVERY_SELECT: &str =
    "SELECT d.id, 'msg_' || replace(d.event_id::text, '-', '') AS webhook_id,
            ev.type AS event_type, d.endpoint_id, d.company_id, d.status, d.attempts,
            CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
            d.last_attempt_at, d.last_status_code, d.last_error, d.last_latency_ms,
            d.created_at, d.finished_at
     FROM offboard.webhook_deliveries d JOIN offboard.webhook_events ev ON ev.id = d.event_id";

/// Filters for listing deliveries, newest first, paged by id.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub company_id: Option<i64>,
    pub endpoint_id: Option<Uuid>,
    pub status: Option<String>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

pub async fn list_deliveries(
    pool: &PgPool,
    filter: &DeliveryFilter,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{DELIVERY_SELECT}
         WHERE ($1::bigint IS NULL OR d.company_id = $1)
           AND ($2::uuid IS NULL OR d.endpoint_id = $2)
           AND ($3::text IS NULL OR d.status = $3)
           AND ($4::bigint IS NULL OR d.id < $4)
         ORDER BY d.id DESC LIMIT $5"
    )))
    .bind(filter.company_id)
    .bind(filter.endpoint_id)
    .bind(filter.status.as_deref())
    .bind(filter.before_id)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

pub async fn find_delivery<'e>(
    db: impl PgExecutor<'e>,
    id: i64,
    company: Option<i64>,
) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{DELIVERY_SELECT} WHERE d.id = $1 AND ($2::bigint IS NULL OR d.company_id = $2)"
    )))
    .bind(id)
    .bind(company)
    .fetch_optional(db)
    .await
}

/// Why a replay was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRefusal {
    NotFound,
    /// The delivery is still pending or being sent.
    InProgress,
    EndpointDisabled,
}

/// Sends a delivery's event again to its endpoint, as a new delivery with the same
/// `webhook-id` (the old row keeps its history). Returns the new delivery.
pub async fn replay(
    pool: &PgPool,
    id: i64,
    company: Option<i64>,
) -> Result<Result<DeliveryRow, ReplayRefusal>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<(DeliveryStatus, bool)> = sqlx::query_as(
        "SELECT d.status, e.enabled
         FROM offboard.webhook_deliveries d JOIN offboard.webhook_endpoints e ON e.id = d.endpoint_id
         WHERE d.id = $1 AND ($2::bigint IS NULL OR d.company_id = $2)
         FOR UPDATE OF d",
    )
    .bind(id)
    .bind(company)
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => return Ok(Err(ReplayRefusal::NotFound)),
        Some((_, false)) => return Ok(Err(ReplayRefusal::EndpointDisabled)),
        Some((DeliveryStatus::Pending | DeliveryStatus::Sending, _)) => {
            return Ok(Err(ReplayRefusal::InProgress));
        }
        Some(_) => {}
    }
    let new_id: i64 = sqlx::query_scalar(
        "INSERT INTO offboard.webhook_deliveries (event_id, endpoint_id, company_id)
         SELECT event_id, endpoint_id, company_id FROM offboard.webhook_deliveries WHERE id = $1
         RETURNING id",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify('offboard_webhooks', '')").execute(&mut *tx).await?;
    let row = find_delivery(&mut *tx, new_id, None).await?.expect("the row just written");
    tx.commit().await?;
    Ok(Ok(row))
}

/// Sends every failed delivery of an endpoint again (those not replayed since). Returns
/// how many, or `None` when the endpoint is not found. A disabled endpoint is refused.
pub async fn replay_failed(
    pool: &PgPool,
    endpoint_id: Uuid,
    company: Option<i64>,
) -> Result<Result<i64, ReplayRefusal>, sqlx::Error> {
    let Some(endpoint) = find_endpoint(pool, endpoint_id, company).await? else {
        return Ok(Err(ReplayRefusal::NotFound));
    };
    if !endpoint.enabled {
        return Ok(Err(ReplayRefusal::EndpointDisabled));
    }
    let replayed: i64 = sqlx::query_scalar(
        "WITH again AS (
             INSERT INTO offboard.webhook_deliveries (event_id, endpoint_id, company_id)
             SELECT d.event_id, d.endpoint_id, d.company_id
             FROM offboard.webhook_deliveries d
             WHERE d.endpoint_id = $1 AND d.status = 'failed'
               AND NOT EXISTS (SELECT 1 FROM offboard.webhook_deliveries n
                               WHERE n.endpoint_id = d.endpoint_id AND n.event_id = d.event_id
                                 AND n.id > d.id)
             ORDER BY d.id
             RETURNING 1),
         wake AS (SELECT pg_notify('offboard_webhooks', ''))
         SELECT count(*) FROM again, wake",
    )
    .bind(endpoint_id)
    .fetch_one(pool)
    .await?;
    Ok(Ok(replayed))
}
