//! What the suite reads from the store outside the checks: the items a user owns and the
//! private emails per user (counted before the runs and after them), the waits for purges
//! and webhook deliveries to finish, and a retry through PostgreSQL restarts.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sqlx::PgPool;

use super::hooks;
use offboard::{dispatch::PURGE_GRACE, domain::ItemType};

/// Items of every type `user` owns.
pub async fn owned_by(pool: &PgPool, company_id: i64, user: i64) -> anyhow::Result<i64> {
    let mut n = 0;
    for item in ItemType::ALL {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE company_id = $1 AND owner_id = $2",
            item.table()
        );
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(company_id)
            .bind(user)
            .fetch_one(pool)
            .await?;
        n += count;
    }
    Ok(n)
}

/// Private emails linked to an entity (what a purge deletes), per user of the company.
pub async fn private_emails(
    pool: &PgPool,
    company_id: i64,
) -> Result<HashMap<i64, i64>, sqlx::Error> {
    let counts: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT owner_id, count(*) FROM crm.emails
         WHERE company_id = $1 AND visibility = 'private' AND linked_type IS NOT NULL GROUP BY 1",
    )
    .bind(company_id)
    .fetch_all(pool)
    .await?;
    Ok(counts.into_iter().collect())
}

/// Retries a read or write of the suite's own through a PostgreSQL restart (a minute).
pub async fn retrying<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if started.elapsed() > Duration::from_secs(60) => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until no purge is scheduled, or one is overdue beyond the sweeper's grace plus
/// a margin (it is then lost, and the check says so).
pub async fn wait_for_purges(pool: &PgPool, company_id: i64) {
    let limit = Instant::now() + Duration::from_secs(120);
    let margin = (PURGE_GRACE + Duration::from_secs(15)).as_secs_f64();
    while Instant::now() < limit {
        let state: Result<(i64, bool), _> = sqlx::query_as(
            "SELECT count(*), coalesce(bool_or(due_at < now() - make_interval(secs => $2)), false)
             FROM offboard.scheduled_purges WHERE company_id = $1 AND status = 'scheduled'",
        )
        .bind(company_id)
        .bind(margin)
        .fetch_one(pool)
        .await;
        match state {
            Ok((0, _)) | Ok((_, true)) => return,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until every webhook delivery of the company has finished, or `limit` passes
/// (what is left then counts as lost). Workers stay up meanwhile.
pub async fn wait_for_deliveries(pool: &PgPool, company_id: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        match hooks::unfinished(pool, company_id).await {
            Ok(0) => return,
            Ok(n) if last_report.elapsed() >= Duration::from_secs(5) => {
                last_report = Instant::now();
                eprintln!("chaos: {n} webhook deliveries still to finish");
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
