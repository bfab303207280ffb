//! The suite's options: the flags of `offboard-lab chaos …` and their defaults, declared
//! once (clap reads them into this struct); the defaults are the full version of the suite.

use std::time::Duration;

/// How the suite runs. The defaults are the full version (`offboard-lab chaos`).
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    /// Runs to request, over every action.
    #[arg(long, default_value_t = 240)]
    pub runs: usize,
    /// How long faults are injected (e.g. 90s, 2m).
    #[arg(long, default_value = "90s", value_parser = duration_arg)]
    pub duration: Duration,
    /// After the faults, how long runs may take to finish before they count as lost.
    #[arg(long, default_value = "3m", value_parser = duration_arg)]
    pub settle: Duration,
    /// Worker processes, each killed and restarted by the faults.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Users of the suite's company.
    #[arg(long, default_value_t = 120)]
    pub users: usize,
    /// Items each user owns.
    #[arg(long, default_value_t = 4000)]
    pub items_per_user: usize,
    /// Rows per reassignment transaction in the workers (small, so kills land mid-step).
    #[arg(long, default_value_t = 5)]
    pub reassign_batch: i64,
    /// The random seed of the scripts and the faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Leave shared services alone: flush only the suite's Redis keys, cut only its
    /// PostgreSQL connections, never restart Redis or PostgreSQL (or FLUSHALL).
    #[arg(long)]
    pub no_service_restarts: bool,
    /// The suite's own database, dropped and recreated (its name must contain "chaos").
    #[arg(long, default_value = "offboard_chaos")]
    pub database: String,
    /// Keep the database after a passing run too (it is always kept after a failing one).
    #[arg(long)]
    pub keep_database: bool,
}

impl ChaosOptions {
    /// Real Redis and PostgreSQL restarts and FLUSHALL. Off: only the suite's own Redis
    /// keys are deleted and only its own database connections are cut.
    pub fn service_restarts(&self) -> bool {
        !self.no_service_restarts
    }
}

fn duration_arg(raw: &str) -> Result<Duration, String> {
    offboard::config::parse_duration(raw).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: ChaosOptions,
    }

    #[test]
    fn the_defaults_are_the_full_suite_and_flags_read_into_the_same_fields() {
        let full = Cli::parse_from(["chaos"]).options;
        assert_eq!((full.runs, full.workers, full.users), (240, 4, 120));
        assert_eq!(
            (full.duration, full.settle),
            (Duration::from_secs(90), Duration::from_secs(180))
        );
        assert!(full.service_restarts());
        assert_eq!(full.database, "offboard_chaos");

        let short = Cli::parse_from([
            "chaos",
            "--runs",
            "40",
            "--duration",
            "20s",
            "--settle",
            "1m",
            "--no-service-restarts",
            "--database",
            "offboard_chaos_ci",
        ])
        .options;
        assert_eq!(short.runs, 40);
        assert_eq!(
            (short.duration, short.settle),
            (Duration::from_secs(20), Duration::from_secs(60))
        );
        assert!(!short.service_restarts());
        assert_eq!(short.database, "offboard_chaos_ci");
    }
}
