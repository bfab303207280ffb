//! What the batch endpoints answer: a batch with its refused rows and progress.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    domain::{Actor, BatchFormat, BatchStatus},
    ledger::batches::{self, BatchRow},
};

/// A refused row: the code and field a single request would have got.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct RefusedRow {
    /// 1-based: the n-th row (CSV: after the header; NDJSON: the n-th non-empty line).
    pub row: i64,
    pub code: String,
    pub field: Option<String>,
    pub message: String,
    pub company_id: Option<i64>,
}

/// The batch's runs by status, and how far they got.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchProgress {
    /// Runs of the batch (a scoped token: of its company).
    pub total: i64,
    /// Runs that ended (succeeded, failed, canceled, expired or rejected).
    pub finished: i64,
    /// Runs by status, e.g. `{"queued": 3, "succeeded": 40}`.
    pub by_status: BTreeMap<String, i64>,
    /// Items the batch's reassignments moved so far.
    pub items_moved: i64,
    /// Seconds until every run has ended, at the rate they have been ending since the first
    /// started; null until one has, 0 once all have.
    pub eta_seconds: Option<i64>,
    /// Runs ended per second since the first started.
    pub runs_per_second: Option<f64>,
}

/// A batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    pub id: Uuid,
    /// `writing` while its chunks are written, `written`, or `refused` (all or nothing and
    /// a row refused: no run created).
    pub status: BatchStatus,
    pub format: BatchFormat,
    pub all_or_nothing: bool,
    /// `token:operator` or `token:company-<id>`.
    pub submitted_by: Actor,
    pub rows_total: i32,
    /// Rows that became runs.
    pub rows_accepted: i32,
    pub rows_refused: usize,
    /// Each refused row, by row number (a scoped token sees its company's only).
    pub refused: Vec<RefusedRow>,
    pub created_at: DateTime<Utc>,
    pub written_at: Option<DateTime<Utc>>,
    pub runs: BatchProgress,
    /// On a submission: whether it replayed an earlier one with the same Idempotency-Key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
}

impl BatchView {
    pub fn of(batch: BatchRow, company_scope: Option<i64>) -> Self {
        let now = Utc::now();
        let eta_seconds = batches::eta_seconds(&batch, now);
        let runs_per_second = batch.first_started_at.filter(|_| batch.runs_finished > 0).map(|t| {
            let end = if batch.runs_finished == batch.runs_total {
                batch.last_finished_at.unwrap_or(now)
            } else {
                now
            };
            let seconds = (end - t).num_milliseconds().max(1) as f64 / 1000.0;
            (batch.runs_finished as f64 / seconds * 100.0).round() / 100.0
        });
        let refused_all: Vec<RefusedRow> =
            serde_json::from_value(batch.refused.clone()).unwrap_or_default();
        // A scoped token sees the rows of its company (an operator's batch may hold others').
        let refused: Vec<RefusedRow> = match company_scope {
            Some(c) if batch.company_scope != Some(c) => {
                refused_all.into_iter().filter(|r| r.company_id == Some(c)).collect()
            }
            _ => refused_all,
        };
        let by_status = match &batch.runs_by_status {
            Value::Object(map) => {
                map.iter().map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0))).collect()
            }
            _ => BTreeMap::new(),
        };
        Self {
            id: batch.id,
            status: batch.status,
            format: batch.format,
            all_or_nothing: batch.all_or_nothing,
            submitted_by: batch.submitted_by,
            rows_total: batch.rows_total,
            rows_accepted: batch.rows_accepted,
            rows_refused: refused.len(),
            refused,
            created_at: batch.created_at,
            written_at: batch.written_at,
            runs: BatchProgress {
                total: batch.runs_total,
                finished: batch.runs_finished,
                by_status,
                items_moved: batch.items_moved,
                eta_seconds,
                runs_per_second,
            },
            replayed: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    pub batches: Vec<BatchView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}
