//! What the steps' own statements cost PostgreSQL, read from their plans: a layoff's steps
//! must not slow down as its runs accumulate.

use offboard::steps::first_admin::first_admin;
use sqlx::{Acquire, PgPool};

use crate::{enqueue_cost::active_runs, helpers::TestApp};

/// The search for the company's first admin who stays (the dashboards' and LeadBooster's
/// recipient), called on one connection while the ledger is empty and vacuumed, then with a
/// thousand active runs: PostgreSQL kept the plan it had made on the empty ledger, which read
/// every run of the company for each call (a thousand buffers a call in `bench layoff`)
/// instead of probing the admins' own keys.
#[sqlx::test]
async fn the_first_admin_who_stays_is_found_by_key_after_thousands_of_runs_were_written(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let (company, leaving_admin) = (app.company.company_id, app.admin());
    let staying_admin = app.company.admin_ids[1];
    sqlx::raw_sql("VACUUM ANALYZE offboard.runs").execute(&app.pool).await.unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    // More calls than PostgreSQL makes before it settles on a generic plan (five).
    for _ in 0..8 {
        let found = first_admin(&mut conn, company, leaving_admin).await.unwrap();
        assert_eq!(found, staying_admin);
    }
    active_runs(&app, 0..1_000, app.regular(0)).await;
    let mut tx = conn.begin().await.unwrap();
    let before = runs_read(&mut tx).await;
    let found = first_admin(&mut tx, company, leaving_admin).await.unwrap();
    assert_eq!(found, staying_admin);
    let read = runs_read(&mut tx).await - before;
    assert!(read <= 10, "finding the first admin read {read} of 1,000 active runs");
    tx.rollback().await.unwrap();
    drop(conn);
    app.cleanup().await;
}

/// The rows of `offboard.runs` this connection has read, sequentially or through an index,
/// as its statistics count them so far.
async fn runs_read(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables
         WHERE schemaname = 'offboard' AND relname = 'runs'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}
