//! The enqueue path every run takes, whoever asks (the host's request, a batch's row, an
//! identity provider's SCIM call): the rules judged, then the run written, the dispatcher
//! woken. The rules about one user live once, in the ledger's SQL
//! ([`runs::judge`], [`runs::insert_if_clear`]); [`refusals`] maps their verdict to
//! the API's errors. The company-wide rules (the last admin, seats, a replacement's
//! email) need the company's row locked and live here.

mod refusals;

use axum::http::StatusCode;
use uuid::Uuid;

use self::refusals::{active_run_exists, target_refusal, user_refusal};
pub(super) use self::refusals::{check_targets, named_targets};
use super::{
    AppState,
    error::{ApiError, is_unique_violation},
};
use crate::{
    crm::users,
    domain::{
        Action, FieldError, OffboardingRequest, Origin, RunStatus, Service, TransferPlan, UserId,
    },
    ledger::{
        idempotency,
        runs::{self, Clearance, NewRun},
    },
    steps::{self, RunParams},
};

/// Judges the request and writes its run, the dispatcher woken. Returns the run id and
/// whether it was an idempotent replay.
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

pub(super) enum EnqueueError {
    Api(ApiError),
    KeyRace,
}

impl<E: Into<ApiError>> From<E> for EnqueueError {
    fn from(e: E) -> Self {
        EnqueueError::Api(e.into())
    }
}

/// The request as the rules judge it.
fn clearance<'a>(
    request: &OffboardingRequest,
    key: Option<&'a str>,
    targets: &'a [i64],
) -> Clearance<'a> {
    Clearance {
        company_id: request.company_id.get(),
        actor_user_id: request.actor_user_id.get(),
        user_id: request.user_id.get(),
        idempotency_key: key,
        action: request.action,
        user_status: request.action.required_status(),
        deactivates: request.action.deactivates(),
        leaves: leaves(request.action),
        targets,
    }
}

/// Judges the request and writes its run. Returns the run id and whether it was an
/// idempotent replay.
///
/// A request that puts no company-wide rule at stake (the common case: a regular user's
/// deactivation or deletion) is first tried as one statement that judges it and writes
/// the run when every rule clears it ([`runs::insert_if_clear`]); a refusal comes back
/// from the same statement. Otherwise (an admin's deactivation, a reactivation, a
/// replacement) [`enqueue_checked`] judges it, takes the company-wide rules
/// under the company's lock, and writes the run.
async fn enqueue(
    app: &AppState,
    request: &OffboardingRequest,
    key: Option<&str>,
    hash: Option<&idempotency::RequestHash>,
) -> Result<(Uuid, bool), EnqueueError> {
    let named = named_targets(&request.transfer);
    let one_statement = request.action != Action::Reactivate && request.replacement.is_none();
    if one_statement && let Ok(plan) = request.transfer.clone().resolve(None) {
        let run = new_run(app, request, &plan, &run_params(request), key);
        let targets: Vec<i64> = named.iter().map(|(id, _)| *id).collect();
        let clearance = clearance(request, key, &targets);
        let mut conn = app.pool.acquire().await?;
        // One statement, committed by itself: it takes the request's user locks, judges,
        // and writes the run when the rules clear it.
        let judged = runs::insert_if_clear(
            &mut conn,
            &run,
            key.zip(hash.map(idempotency::RequestHash::stored)),
            &clearance,
        )
        .await
        .map_err(|e| insert_error(e, request, key))?;
        if judged.written {
            return Ok((run.id, false));
        }
        let verdict = judged.verdict;
        if let Some(run_id) = user_refusal(&verdict, request, hash)? {
            return Ok((run_id, true));
        }
        // An admin's deactivation goes on to the last-admin rule, before its targets.
        if !(request.action.deactivates() && verdict.user_is_admin()) {
            target_refusal(&verdict, &named, request.company_id.get())?;
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
        params.started_by = Some(Service::Scim);
    }
    params
}

/// The rules' verdict, then the company-wide rules, then the run written — in one
/// transaction, after the request's user locks ([`runs::judge`]): two requests that would
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
    let mut tx = runs::begin_enqueue(&mut conn).await?;
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
    let clearance = clearance(request, key, &target_ids);
    let verdict = runs::judge(&mut *tx, &clearance).await?;
    if let Some(run_id) = user_refusal(&verdict, request, hash)? {
        return Ok((run_id, true));
    }

    let mut params = run_params(request);
    let last_admin_at_stake = action.deactivates() && verdict.user_is_admin();
    let counts_company =
        last_admin_at_stake || action == Action::Reactivate || request.replacement.is_some();
    if !counts_company {
        let plan = request.transfer.clone().resolve(None).map_err(ApiError::invalid_request)?;
        target_refusal(&verdict, named, company_id)?;
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
    target_refusal(&verdict, named, company_id)?;
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
