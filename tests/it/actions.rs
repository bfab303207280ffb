//! Delete, deactivate-and-delete, redact and reactivate, and what each refuses.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

fn request(app: &TestApp, user: i64, action: &str, extra: Value) -> Value {
    let mut body = json!({"company_id": app.company.company_id, "user_id": user, "actor_user_id": app.admin(), "action": action});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn run_to_end(app: &TestApp, body: &Value) -> Value {
    let id = app.enqueue(body).await;
    app.drain().await;
    app.run(id).await
}

async fn deactivate(app: &TestApp, user: i64) {
    let run = run_to_end(app, &request(app, user, "deactivate", json!({}))).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
}

async fn refused(app: &TestApp, body: &Value, code: &str) {
    let runs = app.count("SELECT count(*) FROM offboard.runs").await;
    let (status, err) = app.post("/v1/offboardings", body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], code, "{err}");
    assert_eq!(
        app.count("SELECT count(*) FROM offboard.runs").await,
        runs,
        "a refusal wrote a run"
    );
}

#[sqlx::test]
async fn delete_erases_personal_data_and_shows_a_deleted_user(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    deactivate(&app, user).await;
    let items_before =
        app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await;
    let run = run_to_end(&app, &request(&app, user, "delete", json!({}))).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let (status, name, email, phone, picture): (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT status, name, email, phone, picture_url FROM crm.users WHERE id = $1",
    )
    .bind(user)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(status, "deleted");
    assert_eq!((name, email, phone, picture), (None, None, None, None));
    let shown: String =
        sqlx::query_scalar("SELECT display_name FROM crm.user_directory WHERE id = $1")
            .bind(user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(shown, format!("deleted user, ID {user}"));
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.filter_candidates WHERE id = $1", user).await,
        0
    );
    // Items stay with the deleted user when the plan moves none.
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await,
        items_before
    );

    let receipt = &run["receipt"];
    assert_eq!(receipt["action"], "delete");
    assert_eq!(receipt["actor_user_id"], app.admin());
    let erase = receipt["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "erase_personal_data")
        .unwrap();
    assert_eq!(
        erase["counts"]["erased_fields"],
        json!([
            "name",
            "email",
            "phone",
            "picture_url",
            "user_name",
            "external_id",
            "given_name",
            "family_name"
        ])
    );
    assert_eq!(erase["counts"]["shown_as"], format!("deleted user, ID {user}"));

    // Irreversible: nothing further is accepted.
    for action in ["delete", "redact", "reactivate", "deactivate"] {
        let extra = if action == "redact" { json!({"remove_picture": true}) } else { json!({}) };
        refused(&app, &request(&app, user, action, extra), "user_deleted").await;
    }
}

#[sqlx::test]
async fn delete_with_a_plan_moves_the_items_first(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (user, heir) = (app.regular(0), app.regular(1));
    deactivate(&app, user).await;
    let all_deals = app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await;
    let run = run_to_end(&app, &request(&app, user, "delete", json!({"transfer": {"deals": {"mode": "single", "scope": "all", "targets": [{"user_id": heir}]}}}))).await;
    assert_eq!(run["status"], "succeeded");
    let names: Vec<&str> =
        run["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["reassign_deals", "erase_personal_data"]);
    assert_eq!(app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await, 0);
    assert_eq!(run["receipt"]["reassigned"]["deals"]["moved"], all_deals);
}

#[sqlx::test]
async fn deactivate_and_delete_runs_the_deletion_after_the_deactivation(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    let body = request(
        &app,
        user,
        "deactivate_and_delete",
        json!({"transfer": {"default": {"mode": "single", "targets": [{"user_id": app.regular(1)}]}}}),
    );
    let id = app.enqueue(&body).await;
    let order: Vec<String> = app.drain().await.into_iter().map(|(n, _)| n).collect();
    let finish = order.iter().position(|n| n == "finish_deactivation").unwrap();
    assert_eq!(order.last().unwrap(), "erase_personal_data");
    assert_eq!(finish, order.len() - 2);
    assert_eq!(app.run(id).await["status"], "succeeded");
    assert_eq!(app.count_for("SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'deleted' AND NOT holds_seat", user).await, 1);
    assert_eq!(app.count_for("SELECT count(*) FROM offboard.scheduled_purges WHERE user_id = $1 AND status = 'scheduled'", user).await, 1);
}

#[sqlx::test]
async fn delete_of_an_active_user_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    refused(&app, &request(&app, app.regular(0), "delete", json!({})), "user_not_deactivated")
        .await;
}

#[sqlx::test]
async fn redact_renames_and_removes_the_picture_of_a_deactivated_user_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    refused(
        &app,
        &request(&app, user, "redact", json!({"display_name": "Former rep"})),
        "user_not_deactivated",
    )
    .await;
    deactivate(&app, user).await;
    let email_before: String = sqlx::query_scalar("SELECT email FROM crm.users WHERE id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let run = run_to_end(
        &app,
        &request(
            &app,
            user,
            "redact",
            json!({"display_name": "Former rep 7", "remove_picture": true}),
        ),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let (name, picture, email, status): (String, Option<String>, String, String) =
        sqlx::query_as("SELECT name, picture_url, email, status FROM crm.users WHERE id = $1")
            .bind(user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((name.as_str(), picture, status.as_str()), ("Former rep 7", None, "deactivated"));
    assert_eq!(email, email_before, "redaction keeps the user");
    // The new name is not kept in the ledger once applied.
    assert_eq!(
        app.count("SELECT count(*) FROM offboard.runs WHERE params::text LIKE '%Former rep%'")
            .await,
        0
    );
    assert_eq!(
        run["receipt"]["steps"][0]["counts"],
        json!({"renamed": true, "picture_removed": true})
    );
}

#[sqlx::test]
async fn reactivate_takes_a_seat_cancels_the_purge_and_leaves_items_where_they_went(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (user, heir) = (app.regular(0), app.regular(1));
    let run = run_to_end(
        &app,
        &app.deactivation(
            user,
            json!({"deals": {"mode": "single", "targets": [{"user_id": heir}]}}),
        ),
    )
    .await;
    assert_eq!(run["status"], "succeeded");
    let moved = app
        .count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'", heir)
        .await;
    let run = run_to_end(&app, &request(&app, user, "reactivate", json!({}))).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'active' AND holds_seat",
            user
        )
        .await,
        1
    );
    assert_eq!(app.count_for("SELECT count(*) FROM offboard.scheduled_purges WHERE user_id = $1 AND status = 'canceled'", user).await, 1);
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'",
            heir
        )
        .await,
        moved
    );
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'",
            user
        )
        .await,
        0
    );
}

#[sqlx::test]
async fn reactivate_without_a_free_seat_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    deactivate(&app, user).await;
    // Fill every seat.
    sqlx::query("UPDATE crm.companies SET seats = (SELECT count(*) FROM crm.users WHERE holds_seat AND company_id = $1) WHERE id = $1")
        .bind(app.company.company_id)
        .execute(&app.pool)
        .await
        .unwrap();
    refused(&app, &request(&app, user, "reactivate", json!({})), "no_free_seat").await;
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'deactivated'",
            user
        )
        .await,
        1
    );
}

#[sqlx::test]
async fn reactivating_an_active_user_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    refused(&app, &request(&app, app.regular(0), "reactivate", json!({})), "user_not_deactivated")
        .await;
}

#[sqlx::test]
async fn concurrent_actions_on_one_user_yield_one_run(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    let first = app.deactivation(user, json!({}));
    let second = app.deactivation(
        user,
        json!({"default": {"mode": "single", "targets": [{"user_id": app.regular(1)}]}}),
    );
    let third = request(&app, user, "deactivate_and_delete", json!({}));
    let (a, b, c) = tokio::join!(
        app.post("/v1/offboardings", &first),
        app.post("/v1/offboardings", &second),
        app.post("/v1/offboardings", &third)
    );
    let statuses = [a.0, b.0, c.0];
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count(),
        1,
        "{a:?} {b:?} {c:?}"
    );
    for (status, body) in [a, b, c] {
        if status != StatusCode::ACCEPTED {
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(body["error"]["code"], "active_run_exists");
        }
    }
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 1);
}
