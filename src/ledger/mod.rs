//! The ledger (schema `offboard`): runs, steps, history, idempotency keys, scheduled
//! purges, and host webhooks (endpoints, events, deliveries). PostgreSQL is the record of
//! every run and step; Redis only carries work, so anything Redis loses is found here again.

pub mod approval;
pub mod audit;
pub mod bulk;
pub mod calls;
pub mod filter;
pub mod idempotency;
pub mod journal;
pub mod policies;
pub mod restart;
pub mod runs;
pub mod samples;
pub mod scheduled;
pub mod steps;
pub mod webhooks;

use std::time::Duration;

use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DbTimeouts;

/// Migrations for both schemas (`crm`, the reference store, and `offboard`, the ledger).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A connection that was idle at least this long is checked before it is handed out.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The pool every process uses. sqlx checks each connection with a round trip to the
/// server before handing it out (`test_before_acquire`), which doubled the round trips of
/// every statement issued on the pool — a claim, a completion, an enqueue's read. Here
/// only a connection idle for [`CHECK_IDLE_AFTER`] is checked (one that died while idle,
/// say across a PostgreSQL restart, is replaced before use); a busy one that breaks fails
/// its statement, which the API answers with 503 and a step retries.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IDLE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// The time limits of [`DbTimeouts`] as run-time parameters of every connection, sent with
/// its start-up (no statement per connection or transaction).
pub fn with_timeouts(options: PgConnectOptions, timeouts: &DbTimeouts) -> PgConnectOptions {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let secs = |d: Duration| d.as_secs().max(1).to_string();
    options.options([
        ("statement_timeout", ms(timeouts.statement)),
        ("lock_timeout", ms(timeouts.lock)),
        ("idle_in_transaction_session_timeout", ms(timeouts.idle_in_transaction)),
        ("tcp_keepalives_idle", secs(timeouts.keepalive_idle)),
        ("tcp_keepalives_interval", secs(timeouts.keepalive_idle / 10)),
        ("tcp_keepalives_count", "3".to_string()),
    ])
}

/// A pool on a database that exists and is migrated; it connects when first used.
pub fn connect_lazy(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_lazy_with(database_url, max_connections, &DbTimeouts::default())
}

/// [`connect_lazy`] with the given time limits.
pub fn connect_lazy_with(
    database_url: &str,
    max_connections: u32,
    timeouts: &DbTimeouts,
) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    let options = <PgConnectOptions as std::str::FromStr>::from_str(database_url)
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    Ok(pool_options(max_connections).connect_lazy_with(with_timeouts(options, timeouts)))
}

/// Connects, creating the database when it does not exist yet, and applies pending
/// migrations; the pool's connections get the default [`DbTimeouts`].
pub async fn connect_and_migrate(
    database_url: &str,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    connect_and_migrate_with(database_url, max_connections, &DbTimeouts::default()).await
}

/// [`connect_and_migrate`] with the given time limits. Migrations run on a connection of
/// their own, without them (building an index may take longer than a statement may).
pub async fn connect_and_migrate_with(
    database_url: &str,
    max_connections: u32,
    timeouts: &DbTimeouts,
) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    use sqlx::{Connection, Executor};
    use std::str::FromStr;

    let options =
        PgConnectOptions::from_str(database_url).context("DATABASE_URL is not a PostgreSQL URL")?;
    let database = options.get_database().unwrap_or("postgres").to_string();
    let exists = match sqlx::PgConnection::connect_with(&options).await {
        Ok(conn) => {
            conn.close().await.ok();
            true
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => false,
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot reach PostgreSQL at {}", crate::config::redact_url(database_url))
            });
        }
    };
    if !exists {
        let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres"))
            .await
            .context("cannot connect to the postgres database to create ours")?;
        let quoted = database.replace('"', "\"\"");
        match admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\""))).await {
            Ok(_) => tracing::info!(database = %database, "created database"),
            // Another process created it at the same moment.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("CREATE DATABASE failed"),
        }
    }
    let mut migrating = sqlx::PgConnection::connect_with(&options)
        .await
        .context("cannot connect to apply migrations")?;
    MIGRATOR.run(&mut migrating).await.context("applying migrations")?;
    migrating.close().await.ok();
    let pool = pool_options(max_connections)
        .connect_with(with_timeouts(options, timeouts))
        .await
        .context("cannot open the connection pool")?;
    Ok(pool)
}
