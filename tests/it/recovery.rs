//! A worker process killed mid-run: another one finishes the run, and every effect is
//! applied exactly once.

use std::{process::Stdio, time::Instant};

use serde_json::json;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::helpers::{DEADLINE, TestApp, database_url_of};
use offboard::crm::seed::SeedOptions;

/// Starts `offboard worker` as a child process against this test's database and queues.
pub fn spawn_worker(app: &TestApp, extra: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_offboard"));
    command
        .arg("worker")
        .env("DATABASE_URL", database_url_of(&app.pool))
        .env("REDIS_URL", &app.settings.redis_url)
        .env("OFFBOARD_QUEUE_PREFIX", app.queues.prefix())
        .env("OFFBOARD_LEASE", "1s")
        .env("OFFBOARD_REDELIVER_AFTER", "1s")
        .env("OFFBOARD_DISPATCH_INTERVAL", "20ms")
        .env("OFFBOARD_POLL_INTERVAL", "20ms")
        .env("OFFBOARD_WORKER_DB_POOL", "8")
        .env(
            "RUST_LOG",
            std::env::var("OFFBOARD_TEST_WORKER_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in extra {
        command.env(k, v);
    }
    command.spawn().expect("spawn offboard worker")
}

#[sqlx::test]
async fn a_worker_killed_mid_reassignment_is_replaced_and_every_effect_lands_once(pool: PgPool) {
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 6, items_per_user: 4_000, seed: 11 }).await;
    let (leaver, a, b) = (app.regular(0), app.regular(1), app.regular(2));
    let deals_before: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM crm.deals WHERE owner_id = $1 ORDER BY created_at, id")
            .bind(leaver)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let plan = json!({"deals": {"mode": "ratio", "scope": "all",
                                "targets": [{"user_id": a, "weight": 2}, {"user_id": b, "weight": 1}]}});
    let (_, dry_run) = app
        .post(
            &format!("/v1/companies/{}/users/{leaver}/preview", app.company.company_id),
            &json!({"transfer": plan}),
        )
        .await;

    let small_batches = [("OFFBOARD_REASSIGN_BATCH", "10")];
    let mut first = spawn_worker(&app, &small_batches);
    let id = app.enqueue(&app.deactivation(leaver, plan.clone())).await;

    // Kill the worker while the deals are half moved.
    let started = Instant::now();
    let killed_at_done = loop {
        let run = app.run(id).await;
        let deals = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "reassign_deals")
            .unwrap()
            .clone();
        let done = deals["done"].as_i64().unwrap();
        if deals["status"] == "running" && done > 0 {
            first.start_kill().unwrap();
            first.wait().await.unwrap();
            break done;
        }
        assert!(
            deals["status"] != "succeeded",
            "the reassignment finished before the kill; make it longer"
        );
        assert!(started.elapsed() < DEADLINE, "the reassignment never started");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    assert!(killed_at_done < deals_before.len() as i64);

    let mut second = spawn_worker(&app, &small_batches);
    let run = app.wait_for_run(id).await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    app.cleanup().await;

    assert_eq!(run["status"], "succeeded", "{run:#}");
    let deals_step =
        run["steps"].as_array().unwrap().iter().find(|s| s["name"] == "reassign_deals").unwrap();
    // The lease of the killed attempt expired and a second claim resumed from the cursor;
    // the lost attempt had committed batches, so it is not held against the step.
    let lost = run["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "lease_expired" && e["step"] == "reassign_deals")
        .count();
    assert_eq!(lost, 1, "{:#}", run["history"]);
    assert_eq!(deals_step["attempts"], 1, "{deals_step}");
    assert_eq!(deals_step["done"], deals_before.len());
    assert_eq!(deals_step["total"], deals_before.len());

    // Item for item, each deal went where the ratio plan puts its position.
    let owners: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, owner_id FROM crm.deals WHERE id = ANY ($1)")
            .bind(&deals_before)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    for (position, deal) in deals_before.iter().enumerate() {
        let expected = if position % 3 < 2 { a } else { b };
        let owner = owners.iter().find(|(id, _)| id == deal).unwrap().1;
        assert_eq!(owner, expected, "deal {deal} at position {position}");
    }
    // And the dry run promised exactly that split.
    let promised = &dry_run["items"]["deals"]["targets"];
    let moved_to_a = owners.iter().filter(|(_, o)| *o == a).count() as i64;
    assert_eq!(promised[0]["count"].as_i64().unwrap(), moved_to_a);
    assert_eq!(run["receipt"]["reassigned"]["deals"]["to"][a.to_string()], moved_to_a);

    // Every other step applied once: one completion each, in the history only once.
    let completions = app
        .count(&format!(
            "SELECT count(*) FROM offboard.steps WHERE run_id = '{id}' AND status = 'succeeded'"
        ))
        .await;
    assert_eq!(completions, run["steps"].as_array().unwrap().len() as i64);
    let finishes = app
        .count(&format!(
            "SELECT count(*) FROM offboard.run_events WHERE run_id = '{id}' AND kind = 'succeeded'"
        ))
        .await;
    assert_eq!(finishes, 1);
    assert_eq!(
        app.count_for("SELECT count(*) FROM offboard.scheduled_purges WHERE user_id = $1", leaver)
            .await,
        1
    );
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-s", name, &pid]).status().unwrap();
    assert!(status.success());
}

/// Polls until the deals reassignment of `run` is running with some progress.
async fn until_reassigning(app: &TestApp, run: uuid::Uuid) {
    let started = Instant::now();
    loop {
        let body = app.run(run).await;
        let deals = body["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "reassign_deals")
            .unwrap()
            .clone();
        if deals["status"] == "running" && deals["done"].as_i64().unwrap() > 0 {
            return;
        }
        assert!(deals["status"] != "succeeded", "finished before the signal");
        assert!(started.elapsed() < DEADLINE, "never started");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

async fn exit_within(child: &mut Child, limit: std::time::Duration) -> std::process::ExitStatus {
    tokio::time::timeout(limit, child.wait())
        .await
        .expect("the worker did not exit in time")
        .unwrap()
}

#[sqlx::test]
async fn sigterm_lets_the_running_step_finish_then_exits_cleanly(pool: PgPool) {
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 5, items_per_user: 3_000, seed: 12 }).await;
    let leaver = app.regular(0);
    let mut worker = spawn_worker(
        &app,
        &[("OFFBOARD_REASSIGN_BATCH", "10"), ("OFFBOARD_SHUTDOWN_TIMEOUT", "60s")],
    );
    let plan = json!({"deals": {"mode": "single", "scope": "all", "targets": [{"user_id": app.regular(1)}]}});
    let id = app.enqueue(&app.deactivation(leaver, plan)).await;
    until_reassigning(&app, id).await;

    signal(&worker, "TERM");
    let status = exit_within(&mut worker, std::time::Duration::from_secs(60)).await;
    assert!(status.success(), "exit status {status:?}");
    // The step that was running when the signal came finished before the exit.
    let (status, done, total): (String, i64, Option<i64>) =
        sqlx::query_as("SELECT status, done, total FROM offboard.steps WHERE run_id = $1 AND name = 'reassign_deals'")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "succeeded");
    assert_eq!(Some(done), total);
    assert_eq!(app.count("SELECT count(*) FROM offboard.steps WHERE status = 'running'").await, 0);

    // The rest of the run waits for the next worker.
    let mut next = spawn_worker(&app, &[]);
    assert_eq!(app.wait_for_run(id).await["status"], "succeeded");
    next.start_kill().unwrap();
    next.wait().await.unwrap();
    app.cleanup().await;
}

#[sqlx::test]
async fn a_second_signal_exits_at_once_and_the_lease_recovers_the_step(pool: PgPool) {
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 5, items_per_user: 3_000, seed: 13 }).await;
    let leaver = app.regular(0);
    let mut worker = spawn_worker(
        &app,
        &[("OFFBOARD_REASSIGN_BATCH", "10"), ("OFFBOARD_SHUTDOWN_TIMEOUT", "60s")],
    );
    let plan = json!({"deals": {"mode": "single", "scope": "all", "targets": [{"user_id": app.regular(1)}]}});
    let id = app.enqueue(&app.deactivation(leaver, plan)).await;
    until_reassigning(&app, id).await;

    signal(&worker, "TERM");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await; // let the first signal land
    signal(&worker, "TERM");
    let status = exit_within(&mut worker, std::time::Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(130));

    let mut next = spawn_worker(&app, &[("OFFBOARD_REASSIGN_BATCH", "500")]);
    let run = app.wait_for_run(id).await;
    next.start_kill().unwrap();
    next.wait().await.unwrap();
    app.cleanup().await;
    assert_eq!(run["status"], "succeeded");
    let deals =
        run["steps"].as_array().unwrap().iter().find(|s| s["name"] == "reassign_deals").unwrap();
    assert_eq!(deals["attempts"], 1, "the lost attempt had made progress: {deals}");
    assert!(run["history"].as_array().unwrap().iter().any(|e| e["kind"] == "lease_expired"));
    assert_eq!(deals["done"], deals["total"]);
}

#[sqlx::test]
async fn a_claim_resumes_from_stored_progress_and_a_lost_lease_records_nothing(pool: PgPool) {
    use offboard::ledger::steps;
    let app = TestApp::new(pool).await;
    let (leaver, target) = (app.regular(0), app.regular(1));
    let plan = json!({"deals": {"mode": "single", "targets": [{"user_id": target}]}});
    let id = app.enqueue(&app.deactivation(leaver, plan)).await;
    // As if an earlier attempt had committed a batch and lost its worker.
    let position: i32 = sqlx::query_scalar(
        "UPDATE offboard.steps SET status = 'queued', done = 3, total = 9,
                cursor = '{\"created_at\": \"2025-01-06T09:00:00.000000Z\", \"id\": 7}'
         WHERE run_id = $1 AND name = 'reassign_deals' RETURNING position",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let step_id = offboard::domain::StepKey::new(id, position);

    let lease = std::time::Duration::from_secs(10);
    let claim = steps::claim(&app.pool, step_id, "first", lease).await.unwrap().unwrap();
    assert_eq!((claim.done, claim.total), (3, Some(9)));
    assert_eq!(claim.cursor.as_ref().unwrap()["id"], 7);

    // The lease expires and another worker takes the step over.
    sqlx::query(
        "UPDATE offboard.steps SET lease_token = gen_random_uuid()
         WHERE run_id = $1 AND position = $2",
    )
    .bind(id)
    .bind(position)
    .execute(&app.pool)
    .await
    .unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    let cursor = json!({"created_at": "2025-01-06T09:00:00.000000Z", "id": 8});
    let recorded =
        steps::record_progress(&mut tx, step_id, claim.lease_token, 4, 9, &cursor).await.unwrap();
    assert!(!recorded, "a batch under a lost lease must not be recorded");
    let completed =
        steps::complete(&mut tx, step_id, claim.lease_token, &json!({}), 9, 9).await.unwrap();
    assert!(completed.is_none(), "a step under a lost lease must not complete");
    tx.rollback().await.unwrap();
    let (status, done): (String, i64) = sqlx::query_as(
        "SELECT status, done FROM offboard.steps WHERE run_id = $1 AND position = $2",
    )
    .bind(id)
    .bind(position)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), done), ("running", 3));
    app.cleanup().await;
}
