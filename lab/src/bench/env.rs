//! A scenario's own database and Redis prefix: made when it starts, removed when it ends
//! (SCAN and UNLINK, never FLUSH: Redis is shared).

use std::str::FromStr;

use anyhow::Context;
use sqlx::{Connection, Executor, PgPool, postgres::PgConnectOptions};

use offboard::{config::Settings, ledger, queue::Queues};

/// One scenario's own database and Redis prefix, removed again by [`BenchEnv::teardown`].
pub(crate) struct BenchEnv {
    /// Settings pointing at the bench database and prefix.
    pub settings: Settings,
    pub pool: PgPool,
    pub queues: Queues,
    server: PgConnectOptions,
    database: String,
}

impl BenchEnv {
    pub async fn create(base: &Settings, scenario: &str) -> anyhow::Result<Self> {
        let database = format!("offboard_bench_{scenario}");
        let server = PgConnectOptions::from_str(&base.database_url)
            .context("DATABASE_URL is not a PostgreSQL URL")?
            .database("postgres");
        // A run that crashed may have left its database behind.
        drop_database(&server, &database).await?;
        let mut settings = base.clone();
        settings.database_url = with_database(&base.database_url, &database);
        settings.queue_prefix = format!(
            "offboard-bench-{scenario}-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        );
        settings.faults = Vec::new();
        let pool = ledger::connect_and_migrate(&settings.database_url, 8).await?;
        let queues = Queues::connect(&settings.redis_url, &settings.queue_prefix).await?;
        Ok(Self { settings, pool, queues, server, database })
    }

    /// Drops the database and deletes the prefix's Redis keys. Errors are reported, not
    /// returned: teardown runs after a failed scenario too.
    pub async fn teardown(self) {
        self.pool.close().await;
        if let Err(e) = drop_database(&self.server, &self.database).await {
            eprintln!("bench: could not drop database {}: {e:#}", self.database);
        }
        if let Err(e) = delete_redis_keys(&self.queues).await {
            eprintln!("bench: could not delete Redis keys {}:*: {e:#}", self.queues.prefix());
        }
    }
}

async fn drop_database(server: &PgConnectOptions, database: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect_with(server)
        .await
        .context("cannot connect to the postgres database")?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            database.replace('"', "\"\"")
        )))
        .await
        .with_context(|| format!("DROP DATABASE {database}"))?;
    admin.close().await.ok();
    Ok(())
}

/// The same URL naming another database.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

/// Deletes every key under the prefix (SCAN, never KEYS or FLUSH: Redis is shared) and the
/// prefix's entries in apalis' global queue list.
pub(crate) async fn delete_redis_keys(queues: &Queues) -> anyhow::Result<u64> {
    let mut conn = queues.connection();
    let pattern = format!("{}:*", queues.prefix());
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len() as u64;
            redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let members: Vec<String> =
        ["steps", "purges"].iter().map(|q| format!("{}:{q}:workers", queues.prefix())).collect();
    redis::cmd("ZREM")
        .arg("core:apalis:queues:list")
        .arg(&members)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_keeping_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/offboard", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "b"),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5432", "b"), "postgres://h:5432/b");
    }
}
