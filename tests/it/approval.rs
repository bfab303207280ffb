//! Approval before the irreversible: with the company's policy asking for it, deletions
//! (from the API or SCIM) wait in `awaiting_approval` for a second admin; the requester
//! cannot approve; a rejection or an expiry ends the run with nothing done; the receipt and
//! history name who asked and who approved.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{DEADLINE, TestApp};

async fn require_approval(app: &TestApp, policy: Value) {
    let company = app.company.company_id;
    let (status, _, body) = app
        .call(
            Method::PUT,
            &format!("/v1/companies/{company}/offboarding-policy"),
            Some(&policy.to_string()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["require_approval"], policy["require_approval"], "{body}");
}

fn deletion(app: &TestApp, user: i64) -> Value {
    json!({"company_id": app.company.company_id, "user_id": user, "actor_user_id": app.admin(),
           "action": "deactivate_and_delete"})
}

async fn decide(app: &TestApp, id: Uuid, what: &str, approver: i64) -> (StatusCode, Value) {
    app.post(&format!("/v1/offboardings/{id}/{what}"), &json!({"approver_user_id": approver})).await
}

async fn user_status(app: &TestApp, user: i64) -> String {
    sqlx::query_scalar("SELECT status FROM crm.users WHERE id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_deletion_waits_for_a_second_admin_and_the_requester_cannot_approve_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    require_approval(&app, json!({"require_approval": true})).await;
    let user = app.regular(0);
    let (status, accepted) = app.post("/v1/offboardings", &deletion(&app, user)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["status"], "awaiting_approval");
    let id: Uuid = accepted["id"].as_str().unwrap().parse().unwrap();

    // Nothing runs while it waits; it is the user's active run.
    assert!(app.drain().await.is_empty());
    assert_eq!(user_status(&app, user).await, "active");
    let run = app.run(id).await;
    assert!(run["approval_expires_at"].is_string(), "{run}");
    let (status, error) = app.post("/v1/offboardings", &deletion(&app, user)).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("active_run_exists"))
    );

    // The requester, a regular user and a user of no company cannot approve.
    let (status, error) = decide(&app, id, "approve", app.admin()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    assert_eq!(error["error"]["code"], "approver_is_requester");
    let (status, error) = decide(&app, id, "approve", app.regular(1)).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("approver_not_admin"))
    );
    let (status, error) = app.post(&format!("/v1/offboardings/{id}/approve"), &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["field"], "approver_user_id");
    assert_eq!(app.run(id).await["status"], "awaiting_approval", "a refusal changed the run");

    // A second admin approves: it runs.
    let second = app.company.admin_ids[1];
    let (status, decided) = decide(&app, id, "approve", second).await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["status"], "queued");
    app.drain().await;
    let run = app.run(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(user_status(&app, user).await, "deleted");
    assert_eq!(run["approver_user_id"], second);
    assert_eq!(run["receipt"]["requested_by"], format!("user:{}", app.admin()));
    assert_eq!(run["receipt"]["approved_by"], format!("user:{second}"));
    let approved = run["history"].as_array().unwrap().iter().find(|e| e["kind"] == "approved");
    assert_eq!(approved.expect("approved in the history")["actor"], format!("user:{second}"));
    // Once decided, it cannot be decided again.
    let (status, error) = decide(&app, id, "approve", second).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_state"))
    );
}

#[sqlx::test]
async fn a_rejected_deletion_ends_with_nothing_done(pool: PgPool) {
    let app = TestApp::new(pool).await;
    require_approval(&app, json!({"require_approval": true})).await;
    let user = app.regular(0);
    let id = app.enqueue(&deletion(&app, user)).await;
    let second = app.company.admin_ids[1];
    let (status, decided) = decide(&app, id, "reject", second).await;
    assert_eq!(
        (status, decided["status"].as_str()),
        (StatusCode::OK, Some("rejected")),
        "{decided}"
    );
    assert!(app.drain().await.is_empty());
    let run = app.run(id).await;
    assert_eq!(run["status"], "rejected");
    assert_eq!(run["approver_user_id"], second);
    assert!(run["steps"].as_array().unwrap().iter().all(|s| s["status"] == "canceled"), "{run}");
    assert_eq!(user_status(&app, user).await, "active");
    // The user is free again.
    app.enqueue(&app.deactivation(user, json!({}))).await;
}

/// Runs `offboard runs watch <id>` against the app's API; answers its exit code and output,
/// or fails the test if it has not returned by the deadline.
async fn watch_from_the_cli(app: &TestApp, id: Uuid) -> (Option<i32>, String) {
    let api = app.serve().await;
    let watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_offboard"))
        .args(["runs", "watch", &id.to_string(), "--api-url", &api, "--token", app.token()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, watch)
        .await
        .unwrap_or_else(|_| panic!("`offboard runs watch` on {id} did not return"))
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[sqlx::test]
async fn watching_a_rejected_run_from_the_cli_returns_and_exits_nonzero(pool: PgPool) {
    let app = TestApp::new(pool).await;
    require_approval(&app, json!({"require_approval": true})).await;
    let id = app.enqueue(&deletion(&app, app.regular(0))).await;
    let (status, _) = decide(&app, id, "reject", app.company.admin_ids[1]).await;
    assert_eq!(status, StatusCode::OK);
    let (code, out) = watch_from_the_cli(&app, id).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rejected"), "{out}");
}

#[sqlx::test]
async fn watching_an_expired_run_from_the_cli_returns_and_exits_nonzero(pool: PgPool) {
    let app = TestApp::new(pool).await;
    require_approval(&app, json!({"require_approval": true})).await;
    let id = app.enqueue(&deletion(&app, app.regular(0))).await;
    sqlx::query("UPDATE offboard.runs SET approval_expires_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.workers.dispatcher.sweep().await.approvals_expired, 1);
    let (code, out) = watch_from_the_cli(&app, id).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("expired"), "{out}");
}

#[sqlx::test]
async fn an_unanswered_request_expires(pool: PgPool) {
    let app = TestApp::new(pool).await;
    require_approval(&app, json!({"require_approval": true, "approval_ttl_hours": 24})).await;
    let user = app.regular(0);
    let id = app.enqueue(&deletion(&app, user)).await;
    let window: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM approval_expires_at - created_at)::float8 FROM offboard.runs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!((window - 86_400.0).abs() < 5.0, "the window is the policy's 24 hours: {window}");

    // Not yet: the sweeper leaves it.
    assert_eq!(app.workers.dispatcher.sweep().await.approvals_expired, 0);
    sqlx::query("UPDATE offboard.runs SET approval_expires_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.workers.dispatcher.sweep().await.approvals_expired, 1);
    let run = app.run(id).await;
    assert_eq!(run["status"], "expired", "{run}");
    assert!(run["history"].as_array().unwrap().iter().any(|e| e["kind"] == "expired"));
    assert!(app.drain().await.is_empty());
    assert_eq!(user_status(&app, user).await, "active");
    let (status, error) = decide(&app, id, "approve", app.company.admin_ids[1]).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_state"))
    );
}

#[sqlx::test]
async fn approving_after_the_window_expires_the_run(pool: PgPool) {
    let app = TestApp::new(pool).await;
    require_approval(&app, json!({"require_approval": true})).await;
    let id = app.enqueue(&deletion(&app, app.regular(0))).await;
    sqlx::query("UPDATE offboard.runs SET approval_expires_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, error) = decide(&app, id, "approve", app.company.admin_ids[1]).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("approval_expired"))
    );
    assert_eq!(app.run(id).await["status"], "expired");
}

#[sqlx::test]
async fn without_the_policy_or_for_a_deactivation_nothing_waits(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let id = app.enqueue(&deletion(&app, app.regular(0))).await;
    assert_eq!(app.run(id).await["status"], "queued");
    require_approval(&app, json!({"require_approval": true})).await;
    let (status, accepted) =
        app.post("/v1/offboardings", &app.deactivation(app.regular(1), json!({}))).await;
    assert_eq!((status, accepted["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")));
}

#[sqlx::test]
async fn a_scim_delete_waits_for_approval_too(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_API_TOKENS", "scim-token-0123456789abcdef@1")],
        offboard::crm::seed::SeedOptions { users: 8, items_per_user: 10, seed: 7 },
    )
    .await;
    require_approval(&app, json!({"require_approval": true})).await;
    let user = app.regular(0);
    let (status, _, body) = app
        .call(
            Method::DELETE,
            &format!("/scim/v2/Users/{user}"),
            None,
            &[("authorization", "Bearer scim-token-0123456789abcdef")],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (id, status): (Uuid, String) =
        sqlx::query_as("SELECT id, status FROM offboard.runs WHERE user_id = $1")
            .bind(user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "awaiting_approval");
    assert!(app.drain().await.is_empty());
    // The service actor asked; any admin of the company may approve.
    let (status, decided) = decide(&app, id, "approve", app.admin()).await;
    assert_eq!((status, decided["status"].as_str()), (StatusCode::OK, Some("queued")), "{decided}");
    app.drain().await;
    let run = app.run(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["receipt"]["requested_by"], "service:scim");
    assert_eq!(run["receipt"]["approved_by"], format!("user:{}", app.admin()));
}

#[sqlx::test]
async fn an_approved_deletion_scheduled_later_waits_for_its_time(pool: PgPool) {
    let app = TestApp::new(pool).await;
    require_approval(&app, json!({"require_approval": true})).await;
    let mut body = deletion(&app, app.regular(0));
    let at = chrono::Utc::now() + chrono::Duration::days(3);
    body["effective_at"] = json!(at.to_rfc3339());
    let id = app.enqueue(&body).await;
    let run = app.run(id).await;
    assert_eq!(run["status"], "awaiting_approval");
    // The window counts from the run's time, not from the request.
    let expires: chrono::DateTime<chrono::Utc> =
        run["approval_expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires >= at + chrono::Duration::days(7) - chrono::Duration::seconds(1), "{run}");
    let (status, decided) = decide(&app, id, "approve", app.company.admin_ids[1]).await;
    assert_eq!(
        (status, decided["status"].as_str()),
        (StatusCode::OK, Some("scheduled")),
        "{decided}"
    );
    assert!(app.drain().await.is_empty(), "it ran before its time");
    assert_eq!(app.workers.dispatcher.sweep().await.scheduled_started, 0);
}
