//! Every endpoint refuses malformed JSON, wrong types, oversized bodies and unknown ids
//! with a 4xx JSON error, and changes nothing.

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

async fn fingerprint(app: &TestApp) -> String {
    sqlx::query_scalar(
        "SELECT md5(concat_ws('|',
            (SELECT count(*) FROM offboard.runs), (SELECT count(*) FROM offboard.steps),
            (SELECT count(*) FROM offboard.run_events), (SELECT string_agg(status, ',' ORDER BY run_id, position) FROM offboard.steps),
            (SELECT string_agg(status || owner_id, ',' ORDER BY id) FROM crm.deals),
            (SELECT string_agg(status, ',' ORDER BY id) FROM crm.users)))",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn every_endpoint_refuses_bad_input_with_a_json_error_and_changes_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let run = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let c = app.company.company_id;
    let u = app.regular(1);
    let preview = format!("/v1/companies/{c}/users/{u}/preview");
    let huge = format!("{{\"transfer\": \"{}\"}}", "x".repeat(70_000));
    let unknown = "6f1c1f3e-1111-4e0e-9d47-000000000000";
    let before = fingerprint(&app).await;

    let cases: Vec<(Method, String, Option<&str>, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/v1/offboardings/not-a-uuid".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            Method::GET,
            format!("/v1/offboardings/{unknown}"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            format!("/v1/offboardings/{unknown}/retry"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            format!("/v1/offboardings/{unknown}/cancel"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/offboardings/12/cancel".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            Method::POST,
            format!("/v1/offboardings/{run}/retry"),
            None,
            StatusCode::CONFLICT,
            "invalid_state",
        ),
        (
            Method::GET,
            "/v1/offboardings?limit=0".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/offboardings?limit=abc".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/offboardings?company_id=-4".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/offboardings?cursor=garbage".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/offboardings?action=fire".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            Method::GET,
            format!("/v1/companies/{c}/users/x/preview"),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            Method::GET,
            format!("/v1/companies/{c}/users/99999999/preview"),
            None,
            StatusCode::NOT_FOUND,
            "user_not_found",
        ),
        (
            Method::GET,
            format!("/v1/companies/0/users/{u}/preview"),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            Method::POST,
            preview.clone(),
            Some("{\"transfer\": "),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Method::POST,
            preview.clone(),
            Some("{\"transfer\": 7}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Method::POST,
            preview.clone(),
            Some("{\"plan\": {}}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Method::POST,
            preview.clone(),
            Some(
                "{\"transfer\": {\"deals\": {\"mode\": \"single\", \"targets\": [{\"user_id\": true}]}}}",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Method::POST,
            preview.clone(),
            Some(huge.as_str()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/v1/offboardings".into(),
            Some(
                "{\"company_id\": 1.5, \"user_id\": 2, \"actor_user_id\": 3, \"action\": \"deactivate\"}",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/offboardings".into(),
            Some("null"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/offboardings".into(),
            Some(huge.as_str()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (Method::GET, "/v1/nothing-here".into(), None, StatusCode::NOT_FOUND, "not_found"),
        (
            Method::DELETE,
            "/v1/offboardings".into(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, headers, value) = app.call(method.clone(), &path, body, &[]).await;
        assert_eq!(got, status, "{method} {path}: {value}");
        assert_eq!(value["error"]["code"], code, "{method} {path}: {value}");
        assert!(
            headers.get("content-type").unwrap().to_str().unwrap().starts_with("application/json"),
            "{method} {path}"
        );
    }
    // A bad Idempotency-Key header.
    let body = app.deactivation(app.regular(2), json!({})).to_string();
    let (got, _, value) =
        app.call(Method::POST, "/v1/offboardings", Some(&body), &[("idempotency-key", "")]).await;
    assert_eq!(
        (got, value["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_idempotency_key"))
    );
    assert_eq!(fingerprint(&app).await, before);
}
