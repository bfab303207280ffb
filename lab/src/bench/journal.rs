//! The transfer journal's cost, inside `offboard-lab bench reassign`: the reassignment's
//! own batch statements (`offboard::steps::reassign`), run batch by batch in this process
//! exactly as the step runs them, once with the journal row each batch writes and once
//! without it — the same SQL minus the journal insert, the baseline. The ratio of the two
//! rates is the journal's cost on the writes (target: journal on ≥ 0.77 × off, i.e. at
//! most 1.3× the cost).

use std::time::Instant;

use chrono::{DateTime, Utc};
// The statements are the product's own, built from fixed names.
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use offboard::{
    domain::{ItemType, Scope},
    steps::reassign::{Journal, by_position_update_sql, single_target_sql},
};

/// Moves every deal `owner` owns in `batch`-row transactions, single target (one
/// statement a batch) or round-robin over `targets` (read, map, write back by id, as a
/// ratio plan does), with the journal on or off. Returns rows/s.
pub(super) async fn move_all(
    pool: &PgPool,
    company: i64,
    owner: i64,
    targets: &[i64],
    batch: i64,
    journal: Journal,
) -> anyhow::Result<(f64, i64)> {
    let run = Uuid::now_v7();
    let start: DateTime<Utc> = "0001-01-01T00:00:00Z".parse()?;
    let mut cursor = (start, 0i64);
    let mut moved = 0i64;
    let single = single_target_sql(ItemType::Deals, Scope::All, journal);
    let select = "SELECT id, created_at FROM crm.deals
                  WHERE owner_id = $2 AND company_id = $1 AND (created_at, id) > ($3, $4)
                  ORDER BY created_at, id LIMIT $5 FOR UPDATE";
    let by_position = by_position_update_sql(ItemType::Deals, journal);
    let started = Instant::now();
    loop {
        let mut tx = pool.begin().await?;
        let (n, last) = if let [target] = targets {
            let (n, created_at, id): (i64, Option<DateTime<Utc>>, Option<i64>) =
                sqlx::query_as(AssertSqlSafe(single.as_str()))
                    .bind(company)
                    .bind(owner)
                    .bind(target)
                    .bind(cursor.0)
                    .bind(cursor.1)
                    .bind(batch)
                    .bind(run)
                    .fetch_one(&mut *tx)
                    .await?;
            (n, created_at.zip(id))
        } else {
            let rows: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(select)
                .bind(company)
                .bind(owner)
                .bind(cursor.0)
                .bind(cursor.1)
                .bind(batch)
                .fetch_all(&mut *tx)
                .await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let owners: Vec<i64> =
                (0..ids.len()).map(|i| targets[(moved as usize + i) % targets.len()]).collect();
            let _: i64 = sqlx::query_scalar(AssertSqlSafe(by_position.as_str()))
                .bind(&ids)
                .bind(&owners)
                .bind(run)
                .bind(company)
                .bind(owner)
                .fetch_one(&mut *tx)
                .await?;
            (ids.len() as i64, rows.last().map(|(id, at)| (*at, *id)))
        };
        tx.commit().await?;
        moved += n;
        match last {
            Some(last) if n == batch => cursor = last,
            _ => break,
        }
    }
    let rate = moved as f64 / started.elapsed().as_secs_f64();
    // The journal's rows are not part of the next phase's starting state.
    sqlx::query("DELETE FROM offboard.transfer_journal WHERE run_id = $1")
        .bind(run)
        .execute(pool)
        .await?;
    Ok((rate, moved))
}
