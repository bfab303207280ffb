//! Where PostgreSQL's time goes, statement by statement, when the server has
//! `pg_stat_statements` loaded (`shared_preload_libraries`): a load is bracketed by
//! [`Statements::reset`] and [`Statements::report`], which prints the statements that took
//! the most execution time in the scenario's database as `#` lines — per call, the time,
//! the rows and the shared buffers touched. On a server without it both do nothing, so the
//! figures' format does not change.

use sqlx::PgPool;

/// The profile of one scenario's database, if the server keeps one.
pub(crate) struct Statements {
    enabled: bool,
}

/// How many statements a report lists.
const TOP: usize = 6;

impl Statements {
    /// Creates the extension in the scenario's database when the server has it loaded.
    pub async fn detect(pool: &PgPool) -> Self {
        let loaded: bool = sqlx::query_scalar(
            "SELECT 'pg_stat_statements' = ANY(string_to_array(current_setting('shared_preload_libraries'), ','))",
        )
        .fetch_one(pool)
        .await
        .unwrap_or(false);
        let enabled = loaded
            && sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(pool)
                .await
                .is_ok();
        Self { enabled }
    }

    /// Forgets what the scenario's database ran so far.
    pub async fn reset(&self, pool: &PgPool) -> anyhow::Result<()> {
        if self.enabled {
            sqlx::query(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
            )
            .execute(pool)
            .await?;
        }
        Ok(())
    }

    /// Prints the total and the top statements since [`Statements::reset`], per `unit`
    /// (`units` of them, such as accepted requests).
    pub async fn report(
        &self,
        pool: &PgPool,
        name: &str,
        units: f64,
        unit: &str,
    ) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let per = units.max(1.0);
        let rows: Vec<(String, i64, f64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT regexp_replace(left(query, 90), '\\s+', ' ', 'g'), calls, total_exec_time,
                    rows, shared_blks_hit + shared_blks_read, shared_blks_dirtied,
                    wal_bytes::bigint
             FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND query NOT LIKE '%pg_stat_statements%'
             ORDER BY total_exec_time DESC",
        )
        .fetch_all(pool)
        .await?;
        let total: f64 = rows.iter().map(|r| r.2).sum();
        let calls: i64 = rows.iter().map(|r| r.1).sum();
        let buffers: i64 = rows.iter().map(|r| r.4).sum();
        println!(
            "# statements {name}: {:.3} ms executing, {:.1} statements, {:.0} buffers per {unit}",
            total / per,
            calls as f64 / per,
            buffers as f64 / per
        );
        for (query, calls, time, returned, buffers, dirtied, wal) in rows.iter().take(TOP) {
            let c = (*calls).max(1) as f64;
            println!(
                "#   {:5.1} % {:.3} ms/{unit} | {:.2} calls/{unit}, {:.3} ms, {:.1} rows, {:.1} buffers, {:.1} dirtied, {:.0} WAL bytes a call | {query}",
                time * 100.0 / total.max(f64::MIN_POSITIVE),
                time / per,
                c / per,
                time / c,
                *returned as f64 / c,
                *buffers as f64 / c,
                *dirtied as f64 / c,
                *wal as f64 / c,
            );
        }
        Ok(())
    }
}
