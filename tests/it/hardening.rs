//! Hardening (issue 11): a cancel that stops, targets that stay valid, items created
//! during a run, a deadline on every attempt, and one lock order.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use offboard::{
    crm::seed::SeedOptions,
    domain::{ItemType, StepKey},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

/// Items of every type the user owns.
async fn items_owned(app: &TestApp, user: i64) -> i64 {
    let mut n = 0;
    for item in ItemType::ALL {
        n += app
            .count_for(&format!("SELECT count(*) FROM {} WHERE owner_id = $1", item.table()), user)
            .await;
    }
    n
}

/// Open items (by each type's own meaning of open) owned by users who are not active.
async fn open_items_on_inactive_users(app: &TestApp) -> i64 {
    let mut n = 0;
    for item in ItemType::ALL {
        n += app
            .count(&format!(
                "SELECT count(*) FROM (SELECT owner_id FROM {} WHERE {}) t
                 JOIN crm.users u ON u.id = t.owner_id WHERE u.status <> 'active'",
                item.table(),
                item.open_condition()
            ))
            .await;
    }
    n
}

async fn step_of(app: &TestApp, run: Uuid, name: &str) -> (String, i64, Option<String>) {
    sqlx::query_as(
        "SELECT status, done, last_error_code FROM offboard.steps WHERE run_id = $1 AND name = $2",
    )
    .bind(run)
    .bind(name)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Polls `what` until it holds, for at most `limit`.
async fn poll_until<F, Fut>(limit: Duration, mut what: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if what().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[sqlx::test]
async fn cancel_mid_reassignment_stops_at_a_batch_and_nothing_moves_after_canceled(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_REASSIGN_BATCH", "1")],
        SeedOptions { users: 8, items_per_user: 3000, seed: 3 },
    )
    .await;
    let user = app.regular(0);
    // One reassignment, so one step is running when the cancel comes.
    let plan = json!({"deals": {"mode": "single", "scope": "all", "targets": [{"user_id": app.regular(1)}]}});
    let id = app.enqueue(&app.deactivation(user, plan)).await;
    let workers = app.start_workers();
    // Some items have moved, many have not.
    let moving = poll_until(Duration::from_secs(30), || async {
        step_of(&app, id, "reassign_deals").await.1 > 0
    })
    .await;
    assert!(moving, "reassignment started");

    let (status, body) = app.post(&format!("/v1/offboardings/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "canceling", "running steps stop at their next batch: {body}");
    assert!(body["steps_running"].as_i64().unwrap() >= 1, "{body}");

    let run = app.wait_for_run(id).await;
    assert_eq!(run["status"], "canceled", "{run}");
    let owned_when_canceled = items_owned(&app, user).await;
    // Let anything still in flight finish, then look again: nothing moved.
    workers.stop().await;
    assert_eq!(items_owned(&app, user).await, owned_when_canceled);
    assert!(owned_when_canceled > 0, "the cancel came mid-reassignment");
    assert_eq!(app.count("SELECT count(*) FROM offboard.steps WHERE status = 'running'").await, 0);
    let steps = run["steps"].as_array().unwrap();
    assert!(
        steps.iter().all(|s| ["succeeded", "canceled"].contains(&s["status"].as_str().unwrap())),
        "{run}"
    );
    assert!(run["receipt"].is_object(), "a canceled run has its receipt");
    let kinds: Vec<&str> =
        run["history"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"canceling") && kinds.contains(&"canceled"), "{kinds:?}");
    // The user was not deactivated: the login block is lifted.
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'active' AND NOT login_blocked", user).await,
        1
    );
    // Now the user can be offboarded again.
    app.enqueue(&app.deactivation(user, json!({}))).await;
    app.cleanup().await;
}

#[sqlx::test]
async fn a_step_that_fails_while_its_run_is_canceling_is_canceled_not_retried(pool: PgPool) {
    use offboard::ledger::steps::{self, Failure};
    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    let id = app.enqueue(&app.deactivation(user, json!({}))).await;
    let ready = steps::dispatch_ready(
        &app.pool,
        steps::DispatchLimits { max_in_flight: 100, max_in_flight_per_company: 100 },
    )
    .await
    .unwrap();
    let claim = steps::claim(&app.pool, ready[0].key(), "w", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let (status, body) = app.post(&format!("/v1/offboardings/{id}/cancel"), &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("canceling")), "{body}");
    // While its step still runs, the canceling run is the user's active run: a second run is
    // refused.
    let (status, body) = app.post("/v1/offboardings", &app.deactivation(user, json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "active_run_exists");
    let failure = Failure {
        code: "injected",
        message: "a retryable failure",
        permanent: false,
        retry_in: Duration::ZERO,
        ceiling: Duration::ZERO,
    };
    let status = steps::fail(&app.pool, claim.key(), claim.lease_token, &failure).await.unwrap();
    assert_eq!(status, Some(offboard::domain::StepStatus::Canceled));
    assert_eq!(app.run(id).await["status"], "canceled");
    assert!(app.drain().await.is_empty(), "no canceled step becomes ready again");
    // Canceled, it no longer holds the user.
    app.enqueue(&app.deactivation(user, json!({}))).await;
    app.cleanup().await;
}

#[sqlx::test]
async fn a_user_receiving_items_from_an_active_run_cannot_be_deactivated(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (user, target) = (app.regular(0), app.regular(1));
    let plan = json!({"default": {"mode": "single", "targets": [{"user_id": target}]}});
    let id = app.enqueue(&app.deactivation(user, plan)).await;
    let (status, body) = app.post("/v1/offboardings", &app.deactivation(target, json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "user_is_transfer_target");
    assert_eq!(body["error"]["details"]["run_id"], id.to_string());
    // Once the run finished, the target can leave.
    app.drain().await;
    app.enqueue(&app.deactivation(target, json!({}))).await;
    app.cleanup().await;
}

#[sqlx::test]
async fn two_deactivations_naming_each_other_concurrently_leave_no_open_item_on_a_deactivated_user(
    pool: PgPool,
) {
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 24, items_per_user: 30, seed: 5 }).await;
    let regular: Vec<i64> = (0..18).map(|n| app.regular(n)).collect();
    let plan = |to: i64| json!({"default": {"mode": "single", "scope": "all", "targets": [{"user_id": to}]}});
    for chain in regular.chunks(3) {
        // a -> b and b -> c at the same moment: at most one may go through.
        let (a, b, c) = (chain[0], chain[1], chain[2]);
        let first = app.deactivation(a, plan(b));
        let second = app.deactivation(b, plan(c));
        let ((s1, v1), (s2, v2)) = tokio::join!(
            app.post("/v1/offboardings", &first),
            app.post("/v1/offboardings", &second)
        );
        let accepted = [s1, s2].iter().filter(|s| **s == StatusCode::ACCEPTED).count();
        assert_eq!(accepted, 1, "exactly one of the two: {v1} {v2}");
        for (s, v) in [(s1, v1), (s2, v2)] {
            if s != StatusCode::ACCEPTED {
                let code = v["error"]["code"].as_str().unwrap();
                assert!(["user_is_transfer_target", "invalid_target"].contains(&code), "{v}");
            }
        }
    }
    app.drain().await;
    assert_eq!(open_items_on_inactive_users(&app).await, 0);
    app.cleanup().await;
}

/// A request naming a user as its target, while that user's deactivation is being
/// written, waits for it (the user locks) and then judges what it wrote. The enqueue takes
/// its locks and judges in one statement, outside a transaction of its own; the judging
/// must read with a snapshot taken after the locks, not the statement's own, which was
/// taken before it waited and would not see the deactivation's run.
#[sqlx::test]
async fn a_request_naming_a_user_whose_deactivation_is_being_written_waits_and_sees_it(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let (leaving, other) = (app.regular(0), app.regular(1));
    let mut conn = app.pool.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    // The leaving user's enqueue, held open between its locks and its commit.
    sqlx::query("SELECT offboard.lock_users($1, true, '{}')")
        .bind(leaving)
        .execute(&mut *tx)
        .await
        .unwrap();
    let run_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO offboard.runs (id, company_id, user_id, action, status, actor_user_id,
                                    steps_total, steps_remaining, plan)
         VALUES ($1, $2, $3, 'deactivate', 'queued', $4, 15, 15, '{}')",
    )
    .bind(run_id)
    .bind(app.company.company_id)
    .bind(leaving)
    .bind(app.admin())
    .execute(&mut *tx)
    .await
    .unwrap();
    let naming = app.deactivation(
        other,
        json!({"default": {"mode": "single", "targets": [{"user_id": leaving}]}}),
    );
    let writer = async {
        crate::helpers::until_a_lock_is_awaited(&app.pool, "advisory", "the request").await;
        tx.commit().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(app.post("/v1/offboardings", &naming), writer);
    assert_eq!(body["error"]["code"], "invalid_target", "{status} {body}");
    assert_eq!(
        body["error"]["message"],
        format!("transfer.default.targets[0].user_id: user {leaving} is being offboarded"),
        "{body}"
    );
    let written =
        app.count_for("SELECT count(*) FROM offboard.runs WHERE user_id = $1", other).await;
    assert_eq!(written, 0, "no run for the request");
    app.cleanup().await;
}

/// The common request — a leaving user and one target — takes its two locks without the
/// grouping query every other request's locks go through; it must take the same locks:
/// the same keys, exclusive on the user and shared on the target, whichever id is lower.
#[sqlx::test]
async fn a_request_with_one_target_takes_the_locks_any_request_takes(pool: PgPool) {
    async fn held(pool: &PgPool, user: i64, targets: &[i64]) -> Vec<(i64, i64, String)> {
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        sqlx::query("SELECT offboard.lock_users($1, true, $2)")
            .bind(user)
            .bind(targets)
            .execute(&mut *tx)
            .await
            .unwrap();
        let locks = sqlx::query_as(
            "SELECT classid::bigint, objid::bigint, mode FROM pg_locks
             WHERE locktype = 'advisory' AND pid = pg_backend_pid() ORDER BY 1, 2",
        )
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        locks
    }
    for (user, target) in [(5_i64, 9_i64), (9, 5)] {
        // One target: the direct path. The same target twice: the grouping query.
        let direct = held(&pool, user, &[target]).await;
        let grouped = held(&pool, user, &[target, target]).await;
        assert_eq!(direct.len(), 2, "{direct:?}");
        assert_eq!(direct, grouped, "user {user}, target {target}");
        let modes: Vec<&str> = direct.iter().map(|(_, _, m)| m.as_str()).collect();
        assert!(modes.contains(&"ExclusiveLock") && modes.contains(&"ShareLock"), "{direct:?}");
    }
}

#[sqlx::test]
async fn a_target_deactivated_outside_offboard_stops_the_reassignment_until_the_plan_is_fixed(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let (user, target) = (app.regular(0), app.regular(1));
    let plan =
        json!({"deals": {"mode": "single", "scope": "all", "targets": [{"user_id": target}]}});
    let id = app.enqueue(&app.deactivation(user, plan)).await;
    let deals_before =
        app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await;
    // The host deactivates the target itself.
    sqlx::query("UPDATE crm.users SET status = 'deactivated', holds_seat = false WHERE id = $1")
        .bind(target)
        .execute(&app.pool)
        .await
        .unwrap();
    let received =
        app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", target).await;
    app.drain().await;
    assert_eq!(
        step_of(&app, id, "reassign_deals").await,
        ("dead".into(), 0, Some("target_inactive".into()))
    );
    let run = app.run(id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "target_inactive");
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", target).await,
        received,
        "nothing written to an inactive user"
    );
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await,
        deals_before
    );

    // The target is active again (the plan's problem is fixed): an operator's retry finishes it.
    sqlx::query("UPDATE crm.users SET status = 'active', holds_seat = true WHERE id = $1")
        .bind(target)
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = app.post(&format!("/v1/offboardings/{id}/retry"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.drain().await;
    assert_eq!(app.run(id).await["status"], "succeeded");
    assert_eq!(app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await, 0);
    app.cleanup().await;
}

#[sqlx::test]
async fn dashboards_and_leadbooster_never_go_to_an_admin_who_is_leaving(pool: PgPool) {
    let app = TestApp::with(pool, &[], SeedOptions { users: 30, items_per_user: 5, seed: 9 }).await;
    let admins = app.company.admin_ids.clone();
    assert!(admins.len() >= 3, "{admins:?}");
    // The first admin is being offboarded (by the second); a user leaves meanwhile.
    let leaving_admin = json!({
        "company_id": app.company.company_id, "user_id": admins[0], "actor_user_id": admins[1],
        "action": "deactivate", "transfer": {},
    });
    app.enqueue(&leaving_admin).await;
    let user = app.regular(0);
    let id = app.enqueue(&app.deactivation(user, json!({}))).await;
    // Run the user's steps only: the admin's run stays active.
    let positions: Vec<i32> = sqlx::query_scalar(
        "UPDATE offboard.steps SET status = 'queued' WHERE run_id = $1 AND status = 'ready'
         RETURNING position",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for position in positions {
        app.workers.executor.run_step(StepKey::new(id, position)).await.unwrap();
    }
    let mut rest: Vec<StepKey> = sqlx::query_scalar(
        "UPDATE offboard.steps SET status = 'queued' WHERE run_id = $1 AND status = 'ready'
         RETURNING position",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|position| StepKey::new(id, position))
    .collect();
    rest.sort();
    app.workers.executor.run_steps(&rest).await.unwrap();
    let run = app.run(id).await;
    let steps = run["steps"].as_array().unwrap();
    let result = |name: &str| -> Value {
        steps.iter().find(|s| s["name"] == name).map(|s| s["counts"].clone()).unwrap_or(Value::Null)
    };
    let handed = result("transfer_dashboards");
    assert_eq!(handed["new_dashboard_owner_id"], json!(admins[1]), "{handed}");
    let leadbooster = result("hand_over_leadbooster");
    assert_eq!(leadbooster["new_responsible_user_id"], json!(admins[1]), "{leadbooster}");
    app.cleanup().await;
}

#[sqlx::test]
async fn items_and_sessions_created_during_a_run_do_not_stay_behind(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_REASSIGN_BATCH", "2")],
        SeedOptions { users: 8, items_per_user: 600, seed: 4 },
    )
    .await;
    let (user, target) = (app.regular(0), app.regular(1));
    let plan = json!({"deals": {"mode": "ratio", "scope": "all", "targets": [{"user_id": target, "weight": 1}, {"user_id": app.regular(2), "weight": 1}]}});
    let id = app.enqueue(&app.deactivation(user, plan)).await;
    let workers = app.start_workers();
    let moving = poll_until(Duration::from_secs(30), || async {
        step_of(&app, id, "reassign_deals").await.1 > 0
    })
    .await;
    assert!(moving, "reassignment started");
    // Login is blocked: the store refuses a new session.
    let refused = sqlx::query("INSERT INTO crm.sessions (company_id, user_id) VALUES ($1, $2)")
        .bind(app.company.company_id)
        .bind(user)
        .execute(&app.pool)
        .await;
    assert!(refused.is_err(), "a blocked user gets no session");
    // The user still creates deals (through a path that does not look at the flag).
    sqlx::query(
        "INSERT INTO crm.deals (company_id, owner_id, title, status, value, created_at)
         SELECT $1, $2, 'late deal', 'open', 10, now() FROM generate_series(1, 25)",
    )
    .bind(app.company.company_id)
    .bind(user)
    .execute(&app.pool)
    .await
    .unwrap();
    // And a session slips in past the flag (a host that wrote it directly).
    sqlx::query("ALTER TABLE crm.sessions DISABLE TRIGGER sessions_refuse_blocked_login")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO crm.sessions (company_id, user_id) VALUES ($1, $2)")
        .bind(app.company.company_id)
        .bind(user)
        .execute(&app.pool)
        .await
        .unwrap();
    let run = app.wait_for_run(id).await;
    workers.stop().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await, 0);
    assert_eq!(
        app.count_for("SELECT count(*) FROM crm.sessions WHERE user_id = $1", user).await,
        0
    );
    app.cleanup().await;
}

#[sqlx::test]
async fn an_attempt_held_up_past_its_deadline_fails_with_timeout_and_the_run_finishes_later(
    pool: PgPool,
) {
    // Each attempt that passes its deadline leaves its statement waiting on the server until
    // `lock_timeout`: kept short here, above the deadline, so the abandoned waits do not use
    // up the test's small pool while the row is held.
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_STEP_TIMEOUT", "1s"), ("OFFBOARD_DB_LOCK_TIMEOUT", "2s")],
        SeedOptions::default(),
    )
    .await;
    let user = app.regular(0);
    // Another connection holds the user's row.
    let mut hold = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM crm.users WHERE id = $1 FOR UPDATE")
        .bind(user)
        .execute(&mut *hold)
        .await
        .unwrap();
    let id = app.enqueue(&app.deactivation(user, json!({}))).await;
    let workers = app.start_workers();
    let timed_out = poll_until(Duration::from_secs(20), || async {
        step_of(&app, id, "block_login").await.2.as_deref() == Some("timeout")
    })
    .await;
    assert!(timed_out, "the attempt failed with a timeout: {}", app.run(id).await);
    let step = &app.run(id).await["steps"][0];
    assert!(step["last_error"]["message"].as_str().unwrap().contains("deadline"), "{step}");
    hold.commit().await.unwrap();
    let run = app.wait_for_run(id).await;
    workers.stop().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    app.cleanup().await;
}

#[sqlx::test]
async fn many_concurrent_runs_never_deadlock(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            ("OFFBOARD_REASSIGN_BATCH", "3"),
            ("OFFBOARD_FAULTS", "reassign_deals=retryable*6,stop_syncs=retryable*6,hand_over_leadbooster=retryable*4"),
        ],
        SeedOptions { users: 40, items_per_user: 24, seed: 11 },
    )
    .await;
    let target = app.regular(0);
    let mut ids = Vec::new();
    for n in 1..13 {
        let plan = json!({"default": {"mode": "ratio", "scope": "all", "targets": [{"user_id": target, "weight": 2}, {"user_id": app.regular(25 + n % 5), "weight": 1}]}});
        ids.push(app.enqueue(&app.deactivation(app.regular(n), plan)).await);
    }
    let workers = app.start_workers();
    // Cancels and retries land among them.
    for id in ids.iter().step_by(6) {
        let _ = app.post(&format!("/v1/offboardings/{id}/cancel"), &json!({})).await;
    }
    for id in &ids {
        app.wait_for_run(*id).await;
    }
    workers.stop().await;
    let deadlocks = app
        .count("SELECT count(*) FROM offboard.steps WHERE last_error_message LIKE '%40P01%'")
        .await;
    assert_eq!(deadlocks, 0);
    let failed = app.count("SELECT count(*) FROM offboard.runs WHERE status = 'failed'").await;
    assert_eq!(failed, 0, "retryable faults only");
    app.cleanup().await;
}
