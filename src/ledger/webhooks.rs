//! Host webhooks in the ledger: endpoints, and deliveries — the outbox. Event and delivery
//! rows are written by triggers in the transaction that changes state (migration
//! `20261202040001_webhooks`); here they are claimed, recorded, listed and replayed. A
//! delivery's state moves in single statements guarded by its status and attempt number,
//! so a deliverer whose lease expired cannot record over the next attempt.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::DeliveryStatus;

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
    let found: Option<(String, bool)> = sqlx::query_as(
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
        Some((status, _)) if status == "pending" || status == "sending" => {
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

/// A delivery a deliverer has claimed, with all it needs to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    /// This attempt's number (1 for the first); it fences what the attempt records.
    pub attempts: i32,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    /// The body, exactly as it is signed and sent.
    pub payload: String,
}

/// Limits a claim respects.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    /// Deliveries to take at most (the deliverer's free slots).
    pub max: i64,
    /// Deliveries being sent to one endpoint, across deliverers.
    pub per_endpoint: i64,
    /// How long a claim lasts: the attempt's timeout and a margin.
    pub lease: Duration,
}

/// `pending -> sending` for due deliveries of enabled endpoints whose breaker is closed,
/// oldest first, at most `per_endpoint` being sent to one endpoint: a dead or slow
/// endpoint holds only its own slots. Claims are serialized by an advisory lock so the
/// per-endpoint count holds across deliverers.
pub async fn claim_due(pool: &PgPool, limits: ClaimLimits) -> Result<Vec<Claimed>, sqlx::Error> {
    if limits.max <= 0 {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('offboard.webhook_claim'))")
        .execute(&mut *tx)
        .await?;
    let claimed = sqlx::query_as(
        "WITH due AS (
             SELECT d.id, d.endpoint_id,
                    row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS n
             FROM (SELECT id, endpoint_id, next_attempt_at FROM offboard.webhook_deliveries
                   WHERE status = 'pending' AND next_attempt_at <= now()
                   ORDER BY next_attempt_at, id LIMIT 2000) d
             JOIN offboard.webhook_endpoints e ON e.id = d.endpoint_id
             WHERE e.enabled AND (e.paused_until IS NULL OR e.paused_until <= now())),
         sending AS (
             SELECT endpoint_id, count(*) AS n FROM offboard.webhook_deliveries
             WHERE status = 'sending' GROUP BY endpoint_id),
         picked AS (
             SELECT due.id FROM due LEFT JOIN sending s ON s.endpoint_id = due.endpoint_id
             WHERE due.n + coalesce(s.n, 0) <= $2
             ORDER BY due.id LIMIT $1),
         claimed AS (
             UPDATE offboard.webhook_deliveries d
             SET status = 'sending', attempts = d.attempts + 1, last_attempt_at = now(),
                 lease_expires_at = now() + make_interval(secs => $3)
             FROM picked p WHERE d.id = p.id AND d.status = 'pending'
             RETURNING d.id, d.event_id, d.endpoint_id, d.attempts)
         SELECT c.id, c.event_id, c.endpoint_id, c.attempts, e.url, e.secret,
                CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous_secret,
                ev.payload::text AS payload
         FROM claimed c
         JOIN offboard.webhook_endpoints e ON e.id = c.endpoint_id
         JOIN offboard.webhook_events ev ON ev.id = c.event_id
         ORDER BY c.id",
    )
    .bind(limits.max)
    .bind(limits.per_endpoint)
    .bind(limits.lease.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(claimed)
}

/// How an attempt ended, as the ledger records it.
#[derive(Debug, Clone)]
pub struct AttemptRecord<'a> {
    pub status_code: Option<u16>,
    /// A stable code for a failure; `None` on success.
    pub error: Option<&'a str>,
    pub latency: Duration,
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    /// 410: the delivery fails and the endpoint is disabled.
    Gone,
    /// Another attempt after this pause.
    RetryIn(Duration),
    /// The schedule is used up: failed, and the endpoint flagged.
    Exhausted,
}

/// Breaker settings the record applies.
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    pub after: i32,
    pub pause: Duration,
}

/// Records an attempt's end and its effect on the endpoint (breaker, flag, disable), in one
/// statement. `false`: the attempt had lost its claim (expired and taken back), nothing
/// recorded.
pub async fn record_attempt(
    pool: &PgPool,
    claimed: &Claimed,
    attempt: &AttemptRecord<'_>,
    next: Next,
    breaker: Breaker,
) -> Result<bool, sqlx::Error> {
    let (status, retry_in) = match next {
        Next::Succeeded => ("succeeded", 0.0),
        Next::Gone | Next::Exhausted => ("failed", 0.0),
        Next::RetryIn(d) => ("pending", d.as_secs_f64()),
    };
    let recorded: Option<i64> = sqlx::query_scalar(
        "WITH done AS (
             UPDATE offboard.webhook_deliveries
             SET status = $3, lease_expires_at = NULL,
                 next_attempt_at = now() + make_interval(secs => $4),
                 last_status_code = $5, last_error = $6, last_latency_ms = $7,
                 finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END
             WHERE id = $1 AND attempts = $2 AND status = 'sending'
             RETURNING endpoint_id),
         endpoint AS (
             UPDATE offboard.webhook_endpoints e
             SET consecutive_failures = CASE WHEN $3 = 'succeeded' THEN 0
                                             ELSE e.consecutive_failures + 1 END,
                 paused_until = CASE WHEN $3 = 'succeeded' THEN NULL
                                     WHEN e.consecutive_failures + 1 >= $9
                                     THEN now() + make_interval(secs => $10)
                                     ELSE e.paused_until END,
                 failing = CASE WHEN $3 = 'succeeded' THEN false
                                WHEN $8 = 'exhausted' THEN true ELSE e.failing END,
                 enabled = CASE WHEN $8 = 'gone' THEN false ELSE e.enabled END,
                 disabled_reason = CASE WHEN $8 = 'gone' THEN 'gone' ELSE e.disabled_reason END,
                 updated_at = CASE WHEN $8 IN ('gone', 'exhausted') THEN now() ELSE e.updated_at END
             FROM done WHERE e.id = done.endpoint_id
             RETURNING 1)
         SELECT count(*) FROM done",
    )
    .bind(claimed.id)
    .bind(claimed.attempts)
    .bind(status)
    .bind(retry_in)
    .bind(attempt.status_code.map(i32::from))
    .bind(attempt.error)
    .bind(attempt.latency.as_millis().min(i32::MAX as u128) as i32)
    .bind(match next {
        Next::Gone => "gone",
        Next::Exhausted => "exhausted",
        _ => "",
    })
    .bind(breaker.after)
    .bind(breaker.pause.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(recorded == Some(1))
}

/// Deliveries whose deliverer vanished mid-attempt (killed, hung past its lease) go back to
/// pending, due now: sent again, never lost. Their attempt counts.
pub async fn reap_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let reaped = sqlx::query(
        "UPDATE offboard.webhook_deliveries
         SET status = 'pending', next_attempt_at = now(), lease_expires_at = NULL,
             last_error = 'deliverer_lost'
         WHERE id IN (SELECT id FROM offboard.webhook_deliveries
                      WHERE status = 'sending' AND lease_expires_at < now()
                      LIMIT 1000 FOR UPDATE SKIP LOCKED)",
    )
    .execute(pool)
    .await?;
    Ok(reaped.rows_affected())
}

/// Deliveries by status, for metrics and health.
pub async fn counts_by_status<'e>(
    db: impl PgExecutor<'e>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, count(*) FROM offboard.webhook_deliveries GROUP BY status ORDER BY status",
    )
    .fetch_all(db)
    .await
}
