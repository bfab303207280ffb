//! What operators do to a run: retry its dead steps, cancel it, move a scheduled one,
//! approve or reject one awaiting approval.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use chrono::Utc;

use serde::Deserialize;
use utoipa::ToSchema;

use super::parse_run_id;
use crate::{
    api::{
        AppState,
        auth::Caller,
        body::JsonBody,
        error::ApiError,
        operators::operator,
        views::{Canceled, Decided, ErrorBody, Retried, RunView},
    },
    domain::{FieldError, RunStatus, request::check_effective_at, wire},
    ledger::{
        approval::{self, Decision, Refusal},
        runs::{self, OperatorRefusal},
        scheduled,
    },
};

/// `PATCH /v1/offboardings/{id}`: move a scheduled run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RescheduleBody {
    /// The new start (RFC 3339, in the future, at most 366 days ahead).
    #[serde(deserialize_with = "wire::timestamp")]
    pub effective_at: chrono::DateTime<Utc>,
}

/// `POST /v1/offboardings/{id}/approve` and `/reject`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// The deciding admin: an active admin of the run's company; for an approval, not
    /// the user who asked for the run.
    #[serde(default, deserialize_with = "wire::approver_id")]
    #[schema(value_type = i64, minimum = 1, required = true)]
    pub approver_user_id: Option<i64>,
}

/// Put the run's dead steps back in line with fresh attempts; the run resumes.
#[utoipa::path(
    post,
    path = "/v1/offboardings/{id}/retry",
    tag = "operators",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Retried),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No dead step to retry", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or a worker held the run past the operator's lock timeout (`run_busy`)", body = ErrorBody),
    )
)]
pub async fn retry(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Retried>, ApiError> {
    let id = parse_run_id(&id)?;
    match runs::retry(&app.pool, id, caller.company_scope, operator(&caller)).await? {
        Ok(revived) => {
            app.nudge.notify_one();
            tracing::info!(run_id = %id, steps = revived, "dead steps retried by an operator");
            Ok(Json(Retried { id, status: RunStatus::Running, steps_retried: revived }))
        }
        Err(OperatorRefusal::NotFound) => Err(ApiError::not_found("offboarding run")),
        Err(OperatorRefusal::WrongState) => {
            Err(ApiError::conflict("invalid_state", "the run has no dead steps to retry"))
        }
        Err(OperatorRefusal::Busy) => Err(run_busy()),
    }
}

/// A worker held the run longer than the operator's lock timeout.
fn run_busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "run_busy",
        "a worker is changing the run right now; nothing changed, try again",
    )
}

/// Stop the run: no new step starts, finished ones stay. With no step running the run is
/// `canceled` at once; otherwise it is `canceling` (still the user's active run) until each
/// running step stops at its next batch boundary.
#[utoipa::path(
    post,
    path = "/v1/offboardings/{id}/cancel",
    tag = "operators",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Canceled),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The run has already finished or is canceling", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or a worker held the run past the operator's lock timeout (`run_busy`)", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Canceled>, ApiError> {
    let id = parse_run_id(&id)?;
    match runs::cancel(&app.pool, id, caller.company_scope, operator(&caller)).await? {
        Ok(done) => {
            tracing::info!(run_id = %id, steps = done.steps_canceled, running = done.steps_running,
                           status = %done.status, "run canceled by an operator");
            Ok(Json(Canceled {
                id,
                status: done.status,
                steps_canceled: done.steps_canceled,
                steps_running: done.steps_running,
            }))
        }
        Err(OperatorRefusal::NotFound) => Err(ApiError::not_found("offboarding run")),
        Err(OperatorRefusal::WrongState) => Err(ApiError::conflict(
            "invalid_state",
            "the run has already finished or is already canceling",
        )),
        Err(OperatorRefusal::Busy) => Err(run_busy()),
    }
}

/// Move a scheduled run to a new `effective_at`. Only a run still `scheduled` moves; the
/// move is recorded in its history.
#[utoipa::path(
    patch,
    path = "/v1/offboardings/{id}",
    tag = "offboardings",
    params(("id" = Uuid, Path)),
    request_body = RescheduleBody,
    responses(
        (status = 200, description = "The run, rescheduled", body = RunView),
        (status = 400, description = "Malformed JSON or run id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The run is not scheduled (it started, finished or was canceled)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "`effective_at` is missing, not RFC 3339, not in the future or more than 366 days ahead", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or a worker held the run past the operator's lock timeout (`run_busy`)", body = ErrorBody),
    )
)]
pub async fn reschedule(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<RunView>, ApiError> {
    let id = parse_run_id(&id)?;
    let body: RescheduleBody =
        wire::from_json(&body, "must be a JSON object").map_err(ApiError::invalid_request)?;
    let at =
        check_effective_at(body.effective_at, Utc::now()).map_err(ApiError::invalid_request)?;
    match scheduled::reschedule(&app.pool, id, caller.company_scope, at, operator(&caller)).await? {
        Ok(()) => {
            tracing::info!(run_id = %id, "scheduled run moved");
            let detail = runs::find(&app.pool, id, caller.company_scope)
                .await?
                .ok_or_else(|| ApiError::not_found("offboarding run"))?;
            Ok(Json(RunView::from(&detail)))
        }
        Err(OperatorRefusal::NotFound) => Err(ApiError::not_found("offboarding run")),
        Err(OperatorRefusal::WrongState) => Err(ApiError::conflict(
            "invalid_state",
            "only a scheduled run can be rescheduled; this one has started or finished",
        )),
        Err(OperatorRefusal::Busy) => Err(run_busy()),
    }
}

/// Approve a run awaiting approval, as a second admin of its company (not the one who
/// asked): it starts (its plan checked again), or waits for its `effective_at`.
#[utoipa::path(
    post,
    path = "/v1/offboardings/{id}/approve",
    tag = "offboardings",
    params(("id" = Uuid, Path)),
    request_body = ApprovalBody,
    responses(
        (status = 200, body = Decided),
        (status = 400, description = "Malformed JSON or run id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "`approver_not_admin`: not an active admin of the company; `approver_is_requester`: the admin who asked for the run", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`invalid_state`: the run does not await approval; `approval_expired`: its window passed (it is now `expired`)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "`approver_user_id` is missing or not a positive id", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn approve(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Decided>, ApiError> {
    decide(app, caller, id, body, Decision::Approve).await
}

/// Reject a run awaiting approval, as an admin of its company: it ends `rejected` and
/// nothing of it runs.
#[utoipa::path(
    post,
    path = "/v1/offboardings/{id}/reject",
    tag = "offboardings",
    params(("id" = Uuid, Path)),
    request_body = ApprovalBody,
    responses(
        (status = 200, body = Decided),
        (status = 400, description = "Malformed JSON or run id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "`approver_not_admin`: not an active admin of the company", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`invalid_state`: the run does not await approval; `approval_expired`: its window passed (it is now `expired`)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "`approver_user_id` is missing or not a positive id", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn reject(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Decided>, ApiError> {
    decide(app, caller, id, body, Decision::Reject).await
}

async fn decide(
    app: AppState,
    caller: Caller,
    id: String,
    body: serde_json::Value,
    decision: Decision,
) -> Result<Json<Decided>, ApiError> {
    let id = parse_run_id(&id)?;
    let body: ApprovalBody =
        wire::from_json(&body, "must be a JSON object").map_err(ApiError::invalid_request)?;
    let approver = body.approver_user_id.ok_or_else(|| {
        ApiError::invalid_request(FieldError::new("approver_user_id", wire::APPROVER_REQUIRED))
    })?;
    let outcome = approval::decide(&app.pool, id, caller.company_scope, approver, decision).await?;
    match outcome {
        Ok(decided) => {
            if decided.status == RunStatus::Queued {
                app.nudge.notify_one();
            }
            tracing::info!(run_id = %id, approver_user_id = approver, status = %decided.status,
                           "approval decided");
            Ok(Json(Decided {
                id,
                status: decided.status,
                approver_user_id: approver,
                error_code: decided.error_code.map(Into::into),
            }))
        }
        Err(Refusal::Operator(OperatorRefusal::NotFound)) => {
            Err(ApiError::not_found("offboarding run"))
        }
        Err(Refusal::Operator(OperatorRefusal::Busy)) => Err(run_busy()),
        Err(Refusal::Operator(OperatorRefusal::WrongState)) | Err(Refusal::NotAwaiting) => {
            Err(ApiError::conflict("invalid_state", "the run does not await approval"))
        }
        Err(Refusal::Expired) => Err(ApiError::conflict(
            "approval_expired",
            "the run's approval window has passed; it is now expired",
        )),
        Err(Refusal::Requester) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "approver_is_requester",
            "the admin who asked for the run cannot approve it; a second admin must",
        )),
        Err(Refusal::NotAnAdmin) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "approver_not_admin",
            format!("user {approver} is not an active admin of the run's company"),
        )),
    }
}
