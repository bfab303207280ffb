//! Operators at scale: bulk retry and cancel by filter (with a dry run, worked through by
//! the workers in chunks, progress readable at `/v1/bulk-operations/{id}`), restart of a
//! run from a chosen step, the filter the runs list shares with them, and the per-second
//! series the dashboard draws as charts.

mod bulk;
mod restart;
mod series;

use std::collections::HashMap;

use chrono::DateTime;
use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{auth::Caller, error::ApiError};
use crate::{
    domain::{
        Action, Actor, FieldError,
        wire::{self, Object},
    },
    ledger::filter::{RunFilter, id_fragment},
    steps::StepKind,
};

pub use self::{
    bulk::{
        __path_bulk_cancel, __path_bulk_operation, __path_bulk_operations, __path_bulk_retry,
        BulkDryRun, BulkOperationList, BulkOperationView, BulkRequest, bulk_cancel, bulk_operation,
        bulk_operations, bulk_retry,
    },
    restart::{__path_restart, RestartRequest, Restarted, restart},
    series::{__path_series, Series, SeriesPoint, series},
};

/// Every status a run can be in (one list, in the domain).
pub use crate::domain::run_status::RUN_STATUSES;
/// Every status a step can be in (one list, in the domain).
pub const STEP_STATUSES: [&str; 8] = crate::domain::StepStatus::NAMES;

/// The filter's fields, as a query string or a JSON body names them (those of
/// [`FilterBody`]).
pub const FILTER_FIELDS: [&str; 11] = [
    "company_id",
    "user_id",
    "status",
    "action",
    "step",
    "step_status",
    "created_after",
    "created_before",
    "id_prefix",
    "id_suffix",
    "batch_id",
];

/// The filter of bulk actions (and, as query parameters, of the runs list), as serde reads
/// it; [`FilterBody::validate`] checks the values against the ledger's vocabulary.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    #[serde(default, deserialize_with = "number")]
    #[schema(minimum = 1)]
    pub company_id: Option<i64>,
    #[serde(default, deserialize_with = "number")]
    #[schema(minimum = 1)]
    pub user_id: Option<i64>,
    /// A run status.
    #[serde(default, deserialize_with = "wire::optional_string")]
    pub status: Option<String>,
    /// deactivate, delete, deactivate_and_delete, redact, reactivate or undo_transfer.
    #[serde(default, deserialize_with = "wire::optional_string")]
    pub action: Option<String>,
    /// A step name, e.g. uninstall_apps (with `step_status`: in that state).
    #[serde(default, deserialize_with = "wire::optional_string")]
    pub step: Option<String>,
    /// A step status: some step (or `step`) of the run is in it.
    #[serde(default, deserialize_with = "wire::optional_string")]
    pub step_status: Option<String>,
    /// Created at or after (RFC 3339).
    #[serde(default, deserialize_with = "wire::optional_string")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub created_after: Option<String>,
    /// Created before (RFC 3339).
    #[serde(default, deserialize_with = "wire::optional_string")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub created_before: Option<String>,
    /// The run id starts with these hex digits (dashes ignored).
    #[serde(default, deserialize_with = "wire::optional_string")]
    pub id_prefix: Option<String>,
    /// The run id ends with these hex digits (dashes ignored).
    #[serde(default, deserialize_with = "wire::optional_string")]
    pub id_suffix: Option<String>,
    /// The batch the run came from (`POST /v1/offboarding-batches`).
    #[serde(default, deserialize_with = "wire::optional_string")]
    #[schema(value_type = Option<Uuid>)]
    pub batch_id: Option<String>,
}

impl Object<'_> for FilterBody {
    const NOT_AN_OBJECT: &'static str = "must be an object";
}

/// A positive whole number, as JSON gives it or as a query string's text.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let bad = || D::Error::custom("must be a positive whole number");
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_i64().filter(|n| *n > 0).map(Some).ok_or_else(bad),
        Value::String(s) => s.parse::<i64>().ok().filter(|n| *n > 0).map(Some).ok_or_else(bad),
        _ => Err(bad()),
    }
}

impl FilterBody {
    /// The filter, its values checked. Errors name the field.
    pub fn validate(self) -> Result<RunFilter, FieldError> {
        fn one_of<T: std::str::FromStr>(
            name: &str,
            value: Option<String>,
            allowed: &[&str],
        ) -> Result<Option<T>, FieldError> {
            value
                .map(|v| {
                    v.parse::<T>().map_err(|_| {
                        FieldError::new(name, format!("must be one of {}", allowed.join(", ")))
                    })
                })
                .transpose()
        }
        let time = |name: &str, value: Option<String>| {
            value
                .map(|v| {
                    DateTime::parse_from_rfc3339(&v).map(|t| t.to_utc()).map_err(|_| {
                        FieldError::new(name, "must be an RFC 3339 time, e.g. 2026-12-02T06:00:00Z")
                    })
                })
                .transpose()
        };
        let fragment = |name: &str, value: Option<String>| {
            value
                .map(|v| {
                    id_fragment(&v)
                        .ok_or_else(|| FieldError::new(name, "must be 1-32 hex digits of a run id"))
                })
                .transpose()
        };
        if let Some(name) = &self.step
            && StepKind::from_name(name).is_none()
        {
            return Err(FieldError::new("step", "is not a step name (e.g. uninstall_apps)"));
        }
        Ok(RunFilter {
            company_id: self.company_id,
            user_id: self.user_id,
            status: one_of("status", self.status, &RUN_STATUSES)?,
            action: one_of("action", self.action, &Action::NAMES)?,
            step: self.step,
            step_status: one_of("step_status", self.step_status, &STEP_STATUSES)?,
            created_after: time("created_after", self.created_after)?,
            created_before: time("created_before", self.created_before)?,
            id_prefix: fragment("id_prefix", self.id_prefix)?,
            id_suffix: fragment("id_suffix", self.id_suffix)?,
            batch_id: self
                .batch_id
                .map(|v| {
                    Uuid::parse_str(v.trim())
                        .map_err(|_| FieldError::new("batch_id", "must be a batch id (a UUID)"))
                })
                .transpose()?,
        })
    }
}

/// Holds a filter to the caller's company: a scoped token's filter gets its company, and
/// names no other (reported as not found, as everywhere).
pub fn scope_filter(caller: &Caller, filter: &mut RunFilter) -> Result<(), ApiError> {
    if let Some(scope) = caller.company_scope {
        if filter.company_id.is_some_and(|c| c != scope) {
            return Err(ApiError::not_found("company"));
        }
        filter.company_id = Some(scope);
    }
    Ok(())
}

/// Who an operator action is recorded as.
pub fn operator(caller: &Caller) -> Actor {
    Actor::token(caller.company_scope)
}

/// Filter fields from a query string, for the runs list (its other parameters, `limit`
/// and `cursor`, are the list's).
pub fn filter_from_query(query: &HashMap<String, String>) -> Result<RunFilter, ApiError> {
    let fields: serde_json::Map<String, Value> = query
        .iter()
        .filter(|(name, _)| FILTER_FIELDS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    wire::from_json::<FilterBody>(&Value::Object(fields), "must be a query string")
        .and_then(FilterBody::validate)
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))
}
