//! Batches of offboarding requests (`POST /v1/offboarding-batches`): the batch's row (who
//! submitted it, its refused rows, its idempotency key) and, read from the runs that carry
//! its id, its progress — runs by status, items moved, and a rate to tell when it ends.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{Actor, BatchFormat, BatchStatus};

/// A batch to record.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    pub id: Uuid,
    pub submitted_by: Actor,
    pub company_scope: Option<i64>,
    pub format: BatchFormat,
    pub all_or_nothing: bool,
    pub rows_total: i32,
    /// The `Idempotency-Key` and the keyed hash of the request.
    pub idempotency: Option<(&'a str, &'a str)>,
}

/// Records a batch as `writing`. With a key another batch of the same scope holds, nothing
/// is written: `Err((id, stored hash))` of that batch.
pub async fn create(
    pool: &PgPool,
    batch: &NewBatch<'_>,
) -> Result<Result<(), (Uuid, Option<String>)>, sqlx::Error> {
    let (key, hash) = batch.idempotency.unzip();
    let written = sqlx::query(
        "INSERT INTO offboard.offboarding_batches
             (id, submitted_by, company_scope, format, all_or_nothing, rows_total,
              idempotency_key, request_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING",
    )
    .bind(batch.id)
    .bind(batch.submitted_by)
    .bind(batch.company_scope)
    .bind(batch.format)
    .bind(batch.all_or_nothing)
    .bind(batch.rows_total)
    .bind(key)
    .bind(hash)
    .execute(pool)
    .await?
    .rows_affected();
    if written == 1 {
        return Ok(Ok(()));
    }
    let held: (Uuid, Option<String>) = sqlx::query_as(
        "SELECT id, request_hash FROM offboard.offboarding_batches
         WHERE coalesce(company_scope, 0) = coalesce($1, 0) AND idempotency_key = $2",
    )
    .bind(batch.company_scope)
    .bind(key)
    .fetch_one(pool)
    .await?;
    Ok(Err(held))
}

/// Marks the runs a chunk wrote as the batch's and counts them, in the chunk's transaction.
pub async fn record_chunk(
    tx: &mut PgConnection,
    batch_id: Uuid,
    run_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH marked AS (
             UPDATE offboard.runs SET batch_id = $1 WHERE id = ANY($2) RETURNING company_id)
         UPDATE offboard.offboarding_batches b
         SET rows_accepted = rows_accepted + (SELECT count(*) FROM marked),
             companies = ARRAY(SELECT DISTINCT c FROM unnest(b.companies || ARRAY(
                 SELECT DISTINCT company_id FROM marked)) AS c ORDER BY c)
         WHERE b.id = $1",
    )
    .bind(batch_id)
    .bind(run_ids)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The batch's answer is complete: `written`, or `refused` (all or nothing, nothing
/// written), with its refused rows.
pub async fn finish(
    pool: &PgPool,
    batch_id: Uuid,
    status: BatchStatus,
    refused: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE offboard.offboarding_batches
         SET status = $2, refused = $3, written_at = now() WHERE id = $1",
    )
    .bind(batch_id)
    .bind(status)
    .bind(without_nul(refused))
    .execute(pool)
    .await?;
    Ok(())
}

/// `value` without NUL characters, which PostgreSQL's `jsonb` cannot hold: a refused row
/// names the field it was refused for, and an unknown field's name is the client's text.
fn without_nul(value: &Value) -> Value {
    let clean = |s: &str| s.replace('\0', "\u{fffd}");
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.iter().map(without_nul).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (clean(k), without_nul(v))).collect())
        }
        other => other.clone(),
    }
}

/// A batch and its progress. With a company scope, the counts are that company's runs.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BatchRow {
    pub id: Uuid,
    pub submitted_by: Actor,
    pub company_scope: Option<i64>,
    pub companies: Vec<i64>,
    pub format: BatchFormat,
    pub all_or_nothing: bool,
    pub status: BatchStatus,
    pub rows_total: i32,
    pub rows_accepted: i32,
    pub refused: Value,
    pub created_at: DateTime<Utc>,
    pub written_at: Option<DateTime<Utc>>,
    /// Runs of the batch by status.
    pub runs_by_status: Value,
    pub runs_total: i64,
    /// Runs that ended (succeeded, failed, canceled, expired, rejected).
    pub runs_finished: i64,
    /// Items the batch's reassignment steps moved so far.
    pub items_moved: i64,
    /// When the first run of the batch started, and the last one ended.
    pub first_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
}

/// A batch with its progress; `$1` is the company a scoped token is held to (or null).
const BATCH_SQL: &str = "
    SELECT b.id, b.submitted_by, b.company_scope, b.companies, b.format, b.all_or_nothing,
           b.status, b.rows_total, b.rows_accepted, b.refused, b.created_at, b.written_at,
           coalesce((SELECT jsonb_object_agg(status, n) FROM
                        (SELECT r.status, count(*) AS n FROM offboard.runs r
                         WHERE r.batch_id = b.id AND ($1::bigint IS NULL OR r.company_id = $1)
                         GROUP BY r.status) s), '{}'::jsonb) AS runs_by_status,
           (SELECT count(*) FROM offboard.runs r
            WHERE r.batch_id = b.id AND ($1::bigint IS NULL OR r.company_id = $1)) AS runs_total,
           (SELECT count(*) FROM offboard.runs r
            WHERE r.batch_id = b.id AND ($1::bigint IS NULL OR r.company_id = $1)
              AND r.status IN ('succeeded', 'failed', 'canceled', 'expired', 'rejected')
              AND r.finished_at IS NOT NULL) AS runs_finished,
           (SELECT coalesce(sum(s.done), 0)::bigint FROM offboard.runs r
            JOIN offboard.steps s ON s.run_id = r.id
            WHERE r.batch_id = b.id AND ($1::bigint IS NULL OR r.company_id = $1)
              AND s.name LIKE 'reassign\\_%') AS items_moved,
           (SELECT min(r.started_at) FROM offboard.runs r
            WHERE r.batch_id = b.id AND ($1::bigint IS NULL OR r.company_id = $1)) AS first_started_at,
           (SELECT max(r.finished_at) FROM offboard.runs r
            WHERE r.batch_id = b.id AND ($1::bigint IS NULL OR r.company_id = $1)) AS last_finished_at
    FROM offboard.offboarding_batches b";

/// A batch; with `company` given, only one that scope submitted or that holds runs of the
/// company (its counts then that company's).
pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    company: Option<i64>,
) -> Result<Option<BatchRow>, sqlx::Error> {
    let sql = format!(
        "{BATCH_SQL} WHERE b.id = $2
           AND ($1::bigint IS NULL OR b.company_scope = $1 OR $1 = ANY(b.companies))"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(company).bind(id).fetch_optional(db).await
}

/// Batches newest first after the keyset cursor `before` (`(created_at, id)` of the last
/// batch of the previous page); a scoped token's own only.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    company: Option<i64>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<BatchRow>, sqlx::Error> {
    let (before_at, before_id) = before.unzip();
    let sql = format!(
        "{BATCH_SQL} WHERE ($1::bigint IS NULL OR b.company_scope = $1 OR $1 = ANY(b.companies))
           AND ($2::timestamptz IS NULL OR (b.created_at, b.id) < ($2, $3))
         ORDER BY b.created_at DESC, b.id DESC LIMIT $4"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(company)
        .bind(before_at)
        .bind(before_id)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Seconds until the batch's runs are all finished, from the rate observed since its first
/// run started: `None` before any run finished, `Some(0)` once all have.
pub fn eta_seconds(batch: &BatchRow, now: DateTime<Utc>) -> Option<i64> {
    let remaining = batch.runs_total - batch.runs_finished;
    if remaining <= 0 {
        return Some(0);
    }
    let started = batch.first_started_at?;
    let elapsed = (now - started).num_milliseconds().max(1) as f64 / 1000.0;
    if batch.runs_finished == 0 {
        return None;
    }
    let rate = batch.runs_finished as f64 / elapsed;
    Some((remaining as f64 / rate).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use serde_json::json;

    use super::*;

    fn batch(total: i64, finished: i64, started_ago: Option<i64>, now: DateTime<Utc>) -> BatchRow {
        BatchRow {
            id: Uuid::nil(),
            submitted_by: Actor::Operator,
            company_scope: None,
            companies: vec![1],
            format: BatchFormat::Csv,
            all_or_nothing: false,
            status: BatchStatus::Written,
            rows_total: total as i32,
            rows_accepted: total as i32,
            refused: json!([]),
            created_at: now,
            written_at: Some(now),
            runs_by_status: json!({}),
            runs_total: total,
            runs_finished: finished,
            items_moved: 0,
            first_started_at: started_ago.map(|s| now - Duration::seconds(s)),
            last_finished_at: None,
        }
    }

    #[test]
    fn the_eta_follows_the_rate_runs_have_been_ending_at() {
        let now = Utc::now();
        // 100 of 1,000 ended in 50 s: 2 runs/s, 900 left, 450 s.
        assert_eq!(eta_seconds(&batch(1_000, 100, Some(50), now), now), Some(450));
        assert_eq!(eta_seconds(&batch(1_000, 0, Some(50), now), now), None, "no rate yet");
        assert_eq!(eta_seconds(&batch(1_000, 0, None, now), now), None, "nothing started");
        assert_eq!(eta_seconds(&batch(10, 10, Some(5), now), now), Some(0));
    }
}
