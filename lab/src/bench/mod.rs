//! `offboard-lab bench <scenario>`: throughput figures of the whole service on this machine,
//! each printed next to a baseline measured in the same run, so runs can be compared on a
//! noisy machine by their ratios.
//!
//! Every scenario creates its own database (`offboard_bench_<scenario>` on the server of
//! `DATABASE_URL`) and its own Redis key prefix, and removes both when it ends, so it never
//! touches a developer's data. Workers run as child processes of the shipped binary
//! (`offboard worker`, see [`process::service_binary`]), so their peak resident memory can be
//! read from `/proc`.
//!
//! Output lines are `<name>: <value> <unit>`; lines starting with `#` describe the setup.
//!
//! Here the scenarios and the machine they run on; one file a scenario, and beside them what
//! they share: [`env`] (a scenario's database and prefix), [`process`] (the processes
//! measured), [`cpu`] (where the time goes), [`load`] (the load generator).

mod cpu;
mod enqueue;
mod env;
mod journal;
mod layoff;
mod load;
mod outside;
mod process;
mod reassign;
mod remote;
mod statements;
mod steps;
mod webhooks;

use std::{
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::Context;
use sqlx::{Connection, postgres::PgConnectOptions};

pub(crate) use self::{
    cpu::{Cpu, cpu_of},
    env::{BenchEnv, delete_redis_keys},
    load::{
        LoadRequest, LoadResult, get, http_client, http_load, median, post_json, until_last_finish,
        verdict, wait_until,
    },
    process::{
        ApiServer, WorkerProcess, free_loopback_addr, mib, service_binary, wait_for_workers,
    },
    statements::Statements,
};
use offboard::{config::Settings, queue::Queues};

/// What `offboard-lab bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// HTTP enqueue throughput and latency; baselines `/healthz` and the raw transaction.
    Enqueue,
    /// 1,000 users of a 2,000-user company offboarded at once; fairness; 2 workers vs 1.
    Layoff,
    /// No-op steps through the whole path; baseline raw apalis-redis tasks.
    Steps,
    /// Reassigning 200,000 of 1,000,000 items; baseline one raw UPDATE.
    Reassign,
    /// Webhook deliveries to a receiver answering in 50 ms; baseline plain POSTs.
    Webhooks,
    /// A layoff whose steps revoke 3 grants and call 2 app vendors per user, providers
    /// answering in 100 ms vs at once; fairness while one vendor hangs.
    Outside,
    /// Every scenario, one after the other.
    All,
}

/// Knobs for a quicker (smaller) run while developing; figures are only comparable at 1.0.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Multiplies data sizes and durations.
    pub scale: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { scale: 1.0 }
    }
}

impl BenchOptions {
    /// `n` scaled, at least `min`.
    pub(crate) fn scaled(&self, n: usize, min: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(min)
    }

    pub(crate) fn scaled_duration(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale.clamp(0.1, 1.0))
    }
}

pub async fn run(
    settings: &Settings,
    scenario: Scenario,
    options: BenchOptions,
) -> anyhow::Result<()> {
    print_machine(settings).await?;
    if options.scale != 1.0 {
        println!("# scale {} (figures are comparable only at scale 1)", options.scale);
    }
    let all = [
        Scenario::Reassign,
        Scenario::Enqueue,
        Scenario::Layoff,
        Scenario::Steps,
        Scenario::Webhooks,
        Scenario::Outside,
    ];
    let chosen: Vec<Scenario> =
        if scenario == Scenario::All { all.to_vec() } else { vec![scenario] };
    let started = Instant::now();
    for scenario in chosen {
        let began = Instant::now();
        println!("# load average before {scenario:?}: {}", load_average());
        match scenario {
            Scenario::Reassign => reassign::run(settings, &options).await?,
            Scenario::Enqueue => enqueue::run(settings, &options).await?,
            Scenario::Layoff => layoff::run(settings, &options).await?,
            Scenario::Steps => steps::run(settings, &options).await?,
            Scenario::Webhooks => webhooks::run(settings, &options).await?,
            Scenario::Outside => outside::run(settings, &options).await?,
            Scenario::All => unreachable!("expanded above"),
        }
        println!(
            "# {scenario:?} took {:.0} s; load average after: {}",
            began.elapsed().as_secs_f64(),
            load_average()
        );
    }
    if scenario == Scenario::All {
        println!("# bench all took {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The machine, once per invocation: figures mean little without it.
async fn print_machine(settings: &Settings) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let options = PgConnectOptions::from_str(&settings.database_url)
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let mut conn = sqlx::PgConnection::connect_with(&options.database("postgres"))
        .await
        .context("cannot reach PostgreSQL")?;
    let pg: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
    let (max_conn, sync_commit): (String, String) = sqlx::query_as(
        "SELECT current_setting('max_connections'), current_setting('synchronous_commit')",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await.ok();
    let queues = Queues::connect(&settings.redis_url, "offboard-bench").await?;
    let mut redis = queues.connection();
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut redis).await?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    println!(
        "# machine: {cores} cores ({model}), {:.1} GiB RAM; PostgreSQL {pg} (max_connections {max_conn}, synchronous_commit {sync_commit}); Redis {redis_version}; all on loopback",
        ram_kib as f64 / 1024.0 / 1024.0
    );
    let binary = service_binary()?;
    let size = std::fs::metadata(&binary.path).map(|m| m.len()).unwrap_or(0);
    println!(
        "# service processes (worker, api, serve): {} ({}, {:.0} MB)",
        binary.path.display(),
        binary.source,
        size as f64 / 1e6
    );
    Ok(())
}

/// The 1, 5 and 15 minute load averages: other work on a shared machine shows here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Each succeeded run of the company on a line: its steps in the order they were claimed,
/// each as `name claimed/finished` in ms after the run was written (steps of no work may
/// finish in the ms they were claimed).
pub(crate) async fn print_timelines(pool: &sqlx::PgPool, company_id: i64) -> anyhow::Result<()> {
    let rows: Vec<(f64, String)> = sqlx::query_as(
        "SELECT extract(epoch FROM r.finished_at - r.created_at)::float8 * 1000,
                string_agg(format('%s %s/%s', s.name,
                    round(extract(epoch FROM s.started_at - r.created_at) * 1000),
                    round(extract(epoch FROM s.finished_at - r.created_at) * 1000)),
                    ', ' ORDER BY s.started_at, s.name)
         FROM offboard.runs r JOIN offboard.steps s ON s.run_id = r.id
         WHERE r.company_id = $1 AND r.status = 'succeeded'
         GROUP BY r.id, r.created_at, r.finished_at ORDER BY r.created_at",
    )
    .bind(company_id)
    .fetch_all(pool)
    .await?;
    for (total, steps) in rows {
        println!("# small run of {total:.0} ms, claimed/finished ms after written: {steps}");
    }
    Ok(())
}
