//! The audit trail of a company, read page by page for the export: its runs (who asked,
//! who approved, where the request came from (an identity provider, a policy, a batch), counts per step, items per recipient) and
//! every history entry of them. Ids, codes and counts only — the ledger holds no names or
//! emails, and error messages are left out.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::runs::requested_by_sql;
use crate::domain::{Action, Actor, AuditRecord, RunEventKind, RunStatus};

/// One row of the export: a run (`record = "run"`) or one entry of a run's history
/// (`record = "event"`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub record: AuditRecord,
    /// A run's creation, or the history entry's time.
    pub at: DateTime<Utc>,
    pub run_id: Uuid,
    pub company_id: i64,
    pub user_id: i64,
    pub action: Action,
    /// The run's status now (for an event row too).
    pub status: RunStatus,
    /// Who asked for the run, or who made the history entry.
    pub actor: Actor,
    /// The admin who approved or rejected the run.
    pub approver_user_id: Option<i64>,
    /// The batch (`POST /v1/offboarding-batches`) the run came from.
    pub batch_id: Option<Uuid>,
    /// The history entry's kind (`enqueued`, `started`, `approved`, `step_dead`, …);
    /// empty on a run row.
    pub event: Option<RunEventKind>,
    pub step: Option<String>,
    pub error_code: Option<String>,
    pub effective_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A run row: each step's counts, by step name.
    pub step_counts: Option<Value>,
    /// A run row: the items each recipient received, by recipient user id and item type.
    pub items_by_recipient: Option<Value>,
    /// An event row: the entry's detail (ids and codes).
    pub detail: Option<Value>,
    /// Keyset position: a run's id, or an event's id.
    #[serde(skip)]
    pub event_id: Option<i64>,
}

/// The window and the company an export covers.
#[derive(Debug, Clone, Copy)]
pub struct AuditRange {
    pub company_id: i64,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// The company's runs created in the range after `(created_at, id)` `after`, oldest
/// first, at most `limit`.
pub async fn runs_page(
    pool: &PgPool,
    range: AuditRange,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as(concat!(
        "SELECT 'run' AS record, r.created_at AS at, r.id AS run_id, r.company_id, r.user_id,
                r.action, r.status, ",
        requested_by_sql!("r.params", "r.actor_user_id"),
        " AS actor,
                r.approver_user_id, r.batch_id, NULL::text AS event, NULL::text AS step, r.error_code,
                r.effective_at, r.finished_at,
                (SELECT jsonb_object_agg(s.name, coalesce(s.result, '{}'::jsonb) - 'to')
                 FROM offboard.steps s WHERE s.run_id = r.id) AS step_counts,
                (SELECT jsonb_object_agg(recipient, items)
                 FROM (SELECT t.key AS recipient,
                              jsonb_object_agg(s.result ->> 'item_type', t.value::bigint) AS items
                       FROM offboard.steps s, jsonb_each(s.result -> 'to') t
                       WHERE s.run_id = r.id AND s.name LIKE 'reassign\\_%'
                         AND jsonb_typeof(s.result -> 'to') = 'object'
                       GROUP BY t.key) x) AS items_by_recipient,
                NULL::jsonb AS detail, NULL::bigint AS event_id
         FROM offboard.runs r
         WHERE r.company_id = $1
           AND ($2::timestamptz IS NULL OR r.created_at >= $2)
           AND ($3::timestamptz IS NULL OR r.created_at < $3)
           AND ($4::timestamptz IS NULL OR (r.created_at, r.id) > ($4, $5))
         ORDER BY r.created_at, r.id
         LIMIT $6",
    ))
    .bind(range.company_id)
    .bind(range.from)
    .bind(range.to)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The history entries of the company's runs made in the range, after entry id `after`,
/// in the order they were made, at most `limit`.
pub async fn events_page(
    pool: &PgPool,
    range: AuditRange,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT 'event' AS record, e.at, r.id AS run_id, r.company_id, r.user_id, r.action,
                r.status, e.actor, r.approver_user_id, r.batch_id, e.kind AS event, e.step,
                e.detail ->> 'code' AS error_code, r.effective_at, r.finished_at,
                NULL::jsonb AS step_counts, NULL::jsonb AS items_by_recipient,
                e.detail, e.id AS event_id
         FROM offboard.run_events e
         JOIN offboard.runs r ON r.id = e.run_id
         WHERE r.company_id = $1
           AND ($2::timestamptz IS NULL OR e.at >= $2)
           AND ($3::timestamptz IS NULL OR e.at < $3)
           AND e.id > $4
         ORDER BY e.id
         LIMIT $5",
    )
    .bind(range.company_id)
    .bind(range.from)
    .bind(range.to)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
