//! The suite's options (`offboard-lab chaos …` as `main.rs` reads them) and their
//! defaults, the full version of the suite.

use std::time::Duration;

/// How the suite runs. The defaults are the full version (`offboard-lab chaos`).
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Runs to request, over all actions.
    pub runs: usize,
    /// How long faults are injected.
    pub duration: Duration,
    /// After the faults, how long runs may take to finish before they count as lost.
    pub settle: Duration,
    pub workers: usize,
    pub users: usize,
    pub items_per_user: usize,
    pub reassign_batch: i64,
    pub seed: u64,
    /// Real Redis and PostgreSQL restarts and FLUSHALL. Off: only the suite's own Redis
    /// keys are deleted and only its own database connections are cut.
    pub service_restarts: bool,
    /// The suite's database, dropped and created at the start (its name must contain
    /// "chaos").
    pub database: String,
    /// Keep the database after a passing run too (it is always kept after a failing one).
    pub keep_database: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            runs: 240,
            duration: Duration::from_secs(90),
            settle: Duration::from_secs(180),
            workers: 4,
            users: 120,
            items_per_user: 4_000,
            reassign_batch: 5,
            seed: 1,
            service_restarts: true,
            database: "offboard_chaos".into(),
            keep_database: false,
        }
    }
}
