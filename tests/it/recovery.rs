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
        .env("OFFBOARD_DB_POOL", "8")
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
    // The lease of the killed attempt expired and a second attempt resumed from the cursor.
    assert_eq!(deals_step["attempts"], 2, "{deals_step}");
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
