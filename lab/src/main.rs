//! `offboard-lab`: the bench and the fault suite, outside the product. Operators install
//! `offboard` and `offboard-worker`; this binary (which can FLUSHALL Redis, restart
//! PostgreSQL and drop its own databases) is built only by developers and CI.
//!
//! It drives the product through the `offboard` library's public API. The suite's worker
//! processes are this binary's `worker` subcommand (the product's worker runtime); the
//! bench's are the shipped `offboard` binary beside it, whose memory is what operators see.

mod bench;
mod chaos;
mod throwaway;

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
    Chaos(ChaosOptions),
    /// Measure throughput against baselines, in throwaway databases (use a release build).
    Bench {
        #[arg(value_enum)]
        scenario: Scenario,
        /// Shrink data sizes and durations for a quick look; figures compare only at 1.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// The product's worker runtime (what `offboard worker` runs): the processes the suite
    /// starts and kills, and the bench's when no `offboard` binary is beside this one.
    #[command(hide = true)]
    Worker,
    /// The product's API alone (what `offboard api` runs), for the bench as `Worker`.
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
        Command::Chaos(_) => "error,sqlx=off",
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
        Command::Chaos(options) => {
            let report = chaos::run(settings, options).await?;
            println!("{report}");
            if !report.passed() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
