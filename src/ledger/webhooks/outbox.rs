//! The outbox as deliverers work it: due deliveries claimed under per-endpoint limits, an
//! attempt's end recorded with its effect on the endpoint, expired claims reaped.

use std::time::Duration;

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

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
