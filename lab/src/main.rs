//! `offboard-lab`: the bench and the fault suite, outside the product. Operators install
//! `offboard` and `offboard-worker`; this binary (which can FLUSHALL Redis, restart
//! PostgreSQL and drop its own databases) is built only by developers and CI.
//!
//! It drives the product through the `offboard` library's public API; the worker
//! processes it starts are this binary's `worker` subcommand (the product's worker runtime).

mod bench;
mod chaos;
mod throwaway;

use std::time::Duration;

use clap::{Parser, Subcommand};
use offboard::{app, config::Settings};

use crate::{
    bench::{BenchOptions, Scenario},
    chaos::ChaosOptions,
};

#[derive(Parser)]
#[command(name = "offboard-lab", version, about = "offboard's bench and fault suite (not shipped)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The fault suite: worker processes SIGKILLed, Redis flushed and restarted, PostgreSQL
    /// restarted while runs go on; exits non-zero if anything was lost or doubled.
    Chaos {
        /// Runs to request, over every action.
        #[arg(long, default_value_t = 240)]
        runs: usize,
        /// How long faults are injected (e.g. 90s, 2m).
        #[arg(long, default_value = "90s", value_parser = duration_arg)]
        duration: Duration,
        /// After the faults, how long runs may take to finish before they count as lost.
        #[arg(long, default_value = "3m", value_parser = duration_arg)]
        settle: Duration,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        #[arg(long, default_value_t = 120)]
        users: usize,
        #[arg(long, default_value_t = 4000)]
        items_per_user: usize,
        /// Rows per reassignment transaction in the workers (small, so kills land mid-step).
        #[arg(long, default_value_t = 5)]
        reassign_batch: i64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Leave shared services alone: flush only the suite's Redis keys, cut only its
        /// PostgreSQL connections, never restart Redis or PostgreSQL.
        #[arg(long)]
        no_service_restarts: bool,
        /// The suite's own database, dropped and recreated (its name must contain "chaos").
        #[arg(long, default_value = "offboard_chaos")]
        database: String,
        /// Keep the database after a passing run too.
        #[arg(long)]
        keep_database: bool,
    },
    /// Measure throughput against baselines, in throwaway databases (use a release build).
    Bench {
        #[arg(value_enum)]
        scenario: Scenario,
        /// Shrink data sizes and durations for a quick look; figures compare only at 1.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// The product's worker runtime (what `offboard worker` runs): the processes the bench
    /// and the suite start and kill.
    #[command(hide = true)]
    Worker,
    /// The product's API alone (what `offboard api` runs): the bench's API process.
    #[command(hide = true)]
    Api,
    /// The product's API and workers in one process (what `offboard serve` runs).
    #[command(hide = true)]
    Serve,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env()?;
    let filter = match cli.command {
        // The suite's own API logs what the faults provoke; its report says what matters.
        Command::Chaos { .. } => "error,sqlx=off",
        // Bulk statements of a benchmark are slow on purpose.
        Command::Bench { .. } => "warn,sqlx=error",
        Command::Worker | Command::Api | Command::Serve => app::DEFAULT_LOG_FILTER,
    };
    app::init_tracing(settings.log_format, filter);
    match cli.command {
        Command::Worker => app::run_workers(settings).await,
        Command::Api => app::serve_api(settings).await,
        Command::Serve => app::serve(settings).await,
        Command::Bench { scenario, scale } => {
            bench::run(&settings, scenario, BenchOptions { scale }).await
        }
        Command::Chaos {
            runs,
            duration,
            settle,
            workers,
            users,
            items_per_user,
            reassign_batch,
            seed,
            no_service_restarts,
            database,
            keep_database,
        } => {
            let options = ChaosOptions {
                runs,
                duration,
                settle,
                workers,
                users,
                items_per_user,
                reassign_batch,
                seed,
                service_restarts: !no_service_restarts,
                database,
                keep_database,
            };
            let report = chaos::run(settings, options).await?;
            println!("{report}");
            if !report.passed() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn duration_arg(raw: &str) -> Result<Duration, String> {
    offboard::config::parse_duration(raw).map_err(|e| e.to_string())
}
