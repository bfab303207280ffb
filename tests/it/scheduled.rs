//! Scheduled runs: written `scheduled`, started by the sweeper from the ledger once their
//! `effective_at` has passed — never before, and even when Redis lost everything and no
//! worker ran at that moment — canceled or moved while they wait, re-checked at their
//! start, and written by a policy's `delete_after_days`.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{DEADLINE, TestApp};

async fn db_now(app: &TestApp) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()").fetch_one(&app.pool).await.unwrap()
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn at_of(run: &Value, field: &str) -> DateTime<Utc> {
    run[field].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{field}: {run}"))
}

/// A deactivation of `user` by the first admin at `at`, handing deals to `heir`.
fn scheduled_deactivation(app: &TestApp, user: i64, heir: i64, at: DateTime<Utc>) -> Value {
    let mut body = app
        .deactivation(user, json!({"deals": {"mode": "single", "targets": [{"user_id": heir}]}}));
    body["effective_at"] = json!(rfc3339(at));
    body
}

/// Open deals: what a plan with the default scope moves.
async fn deals_of(app: &TestApp, user: i64) -> i64 {
    app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'", user)
        .await
}

async fn user_status(app: &TestApp, user: i64) -> String {
    sqlx::query_scalar("SELECT status FROM crm.users WHERE id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Brings a scheduled run's time to now, as if it had waited for it.
async fn make_due(app: &TestApp, id: Uuid) {
    sqlx::query("UPDATE offboard.runs SET effective_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
}

/// Polls the run until `done`, asserting on every look that it has not started before
/// `not_before` (by the database clock).
async fn wait_never_early(
    app: &TestApp,
    id: Uuid,
    not_before: DateTime<Utc>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let now = db_now(app).await;
        let run = app.run(id).await;
        if now < not_before {
            assert_eq!(run["status"], "scheduled", "started {:?} early: {run}", not_before - now);
        }
        if done(&run) {
            return run;
        }
        assert!(started.elapsed() < DEADLINE, "run {id} did not get there in time: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test]
async fn a_scheduled_run_waits_then_starts_from_the_ledger_after_redis_lost_everything(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let (user, heir) = (app.regular(0), app.regular(1));
    let deals = deals_of(&app, user).await;
    let at = db_now(&app).await + chrono::Duration::seconds(3);
    let workers = app.start_workers();
    let (status, accepted) =
        app.post("/v1/offboardings", &scheduled_deactivation(&app, user, heir, at)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["status"], "scheduled");
    assert_eq!(at_of(&accepted, "effective_at"), at);
    let id: Uuid = accepted["id"].as_str().unwrap().parse().unwrap();

    // Listed with its due time; the user stays active and keeps their deals meanwhile.
    let (_, list) = app.get(&format!("/v1/offboardings?status=scheduled&user_id={user}")).await;
    assert_eq!(list["runs"][0]["id"], id.to_string(), "{list}");
    assert_eq!(at_of(&list["runs"][0], "effective_at"), at);
    let run = app.run(id).await;
    assert_eq!(at_of(&run, "effective_at"), at);
    assert!(run["steps"].as_array().unwrap().iter().all(|s| s["status"] == "pending"), "{run}");
    assert_eq!(user_status(&app, user).await, "active");

    // Every worker stops and Redis loses this test's keys (a FLUSHALL of its prefix) before
    // the run's time; the time passes with nobody running.
    workers.stop().await;
    app.cleanup().await;
    wait_never_early(&app, id, at, |_| clock_past(at)).await;
    assert_eq!(app.run(id).await["status"], "scheduled");

    // Workers come back: the sweeper finds the run in the ledger and it runs to the end.
    let workers = app.start_workers();
    let run = app.wait_for_run(id).await;
    workers.stop().await;
    app.cleanup().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(at_of(&run, "started_at") >= at, "started before its time: {run}");
    assert_eq!(user_status(&app, user).await, "deactivated");
    assert_eq!(deals_of(&app, user).await, 0);
    assert!(deals_of(&app, heir).await >= deals, "the heir got the deals");
    let history: Vec<&str> =
        run["history"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(&history[..2], ["enqueued", "started"], "{run}");
}

/// True once the clock is a second past `at`.
fn clock_past(at: DateTime<Utc>) -> bool {
    Utc::now() > at + chrono::Duration::seconds(1)
}

#[sqlx::test]
async fn a_scheduled_run_starts_within_seconds_of_its_time_and_never_before(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let at = db_now(&app).await + chrono::Duration::seconds(2);
    let id = app.enqueue(&scheduled_deactivation(&app, app.regular(0), app.regular(1), at)).await;
    let workers = app.start_workers();
    let run = wait_never_early(&app, id, at, |run| run["status"] != "scheduled").await;
    let started = app.wait_for_run(id).await;
    workers.stop().await;
    app.cleanup().await;
    assert_eq!(started["status"], "succeeded", "{started}");
    let began = at_of(&started, "started_at");
    assert!(began >= at, "started before its time: {run}");
    // The sweeper looks every second.
    assert!(began - at < chrono::Duration::seconds(5), "started {:?} late", began - at);
}

#[sqlx::test]
async fn a_canceled_scheduled_run_never_starts(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    let deals = deals_of(&app, user).await;
    let at = db_now(&app).await + chrono::Duration::hours(2);
    let id = app.enqueue(&scheduled_deactivation(&app, user, app.regular(1), at)).await;
    let (status, canceled) = app.post(&format!("/v1/offboardings/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "canceled");

    make_due(&app, id).await;
    let report = app.workers.dispatcher.sweep().await;
    assert_eq!(report.scheduled_started, 0);
    assert!(app.drain().await.is_empty(), "a step of a canceled run ran");
    let run = app.run(id).await;
    assert_eq!(run["status"], "canceled");
    assert!(run["started_at"].is_null(), "{run}");
    assert!(run["steps"].as_array().unwrap().iter().all(|s| s["status"] == "canceled"));
    assert_eq!(user_status(&app, user).await, "active");
    assert_eq!(deals_of(&app, user).await, deals);
    // The user is free for a new request.
    app.enqueue(&app.deactivation(user, json!({}))).await;
}

#[sqlx::test]
async fn rescheduling_moves_the_start_and_only_while_scheduled(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let now = db_now(&app).await;
    let id = app
        .enqueue(&scheduled_deactivation(
            &app,
            app.regular(0),
            app.regular(1),
            now + chrono::Duration::hours(1),
        ))
        .await;
    let path = format!("/v1/offboardings/{id}");
    let patch = |body: Value| {
        let app = &app;
        let path = path.clone();
        async move {
            let (status, _, value) =
                app.call(Method::PATCH, &path, Some(&body.to_string()), &[]).await;
            (status, value)
        }
    };

    let later = now + chrono::Duration::days(30);
    let (status, run) = patch(json!({"effective_at": rfc3339(later)})).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(at_of(&run, "effective_at"), later);
    let moved = run["history"].as_array().unwrap().iter().find(|e| e["kind"] == "rescheduled");
    assert_eq!(moved.expect("rescheduled in the history")["actor"], "token:operator");

    for (body, field) in [
        (json!({"effective_at": rfc3339(now - chrono::Duration::seconds(1))}), "effective_at"),
        (json!({"effective_at": rfc3339(now + chrono::Duration::days(400))}), "effective_at"),
        (json!({"effective_at": "next tuesday"}), "effective_at"),
        (json!({}), "effective_at"),
        (json!({"effective_at": rfc3339(later), "action": "delete"}), "action"),
    ] {
        let (status, error) = patch(body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    assert_eq!(at_of(&app.run(id).await, "effective_at"), later, "a refused move changed it");

    // Moved a second ahead: the sweeper starts it only from then.
    let soon = db_now(&app).await + chrono::Duration::seconds(1);
    let (status, _) = patch(json!({"effective_at": rfc3339(soon)})).await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    loop {
        let report = app.workers.dispatcher.sweep().await;
        if db_now(&app).await < soon {
            assert_eq!(report.scheduled_started, 0, "started before its time");
        }
        if report.scheduled_started == 1 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.drain().await;
    let run = app.run(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(at_of(&run, "started_at") >= soon);
    let start = run["history"].as_array().unwrap().iter().find(|e| e["kind"] == "started");
    assert!(at_of(start.expect("started in the history"), "at") >= soon, "{run}");

    let (status, error) = patch(json!({"effective_at": rfc3339(later)})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "invalid_state");
    let body = json!({"effective_at": rfc3339(later)}).to_string();
    let (status, _, _) = app
        .call(Method::PATCH, &format!("/v1/offboardings/{}", Uuid::now_v7()), Some(&body), &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn a_bad_effective_at_is_refused_and_writes_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let now = db_now(&app).await;
    let user = app.regular(0);
    for at in [
        json!(rfc3339(now - chrono::Duration::minutes(1))),
        json!(rfc3339(now + chrono::Duration::days(367))),
        json!("2027-01-01"),
        json!(true),
    ] {
        let mut body = app.deactivation(user, json!({}));
        body["effective_at"] = at.clone();
        let (status, error) = app.post("/v1/offboardings", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{at}: {error}");
        assert_eq!(error["error"]["field"], "effective_at", "{at}: {error}");
    }
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 0);

    // A scheduled run is the user's active run.
    let at = now + chrono::Duration::days(7);
    app.enqueue(&scheduled_deactivation(&app, user, app.regular(1), at)).await;
    let (status, error) = app.post("/v1/offboardings", &app.deactivation(user, json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "active_run_exists");
}

#[sqlx::test]
async fn a_scheduled_run_whose_target_left_fails_at_its_start_and_moves_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (user, heir) = (app.regular(0), app.regular(1));
    let deals = deals_of(&app, user).await;
    let heir_deals = deals_of(&app, heir).await;
    sqlx::query(
        "INSERT INTO offboard.webhook_endpoints (id, company_id, url, secret)
         VALUES (gen_random_uuid(), $1, 'https://hooks.example.com/offboard', 'whsec_dGVzdA==')",
    )
    .bind(app.company.company_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let at = db_now(&app).await + chrono::Duration::days(1);
    let id = app.enqueue(&scheduled_deactivation(&app, user, heir, at)).await;
    // The heir leaves by other means (the host deactivated them directly).
    sqlx::query("UPDATE crm.users SET status = 'deactivated' WHERE id = $1")
        .bind(heir)
        .execute(&app.pool)
        .await
        .unwrap();

    make_due(&app, id).await;
    assert_eq!(app.workers.dispatcher.sweep().await.scheduled_started, 1);
    assert!(app.drain().await.is_empty(), "a step ran");
    let run = app.run(id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "target_unavailable", "{run}");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("user {heir}")), "{message}");
    assert!(run["steps"].as_array().unwrap().iter().all(|s| s["status"] == "canceled"), "{run}");
    assert_eq!(user_status(&app, user).await, "active");
    assert_eq!(deals_of(&app, user).await, deals);
    assert_eq!(deals_of(&app, heir).await, heir_deals);

    let event: Value = sqlx::query_scalar(
        "SELECT payload FROM offboard.webhook_events WHERE type = 'offboarding.failed'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("an offboarding.failed event");
    assert_eq!(event["data"]["run_id"], id.to_string());
    assert_eq!(event["data"]["error_code"], "target_unavailable");

    // Canceling it frees the user.
    let (status, canceled) = app.post(&format!("/v1/offboardings/{id}/cancel"), &json!({})).await;
    assert_eq!((status, canceled["status"].as_str()), (StatusCode::OK, Some("canceled")));
}

#[sqlx::test]
async fn a_scheduled_run_whose_user_changed_fails_at_its_start(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    let at = db_now(&app).await + chrono::Duration::days(1);
    let id = app.enqueue(&scheduled_deactivation(&app, user, app.regular(1), at)).await;
    sqlx::query("UPDATE crm.users SET status = 'deactivated' WHERE id = $1")
        .bind(user)
        .execute(&app.pool)
        .await
        .unwrap();
    make_due(&app, id).await;
    app.workers.dispatcher.sweep().await;
    let run = app.run(id).await;
    assert_eq!(run["error"]["code"], "user_state_changed", "{run}");
}

#[sqlx::test]
async fn a_policy_with_delete_after_days_schedules_the_deletion(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let company = app.company.company_id;
    let (status, _, policy) = app
        .call(
            Method::PUT,
            &format!("/v1/companies/{company}/offboarding-policy"),
            Some(&json!({"delete_after_days": 30}).to_string()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    assert_eq!(policy["delete_after_days"], 30);

    let user = app.regular(0);
    let id = app.enqueue(&app.deactivation(user, json!({}))).await;
    app.drain().await;
    let deactivation = app.run(id).await;
    assert_eq!(deactivation["status"], "succeeded");
    let (_, list) = app.get(&format!("/v1/offboardings?user_id={user}&status=scheduled")).await;
    let deletion = &list["runs"][0];
    assert_eq!(deletion["action"], "delete", "{list}");
    assert_eq!(
        at_of(deletion, "effective_at"),
        at_of(&deactivation, "finished_at") + chrono::Duration::days(30)
    );
    let deletion_id: Uuid = deletion["id"].as_str().unwrap().parse().unwrap();
    let run = app.run(deletion_id).await;
    assert_eq!(run["requested_by"], "service:policy");
    assert_eq!(run["actor_user_id"], app.admin());

    // Its day comes: the user is deleted.
    make_due(&app, deletion_id).await;
    assert_eq!(app.workers.dispatcher.sweep().await.scheduled_started, 1);
    app.drain().await;
    assert_eq!(app.run(deletion_id).await["status"], "succeeded");
    assert_eq!(user_status(&app, user).await, "deleted");
    // A deletion schedules nothing more.
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs WHERE status = 'scheduled'").await, 0);
}
