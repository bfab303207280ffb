//! The private-email purge: punctual through its delayed Redis task, durable through the
//! sweeper when Redis lost the task, never twice, never after a reactivation.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{DEADLINE, TestApp};
use offboard::{
    crm::seed::SeedOptions,
    dispatch::PURGE_GRACE,
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

async fn private_linked(app: &TestApp, user: i64) -> i64 {
    app.count_for("SELECT count(*) FROM crm.emails WHERE owner_id = $1 AND visibility = 'private' AND linked_type IS NOT NULL", user).await
}

async fn other_emails(app: &TestApp, user: i64) -> i64 {
    app.count_for("SELECT count(*) FROM crm.emails WHERE owner_id = $1 AND (visibility = 'shared' OR linked_type IS NULL)", user).await
}

#[sqlx::test]
async fn purges_fire_on_time_from_their_redis_tasks(pool: PgPool) {
    let app = TestApp::with(pool, RETENTION, SeedOptions::default()).await;
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
        assert!(fired_at - purge.due_at < chrono::Duration::seconds(2), "late: {purge:?}");
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
    // Redis loses everything of this install before the purge is due.
    let mut conn = app.queues.connection();
    let delayed: i64 = redis::cmd("ZCARD")
        .arg(format!("{}:purges:scheduled", app.queues.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(delayed, 1, "the purge was also a delayed Redis task");
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
    let overdue = purge.due_at + chrono::Duration::from_std(PURGE_GRACE).unwrap();
    let started = Instant::now();
    while Utc::now() <= overdue {
        assert!(started.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.workers.dispatcher.sweep().await.purges_fired, 0);
    assert_eq!(private_email_purge::fire(&app.pool, purge.id, FiredBy::Queue).await.unwrap(), None);
    assert_eq!(purge_of(&app, user).await.status, "canceled");
    assert_eq!(private_linked(&app, user).await, 3);
    app.cleanup().await;
}
