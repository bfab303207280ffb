//! Bulk retry and cancel by filter. The API records an operation with how many runs its
//! filter matches (the dry run's count); the sweeper of a worker process takes it under a
//! lease and works through the matching runs in id order, one chunk per transaction: the
//! chunk's runs are locked, acted on, and the operation's cursor and counts move in the
//! same commit. A process killed mid-chunk leaves the chunk undone and its lease runs out;
//! the next taker goes on from the cursor, so no run is acted on twice and none is
//! skipped, and no transaction is ever larger than a chunk.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
// Dynamic SQL here only splices the fixed FILTER_SQL and APPLIES_* conditions.
use sqlx::{AssertSqlSafe, PgExecutor, PgPool};
use uuid::Uuid;

use super::{
    filter::{FILTER_SQL, RunFilter},
    runs,
};

use crate::domain::Actor;
pub use crate::domain::{BulkKind, BulkStatus};

/// The runs the action applies to, beyond the filter: a retry takes runs with a dead
/// step, a cancel active runs. Part of the count and of every chunk, so the dry run
/// counts exactly the runs the action would touch.
fn applies_sql(kind: BulkKind) -> &'static str {
    match kind {
        BulkKind::Retry => {
            "r.status IN ('queued', 'running', 'failed')
             AND EXISTS (SELECT 1 FROM offboard.steps d WHERE d.run_id = r.id AND d.status = 'dead')"
        }
        BulkKind::Cancel => {
            "r.status IN ('scheduled', 'awaiting_approval', 'queued', 'running', 'failed')"
        }
    }
}

/// The condition every run of an operation meets: the filter (`$1`–`$11`), the action's
/// own condition, the token's company (`$12`) and created no later than `$13`.
fn matching_sql(kind: BulkKind) -> String {
    format!(
        "{FILTER_SQL}
           AND {}
           AND ($12::bigint IS NULL OR r.company_id = $12)
           AND r.created_at <= $13",
        applies_sql(kind)
    )
}

/// Runs a bulk action would act on now: the dry run.
pub async fn count<'e>(
    db: impl PgExecutor<'e>,
    kind: BulkKind,
    filter: &RunFilter,
    company_scope: Option<i64>,
) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT count(*) FROM offboard.runs r WHERE {}", matching_sql(kind));
    crate::bind_filter!(sqlx::query_scalar(AssertSqlSafe(sql)), filter)
        .bind(company_scope)
        .bind(Utc::now())
        .fetch_one(db)
        .await
}

/// A bulk operation and its progress.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BulkOperation {
    pub id: Uuid,
    pub kind: BulkKind,
    pub operator: Actor,
    pub filter: Value,
    pub company_scope: Option<i64>,
    pub status: BulkStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Runs the filter matched when the operation was recorded.
    pub matched: i64,
    /// Runs acted on so far.
    pub touched: i64,
    /// Chunks committed so far.
    pub chunks: i32,
    /// The last run id acted on: the operation goes on after it.
    pub cursor: Option<Uuid>,
}

const COLUMNS: &str = "id, kind, operator, filter, company_scope, status, created_at, updated_at, \
     finished_at, matched, touched, chunks, cursor";

/// Records a bulk operation with the count of the runs it will act on: runs created up to
/// this statement that match the filter, in the token's company. Workers take it from
/// here.
pub async fn create(
    pool: &PgPool,
    kind: BulkKind,
    filter: &RunFilter,
    company_scope: Option<i64>,
    operator: Actor,
) -> Result<BulkOperation, sqlx::Error> {
    let sql = format!(
        "INSERT INTO offboard.bulk_operations (id, kind, operator, filter, company_scope, created_at, matched)
         SELECT $14, $15, $16, $17, $12, $13,
                (SELECT count(*) FROM offboard.runs r WHERE {})
         RETURNING {COLUMNS}",
        matching_sql(kind)
    );
    crate::bind_filter!(sqlx::query_as(AssertSqlSafe(sql)), filter)
        .bind(company_scope)
        .bind(Utc::now())
        .bind(Uuid::now_v7())
        .bind(kind)
        .bind(operator)
        .bind(serde_json::to_value(filter).expect("a filter serializes"))
        .fetch_one(pool)
        .await
}

/// One operation; with `company` given, another company's is not found.
pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    company: Option<i64>,
) -> Result<Option<BulkOperation>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM offboard.bulk_operations
         WHERE id = $1 AND ($2::bigint IS NULL OR company_scope = $2)"
    )))
    .bind(id)
    .bind(company)
    .fetch_optional(db)
    .await
}

/// The newest operations (a scoped token's own company's only).
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    company: Option<i64>,
    limit: i64,
) -> Result<Vec<BulkOperation>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM offboard.bulk_operations
         WHERE ($1::bigint IS NULL OR company_scope = $1)
         ORDER BY created_at DESC, id DESC LIMIT $2"
    )))
    .bind(company)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Takes an unfinished operation nobody holds (never taken, or its taker's lease ran out):
/// returns its id and a fresh lease token.
pub async fn take_unfinished(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
) -> Result<Option<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE offboard.bulk_operations
         SET lease_token = gen_random_uuid(), lease_owner = $1,
             lease_expires_at = clock_timestamp() + make_interval(secs => $2)
         WHERE id = (SELECT id FROM offboard.bulk_operations
                     WHERE status = 'running'
                       AND (lease_expires_at IS NULL OR lease_expires_at < clock_timestamp())
                     ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, lease_token",
    )
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// What one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Runs acted on in this chunk.
    pub touched: i64,
    /// The operation has no run left: it is finished.
    pub finished: bool,
}

/// Acts on the next `size` runs of the operation after its cursor, in one transaction
/// that also renews the lease and moves the cursor. `None`: the lease is no longer
/// `token`'s (it ran out and someone else took the operation), nothing was done.
pub async fn run_chunk(
    pool: &PgPool,
    id: Uuid,
    token: Uuid,
    size: i64,
    lease: Duration,
) -> Result<Option<Chunk>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Held {
        kind: BulkKind,
        operator: Actor,
        filter: Value,
        company_scope: Option<i64>,
        created_at: DateTime<Utc>,
        cursor: Option<Uuid>,
    }
    let mut tx = pool.begin().await?;
    let Some(held) = sqlx::query_as::<_, Held>(
        "UPDATE offboard.bulk_operations
         SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)
         WHERE id = $1 AND lease_token = $2 AND status = 'running'
         RETURNING kind, operator, filter, company_scope, created_at, cursor",
    )
    .bind(id)
    .bind(token)
    .bind(lease.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let kind = held.kind;
    let filter: RunFilter = serde_json::from_value(held.filter.clone())
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;

    // In id order after the cursor; each row locked (waiting for a worker's transaction
    // on it rather than skipping it) and checked again once locked.
    let sql = format!(
        "SELECT r.id FROM offboard.runs r
         WHERE {} AND ($14::uuid IS NULL OR r.id > $14)
         ORDER BY r.id LIMIT $15
         FOR UPDATE OF r",
        matching_sql(kind)
    );
    let chunk: Vec<Uuid> = crate::bind_filter!(sqlx::query_scalar(AssertSqlSafe(sql)), &filter)
        .bind(held.company_scope)
        .bind(held.created_at)
        .bind(held.cursor)
        .bind(size)
        .fetch_all(&mut *tx)
        .await?;

    let detail = json!({"bulk_operation": id, "filter": held.filter});
    let mut touched = 0;
    for &run_id in &chunk {
        let acted = match kind {
            BulkKind::Retry => {
                runs::retry_locked(&mut tx, run_id, held.operator, detail.clone()).await?
            }
            BulkKind::Cancel => {
                runs::cancel_locked(&mut tx, run_id, held.operator, detail.clone()).await?;
                1
            }
        };
        if acted > 0 {
            touched += 1;
        }
    }
    let finished = (chunk.len() as i64) < size;
    sqlx::query(
        "UPDATE offboard.bulk_operations
         SET cursor = coalesce($2, cursor), touched = touched + $3, chunks = chunks + 1,
             updated_at = now(),
             status = CASE WHEN $4 THEN 'succeeded' ELSE status END,
             finished_at = CASE WHEN $4 THEN now() END,
             lease_token = CASE WHEN $4 THEN NULL ELSE lease_token END,
             lease_owner = CASE WHEN $4 THEN NULL ELSE lease_owner END,
             lease_expires_at = CASE WHEN $4 THEN NULL ELSE lease_expires_at END
         WHERE id = $1",
    )
    .bind(id)
    .bind(chunk.last())
    .bind(touched)
    .bind(finished)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Chunk { touched, finished }))
}
