//! The private-email purge: in the ledger only until due, then pushed to Redis in bounded
//! batches and fired by the queue; durable through the sweeper when Redis lost the task,
//! never twice, never after a reactivation.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{DEADLINE, TestApp};
use offboard::{
    crm::seed::SeedOptions,
    dispatch::{PURGE_BATCH, PURGE_GRACE, PURGES_IN_REDIS},
    steps::private_email_purge::{self, FiredBy},
};

const RETENTION: &[(&str, &str)] = &[("OFFBOARD_PRIVATE_EMAIL_RETENTION", "2s")];

#[derive(Debug, sqlx::FromRow)]
struct Purge {
    id: i64,
    due_at: DateTime<Utc>,
    status: String,
    fired_at: Option<DateTime<Utc>>,
    fired_by: Option<String>,
    emails_deleted: Option<i32>,
}

async fn purge_of(app: &TestApp, user: i64) -> Purge {
    sqlx::query_as("SELECT id, due_at, status, fired_at, fired_by, emails_deleted FROM offboard.scheduled_purges WHERE user_id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn wait_for_purge(app: &TestApp, user: i64) -> Purge {
    let started = Instant::now();
    loop {
        let purge = purge_of(app, user).await;
        if purge.status != "scheduled" {
            return purge;
        }
        assert!(started.elapsed() < DEADLINE, "the purge never fired: {purge:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the clock (no bare sleep of a guessed length) until `at` has passed.
async fn wait_until(at: DateTime<Utc>) {
    let started = Instant::now();
    while Utc::now() <= at {
        assert!(started.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn private_linked(app: &TestApp, user: i64) -> i64 {
    app.count_for("SELECT count(*) FROM crm.emails WHERE owner_id = $1 AND visibility = 'private' AND linked_type IS NOT NULL", user).await
}

async fn other_emails(app: &TestApp, user: i64) -> i64 {
    app.count_for("SELECT count(*) FROM crm.emails WHERE owner_id = $1 AND (visibility = 'shared' OR linked_type IS NULL)", user).await
}

#[sqlx::test]
async fn purges_fire_on_time_from_their_redis_tasks(pool: PgPool) {
    // The sweeper's grace is long here: on a busy machine it could otherwise fire a purge
    // the queue was about to, and this test is about the queue.
    let settings = [RETENTION, &[("OFFBOARD_PURGE_GRACE", "60s")]].concat();
    let app = TestApp::with(pool, &settings, SeedOptions::default()).await;
    // Several users, so a purge that beats its due time by a fraction of a second (Redis
    // schedules in whole seconds) would show up here.
    let users = [app.regular(0), app.regular(1), app.regular(2), app.regular(3)];
    let mut others = Vec::new();
    for user in users {
        others.push(other_emails(&app, user).await);
        assert_eq!(private_linked(&app, user).await, 3);
    }
    let workers = app.start_workers();
    for user in users {
        let id = app.enqueue(&app.deactivation(user, json!({}))).await;
        assert_eq!(app.wait_for_run(id).await["status"], "succeeded");
    }
    let mut purges = Vec::new();
    for user in users {
        purges.push(wait_for_purge(&app, user).await);
    }
    workers.stop().await;
    app.cleanup().await;

    for ((user, purge), others) in users.iter().zip(&purges).zip(&others) {
        assert_eq!(purge.status, "done");
        assert_eq!(purge.fired_by.as_deref(), Some("queue"), "{purge:?}");
        let fired_at = purge.fired_at.unwrap();
        assert!(fired_at >= purge.due_at, "fired before it was due: {purge:?}");
        assert!(fired_at - purge.due_at < chrono::Duration::seconds(5), "late: {purge:?}");
        assert_eq!(purge.emails_deleted, Some(3));
        assert_eq!(private_linked(&app, *user).await, 0);
        assert_eq!(other_emails(&app, *user).await, *others, "shared and unlinked emails stay");
    }
}

#[sqlx::test]
async fn a_purge_whose_redis_task_was_flushed_fires_once_from_the_sweeper(pool: PgPool) {
    let app = TestApp::with(pool, RETENTION, SeedOptions::default()).await;
    let user = app.regular(0);
    app.enqueue(&app.deactivation(user, json!({}))).await;
    app.drain().await;
    // Not due yet: the purge is in the ledger only.
    let due_at = purge_of(&app, user).await.due_at;
    if Utc::now() < due_at {
        assert_eq!(app.workers.dispatcher.push_due_purges().await.unwrap(), 0);
        assert_eq!(app.queues.purge_depth().await.unwrap().total(), 0, "pushed before due");
    }
    wait_until(due_at).await;
    // Due: pushed (with no worker to take it), then Redis loses everything of this install.
    assert_eq!(app.workers.dispatcher.push_due_purges().await.unwrap(), 1);
    assert_eq!(app.queues.purge_depth().await.unwrap().total(), 1);
    app.cleanup().await;
    let workers = app.start_workers();
    let purge = wait_for_purge(&app, user).await;
    assert_eq!(purge.status, "done");
    assert_eq!(purge.fired_by.as_deref(), Some("sweeper"));
    assert!(
        purge.fired_at.unwrap() >= purge.due_at + chrono::Duration::from_std(PURGE_GRACE).unwrap()
    );
    assert_eq!(private_linked(&app, user).await, 0);

    // Never twice: neither the sweeper nor a late queue task fires it again.
    assert!(!workers.shutdown.is_triggered());
    workers.stop().await;
    assert_eq!(app.workers.dispatcher.sweep().await.purges_fired, 0);
    assert_eq!(private_email_purge::fire(&app.pool, purge.id, FiredBy::Queue).await.unwrap(), None);
    let after = purge_of(&app, user).await;
    assert_eq!(
        (after.fired_at, after.fired_by, after.emails_deleted),
        (purge.fired_at, purge.fired_by, purge.emails_deleted)
    );
    app.cleanup().await;
}

#[sqlx::test]
async fn a_reactivated_users_purge_never_fires(pool: PgPool) {
    let app =
        TestApp::with(pool, &[("OFFBOARD_PRIVATE_EMAIL_RETENTION", "1s")], SeedOptions::default())
            .await;
    let user = app.regular(0);
    app.enqueue(&app.deactivation(user, json!({}))).await;
    app.drain().await;
    let reactivate = json!({"company_id": app.company.company_id, "user_id": user, "actor_user_id": app.admin(), "action": "reactivate"});
    app.enqueue(&reactivate).await;
    app.drain().await;
    let purge = purge_of(&app, user).await;
    assert_eq!(purge.status, "canceled");

    // Wait until it would have been overdue, then let both paths try.
    wait_until(purge.due_at + chrono::Duration::from_std(PURGE_GRACE).unwrap()).await;
    assert_eq!(app.workers.dispatcher.push_due_purges().await.unwrap(), 0);
    assert_eq!(app.workers.dispatcher.sweep().await.purges_fired, 0);
    assert_eq!(private_email_purge::fire(&app.pool, purge.id, FiredBy::Queue).await.unwrap(), None);
    assert_eq!(purge_of(&app, user).await.status, "canceled");
    assert_eq!(private_linked(&app, user).await, 3);
    app.cleanup().await;
}

#[sqlx::test]
async fn ten_thousand_purges_due_at_once_fire_exactly_once_in_batches_and_never_early(
    pool: PgPool,
) {
    let app = TestApp::with(pool, &[], SeedOptions { users: 4, items_per_user: 2, seed: 3 }).await;
    let run = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    app.drain().await;
    // Every fire that passes the row's lock and status check writes `fired_at`: counted here.
    sqlx::raw_sql(
        "CREATE TABLE fires (purge_id bigint NOT NULL);
         CREATE FUNCTION count_fire() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO fires VALUES (NEW.id); RETURN NULL; END $$;
         CREATE TRIGGER count_fire AFTER UPDATE OF fired_at ON offboard.scheduled_purges
             FOR EACH ROW EXECUTE FUNCTION count_fire();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let due_at = Utc::now() + chrono::Duration::seconds(3);
    sqlx::query(
        "INSERT INTO offboard.scheduled_purges (company_id, user_id, run_id, due_at)
         SELECT $1, 1000000 + g, $2, $3 FROM generate_series(1, 10000) g",
    )
    .bind(app.company.company_id)
    .bind(run)
    .bind(due_at)
    .execute(&app.pool)
    .await
    .unwrap();

    // Before their time nothing goes to Redis, from either path.
    let workers = app.start_workers();
    assert_eq!(app.workers.dispatcher.push_due_purges().await.unwrap(), 0);
    assert_eq!(app.workers.dispatcher.sweep().await.purges_pushed, 0);
    while Utc::now() < due_at - chrono::Duration::milliseconds(300) {
        assert_eq!(app.queues.purge_depth().await.unwrap().total(), 0, "a purge pushed early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Due together: fed to Redis a bounded number at a time, all fired.
    let pending = || {
        app.count(
            "SELECT count(*) FROM offboard.scheduled_purges
             WHERE status = 'scheduled' AND user_id > 1000000",
        )
    };
    let started = Instant::now();
    let mut deepest = 0;
    while pending().await > 0 {
        assert!(started.elapsed() < DEADLINE * 5, "{} purges still scheduled", pending().await);
        deepest = deepest.max(app.queues.purge_depth().await.unwrap().total());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    workers.stop().await;
    eprintln!("10,000 purges fired in {took:?}; Redis held at most {deepest} purge tasks");
    // Two pushers of one process (the dispatcher and the sweeper) may each add a batch.
    assert!(deepest <= PURGES_IN_REDIS + 2 * PURGE_BATCH as u64, "Redis held {deepest} purges");
    assert!(deepest > 0);
    assert_eq!(
        app.count("SELECT count(*) FROM (SELECT purge_id FROM fires GROUP BY purge_id HAVING count(*) > 1) t")
            .await,
        0,
        "a purge fired twice"
    );
    assert_eq!(app.count("SELECT count(DISTINCT purge_id) FROM fires").await, 10_000);
    assert_eq!(
        app.count("SELECT count(*) FROM offboard.scheduled_purges WHERE fired_at < due_at").await,
        0,
        "a purge fired before it was due"
    );
    app.cleanup().await;
}
