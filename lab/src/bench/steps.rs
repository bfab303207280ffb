//! `offboard-lab bench steps`: no-op steps through the whole path — ledger (insert), dispatcher
//! (ready → queued, pushed to Redis), apalis-redis, a worker process (claim, fence,
//! complete, finish the run) — against raw apalis-redis no-op tasks with the same worker
//! settings (queue config, concurrency, poll interval, at most `OFFBOARD_MAX_IN_FLIGHT` in
//! Redis), run in this process.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::{
    BackendExt, BoxDynError, Data, ParallelizeExt, WorkerBuilder, WorkerBuilderExt,
};
use serde_json::json;

use super::{
    BenchEnv, BenchOptions, Cpu, Statements, WorkerProcess, mib, until_last_finish, verdict,
    wait_for_workers, wait_until,
};
use offboard::{
    config::Settings,
    domain::StepKey,
    ledger::runs::{self, NewRun},
    queue::{Queues, StepTask},
    shutdown::Shutdown,
    steps::StepSpec,
};

/// Steps per run: enough that a run's own row is not what every completion waits on,
/// fewer than a deactivation's 15 would make it look cheaper than it is.
const STEPS_PER_RUN: usize = 10;
/// Runs spread over this many companies, so the per-company in-flight limit (fairness)
/// is not what this measures.
const COMPANIES: usize = 100;

pub(super) async fn run(base: &Settings, options: &BenchOptions) -> anyhow::Result<()> {
    let env = BenchEnv::create(base, "steps").await?;
    let result = measure(&env, options).await;
    env.teardown().await;
    result
}

async fn measure(env: &BenchEnv, options: &BenchOptions) -> anyhow::Result<()> {
    let runs = options.scaled(3_000, 20);
    let steps = runs * STEPS_PER_RUN;
    let w = &env.settings.worker;
    println!(
        "## steps: {steps} no-op steps ({runs} runs of {STEPS_PER_RUN}, {COMPANIES} companies); worker concurrency {}, max in flight {} ({} per company), poll {:?}, dispatch interval {:?}",
        w.concurrency,
        w.max_in_flight,
        w.max_in_flight_per_company,
        w.poll_interval,
        w.dispatch_interval
    );

    let mut workers = vec![WorkerProcess::spawn(env, "worker")?];
    wait_for_workers(env, &mut workers).await?;
    let (offboard, cpu) = through_offboard(env, &workers[0], runs).await?;
    let rss = workers.pop().expect("one worker").stop().await?;
    let offboard_rate = steps as f64 / offboard.as_secs_f64();

    let raw = raw_apalis(env, steps).await?;
    let raw_rate = steps as f64 / raw.as_secs_f64();

    println!("offboard steps: {offboard_rate:.0} steps/s");
    println!("baseline apalis-redis no-op: {raw_rate:.0} tasks/s");
    println!("ratio: {:.2}", offboard_rate / raw_rate);
    println!("worker peak RSS: {:.1} MiB", mib(rss));
    cpu.report(steps as f64, "step");
    println!(
        "target >= 1.0 x raw apalis-redis no-op tasks: {}",
        verdict(offboard_rate >= raw_rate)
    );
    println!("target worker RSS < 32 MiB: {}", verdict(mib(rss) < 32.0));
    Ok(())
}

/// Inserts every run in one transaction (all steps ready at once) and times from its
/// commit until the last run finished (as the ledger recorded it); with the CPU each
/// component spent meanwhile.
async fn through_offboard(
    env: &BenchEnv,
    worker: &WorkerProcess,
    runs: usize,
) -> anyhow::Result<(Duration, Cpu)> {
    let steps: Vec<StepSpec> = (1..=STEPS_PER_RUN)
        .map(|n| StepSpec { name: format!("noop_{n}"), depends_on: Vec::new() })
        .collect();
    let mut tx = env.pool.begin().await?;
    for i in 0..runs {
        runs::insert(
            &mut tx,
            &NewRun {
                id: runs::new_run_id(),
                company_id: 1 + (i % COMPANIES) as i64,
                user_id: 1 + i as i64,
                action: offboard::domain::Action::Deactivate,
                plan: json!({}),
                params: json!({}),
                actor_user_id: 1,
                idempotency_key: None,
                steps: steps.clone(),
                max_attempts: env.settings.worker.max_attempts,
                status: offboard::domain::RunStatus::Queued,
                effective_at: None,
            },
            None,
        )
        .await?;
    }
    let statements = Statements::detect(&env.pool).await;
    statements.reset(&env.pool).await?;
    let cpu_before = Cpu::sample(env, &[worker]).await?;
    tx.commit().await?;
    let started = Instant::now();
    let pool = env.pool.clone();
    wait_until("the no-op runs", Duration::from_millis(100), Duration::from_secs(600), || {
        let pool = pool.clone();
        async move {
            let (succeeded, failed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                        count(*) FILTER (WHERE status IN ('failed', 'canceled'))
                 FROM offboard.runs",
            )
            .fetch_one(&pool)
            .await?;
            anyhow::ensure!(failed == 0, "{failed} no-op runs failed");
            Ok(succeeded as usize == runs)
        }
    })
    .await?;
    let cpu = Cpu::sample(env, &[worker]).await?.since(&cpu_before);
    statements.report(&env.pool, "no-op runs", (runs * STEPS_PER_RUN) as f64, "step").await?;
    let since_last: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM clock_timestamp() - max(finished_at))::float8 FROM offboard.runs",
    )
    .fetch_one(&env.pool)
    .await?;
    Ok((until_last_finish(started, since_last), cpu))
}

/// The same number of tasks through apalis-redis alone: a feeder keeps at most
/// `max_in_flight` tasks in Redis (as the dispatcher does) and a worker with offboard's
/// queue settings counts them.
async fn raw_apalis(env: &BenchEnv, tasks: usize) -> anyhow::Result<Duration> {
    let settings = &env.settings.worker;
    let queues =
        Queues::with_connection(env.queues.connection(), &format!("{}-raw", env.queues.prefix()));
    let done = Arc::new(AtomicU64::new(0));
    let shutdown = Shutdown::new();
    let worker = {
        let (queues, done, stop) = (queues.clone(), done.clone(), shutdown.clone());
        let (poll, concurrency) = (settings.poll_interval, settings.concurrency);
        tokio::spawn(async move {
            WorkerBuilder::new(format!("bench-raw-{}", std::process::id()))
                .backend(queues.step_storage().poll_with_interval(poll))
                .data(done)
                .concurrency(concurrency)
                .parallelize(spawn_handler)
                .build(count_task)
                .run_until(async move {
                    stop.wait().await;
                    Ok::<(), std::io::Error>(())
                })
                .await
        })
    };
    let started = Instant::now();
    let mut pushed = 0usize;
    let limit = settings.max_in_flight.max(1) as usize;
    let deadline = started + Duration::from_secs(600);
    while (done.load(Ordering::Relaxed) as usize) < tasks {
        let in_flight = pushed - done.load(Ordering::Relaxed) as usize;
        let room = limit.saturating_sub(in_flight).min(tasks - pushed);
        if room > 0 {
            let tasks: Vec<Vec<StepKey>> = (pushed..pushed + room)
                .map(|i| vec![StepKey::new(uuid::Uuid::nil(), i as i32)])
                .collect();
            queues.push_steps(&tasks).await?;
            pushed += room;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        anyhow::ensure!(Instant::now() < deadline, "raw apalis tasks did not finish in 600 s");
    }
    let elapsed = started.elapsed();
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    super::delete_redis_keys(&queues).await?;
    Ok(elapsed)
}

async fn count_task(_task: StepTask, done: Data<Arc<AtomicU64>>) -> Result<(), BoxDynError> {
    done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

type HandlerFuture = apalis::prelude::LifecycleFuture<
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxDynError>> + Send + 'static>>,
>;

/// As in the worker runtime: each task on its own tokio task.
fn spawn_handler(fut: HandlerFuture) -> tokio::task::JoinHandle<Result<(), BoxDynError>> {
    tokio::spawn(fut)
}
