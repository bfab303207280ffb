//! Bulk offboarding from a file: refused rows by row number (CSV and JSON reach the same
//! parser and the same rules), all or nothing, the row limit, counts and cancel, scoped
//! tokens, idempotency, the batch id in the runs' filter and bulk retry, and a batch that
//! never starves another company.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use offboard::{
    crm::seed::{self, SeedOptions},
    ledger::bulk,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

use crate::helpers::{DEADLINE, TestApp};

/// Sends `body` with `content_type` (and optional extra headers) to `path` as `token`.
async fn send(
    app: &TestApp,
    token: &str,
    path: &str,
    content_type: &str,
    body: String,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response =
        app.router.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn runs_of_batch(app: &TestApp, batch: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM offboard.runs WHERE batch_id = $1::uuid")
        .bind(batch)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The bad rows of a 2,000-row batch: every 54th from row 1 (37 of them), each broken in
/// one of five ways, and the code and field a single request gets for it.
fn bad_rows() -> Vec<(usize, &'static str, Option<&'static str>)> {
    (0..37)
        .map(|k| {
            let row = 1 + 54 * k;
            match k % 5 {
                0 => (row, "user_not_found", None),
                1 => (row, "invalid_request", Some("action")),
                2 => (row, "invalid_request", Some("effective_at")),
                3 => (row, "self_offboarding", Some("actor_user_id")),
                _ => (row, "invalid_request", Some("user_id")),
            }
        })
        .collect()
}

/// Row `row` of the batch as (company_id, user_id, action, effective_at, actor), broken
/// where [`bad_rows`] says.
fn row_fields(app: &TestApp, users: &[i64], row: usize) -> (i64, Value, &'static str, String, i64) {
    let user = users[row - 1];
    let (company, admin) = (app.company.company_id, app.admin());
    match bad_rows().iter().find(|b| b.0 == row).map(|b| (b.1, b.2)) {
        Some(("user_not_found", _)) => {
            (company, json!(900_000_000 + row as i64), "deactivate", String::new(), admin)
        }
        Some((_, Some("action"))) => (company, json!(user), "fire", String::new(), admin),
        Some((_, Some("effective_at"))) => {
            (company, json!(user), "deactivate", "2001-01-01T00:00:00Z".into(), admin)
        }
        Some((_, Some("actor_user_id"))) => {
            (company, json!(user), "deactivate", String::new(), user)
        }
        Some(_) => (company, json!("abc"), "deactivate", String::new(), admin),
        None => (company, json!(user), "deactivate", String::new(), admin),
    }
}

async fn app_with_users(pool: PgPool, users: usize) -> (TestApp, Vec<i64>) {
    let app = TestApp::with(pool, &[], SeedOptions { users, items_per_user: 0, seed: 5 }).await;
    let regular: Vec<i64> =
        app.company.users.iter().filter(|u| !u.is_admin).map(|u| u.id).collect();
    (app, regular)
}

fn refused_of(answer: &Value) -> Vec<(usize, String, Option<String>)> {
    answer["refused"]
        .as_array()
        .unwrap_or_else(|| panic!("no refused list: {answer}"))
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().unwrap() as usize,
                r["code"].as_str().unwrap().to_string(),
                r["field"].as_str().map(String::from),
            )
        })
        .collect()
}

fn expected_refusals() -> Vec<(usize, String, Option<String>)> {
    bad_rows().into_iter().map(|(r, c, f)| (r, c.to_string(), f.map(String::from))).collect()
}

#[sqlx::test]
async fn a_csv_batch_of_2000_rows_with_37_bad_ones_reports_exactly_those_37_by_row_number(
    pool: PgPool,
) {
    let (app, users) = app_with_users(pool, 2_250).await;
    let mut csv = String::from("company_id,user_id,action,effective_at,plan,actor_user_id\n");
    for row in 1..=2_000 {
        let (company, user, action, at, actor) = row_fields(&app, &users, row);
        let user = user.as_i64().map(|u| u.to_string()).unwrap_or("abc".into());
        csv.push_str(&format!("{company},{user},{action},{at},,{actor}\n"));
    }
    let (status, answer) =
        send(&app, app.token(), "/v1/offboarding-batches", "text/csv", csv, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(refused_of(&answer), expected_refusals());
    assert_eq!(answer["rows_total"], 2_000);
    assert_eq!(answer["rows_accepted"], 1_963);
    assert_eq!(answer["status"], "written");
    let batch = answer["id"].as_str().unwrap();
    assert_eq!(runs_of_batch(&app, batch).await, 1_963);
    assert_eq!(answer["runs"]["total"], 1_963);
    assert_eq!(answer["runs"]["by_status"]["queued"], 1_963, "{}", answer["runs"]);
}

#[sqlx::test]
async fn a_json_batch_of_2000_rows_with_37_bad_ones_reports_the_same_37(pool: PgPool) {
    let (app, users) = app_with_users(pool, 2_250).await;
    let rows: Vec<Value> = (1..=2_000)
        .map(|row| {
            let (company, user, action, at, actor) = row_fields(&app, &users, row);
            let mut body = json!({"company_id": company, "user_id": user, "action": action});
            if !at.is_empty() {
                body["effective_at"] = json!(at);
            }
            // The batch's actor stands for rows that name none.
            if actor != app.admin() {
                body["actor_user_id"] = json!(actor);
            }
            body
        })
        .collect();
    let body = json!({"rows": rows, "actor_user_id": app.admin()}).to_string();
    let (status, answer) =
        send(&app, app.token(), "/v1/offboarding-batches", "application/json", body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(refused_of(&answer), expected_refusals());
    assert_eq!(answer["rows_accepted"], 1_963);
    assert_eq!(runs_of_batch(&app, answer["id"].as_str().unwrap()).await, 1_963);
}

#[sqlx::test]
async fn all_or_nothing_creates_nothing_when_any_row_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (a, b, c) = (app.regular(0), app.regular(1), app.regular(2));
    let (company, admin) = (app.company.company_id, app.admin());
    // The last row names as target a user an earlier row deactivates: only the rules in
    // the store see it, so the check runs every row through the enqueue path.
    let plan = format!(
        "\"{{\"\"default\"\": {{\"\"mode\"\": \"\"single\"\", \"\"targets\"\": [{{\"\"user_id\"\": {a}}}]}}}}\""
    );
    let csv = format!(
        "company_id,user_id,action,plan\n{company},{a},deactivate,\n{company},{b},deactivate,\n{company},{c},deactivate,{plan}\n"
    );
    let path = format!("/v1/offboarding-batches?all_or_nothing=true&actor_user_id={admin}");
    let (status, err) = send(&app, app.token(), &path, "text/csv", csv, &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "rows_refused");
    let refused = &err["error"]["details"]["refused"];
    assert_eq!(refused.as_array().unwrap().len(), 1, "{refused}");
    assert_eq!(refused[0]["row"], 3);
    assert_eq!(refused[0]["code"], "invalid_target");
    assert_eq!(refused[0]["field"], "transfer.default.targets[0].user_id");
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 0);

    let rows = json!([{"company_id": company, "user_id": a, "action": "deactivate"},
                      {"company_id": company, "user_id": b, "action": "nope"}]);
    let body = json!({"rows": rows, "actor_user_id": admin, "all_or_nothing": true}).to_string();
    let (status, err) =
        send(&app, app.token(), "/v1/offboarding-batches", "application/json", body, &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["details"]["refused"][0]["row"], 2);
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 0);

    // Without a bad row, all of them are written.
    let rows = json!([{"company_id": company, "user_id": a, "action": "deactivate"},
                      {"company_id": company, "user_id": b, "action": "deactivate"}]);
    let body = json!({"rows": rows, "actor_user_id": admin, "all_or_nothing": true}).to_string();
    let (status, answer) =
        send(&app, app.token(), "/v1/offboarding-batches", "application/json", body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["rows_accepted"], 2);
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 2);
}

#[sqlx::test]
async fn a_batch_whose_actor_is_not_a_user_id_is_refused_whole_and_creates_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (company, user) = (app.company.company_id, app.regular(0));
    let rows = json!([{"company_id": company, "user_id": user, "action": "deactivate"}]);
    for actor in [json!([app.admin()]), json!(String::from("x")), json!(0)] {
        let body = json!({"rows": rows, "actor_user_id": actor}).to_string();
        let path = format!("/v1/offboarding-batches?actor_user_id={}", app.admin());
        let (status, err) = send(&app, app.token(), &path, "application/json", body, &[]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{actor}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request");
        assert_eq!(err["error"]["field"], "actor_user_id");
    }
    assert_eq!(app.count("SELECT count(*) FROM offboard.offboarding_batches").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 0);
}

#[sqlx::test]
async fn a_batch_over_10000_rows_is_refused_with_a_clear_error_and_creates_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (company, user) = (app.company.company_id, app.regular(0));
    let mut csv = String::from("company_id,user_id,action,actor_user_id\n");
    for _ in 0..10_001 {
        csv.push_str(&format!("{company},{user},deactivate,{}\n", app.admin()));
    }
    let (status, err) =
        send(&app, app.token(), "/v1/offboarding-batches", "text/csv", csv, &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "too_many_rows");
    assert_eq!(err["error"]["field"], "rows");
    assert_eq!(err["error"]["details"]["max_rows"], 10_000);
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM offboard.offboarding_batches").await, 0);
}

const TOKENS: &[(&str, &str)] =
    &[("OFFBOARD_API_TOKENS", "batch-company-token@1,batch-other-token@2")];

#[sqlx::test]
async fn a_scoped_token_submits_only_its_companys_rows_and_sees_only_its_batches(pool: PgPool) {
    let app =
        TestApp::with(pool, TOKENS, SeedOptions { users: 8, items_per_user: 2, seed: 7 }).await;
    assert_eq!(app.company.company_id, 1);
    let other =
        seed::seed(&app.pool, SeedOptions { users: 6, items_per_user: 2, seed: 9 }).await.unwrap();
    let theirs = other.users.iter().find(|u| !u.is_admin).unwrap().id;
    let rows = json!([
        {"company_id": 1, "user_id": app.regular(0), "action": "deactivate", "actor_user_id": app.admin()},
        {"company_id": 2, "user_id": theirs, "action": "deactivate", "actor_user_id": other.admin_ids[0]},
    ]);
    let body = json!({"rows": rows}).to_string();
    let (status, answer) =
        send(&app, "batch-company-token", "/v1/offboarding-batches", "application/json", body, &[])
            .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(refused_of(&answer), [(2, "not_found".to_string(), Some("company_id".into()))]);
    assert_eq!(answer["submitted_by"], "token:company-1");
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs WHERE company_id = 2").await, 0);
    let batch = answer["id"].as_str().unwrap().to_string();

    let get = |token: &'static str, path: String| {
        let router = app.router.clone();
        async move {
            let request = Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    let (status, _) = get("batch-other-token", format!("/v1/offboarding-batches/{batch}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = get("batch-other-token", "/v1/offboarding-batches".into()).await;
    assert_eq!(list["batches"].as_array().unwrap().len(), 0, "{list}");
    let (status, _) = send(
        &app,
        "batch-other-token",
        &format!("/v1/offboarding-batches/{batch}/cancel"),
        "application/json",
        "{}".into(),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = get("batch-company-token", "/v1/offboarding-batches".into()).await;
    assert_eq!(list["batches"][0]["id"], batch.as_str(), "{list}");
    assert_eq!(list["batches"][0]["runs"]["total"], 1);
}

#[sqlx::test]
async fn a_repeated_submission_with_the_same_idempotency_key_returns_the_first_batch(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (company, admin) = (app.company.company_id, app.admin());
    let csv = format!("company_id,user_id,action\n{company},{},deactivate\n", app.regular(0));
    let path = format!("/v1/offboarding-batches?actor_user_id={admin}");
    let key = [("idempotency-key", "layoff-2026-12")];
    let (status, first) = send(&app, app.token(), &path, "text/csv", csv.clone(), &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = send(&app, app.token(), &path, "text/csv", csv.clone(), &key).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["replayed"], true);
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 1);
    let other = format!("company_id,user_id,action\n{company},{},deactivate\n", app.regular(1));
    let (status, err) = send(&app, app.token(), &path, "text/csv", other, &key).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
}

/// Works through every unfinished bulk operation, as a worker's sweeper would.
async fn work_bulk_operations(app: &TestApp) {
    while let Some((id, token)) =
        bulk::take_unfinished(&app.pool, "test", Duration::from_secs(5)).await.unwrap()
    {
        while let Some(chunk) =
            bulk::run_chunk(&app.pool, id, token, 100, Duration::from_secs(5)).await.unwrap()
        {
            if chunk.finished {
                break;
            }
        }
    }
}

#[sqlx::test]
async fn cancel_stops_every_unfinished_run_of_the_batch_and_the_counts_show_it(pool: PgPool) {
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 12, items_per_user: 20, seed: 7 }).await;
    let (company, admin) = (app.company.company_id, app.admin());
    let heir = app.regular(5);
    let later = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    let plan = json!({"default": {"mode": "single", "targets": [{"user_id": heir}]}});
    let mut rows: Vec<Value> = (0..2)
        .map(|n| json!({"company_id": company, "user_id": app.regular(n), "action": "deactivate", "plan": plan}))
        .collect();
    rows.extend((2..5).map(|n| {
        json!({"company_id": company, "user_id": app.regular(n), "action": "deactivate", "effective_at": later})
    }));
    let body = json!({"rows": rows, "actor_user_id": admin}).to_string();
    let (status, answer) =
        send(&app, app.token(), "/v1/offboarding-batches", "application/json", body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let batch = answer["id"].as_str().unwrap().to_string();
    assert_eq!(answer["runs"]["eta_seconds"], Value::Null, "nothing finished yet");
    // A run outside the batch, of the same company, that the cancel must leave alone.
    let outside = app.enqueue(&app.deactivation(app.regular(6), json!({}))).await;
    app.drain().await;

    let (_, view) = app.get(&format!("/v1/offboarding-batches/{batch}")).await;
    assert_eq!(view["runs"]["by_status"], json!({"succeeded": 2, "scheduled": 3}), "{view}");
    assert_eq!(view["runs"]["finished"], 2);
    let moved: i64 = app
        .count(&format!(
            "SELECT coalesce(sum(done), 0)::bigint FROM offboard.steps s JOIN offboard.runs r
             ON r.id = s.run_id WHERE r.batch_id = '{batch}' AND s.name LIKE 'reassign\\_%'"
        ))
        .await;
    assert!(moved > 0);
    assert_eq!(view["runs"]["items_moved"], moved);
    assert!(view["runs"]["eta_seconds"].as_i64().is_some(), "{view}");

    let (status, op) =
        app.post(&format!("/v1/offboarding-batches/{batch}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["matched"], 3, "{op}");
    work_bulk_operations(&app).await;
    let (_, view) = app.get(&format!("/v1/offboarding-batches/{batch}")).await;
    assert_eq!(view["runs"]["by_status"], json!({"succeeded": 2, "canceled": 3}), "{view}");
    assert_eq!(view["runs"]["eta_seconds"], 0);
    assert_eq!(app.run(outside).await["status"], "succeeded");
    // The run views and the runs list name the batch.
    let (_, list) = app.get(&format!("/v1/offboardings?batch_id={batch}")).await;
    let listed = list["runs"].as_array().unwrap();
    assert_eq!(listed.len(), 5, "{list}");
    assert!(listed.iter().all(|r| r["batch_id"] == batch.as_str()));
    let id: Uuid = listed[0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.run(id).await["batch_id"], batch.as_str());
    assert_eq!(app.run(outside).await["batch_id"], Value::Null);

    // The audit export names the batch each run came from (the last CSV column).
    let request = Request::get(format!("/v1/companies/{company}/audit?format=csv"))
        .header("authorization", format!("Bearer {}", app.token()))
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    let mut reader = csv::Reader::from_reader(&bytes[..]);
    assert_eq!(reader.headers().unwrap().iter().next_back(), Some("batch_id"));
    let run_rows: Vec<(String, String)> = reader
        .records()
        .map(|r| r.unwrap())
        .filter(|r| &r[0] == "run")
        .map(|r| (r[2].to_string(), r[r.len() - 1].to_string()))
        .collect();
    assert_eq!(run_rows.len(), 6);
    for (run, from) in run_rows {
        let expected = if run == outside.to_string() { String::new() } else { batch.clone() };
        assert_eq!(from, expected, "run {run}");
    }
}

/// Puts `block_login` of each run dead and the run failed, as a permanent failure would.
async fn kill_first_step(app: &TestApp, runs: &[Uuid]) {
    sqlx::query(
        "UPDATE offboard.steps SET status = 'dead', attempts = 1, finished_at = now(),
                last_error_code = 'vendor_down'
         WHERE run_id = ANY ($1) AND name = 'block_login'",
    )
    .bind(runs)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE offboard.runs SET status = 'failed', started_at = now() WHERE id = ANY ($1)",
    )
    .bind(runs)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn batch_of(app: &TestApp, users: &[i64]) -> (String, Vec<Uuid>) {
    let rows: Vec<Value> = users
        .iter()
        .map(
            |u| json!({"company_id": app.company.company_id, "user_id": u, "action": "deactivate"}),
        )
        .collect();
    let body = json!({"rows": rows, "actor_user_id": app.admin()}).to_string();
    let (status, answer) =
        send(app, app.token(), "/v1/offboarding-batches", "application/json", body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let batch = answer["id"].as_str().unwrap().to_string();
    let runs: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM offboard.runs WHERE batch_id = $1::uuid ORDER BY id")
            .bind(&batch)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    (batch, runs)
}

#[sqlx::test]
async fn a_bulk_retry_by_batch_id_touches_exactly_that_batchs_runs(pool: PgPool) {
    let app = TestApp::with(pool, &[], SeedOptions { users: 20, items_per_user: 2, seed: 4 }).await;
    let users: Vec<i64> = app.company.users.iter().filter(|u| !u.is_admin).map(|u| u.id).collect();
    let (ours, our_runs) = batch_of(&app, &users[0..5]).await;
    let (_, their_runs) = batch_of(&app, &users[5..9]).await;
    let loose = app.enqueue(&app.deactivation(users[9], json!({}))).await;
    let all = [&our_runs[..], &their_runs[..], &[loose][..]].concat();
    kill_first_step(&app, &all).await;

    let filter = json!({"batch_id": ours, "step_status": "dead"});
    let (status, dry) =
        app.post("/v1/offboardings/bulk-retry", &json!({"filter": filter, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["matched"], 5);
    let (status, op) = app.post("/v1/offboardings/bulk-retry", &json!({"filter": filter})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    work_bulk_operations(&app).await;
    let retried: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT run_id FROM offboard.run_events WHERE kind = 'retried' ORDER BY run_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(retried, our_runs);
    app.drain().await;
    for run in &our_runs {
        assert_eq!(app.run(*run).await["status"], "succeeded");
    }
    for run in their_runs.iter().chain([&loose]) {
        assert_eq!(app.run(*run).await["status"], "failed");
    }
    let (status, err) = app.get("/v1/offboardings?batch_id=not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
}

#[sqlx::test]
async fn a_2000_row_batch_of_one_company_never_starves_a_run_of_another(pool: PgPool) {
    let (app, users) = app_with_users(pool, 2_250).await;
    let other =
        seed::seed(&app.pool, SeedOptions { users: 6, items_per_user: 0, seed: 9 }).await.unwrap();
    let theirs: Vec<i64> = other.users.iter().filter(|u| !u.is_admin).map(|u| u.id).collect();
    let single = |user: i64| {
        json!({"company_id": other.company_id, "user_id": user, "actor_user_id": other.admin_ids[0],
               "action": "deactivate"})
    };
    let workers = app.start_workers();
    let finished = |id: Uuid| {
        let app = &app;
        async move {
            let started = Instant::now();
            app.wait_for_run(id).await;
            started.elapsed()
        }
    };
    // The other company's run alone, on idle workers.
    let alone = finished(app.enqueue(&single(theirs[0])).await).await;

    let rows: Vec<Value> = users[..2_000]
        .iter()
        .map(
            |u| json!({"company_id": app.company.company_id, "user_id": u, "action": "deactivate"}),
        )
        .collect();
    let body = json!({"rows": rows, "actor_user_id": app.admin()}).to_string();
    let (status, answer) =
        send(&app, app.token(), "/v1/offboarding-batches", "application/json", body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let batch = answer["id"].as_str().unwrap().to_string();
    let during = finished(app.enqueue(&single(theirs[1])).await).await;
    let (_, view) = app.get(&format!("/v1/offboarding-batches/{batch}")).await;
    let batch_left =
        view["runs"]["total"].as_i64().unwrap() - view["runs"]["finished"].as_i64().unwrap();
    println!(
        "the other company's run: alone {alone:?}, beside the batch {during:?}; batch runs left then: {batch_left}"
    );
    // Enqueued after all 2,000 rows of the batch, the other company's run finished while
    // most of the batch had not: it did not wait behind the batch (in first-come order it
    // would have waited for every run of it). The per-company cap keeps the batch to its
    // share of the queue, so each step of the other run waits behind at most that many.
    assert!(batch_left > 1_000, "the run waited for the batch: {view}");
    assert!(during < DEADLINE);
    workers.stop().await;
    app.cleanup().await;
}

#[sqlx::test]
async fn a_row_with_a_nul_in_an_unknown_field_is_refused_like_any_other(pool: PgPool) {
    let (app, users) = app_with_users(pool, 8).await;
    let (company, admin) = (app.company.company_id, app.admin());
    let body = json!({"actor_user_id": admin, "rows": [
        {"company_id": company, "user_id": users[0], "action": "deactivate"},
        {"company_id": company, "user_id": users[1], "action": "deactivate", "x\u{0}y": 1},
    ]});
    let (status, answer) = send(
        &app,
        app.token(),
        "/v1/offboarding-batches",
        "application/json",
        body.to_string(),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["rows_accepted"], 1, "{answer}");
    assert_eq!(answer["refused"][0]["row"], 2, "{answer}");
    assert_eq!(answer["refused"][0]["code"], "invalid_request", "{answer}");
    let batch = answer["id"].as_str().unwrap().to_string();
    let (status, _, stored) =
        app.call(Method::GET, &format!("/v1/offboarding-batches/{batch}"), None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["refused"][0]["row"], 2, "{stored}");
}
