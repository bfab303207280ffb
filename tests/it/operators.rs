//! Operators at scale: bulk retry and cancel by filter (dry run, chunks, a worker killed
//! halfway, scoped tokens), restart from a step, finding runs, and the charts' series.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use offboard::{
    api::{self, AppState},
    crm::seed::SeedOptions,
    ledger::{
        bulk,
        runs::{self, NewRun},
    },
    steps::StepSpec,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    helpers::{DEADLINE, TestApp, database_url_of, test_settings},
    recovery::spawn_worker,
};

/// Writes a run of two no-op steps (`noop_1`, then `noop_2`) for `user` of `company`,
/// through the ledger's own insert.
async fn insert_run(pool: &PgPool, company: i64, user: i64) -> Uuid {
    let run = NewRun {
        id: runs::new_run_id(),
        company_id: company,
        user_id: user,
        action: offboard::domain::Action::Deactivate,
        plan: json!({}),
        params: json!({}),
        actor_user_id: 1,
        idempotency_key: None,
        steps: vec![
            StepSpec { name: "noop_1".into(), depends_on: vec![] },
            StepSpec { name: "noop_2".into(), depends_on: vec!["noop_1".into()] },
        ],
        max_attempts: 3,
        status: offboard::domain::RunStatus::Queued,
        effective_at: None,
    };
    let mut conn = pool.acquire().await.unwrap();
    runs::insert(&mut conn, &run, None).await.unwrap();
    run.id
}

/// Puts `step` of each run where a permanent failure would: dead, and the run failed.
async fn kill_step(pool: &PgPool, ids: &[Uuid], step: &str) {
    sqlx::query(
        "UPDATE offboard.steps SET status = 'dead', attempts = 1, finished_at = now(),
                last_error_code = 'vendor_down', last_error_message = 'the vendor did not answer'
         WHERE run_id = ANY ($1) AND name = $2",
    )
    .bind(ids)
    .bind(step)
    .execute(pool)
    .await
    .unwrap();
    // noop_2 of a run whose noop_2 died has had noop_1 succeed before it.
    if step == "noop_2" {
        sqlx::query(
            "UPDATE offboard.steps SET status = 'succeeded', attempts = 1, finished_at = now()
             WHERE run_id = ANY ($1) AND name = 'noop_1'",
        )
        .bind(ids)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE offboard.steps SET deps_remaining = 0 WHERE run_id = ANY ($1) AND name = 'noop_2'",
        )
        .bind(ids)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query("UPDATE offboard.runs SET steps_remaining = 1 WHERE id = ANY ($1)")
            .bind(ids)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE offboard.runs SET status = 'failed', started_at = now(), error_code = 'vendor_down'
         WHERE id = ANY ($1)",
    )
    .bind(ids)
    .execute(pool)
    .await
    .unwrap();
}

async fn insert_runs(pool: &PgPool, company: i64, users: std::ops::Range<i64>) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for user in users {
        ids.push(insert_run(pool, company, user).await);
    }
    ids
}

async fn retried_events(pool: &PgPool, run: Uuid) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('actor', actor, 'detail', detail) FROM offboard.run_events
         WHERE run_id = $1 AND kind = 'retried' ORDER BY id",
    )
    .bind(run)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn operation(app: &TestApp, id: &str) -> Value {
    let (status, op) = app.get(&format!("/v1/bulk-operations/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{op}");
    op
}

#[sqlx::test]
async fn a_bulk_retry_over_500_runs_puts_exactly_those_back_and_finishes_them_across_a_killed_worker(
    pool: PgPool,
) {
    let app = TestApp::with(pool, &[], SeedOptions { users: 4, items_per_user: 2, seed: 3 }).await;
    let company = app.company.company_id;
    let vendor_down = insert_runs(&app.pool, company, 10_000..10_500).await;
    kill_step(&app.pool, &vendor_down, "noop_1").await;
    // Runs the filter must leave alone: another step dead, another company, a run that
    // did not fail.
    let other_step = insert_runs(&app.pool, company, 20_000..20_030).await;
    kill_step(&app.pool, &other_step, "noop_2").await;
    let other_company = insert_runs(&app.pool, company + 1_000, 30_000..30_020).await;
    kill_step(&app.pool, &other_company, "noop_1").await;
    let untouched = [&other_step[..], &other_company[..]].concat();

    let filter = json!({"company_id": company, "step": "noop_1", "step_status": "dead"});
    let (status, dry) =
        app.post("/v1/offboardings/bulk-retry", &json!({"filter": filter, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["matched"], 500, "{dry}");
    assert_eq!(app.count("SELECT count(*) FROM offboard.bulk_operations").await, 0);

    let (status, op) = app.post("/v1/offboardings/bulk-retry", &json!({"filter": filter})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["matched"], 500);
    let op_id = op["id"].as_str().unwrap().to_string();

    // A worker process takes it up in chunks of 10 and is killed halfway.
    let chunked = [("OFFBOARD_BULK_CHUNK", "10"), ("OFFBOARD_BULK_PAUSE", "40ms")];
    let mut first = spawn_worker(&app, &chunked);
    let started = Instant::now();
    let touched_at_kill = loop {
        let op = operation(&app, &op_id).await;
        let touched = op["touched"].as_i64().unwrap();
        if touched >= 100 {
            first.start_kill().unwrap();
            first.wait().await.unwrap();
            break touched;
        }
        assert!(started.elapsed() < DEADLINE, "the operation never got going: {op}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let op = operation(&app, &op_id).await;
    assert!(touched_at_kill < 500, "the operation finished before the kill: {op}");
    assert_eq!(op["status"], "running", "{op}");
    let committed = op["touched"].as_i64().unwrap();

    // Another worker process goes on from the cursor and finishes the runs too.
    let mut second = spawn_worker(&app, &chunked);
    let started = Instant::now();
    let op = loop {
        let op = operation(&app, &op_id).await;
        if op["status"] == "succeeded" {
            break op;
        }
        assert!(started.elapsed() < DEADLINE, "the operation did not finish: {op}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started = Instant::now();
    loop {
        let succeeded =
            app.count("SELECT count(*) FROM offboard.runs WHERE status = 'succeeded'").await;
        if succeeded == 500 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "only {succeeded} of 500 retried runs finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    app.cleanup().await;

    assert_eq!(op["touched"], 500, "{op}");
    assert!(op["touched"].as_i64().unwrap() > committed, "the second process went on: {op}");
    assert!(op["chunks"].as_i64().unwrap() >= 50, "chunks of 10: {op}");
    // Each of the 500 retried once, by the operator, with the operation and its filter.
    for run in &vendor_down {
        let events = retried_events(&app.pool, *run).await;
        assert_eq!(events.len(), 1, "run {run} retried {} times", events.len());
        assert_eq!(events[0]["actor"], "token:operator");
        assert_eq!(events[0]["detail"]["bulk_operation"], op_id.as_str());
        assert_eq!(events[0]["detail"]["filter"], filter);
        assert_eq!(events[0]["detail"]["steps"], json!(["noop_1"]));
    }
    assert_eq!(
        app.count("SELECT count(*) FROM offboard.runs WHERE status = 'succeeded'").await,
        500
    );
    // The others are as they were.
    for run in &untouched {
        assert!(retried_events(&app.pool, *run).await.is_empty());
        let status: String = sqlx::query_scalar("SELECT status FROM offboard.runs WHERE id = $1")
            .bind(run)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(status, "failed");
    }
}

/// Works an operation through in this process, as a sweeper would.
async fn work_through_here(app: &TestApp) {
    while let Some((id, token)) =
        bulk::take_unfinished(&app.pool, "test", Duration::from_secs(5)).await.unwrap()
    {
        offboard::bulk::work_through(
            app.pool.clone(),
            app.settings.worker.clone(),
            app.nudge.clone(),
            id,
            token,
        )
        .await;
    }
}

#[sqlx::test]
async fn a_scoped_tokens_bulk_action_never_touches_another_company(pool: PgPool) {
    let app = TestApp::with(pool, &[], SeedOptions { users: 4, items_per_user: 2, seed: 3 }).await;
    let ours = app.company.company_id;
    let theirs = ours + 1;
    let our_runs = insert_runs(&app.pool, ours, 100..130).await;
    kill_step(&app.pool, &our_runs, "noop_1").await;
    let their_runs = insert_runs(&app.pool, theirs, 100..140).await;
    kill_step(&app.pool, &their_runs, "noop_1").await;

    let scoped = "scoped-token-for-our-company";
    let settings = test_settings(
        &database_url_of(&app.pool),
        app.queues.prefix(),
        &[("OFFBOARD_API_TOKENS", &format!("{scoped}@{ours}"))],
    );
    let router = api::router(AppState::new(
        app.pool.clone(),
        app.queues.clone(),
        settings,
        app.nudge.clone(),
    ));
    let scoped_app = TestApp { router, ..app };
    let auth = format!("Bearer {scoped}");
    let call = |path: &'static str, body: Value| {
        let auth = auth.clone();
        let scoped_app = &scoped_app;
        async move {
            let (status, _, value) = scoped_app
                .call(Method::POST, path, Some(&body.to_string()), &[("authorization", &auth)])
                .await;
            (status, value)
        }
    };

    // Another company by name: not found, nothing recorded.
    let (status, err) =
        call("/v1/offboardings/bulk-retry", json!({"filter": {"company_id": theirs}})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    let (status, dry) =
        call("/v1/offboardings/bulk-retry", json!({"filter": {}, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["matched"], 30, "{dry}");
    assert_eq!(dry["filter"]["company_id"], ours);

    let (status, op) = call("/v1/offboardings/bulk-retry", json!({"filter": {}})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["operator"], format!("token:company-{ours}"));
    work_through_here(&scoped_app).await;
    let (status, _, done) = scoped_app
        .call(
            Method::GET,
            &format!("/v1/bulk-operations/{}", op["id"].as_str().unwrap()),
            None,
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["touched"], 30);

    for run in &our_runs {
        assert_eq!(retried_events(&scoped_app.pool, *run).await.len(), 1);
    }
    for run in &their_runs {
        assert!(retried_events(&scoped_app.pool, *run).await.is_empty());
    }
    assert_eq!(
        scoped_app
            .count(&format!(
                "SELECT count(*) FROM offboard.runs WHERE company_id = {theirs} AND status = 'failed'"
            ))
            .await,
        40
    );
    scoped_app.cleanup().await;
}

#[sqlx::test]
async fn a_bulk_cancel_touches_what_its_dry_run_counted_and_records_the_filter(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_BULK_CHUNK", "7")],
        SeedOptions { users: 4, items_per_user: 2, seed: 3 },
    )
    .await;
    let company = app.company.company_id;
    insert_runs(&app.pool, company, 100..150).await;
    let failed = insert_runs(&app.pool, company, 200..210).await;
    kill_step(&app.pool, &failed, "noop_1").await;
    let finished = insert_runs(&app.pool, company, 300..305).await;
    sqlx::query("UPDATE offboard.runs SET status = 'succeeded' WHERE id = ANY ($1)")
        .bind(&finished)
        .execute(&app.pool)
        .await
        .unwrap();

    let filter = json!({"company_id": company, "action": "deactivate"});
    let (_, dry) =
        app.post("/v1/offboardings/bulk-cancel", &json!({"filter": filter, "dry_run": true})).await;
    assert_eq!(dry["matched"], 60, "queued and failed runs, not finished ones: {dry}");
    let (status, op) = app.post("/v1/offboardings/bulk-cancel", &json!({"filter": filter})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    work_through_here(&app).await;
    let op = operation(&app, op["id"].as_str().unwrap()).await;
    assert_eq!(op["status"], "succeeded");
    assert_eq!(op["touched"], dry["matched"], "{op}");
    assert_eq!(op["chunks"], 9, "60 runs in chunks of 7: {op}");
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs WHERE status = 'canceled'").await, 60);
    let events: Vec<Value> = sqlx::query_scalar(
        "SELECT detail FROM offboard.run_events WHERE kind = 'canceled' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 60);
    assert!(events.iter().all(|d| d["filter"] == filter && d["bulk_operation"] == op["id"]));
    // The list of operations shows it.
    let (_, list) = app.get("/v1/bulk-operations").await;
    assert_eq!(list["operations"][0]["id"], op["id"]);

    // Bad filters are refused, naming the field, and record nothing.
    for (body, field) in [
        (json!({"filter": {"status": "sleeping"}}), "filter.status"),
        (json!({"filter": {"step": "no_such_step"}}), "filter.step"),
        (json!({"filter": {"created_after": "yesterday"}}), "filter.created_after"),
        (json!({"filter": {"colour": "red"}}), "filter.colour"),
        (json!({"filter": {}, "dry_run": "yes"}), "dry_run"),
        (json!({}), "filter"),
    ] {
        let (status, err) = app.post("/v1/offboardings/bulk-cancel", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    assert_eq!(app.count("SELECT count(*) FROM offboard.bulk_operations").await, 1);
    app.cleanup().await;
}

#[sqlx::test]
async fn runs_are_found_by_id_tail_step_state_and_time_with_stable_pages(pool: PgPool) {
    let app = TestApp::with(pool, &[], SeedOptions { users: 4, items_per_user: 2, seed: 3 }).await;
    let company = app.company.company_id;
    let all = insert_runs(&app.pool, company, 100..125).await;
    kill_step(&app.pool, &all[..5], "noop_1").await;

    // Ids of one second share their head; the tail tells them apart.
    let target = all[12];
    let tail = &target.simple().to_string()[20..];
    let (_, found) = app.get(&format!("/v1/offboardings?id_suffix={tail}")).await;
    assert_eq!(found["runs"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["runs"][0]["id"], target.to_string());
    let head = &target.to_string()[..13];
    let (_, found) = app.get(&format!("/v1/offboardings?id_prefix={head}&limit=500")).await;
    assert!(found["runs"].as_array().unwrap().iter().any(|r| r["id"] == target.to_string()));

    let (_, dead) = app.get("/v1/offboardings?step=noop_1&step_status=dead&limit=500").await;
    let mut ids: Vec<String> =
        dead["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().into()).collect();
    ids.sort();
    let mut expected: Vec<String> = all[..5].iter().map(|i| i.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected);

    let (_, none) = app.get("/v1/offboardings?created_after=2999-01-01T00:00:00Z").await;
    assert!(none["runs"].as_array().unwrap().is_empty());
    let (_, user) = app.get("/v1/offboardings?user_id=110").await;
    assert_eq!(user["runs"].as_array().unwrap().len(), 1);

    // Pages of 10 by keyset cursor: a run added meanwhile does not shift them.
    let (_, page1) = app.get("/v1/offboardings?limit=10").await;
    insert_run(&app.pool, company, 999).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/v1/offboardings?limit=10&cursor={cursor}")).await;
    let (_, page3) = app
        .get(&format!(
            "/v1/offboardings?limit=10&cursor={}",
            page2["next_cursor"].as_str().unwrap()
        ))
        .await;
    let mut seen: Vec<String> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(seen.len(), 25);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25, "no run twice across pages");

    for bad in ["id_suffix=xyz", "step=nope", "step_status=sleeping", "created_before=monday"] {
        let (status, err) = app.get(&format!("/v1/offboardings?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {err}");
        assert_eq!(err["error"]["code"], "invalid_query");
    }
    app.cleanup().await;
}

#[sqlx::test]
async fn a_failed_run_restarts_from_a_step_safe_to_repeat_and_others_are_refused_with_a_reason(
    pool: PgPool,
) {
    use offboard::{executor::Fault, steps::StepError};
    let app = TestApp::new(pool).await;
    app.workers.executor.faults.inject(
        "finish_deactivation",
        Fault::Fail(StepError::permanent("seat_service_down", "injected")),
    );
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.drain().await;
    assert_eq!(app.run(id).await["status"], "failed");

    // From uninstall_apps: it and what waits on it (finish_deactivation) go back.
    let (status, restarted) = app
        .post(&format!("/v1/offboardings/{id}/restart"), &json!({"step": "uninstall_apps"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{restarted}");
    let mut steps: Vec<&str> =
        restarted["steps"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    steps.sort();
    assert_eq!(steps, ["finish_deactivation", "uninstall_apps"]);
    let run = app.run(id).await;
    assert_eq!(run["status"], "running");
    let uninstall =
        run["steps"].as_array().unwrap().iter().find(|s| s["name"] == "uninstall_apps").unwrap();
    assert_eq!(uninstall["status"], "ready");
    assert_eq!(uninstall["attempts"], 0);
    app.drain().await;
    let run = app.wait_for_run(id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let event =
        run["history"].as_array().unwrap().iter().find(|e| e["kind"] == "restarted").unwrap();
    assert_eq!(event["actor"], "token:operator");
    assert_eq!(event["step"], "uninstall_apps");

    // A succeeded run does not restart.
    let (status, err) =
        app.post(&format!("/v1/offboardings/{id}/restart"), &json!({"step": "block_login"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["error"]["code"], "run_not_restartable");

    // A canceled deletion: erase_personal_data succeeded before... made so by hand; it is
    // not safe to repeat, so restarting from before it is refused, naming it.
    let other = app.enqueue(&app.deactivation(app.regular(1), json!({}))).await;
    app.drain().await;
    sqlx::query("UPDATE offboard.runs SET status = 'canceled' WHERE id = $1")
        .bind(other)
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, err) = app
        .post(&format!("/v1/offboardings/{other}/restart"), &json!({"step": "block_login"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "step_not_repeatable");
    assert_eq!(err["error"]["details"]["steps"], json!(["finish_deactivation"]));
    let (status, err) = app
        .post(&format!("/v1/offboardings/{other}/restart"), &json!({"step": "no_such_step"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["code"], "unknown_step");
    // Nothing changed by the refusals.
    assert_eq!(app.run(other).await["status"], "canceled");
    app.cleanup().await;
}

#[sqlx::test]
async fn the_series_show_steps_finished_and_failures_from_the_workers_samples(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let workers = app.start_workers();
    assert_eq!(app.wait_for_run(id).await["status"], "succeeded");
    let steps = app.count("SELECT count(*) FROM offboard.steps WHERE status = 'succeeded'").await;
    // The sweeper writes a sample a second; wait for the one that holds the run's last
    // steps: every attempt counted once, whichever second it ended in.
    let started = Instant::now();
    let series = loop {
        let (status, series) = app.get("/v1/stats/series?window=300&step=300").await;
        assert_eq!(status, StatusCode::OK, "{series}");
        let finished = series["points"][0]["steps_finished_per_s"].as_f64().unwrap_or(0.0);
        let counted = (finished * 300.0).round() as i64;
        assert!(counted <= steps, "more attempts counted than ran: {series}");
        if counted == steps {
            break series;
        }
        assert!(started.elapsed() < DEADLINE, "no sample with the run's steps: {series}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    workers.stop().await;
    assert_eq!(series["points"].as_array().unwrap().len(), 1);
    assert!(series["p95_ms"].as_u64().is_some(), "{series}");
    assert!(series["points"][0]["in_flight"].as_i64().is_some());
    let (_, hour) = app.get("/v1/stats/series").await;
    assert_eq!(hour["window_seconds"], 3600);
    assert_eq!(hour["points"].as_array().unwrap().len(), 120);
    let (status, err) = app.get("/v1/stats/series?window=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["code"], "invalid_query");
    app.cleanup().await;
}
