//! What the enqueue's rules cost PostgreSQL, read from their plan: it must not grow with
//! the company's runs (a layoff's enqueue must not slow down as the layoff goes on).

use offboard::ledger::runs::{self, JUDGE_SQL};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::TestApp;

/// Shared buffers the plan's top node touched.
fn buffers(plan: &Value) -> i64 {
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

/// The judging of a regular user's deactivation, as PostgreSQL ran it.
async fn judged(app: &TestApp, user: i64, target: i64) -> Value {
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {JUDGE_SQL}");
    let (plan,): (Value,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(app.company.company_id)
        .bind(app.admin())
        .bind(user)
        .bind(None::<String>)
        .bind(Some(target))
        .bind(None::<i64>)
        .bind(None::<i64>)
        .bind(None::<i64>)
        .bind("active")
        .bind(true)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    plan
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

/// The plan PostgreSQL keeps for the judging on a connection (its generic plan), made in
/// an enqueue's transaction on an empty, vacuumed ledger, as `EXPLAIN ANALYZE` runs it
/// with `runs` active runs.
async fn kept_plan(app: &TestApp, user: i64, target: i64, runs_after: i64) -> Value {
    sqlx::raw_sql("VACUUM ANALYZE offboard.runs, offboard.idempotency_keys")
        .execute(&app.pool)
        .await
        .unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    // What PostgreSQL chooses after five calls, chosen at once (PostgreSQL 15 has no
    // EXPLAIN (GENERIC_PLAN)).
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
    let mut tx = runs::begin_enqueue(&mut conn).await.unwrap();
    let prepare = format!(
        "PREPARE judge_kept(bigint, bigint, bigint, text, bigint, bigint, bigint, bigint, text, boolean) AS {JUDGE_SQL}"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *tx).await.unwrap();
    let execute = format!(
        "EXECUTE judge_kept({}, {}, {user}, 'key', {target}, NULL, NULL, NULL, 'active', true)",
        app.company.company_id,
        app.admin()
    );
    // The plan is made here, on the empty ledger, and kept.
    sqlx::raw_sql(sqlx::AssertSqlSafe(execute.clone())).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    active_runs(app, 0..runs_after, target).await;
    let mut tx = runs::begin_enqueue(&mut conn).await.unwrap();
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {execute}");
    let (plan,): (Value,) =
        sqlx::query_as(sqlx::AssertSqlSafe(explain)).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    sqlx::raw_sql("DEALLOCATE judge_kept; RESET plan_cache_mode")
        .execute(&mut *conn)
        .await
        .unwrap();
    plan
}

/// A plan made while the ledger was empty scanned `runs` and `idempotency_keys` whole, and
/// kept doing so as a layoff wrote thousands of runs (`runs::BEGIN_ENQUEUE`): the judging
/// read every run of the company, evaluating each one's JSON path.
#[sqlx::test]
async fn a_plan_made_on_an_empty_ledger_still_probes_by_key_when_thousands_of_runs_follow(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let (user, target) = (app.regular(0), app.regular(1));
    let plan = kept_plan(&app, user, target, 5_000).await;
    let scanned = seq_scans(&plan[0]["Plan"]);
    for table in ["runs", "idempotency_keys"] {
        assert!(!scanned.iter().any(|t| t == table), "the kept plan scans {table} whole: {plan:#}");
    }
    let read = buffers(&plan);
    assert!(read < 100, "the kept plan read {read} buffers with 5,000 active runs: {plan:#}");
    app.cleanup().await;
}

/// The tables a plan scans sequentially.
fn seq_scans(node: &Value) -> Vec<String> {
    let mut found = Vec::new();
    if node["Node Type"] == "Seq Scan" {
        found.push(node["Relation Name"].as_str().unwrap_or_default().to_string());
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        found.extend(seq_scans(child));
    }
    found
}

/// An enqueue's judging is planned once per connection, generic from the first request
/// (`runs::BEGIN_ENQUEUE`): the five custom plans PostgreSQL makes first cost 3.4 ms each
/// (`bench layoff`), for the plan it keeps afterwards, the generic one.
#[sqlx::test]
async fn an_enqueue_s_judging_is_planned_generic_from_the_first_request_on_a_connection(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let (user, target) = (app.regular(0), app.regular(1));
    let mut conn = app.pool.acquire().await.unwrap();
    for _ in 0..6 {
        let mut tx = runs::begin_enqueue(&mut conn).await.unwrap();
        let clearance = runs::Clearance {
            company_id: app.company.company_id,
            actor_user_id: app.admin(),
            user_id: user,
            idempotency_key: None,
            user_status: offboard::domain::UserStatus::Active,
            deactivates: true,
            leaves: true,
            targets: &[target],
        };
        let verdict = runs::judge(&mut tx, &clearance).await.unwrap();
        assert_eq!(verdict.refusal, None);
        tx.rollback().await.unwrap();
    }
    let (generic, custom) = crate::step_cost::plans_of(&mut conn, JUDGE_SQL).await;
    assert_eq!((generic, custom), (6, 0), "(generic, custom) plans of six judgings");
    drop(conn);
    app.cleanup().await;
}
