//! Restart of a run from a chosen step.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::operator;
use crate::{
    api::{AppState, auth::Caller, body::JsonBody, error::ApiError, views::ErrorBody},
    domain::{FieldError, RunStatus, wire},
    ledger::restart::{self, RestartRefusal},
};

/// The body of a restart.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"step": "uninstall_apps"}))]
pub struct RestartRequest {
    /// The step to restart from: it and every step that waits on it run again.
    #[serde(default, deserialize_with = "step_name")]
    #[schema(value_type = String, required = true)]
    pub step: Option<String>,
}

const NOT_A_STEP: &str = "must be a step name";

/// A step's name: 1 to 64 characters (which steps the run has is the ledger's to say).
fn step_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() && s.len() <= 64 => Ok(Some(s)),
        _ => Err(D::Error::custom(NOT_A_STEP)),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Restarted {
    pub id: Uuid,
    pub status: RunStatus,
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
    let body: RestartRequest =
        wire::from_json(&body, "must be a JSON object").map_err(ApiError::invalid_request)?;
    let step =
        body.step.ok_or_else(|| ApiError::invalid_request(FieldError::new("step", NOT_A_STEP)))?;
    let step = step.as_str();
    match restart::restart_from(&app.pool, id, caller.company_scope, step, operator(&caller))
        .await?
    {
        Ok(steps) => {
            app.nudge.notify_one();
            tracing::info!(run_id = %id, step, steps = steps.len(), "run restarted by an operator");
            Ok(Json(Restarted { id, status: RunStatus::Running, from_step: step.into(), steps }))
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
