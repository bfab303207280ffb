//! `/metrics` parses as Prometheus text and carries what operators need; `/openapi.json`
//! documents every API route.

use std::io;

use axum::http::{Method, StatusCode};
use offboard::{config::DEV_TOKEN, executor::Fault, steps::StepError};
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, database_url_of, test_settings};

async fn scrape_metrics(
    router: &axum::Router,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut request = axum::http::Request::get("/metrics");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = tower::ServiceExt::oneshot(
        router.clone(),
        request.body(axum::body::Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, String::from_utf8(bytes.to_vec()).unwrap())
}

#[sqlx::test]
async fn metrics_refuse_a_missing_or_company_scoped_token(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let scoped = "scoped-token-of-one-company";
    let settings = test_settings(
        &database_url_of(&pool),
        app.queues.prefix(),
        &[(
            "OFFBOARD_API_TOKENS",
            &format!("{scoped}@{},unscoped-token-of-ops", app.company.company_id),
        )],
    );
    let router = offboard::api::router(offboard::api::AppState::new(
        pool.clone(),
        app.queues.clone(),
        settings,
        app.nudge.clone(),
    ));
    let (status, _, body) = scrape_metrics(&router, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, body) = scrape_metrics(&router, Some(scoped)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");
    assert!(!body.contains("offboard_runs"));
    let (status, _, body) = scrape_metrics(&router, Some("unscoped-token-of-ops")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("offboard_runs"));
    app.cleanup().await;
}

#[sqlx::test]
async fn ledger_gauges_are_a_snapshot_read_at_most_once_per_max_age(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let router_with = |max_age: &str| {
        let settings = test_settings(
            &database_url_of(&pool),
            app.queues.prefix(),
            &[("OFFBOARD_STATS_MAX_AGE", max_age)],
        );
        offboard::api::router(offboard::api::AppState::new(
            pool.clone(),
            app.queues.clone(),
            settings,
            app.nudge.clone(),
        ))
    };
    let queued = |text: &str| {
        let scrape = Scrape::parse(text.lines().map(|l| Ok::<_, io::Error>(l.to_string())))
            .expect("Prometheus text");
        number(find(&scrape, "offboard_runs", &[("status", "queued")]))
    };
    let cached = router_with("1h");
    let fresh = router_with("0s");
    assert_eq!(queued(&scrape_metrics(&cached, Some(DEV_TOKEN)).await.2), 0.0);
    app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    // Within the max age the snapshot stands; a process reading anew sees the run.
    assert_eq!(queued(&scrape_metrics(&cached, Some(DEV_TOKEN)).await.2), 0.0);
    assert_eq!(queued(&scrape_metrics(&fresh, Some(DEV_TOKEN)).await.2), 1.0);
    // /v1/stats likewise.
    let stats = |router: axum::Router| async move {
        let request = axum::http::Request::get("/v1/stats")
            .header("authorization", format!("Bearer {DEV_TOKEN}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    };
    let first = stats(cached.clone()).await;
    app.enqueue(&app.deactivation(app.regular(1), json!({}))).await;
    assert_eq!(stats(cached.clone()).await, first);
    assert_eq!(stats(fresh.clone()).await["runs"]["queued"], 2);
    app.cleanup().await;
}

fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| &s.value)
}

fn number(sample: Option<&Sample>) -> f64 {
    match sample {
        Some(Sample::Counter(n) | Sample::Gauge(n) | Sample::Untyped(n)) => *n,
        other => panic!("not a number: {other:?}"),
    }
}

#[sqlx::test]
async fn metrics_parse_as_prometheus_text_with_runs_steps_retries_and_queues(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.workers
        .executor
        .faults
        .inject("stop_syncs", Fault::Fail(StepError::retryable("timeout", "injected")));
    let user = app.regular(0);
    app.enqueue(&app.deactivation(
        user,
        json!({"default": {"mode": "single", "targets": [{"user_id": app.regular(1)}]}}),
    ))
    .await;
    app.drain().await;

    let (status, headers, text) = scrape_metrics(&app.router, Some(DEV_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(text.ends_with("# EOF\n"), "one exposition, ended once");
    let scrape = Scrape::parse(text.lines().map(|l| Ok::<_, io::Error>(l.to_string())))
        .expect("Prometheus text");

    let steps = app.count("SELECT count(*) FROM offboard.steps").await as f64;
    assert_eq!(number(find(&scrape, "offboard_runs", &[("status", "succeeded")])), 1.0);
    assert_eq!(number(find(&scrape, "offboard_runs", &[("status", "failed")])), 0.0);
    assert_eq!(number(find(&scrape, "offboard_steps", &[("status", "succeeded")])), steps);
    assert_eq!(number(find(&scrape, "offboard_dead_steps", &[])), 0.0);
    assert_eq!(number(find(&scrape, "offboard_purges", &[("state", "scheduled")])), 1.0);
    assert!(find(&scrape, "offboard_queue_depth", &[("queue", "steps")]).is_some());
    // Process-wide counters (other tests in this process add to them): lower bounds.
    assert!(
        number(find(
            &scrape,
            "offboard_step_attempts_total",
            &[("step", "stop_syncs"), ("outcome", "retry")]
        )) >= 1.0
    );
    assert!(
        number(find(
            &scrape,
            "offboard_step_attempts_total",
            &[("step", "block_login"), ("outcome", "succeeded")]
        )) >= 1.0
    );
    let moved = app
        .count_for(
            "SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'",
            app.regular(1),
        )
        .await;
    assert!(number(find(&scrape, "offboard_items_reassigned_total", &[])) >= moved as f64);
    match find(&scrape, "offboard_step_duration_seconds", &[("step", "block_login")]) {
        Some(Sample::Histogram(buckets)) => {
            assert!(buckets.len() >= 10);
            assert!(buckets.last().unwrap().count >= 1.0);
            assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "cumulative buckets");
        }
        other => panic!("no histogram for block_login: {other:?}"),
    }
    // Labels hold step names, statuses and routes; never personal data.
    let email = &app.company.users.iter().find(|u| u.id == user).unwrap().email;
    assert!(!text.contains(email.as_str()) && !text.contains('@'));
}

#[sqlx::test]
async fn the_openapi_document_lists_every_route_of_the_api(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (status, _, doc) =
        app.call(Method::GET, "/openapi.json", None, &[("authorization", "")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("post", "/v1/offboardings"),
        ("get", "/v1/offboardings"),
        ("get", "/v1/offboardings/{id}"),
        ("patch", "/v1/offboardings/{id}"),
        ("post", "/v1/offboardings/{id}/retry"),
        ("post", "/v1/offboardings/{id}/cancel"),
        ("post", "/v1/offboardings/{id}/approve"),
        ("post", "/v1/offboardings/{id}/reject"),
        ("get", "/v1/companies/{company_id}/users/{user_id}/preview"),
        ("post", "/v1/companies/{company_id}/users/{user_id}/preview"),
        ("get", "/v1/stats"),
        ("get", "/v1/stats/series"),
        ("post", "/v1/offboardings/{id}/restart"),
        ("post", "/v1/offboardings/{id}/undo-transfer"),
        ("get", "/v1/offboardings/{id}/undo-transfer/preview"),
        ("post", "/v1/offboardings/bulk-retry"),
        ("post", "/v1/offboardings/bulk-cancel"),
        ("get", "/v1/bulk-operations"),
        ("get", "/v1/bulk-operations/{id}"),
        ("post", "/v1/offboarding-batches"),
        ("get", "/v1/offboarding-batches"),
        ("get", "/v1/offboarding-batches/{id}"),
        ("post", "/v1/offboarding-batches/{id}/cancel"),
        ("get", "/v1/companies/{company_id}/offboarding-policy"),
        ("put", "/v1/companies/{company_id}/offboarding-policy"),
        ("get", "/v1/companies/{company_id}/audit"),
        ("post", "/v1/webhook-endpoints"),
        ("get", "/v1/webhook-endpoints"),
        ("get", "/v1/webhook-endpoints/{id}"),
        ("patch", "/v1/webhook-endpoints/{id}"),
        ("delete", "/v1/webhook-endpoints/{id}"),
        ("post", "/v1/webhook-endpoints/{id}/rotate-secret"),
        ("post", "/v1/webhook-endpoints/{id}/replay-failed"),
        ("get", "/v1/webhook-deliveries"),
        ("post", "/v1/webhook-deliveries/{id}/replay"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        routes.len(),
        "documented operations: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (method, path) in routes {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        // Each documented route exists: calling it does not fall through to the 404 route.
        let concrete = path
            .replace("{id}", "00000000-0000-4000-8000-000000000000")
            .replace("{company_id}", &app.company.company_id.to_string())
            .replace("{user_id}", &app.regular(0).to_string());
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (_, _, body) = app.call(method, &concrete, Some("{}"), &[]).await;
        assert_ne!(body["error"]["message"], "route not found", "{path}");
        // Every non-2xx response is the one error shape (metrics and health aside).
        for (code, response) in operation["responses"].as_object().unwrap() {
            if !code.starts_with('2') && !path.starts_with("/healthz") {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{path} {code}");
            }
        }
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

/// The status, action and role enums are documented with the words the API sends
/// (`"succeeded"`), not their Rust names (`"Succeeded"`): schemathesis refused every run view
/// while they were.
#[sqlx::test]
async fn the_openapi_document_spells_statuses_as_the_api_sends_them(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (status, _, doc) =
        app.call(Method::GET, "/openapi.json", None, &[("authorization", "")]).await;
    assert_eq!(status, StatusCode::OK);
    let schemas = &doc["components"]["schemas"];
    for (name, words) in [
        ("RunStatus", offboard::domain::RunStatus::NAMES.as_slice()),
        ("StepStatus", offboard::domain::StepStatus::NAMES.as_slice()),
        ("PurgeStatus", offboard::domain::PurgeStatus::NAMES.as_slice()),
    ] {
        let documented: Vec<&str> = schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no enum: {}", schemas[name]))
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        assert_eq!(documented, words, "{name}");
        assert!(documented.contains(&words[0].to_lowercase().as_str()), "{name}");
    }
}
