//! `offboard-lab bench layoff`: a company of 2,000 users with ~200 items each; 1,000 of them are
//! deactivated at once over HTTP (every step: block login … reassign all seven item types
//! … finish), and the run rate is measured until the last run succeeded.
//!
//! - Baseline: the same steps' SQL applied directly — the step functions called in
//!   transactions by 16 tasks (the worker concurrency), no ledger, no Redis — on an
//!   identical company.
//! - Fairness: a single deactivation in a small company, timed on an idle system and
//!   again while the layoff runs.
//! - Scale-out: the same layoff on another identical company with 2 worker processes.
//! - As one batch file, last: the same layoff as one CSV to `POST /v1/offboarding-batches`,
//!   on a fourth identical company with one fresh worker process ([`batch`]), so that the
//!   layoffs above run on the ledger they ran on before batches existed.
//!
//! Workers run as `offboard worker` child processes; the API runs in this process.

mod batch;
mod direct;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use self::direct::direct_sql;
use super::{
    ApiServer, BenchEnv, BenchOptions, Cpu, Statements, WorkerProcess, http_client, http_load,
    median, mib, post_json, until_last_finish, verdict, wait_for_workers, wait_until,
};
use offboard::{
    config::{DEV_TOKEN, Settings},
    crm::seed::{self, SeedOptions, Seeded},
    domain::RunStatus,
};

const ITEMS_PER_USER: usize = 200;
/// Concurrent HTTP connections enqueueing the layoff.
const ENQUEUE_CONNECTIONS: usize = 16;
/// Fairness samples on the idle system and under the layoff.
const FAIRNESS_SAMPLES: usize = 3;

pub(super) async fn run(base: &Settings, options: &BenchOptions) -> anyhow::Result<()> {
    let env = BenchEnv::create(base, "layoff").await?;
    let result = measure(&env, options).await;
    env.teardown().await;
    result
}

/// A company and who leaves it.
pub(super) struct Layoff {
    pub company: Seeded,
    actor: i64,
    /// (user, the staying user who receives their items)
    pub leaving: Vec<(i64, i64)>,
}

impl Layoff {
    pub fn new(company: Seeded, leaving: usize) -> Self {
        let regular: Vec<i64> =
            company.users.iter().filter(|u| !u.is_admin).map(|u| u.id).collect();
        let leaving = leaving.min(regular.len() - 1);
        let (gone, staying) = regular.split_at(leaving);
        let leaving =
            gone.iter().enumerate().map(|(i, u)| (*u, staying[i % staying.len()])).collect();
        Self { actor: company.admin_ids[0], company, leaving }
    }

    fn plan(target: i64) -> Value {
        json!({"default": {"mode": "single", "targets": [{"user_id": target}]}})
    }

    fn request(&self, (user, target): (i64, i64)) -> Value {
        json!({
            "company_id": self.company.company_id,
            "user_id": user,
            "actor_user_id": self.actor,
            "action": "deactivate",
            "transfer": Self::plan(target),
        })
    }
}

async fn measure(env: &BenchEnv, options: &BenchOptions) -> anyhow::Result<()> {
    let users = options.scaled(2_000, 20);
    let leaving = users / 2;
    let concurrency = env.settings.worker.concurrency;
    println!(
        "## layoff: {leaving} of {users} users (~{ITEMS_PER_USER} items each) deactivated at once, every step; worker concurrency {concurrency}, {} in flight per company",
        env.settings.worker.max_in_flight_per_company
    );
    let started = Instant::now();
    let seed_company = |users: usize, seed: u64| {
        seed::seed(&env.pool, SeedOptions { users, items_per_user: ITEMS_PER_USER, seed })
    };
    let small = Layoff::new(seed_company(20, 11).await?, 2 * FAIRNESS_SAMPLES);
    let one = Layoff::new(seed_company(users, 1).await?, leaving);
    let two = Layoff::new(seed_company(users, 2).await?, leaving);
    let direct_company = Layoff::new(seed_company(users, 3).await?, leaving);
    let as_batch = Layoff::new(seed_company(users, 4).await?, leaving);
    sqlx::raw_sql("VACUUM ANALYZE").execute(&env.pool).await?;
    println!("# seeded in {:.1} s", started.elapsed().as_secs_f64());

    // Baseline first, while no worker competes for the machine.
    let (direct, direct_cpu) = direct_sql(env, &direct_company).await?;
    let direct_rate = leaving as f64 / direct.as_secs_f64();

    let api = ApiServer::start(env.settings.clone()).await?;
    let client = http_client(4)?;
    let mut fairness_pending = small.leaving.iter().copied();

    // One worker process: fairness on the idle system, then the layoff with fairness
    // samples taken while it runs.
    let mut workers = vec![WorkerProcess::spawn(env, "worker-1")?];
    wait_for_workers(env, &mut workers).await?;
    let mut idle = Vec::new();
    for _ in 0..FAIRNESS_SAMPLES {
        let who = fairness_pending.next().expect("enough small-company users");
        idle.push(single_offboarding(env, &api, &client, &small, who).await?);
    }
    let progress = Arc::new(AtomicUsize::new(0));
    let statements = Statements::detect(&env.pool).await;
    statements.reset(&env.pool).await?;
    let cpu_before = Cpu::sample(env, &[&workers[0]]).await?;
    let layoff_one = {
        let watcher =
            watch_progress(env.pool.clone(), one.company.company_id, leaving, progress.clone());
        let run = layoff(env, &api, &one);
        let fairness = async {
            let mut loaded = Vec::new();
            for k in 0..FAIRNESS_SAMPLES {
                // Spread over the layoff: at 15%, 40%, 65% of its runs done.
                let at = leaving * (15 + 25 * k) / 100;
                while progress.load(Ordering::Relaxed) < at {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let who = fairness_pending.next().expect("enough small-company users");
                let took = single_offboarding(env, &api, &client, &small, who).await?;
                let during = progress.load(Ordering::Relaxed) < leaving;
                loaded.push((took, during));
            }
            anyhow::Ok(loaded)
        };
        let (elapsed, loaded, _) = tokio::try_join!(run, fairness, watcher)?;
        (elapsed, loaded)
    };
    let cpu = Cpu::sample(env, &[&workers[0]]).await?.since(&cpu_before);
    statements.report(&env.pool, "layoff, 1 worker", leaving as f64, "run").await?;
    let mut rss = workers.pop().expect("one worker").stop().await?;
    let (one_elapsed, loaded) = layoff_one;
    let one_rate = leaving as f64 / one_elapsed.as_secs_f64();
    let totals = totals(&env.pool, one.company.company_id).await?;

    // Two worker processes on an identical company.
    let mut workers =
        vec![WorkerProcess::spawn(env, "worker-2a")?, WorkerProcess::spawn(env, "worker-2b")?];
    wait_for_workers(env, &mut workers).await?;
    statements.reset(&env.pool).await?;
    let two_cpu_before = Cpu::sample(env, &[&workers[0], &workers[1]]).await?;
    let two_elapsed = layoff(env, &api, &two).await?;
    let two_cpu = Cpu::sample(env, &[&workers[0], &workers[1]]).await?.since(&two_cpu_before);
    statements.report(&env.pool, "layoff, 2 workers", leaving as f64, "run").await?;
    for worker in workers {
        rss = rss.max(worker.stop().await?);
    }
    let two_rate = leaving as f64 / two_elapsed.as_secs_f64();

    // The same layoff as one batch file, on one worker process, last: the ledger the two
    // layoffs above run on holds what earlier phases left, and a batch's 1,000 runs before
    // the two workers' layoff left it twice what that layoff met before batches existed.
    let mut workers = vec![WorkerProcess::spawn(env, "worker-batch")?];
    wait_for_workers(env, &mut workers).await?;
    let batch = batch::layoff_as_batch(env, &api, &as_batch).await?;
    rss = rss.max(workers.pop().expect("one worker").stop().await?);
    api.stop().await?;

    let idle_ms: Vec<f64> = idle.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let loaded_ms: Vec<f64> = loaded.iter().map(|(d, _)| d.as_secs_f64() * 1000.0).collect();
    let fairness_ratio = median(&loaded_ms) / median(&idle_ms);
    let samples = |v: &[f64]| v.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "# {} runs, {} steps, {} items moved per layoff",
        leaving, totals.steps, totals.items_moved
    );
    println!(
        "# fairness samples (ms): idle {}; under layoff {}",
        samples(&idle_ms),
        samples(&loaded_ms)
    );
    if loaded.iter().any(|(_, during)| !during) {
        println!("# (some fairness samples ended after the layoff finished)");
    }
    super::print_timelines(&env.pool, small.company.company_id).await?;
    println!("offboard layoff: {one_rate:.1} runs/s");
    println!(
        "offboard layoff steps: {:.0} steps/s",
        totals.steps as f64 / one_elapsed.as_secs_f64()
    );
    println!(
        "offboard layoff as one batch file: {:.1} runs/s ({} rows checked and written in {:.1} s)",
        leaving as f64 / batch.elapsed.as_secs_f64(),
        leaving,
        batch.written.as_secs_f64()
    );
    println!("baseline direct SQL: {direct_rate:.1} runs/s");
    println!("ratio: {:.2}", one_rate / direct_rate);
    println!("offboard layoff, 2 worker processes: {two_rate:.1} runs/s");
    println!("scale-out ratio (2 workers / 1): {:.2}", two_rate / one_rate);
    println!("fairness idle: {:.0} ms", median(&idle_ms));
    println!("fairness under layoff: {:.0} ms", median(&loaded_ms));
    println!("fairness ratio: {fairness_ratio:.2}");
    println!("worker peak RSS: {:.1} MiB", mib(rss));
    cpu.report(leaving as f64, "run");
    two_cpu.report_for("2 worker processes,", leaving as f64, "run");
    println!(
        "cpu postgres, direct SQL: {:.3} ms/run",
        direct_cpu.postgres.as_secs_f64() * 1000.0 / leaving as f64
    );
    println!("target >= 0.6 x direct SQL: {}", verdict(one_rate >= 0.6 * direct_rate));
    println!("target fairness ratio <= 1.5: {}", verdict(fairness_ratio <= 1.5));
    println!("target worker RSS < 32 MiB: {}", verdict(mib(rss) < 32.0));
    Ok(())
}

/// Enqueues every deactivation of the layoff over HTTP and waits until all succeeded.
/// Timed from the first request to the last run's finish (as the ledger recorded it).
pub(super) async fn layoff(
    env: &BenchEnv,
    api: &ApiServer,
    layoff: &Layoff,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    enqueue(api, layoff).await?;
    wait_for_layoff(env, layoff, started).await
}

/// Waits until every run of the layoff succeeded; the time from `started` to the last
/// run's finish (as the ledger recorded it).
async fn wait_for_layoff(
    env: &BenchEnv,
    layoff: &Layoff,
    started: Instant,
) -> anyhow::Result<Duration> {
    let company_id = layoff.company.company_id;
    let expected = layoff.leaving.len() as i64;
    let pool = &env.pool;
    wait_until("the layoff", Duration::from_millis(100), Duration::from_secs(900), || async move {
        let (succeeded, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status IN ('failed', 'canceled'))
             FROM offboard.runs WHERE company_id = $1",
        )
        .bind(company_id)
        .fetch_one(pool)
        .await?;
        anyhow::ensure!(failed == 0, "{failed} layoff runs failed");
        Ok(succeeded == expected)
    })
    .await?;
    // The last run's finish as the ledger recorded it, against the wall clock now.
    let since_last: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM clock_timestamp() - max(finished_at))::float8
         FROM offboard.runs WHERE company_id = $1",
    )
    .bind(company_id)
    .fetch_one(&env.pool)
    .await?;
    Ok(until_last_finish(started, since_last))
}

/// Requests every deactivation of the layoff over HTTP (all accepted), without waiting.
pub(super) async fn enqueue(api: &ApiServer, layoff: &Layoff) -> anyhow::Result<()> {
    let requests: Vec<Value> = layoff.leaving.iter().map(|who| layoff.request(*who)).collect();
    let sent = http_load(
        api.addr,
        ENQUEUE_CONNECTIONS,
        Duration::ZERO,
        Duration::from_secs(600),
        StatusCode::ACCEPTED,
        move |i| Some(post_json("/v1/offboardings", requests.get(i)?, &[])),
    )
    .await?;
    anyhow::ensure!(
        sent.failed == 0,
        "{} layoff requests were refused (first: {})",
        sent.failed,
        sent.first_failure.unwrap_or_default()
    );
    Ok(())
}

/// Publishes how many runs of the company succeeded; `usize::MAX` once all `expected` did.
async fn watch_progress(
    pool: PgPool,
    company_id: i64,
    expected: usize,
    progress: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM offboard.runs WHERE company_id = $1 AND status = 'succeeded'",
        )
        .bind(company_id)
        .fetch_one(&pool)
        .await?;
        if done as usize >= expected {
            progress.store(usize::MAX, Ordering::Relaxed);
            return Ok(());
        }
        progress.store(done as usize, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One deactivation over HTTP, timed from the request to the run's success.
pub(super) async fn single_offboarding(
    env: &BenchEnv,
    api: &ApiServer,
    client: &reqwest::Client,
    small: &Layoff,
    who: (i64, i64),
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = client
        .post(api.url("/v1/offboardings"))
        .bearer_auth(DEV_TOKEN)
        .json(&small.request(who))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::ACCEPTED,
        "fairness run refused: {}",
        response.text().await?
    );
    let body: Value = response.json().await?;
    let run_id: Uuid = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no run id"))?;
    // The run's steps by status each time that changes, as this loop saw it: where the
    // run waited (ready: for a dispatcher's pass; queued: in Redis or a worker's buffer).
    let mut seen: Vec<(u128, String)> = Vec::new();
    loop {
        let (status, steps): (RunStatus, String) = sqlx::query_as(
            "SELECT r.status,
                    (SELECT string_agg(format('%s %s', n, st), ', ' ORDER BY st)
                     FROM (SELECT status AS st, count(*) AS n FROM offboard.steps
                           WHERE run_id = r.id AND status <> 'succeeded'
                           GROUP BY status) c)
             FROM offboard.runs r WHERE r.id = $1",
        )
        .bind(run_id)
        .fetch_one(&env.pool)
        .await
        .map(|(status, steps): (RunStatus, Option<String>)| (status, steps.unwrap_or_default()))?;
        if seen.last().is_none_or(|(_, last)| *last != steps) {
            seen.push((started.elapsed().as_millis(), steps));
        }
        match status {
            RunStatus::Succeeded => {
                let took = started.elapsed();
                let seen: Vec<String> =
                    seen.iter().map(|(ms, steps)| format!("{ms} ms: {steps}")).collect();
                println!("# run of {} ms, steps not done: {}", took.as_millis(), seen.join("; "));
                return Ok(took);
            }
            RunStatus::Failed | RunStatus::Canceled => {
                anyhow::bail!("the fairness run ended {status}")
            }
            _ => {}
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the fairness run took over 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Steps and items of the company's runs.
struct Totals {
    steps: i64,
    items_moved: i64,
}

async fn totals(pool: &PgPool, company_id: i64) -> anyhow::Result<Totals> {
    let (steps, items_moved): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum(done) FILTER (WHERE name LIKE 'reassign\\_%')::bigint
         FROM offboard.steps WHERE company_id = $1",
    )
    .bind(company_id)
    .fetch_one(pool)
    .await?;
    Ok(Totals { steps, items_moved: items_moved.unwrap_or(0) })
}
