//! The environment of the suite's worker processes: short leases, timeouts and backoffs so
//! that faults show within seconds, and the suite's outside systems reachable on loopback.

use super::{ChaosOptions, faults::WorkerEnv};
use offboard::config::Settings;

/// Private emails are purged this long after deactivation in the suite, so purges come
/// due (and the sweeper fires those whose Redis task a flush took) while faults go on.
const RETENTION: &str = "5s";

pub fn worker_env(
    settings: &Settings,
    database_url: &str,
    prefix: &str,
    options: &ChaosOptions,
    log_dir: &std::path::Path,
) -> WorkerEnv {
    let log = std::env::var("OFFBOARD_CHAOS_WORKER_LOG").unwrap_or_else(|_| "warn".into());
    let vars = [
        ("DATABASE_URL", database_url.to_string()),
        ("REDIS_URL", settings.redis_url.clone()),
        ("OFFBOARD_QUEUE_PREFIX", prefix.to_string()),
        ("OFFBOARD_LEASE", "2s".into()),
        ("OFFBOARD_REDELIVER_AFTER", "2s".into()),
        ("OFFBOARD_REASSIGN_BATCH", options.reassign_batch.to_string()),
        ("OFFBOARD_PRIVATE_EMAIL_RETENTION", RETENTION.into()),
        ("OFFBOARD_BACKOFF_BASE", "200ms".into()),
        ("OFFBOARD_BACKOFF_CAP", "5s".into()),
        ("OFFBOARD_WORKER_CONCURRENCY", "8".into()),
        ("OFFBOARD_WORKER_DB_POOL", "6".into()),
        ("OFFBOARD_DISPATCH_INTERVAL", "50ms".into()),
        ("OFFBOARD_POLL_INTERVAL", "20ms".into()),
        ("OFFBOARD_SHUTDOWN_TIMEOUT", "2s".into()),
        ("OFFBOARD_LOG_FORMAT", "text".into()),
        ("OFFBOARD_OUTBOUND_ALLOW_PRIVATE", "1".into()),
        (
            "OFFBOARD_OAUTH_CLIENTS",
            "google=chaos-client:chaos-secret,microsoft=chaos-client:chaos-secret".into(),
        ),
        ("OFFBOARD_OUTBOUND_TIMEOUT", "1s".into()),
        ("OFFBOARD_OUTBOUND_BREAKER_PAUSE", "1s".into()),
        // Webhooks to the suite's receivers: short timeout (hangs end quickly) and a
        // short schedule long enough that ~35 % failures never exhaust it.
        ("OFFBOARD_WEBHOOK_ALLOW_PRIVATE", "1".into()),
        ("OFFBOARD_WEBHOOK_TIMEOUT", "1s".into()),
        (
            "OFFBOARD_WEBHOOK_RETRY_SCHEDULE",
            "200ms,500ms,1s,2s,3s,3s,3s,3s,3s,3s,3s,3s,3s,3s".into(),
        ),
        ("OFFBOARD_WEBHOOK_BREAKER_PAUSE", "1s".into()),
        ("OFFBOARD_WEBHOOK_POLL_INTERVAL", "200ms".into()),
        ("RUST_LOG", log),
    ];
    WorkerEnv {
        vars: vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        log_dir: log_dir.to_path_buf(),
    }
}
