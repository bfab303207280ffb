//! The audit export: one row per run and per history entry of the company, streamed as
//! NDJSON or CSV, ids and counts only, a company-scoped token sees only its company.

use std::collections::HashSet;

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use offboard::crm::seed::{self, SeedOptions};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::helpers::TestApp;

/// GETs `path` with `token` and returns the status, the content type and the raw body.
async fn fetch(app: &TestApp, path: &str, token: &str) -> (StatusCode, String, String) {
    let request = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 28).await.unwrap();
    (status, content_type, String::from_utf8(bytes.to_vec()).unwrap())
}

fn ndjson(body: &str) -> Vec<Value> {
    body.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect()
}

const TOKENS: &[(&str, &str)] =
    &[("OFFBOARD_API_TOKENS", "audit-operator-token,audit-company-token@1,audit-other-token@2")];

#[sqlx::test]
async fn the_export_has_a_row_per_run_and_per_event_with_ids_only(pool: PgPool) {
    let app =
        TestApp::with(pool, TOKENS, SeedOptions { users: 8, items_per_user: 20, seed: 7 }).await;
    let company = app.company.company_id;
    assert_eq!(company, 1);
    let other =
        seed::seed(&app.pool, SeedOptions { users: 4, items_per_user: 5, seed: 9 }).await.unwrap();
    let (user, heir) = (app.regular(0), app.regular(1));
    let moved = app
        .enqueue(&app.deactivation(
            user,
            json!({"deals": {"mode": "single", "targets": [{"user_id": heir}]}}),
        ))
        .await;
    let mut later = app.deactivation(app.regular(2), json!({}));
    later["effective_at"] = json!((chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339());
    let canceled = app.enqueue(&later).await;
    app.post(&format!("/v1/offboardings/{canceled}/cancel"), &json!({})).await;
    let foreign = app
        .enqueue(&json!({"company_id": other.company_id, "user_id": other.users.iter().find(|u| !u.is_admin).unwrap().id,
                          "actor_user_id": other.admin_ids[0], "action": "deactivate"}))
        .await;
    app.drain().await;

    let (status, content_type, body) =
        fetch(&app, &format!("/v1/companies/{company}/audit"), "audit-company-token").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/x-ndjson");
    let rows = ndjson(&body);
    let runs: Vec<&Value> = rows.iter().filter(|r| r["record"] == "run").collect();
    let events: Vec<&Value> = rows.iter().filter(|r| r["record"] == "event").collect();
    assert_eq!(runs.len(), 2);
    let expected_events = app
        .count("SELECT count(*) FROM offboard.run_events e JOIN offboard.runs r ON r.id = e.run_id WHERE r.company_id = 1")
        .await;
    assert_eq!(events.len() as i64, expected_events);
    assert!(rows.iter().all(|r| r["company_id"] == company), "another company's row");
    assert!(!body.contains(&foreign.to_string()));

    let run = runs.iter().find(|r| r["run_id"] == moved.to_string()).unwrap();
    assert_eq!(run["actor"], format!("user:{}", app.admin()));
    assert_eq!(run["status"], "succeeded");
    let deals_moved: i64 = sqlx::query_scalar(
        "SELECT (result -> 'to' ->> $2::text)::bigint FROM offboard.steps WHERE run_id = $1 AND name = 'reassign_deals'",
    )
    .bind(moved)
    .bind(heir.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(deals_moved > 0);
    assert_eq!(run["items_by_recipient"][heir.to_string()]["deals"], deals_moved, "{run}");
    assert!(run["step_counts"]["reassign_deals"].is_object(), "{run}");
    let kinds: HashSet<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(kinds.contains("enqueued") && kinds.contains("canceled"), "{kinds:?}");

    // No personal data: no user's name or email of the company appears.
    let personal: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT name, email FROM crm.users WHERE company_id = 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    for (name, email) in personal {
        for text in [name, email].into_iter().flatten() {
            assert!(!body.contains(&text), "personal data in the export: {text}");
        }
    }

    // The same rows as CSV, with a header.
    let (status, content_type, csv_body) =
        fetch(&app, &format!("/v1/companies/{company}/audit?format=csv"), "audit-operator-token")
            .await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let mut reader = csv::Reader::from_reader(csv_body.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(&header[..4], ["record", "at", "run_id", "company_id"]);
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), rows.len());
    let items_column = header.iter().position(|h| h == "items_by_recipient").unwrap();
    let csv_run = records.iter().find(|r| &r[2] == moved.to_string().as_str()).unwrap();
    let items: Value = serde_json::from_str(&csv_run[items_column]).unwrap();
    assert_eq!(items[heir.to_string()]["deals"], deals_moved);
}

#[sqlx::test]
async fn a_company_token_sees_only_its_company_and_bad_queries_are_refused(pool: PgPool) {
    let app =
        TestApp::with(pool, TOKENS, SeedOptions { users: 4, items_per_user: 5, seed: 7 }).await;
    let (status, _, body) = fetch(&app, "/v1/companies/1/audit", "audit-other-token").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = fetch(&app, "/v1/companies/1/audit", "audit-company-token").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    for query in [
        "format=xml",
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
        "colour=red",
    ] {
        let (status, _, body) =
            fetch(&app, &format!("/v1/companies/1/audit?{query}"), "audit-operator-token").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "invalid_query", "{query}");
    }
}

#[sqlx::test]
async fn a_long_history_streams_every_row_once_in_pages_within_the_window(pool: PgPool) {
    let app =
        TestApp::with(pool, TOKENS, SeedOptions { users: 4, items_per_user: 5, seed: 7 }).await;
    // 1,200 finished runs over 1,200 minutes, each with two history entries: several
    // pages of runs and of events.
    sqlx::query(
        "WITH made AS (
             INSERT INTO offboard.runs (id, company_id, user_id, action, status, actor_user_id,
                                        steps_total, steps_remaining, created_at)
             SELECT gen_random_uuid(), 1, $1, 'deactivate', 'succeeded', $2, 0, 0,
                    '2026-11-01T00:00:00Z'::timestamptz + make_interval(mins => n)
             FROM generate_series(1, 1200) n
             RETURNING id, created_at)
         INSERT INTO offboard.run_events (run_id, kind, actor, at)
         SELECT id, kind, 'system', created_at FROM made, unnest(ARRAY['enqueued', 'succeeded']) kind",
    )
    .bind(app.regular(0))
    .bind(app.admin())
    .execute(&app.pool)
    .await
    .unwrap();
    let (status, _, body) = fetch(&app, "/v1/companies/1/audit", "audit-operator-token").await;
    assert_eq!(status, StatusCode::OK);
    let rows = ndjson(&body);
    let runs: HashSet<&str> =
        rows.iter().filter(|r| r["record"] == "run").filter_map(|r| r["run_id"].as_str()).collect();
    assert_eq!(runs.len(), 1200);
    assert_eq!(rows.iter().filter(|r| r["record"] == "run").count(), 1200, "a run twice");
    assert_eq!(rows.iter().filter(|r| r["record"] == "event").count(), 2400);

    // A window of 100 minutes: the runs created and the entries made in it.
    let (_, _, body) = fetch(
        &app,
        "/v1/companies/1/audit?from=2026-11-01T01:00:00Z&to=2026-11-01T02:40:00Z",
        "audit-operator-token",
    )
    .await;
    let rows = ndjson(&body);
    assert_eq!(rows.iter().filter(|r| r["record"] == "run").count(), 100);
    assert_eq!(rows.iter().filter(|r| r["record"] == "event").count(), 200);
}
