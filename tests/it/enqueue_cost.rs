//! What the enqueue's rules cost PostgreSQL, read from their plan: it must not grow with
//! the company's runs (a layoff's enqueue must not slow down as the layoff goes on).

use offboard::ledger::runs::JUDGE_SQL;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::TestApp;

/// Shared buffers the plan's top node touched.
fn buffers(plan: &Value) -> i64 {
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

/// The judging of a regular user's deactivation, as PostgreSQL ran it on `conn`. The
/// top node is the call of `offboard.enqueue_verdict`: its buffers are those of the
/// statements the function ran.
async fn judged_on(conn: &mut sqlx::PgConnection, app: &TestApp, user: i64, target: i64) -> Value {
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {JUDGE_SQL}");
    let (plan,): (Value,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(app.company.company_id)
        .bind(app.admin())
        .bind(user)
        .bind("key")
        .bind(vec![target])
        .bind("active")
        .bind(true)
        .bind("deactivate")
        .fetch_one(conn)
        .await
        .unwrap();
    plan
}

/// [`judged_on`] a connection whose function has made its plans (the first call makes
/// them, reading the catalogs).
async fn judged(app: &TestApp, user: i64, target: i64) -> Value {
    let mut conn = app.pool.acquire().await.unwrap();
    judged_on(&mut conn, app, user, target).await;
    judged_on(&mut conn, app, user, target).await
}

/// Writes an active run for each of `users` (not users of the store), each naming `target`.
pub(crate) async fn active_runs(app: &TestApp, users: std::ops::Range<i64>, target: i64) {
    sqlx::query(
        "INSERT INTO offboard.runs (id, company_id, user_id, action, status, actor_user_id,
                                    steps_total, steps_remaining, plan)
         SELECT gen_random_uuid(), $1, 900000000 + k, 'deactivate', 'queued', $2, 15, 15,
                jsonb_build_object('default', jsonb_build_object('mode', 'single',
                    'targets', jsonb_build_array(jsonb_build_object('user_id', $3::bigint))))
         FROM generate_series($4::bigint, $5::bigint - 1) k",
    )
    .bind(app.company.company_id)
    .bind(app.admin())
    .bind(target)
    .bind(users.start)
    .bind(users.end)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// The transfer-target rule read every run written since the last vacuum (GIN's pending
/// list, which each probe reads whole): 20,000 active runs made the judging 62 buffers,
/// against 17 with a few.
#[sqlx::test]
async fn judging_a_deactivation_costs_the_same_in_a_company_with_thousands_of_active_runs(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let (user, target) = (app.regular(0), app.regular(1));
    active_runs(&app, 0..20, target).await;
    sqlx::raw_sql("ANALYZE offboard.runs").execute(&app.pool).await.unwrap();
    let few = buffers(&judged(&app, user, target).await);
    active_runs(&app, 20..20_020, target).await;
    sqlx::raw_sql("ANALYZE offboard.runs").execute(&app.pool).await.unwrap();
    let plan = judged(&app, user, target).await;
    let many = buffers(&plan);
    assert!(
        many <= few + 10,
        "judging read {many} buffers with 20,000 active runs against {few} with 20: {plan:#}"
    );
    app.cleanup().await;
}

/// Sequential scans this transaction has made of each of `tables` (schema `offboard`),
/// and the rows it has read from them, sequentially or through an index.
async fn reads_of(conn: &mut sqlx::PgConnection, tables: &[&str]) -> Vec<(i64, i64)> {
    let mut reads = Vec::new();
    for table in tables {
        let read: (i64, i64) = sqlx::query_as(
            "SELECT coalesce(seq_scan, 0), coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
             FROM pg_stat_xact_user_tables WHERE schemaname = 'offboard' AND relname = $1",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        reads.push(read);
    }
    reads
}

/// A plan made while the ledger was empty scanned `runs` and `idempotency_keys` whole, and
/// kept doing so as a layoff wrote thousands of runs: the judging read every run of the
/// company, evaluating each one's JSON path. `offboard.enqueue_verdict` plans its
/// statements once per connection, generic, with sequential scans off: here its plans are
/// made on an empty, vacuumed ledger, then used with 5,000 active runs.
#[sqlx::test]
async fn a_plan_made_on_an_empty_ledger_still_probes_by_key_when_thousands_of_runs_follow(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let (user, target) = (app.regular(0), app.regular(1));
    sqlx::raw_sql("VACUUM ANALYZE offboard.runs, offboard.idempotency_keys")
        .execute(&app.pool)
        .await
        .unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    // The function's plans are made here, on the empty ledger, and kept.
    judged_on(&mut conn, &app, user, target).await;
    active_runs(&app, 0..5_000, target).await;
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let tables = ["runs", "idempotency_keys"];
    let before = reads_of(&mut tx, &tables).await;
    let plan = judged_on(&mut tx, &app, user, target).await;
    let after = reads_of(&mut tx, &tables).await;
    tx.rollback().await.unwrap();
    // Buffers are no measure here: a plan made again (the suite's other databases' DDL can
    // flush this connection's caches) reads the catalogs.
    for ((table, before), after) in tables.iter().zip(&before).zip(&after) {
        assert_eq!(before.0, after.0, "sequential scans of {table} in the judging: {plan:#}");
        let rows = after.1 - before.1;
        assert!(rows < 10, "the judging read {rows} rows of {table} with 5,000 active runs");
    }
    drop(conn);
    app.cleanup().await;
}

/// An enqueue's judging is planned once per connection, generic from the first request:
/// the five custom plans PostgreSQL makes first cost 3.4 ms each (`bench layoff`), for the
/// plan it keeps afterwards, the generic one. The rules' function says so itself, with the
/// sequential scans it rules out, so that no caller has to.
#[sqlx::test]
async fn the_rules_function_is_planned_generic_with_sequential_scans_off(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let settings: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(proconfig) FROM pg_proc
         WHERE proname = 'enqueue_verdict' AND pronamespace = 'offboard'::regnamespace",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for wanted in ["enable_seqscan=off", "plan_cache_mode=force_generic_plan"] {
        assert!(settings.iter().any(|s| s == wanted), "{wanted} not in {settings:?}");
    }
    app.cleanup().await;
}
