//! `offboard.metric_samples`: a row a second of what the workers did (step attempts that
//! ended, summed over the processes that write into the row) and the gauges at that
//! second (steps in flight, Redis queue depth), kept for [`KEPT`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// How long samples are kept.
pub const KEPT: Duration = Duration::from_secs(3600);

/// One process's counts since its last sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub succeeded: i64,
    pub retried: i64,
    pub dead: i64,
    /// Attempt durations per bucket of `samples::DURATION_BOUNDS_MS` (and one past it).
    pub buckets: Vec<i64>,
}

/// Adds `delta` into this second's row and sets its gauges.
pub async fn add(
    pool: &PgPool,
    delta: &Delta,
    queue_depth: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO offboard.metric_samples AS m
             (at, steps_succeeded, steps_failed, steps_retried, steps_dead, duration_buckets,
              in_flight, queue_depth)
         VALUES (date_trunc('second', now()), $1, $2 + $3, $2, $3, $4,
                 (SELECT count(*) FROM offboard.steps WHERE status IN ('queued', 'running')), $5)
         ON CONFLICT (at) DO UPDATE SET
             steps_succeeded = m.steps_succeeded + excluded.steps_succeeded,
             steps_failed = m.steps_failed + excluded.steps_failed,
             steps_retried = m.steps_retried + excluded.steps_retried,
             steps_dead = m.steps_dead + excluded.steps_dead,
             duration_buckets = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0)
                                      FROM unnest(m.duration_buckets, excluded.duration_buckets) AS x(a, b)),
             in_flight = excluded.in_flight,
             queue_depth = coalesce(excluded.queue_depth, m.queue_depth)",
    )
    .bind(delta.succeeded)
    .bind(delta.retried)
    .bind(delta.dead)
    .bind(&delta.buckets)
    .bind(queue_depth)
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops samples older than [`KEPT`].
pub async fn trim(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM offboard.metric_samples WHERE at < now() - make_interval(secs => $1)",
    )
    .bind(KEPT.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}

/// One stored sample.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub steps_succeeded: i64,
    pub steps_failed: i64,
    pub steps_retried: i64,
    pub steps_dead: i64,
    pub duration_buckets: Vec<i64>,
    pub in_flight: i64,
    pub queue_depth: Option<i64>,
}

/// Samples of the last `window`, oldest first, with the database's clock now.
pub async fn since<'e>(
    db: impl PgExecutor<'e> + Copy,
    window: Duration,
) -> Result<(DateTime<Utc>, Vec<Sample>), sqlx::Error> {
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(db).await?;
    let rows = sqlx::query_as(
        "SELECT at, steps_succeeded, steps_failed, steps_retried, steps_dead, duration_buckets,
                in_flight, queue_depth
         FROM offboard.metric_samples WHERE at > $1 - make_interval(secs => $2)
         ORDER BY at",
    )
    .bind(now)
    .bind(window.as_secs_f64())
    .fetch_all(db)
    .await?;
    Ok((now, rows))
}
