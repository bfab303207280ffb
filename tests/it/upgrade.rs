//! Upgrades of a ledger with work in it: a migration that changes how the record is keyed
//! must leave the runs in flight finishing as if nothing had happened.

use offboard::ledger::MIGRATOR;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

/// The last migration before steps were keyed by (run_id, position).
const BEFORE_LEAN_STEP_ROW: i64 = 20261203130001;
/// The migration that wrote the enqueue's rules as functions of the ledger.
const ENQUEUE_RULES: &str =
    include_str!("../../migrations/20261209100001_enqueue_rules_in_one_call.sql");

#[sqlx::test(migrations = false)]
async fn a_run_in_flight_when_steps_are_rekeyed_by_run_and_position_finishes_after_the_upgrade(
    pool: PgPool,
) {
    MIGRATOR.run_to(BEFORE_LEAN_STEP_ROW, &pool).await.expect("the old schema");
    // This build enqueues through the rules' functions, which came later: they are lent to
    // the old schema for its enqueues, and taken back before the upgrade writes them.
    sqlx::raw_sql(ENQUEUE_RULES).execute(&pool).await.expect("the rules' functions");
    let app = TestApp::new(pool).await;
    let id = app.enqueue(&app.deactivation(app.regular(0), json!({}))).await;
    let other = app.enqueue(&app.deactivation(app.regular(1), json!({}))).await;
    sqlx::raw_sql(
        "DROP FUNCTION offboard.enqueue_verdict, offboard.target_states, offboard.lock_users",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Under the old schema: the first step of one run was running on a worker that is gone
    // (its lease expired); that of another was queued in a Redis task of the old shape that
    // no worker will read; and the first run's outside call of stop_syncs had succeeded,
    // named by the step's id.
    let first_step = |run| {
        sqlx::query_as::<_, (i64, String)>(
            "SELECT id, name FROM offboard.steps WHERE run_id = $1 AND status = 'ready'",
        )
        .bind(run)
        .fetch_one(&app.pool)
    };
    let (lost, lost_name) = first_step(id).await.unwrap();
    let (queued, _) = first_step(other).await.unwrap();
    sqlx::query(
        "UPDATE offboard.steps SET status = 'running', attempts = 1, lease_token = gen_random_uuid(),
                lease_owner = 'gone', lease_expires_at = now() - interval '1 minute',
                started_at = now() - interval '2 minutes'
         WHERE id = $1",
    )
    .bind(lost)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE offboard.steps SET status = 'queued', queued_at = now() - interval '1 minute'
         WHERE id = $1",
    )
    .bind(queued)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE offboard.runs SET status = 'running', started_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let call = sqlx::query(
        "INSERT INTO offboard.outbound_calls
             (run_id, step_id, company_id, kind, target_id, host, idempotency_key, status,
              attempts, succeeded_at)
         SELECT run_id, id, company_id, 'revoke_grant', 987654, 'oauth.example.test',
                gen_random_uuid(), 'succeeded', 1, now()
         FROM offboard.steps WHERE run_id = $1 AND name = 'stop_syncs'",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(call.rows_affected(), 1, "a deactivation stops the user's syncs");

    MIGRATOR.run(&app.pool).await.expect("the upgrade");

    let workers = app.start_workers();
    let run = app.wait_for_run(id).await;
    let other_run = app.wait_for_run(other).await;
    workers.stop().await;
    assert_eq!(other_run["status"], "succeeded", "{other_run}");
    assert_eq!(run["status"], "succeeded", "{run}");
    let steps = run["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["status"] == "succeeded"), "{run}");
    let lost = steps.iter().find(|s| s["name"] == lost_name.as_str()).unwrap();
    assert_eq!(lost["attempts"], 2, "the lost attempt counts, and the step ran again: {lost}");
    // The call is still the step's: listed under stop_syncs, and not sent again.
    let stop = steps.iter().find(|s| s["name"] == "stop_syncs").unwrap();
    let calls = stop["calls"].as_array().unwrap();
    assert!(
        calls.iter().any(|c| c["target_id"] == 987654 && c["attempts"] == 1),
        "the converted call: {stop}"
    );
    app.cleanup().await;
}
