//! Proof of erasure: after a deletion, no text or JSON column of any table in any schema
//! holds the user's former name, email, phone or picture URL, and neither does anything
//! the service logged while it worked.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

/// Collects everything the service logs, at every level, from every crate.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

/// Keeps the capture on while alive.
pub struct Capturing {
    _guard: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

impl Captured {
    /// Captures what this thread logs, at every level, while the returned guard lives.
    pub fn start() -> (Self, Capturing) {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // With a single scoped subscriber alive, tracing-core computes each callsite's
        // interest once, from whichever thread hits it first; another test's thread (no
        // subscriber) would cache "never". A second live dispatcher makes it ask every
        // subscriber instead.
        let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        (logs, Capturing { _guard: guard, _second: second })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// (schema.table.column, hits) for every text-like column of every base table.
async fn scan(pool: &PgPool, needle: &str) -> Vec<(String, i64)> {
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.table_schema, c.table_name, c.column_name
         FROM information_schema.columns c
         JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE t.table_type = 'BASE TABLE'
           AND c.table_schema NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
           AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'ARRAY')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(columns.len() > 40, "the scan sees the whole store: {} columns", columns.len());
    let mut hits = Vec::new();
    for (schema, table, column) in columns {
        let sql = format!(
            "SELECT count(*) FROM \"{schema}\".\"{table}\" WHERE \"{column}\"::text ILIKE '%' || $1 || '%'"
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(needle)
            .fetch_one(pool)
            .await
            .unwrap();
        if n > 0 {
            hits.push((format!("{schema}.{table}.{column}"), n));
        }
    }
    hits
}

#[sqlx::test]
async fn a_deleted_user_leaves_no_personal_data_in_the_store_or_the_logs(pool: PgPool) {
    let (logs, _capture) = Captured::start();

    let app = TestApp::new(pool).await;
    let user = app.regular(0);
    let (name, email, phone, picture): (String, String, String, String) =
        sqlx::query_as("SELECT name, email, phone, picture_url FROM crm.users WHERE id = $1")
            .bind(user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let redacted = "Interim Name Qzxv";
    let (replacement_name, replacement_email) =
        ("Rhea Vantablack", "rhea.vantablack@successor.example");
    for needle in [&name, &email, &phone, &picture] {
        assert!(
            !scan(&app.pool, needle).await.is_empty(),
            "{needle} is in the store before deletion"
        );
    }

    // Deactivate through Redis and the apalis workers, redact, then delete and replace.
    let workers = app.start_workers();
    let deactivate = app.deactivation(
        user,
        json!({"deals": {"mode": "single", "targets": [{"user_id": app.regular(1)}]}}),
    );
    let id = app.enqueue(&deactivate).await;
    assert_eq!(app.wait_for_run(id).await["status"], "succeeded");
    let request = |action: &str| json!({"company_id": app.company.company_id, "user_id": user, "actor_user_id": app.admin(), "action": action});
    let mut redact = request("redact");
    redact["display_name"] = json!(redacted);
    let id = app.enqueue(&redact).await;
    assert_eq!(app.wait_for_run(id).await["status"], "succeeded");
    let mut delete = request("delete");
    delete["replacement"] =
        json!({"first_name": "Rhea", "last_name": "Vantablack", "email": replacement_email});
    delete["transfer"] =
        json!({"default": {"mode": "single", "scope": "all", "targets": [{"replacement": true}]}});
    let id = app.enqueue(&delete).await;
    let run = app.wait_for_run(id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    workers.stop().await;
    app.cleanup().await;

    // The store: every schema, every text and JSON column.
    for needle in [&name, &email, &phone, &picture, &redacted.to_string()] {
        assert_eq!(scan(&app.pool, needle).await, vec![], "{needle} survived the deletion");
    }
    // The API shows none of it either.
    let shown = app.run(id).await.to_string();
    for needle in [&name, &email, &phone, &picture] {
        assert!(!shown.contains(needle.as_str()));
    }

    // The logs: nothing about the deleted user, the redaction or the replacement person.
    let logged = logs.text();
    assert!(logged.contains(&format!("user_id={user}")), "the capture saw the service log");
    for needle in [
        &name,
        &email,
        &phone,
        &picture,
        &redacted.to_string(),
        &replacement_name.to_string(),
        &replacement_email.to_string(),
    ] {
        assert!(!logged.to_lowercase().contains(&needle.to_lowercase()), "{needle} was logged");
    }
}
