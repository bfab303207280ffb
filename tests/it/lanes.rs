//! Where a dispatched task joins the Redis queue: a light company's at the front, a busy
//! company's at the back.

use std::time::Instant;

use chrono::{DateTime, Utc};
use offboard::crm::seed::{self, SeedOptions};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{DEADLINE, TestApp};

/// A company offboarding one user while another company's layoff fills the queue: its
/// first task is taken before any task the layoff had queued. It waited behind them all
/// (on every step of its run, in `bench layoff`: fairness 2.69 × idle).
#[sqlx::test]
async fn a_light_company_s_task_is_taken_before_a_busy_company_s_queued_tasks(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_WORKER_CONCURRENCY", "1")],
        SeedOptions { users: 40, items_per_user: 2, seed: 7 },
    )
    .await;
    // The busy company: 20 deactivations, dispatched up to its limit, not yet taken.
    let heir = app.regular(30);
    for n in 0..20 {
        let plan = json!({"default": {"mode": "single", "targets": [{"user_id": heir}]}});
        app.enqueue(&app.deactivation(app.regular(n), plan)).await;
    }
    app.workers.dispatcher.dispatch_once().await.expect("the layoff's pass");
    let layoff_queued =
        app.count("SELECT count(*) FROM offboard.steps WHERE status = 'queued'").await;
    assert!(layoff_queued >= 16, "the layoff queued only {layoff_queued} steps");

    // The light company: one deactivation.
    let small = seed::seed(&app.pool, SeedOptions { users: 4, items_per_user: 2, seed: 11 })
        .await
        .expect("seed");
    let leaver = small.users.iter().find(|u| !u.is_admin).expect("a regular user").id;
    let run = app
        .enqueue(&json!({
            "company_id": small.company_id,
            "user_id": leaver,
            "actor_user_id": small.admin_ids[0],
            "action": "deactivate",
            "transfer": {},
        }))
        .await;
    app.workers.dispatcher.dispatch_once().await.expect("the light company's pass");

    let workers = app.start_workers();
    app.wait_for_run(run).await;
    let first_started: DateTime<Utc> =
        sqlx::query_scalar("SELECT min(started_at) FROM offboard.steps WHERE run_id = $1")
            .bind(run)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let layoff_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM offboard.steps WHERE company_id = $1 AND started_at < $2",
    )
    .bind(app.company.company_id)
    .bind(first_started)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(layoff_before, 0, "the layoff's steps started before the light company's first");

    // The busy company's tasks, behind it, are all taken in the end.
    let started = Instant::now();
    while app.count("SELECT count(*) FROM offboard.runs WHERE status <> 'succeeded'").await > 0 {
        assert!(started.elapsed() < DEADLINE, "the layoff did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    workers.stop().await;
    app.cleanup().await;
}
