//! The operators' dashboard: the page at `/` loads without a token, and `GET /v1/stats`
//! counts runs, steps, throughput and purges — for a company-scoped token, its company only.

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use offboard::{
    api::{self, AppState},
    crm::seed::{self, SeedOptions},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::helpers::{TestApp, database_url_of, test_settings};

/// One request to `router`; returns the status, the content type and the body as text.
async fn fetch(router: &Router, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut request = Request::builder().uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response =
        router.clone().oneshot(request.body(Body::empty()).expect("request")).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.expect("body");
    (status, content_type, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

async fn fetch_json(router: &Router, path: &str, token: &str) -> (StatusCode, Value) {
    let (status, _, body) = fetch(router, path, Some(token)).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[sqlx::test]
async fn the_dashboard_page_and_its_assets_load_without_a_token(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (status, content_type, html) = fetch(&app.router, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(html.contains(r#"<script src="/dashboard/app.js""#), "{html}");
    assert!(html.contains(r#"href="/dashboard/style.css""#));

    let (status, content_type, script) = fetch(&app.router, "/dashboard/app.js", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/javascript; charset=utf-8");
    assert!(script.contains("/v1/stats"));
    let (status, content_type, _) = fetch(&app.router, "/dashboard/style.css", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/css; charset=utf-8");

    // The page is static; the data behind it still needs a token.
    let (status, _, body) = fetch(&app.router, "/v1/stats", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    app.cleanup().await;
}

#[sqlx::test]
async fn stats_count_runs_steps_throughput_and_due_purges(pool: PgPool) {
    // Purges fall due the moment a deactivation finishes; nothing here fires them.
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_PRIVATE_EMAIL_RETENTION", "0s"), ("OFFBOARD_STATS_MAX_AGE", "0s")],
        SeedOptions { users: 8, items_per_user: 20, seed: 7 },
    )
    .await;
    let (status, empty) = app.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["runs"]["succeeded"], 0);
    assert_eq!(empty["throughput"], json!({"window_seconds": 60, "steps_succeeded": 0}));
    assert_eq!(empty["purges"], json!({"due": 0, "scheduled": 0, "done": 0}));
    assert_eq!(empty["queue_depth"]["steps"], json!({"scheduled": 0, "active": 0}));

    let finished = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.drain().await;
    let waiting = app.enqueue(&app.deactivation(app.regular(1), json!({}))).await;
    let run = app.run(finished).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let succeeded_steps =
        run["steps"].as_array().unwrap().iter().filter(|s| s["status"] == "succeeded").count()
            as i64;
    let waiting_steps = app.run(waiting).await["steps"].as_array().unwrap().len() as i64;

    let (status, stats) = app.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["company_id"], Value::Null);
    assert_eq!(
        stats["runs"],
        json!({
            "scheduled": 0, "awaiting_approval": 0, "queued": 1, "running": 0, "canceling": 0,
            "succeeded": 1, "failed": 0, "canceled": 0, "expired": 0, "rejected": 0,
        })
    );
    assert_eq!(stats["steps"]["succeeded"], succeeded_steps);
    let steps_total: i64 =
        stats["steps"].as_object().unwrap().values().map(|n| n.as_i64().unwrap()).sum();
    assert_eq!(steps_total, run["steps"].as_array().unwrap().len() as i64 + waiting_steps);
    assert_eq!(stats["steps"]["dead"], 0);
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats["throughput"]["steps_succeeded"], succeeded_steps);
    assert_eq!(stats["purges"], json!({"due": 1, "scheduled": 1, "done": 0}));
    assert!(stats["queue_depth"]["purges"]["scheduled"].is_u64(), "{stats}");

    // Steps that finished over a minute ago no longer count towards throughput.
    sqlx::query("UPDATE offboard.steps SET finished_at = finished_at - interval '2 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, later) = app.get("/v1/stats").await;
    assert_eq!(later["throughput"]["steps_succeeded"], 0);
    assert_eq!(later["steps"]["succeeded"], succeeded_steps);
    app.cleanup().await;
}

/// Runs that ended in an expiry or a rejection are counted like any other (the header used
/// to list six of the ten run statuses, so those runs vanished from it).
#[sqlx::test]
async fn stats_count_expired_and_rejected_runs(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_STATS_MAX_AGE", "0s")],
        SeedOptions { users: 4, items_per_user: 2, seed: 7 },
    )
    .await;
    let expired = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let rejected = app.enqueue(&app.deactivation(app.regular(1), json!({}))).await;
    // How the approval flow ends them is its own tests' business; here only the count.
    for (run, status) in [(expired, "expired"), (rejected, "rejected")] {
        sqlx::query("UPDATE offboard.runs SET status = $2, finished_at = now() WHERE id = $1")
            .bind(run)
            .bind(status)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    let (status, stats) = app.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["runs"]["expired"], 1, "{stats}");
    assert_eq!(stats["runs"]["rejected"], 1, "{stats}");
    let runs_total: i64 =
        stats["runs"].as_object().unwrap().values().map(|n| n.as_i64().unwrap()).sum();
    assert_eq!(runs_total, 2, "every run counted once: {stats}");
    app.cleanup().await;
}

/// A company's stats count its steps in every status: the finished ones from the company's
/// index of finished steps, the others through its active runs.
#[sqlx::test]
async fn a_company_s_stats_count_its_steps_in_every_status(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.drain().await;
    let open = app.enqueue(&app.deactivation(app.regular(1), json!({}))).await;
    // Two of the open run's steps as a worker would hold them: queued, and running.
    sqlx::query(
        "UPDATE offboard.steps SET status = CASE position WHEN 2 THEN 'queued' ELSE 'running' END
         WHERE run_id = $1 AND position IN (2, 3)",
    )
    .bind(open)
    .execute(&app.pool)
    .await
    .unwrap();
    let expected: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM offboard.steps WHERE company_id = $1 GROUP BY status",
    )
    .bind(app.company.company_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(expected.len() >= 4, "succeeded, pending, queued and running: {expected:?}");

    let (status, stats) =
        app.get(&format!("/v1/stats?company_id={}", app.company.company_id)).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    for (step_status, n) in &expected {
        assert_eq!(stats["steps"][step_status], *n, "{step_status}: {stats}");
    }
    let total: i64 = expected.iter().map(|(_, n)| n).sum();
    let counted: i64 =
        stats["steps"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(counted, total, "{stats}");
    assert_eq!(stats["in_flight"], 2, "{stats}");
    app.cleanup().await;
}

#[sqlx::test]
async fn a_company_scoped_token_sees_stats_of_its_company_only(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let other =
        seed::seed(&pool, SeedOptions { users: 4, items_per_user: 5, seed: 99 }).await.unwrap();
    let other_user = other.users.iter().find(|u| !u.is_admin).unwrap().id;
    app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.enqueue(&app.deactivation(app.regular(1), json!({}))).await;
    app.enqueue(&json!({
        "company_id": other.company_id, "user_id": other_user,
        "actor_user_id": other.admin_ids[0], "action": "deactivate",
    }))
    .await;

    let scoped = "scoped-token-for-the-other-company";
    let settings = test_settings(
        &database_url_of(&pool),
        app.queues.prefix(),
        &[("OFFBOARD_API_TOKENS", &format!("{scoped}@{}", other.company_id))],
    );
    let router =
        api::router(AppState::new(pool.clone(), app.queues.clone(), settings, app.nudge.clone()));

    let (status, stats) = fetch_json(&router, "/v1/stats", scoped).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["company_id"], other.company_id);
    assert_eq!(stats["runs"]["queued"], 1, "another company's runs were counted: {stats}");
    // Redis is shared by every company: its depth is not shown to a scoped token.
    assert_eq!(stats["queue_depth"], Value::Null);

    let (status, stats) =
        fetch_json(&router, &format!("/v1/stats?company_id={}", other.company_id), scoped).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["runs"]["queued"], 1);
    let (status, err) =
        fetch_json(&router, &format!("/v1/stats?company_id={}", app.company.company_id), scoped)
            .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "not_found");

    // An unscoped token may narrow to one company, and sees all without a filter.
    let (_, all) = app.get("/v1/stats").await;
    assert_eq!(all["runs"]["queued"], 3);
    let (_, one) = app.get(&format!("/v1/stats?company_id={}", app.company.company_id)).await;
    assert_eq!(one["runs"]["queued"], 2);
    assert_eq!(one["company_id"], app.company.company_id);
    let (status, err) = app.get("/v1/stats?company_id=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["code"], "invalid_query");
    app.cleanup().await;
}
