//! How often a worker process asks Redis for tasks: each queue on its poll interval (and,
//! for steps, when this process pushed some), not whenever something else in the process
//! stirs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use futures::StreamExt;
use offboard::crm::seed::SeedOptions;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

/// While steps run, the purge queue — empty all along — is fetched about once per poll
/// interval. Both apalis workers ran in one task: each fetch's answer, and each step's
/// completion, polled the other worker, and apalis fetches whenever a worker with nothing
/// buffered is polled, so the two fetched in turn as fast as Redis answered (thousands of
/// empty fetches a second during `bench layoff`, most of the workers' and Redis's CPU).
#[sqlx::test]
async fn an_idle_queue_is_fetched_on_its_interval_while_the_other_runs_steps(pool: PgPool) {
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 20, items_per_user: 2, seed: 17 }).await;
    let fetches = Arc::new(AtomicU64::new(0));
    let watched = format!("\"{}:purges:workers\"", app.queues.prefix());
    let client = redis::Client::open(app.settings.redis_url.as_str()).unwrap();
    let monitor = client.get_async_monitor().await.expect("Redis MONITOR");
    let counting = {
        let fetches = fetches.clone();
        tokio::spawn(async move {
            let mut lines = monitor.into_on_message::<String>();
            while let Some(line) = lines.next().await {
                // apalis-redis's fetch script names the queue's workers set first.
                if line.contains("\"EVALSHA\"") && line.contains(&watched) {
                    fetches.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let workers = app.start_workers();
    let started = Instant::now();
    let mut runs = Vec::new();
    for n in 0..12 {
        let deactivation = app.deactivation(
            app.regular(n),
            json!({"default": {"mode": "single", "targets": [{"user_id": app.regular(16)}]}}),
        );
        runs.push(app.enqueue(&deactivation).await);
    }
    for id in runs {
        assert_eq!(app.wait_for_run(id).await["status"], "succeeded");
    }
    let elapsed = started.elapsed();
    let fetched = fetches.load(Ordering::Relaxed);
    workers.stop().await;
    counting.abort();

    let intervals = elapsed.as_secs_f64() / app.settings.worker.poll_interval.as_secs_f64();
    assert!(
        (fetched as f64) <= 1.5 * intervals + 20.0,
        "the empty purge queue was fetched {fetched} times in {elapsed:?} ({intervals:.0} poll intervals)"
    );
    app.cleanup().await;
}
