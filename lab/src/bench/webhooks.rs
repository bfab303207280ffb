//! `offboard-lab bench webhooks`: host webhooks through the whole delivery path — events
//! written to the outbox in one transaction, a worker process (`offboard worker`, the
//! product's runtime) claiming, signing, sending and recording each delivery — to a local
//! receiver that answers every request in 50 ms.
//!
//! - Baseline: plain HTTP POSTs of the same bodies from this process to the same receiver
//!   at the same concurrency (the deliverer's slots per process), no database.
//!
//! The deliveries go to 16 endpoints of one company (16 paths on the one receiver), so
//! the per-endpoint in-flight limit (4 by default) times the endpoints equals the
//! process' slots (64 by default): the figure is the engine's, not one endpoint's cap.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    BenchEnv, BenchOptions, Cpu, WorkerProcess, mib, remote::Remote, until_last_finish,
    wait_for_workers, wait_until,
};
use offboard::{config::Settings, domain::webhook::WebhookSecret};

const RECEIVER_LATENCY: Duration = Duration::from_millis(50);
const ENDPOINTS: usize = 16;
const COMPANY: i64 = 1;

pub(super) async fn run(base: &Settings, options: &BenchOptions) -> anyhow::Result<()> {
    let env = BenchEnv::create(base, "webhooks").await?;
    let result = measure(&env, options).await;
    env.teardown().await;
    result
}

async fn measure(env: &BenchEnv, options: &BenchOptions) -> anyhow::Result<()> {
    let events = options.scaled(800, 10);
    let deliveries = events * ENDPOINTS;
    let concurrency = env.settings.webhooks.concurrency;
    let per_endpoint = env.settings.webhooks.max_in_flight_per_endpoint;
    println!(
        "## webhooks: {events} events × {ENDPOINTS} endpoints = {deliveries} deliveries to a receiver answering in {} ms; {concurrency} deliveries in flight per process, {per_endpoint} per endpoint",
        RECEIVER_LATENCY.as_millis()
    );
    let receiver = Remote::start(RECEIVER_LATENCY).await?;
    for k in 0..ENDPOINTS {
        sqlx::query(
            "INSERT INTO offboard.webhook_endpoints (id, company_id, url, secret)
             VALUES (gen_random_uuid(), $1, $2, $3)",
        )
        .bind(COMPANY)
        .bind(format!("{}/hooks/{k}", receiver.base))
        .bind(WebhookSecret::generate().expose())
        .execute(&env.pool)
        .await?;
    }

    let mut workers =
        vec![WorkerProcess::spawn_with(env, "worker", &[("OFFBOARD_WEBHOOK_ALLOW_PRIVATE", "1")])?];
    wait_for_workers(env, &mut workers).await?;
    let cpu_before = Cpu::sample(env, &[&workers[0]]).await?;
    let offboard = through_offboard(env, events, deliveries).await?;
    let cpu = Cpu::sample(env, &[&workers[0]]).await?.since(&cpu_before);
    let rss = workers.pop().expect("one worker").stop().await?;
    let received = receiver.received();
    anyhow::ensure!(
        received >= deliveries,
        "the receiver got {received} requests for {deliveries} deliveries"
    );
    let offboard_rate = deliveries as f64 / offboard.as_secs_f64();

    let baseline = plain_posts(&receiver, deliveries, concurrency).await?;
    let baseline_rate = deliveries as f64 / baseline.as_secs_f64();
    let ideal = concurrency as f64 / RECEIVER_LATENCY.as_secs_f64();

    println!("offboard webhooks: {offboard_rate:.0} deliveries/s");
    println!("baseline plain POSTs at concurrency {concurrency}: {baseline_rate:.0} requests/s");
    println!("ratio: {:.2}", offboard_rate / baseline_rate);
    println!("# ideal at this concurrency and latency: {ideal:.0}/s");
    println!("worker peak RSS: {:.1} MiB", mib(rss));
    cpu.report(deliveries as f64, "delivery");
    Ok(())
}

/// Writes every event (and its deliveries) in one transaction, as the ledger's triggers
/// do, and times from its commit until the last delivery succeeded (as the ledger
/// recorded it).
async fn through_offboard(
    env: &BenchEnv,
    events: usize,
    deliveries: usize,
) -> anyhow::Result<Duration> {
    let mut tx = env.pool.begin().await?;
    sqlx::query(
        "SELECT offboard.emit_webhook_event($1, 'offboarding.succeeded',
                    jsonb_build_object('run_id', gen_random_uuid(), 'company_id', $1,
                                       'user_id', k, 'action', 'deactivate', 'status', 'succeeded'))
         FROM generate_series(1, $2) k",
    )
    .bind(COMPANY)
    .bind(events as i64)
    .execute(&mut *tx)
    .await?;
    let started = Instant::now();
    tx.commit().await?;
    let pool = &env.pool;
    wait_until(
        "the deliveries",
        Duration::from_millis(50),
        Duration::from_secs(600),
        || async move {
            let (succeeded, other): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status = 'failed')
             FROM offboard.webhook_deliveries",
            )
            .fetch_one(pool)
            .await?;
            anyhow::ensure!(other == 0, "{other} deliveries failed");
            Ok(succeeded as usize == deliveries)
        },
    )
    .await?;
    let since_last: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM clock_timestamp() - max(finished_at))::float8
         FROM offboard.webhook_deliveries",
    )
    .fetch_one(&env.pool)
    .await?;
    Ok(until_last_finish(started, since_last))
}

/// `n` POSTs of a thin event body from `concurrency` tasks sharing one client.
async fn plain_posts(receiver: &Remote, n: usize, concurrency: usize) -> anyhow::Result<Duration> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let body =
        serde_json::json!({"type": "offboarding.succeeded", "timestamp": "2026-12-02T00:00:00Z",
        "data": {"run_id": uuid::Uuid::new_v4(), "company_id": COMPANY, "user_id": 1,
                 "action": "deactivate", "status": "succeeded"}})
        .to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, body) = (client.clone(), next.clone(), body.clone());
        let url = format!("{}/hooks/baseline", receiver.base);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success(), "baseline: {}", response.status());
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}
