//! The API and the workers in separate processes (`offboard api` beside `offboard worker`):
//! the API's commits wake the workers' dispatcher over PostgreSQL `LISTEN`/`NOTIFY`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use offboard::{
    api::AppState,
    crm::seed::SeedOptions,
    dispatch,
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
    let app = TestApp::with(
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
    // The API of another process, composed as `offboard api` composes it: its own nudges,
    // which reach the workers only as NOTIFY; requests over real HTTP.
    let shutdown = Shutdown::new();
    let state = AppState::new(
        app.pool.clone(),
        app.queues.clone(),
        app.settings.clone(),
        Arc::new(Notify::new()),
    );
    let server =
        offboard::app::start_api_alone(state, "127.0.0.1:0".parse().unwrap(), shutdown.clone())
            .await
            .unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/offboardings", server.addr))
        .bearer_auth(app.token())
        .json(&app.deactivation(app.regular(0), json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let accepted: serde_json::Value = response.json().await.unwrap();
    let id: uuid::Uuid = accepted["id"].as_str().unwrap().parse().unwrap();
    let run = app.wait_for_run(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // Well within the hour the dispatcher would otherwise have waited.
    assert!(started.elapsed() < DEADLINE);
    shutdown.trigger();
    server.handle.await.unwrap().unwrap();
    workers.stop().await;
    app.cleanup().await;
}

/// The dispatcher pushes a run's next step to Redis as the last one finishes; the step
/// worker of the same process fetches it at once, not at its next poll, on every hop.
#[sqlx::test]
async fn a_step_pushed_by_this_process_is_fetched_at_once_not_at_the_next_poll(pool: PgPool) {
    // The step worker looks on its own once an hour, and once when it starts.
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_POLL_INTERVAL", "1h")],
        SeedOptions { users: 8, items_per_user: 10, seed: 7 },
    )
    .await;
    let workers = app.start_workers();
    let started = Instant::now();
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let run = app.wait_for_run(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // Under a second here; 15 s when each hop waited for apalis' own wake-ups instead.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the run's steps took {took:?} to go through");
    workers.stop().await;
    app.cleanup().await;
}

/// Nudges every millisecond for `burst`, from a paced loop (the nudges are the load, not
/// a wait); returns how many were sent.
async fn nudge_for(nudge: &Notify, burst: Duration) -> u64 {
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < burst {
        pace.tick().await;
        nudge.notify_one();
        sent += 1;
    }
    sent
}

#[sqlx::test]
async fn a_burst_of_nudges_costs_one_dispatch_pass_per_gap_not_one_per_nudge(pool: PgPool) {
    // Only nudges wake this dispatcher (its interval is an hour).
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_DISPATCH_INTERVAL", "1h")],
        SeedOptions { users: 4, items_per_user: 1, seed: 7 },
    )
    .await;
    let dispatcher = app.workers.dispatcher.clone();
    let stats = dispatcher.stats.clone();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(dispatcher.run(shutdown.clone()));
    let started = Instant::now();
    while stats.passes() == 0 {
        assert!(started.elapsed() < DEADLINE, "the dispatcher never made its first pass");
        tokio::task::yield_now().await;
    }

    // An enqueue burst: a commit's nudge every millisecond (passes here dispatch nothing,
    // as when the in-flight limit is full and each commit would otherwise start a pass).
    let before = stats.passes();
    let burst_started = Instant::now();
    let nudges = nudge_for(&app.nudge, Duration::from_millis(400)).await;
    let burst = burst_started.elapsed();
    let passes = stats.passes() - before;
    assert!(nudges >= 40, "the burst sent only {nudges} nudges");
    assert!(passes >= 1, "no pass answered {nudges} nudges");
    // At most one pass per gap (and one begun before the burst).
    let bound = (burst.as_millis() / dispatch::PASS_GAP.as_millis()) as u64 + 2;
    assert!(
        passes <= bound,
        "{passes} passes for {nudges} nudges in {burst:?}: more than one per {:?}",
        dispatch::PASS_GAP
    );
    shutdown.trigger();
    running.await.unwrap();
    app.cleanup().await;
}

#[sqlx::test]
async fn a_burst_of_commits_in_an_api_process_sends_one_notification_per_gap(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen(DISPATCH_CHANNEL).await.unwrap();
    let shutdown = Shutdown::new();
    let api_nudge = Arc::new(Notify::new());
    let forwarder = tokio::spawn(nudge::forward(
        app.pool.clone(),
        DISPATCH_CHANNEL,
        api_nudge.clone(),
        shutdown.clone(),
    ));

    let burst_started = Instant::now();
    let nudges = nudge_for(&api_nudge, Duration::from_millis(400)).await;
    let burst = burst_started.elapsed();
    shutdown.trigger();
    forwarder.await.unwrap();
    // Every notification sent has arrived once nothing more comes for a while.
    let mut received = 0u64;
    while let Ok(notification) =
        tokio::time::timeout(Duration::from_millis(500), listener.recv()).await
    {
        notification.unwrap();
        received += 1;
    }
    assert!(nudges >= 40, "the burst sent only {nudges} nudges");
    assert!(received >= 1, "{nudges} nudges sent no notification");
    let bound = (burst.as_millis() / nudge::FORWARD_GAP.as_millis()) as u64 + 2;
    assert!(
        received <= bound,
        "{received} notifications for {nudges} nudges in {burst:?}: more than one per {:?}",
        nudge::FORWARD_GAP
    );
    app.cleanup().await;
}

/// Two worker processes' dispatchers take turns on an advisory lock. A dispatcher woken
/// while the other one's pass holds it looks again once that pass is over: the other pass
/// read the ledger as it was when it began and may not have seen the steps this one was
/// woken for. (It waited for its next nudge or interval instead.)
#[sqlx::test]
async fn a_dispatcher_woken_while_another_process_passes_looks_again_when_that_pass_ends(
    pool: PgPool,
) {
    // Only nudges wake this dispatcher (its interval is an hour).
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_DISPATCH_INTERVAL", "1h")],
        SeedOptions { users: 4, items_per_user: 1, seed: 7 },
    )
    .await;
    // The other process's pass: its transaction holds the dispatchers' lock.
    let mut other = app.pool.begin().await.unwrap();
    let held: bool = sqlx::query_scalar(offboard::ledger::steps::DISPATCH_LOCK_SQL)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(held, "the other pass holds the lock");

    let dispatcher = app.workers.dispatcher.clone();
    let stats = dispatcher.stats.clone();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(dispatcher.run(shutdown.clone()));
    // A commit that made steps ready, and its nudge, while the other pass goes on.
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let busy = stats.busy();
    let started = Instant::now();
    while stats.busy() <= busy {
        assert!(started.elapsed() < DEADLINE, "the dispatcher never tried to pass");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    other.commit().await.unwrap();

    let started = Instant::now();
    loop {
        let queued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM offboard.steps
             WHERE run_id = $1 AND status IN ('queued', 'running', 'succeeded')",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        // The pass counts itself once its transaction has committed, which this test's
        // own query can see first: wait for both.
        if queued > 0 && stats.passes() > 0 {
            break;
        }
        // Well within the hour the dispatcher would otherwise have waited.
        assert!(
            started.elapsed() < DEADLINE,
            "the run's ready steps were never dispatched by this dispatcher ({queued} queued, {} passes)",
            stats.passes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.trigger();
    running.await.unwrap();
    app.cleanup().await;
}
