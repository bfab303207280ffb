//! The deactivation flow end to end: HTTP API, ledger, Redis, apalis workers, receipt, and
//! the state of the CRM store afterwards.

use axum::http::StatusCode;
use offboard::{
    crm::seed::SeedOptions,
    domain::ItemType,
    executor::{Fault, Outcome},
    steps::StepError,
};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

/// Counts of what deactivation must leave untouched.
async fn untouched(app: &TestApp, user: i64) -> Vec<i64> {
    let mut counts = Vec::new();
    for sql in [
        "SELECT count(*) FROM crm.notes WHERE owner_id = $1",
        "SELECT count(*) FROM crm.files WHERE owner_id = $1",
        "SELECT count(*) FROM crm.filters WHERE owner_id = $1",
        "SELECT count(*) FROM crm.email_templates WHERE owner_id = $1 AND shared",
        "SELECT count(*) FROM crm.campaigns WHERE owner_id = $1 AND status = 'scheduled'",
        "SELECT count(*) FROM crm.emails WHERE owner_id = $1",
    ] {
        counts.push(app.count_for(sql, user).await);
    }
    counts
}

#[sqlx::test]
async fn deactivation_applies_every_step_through_redis_and_writes_a_receipt(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (leaver, heir) = (app.regular(0), app.regular(1));
    let before = untouched(&app, leaver).await;
    let open_deals_before = app
        .count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'", leaver)
        .await;
    assert!(
        open_deals_before > 0 && before.iter().all(|n| *n > 0),
        "the seed gives the user something of each: {before:?}"
    );

    let workers = app.start_workers();
    let id = app
        .enqueue(&app.deactivation(
            leaver,
            json!({"default": {"mode": "single", "targets": [{"user_id": heir}]}}),
        ))
        .await;
    let run = app.wait_for_run(id).await;
    workers.stop().await;

    assert_eq!(run["status"], "succeeded", "{run:#}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "block_login");
    assert!(steps.iter().all(|s| s["status"] == "succeeded" && s["attempts"] == 1), "{steps:#?}");

    // The store shows every effect.
    let q = |sql: &'static str| app.count_for(sql, leaver);
    assert_eq!(q("SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'deactivated' AND NOT holds_seat AND deactivated_at IS NOT NULL").await, 1);
    assert_eq!(q("SELECT count(*) FROM crm.sessions WHERE user_id = $1").await, 0);
    assert_eq!(q("SELECT count(*) FROM crm.api_tokens WHERE user_id = $1").await, 0);
    assert_eq!(
        q("SELECT count(*) FROM crm.account_syncs WHERE user_id = $1 AND NOT enabled").await,
        4
    );
    assert_eq!(
        q("SELECT count(*) FROM crm.scheduler_links WHERE user_id = $1 AND expires_at <= now()")
            .await,
        1
    );
    assert_eq!(
        q("SELECT count(*) FROM crm.app_installs WHERE installed_by = $1 AND status = 'installed'")
            .await,
        0
    );
    assert_eq!(q("SELECT count(*) FROM crm.webhooks WHERE created_by = $1 AND active").await, 0);
    assert_eq!(q("SELECT count(*) FROM crm.dashboards WHERE owner_id = $1 AND shared").await, 0);
    assert_eq!(
        q("SELECT count(*) FROM crm.dashboards WHERE owner_id = $1 AND public_link_enabled").await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM crm.reports WHERE owner_id = $1 AND shared AND closed_at IS NULL")
            .await,
        0
    );
    assert_eq!(q("SELECT count(*) FROM crm.automations WHERE creator_id = $1 AND active").await, 0);
    assert_eq!(
        q("SELECT count(*) FROM crm.live_chats WHERE operator_id = $1 AND status = 'open'").await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM crm.chatbot_playbooks WHERE responsible_user_id = $1").await,
        0
    );
    assert_eq!(q("SELECT count(*) FROM crm.web_forms WHERE responsible_user_id = $1").await, 0);
    for open in [
        "SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'",
        "SELECT count(*) FROM crm.leads WHERE owner_id = $1 AND status = 'open'",
        "SELECT count(*) FROM crm.activities WHERE owner_id = $1 AND NOT done",
        "SELECT count(*) FROM crm.project_tasks WHERE owner_id = $1 AND status = 'pending'",
        "SELECT count(*) FROM crm.persons WHERE owner_id = $1",
    ] {
        assert_eq!(q(open).await, 0, "{open}");
    }
    // Closed items stay with the user under the default `open` scope.
    assert!(q("SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status <> 'open'").await > 0);

    // Handed to the first admin, flagged for review.
    let admin = app.admin();
    // The admin's own shared dashboard, plus the one handed over (its public link off).
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.dashboards WHERE owner_id = $1 AND shared", admin)
            .await,
        2
    );
    assert_eq!(app.count_for("SELECT count(*) FROM crm.dashboards WHERE owner_id = $1 AND shared AND NOT public_link_enabled", admin).await, 1);
    assert!(app.count_for("SELECT count(*) FROM crm.chatbot_playbooks WHERE responsible_user_id = $1 AND email_review_needed", admin).await >= 1);
    assert!(app.count_for("SELECT count(*) FROM crm.web_forms WHERE responsible_user_id = $1 AND email_review_needed", admin).await >= 1);
    assert!(
        app.count_for(
            "SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'",
            heir
        )
        .await
            >= open_deals_before
    );

    // Private-email purge recorded for deactivated_at + 30 days.
    assert_eq!(
        q("SELECT count(*) FROM offboard.scheduled_purges p JOIN crm.users u ON u.id = p.user_id
           WHERE p.user_id = $1 AND p.status = 'scheduled' AND p.due_at = u.deactivated_at + interval '30 days'").await,
        1
    );
    // Untouched content.
    assert_eq!(untouched(&app, leaver).await, before);

    // The receipt: every step with counts, the review lists, who asked and when.
    let receipt = &run["receipt"];
    assert_eq!(receipt["actor_user_id"], admin);
    assert_eq!(receipt["user_id"], leaver);
    assert!(receipt["requested_at"].is_string() && receipt["finished_at"].is_string());
    let receipt_steps = receipt["steps"].as_array().unwrap();
    assert_eq!(receipt_steps.len(), steps.len());
    let counts_of =
        |name: &str| receipt_steps.iter().find(|s| s["name"] == name).unwrap()["counts"].clone();
    assert_eq!(counts_of("block_login")["sessions_revoked"], 2);
    assert_eq!(counts_of("stop_syncs")["syncs_stopped"], 4);
    assert_eq!(counts_of("reassign_deals")["moved"], open_deals_before);
    assert!(receipt["needs_review"]["automations"].as_array().unwrap().len() == 1);
    assert!(!receipt["needs_review"]["assignment_rules"].as_array().unwrap().is_empty());
    assert_eq!(run["private_email_purge"]["status"], "scheduled");
    app.cleanup().await;
}

#[sqlx::test]
async fn deactivating_an_admin_uninstalls_every_shared_app(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let leaving_admin = app.company.admin_ids[1];
    let shared_before = app
        .count("SELECT count(*) FROM crm.app_installs WHERE shared AND status = 'installed'")
        .await;
    assert!(shared_before >= 4);
    app.enqueue(&app.deactivation(leaving_admin, json!({}))).await;
    app.drain().await;
    assert_eq!(
        app.count("SELECT count(*) FROM crm.app_installs WHERE shared AND status = 'installed'")
            .await,
        0
    );
    // Apps other regular users installed privately stay.
    assert!(
        app.count(
            "SELECT count(*) FROM crm.app_installs WHERE NOT shared AND status = 'installed'"
        )
        .await
            > 0
    );
}

#[sqlx::test]
async fn a_regular_user_takes_only_their_own_apps(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let shared_before = app
        .count("SELECT count(*) FROM crm.app_installs WHERE shared AND status = 'installed'")
        .await;
    app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.drain().await;
    assert_eq!(
        app.count("SELECT count(*) FROM crm.app_installs WHERE shared AND status = 'installed'")
            .await,
        shared_before
    );
}

#[sqlx::test]
async fn the_steps_after_block_login_run_as_one_task_in_one_transaction(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let id = app
        .enqueue(&app.deactivation(
            app.regular(0),
            json!({"deals": {"mode": "single", "targets": [{"user_id": app.regular(1)}]}}),
        ))
        .await;
    let tasks: Vec<Vec<String>> = app
        .drain_tasks()
        .await
        .into_iter()
        .map(|task| {
            task.into_iter()
                .map(|(name, outcome)| {
                    assert_eq!(outcome, Outcome::Succeeded, "{name}");
                    name
                })
                .collect()
        })
        .collect();
    // Login blocked first; the six steps that only wait for it and the reassignment
    // together; the deactivation finished last, once they all had.
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    assert_eq!(tasks[0], ["block_login"]);
    assert_eq!(tasks[1].len(), 7, "{tasks:?}");
    assert!(tasks[1].iter().any(|n| n == "reassign_deals"), "{tasks:?}");
    assert_eq!(tasks[2], ["finish_deactivation"]);
    // One transaction completed the seven: their rows carry its id.
    let transactions = app
        .count(&format!(
            "SELECT count(DISTINCT xmin::text) FROM offboard.steps
             WHERE run_id = '{id}' AND name NOT IN ('block_login', 'finish_deactivation')"
        ))
        .await;
    assert_eq!(transactions, 1);
    let run = app.run(id).await;
    assert_eq!(run["status"], "succeeded");
    assert!(run["steps"].as_array().unwrap().iter().all(|s| s["attempts"] == 1), "{run:#}");
}

#[sqlx::test]
async fn a_step_that_fails_in_its_task_counts_its_attempt_and_the_others_run_without_it(
    pool: PgPool,
) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_BACKOFF_BASE", "10ms"), ("OFFBOARD_BACKOFF_CAP", "20ms")],
        SeedOptions::default(),
    )
    .await;
    let leaver = app.regular(0);
    app.workers
        .executor
        .faults
        .inject("stop_syncs", Fault::Fail(StepError::retryable("timeout", "injected")));
    let id = app.enqueue(&app.deactivation(leaver, json!({}))).await;
    let tasks = app.drain_tasks().await;

    let group = &tasks[1];
    assert_eq!(group.len(), 6, "{tasks:?}");
    for (name, outcome) in group {
        let expected = if name == "stop_syncs" { Outcome::WillRetry } else { Outcome::Succeeded };
        assert_eq!(*outcome, expected, "{name}: {:#}", app.run(id).await["steps"]);
    }
    // The retry travelled alone.
    assert!(
        tasks.iter().any(|t| t.as_slice() == [("stop_syncs".to_string(), Outcome::Succeeded)]),
        "{tasks:?}"
    );
    let run = app.run(id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    for step in run["steps"].as_array().unwrap() {
        let attempts = if step["name"] == "stop_syncs" { 2 } else { 1 };
        assert_eq!(step["attempts"], attempts, "{step}");
    }
    let retries: Vec<&Value> = run["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "step_retry_scheduled")
        .collect();
    assert_eq!(retries.len(), 1, "{:#}", run["history"]);
    assert_eq!(retries[0]["step"], "stop_syncs");
    // What the rolled-back transaction had done of the others was done again, once.
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.account_syncs WHERE user_id = $1 AND NOT enabled",
            leaver
        )
        .await,
        4
    );
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.webhooks WHERE created_by = $1 AND active", leaver)
            .await,
        0
    );
}

#[sqlx::test]
async fn reassignments_in_one_task_share_one_batch_of_rows_per_transaction(pool: PgPool) {
    let batch = 25;
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_REASSIGN_BATCH", &batch.to_string())],
        SeedOptions { users: 8, items_per_user: 200, seed: 7 },
    )
    .await;
    let (leaver, heir) = (app.regular(0), app.regular(1));
    let mut owned = Vec::new();
    for item in ItemType::ALL {
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {} WHERE owner_id = $1",
            item.table()
        )))
        .bind(leaver)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        owned.push((item, ids));
    }
    let total: usize = owned.iter().map(|(_, ids)| ids.len()).sum();
    assert!(total > 4 * batch, "the seed gives the user {total} items");

    let plan =
        json!({"default": {"mode": "single", "scope": "all", "targets": [{"user_id": heir}]}});
    let id = app.enqueue(&app.deactivation(leaver, plan)).await;
    app.drain().await;
    assert_eq!(app.run(id).await["status"], "succeeded");

    // Every row a transaction changes carries its id as xmin.
    let mut per_transaction: std::collections::HashMap<String, usize> = Default::default();
    for (item, ids) in &owned {
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT xmin::text, owner_id FROM {} WHERE id = ANY ($1)",
            item.table()
        )))
        .bind(ids)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert!(rows.iter().all(|(_, owner)| *owner == heir), "{item:?} moved");
        for (xmin, _) in rows {
            *per_transaction.entry(xmin).or_default() += 1;
        }
    }
    let largest = per_transaction.values().copied().max().unwrap();
    assert!(largest <= batch, "one transaction moved {largest} rows");
    assert!(per_transaction.len() >= total.div_ceil(batch), "{per_transaction:?}");
}

#[sqlx::test]
async fn the_same_request_with_one_idempotency_key_yields_one_run(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let body = app.deactivation(app.regular(0), json!({})).to_string();
    let headers = [("idempotency-key", "offboard-42")];
    let (first, h1, v1) =
        app.call(axum::http::Method::POST, "/v1/offboardings", Some(&body), &headers).await;
    let (second, h2, v2) =
        app.call(axum::http::Method::POST, "/v1/offboardings", Some(&body), &headers).await;
    assert_eq!(first, StatusCode::ACCEPTED);
    assert_eq!(second, StatusCode::ACCEPTED);
    assert_eq!(v1["id"], v2["id"]);
    assert_eq!(v2["replayed"], true);
    assert_eq!(h1.get("location"), h2.get("location"));
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 1);

    // The same key with another body is refused and writes nothing.
    let other = app.deactivation(app.regular(1), json!({})).to_string();
    let (status, _, err) =
        app.call(axum::http::Method::POST, "/v1/offboardings", Some(&other), &headers).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 1);
}

#[sqlx::test]
async fn concurrent_requests_with_one_idempotency_key_all_get_the_one_run(pool: PgPool) {
    // Nothing serializes them but the ledger's unique indexes: the losers of the race must
    // find the winner's key and replay it, not be refused for the run the winner wrote.
    let app = TestApp::new(pool).await;
    let body = app.deactivation(app.regular(0), json!({})).to_string();
    let headers = [("idempotency-key", "offboard-race")];
    let replies =
        futures::future::join_all((0..8).map(|_| {
            app.call(axum::http::Method::POST, "/v1/offboardings", Some(&body), &headers)
        }))
        .await;
    let first_id = &replies[0].2["id"];
    for (status, _, value) in &replies {
        assert_eq!(*status, StatusCode::ACCEPTED, "{value}");
        assert_eq!(&value["id"], first_id, "{value}");
    }
    assert_eq!(replies.iter().filter(|(_, _, v)| v["replayed"] == false).count(), 1);
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM offboard.idempotency_keys").await, 1);
}

#[sqlx::test]
async fn runs_are_listed_newest_first_with_a_cursor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let a = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let b = app.enqueue(&app.deactivation(app.regular(1), json!({}))).await;
    let c = app.company.company_id;
    let (status, page) = app.get(&format!("/v1/offboardings?company_id={c}&limit=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["runs"][0]["id"], b.to_string());
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) =
        app.get(&format!("/v1/offboardings?company_id={c}&limit=1&cursor={cursor}")).await;
    assert_eq!(next["runs"][0]["id"], a.to_string());
    let (_, queued) = app.get(&format!("/v1/offboardings?company_id={c}&status=succeeded")).await;
    assert_eq!(queued["runs"].as_array().unwrap().len(), 0);
    let (status, err) = app.get("/v1/offboardings?status=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["code"], "invalid_query");
}
