//! `/v1/offboardings`: enqueue a run (every rule of the spec checked before it is written;
//! for a regular user, by the statement that writes it), read one, list them, retry and
//! cancel.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::json;
use uuid::Uuid;

use super::{
    AppState,
    auth::Caller,
    body::JsonBody,
    error::{ApiError, is_unique_violation},
    views::{
        Accepted, ApprovalBody, Canceled, CreateOffboarding, Decided, ErrorBody, RescheduleBody,
        Retried, RunList, RunView,
    },
};
use crate::{
    crm::users,
    domain::{
        Action, FieldError, OffboardingRequest, Origin, RunStatus, TransferPlan, UserId,
        UserStatus, transfer::Recipient,
    },
    ledger::{
        approval::{self, Decision, Refusal},
        idempotency,
        runs::{self, NewRun, OperatorRefusal},
        scheduled,
    },
    steps::{self, RunParams},
};

/// Enqueue an offboarding run. Every rule is checked before the run is written; a refused
/// request writes nothing.
#[utoipa::path(
    post,
    path = "/v1/offboardings",
    tag = "offboardings",
    request_body = CreateOffboarding,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat a request safely: the same key and body return the original run.")),
    responses(
        (status = 202, description = "Accepted (or replayed)", body = Accepted,
         headers(("Location" = String, description = "/v1/offboardings/{id}")),
         links(
             ("GetRun" = (operation_id = "get", parameters(("id" = "$response.body#/id")))),
             ("RetryRun" = (operation_id = "retry", parameters(("id" = "$response.body#/id")))),
             ("CancelRun" = (operation_id = "cancel", parameters(("id" = "$response.body#/id")))),
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

/// The enqueue path every run takes, whoever asks (the host's request, an identity
/// provider's SCIM call): every rule checked, then the run written, the dispatcher woken.
/// Returns the run id and whether it was an idempotent replay.
pub(crate) async fn submit(
    app: &AppState,
    request: &OffboardingRequest,
    key: Option<&str>,
    hash: Option<&idempotency::RequestHash>,
) -> Result<(Uuid, bool), ApiError> {
    // A concurrent request with the same key loses the race on the key's primary key;
    // the second pass then finds the winner's run.
    let mut last = None;
    for _ in 0..2 {
        match enqueue(app, request, key, hash).await {
            Err(EnqueueError::KeyRace) => continue,
            Err(EnqueueError::Api(e)) => return Err(e),
            Ok(outcome) => {
                last = Some(outcome);
                break;
            }
        }
    }
    let (run_id, replayed) =
        last.ok_or_else(|| ApiError::conflict("idempotency_conflict", "retry the request"))?;
    if !replayed {
        app.nudge.notify_one();
        tracing::info!(%run_id, company_id = request.company_id.get(), user_id = request.user_id.get(),
                       action = %request.action, origin = ?request.origin, "run enqueued");
    }
    Ok((run_id, replayed))
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
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

pub(super) enum EnqueueError {
    Api(ApiError),
    KeyRace,
}

impl<E: Into<ApiError>> From<E> for EnqueueError {
    fn from(e: E) -> Self {
        EnqueueError::Api(e.into())
    }
}

/// Checks every rule and writes the run. Returns the run id and whether it was an
/// idempotent replay.
///
/// A request that puts no company-wide rule at stake (the common case: a regular user's
/// deactivation or deletion) is first tried as one statement that writes the run only if
/// every rule clears ([`runs::insert_if_clear`]). Otherwise, or when that statement
/// writes nothing, [`enqueue_checked`] reads everything the rules read and says which
/// one refuses, or writes the run where a company-wide rule needs a transaction.
async fn enqueue(
    app: &AppState,
    request: &OffboardingRequest,
    key: Option<&str>,
    hash: Option<&idempotency::RequestHash>,
) -> Result<(Uuid, bool), EnqueueError> {
    let named = named_targets(&request.transfer);
    let one_statement = request.actor_user_id != request.user_id
        && request.action != Action::Reactivate
        && request.replacement.is_none()
        && named.len() <= 4;
    if one_statement && let Ok(plan) = request.transfer.clone().resolve(None) {
        let run = new_run(app, request, &plan, &run_params(request), key);
        let targets: Vec<i64> = named.iter().map(|(id, _)| *id).collect();
        let clearance = runs::Clearance {
            user_status: request.action.required_status(),
            deactivates: request.action.deactivates(),
            targets: &targets,
            leaves: leaves(request.action),
        };
        let mut conn = app.pool.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        users::lock_for_enqueue(&mut tx, request.user_id.get(), clearance.leaves, &targets).await?;
        let written = runs::insert_if_clear(
            &mut tx,
            &run,
            key.zip(hash.map(idempotency::RequestHash::stored)),
            &clearance,
        )
        .await;
        if written.map_err(|e| insert_error(e, request, key))? {
            return match tx.commit().await {
                Ok(()) => Ok((run.id, false)),
                Err(e) => Err(insert_error(e, request, key)),
            };
        }
    }
    enqueue_checked(app, request, &named, key, hash).await
}

/// The action deactivates or deletes the user, who then must not receive items from an
/// active run.
fn leaves(action: Action) -> bool {
    matches!(action, Action::Deactivate | Action::DeactivateAndDelete | Action::Delete)
}

/// The run's parameters the request gives (a replacement's id is added once it exists).
fn run_params(request: &OffboardingRequest) -> RunParams {
    let mut params = RunParams::default();
    if let Some(redaction) = &request.redaction {
        params.display_name = redaction.display_name.clone();
        params.remove_picture = redaction.remove_picture;
    }
    if request.origin == Origin::IdentityProvider {
        params.started_by = Some("scim".into());
    }
    params
}

/// Everything the rules read, in one statement; then, if they clear it, the run is written
/// — in one more statement, or in a transaction that locks the company when admin counts
/// or seats are at stake.
///
/// One transaction holds them, after [`users::lock_for_enqueue`]: two requests that would
/// make one user both leaving and a target of an active run serialize there. Two requests
/// about one user that both read "no active run" cannot both write one, because the unique
/// index on active runs refuses the second, and the key's primary key keeps one key to one
/// run.
async fn enqueue_checked(
    app: &AppState,
    request: &OffboardingRequest,
    named: &[(i64, String)],
    key: Option<&str>,
    hash: Option<&idempotency::RequestHash>,
) -> Result<(Uuid, bool), EnqueueError> {
    let mut conn = app.pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let written = enqueue_checked_in(&mut tx, app, request, named, key, hash).await?;
    match tx.commit().await {
        Ok(()) => Ok(written),
        Err(e) => Err(insert_error(e, request, key)),
    }
}

/// [`enqueue_checked`] in the caller's transaction, which commits it: a batch writes its
/// rows this way, one transaction per chunk (a savepoint per row).
pub(super) async fn enqueue_checked_in(
    tx: &mut sqlx::PgConnection,
    app: &AppState,
    request: &OffboardingRequest,
    named: &[(i64, String)],
    key: Option<&str>,
    hash: Option<&idempotency::RequestHash>,
) -> Result<(Uuid, bool), EnqueueError> {
    let company_id = request.company_id.get();
    let user_id = request.user_id.get();
    let action = request.action;
    let target_ids: Vec<i64> = named.iter().map(|(id, _)| *id).collect();
    users::lock_for_enqueue(&mut *tx, user_id, leaves(action), &target_ids).await?;
    let subject = users::request_subject(
        &mut *tx,
        company_id,
        request.actor_user_id.get(),
        user_id,
        key,
        &target_ids,
    )
    .await?;

    if let (Some(hash), Some((run_id, stored))) = (hash, &subject.idempotent_run) {
        if !hash.matches(stored) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            )
            .into());
        }
        return Ok((*run_id, true));
    }
    if request.actor_user_id == request.user_id {
        return Err(ApiError::field(
            "self_offboarding",
            FieldError::new("actor_user_id", "a user cannot offboard themself"),
        )
        .into());
    }
    if !subject.actor_permitted {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "actor_not_permitted",
            "actor_user_id must be an active user of the company with account-settings access",
        )
        .into());
    }
    let Some(user) = subject.user else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            format!("user {user_id} not found in company {company_id}"),
        )
        .into());
    };
    if user.status == UserStatus::Deleted {
        return Err(ApiError::conflict(
            "user_deleted",
            format!("user {user_id} is deleted; no further action is possible"),
        )
        .into());
    }
    if user.status != action.required_status() {
        let (code, message) = match action.required_status() {
            UserStatus::Active => (
                "user_not_active",
                format!("{action} needs an active user; user {user_id} is {}", user.status),
            ),
            _ => (
                "user_not_deactivated",
                format!("{action} needs a deactivated user; user {user_id} is {}", user.status),
            ),
        };
        return Err(ApiError::conflict(code, message).into());
    }
    if let Some(run_id) = subject.active_run {
        return Err(active_run_exists(user_id, Some(run_id)).into());
    }
    if let Some(run_id) = subject.transfer_target_of.filter(|_| leaves(action)) {
        return Err(ApiError::conflict(
            "user_is_transfer_target",
            format!(
                "user {user_id} receives items from an active offboarding run; it must finish or be canceled first"
            ),
        )
        .with_details(json!({"run_id": run_id}))
        .into());
    }

    let mut params = run_params(request);
    let last_admin_at_stake = action.deactivates() && user.is_admin();
    let counts_company =
        last_admin_at_stake || action == Action::Reactivate || request.replacement.is_some();
    if !counts_company {
        let plan = request.transfer.clone().resolve(None).map_err(ApiError::invalid_request)?;
        check_targets(named, &subject.targets, company_id, user_id)?;
        return write_run(&mut *tx, app, request, plan, params, key, hash).await;
    }

    // Admin counts and seats are company-wide: those requests serialize on the company row.
    users::lock_company(&mut *tx, company_id).await?;
    if last_admin_at_stake && !users::has_remaining_admin(&mut *tx, company_id, user_id).await? {
        return Err(ApiError::conflict(
            "last_admin",
            "the company must keep at least one active admin",
        )
        .into());
    }
    let needs_seat =
        action == Action::Reactivate || (action == Action::Delete && request.replacement.is_some());
    if needs_seat {
        let (seats, held) = users::seats(&mut *tx, company_id).await?.unwrap_or((0, 0));
        if held >= i64::from(seats) {
            return Err(ApiError::conflict(
                "no_free_seat",
                format!("all {seats} seats of the company are taken"),
            )
            .into());
        }
    }
    if let Some(replacement) = &request.replacement {
        if users::email_taken(&mut *tx, company_id, &replacement.email).await? {
            return Err(ApiError::field(
                "email_taken",
                FieldError::new("replacement.email", "another user of the company has this email"),
            )
            .with_status(StatusCode::CONFLICT)
            .into());
        }
        let name = format!("{} {}", replacement.first_name, replacement.last_name);
        // Deactivation hands its seat over when it finishes; a deletion took a free one.
        let id = users::create_replacement(
            &mut *tx,
            company_id,
            &name,
            &replacement.email,
            action == Action::Delete,
        )
        .await?;
        params.replacement_user_id = UserId::new(id);
    }
    let plan = request
        .transfer
        .clone()
        .resolve(params.replacement_user_id)
        .map_err(ApiError::invalid_request)?;
    check_targets(named, &subject.targets, company_id, user_id)?;
    write_run(&mut *tx, app, request, plan, params, key, hash).await
}

/// The status a request's new run is written in: `scheduled` when it has an
/// `effective_at`, else `queued`.
pub(super) fn initial_status(request: &OffboardingRequest) -> RunStatus {
    if request.effective_at.is_some() { RunStatus::Scheduled } else { RunStatus::Queued }
}

/// The run a request asks for, with its steps.
fn new_run<'a>(
    app: &AppState,
    request: &'a OffboardingRequest,
    plan: &TransferPlan,
    params: &RunParams,
    key: Option<&'a str>,
) -> NewRun<'a> {
    NewRun {
        id: runs::new_run_id(),
        company_id: request.company_id.get(),
        user_id: request.user_id.get(),
        action: request.action,
        plan: plan.to_json(),
        params: serde_json::to_value(params).expect("params serialize"),
        actor_user_id: request.actor_user_id.get(),
        idempotency_key: key,
        steps: steps::plan(request.action, plan),
        max_attempts: app.settings.worker.max_attempts,
        status: initial_status(request),
        effective_at: request.effective_at,
    }
}

/// Writes the run with its steps, history and idempotency key (one statement).
async fn write_run(
    conn: &mut sqlx::PgConnection,
    app: &AppState,
    request: &OffboardingRequest,
    plan: TransferPlan,
    params: RunParams,
    key: Option<&str>,
    hash: Option<&idempotency::RequestHash>,
) -> Result<(Uuid, bool), EnqueueError> {
    let run = new_run(app, request, &plan, &params, key);
    runs::insert(conn, &run, key.zip(hash.map(idempotency::RequestHash::stored)))
        .await
        .map_err(|e| insert_error(e, request, key))?;
    Ok((run.id, false))
}

/// What a failed insert of a run means for the request.
fn insert_error(e: sqlx::Error, request: &OffboardingRequest, key: Option<&str>) -> EnqueueError {
    if is_unique_violation(&e, "runs_one_active_per_user") {
        // A concurrent request with the same key may have written its run first (and so
        // hit the user's active-run index before the key): the next pass finds its key.
        return match key {
            Some(_) => EnqueueError::KeyRace,
            None => active_run_exists(request.user_id.get(), None).into(),
        };
    }
    if is_unique_violation(&e, "idempotency_keys_pkey") {
        return EnqueueError::KeyRace;
    }
    e.into()
}

fn active_run_exists(user_id: i64, run_id: Option<Uuid>) -> ApiError {
    let err = ApiError::conflict(
        "active_run_exists",
        format!("user {user_id} already has an active offboarding run"),
    );
    match run_id {
        Some(id) => err.with_details(json!({"run_id": id})),
        None => err,
    }
}

/// The users a requested plan names, each with the field that names it first (the
/// replacement is not a user yet and is not among them).
pub(super) fn named_targets(requested: &TransferPlan<Recipient>) -> Vec<(i64, String)> {
    requested
        .targets_with_fields()
        .into_iter()
        .filter_map(|(recipient, field)| match recipient {
            Recipient::User(id) => Some((id.get(), field)),
            Recipient::Replacement => None,
        })
        .collect()
}

/// Targets are active users of the same company, not the offboarded user, and not being
/// offboarded themselves. Errors name the field, e.g.
/// `transfer.deals.targets[1].user_id: user 17 is deactivated`.
pub(super) fn check_targets(
    named: &[(i64, String)],
    found: &[users::TargetState],
    company_id: i64,
    user_id: i64,
) -> Result<(), ApiError> {
    for (id, field) in named {
        let id = *id;
        let problem = match found.iter().find(|t| t.id == id) {
            _ if id == user_id => Some(format!("user {id} is the user being offboarded")),
            None => Some(format!("user {id} is not a user of company {company_id}")),
            Some(t) if t.status != UserStatus::Active => Some(format!("user {id} is {}", t.status)),
            Some(t) if t.leaving => Some(format!("user {id} is being offboarded")),
            Some(_) => None,
        };
        if let Some(message) = problem {
            let field = format!("{field}.user_id");
            return Err(ApiError::field("invalid_target", FieldError::new(field, message)));
        }
    }
    Ok(())
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

fn parse_run_id(raw: &str) -> Result<Uuid, ApiError> {
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

pub(super) fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{id}", at.timestamp_micros())
}

pub(super) fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::bad_request("invalid_query", "cursor is not one this API returned");
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    let at =
        micros.parse::<i64>().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

use super::operators::operator;

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
    match runs::retry(&app.pool, id, caller.company_scope, &operator(&caller)).await? {
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
    match runs::cancel(&app.pool, id, caller.company_scope, &operator(&caller)).await? {
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
    let object = body.as_object().ok_or_else(|| {
        ApiError::invalid_request(FieldError::new("body", "must be a JSON object"))
    })?;
    if let Some(unknown) = object.keys().find(|k| k.as_str() != "effective_at") {
        return Err(ApiError::invalid_request(FieldError::new(unknown.as_str(), "unknown field")));
    }
    let value = object
        .get("effective_at")
        .filter(|v| !v.is_null())
        .ok_or_else(|| ApiError::invalid_request(FieldError::new("effective_at", "is required")))?;
    let at = crate::domain::request::effective_at(value, Utc::now())
        .map_err(ApiError::invalid_request)?;
    match scheduled::reschedule(&app.pool, id, caller.company_scope, at, &operator(&caller)).await?
    {
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
    let object = body.as_object().ok_or_else(|| {
        ApiError::invalid_request(FieldError::new("body", "must be a JSON object"))
    })?;
    if let Some(unknown) = object.keys().find(|k| k.as_str() != "approver_user_id") {
        return Err(ApiError::invalid_request(FieldError::new(unknown.as_str(), "unknown field")));
    }
    let approver = object
        .get("approver_user_id")
        .and_then(serde_json::Value::as_i64)
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ApiError::invalid_request(FieldError::new(
                "approver_user_id",
                "is required: a positive user id",
            ))
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
