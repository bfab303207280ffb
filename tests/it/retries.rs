//! Retries with stored backoff, dead steps, operator retry and cancel, leases and their
//! takeover, quarantine of a step that keeps killing its worker.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use offboard::{
    crm::seed::SeedOptions,
    domain::StepKey,
    executor::{Fault, Outcome},
    ledger::steps,
    steps::StepError,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{DEADLINE, TestApp};

async fn step_row(app: &TestApp, run: Uuid, name: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error_code FROM offboard.steps WHERE run_id = $1 AND name = $2")
        .bind(run)
        .bind(name)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Moves what may start to `queued`, as the dispatcher does, without pushing to Redis.
async fn dispatch(app: &TestApp) -> Vec<StepKey> {
    let limits = steps::DispatchLimits { max_in_flight: 100, max_in_flight_per_company: 100 };
    steps::dispatch_ready(&app.pool, limits).await.unwrap().into_iter().map(|d| d.key()).collect()
}

/// Dispatches until `step` is queued: a step whose lease expired is due again only after
/// its backoff pause, so one dispatch right after the sweep may find nothing due.
async fn dispatch_when_due(app: &TestApp, step: StepKey) {
    let started = Instant::now();
    while !dispatch(app).await.contains(&step) {
        assert!(started.elapsed() < DEADLINE, "step {step} never became due");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the sweeper until it takes back a step whose lease expired.
async fn sweep_until_a_lease_expires(app: &TestApp) {
    let started = Instant::now();
    while app.workers.dispatcher.sweep().await.leases_expired == 0 {
        assert!(started.elapsed() < DEADLINE, "no lease expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn step_id(app: &TestApp, run: Uuid, name: &str) -> StepKey {
    let position =
        sqlx::query_scalar("SELECT position FROM offboard.steps WHERE run_id = $1 AND name = $2")
            .bind(run)
            .bind(name)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    StepKey::new(run, position)
}

#[sqlx::test]
async fn a_retryable_error_is_retried_with_growing_jittered_delays_kept_in_the_ledger(
    pool: PgPool,
) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_BACKOFF_BASE", "40ms"), ("OFFBOARD_BACKOFF_CAP", "1s")],
        SeedOptions::default(),
    )
    .await;
    for _ in 0..4 {
        app.workers
            .executor
            .faults
            .inject("stop_syncs", Fault::Fail(StepError::retryable("connection_lost", "injected")));
    }
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let outcomes = app.drain().await;
    let stop_syncs: Vec<&Outcome> =
        outcomes.iter().filter(|(n, _)| n == "stop_syncs").map(|(_, o)| o).collect();
    assert_eq!(
        stop_syncs,
        vec![
            &Outcome::WillRetry,
            &Outcome::WillRetry,
            &Outcome::WillRetry,
            &Outcome::WillRetry,
            &Outcome::Succeeded
        ]
    );
    assert_eq!(step_row(&app, id, "stop_syncs").await, ("succeeded".into(), 5, None));
    assert_eq!(app.run(id).await["status"], "succeeded");

    // The schedule, read back from the ledger: each delay under a doubling ceiling.
    let history: Vec<(Value, DateTime<Utc>)> = sqlx::query_as(
        "SELECT detail, at FROM offboard.run_events
         WHERE run_id = $1 AND kind = 'step_retry_scheduled' AND step = 'stop_syncs' ORDER BY id",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(history.len(), 4, "{:#}", app.run(id).await["history"]);
    let ceilings: Vec<i64> =
        history.iter().map(|(d, _)| d["ceiling_ms"].as_i64().unwrap()).collect();
    assert_eq!(ceilings, vec![40, 80, 160, 320]);
    let delays: Vec<i64> = history.iter().map(|(d, _)| d["delay_ms"].as_i64().unwrap()).collect();
    for (delay, ceiling) in delays.iter().zip(&ceilings) {
        assert!((0..=*ceiling).contains(delay), "delay {delay} over ceiling {ceiling}");
    }
    assert!(history.iter().all(|(d, _)| d["code"] == "connection_lost"));
    // The retries waited at least their drawn delays (the schedule was honoured).
    for pair in history.windows(2) {
        let gap = (pair[1].1 - pair[0].1).num_milliseconds();
        let drawn = pair[0].0["delay_ms"].as_i64().unwrap();
        assert!(gap + 2 >= drawn, "retried after {gap} ms, scheduled {drawn} ms");
    }
}

#[sqlx::test]
async fn a_permanent_error_kills_the_step_at_once_and_holds_back_its_dependents(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.workers.executor.faults.inject(
        "uninstall_apps",
        Fault::Fail(StepError::permanent("app_store_refused", "the app store refused")),
    );
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.drain().await;
    assert_eq!(
        step_row(&app, id, "uninstall_apps").await,
        ("dead".into(), 1, Some("app_store_refused".into()))
    );
    assert_eq!(step_row(&app, id, "finish_deactivation").await.0, "pending");
    let run = app.run(id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "app_store_refused");
    assert!(run["error"]["message"].as_str().unwrap().contains("uninstall_apps"));
    // The user is not deactivated: the last step never ran.
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'active'",
            app.regular(0)
        )
        .await,
        1
    );
}

#[sqlx::test]
async fn the_retry_endpoint_revives_dead_steps_and_the_run_finishes(pool: PgPool) {
    let app = TestApp::with(pool, &[("OFFBOARD_MAX_ATTEMPTS", "2")], SeedOptions::default()).await;
    for _ in 0..2 {
        app.workers
            .executor
            .faults
            .inject("disable_webhooks", Fault::Fail(StepError::retryable("timeout", "injected")));
    }
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.drain().await;
    assert_eq!(
        step_row(&app, id, "disable_webhooks").await,
        ("dead".into(), 2, Some("timeout".into()))
    );
    assert_eq!(app.run(id).await["status"], "failed");

    let (status, body) = app.post(&format!("/v1/offboardings/{id}/retry"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["steps_retried"], 1);
    app.drain().await;
    let run = app.run(id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let kinds: Vec<&str> =
        run["history"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"step_dead")
            && kinds.contains(&"retried")
            && kinds.ends_with(&["succeeded"]),
        "{kinds:?}"
    );
    let retried =
        run["history"].as_array().unwrap().iter().find(|e| e["kind"] == "retried").unwrap();
    assert_eq!(retried["actor"], "token:operator");

    // Nothing left to retry.
    let (status, body) = app.post(&format!("/v1/offboardings/{id}/retry"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "invalid_state");
}

#[sqlx::test]
async fn cancel_stops_a_run_but_keeps_what_finished(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    let id = app.enqueue(&app.deactivation(user, json!({}))).await;
    // Run only the first step.
    let ready = dispatch(&app).await;
    assert_eq!(ready.len(), 1);
    assert_eq!(app.workers.executor.run_step(ready[0]).await.unwrap(), Outcome::Succeeded);

    let (status, body) = app.post(&format!("/v1/offboardings/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes = app.drain().await;
    assert!(outcomes.is_empty(), "no new step started: {outcomes:?}");
    let run = app.run(id).await;
    assert_eq!(run["status"], "canceled");
    assert_eq!(step_row(&app, id, "block_login").await.0, "succeeded");
    assert!(run["steps"].as_array().unwrap()[1..].iter().all(|s| s["status"] == "canceled"));
    // The receipt of a canceled run says what was done before the cancel.
    assert_eq!(run["receipt"]["steps"][0]["status"], "succeeded");
    assert_eq!(run["receipt"]["steps"][1]["status"], "canceled");
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.sessions WHERE user_id = $1", user).await,
        0,
        "finished effects stay"
    );
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'active'", user)
            .await,
        1
    );
    let canceled =
        run["history"].as_array().unwrap().iter().find(|e| e["kind"] == "canceled").unwrap();
    assert_eq!(canceled["actor"], "token:operator");

    // A canceled run no longer blocks the user, and cannot be canceled again.
    let (status, _) = app.post(&format!("/v1/offboardings/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    app.enqueue(&app.deactivation(user, json!({}))).await;
}

#[sqlx::test]
async fn a_step_whose_worker_vanished_is_taken_over_when_its_lease_expires(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let ready = dispatch(&app).await;
    // A worker claims the step and disappears.
    let ghost = steps::claim(&app.pool, ready[0], "worker-a", Duration::from_millis(300))
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(ghost.attempts, 1);
    sweep_until_a_lease_expires(&app).await;
    assert_eq!(
        step_row(&app, id, "block_login").await,
        ("ready".into(), 1, Some("lease_expired".into()))
    );
    app.drain().await;
    assert_eq!(step_row(&app, id, "block_login").await, ("succeeded".into(), 2, None));
    assert_eq!(app.run(id).await["status"], "succeeded");

    // The vanished worker, back from the dead with its old token, can record nothing.
    let mut tx = app.pool.begin().await.unwrap();
    assert!(
        steps::fence(&mut tx, ghost.key(), ghost.lease_token, Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        steps::complete(&mut tx, ghost.key(), ghost.lease_token, &json!({}), 1, 1)
            .await
            .unwrap()
            .is_none()
    );
}

#[sqlx::test]
async fn two_workers_with_one_name_cannot_both_hold_a_step(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let ready = dispatch(&app).await;
    let first = steps::claim(&app.pool, ready[0], "same-name", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    // A second delivery of the same task to a worker of the same name finds it taken.
    assert!(
        steps::claim(&app.pool, ready[0], "same-name", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    // After the lease expires and the step is re-queued, the namesake takes it over.
    sweep_until_a_lease_expires(&app).await;
    dispatch_when_due(&app, ready[0]).await;
    let second = steps::claim(&app.pool, ready[0], "same-name", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first.lease_token, second.lease_token);
    let mut tx = app.pool.begin().await.unwrap();
    assert!(
        steps::fence(&mut tx, ready[0], first.lease_token, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        steps::fence(&mut tx, ready[0], second.lease_token, Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
    drop(tx);
    assert_eq!(step_row(&app, id, "block_login").await.1, 2);
}

#[sqlx::test]
async fn a_step_that_keeps_killing_its_worker_is_quarantined(pool: PgPool) {
    let app = TestApp::with(pool, &[("OFFBOARD_MAX_ATTEMPTS", "3")], SeedOptions::default()).await;
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let step = step_id(&app, id, "block_login").await;
    for attempt in 1..=3 {
        // A lost attempt is retried with backoff like any failure: the step is due again
        // after its (short, in tests) pause, not at once.
        let started = Instant::now();
        let dispatched = loop {
            let dispatched = dispatch(&app).await;
            if !dispatched.is_empty() || started.elapsed() > DEADLINE {
                break dispatched;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(dispatched, vec![step], "attempt {attempt}");
        // The worker dies right after claiming.
        steps::claim(&app.pool, step, &format!("doomed-{attempt}"), Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        sweep_until_a_lease_expires(&app).await;
    }
    assert_eq!(
        step_row(&app, id, "block_login").await,
        ("dead".into(), 3, Some("quarantined".into()))
    );
    let run = app.run(id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "quarantined");
    assert!(dispatch(&app).await.is_empty(), "it does not loop");
}

#[sqlx::test]
async fn a_lost_attempt_that_made_progress_is_not_held_against_the_step(pool: PgPool) {
    let app = TestApp::with(pool, &[("OFFBOARD_MAX_ATTEMPTS", "1")], SeedOptions::default()).await;
    let plan = json!({"deals": {"mode": "single", "scope": "all", "targets": [{"user_id": app.regular(1)}]}});
    let id = app.enqueue(&app.deactivation(app.regular(0), plan)).await;
    // Login blocked; then a worker takes the reassignment, commits a batch, and is lost.
    let first = dispatch(&app).await;
    app.workers.executor.run_step(first[0]).await.unwrap();
    let deals = step_id(&app, id, "reassign_deals").await;
    dispatch(&app).await;
    let claim = steps::claim(&app.pool, deals, "lost-worker", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    steps::fence(&mut tx, deals, claim.lease_token, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let recorded = steps::record_progress(
        &mut tx,
        deals,
        claim.lease_token,
        3,
        10,
        &json!({"created_at": "2025-01-06T09:00:00Z", "id": 0}),
    )
    .await
    .unwrap();
    assert!(recorded);
    tx.commit().await.unwrap();
    sweep_until_a_lease_expires(&app).await;
    // With one attempt allowed, a counted loss would have made it dead.
    assert_eq!(
        step_row(&app, id, "reassign_deals").await,
        ("ready".into(), 0, Some("lease_expired".into()))
    );

    // Without progress, the same loss counts: a claim that commits nothing and is lost.
    dispatch_when_due(&app, deals).await;
    steps::claim(&app.pool, deals, "lost-again", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    sweep_until_a_lease_expires(&app).await;
    assert_eq!(
        step_row(&app, id, "reassign_deals").await,
        ("dead".into(), 1, Some("quarantined".into()))
    );
}
