//! Every rule a request must pass: a refused request gets a clear 4xx JSON error with a
//! stable code, and writes nothing.

use axum::http::{Method, StatusCode};
use offboard::crm::seed::{self, SeedOptions};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

/// Everything a refused request could have written.
async fn footprint(app: &TestApp) -> (i64, i64, i64, i64) {
    (
        app.count("SELECT count(*) FROM offboard.runs").await,
        app.count("SELECT count(*) FROM offboard.steps").await,
        app.count("SELECT count(*) FROM offboard.idempotency_keys").await,
        app.count("SELECT count(*) FROM crm.users").await,
    )
}

async fn refused(app: &TestApp, body: &Value, status: StatusCode, code: &str) -> Value {
    let before = footprint(app).await;
    let (got, err) = app.post("/v1/offboardings", body).await;
    assert_eq!(got, status, "{err}");
    assert_eq!(err["error"]["code"], code, "{err}");
    assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(footprint(app).await, before, "a refused request wrote something");
    err
}

#[sqlx::test]
async fn a_bad_or_missing_token_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let body = app.deactivation(app.regular(0), json!({})).to_string();
    for auth in ["Bearer wrong-token-wrong-token", "Basic abc", ""] {
        let headers: Vec<(&str, &str)> = vec![("authorization", auth)];
        let (status, headers, err) =
            app.call(Method::POST, "/v1/offboardings", Some(&body), &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(err["error"]["code"], "unauthorized");
        assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    }
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 0);
}

#[sqlx::test]
async fn a_target_in_another_company_is_refused(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let other =
        seed::seed(&pool, SeedOptions { users: 3, items_per_user: 7, seed: 99 }).await.unwrap();
    let stranger = other.users[2].id;
    let body = app.deactivation(
        app.regular(0),
        json!({"deals": {"mode": "ratio", "targets": [{"user_id": app.regular(1), "weight": 1}, {"user_id": stranger, "weight": 1}]}}),
    );
    let err = refused(&app, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_target").await;
    assert_eq!(err["error"]["field"], "transfer.deals.targets[1].user_id");
    assert!(err["error"]["message"].as_str().unwrap().contains("not a user of company"));
}

#[sqlx::test]
async fn a_deactivated_target_is_refused_naming_the_field(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let gone = app.regular(1);
    app.enqueue(&app.deactivation(gone, json!({}))).await;
    app.drain().await;
    let body = app.deactivation(
        app.regular(0),
        json!({"default": {"mode": "single", "targets": [{"user_id": gone}]}}),
    );
    let err = refused(&app, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_target").await;
    assert_eq!(
        err["error"]["message"],
        format!("transfer.default.targets[0].user_id: user {gone} is deactivated")
    );
}

#[sqlx::test]
async fn a_plan_naming_many_targets_has_each_of_them_checked(pool: PgPool) {
    // More targets than the request's one read statement carries: the rest are read apart,
    // and the rules hold for every one of them.
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 12, items_per_user: 10, seed: 7 }).await;
    let gone = app.regular(7);
    app.enqueue(&app.deactivation(gone, json!({}))).await;
    app.drain().await;
    let mut targets: Vec<Value> =
        (1..=6).map(|n| json!({"user_id": app.regular(n), "weight": 1})).collect();
    targets.push(json!({"user_id": gone, "weight": 1}));
    let plan = |targets: &[Value]| json!({"deals": {"mode": "ratio", "targets": targets}});
    let body = app.deactivation(app.regular(0), plan(&targets));
    let err = refused(&app, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_target").await;
    assert_eq!(
        err["error"]["message"],
        format!("transfer.deals.targets[6].user_id: user {gone} is deactivated")
    );
    targets.pop();
    app.enqueue(&app.deactivation(app.regular(0), plan(&targets))).await;
}

#[sqlx::test]
async fn the_offboarded_user_cannot_be_their_own_target(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let leaver = app.regular(0);
    let body = app.deactivation(
        leaver,
        json!({"leads": {"mode": "single", "targets": [{"user_id": leaver}]}}),
    );
    let err = refused(&app, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid_target").await;
    assert_eq!(err["error"]["field"], "transfer.leads.targets[0].user_id");
}

#[sqlx::test]
async fn a_user_cannot_offboard_themself(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let body = json!({"company_id": app.company.company_id, "user_id": admin, "actor_user_id": admin, "action": "deactivate"});
    refused(&app, &body, StatusCode::UNPROCESSABLE_ENTITY, "self_offboarding").await;
}

#[sqlx::test]
async fn an_actor_without_account_settings_access_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let body = json!({"company_id": app.company.company_id, "user_id": app.regular(0),
                      "actor_user_id": app.regular(1), "action": "deactivate"});
    refused(&app, &body, StatusCode::FORBIDDEN, "actor_not_permitted").await;
}

#[sqlx::test]
async fn the_last_active_admin_cannot_be_deactivated(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let [first, second] = [app.company.admin_ids[0], app.company.admin_ids[1]];
    // Deactivating the second admin is fine; while that run is active, the first is the last.
    let body = json!({"company_id": app.company.company_id, "user_id": second, "actor_user_id": first, "action": "deactivate"});
    app.enqueue(&body).await;
    // An actor with settings access who is not an admin asks to deactivate the first admin.
    let actor = app.company.users.iter().find(|u| !u.is_admin).map(|u| u.id).unwrap();
    sqlx::query("UPDATE crm.users SET account_settings_access = true WHERE id = $1")
        .bind(actor)
        .execute(&app.pool)
        .await
        .unwrap();
    let body = json!({"company_id": app.company.company_id, "user_id": first, "actor_user_id": actor, "action": "deactivate"});
    refused(&app, &body, StatusCode::CONFLICT, "last_admin").await;
    // And still after the second admin's run finished.
    app.drain().await;
    refused(&app, &body, StatusCode::CONFLICT, "last_admin").await;
}

#[sqlx::test]
async fn an_unknown_user_is_not_found(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let body = app.deactivation(987_654, json!({}));
    refused(&app, &body, StatusCode::NOT_FOUND, "user_not_found").await;
}

#[sqlx::test]
async fn a_second_active_run_for_the_same_user_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let err = refused(
        &app,
        &app.deactivation(app.regular(0), json!({})),
        StatusCode::CONFLICT,
        "active_run_exists",
    )
    .await;
    assert_eq!(err["error"]["details"]["run_id"], first.to_string());
}

#[sqlx::test]
async fn an_already_deactivated_user_cannot_be_deactivated_again(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.drain().await;
    refused(
        &app,
        &app.deactivation(app.regular(0), json!({})),
        StatusCode::CONFLICT,
        "user_not_active",
    )
    .await;
}

#[sqlx::test]
async fn malformed_bodies_are_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let before = footprint(&app).await;
    let cases: [(&str, StatusCode, &str); 5] = [
        ("{\"company_id\": 1,", StatusCode::BAD_REQUEST, "invalid_json"),
        ("[1, 2, 3]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            "{\"company_id\": \"one\", \"user_id\": 2, \"actor_user_id\": 1, \"action\": \"deactivate\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "{\"company_id\": 1, \"user_id\": 2, \"actor_user_id\": 1, \"action\": \"fire\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "{\"company_id\": 1, \"user_id\": 2, \"actor_user_id\": 1, \"action\": \"deactivate\", \"transfer\": {\"deals\": {\"mode\": \"ratio\", \"targets\": [{\"user_id\": 3, \"weight\": -2}]}}}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let (got, _, err) = app.call(Method::POST, "/v1/offboardings", Some(body), &[]).await;
        assert_eq!(got, status, "{body}: {err}");
        assert_eq!(err["error"]["code"], code, "{body}");
    }
    // Oversized body, and a body that is not JSON at all.
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(100_000));
    let (got, _, err) = app.call(Method::POST, "/v1/offboardings", Some(&huge), &[]).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!(err["error"]["code"], "payload_too_large");
    let (got, _, err) =
        app.call(Method::POST, "/v1/offboardings", None, &[("content-type", "text/plain")]).await;
    assert_eq!(got, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{err}");
    assert_eq!(footprint(&app).await, before);
}

#[sqlx::test]
async fn a_token_scoped_to_one_company_cannot_see_another(pool: PgPool) {
    let scoped = "scoped-token-aaaaaaaaaaaa";
    let app = TestApp::new(pool.clone()).await;
    let other =
        seed::seed(&pool, SeedOptions { users: 3, items_per_user: 7, seed: 5 }).await.unwrap();
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    // A second app over the same database whose token is scoped to the other company.
    let tokens = format!("{scoped}@{}", other.company_id);
    let scoped_app = TestApp::with(
        pool,
        &[("OFFBOARD_API_TOKENS", &tokens)],
        SeedOptions { users: 2, items_per_user: 0, seed: 6 },
    )
    .await;
    let auth = format!("Bearer {scoped}");
    let (status, _, _) = scoped_app
        .call(Method::GET, &format!("/v1/offboardings/{id}"), None, &[("authorization", &auth)])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, list) =
        scoped_app.call(Method::GET, "/v1/offboardings", None, &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);
    let body = app.deactivation(app.regular(1), json!({})).to_string();
    let (status, _, _) = scoped_app
        .call(Method::POST, "/v1/offboardings", Some(&body), &[("authorization", &auth)])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 1);
}

/// The rules about the user and the targets live once, in the ledger's SQL: the one
/// statement that judges and writes a regular user's run and the transaction a batch's
/// rows are judged in refuse each request alike, with the same code, field and message.
#[sqlx::test]
async fn every_rule_refuses_alike_in_the_one_statement_and_in_a_batch(pool: PgPool) {
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 10, items_per_user: 5, seed: 11 }).await;
    let (company, admin) = (app.company.company_id, app.admin());
    let gone = app.regular(5);
    app.enqueue(&app.deactivation(gone, json!({}))).await;
    app.drain().await;
    // An active run deactivating `busy`, moving items to `receiver`.
    let (busy, receiver) = (app.regular(6), app.regular(7));
    app.enqueue(&app.deactivation(
        busy,
        json!({"default": {"mode": "single", "targets": [{"user_id": receiver}]}}),
    ))
    .await;
    let to = |target: i64| json!({"deals": {"mode": "single", "targets": [{"user_id": target}]}});
    let request = |user: i64, actor: i64, transfer: Value| {
        json!({"company_id": company, "user_id": user, "actor_user_id": actor,
               "action": "deactivate", "transfer": transfer})
    };
    let (user, nobody) = (app.regular(0), 99_999_999);
    let cases = [
        (request(user, app.regular(1), json!({})), "actor_not_permitted"),
        (request(nobody, admin, json!({})), "user_not_found"),
        (request(gone, admin, json!({})), "user_not_active"),
        (request(busy, admin, json!({})), "active_run_exists"),
        (request(receiver, admin, json!({})), "user_is_transfer_target"),
        (request(user, user, json!({})), "self_offboarding"),
        (request(user, admin, to(nobody)), "invalid_target"),
        (request(user, admin, to(gone)), "invalid_target"),
        (request(user, admin, to(busy)), "invalid_target"),
        (request(user, admin, to(user)), "invalid_target"),
    ];
    let before = footprint(&app).await;
    for (body, code) in cases {
        let (_, single) = app.post("/v1/offboardings", &body).await;
        assert_eq!(single["error"]["code"], code, "{body}: {single}");
        let batch = json!({"rows": [body], "all_or_nothing": true});
        let (status, err) = app.post("/v1/offboarding-batches", &batch).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        let row = &err["error"]["details"]["refused"][0];
        for key in ["code", "field", "message"] {
            let in_batch = row.get(key).cloned().unwrap_or(Value::Null);
            let alone = single["error"].get(key).cloned().unwrap_or(Value::Null);
            assert_eq!(in_batch, alone, "{key} of {body}: {row} vs {single}");
        }
    }
    assert_eq!(footprint(&app).await, before);
}
