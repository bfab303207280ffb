//! Every closed set of words offboard stores — statuses, roles, actions, kinds — is a Rust
//! enum (`offboard::domain`), and each column that stores one has a `CHECK (… IN …)`. These
//! tests hold the two together: every variant, bound as the enum, is accepted by its
//! column's `CHECK` and reads back as the same variant; a word that is no variant is
//! refused; and the `CHECK` names exactly the enum's words, no more, no fewer. A variant
//! added to an enum but not to its column (or the reverse) fails here, not in production.

use std::fmt::Debug;

use offboard::domain::{
    Action, BatchFormat, BatchStatus, BreakerState, BulkKind, BulkStatus, CallKind, CallStatus,
    DeliveryStatus, FiredBy, PurgeStatus, RunStatus, StepStatus, UserRole, UserStatus,
};
use sqlx::{PgConnection, PgPool, Postgres};

/// Writes each of `variants` into `table.column` — a copy of the table with its `CHECK`
/// constraints and no `NOT NULL`, so the row needs no other column — and reads it back;
/// then checks the column refuses a word that is no variant, and that its `CHECK` lists
/// exactly `names`.
async fn round_trip<T>(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    variants: &[T],
    names: &[&str],
) where
    T: for<'q> sqlx::Encode<'q, Postgres>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + Copy
        + PartialEq
        + Debug
        + Send
        + Unpin,
{
    let probe = format!("probe_{}_{column}", table.replace('.', "_"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE {probe} (LIKE {table} INCLUDING CONSTRAINTS)"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DO $$ DECLARE c text; BEGIN
             FOR c IN SELECT attname FROM pg_attribute
                      WHERE attrelid = '{probe}'::regclass AND attnum > 0 AND attnotnull LOOP
                 EXECUTE format('ALTER TABLE {probe} ALTER COLUMN %I DROP NOT NULL', c);
             END LOOP;
         END $$"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();

    for &variant in variants {
        let back: T = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {probe} ({column}) VALUES ($1) RETURNING {column}"
        )))
        .bind(variant)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{table}.{column} refuses {variant:?}: {e}"));
        assert_eq!(back, variant, "{table}.{column}");
    }

    let refused = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {probe} ({column}) VALUES ('no_such_word')"
    )))
    .execute(&mut *conn)
    .await;
    match refused {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("23514")),
        other => panic!("{table}.{column} took a word that is no variant: {other:?}"),
    }

    let (schema, name) = table.split_once('.').unwrap();
    let definition: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
         JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = $1 AND t.relname = $2 AND c.conname = $2 || '_' || $3 || '_check'",
    )
    .bind(schema)
    .bind(name)
    .bind(column)
    .fetch_one(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("{table}.{column} has no CHECK constraint: {e}"));
    let mut listed: Vec<&str> = definition.split('\'').skip(1).step_by(2).collect();
    listed.sort_unstable();
    let mut expected = names.to_vec();
    expected.sort_unstable();
    assert_eq!(listed, expected, "{table}.{column}: {definition}");
}

#[sqlx::test]
async fn every_status_word_round_trips_through_its_column(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let c = &mut *conn;
    round_trip(c, "offboard.runs", "status", &RunStatus::ALL, &RunStatus::NAMES).await;
    round_trip(c, "offboard.runs", "action", &Action::ALL, &Action::NAMES).await;
    round_trip(c, "offboard.steps", "status", &StepStatus::ALL, &StepStatus::NAMES).await;
    round_trip(c, "crm.users", "role", &UserRole::ALL, &UserRole::NAMES).await;
    round_trip(c, "crm.users", "status", &UserStatus::ALL, &UserStatus::NAMES).await;
    round_trip(c, "offboard.scheduled_purges", "status", &PurgeStatus::ALL, &PurgeStatus::NAMES)
        .await;
    round_trip(c, "offboard.scheduled_purges", "fired_by", &FiredBy::ALL, &FiredBy::NAMES).await;
    round_trip(
        c,
        "offboard.webhook_deliveries",
        "status",
        &DeliveryStatus::ALL,
        &DeliveryStatus::NAMES,
    )
    .await;
    round_trip(c, "offboard.outbound_calls", "kind", &CallKind::ALL, &CallKind::NAMES).await;
    round_trip(c, "offboard.outbound_calls", "status", &CallStatus::ALL, &CallStatus::NAMES).await;
    round_trip(c, "offboard.bulk_operations", "kind", &BulkKind::ALL, &BulkKind::NAMES).await;
    round_trip(c, "offboard.bulk_operations", "status", &BulkStatus::ALL, &BulkStatus::NAMES).await;
    round_trip(c, "offboard.offboarding_batches", "status", &BatchStatus::ALL, &BatchStatus::NAMES)
        .await;
    round_trip(c, "offboard.offboarding_batches", "format", &BatchFormat::ALL, &BatchFormat::NAMES)
        .await;
}

/// A breaker's state is no column but a `CASE` over `open_until`: each of its words reads
/// back as the variant it means.
#[sqlx::test]
async fn every_breaker_state_the_ledger_answers_is_a_variant(pool: PgPool) {
    sqlx::query(
        "INSERT INTO offboard.outbound_hosts (host, open_until) VALUES
             ('closed.test', NULL), ('open.test', now() + interval '1 hour'),
             ('probing.test', now() - interval '1 second')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let states: Vec<(String, BreakerState)> = offboard::ledger::calls::breakers(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.host, b.state))
        .collect();
    assert_eq!(
        states,
        [
            ("closed.test".to_string(), BreakerState::Closed),
            ("open.test".to_string(), BreakerState::Open),
            ("probing.test".to_string(), BreakerState::HalfOpen),
        ]
    );
}

#[test]
fn a_word_reads_as_its_variant_and_no_other_word_does() {
    assert_eq!("awaiting_approval".parse::<RunStatus>(), Ok(RunStatus::AwaitingApproval));
    assert_eq!(
        serde_json::to_string(&StepStatus::Dead).unwrap(),
        "\"dead\"",
        "the JSON carries the stored word"
    );
    assert_eq!(
        serde_json::from_str::<Action>("\"deactivate_and_delete\"").unwrap(),
        Action::DeactivateAndDelete
    );
    let err = "Deactivate".parse::<Action>().unwrap_err();
    assert!(err.starts_with("unknown action \"Deactivate\"; expected one of deactivate,"), "{err}");
}
