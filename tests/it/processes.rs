//! The API and the workers in separate processes (`offboard api` beside `offboard worker`):
//! the API's commits wake the workers' dispatcher over PostgreSQL `LISTEN`/`NOTIFY`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use offboard::{
    api::{self, AppState},
    crm::seed::SeedOptions,
    nudge::{self, DISPATCH_CHANNEL},
    shutdown::Shutdown,
};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::helpers::{DEADLINE, TestApp};

/// Whether a session of this test's database listens on `channel`.
async fn listening(app: &TestApp, channel: &str) -> bool {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND query LIKE '%' || $1 || '%'",
    )
    .bind(channel)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    n > 0
}

#[sqlx::test]
async fn an_api_in_another_process_wakes_the_workers_dispatcher_at_once(pool: PgPool) {
    // The workers' dispatcher looks on its own once an hour, and once when it starts.
    let mut app = TestApp::with(
        pool,
        &[("OFFBOARD_DISPATCH_INTERVAL", "1h")],
        SeedOptions { users: 8, items_per_user: 10, seed: 7 },
    )
    .await;
    let workers = app.start_workers();
    let started = Instant::now();
    while !listening(&app, DISPATCH_CHANNEL).await {
        assert!(started.elapsed() < DEADLINE, "the workers never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The API of another process: its own nudges, which reach the workers only as NOTIFY.
    let shutdown = Shutdown::new();
    let api_nudge = Arc::new(Notify::new());
    let forwarder = tokio::spawn(nudge::forward(
        app.pool.clone(),
        DISPATCH_CHANNEL,
        api_nudge.clone(),
        shutdown.clone(),
    ));
    app.router = api::router(AppState::new(
        app.pool.clone(),
        app.queues.clone(),
        app.settings.clone(),
        api_nudge,
    ));

    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let run = app.wait_for_run(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // Well within the hour the dispatcher would otherwise have waited.
    assert!(started.elapsed() < DEADLINE);
    shutdown.trigger();
    forwarder.await.unwrap();
    workers.stop().await;
    app.cleanup().await;
}
