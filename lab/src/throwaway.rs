//! What the bench and the fault suite leave behind on shared servers, and how they remove
//! it: a database of their own on the server of `DATABASE_URL`, and Redis keys under a
//! prefix of their own (deleted by SCAN, never KEYS or FLUSHALL: Redis is shared).

use std::str::FromStr;

use anyhow::Context;
use sqlx::{Connection, postgres::PgConnectOptions};

/// `url` with its database name replaced, its options kept.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let scheme = url.find("://").context("DATABASE_URL is not a URL")? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let server = match base[scheme..].find('/') {
        Some(slash) => &base[..scheme + slash],
        None => base,
    };
    Ok(format!("{server}/{database}{query}"))
}

/// Drops `database` (its connections cut) on the server of `database_url`, through the
/// server's `postgres` database.
pub async fn drop_database(database_url: &str, database: &str) -> anyhow::Result<()> {
    let server = PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a PostgreSQL URL")?
        .database("postgres");
    let mut admin =
        sqlx::PgConnection::connect_with(&server).await.context("cannot reach PostgreSQL")?;
    let quoted = database.replace('"', "\"\"");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot drop database {database}"))?;
    admin.close().await.ok();
    Ok(())
}

/// Deletes every key under `prefix` (`prefix:*`); returns how many there were.
pub async fn delete_keys(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
) -> redis::RedisResult<u64> {
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len() as u64;
            redis::cmd("UNLINK").arg(&keys).query_async::<()>(conn).await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_options_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/offboard", "offboard_chaos").unwrap(),
            "postgres://postgres@127.0.0.1:5432/offboard_chaos"
        );
        assert_eq!(
            with_database("postgres://u:p@db/x?sslmode=disable", "c").unwrap(),
            "postgres://u:p@db/c?sslmode=disable"
        );
        assert_eq!(with_database("postgres://db", "c").unwrap(), "postgres://db/c");
        assert_eq!(with_database("postgres://h:5432", "b").unwrap(), "postgres://h:5432/b");
    }
}
