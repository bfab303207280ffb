//! `/v1/offboardings/{id}/undo-transfer`: give back what a run transferred. The preview
//! counts, per kind of item, what the run moved, what its recipients still hold (what an
//! undo would move back now) and what changed since (what it would leave). The undo is a
//! run of its own (action `undo_transfer`, one step, its own receipt), for the run's user
//! once reactivated or for another active user the request names.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    AppState,
    auth::Caller,
    body::JsonBody,
    error::{ApiError, is_unique_violation},
    views::{Accepted, ErrorBody},
};
use crate::{
    crm::users,
    domain::{Action, FieldError, RunStatus, UserId, UserStatus, wire},
    ledger::{
        journal::{self, Source},
        runs::{self, NewRun},
    },
    steps::{self, RunParams},
};

/// Per kind of item (`deals`, …, `dashboards`, `chatbot_playbooks`, `web_forms`).
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct UndoCounts {
    /// Items the run moved (its journal).
    pub moved_by_run: i64,
    /// Still owned by the user the run gave them to: an undo now moves these back.
    pub would_move_back: i64,
    /// Owned by someone else since, or gone: an undo leaves these where they are.
    pub changed_since: i64,
}

/// `GET /v1/offboardings/{id}/undo-transfer/preview`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UndoPreview {
    pub run_id: Uuid,
    pub company_id: i64,
    pub user_id: i64,
    pub items: BTreeMap<String, UndoCounts>,
    pub total: UndoCounts,
}

/// `POST /v1/offboardings/{id}/undo-transfer`; both fields optional (`{}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UndoTransferBody {
    /// Who gets the items back, an active user of the run's company; without it, the
    /// run's user, who must have been reactivated.
    #[serde(default, deserialize_with = "wire::optional_positive_integer")]
    #[schema(minimum = 1)]
    pub to_user_id: Option<i64>,
    /// Who asks: an active user of the company with account-settings access; by default
    /// the actor of the run undone.
    #[serde(default, deserialize_with = "wire::optional_positive_integer")]
    #[schema(minimum = 1)]
    pub actor_user_id: Option<i64>,
}

/// What an undo would move back now, and what it would leave, per kind of item.
#[utoipa::path(
    get,
    path = "/v1/offboardings/{id}/undo-transfer/preview",
    tag = "offboardings",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = UndoPreview),
        (status = 400, description = "The run id is not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such run (or another company's)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn preview(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UndoPreview>, ApiError> {
    let id = parse_run_id(&id)?;
    let mut conn = app.pool.acquire().await?;
    let source = visible_source(&mut conn, caller, id).await?;
    let held = journal::held(&mut conn, id, source.company_id).await?;
    let mut total = UndoCounts::default();
    let items = held
        .into_iter()
        .map(|(kind, held)| {
            let counts = UndoCounts {
                moved_by_run: held.journaled,
                would_move_back: held.still_held,
                changed_since: held.journaled - held.still_held,
            };
            total.moved_by_run += counts.moved_by_run;
            total.would_move_back += counts.would_move_back;
            total.changed_since += counts.changed_since;
            (kind, counts)
        })
        .collect();
    Ok(Json(UndoPreview {
        run_id: id,
        company_id: source.company_id,
        user_id: source.user_id,
        items,
        total,
    }))
}

/// Give back what the run transferred, as a new run: every item its recipient still holds
/// goes back to the run's user (reactivated) or to `to_user_id`; items changed since are
/// left and counted in the undo's receipt. Asked again while the undo runs, the answer is
/// that undo (`replayed: true`).
#[utoipa::path(
    post,
    path = "/v1/offboardings/{id}/undo-transfer",
    tag = "offboardings",
    params(("id" = Uuid, Path)),
    request_body = UndoTransferBody,
    responses(
        (status = 202, description = "The undo run (or, `replayed`, the one already under way)", body = Accepted,
         headers(("Location" = String, description = "/v1/offboardings/{id} of the undo run"))),
        (status = 400, description = "Malformed JSON or run id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "`actor_not_permitted`: the actor may not act for the company", body = ErrorBody),
        (status = 404, description = "No such run (or another company's)", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the run has not ended (succeeded or canceled); `nothing_to_undo`: it moved nothing; `already_undone`: an undo of it succeeded; `user_not_reactivated`: its user is not active and no `to_user_id` is named; `active_run_exists`: the user has another active run", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `target_unavailable`: `to_user_id` is not an active user of the company, or is being offboarded", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn undo(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let (to_user_id, actor_user_id) = parse_body(&body).map_err(ApiError::invalid_request)?;
    let mut conn = app.pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let source = visible_source(&mut tx, caller, id).await?;
    let target = to_user_id.unwrap_or(source.user_id);
    // Serializes with a deactivation of the one who gets the items back.
    users::lock_for_enqueue(&mut tx, source.user_id, false, &[target]).await?;

    if let Some((replay, status)) = undo_under_way(&mut tx, &source).await? {
        return Ok(accepted(replay, status, true));
    }
    check_source(&mut tx, &source).await?;
    check_target(&mut tx, &source, to_user_id).await?;
    let actor = match actor_user_id {
        None => source.actor_user_id,
        Some(actor) => {
            let state = journal::user_state(&mut tx, source.company_id, actor).await?;
            if !state.is_some_and(|s| s.status == UserStatus::Active && s.may_act) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "actor_not_permitted",
                    "actor_user_id must be an active user of the company with account-settings access",
                ));
            }
            actor
        }
    };

    let params = RunParams {
        undo_of: Some(source.id),
        to_user_id: to_user_id.and_then(UserId::new),
        ..RunParams::default()
    };
    let run = NewRun {
        id: runs::new_run_id(),
        company_id: source.company_id,
        user_id: source.user_id,
        action: Action::UndoTransfer,
        plan: serde_json::json!({}),
        params: serde_json::to_value(&params).expect("params serialize"),
        actor_user_id: actor,
        idempotency_key: None,
        steps: steps::plan(Action::UndoTransfer, &Default::default()),
        max_attempts: app.settings.worker.max_attempts,
        status: RunStatus::Queued,
        effective_at: None,
    };
    let written = match runs::insert(&mut tx, &run, None).await {
        Ok(()) => tx.commit().await,
        Err(e) => Err(e),
    };
    match written {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e, "runs_one_active_per_user") => {
            // A concurrent request wrote its run first: the same undo is that one.
            let mut conn = app.pool.acquire().await?;
            return match undo_under_way(&mut conn, &source).await? {
                Some((replay, status)) => Ok(accepted(replay, status, true)),
                None => Err(active_run_exists(source.user_id)),
            };
        }
        Err(e) => return Err(e.into()),
    }
    app.nudge.notify_one();
    tracing::info!(run_id = %run.id, undo_of = %source.id, company_id = source.company_id,
                   user_id = source.user_id, to_user_id = target, "undo of a transfer enqueued");
    Ok(accepted(run.id, run.status, false))
}

fn parse_run_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request("invalid_id", "the run id is not a UUID"))
}

fn parse_body(body: &Value) -> Result<(Option<i64>, Option<i64>), FieldError> {
    let body: UndoTransferBody = wire::from_json(body, "must be a JSON object")?;
    Ok((body.to_user_id, body.actor_user_id))
}

/// The run, if the caller may see it; another company's is not found.
async fn visible_source(
    conn: &mut sqlx::PgConnection,
    caller: Caller,
    id: Uuid,
) -> Result<Source, ApiError> {
    let source = journal::source(conn, id).await?;
    match source {
        Some(source) if caller.company_scope.is_none_or(|c| c == source.company_id) => Ok(source),
        _ => Err(ApiError::not_found("offboarding run")),
    }
}

/// The undo of this run that is still active (the user's active run), if any: its id
/// and status.
async fn undo_under_way(
    conn: &mut sqlx::PgConnection,
    source: &Source,
) -> Result<Option<(Uuid, RunStatus)>, sqlx::Error> {
    let active = journal::active_run_of(conn, source.company_id, source.user_id).await?;
    Ok(active.and_then(|(id, action, status, undo_of)| {
        (action == Action::UndoTransfer && undo_of == Some(source.id.to_string()))
            .then_some((id, status))
    }))
}

/// The run ended, moved something, and was not undone already.
async fn check_source(conn: &mut sqlx::PgConnection, source: &Source) -> Result<(), ApiError> {
    let transfers = source.action.transfers();
    if !transfers || !journal::moved_anything(conn, source.id).await? {
        return Err(ApiError::conflict(
            "nothing_to_undo",
            format!("run {} moved no items to anyone", source.id),
        ));
    }
    if !matches!(source.status, RunStatus::Succeeded | RunStatus::Canceled) {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("the run is {}; only a succeeded or canceled run can be undone", source.status),
        ));
    }
    if let Some((undo, status)) = journal::latest_undo(conn, source.id).await?
        && status == RunStatus::Succeeded
    {
        return Err(ApiError::conflict(
            "already_undone",
            format!("run {} already gave back this run's transfer", undo),
        )
        .with_details(serde_json::json!({"undo_run_id": undo})));
    }
    Ok(())
}

/// Whoever gets the items back is an active user of the company that no run is
/// deactivating: the run's user once reactivated, or the one named.
async fn check_target(
    conn: &mut sqlx::PgConnection,
    source: &Source,
    to_user_id: Option<i64>,
) -> Result<(), ApiError> {
    let target = to_user_id.unwrap_or(source.user_id);
    let state = journal::user_state(conn, source.company_id, target).await?;
    let usable = state.as_ref().is_some_and(|s| s.status == UserStatus::Active && !s.leaving);
    match (usable, to_user_id) {
        (true, _) => Ok(()),
        (false, Some(_)) => Err(ApiError::field(
            "target_unavailable",
            FieldError::new(
                "to_user_id",
                "must be an active user of the run's company who is not being offboarded",
            ),
        )),
        (false, None) => Err(ApiError::conflict(
            "user_not_reactivated",
            format!(
                "user {} is not active: reactivate them first, or name another user in to_user_id",
                source.user_id
            ),
        )),
    }
}

fn active_run_exists(user_id: i64) -> ApiError {
    ApiError::conflict(
        "active_run_exists",
        format!("user {user_id} has another active run; let it finish or cancel it"),
    )
}

fn accepted(id: Uuid, status: RunStatus, replayed: bool) -> Response {
    let body = Accepted { id, status, effective_at: None, replayed };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let location = HeaderValue::from_str(&format!("/v1/offboardings/{id}")).expect("ascii");
    response.headers_mut().insert(header::LOCATION, location);
    response
}
