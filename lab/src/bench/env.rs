//! A scenario's own database and Redis prefix: made when it starts, removed when it ends
//! (through [`crate::throwaway`]).

use sqlx::PgPool;

use crate::throwaway::{delete_keys, drop_database, with_database};
use offboard::{config::Settings, ledger, queue::Queues};

/// One scenario's own database and Redis prefix, removed again by [`BenchEnv::teardown`].
pub(crate) struct BenchEnv {
    /// Settings pointing at the bench database and prefix.
    pub settings: Settings,
    pub pool: PgPool,
    pub queues: Queues,
    database: String,
}

impl BenchEnv {
    pub async fn create(base: &Settings, scenario: &str) -> anyhow::Result<Self> {
        let database = format!("offboard_bench_{scenario}");
        // A run that crashed may have left its database behind.
        drop_database(&base.database_url, &database).await?;
        let mut settings = base.clone();
        settings.database_url = with_database(&base.database_url, &database)?;
        settings.queue_prefix = format!(
            "offboard-bench-{scenario}-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        );
        settings.faults = Vec::new();
        let pool = ledger::connect_and_migrate(&settings.database_url, 8).await?;
        let queues = Queues::connect(&settings.redis_url, &settings.queue_prefix).await?;
        Ok(Self { settings, pool, queues, database })
    }

    /// Drops the database and deletes the prefix's Redis keys. Errors are reported, not
    /// returned: teardown runs after a failed scenario too.
    pub async fn teardown(self) {
        self.pool.close().await;
        if let Err(e) = drop_database(&self.settings.database_url, &self.database).await {
            eprintln!("bench: could not drop database {}: {e:#}", self.database);
        }
        if let Err(e) = delete_redis_keys(&self.queues).await {
            eprintln!("bench: could not delete Redis keys {}:*: {e:#}", self.queues.prefix());
        }
    }
}

/// Deletes every key under the prefix and the prefix's entries in apalis' global queue list.
pub(crate) async fn delete_redis_keys(queues: &Queues) -> anyhow::Result<u64> {
    let mut conn = queues.connection();
    let deleted = delete_keys(&mut conn, queues.prefix()).await?;
    let members: Vec<String> =
        ["steps", "purges"].iter().map(|q| format!("{}:{q}:workers", queues.prefix())).collect();
    redis::cmd("ZREM")
        .arg("core:apalis:queues:list")
        .arg(&members)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(deleted)
}
