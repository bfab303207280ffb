//! SCIM 2.0 as Okta and Microsoft Entra ID speak it: their exact deactivation shapes, the
//! one run repeated PATCHes make, reactivation, Entra's DELETE under the company's
//! policy, refusals as SCIM errors with nothing enqueued, and listing, filtering and
//! creating users.

use axum::http::{Method, StatusCode};
use offboard::crm::seed::SeedOptions;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::helpers::TestApp;

const TOKEN: &str = "scim-token-0123456789abcdef";
const EXTENSION: &str = "urn:offboard:params:scim:schemas:extension:2.0:Offboarding";

async fn scim_app(pool: PgPool) -> TestApp {
    let tokens = format!("{TOKEN}@1");
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_API_TOKENS", tokens.as_str())],
        SeedOptions { users: 8, items_per_user: 10, seed: 7 },
    )
    .await;
    assert_eq!(app.company.company_id, 1, "a fresh database's first company");
    app
}

async fn scim(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string());
    let (status, headers, value) = app
        .call(
            method,
            &format!("/scim/v2{path}"),
            body.as_deref(),
            &[("authorization", auth.as_str()), ("content-type", "application/scim+json")],
        )
        .await;
    if status != StatusCode::NO_CONTENT {
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/scim+json"),
            "{path}: {value}"
        );
    }
    (status, value)
}

fn okta(active: bool) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
           "Operations": [{"op": "replace", "value": {"active": active}}]})
}

fn entra(active: &str) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
           "Operations": [{"op": "Replace", "path": "active", "value": active}]})
}

async fn runs_of(app: &TestApp, user: i64) -> i64 {
    app.count_for("SELECT count(*) FROM offboard.runs WHERE user_id = $1", user).await
}

#[sqlx::test]
async fn repeated_okta_and_entra_deactivations_answer_at_once_and_make_one_run(pool: PgPool) {
    let app = scim_app(pool).await;
    let (leaver, heir) = (app.regular(0), app.regular(1));
    let (status, _, policy) = app
        .call(
            Method::PUT,
            "/v1/companies/1/offboarding-policy",
            Some(&json!({"transfer": {"default": {"mode": "single", "targets": [{"user_id": heir}]}}}).to_string()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let actor = policy["actor"]["user_id"].as_i64().unwrap();

    let path = format!("/Users/{leaver}");
    for body in [okta(false), okta(false), entra("False"), entra("false"), okta(false)] {
        let (status, user) = scim(&app, Method::PATCH, &path, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{user}");
        assert_eq!(user["active"], false, "{user}");
        assert_eq!(user["id"], leaver.to_string());
    }
    let bool_shape = json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
    assert_eq!(scim(&app, Method::PATCH, &path, Some(bool_shape)).await.0, StatusCode::OK);
    assert_eq!(runs_of(&app, leaver).await, 1, "one run from six PATCHes");

    // The run is an ordinary run: listed, recorded under the service actor, with the
    // policy's plan.
    let (_, list) = app.get(&format!("/v1/offboardings?user_id={leaver}")).await;
    let run_id: uuid::Uuid = list["runs"][0]["id"].as_str().unwrap().parse().unwrap();
    let run = app.run(run_id).await;
    assert_eq!(run["action"], "deactivate");
    assert_eq!(run["actor_user_id"], actor);
    assert_eq!(run["requested_by"], "service:scim");
    assert_eq!(run["history"][0]["actor"], "service:scim");
    assert_eq!(run["transfer"]["default"]["targets"][0]["user_id"], heir);

    app.drain().await;
    let run = app.run(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["receipt"]["requested_by"], "service:scim");
    // A deactivated user stays readable, and says which run it went through.
    let (status, user) =
        scim(&app, Method::GET, &format!("{path}?attributes={EXTENSION}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user[EXTENSION]["runId"], run_id.to_string());
    assert_eq!(user[EXTENSION]["runStatus"], "succeeded");
    let (_, user) = scim(&app, Method::GET, &path, None).await;
    assert_eq!(user["active"], false);
    // Like any run: in /metrics (this test's database holds this one run) and the dashboard.
    let response = app
        .router
        .clone()
        .oneshot(
            axum::http::Request::get("/metrics")
                .header("authorization", format!("Bearer {}", app.token()))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("offboard_runs{status=\"succeeded\"} 1"), "{text}");
    assert!(text.contains("route=\"/scim/v2/Users/{id}\""), "SCIM calls are counted by route");
    let (_, stats) = app.get("/v1/stats").await;
    assert_eq!(stats["runs"]["succeeded"], 1, "{stats}");
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'deactivated'",
            leaver
        )
        .await,
        1
    );

    // Reactivation: a reactivate run that cancels the pending purge; again only once.
    for body in [okta(true), entra("True")] {
        let (status, user) = scim(&app, Method::PATCH, &path, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{user}");
        assert_eq!(user["active"], true);
    }
    assert_eq!(runs_of(&app, leaver).await, 2);
    app.drain().await;
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'active'", leaver)
            .await,
        1
    );
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM offboard.scheduled_purges WHERE user_id = $1 AND status = 'canceled'",
            leaver
        )
        .await,
        1
    );
}

#[sqlx::test]
async fn entra_delete_runs_the_policy_delete_and_the_user_is_gone(pool: PgPool) {
    let app = scim_app(pool).await;
    let leaver = app.regular(0);
    let (status, _, _) = app
        .call(
            Method::PUT,
            "/v1/companies/1/offboarding-policy",
            Some(r#"{"on_delete": "delete"}"#),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let path = format!("/Users/{leaver}");
    // The policy deletes only deactivated users: an active one is refused, nothing starts.
    let (status, err) = scim(&app, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["status"], "409");
    assert!(err["detail"].as_str().unwrap().contains("deactivate"), "{err}");
    assert_eq!(runs_of(&app, leaver).await, 0);

    assert_eq!(scim(&app, Method::PATCH, &path, Some(entra("False"))).await.0, StatusCode::OK);
    // While the deactivation runs, a DELETE is refused (and is no repetition of it).
    let (status, err) = scim(&app, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(runs_of(&app, leaver).await, 1);
    app.drain().await;
    let (status, _) = scim(&app, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, err) = scim(&app, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error");
    app.drain().await;
    let (action, status): (String, String) = sqlx::query_as(
        "SELECT action, status FROM offboard.runs WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(leaver)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((action.as_str(), status.as_str()), ("delete", "succeeded"));
    // DELETE again: the user is gone.
    assert_eq!(scim(&app, Method::DELETE, &path, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(runs_of(&app, leaver).await, 2);
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'deleted' AND user_name IS NULL AND email IS NULL",
            leaver
        )
        .await,
        1
    );
}

#[sqlx::test]
async fn refusals_are_scim_conflicts_that_enqueue_nothing(pool: PgPool) {
    let app = scim_app(pool).await;
    // The last admin: every other admin is made regular.
    let admin = app.admin();
    sqlx::query("UPDATE crm.users SET role = 'regular' WHERE company_id = 1 AND role = 'admin' AND id <> $1")
        .bind(admin)
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, err) =
        scim(&app, Method::PATCH, &format!("/Users/{admin}"), Some(okta(false))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["status"], "409");
    assert!(err["detail"].as_str().unwrap().contains("admin"), "{err}");
    assert_eq!(runs_of(&app, admin).await, 0);

    // A policy target who is leaving: refused when set, and refused when used.
    let (target, user) = (app.regular(1), app.regular(2));
    let policy =
        json!({"transfer": {"default": {"mode": "single", "targets": [{"user_id": target}]}}});
    let (status, _, _) = app
        .call(Method::PUT, "/v1/companies/1/offboarding-policy", Some(&policy.to_string()), &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    app.enqueue(&app.deactivation(target, json!({}))).await;
    let (status, _, err) = app
        .call(Method::PUT, "/v1/companies/1/offboarding-policy", Some(&policy.to_string()), &[])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "invalid_target");
    let (status, err) =
        scim(&app, Method::PATCH, &format!("/Users/{user}"), Some(entra("False"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(err["detail"].as_str().unwrap().contains("policy"), "{err}");
    assert_eq!(runs_of(&app, user).await, 0);
    let (_, still) = scim(&app, Method::GET, &format!("/Users/{user}"), None).await;
    assert_eq!(still["active"], true);
}

#[sqlx::test]
async fn users_are_paged_filtered_and_created_as_identity_providers_expect(pool: PgPool) {
    let app = scim_app(pool).await;
    let (status, page) = scim(&app, Method::GET, "/Users?startIndex=1&count=2", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["totalResults"], 8);
    assert_eq!(page["itemsPerPage"], 2);
    assert_eq!(page["startIndex"], 1);
    let (_, next) = scim(&app, Method::GET, "/Users?startIndex=3&count=2", None).await;
    let first: Vec<i64> = [&page, &next]
        .iter()
        .flat_map(|p| p["Resources"].as_array().unwrap().iter())
        .map(|u| u["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(first.windows(2).all(|w| w[0] < w[1]), "stable id order across pages: {first:?}");

    let email = app.company.users[3].email.clone();
    let (_, found) =
        scim(&app, Method::GET, &format!("/Users?filter=userName%20eq%20%22{email}%22"), None)
            .await;
    assert_eq!(found["totalResults"], 1, "{found}");
    let (_, found) = scim(
        &app,
        Method::GET,
        &format!("/Users?filter=emails%5Btype%20eq%20%22work%22%5D.value%20eq%20%22{email}%22"),
        None,
    )
    .await;
    assert_eq!(found["totalResults"], 1, "{found}");
    let (status, none) =
        scim(&app, Method::GET, "/Users?filter=userName%20eq%20%22nobody%40example.test%22", None)
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        none,
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                             "totalResults": 0, "itemsPerPage": 0, "startIndex": 1, "Resources": []})
    );
    // A JSON-escaped NUL in a value finds no one; it never reaches PostgreSQL (a 500 there).
    for filter in [
        "userName%20eq%20%22a%5Cu0000b%22",
        "emails%5Btype%20eq%20%22w%5Cu0000rk%22%5D.value%20eq%20%22a%40example.test%22",
    ] {
        let (status, none) =
            scim(&app, Method::GET, &format!("/Users?filter={filter}"), None).await;
        assert_eq!(
            (status, &none["totalResults"]),
            (StatusCode::OK, &json!(0)),
            "{filter}: {none}"
        );
    }
    let (status, err) =
        scim(&app, Method::GET, "/Users?filter=userName%20sw%20%22a%22", None).await;
    assert_eq!(
        (status, err["scimType"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalidFilter"))
    );

    let new_user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "new.hire@example.test", "externalId": "00u1abcd",
        "name": {"givenName": "New", "familyName": "Hire"},
        "emails": [{"value": "new.hire@example.test", "type": "work", "primary": true}],
        "active": true
    });
    let (status, created) = scim(&app, Method::POST, "/Users", Some(new_user.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["externalId"], "00u1abcd");
    let (status, err) = scim(&app, Method::POST, "/Users", Some(new_user)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["scimType"], "uniqueness");
    assert!(!err["detail"].as_str().unwrap().contains("new.hire"), "no personal data in errors");
    let (_, found) =
        scim(&app, Method::GET, "/Users?filter=externalId%20eq%20%2200u1abcd%22", None).await;
    assert_eq!(found["totalResults"], 1);

    // Seats are respected.
    sqlx::query("UPDATE crm.companies SET seats = (SELECT count(*) FROM crm.users WHERE company_id = 1 AND holds_seat)")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, err) = scim(
        &app,
        Method::POST,
        "/Users",
        Some(json!({"userName": "one.more@example.test", "active": true})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(err["detail"].as_str().unwrap().contains("seats"));

    // A token not scoped to a company gets a SCIM error.
    let (status, _, err) = app.call(Method::GET, "/scim/v2/Users", None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err["status"], "403");
}

#[sqlx::test]
async fn an_identity_provider_can_take_the_offboarding_extension_off_a_user_and_put_it_back(
    pool: PgPool,
) {
    let app = scim_app(pool).await;
    let path = format!("/Users/{}", app.regular(2));
    let listed = |user: &Value| {
        user["schemas"].as_array().unwrap().iter().any(|s| s == EXTENSION)
            && user.get(EXTENSION).is_some()
    };
    let (_, user) = scim(&app, Method::GET, &path, None).await;
    assert!(listed(&user), "shown by default: {user}");

    let remove = json!({"Operations": [{"op": "remove", "path": EXTENSION}]});
    let (status, user) = scim(&app, Method::PATCH, &path, Some(remove)).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert!(!listed(&user), "taken off: {user}");
    // It stays off, even when asked for and across a replacement by PUT.
    let (_, user) = scim(&app, Method::GET, &format!("{path}?attributes={EXTENSION}"), None).await;
    assert!(!listed(&user), "{user}");
    let (_, mut replacement) = scim(&app, Method::GET, &path, None).await;
    replacement.as_object_mut().unwrap().remove("meta");
    replacement["displayName"] = json!("Renamed");
    let (status, user) = scim(&app, Method::PUT, &path, Some(replacement)).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert!(!listed(&user), "{user}");

    // Its attributes stay the service's; writing one is refused and changes nothing.
    let write = json!({"Operations": [{"op": "add", "path": format!("{EXTENSION}:runStatus"), "value": "x"}]});
    let (status, error) = scim(&app, Method::PATCH, &path, Some(write)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["scimType"], "mutability");

    let add = json!({"Operations": [{"op": "add", "path": EXTENSION, "value": {}}]});
    let (status, user) = scim(&app, Method::PATCH, &path, Some(add)).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert!(listed(&user), "put back: {user}");
    let (_, user) = scim(&app, Method::GET, &path, None).await;
    assert!(listed(&user), "{user}");
}
