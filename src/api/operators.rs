//! Operators at scale: bulk retry and cancel by filter (with a dry run, worked through by
//! the workers in chunks, progress readable at `/v1/bulk-operations/{id}`), restart of a
//! run from a chosen step, the filter the runs list shares with them, and the per-second
//! series the dashboard draws as charts.

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, auth::Caller, body::JsonBody, error::ApiError, views::ErrorBody};
use crate::{
    domain::{Action, FieldError},
    ledger::{
        bulk::{self, BulkKind, BulkOperation},
        filter::{RunFilter, id_fragment},
        restart::{self, RestartRefusal},
        samples as sample_rows,
    },
    samples,
    steps::StepKind,
};

/// Every status a run can be in (one list, in the domain).
pub use crate::domain::run_status::RUN_STATUSES;
/// Every status a step can be in.
pub const STEP_STATUSES: [&str; 8] =
    ["pending", "ready", "queued", "running", "succeeded", "skipped", "dead", "canceled"];

/// The filter's fields, as a query string or a JSON body names them.
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

/// Reads a [`RunFilter`] from named values (a query string's, or a JSON object's). Errors
/// name the field.
pub fn parse_filter(get: impl Fn(&str) -> Option<Value>) -> Result<RunFilter, FieldError> {
    let text = |name: &str| -> Result<Option<String>, FieldError> {
        match get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(FieldError::new(name, "must be a string")),
        }
    };
    let number = |name: &str| -> Result<Option<i64>, FieldError> {
        let bad = || FieldError::new(name, "must be a positive whole number");
        match get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_i64().filter(|n| *n > 0).map(Some).ok_or_else(bad),
            Some(Value::String(s)) => {
                s.parse::<i64>().ok().filter(|n| *n > 0).map(Some).ok_or_else(bad)
            }
            Some(_) => Err(bad()),
        }
    };
    let one_of = |name: &str, allowed: &[&str]| -> Result<Option<String>, FieldError> {
        match text(name)? {
            None => Ok(None),
            Some(v) if allowed.contains(&v.as_str()) => Ok(Some(v)),
            Some(_) => Err(FieldError::new(name, format!("must be one of {}", allowed.join(", ")))),
        }
    };
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, FieldError> {
        text(name)?
            .map(|v| {
                DateTime::parse_from_rfc3339(&v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                    FieldError::new(name, "must be an RFC 3339 time, e.g. 2026-12-02T06:00:00Z")
                })
            })
            .transpose()
    };
    let fragment = |name: &str| -> Result<Option<String>, FieldError> {
        text(name)?
            .map(|v| {
                id_fragment(&v)
                    .ok_or_else(|| FieldError::new(name, "must be 1-32 hex digits of a run id"))
            })
            .transpose()
    };
    let batch = |name: &str| -> Result<Option<Uuid>, FieldError> {
        text(name)?
            .map(|v| {
                Uuid::parse_str(v.trim())
                    .map_err(|_| FieldError::new(name, "must be a batch id (a UUID)"))
            })
            .transpose()
    };
    let actions: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    let step = text("step")?;
    if let Some(name) = &step
        && StepKind::from_name(name).is_none()
    {
        return Err(FieldError::new("step", "is not a step name (e.g. uninstall_apps)"));
    }
    Ok(RunFilter {
        company_id: number("company_id")?,
        user_id: number("user_id")?,
        status: one_of("status", &RUN_STATUSES)?,
        action: one_of("action", &actions)?,
        step,
        step_status: one_of("step_status", &STEP_STATUSES)?,
        created_after: time("created_after")?,
        created_before: time("created_before")?,
        id_prefix: fragment("id_prefix")?,
        id_suffix: fragment("id_suffix")?,
        batch_id: batch("batch_id")?,
    })
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
pub fn operator(caller: &Caller) -> String {
    match caller.company_scope {
        Some(company) => format!("token:company-{company}"),
        None => "token:operator".into(),
    }
}

// ---- Bulk retry and cancel ---------------------------------------------------------------

/// The body of a bulk action.
#[derive(Debug, ToSchema)]
#[schema(example = json!({"filter": {"company_id": 1, "status": "failed", "step": "uninstall_apps",
                                     "step_status": "dead"}, "dry_run": true}))]
#[allow(dead_code)]
pub struct BulkRequest {
    /// Which runs; every field optional, all must hold. `{}` is every run the action
    /// applies to (in the token's company).
    pub filter: FilterBody,
    /// Only count the runs the action would touch; change nothing.
    pub dry_run: Option<bool>,
}

/// The filter of bulk actions (and, as query parameters, of the runs list).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct FilterBody {
    #[schema(minimum = 1)]
    pub company_id: Option<i64>,
    #[schema(minimum = 1)]
    pub user_id: Option<i64>,
    /// A run status.
    pub status: Option<String>,
    /// deactivate, delete, deactivate_and_delete, redact, reactivate or undo_transfer.
    pub action: Option<String>,
    /// A step name, e.g. uninstall_apps (with `step_status`: in that state).
    pub step: Option<String>,
    /// A step status: some step (or `step`) of the run is in it.
    pub step_status: Option<String>,
    /// Created at or after (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// The run id starts with these hex digits (dashes ignored).
    pub id_prefix: Option<String>,
    /// The run id ends with these hex digits (dashes ignored).
    pub id_suffix: Option<String>,
    /// The batch the run came from (`POST /v1/offboarding-batches`).
    pub batch_id: Option<Uuid>,
}

/// The answer to a dry run: how many runs the action would touch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkDryRun {
    /// retry or cancel.
    pub kind: String,
    pub dry_run: bool,
    /// Runs the action would touch now.
    pub matched: i64,
    /// The filter as understood (a scoped token's company filled in).
    #[schema(value_type = Object)]
    pub filter: Value,
}

/// A bulk operation and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkOperationView {
    pub id: Uuid,
    /// retry or cancel.
    pub kind: String,
    /// running or succeeded.
    pub status: String,
    /// Who asked: `token:operator` or `token:company-<id>`.
    pub operator: String,
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Runs the filter matched when the operation was recorded (the dry run's count).
    pub matched: i64,
    /// Runs acted on so far.
    pub touched: i64,
    /// Chunks committed so far (each one transaction).
    pub chunks: i32,
    /// The last run acted on; the operation goes on after it.
    pub cursor: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<BulkOperation> for BulkOperationView {
    fn from(op: BulkOperation) -> Self {
        Self {
            id: op.id,
            kind: op.kind,
            status: op.status,
            operator: op.operator,
            filter: op.filter,
            matched: op.matched,
            touched: op.touched,
            chunks: op.chunks,
            cursor: op.cursor,
            created_at: op.created_at,
            updated_at: op.updated_at,
            finished_at: op.finished_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkOperationList {
    pub operations: Vec<BulkOperationView>,
}

/// Reads a bulk action's body: `{"filter": {...}, "dry_run": bool}`.
fn parse_bulk(body: &Value) -> Result<(RunFilter, bool), ApiError> {
    let object = body.as_object().ok_or_else(|| {
        ApiError::invalid_request(FieldError::new("body", "must be a JSON object"))
    })?;
    if let Some(unknown) = object.keys().find(|k| !["filter", "dry_run"].contains(&k.as_str())) {
        return Err(ApiError::invalid_request(FieldError::new(unknown.clone(), "unknown field")));
    }
    let filter = match object.get("filter") {
        Some(Value::Object(f)) => f,
        Some(_) => {
            return Err(ApiError::invalid_request(FieldError::new("filter", "must be an object")));
        }
        None => {
            return Err(ApiError::invalid_request(FieldError::new(
                "filter",
                "is required ({} for every run the action applies to)",
            )));
        }
    };
    if let Some(unknown) = filter.keys().find(|k| !FILTER_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid_request(FieldError::new(
            format!("filter.{unknown}"),
            "unknown field",
        )));
    }
    let parsed = parse_filter(|name| filter.get(name).cloned()).map_err(|e| {
        ApiError::invalid_request(FieldError::new(format!("filter.{}", e.field), e.message))
    })?;
    let dry_run = match object.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid_request(FieldError::new("dry_run", "must be a boolean")));
        }
    };
    Ok((parsed, dry_run))
}

async fn bulk_action(
    app: AppState,
    caller: Caller,
    body: Value,
    kind: BulkKind,
) -> Result<Response, ApiError> {
    let (mut filter, dry_run) = parse_bulk(&body)?;
    scope_filter(&caller, &mut filter)?;
    if dry_run {
        let matched = bulk::count(&app.pool, kind, &filter, caller.company_scope).await?;
        let filter = serde_json::to_value(&filter).expect("a filter serializes");
        return Ok(Json(BulkDryRun { kind: kind.as_str().into(), dry_run: true, matched, filter })
            .into_response());
    }
    let op =
        bulk::create(&app.pool, kind, &filter, caller.company_scope, &operator(&caller)).await?;
    tracing::info!(bulk_operation = %op.id, kind = kind.as_str(), matched = op.matched, "bulk operation recorded");
    let location = HeaderValue::from_str(&format!("/v1/bulk-operations/{}", op.id)).expect("ascii");
    let mut response = (StatusCode::ACCEPTED, Json(BulkOperationView::from(op))).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// Retry the dead steps of every run the filter matches (runs with a dead step). With
/// `dry_run`, only count them. Otherwise the operation is recorded and the workers work
/// through it in chunks; follow it at the `Location`.
#[utoipa::path(
    post,
    path = "/v1/offboardings/bulk-retry",
    tag = "operators",
    request_body = BulkRequest,
    responses(
        (status = 200, description = "Dry run: the count", body = BulkDryRun),
        (status = 202, description = "Recorded; the workers work through it", body = BulkOperationView,
         headers(("Location" = String, description = "/v1/bulk-operations/{id}")),
         links(("GetBulkOperation" = (operation_id = "bulk_operation", parameters(("id" = "$response.body#/id")))))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A filter field is invalid; `field` names it", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn bulk_retry(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    bulk_action(app, caller, body, BulkKind::Retry).await
}

/// Cancel every active run the filter matches. With `dry_run`, only count them.
#[utoipa::path(
    post,
    path = "/v1/offboardings/bulk-cancel",
    tag = "operators",
    request_body = BulkRequest,
    responses(
        (status = 200, description = "Dry run: the count", body = BulkDryRun),
        (status = 202, description = "Recorded; the workers work through it", body = BulkOperationView,
         headers(("Location" = String, description = "/v1/bulk-operations/{id}")),
         links(("GetBulkOperation" = (operation_id = "bulk_operation", parameters(("id" = "$response.body#/id")))))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A filter field is invalid; `field` names it", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn bulk_cancel(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    bulk_action(app, caller, body, BulkKind::Cancel).await
}

/// A bulk operation's progress.
#[utoipa::path(
    get,
    path = "/v1/bulk-operations/{id}",
    tag = "operators",
    params(("id" = Uuid, Path, description = "The operation id")),
    responses(
        (status = 200, body = BulkOperationView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn bulk_operation(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BulkOperationView>, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "the operation id is not a UUID"))?;
    bulk::find(&app.pool, id, caller.company_scope)
        .await?
        .map(|op| Json(op.into()))
        .ok_or_else(|| ApiError::not_found("bulk operation"))
}

/// The newest bulk operations (50).
#[utoipa::path(
    get,
    path = "/v1/bulk-operations",
    tag = "operators",
    responses(
        (status = 200, body = BulkOperationList),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn bulk_operations(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<BulkOperationList>, ApiError> {
    let operations = bulk::list(&app.pool, caller.company_scope, 50).await?;
    Ok(Json(BulkOperationList { operations: operations.into_iter().map(Into::into).collect() }))
}

// ---- Restart from a step -------------------------------------------------------------------

/// The body of a restart.
#[derive(Debug, ToSchema)]
#[schema(example = json!({"step": "uninstall_apps"}))]
#[allow(dead_code)]
pub struct RestartRequest {
    /// The step to restart from: it and every step that waits on it run again.
    pub step: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Restarted {
    pub id: Uuid,
    pub status: String,
    pub from_step: String,
    /// The steps that will run again.
    pub steps: Vec<String>,
}

/// Restart a failed or canceled run from a step: the step, every step that waits on it,
/// and the run's dead or canceled steps go back in line. Refused (409
/// `step_not_repeatable`) when a step that already succeeded would run again and is not
/// safe to repeat.
#[utoipa::path(
    post,
    path = "/v1/offboardings/{id}/restart",
    tag = "operators",
    params(("id" = Uuid, Path)),
    request_body = RestartRequest,
    responses(
        (status = 200, body = Restarted),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "run_not_restartable, step_not_repeatable, steps_in_flight or active_run_exists", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "No such step in the run (`unknown_step`), or a malformed body", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn restart(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Restarted>, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "the run id is not a UUID"))?;
    let object = body.as_object().ok_or_else(|| {
        ApiError::invalid_request(FieldError::new("body", "must be a JSON object"))
    })?;
    if let Some(unknown) = object.keys().find(|k| k.as_str() != "step") {
        return Err(ApiError::invalid_request(FieldError::new(unknown.clone(), "unknown field")));
    }
    let step = object
        .get("step")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or_else(|| ApiError::invalid_request(FieldError::new("step", "must be a step name")))?;
    match restart::restart_from(&app.pool, id, caller.company_scope, step, &operator(&caller))
        .await?
    {
        Ok(steps) => {
            app.nudge.notify_one();
            tracing::info!(run_id = %id, step, steps = steps.len(), "run restarted by an operator");
            Ok(Json(Restarted { id, status: "running".into(), from_step: step.into(), steps }))
        }
        Err(RestartRefusal::NotFound) => Err(ApiError::not_found("offboarding run")),
        Err(RestartRefusal::RunNotRestartable(status)) => Err(ApiError::conflict(
            "run_not_restartable",
            format!("only failed or canceled runs restart; this one is {status}"),
        )
        .with_details(json!({"status": status}))),
        Err(RestartRefusal::UnknownStep) => Err(ApiError::field(
            "unknown_step",
            FieldError::new("step", format!("the run has no step {step}")),
        )),
        Err(RestartRefusal::NotRepeatable(steps)) => Err(ApiError::conflict(
            "step_not_repeatable",
            format!("{} already succeeded and is not safe to repeat", steps.join(", ")),
        )
        .with_details(json!({"steps": steps}))),
        Err(RestartRefusal::StepsInFlight(steps)) => Err(ApiError::conflict(
            "steps_in_flight",
            format!("{} still queued or running; try again when they end", steps.join(", ")),
        )
        .with_details(json!({"steps": steps}))),
        Err(RestartRefusal::ActiveRunExists) => Err(ApiError::conflict(
            "active_run_exists",
            "the user has another active offboarding run",
        )),
    }
}

// ---- Series for the charts ----------------------------------------------------------------

/// One point of the charts: rates per second over the point's interval, gauges at its
/// end; all null where no worker wrote a sample in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPoint {
    pub at: DateTime<Utc>,
    pub steps_finished_per_s: Option<f64>,
    /// Attempts that failed (retried or dead), per second.
    pub failures_per_s: Option<f64>,
    /// Failed attempts given another attempt, per second.
    pub retries_per_s: Option<f64>,
    /// Tasks in Redis.
    pub queue_depth: Option<i64>,
    /// Steps queued or running.
    pub in_flight: Option<i64>,
    /// 95th percentile of attempt durations in the interval (upper bound of its bucket).
    pub p95_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub window_seconds: u64,
    pub step_seconds: u64,
    pub to: DateTime<Utc>,
    pub points: Vec<SeriesPoint>,
    /// p95 of attempt durations over the whole window.
    pub p95_ms: Option<u64>,
}

/// Rates over the last hour (or `window` seconds) in points of `step` seconds: steps
/// finished, failures and retries per second, queue depth, steps in flight, p95 attempt
/// duration. From the samples the workers write each second; service-wide, so an
/// unscoped token's only.
#[utoipa::path(
    get,
    path = "/v1/stats/series",
    tag = "operators",
    params(
        ("window" = Option<u64>, Query, minimum = 10, maximum = 3600, description = "Seconds back from now; default 3600"),
        ("step" = Option<u64>, Query, minimum = 1, maximum = 600, description = "Seconds per point; default window/120"),
    ),
    responses(
        (status = 200, body = Series),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A company-scoped token (the series are service-wide)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn series(
    State(app): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Series>, ApiError> {
    if caller.company_scope.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "unscoped_token_required",
            "the series are service-wide; a company-scoped token cannot read them",
        ));
    }
    let number = |name: &str, min: u64, max: u64| -> Result<Option<u64>, ApiError> {
        query
            .get(name)
            .map(|v| {
                v.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{name} must be a whole number from {min} to {max}"),
                    )
                })
            })
            .transpose()
    };
    let window = number("window", 10, 3600)?.unwrap_or(3600);
    let step = number("step", 1, 600)?.unwrap_or((window / 120).max(1)).min(window);
    let (now, rows) = sample_rows::since(&app.pool, Duration::from_secs(window)).await?;
    Ok(Json(build_series(now, window, step, &rows)))
}

/// Cuts samples into points of `step` seconds ending at `now`.
fn build_series(
    now: DateTime<Utc>,
    window: u64,
    step: u64,
    rows: &[sample_rows::Sample],
) -> Series {
    let points_n = window.div_ceil(step) as usize;
    let end = now.timestamp();
    let start = end - (points_n as i64) * step as i64;
    let width = samples::DURATION_BOUNDS_MS.len() + 1;
    #[derive(Default, Clone)]
    struct Acc {
        samples: u64,
        succeeded: i64,
        failed: i64,
        retried: i64,
        buckets: Vec<i64>,
        depth: Option<i64>,
        in_flight: Option<i64>,
    }
    let mut acc = vec![Acc { buckets: vec![0; width], ..Default::default() }; points_n];
    let mut all = vec![0i64; width];
    for row in rows {
        let offset = row.at.timestamp() - start;
        if offset < 0 {
            continue;
        }
        let i = ((offset as u64) / step) as usize;
        let Some(a) = acc.get_mut(i.min(points_n - 1)) else { continue };
        a.samples += 1;
        a.succeeded += row.steps_succeeded;
        a.failed += row.steps_failed;
        a.retried += row.steps_retried;
        for (j, n) in row.duration_buckets.iter().enumerate().take(width) {
            a.buckets[j] += n;
            all[j] += n;
        }
        a.depth = row.queue_depth.or(a.depth);
        a.in_flight = Some(row.in_flight);
    }
    let per_s = |n: i64| n as f64 / step as f64;
    let points = acc
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let at =
                DateTime::from_timestamp(start + ((i as i64 + 1) * step as i64), 0).unwrap_or(now);
            let seen = a.samples > 0;
            SeriesPoint {
                at,
                steps_finished_per_s: seen.then(|| per_s(a.succeeded)),
                failures_per_s: seen.then(|| per_s(a.failed)),
                retries_per_s: seen.then(|| per_s(a.retried)),
                queue_depth: a.depth,
                in_flight: a.in_flight,
                p95_ms: samples::p95_ms(&a.buckets),
            }
        })
        .collect();
    Series {
        window_seconds: window,
        step_seconds: step,
        to: now,
        points,
        p95_ms: samples::p95_ms(&all),
    }
}

/// Filter fields from a query string, for the runs list.
pub fn filter_from_query(query: &HashMap<String, String>) -> Result<RunFilter, ApiError> {
    parse_filter(|name| query.get(name).map(|v| Value::String(v.clone())))
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))
}
