//! The dispatcher's pass as PostgreSQL runs it.

use offboard::ledger::steps::{self, DispatchLimits};
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::helpers::{TestApp, database_url_of};

/// Left to choose, PostgreSQL planned the pass anew each time (a custom plan: 2 ms and 500
/// buffers, as much as dispatching twenty steps); it runs on the prepared statement's
/// generic plan, planned once per connection.
#[sqlx::test]
async fn the_dispatch_pass_is_planned_once_per_connection_not_once_per_pass(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for n in 0..3 {
        let body = app.deactivation(
            app.regular(n),
            json!({"default": {"mode": "single", "targets": [{"user_id": app.admin()}]}}),
        );
        app.enqueue(&body).await;
    }
    let one =
        PgPoolOptions::new().max_connections(1).connect(&database_url_of(&app.pool)).await.unwrap();
    let limits = DispatchLimits { max_in_flight: 2, max_in_flight_per_company: 2 };
    let mut dispatched = 0;
    for _ in 0..8 {
        dispatched += steps::dispatch_ready(&one, limits).await.unwrap().len();
    }
    assert!(dispatched > 0, "the passes dispatched nothing: the test shows nothing");
    let (custom, generic): (i64, i64) = sqlx::query_as(
        "SELECT custom_plans, generic_plans FROM pg_prepared_statements
         WHERE statement LIKE 'WITH RECURSIVE ready_companies AS%'",
    )
    .fetch_one(&one)
    .await
    .unwrap();
    assert_eq!(custom, 0, "the pass was planned anew {custom} times");
    assert_eq!(generic, 8);
    app.cleanup().await;
}
