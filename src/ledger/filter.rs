//! Which runs an operator means: one filter for the runs list, the bulk actions and their
//! dry runs, so that what a dry run counts is what the action walks through.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Action, RunStatus, StepStatus};

/// Runs by company, user, status, action, a step in a given state, creation time, run id
/// prefix or suffix and batch. Every field is optional; together they all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// A step of the run by name (with `step_status`: in that state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Some step of the run (or the `step`) in this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_status: Option<StepStatus>,
    /// Created at or after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
    /// The run id starts with these hex digits (dashes ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_prefix: Option<String>,
    /// The run id ends with these hex digits (dashes ignored): run ids are time-ordered, so
    /// the tail is the part that tells two runs of one second apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_suffix: Option<String>,
    /// The batch (`POST /v1/offboarding-batches`) the run came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
}

/// The filter's condition on `offboard.runs r`, binding `$1`–`$11` in the order
/// [`bind_filter!`] binds them.
pub const FILTER_SQL: &str = "($1::bigint IS NULL OR r.company_id = $1)
   AND ($2::bigint IS NULL OR r.user_id = $2)
   AND ($3::text IS NULL OR r.status = $3)
   AND ($4::text IS NULL OR r.action = $4)
   AND (($5::text IS NULL AND $6::text IS NULL)
        OR EXISTS (SELECT 1 FROM offboard.steps fs
                   WHERE fs.run_id = r.id AND ($5::text IS NULL OR fs.name = $5)
                     AND ($6::text IS NULL OR fs.status = $6)))
   AND ($7::timestamptz IS NULL OR r.created_at >= $7)
   AND ($8::timestamptz IS NULL OR r.created_at < $8)
   AND ($9::text IS NULL OR replace(r.id::text, '-', '') LIKE $9 || '%')
   AND ($10::text IS NULL OR replace(r.id::text, '-', '') LIKE '%' || $10)
   AND ($11::uuid IS NULL OR r.batch_id = $11)";

/// Binds a [`RunFilter`] as `$1`–`$11` of [`FILTER_SQL`].
#[macro_export]
macro_rules! bind_filter {
    ($query:expr, $filter:expr) => {{
        let f: &$crate::ledger::filter::RunFilter = $filter;
        $query
            .bind(f.company_id)
            .bind(f.user_id)
            .bind(f.status)
            .bind(f.action)
            .bind(f.step.as_deref())
            .bind(f.step_status)
            .bind(f.created_after)
            .bind(f.created_before)
            .bind(f.id_prefix.as_deref())
            .bind(f.id_suffix.as_deref())
            .bind(f.batch_id)
    }};
}

/// A run id fragment as the filter compares it: lower-case hex without dashes, 1–32
/// digits. `None` for anything else.
pub fn id_fragment(raw: &str) -> Option<String> {
    let hex: String = raw.trim().chars().filter(|c| *c != '-').collect::<String>().to_lowercase();
    (!hex.is_empty() && hex.len() <= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(hex)
}

/// The part of a run id that tells runs apart at a glance: its last 12 hex digits (the
/// random tail of a UUIDv7; the first digits are the creation time, the same for every run
/// of one second).
pub fn short_id(id: Uuid) -> String {
    let simple = id.simple().to_string();
    simple[simple.len() - 12..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bulk operation stores its filter as JSON and its worker reads it back: the words
    /// stored before the filter held enums still read, and are written the same way.
    #[test]
    fn a_stored_filter_reads_back_as_typed_words_and_writes_the_same_json() {
        let stored = serde_json::json!({
            "company_id": 7, "status": "failed", "action": "deactivate_and_delete",
            "step": "uninstall_apps", "step_status": "dead"
        });
        let filter: RunFilter = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(filter.status, Some(RunStatus::Failed));
        assert_eq!(filter.action, Some(Action::DeactivateAndDelete));
        assert_eq!(filter.step_status, Some(StepStatus::Dead));
        assert_eq!(serde_json::to_value(&filter).unwrap(), stored);
        let typo = serde_json::json!({"status": "faild"});
        assert!(serde_json::from_value::<RunFilter>(typo).is_err());
    }

    #[test]
    fn id_fragments_are_hex_without_dashes() {
        assert_eq!(id_fragment("0193-A1b2").as_deref(), Some("0193a1b2"));
        assert_eq!(id_fragment(""), None);
        assert_eq!(id_fragment("xyz"), None);
        assert_eq!(id_fragment(&"a".repeat(33)), None);
    }

    #[test]
    fn the_short_id_is_the_tail() {
        let id: Uuid = "0193a1b2-0000-7000-8000-abcdef012345".parse().unwrap();
        assert_eq!(short_id(id), "abcdef012345");
    }
}
