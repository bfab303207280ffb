//! `/v1/offboardings`: enqueue a run (judged and written by [`super::enqueue`]), read one,
//! list them; [`operate`] holds what operators do to a run.

mod operate;

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use uuid::Uuid;

pub use self::operate::{
    __path_approve, __path_cancel, __path_reject, __path_reschedule, __path_retry, ApprovalBody,
    RescheduleBody, approve, cancel, reject, reschedule, retry,
};
use super::{
    AppState,
    auth::Caller,
    body::JsonBody,
    enqueue::{initial_status, submit},
    error::ApiError,
    views::{Accepted, ErrorBody, RunList, RunView},
};
use crate::{
    domain::{Action, OffboardingRequest, OffboardingRequestBody, RunStatus},
    ledger::{idempotency, runs},
};

/// Enqueue an offboarding run. Every rule is checked before the run is written; a refused
/// request writes nothing.
#[utoipa::path(
    post,
    path = "/v1/offboardings",
    tag = "offboardings",
    request_body = OffboardingRequestBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat a request safely: the same key and body return the original run.")),
    responses(
        (status = 202, description = "Accepted (or replayed)", body = Accepted,
         headers(("Location" = String, description = "/v1/offboardings/{id}")),
         links(
             ("GetRun" = (operation_id = "get", parameters(("id" = "$response.body#/id")))),
             ("RetryRun" = (operation_id = "retry", parameters(("id" = "$response.body#/id")))),
             ("CancelRun" = (operation_id = "cancel", parameters(("id" = "$response.body#/id")))),
             ("ApproveRun" = (operation_id = "approve", parameters(("id" = "$response.body#/id")))),
             ("RejectRun" = (operation_id = "reject", parameters(("id" = "$response.body#/id")))),
             ("RestartRun" = (operation_id = "restart", parameters(("id" = "$response.body#/id")))),
         )),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "The actor may not offboard users", body = ErrorBody),
        (status = 404, description = "Unknown company or user", body = ErrorBody),
        (status = 409, description = "The user's state forbids it (deleted, not deactivated, last admin, active run, receives items from an active run, no free seat, email taken)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `field` names it", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = OffboardingRequest::parse(&body).map_err(ApiError::invalid_request)?;
    caller.check_company(request.company_id.get())?;
    let key = idempotency_key(&headers)?;
    let hash = key.map(|_| {
        idempotency::RequestHash::of(
            app.idempotency_secret.expose_secret(),
            &serde_json::to_vec(&body).unwrap_or_default(),
        )
    });
    let (run_id, replayed) = submit(&app, &request, key, hash.as_ref()).await?;
    // A run this request created is in the status it was written in, just now; only a
    // replay has a status worth reading.
    // A deletion may have been written awaiting approval (the company's policy decides,
    // in the statement that wrote it).
    let (status, effective_at): (RunStatus, Option<DateTime<Utc>>) =
        if replayed || matches!(request.action, Action::Delete | Action::DeactivateAndDelete) {
            sqlx::query_as("SELECT status, effective_at FROM offboard.runs WHERE id = $1")
                .bind(run_id)
                .fetch_one(&app.pool)
                .await?
        } else {
            (initial_status(&request), request.effective_at)
        };
    let accepted = Accepted { id: run_id, status, effective_at, replayed };
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    let location = HeaderValue::from_str(&format!("/v1/offboardings/{run_id}")).expect("ascii");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

pub(in crate::api) fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(Some).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 visible ASCII characters",
        )
    })
}

/// A run: its status, each step's progress, the receipt, the purge and the history.
#[utoipa::path(
    get,
    path = "/v1/offboardings/{id}",
    tag = "offboardings",
    params(("id" = Uuid, Path, description = "The run id")),
    responses(
        (status = 200, body = RunView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such run (for this token)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let id = parse_run_id(&id)?;
    let detail = runs::find(&app.pool, id, caller.company_scope)
        .await?
        .ok_or_else(|| ApiError::not_found("offboarding run"))?;
    Ok(Json(RunView::from(&detail)))
}

pub(super) fn parse_run_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request("invalid_id", "the run id is not a UUID"))
}

/// Runs, newest first, filtered and paged.
#[utoipa::path(
    get,
    path = "/v1/offboardings",
    tag = "offboardings",
    params(
        ("company_id" = Option<i64>, Query, minimum = 1),
        ("user_id" = Option<i64>, Query, minimum = 1),
        ("status" = Option<String>, Query, description = "A run status: scheduled, awaiting_approval, queued, running, canceling, succeeded, failed, canceled, expired or rejected"),
        ("action" = Option<String>, Query, description = "deactivate, delete, deactivate_and_delete, redact, reactivate or undo_transfer"),
        ("step" = Option<String>, Query, description = "Runs with this step (with step_status: in that state), e.g. uninstall_apps"),
        ("step_status" = Option<String>, Query, description = "Runs with a step (or `step`) in this state: pending, ready, queued, running, succeeded, skipped, dead or canceled"),
        ("created_after" = Option<DateTime<Utc>>, Query, description = "Created at or after (RFC 3339)"),
        ("created_before" = Option<DateTime<Utc>>, Query, description = "Created before (RFC 3339)"),
        ("id_prefix" = Option<String>, Query, description = "The run id starts with these hex digits (dashes ignored)"),
        ("id_suffix" = Option<String>, Query, description = "The run id ends with these hex digits (dashes ignored)"),
        ("batch_id" = Option<Uuid>, Query, description = "Runs of this batch (`POST /v1/offboarding-batches`)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, body = RunList),
        (status = 400, description = "A query parameter is invalid", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<RunList>, ApiError> {
    let mut filter = super::operators::filter_from_query(&query)?;
    super::operators::scope_filter(&caller, &mut filter)?;
    let limit = match query.get("limit") {
        None => 50,
        Some(v) => v.parse::<i64>().ok().filter(|n| (1..=500).contains(n)).ok_or_else(|| {
            ApiError::bad_request("invalid_query", "limit must be a whole number from 1 to 500")
        })?,
    };
    let before = query.get("cursor").map(|c| decode_cursor(c)).transpose()?;
    let runs = runs::list(&app.pool, &filter, before, limit).await?;
    let next_cursor = (runs.len() as i64 == limit)
        .then(|| runs.last().map(|r| encode_cursor(r.created_at, r.id)))
        .flatten();
    Ok(Json(RunList { runs, next_cursor }))
}

pub(in crate::api) fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{id}", at.timestamp_micros())
}

pub(in crate::api) fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::bad_request("invalid_query", "cursor is not one this API returned");
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    let at =
        micros.parse::<i64>().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}
