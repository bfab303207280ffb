//! `/Users`: list, read, create, replace, modify, delete. A change of `active` and a
//! DELETE become offboarding runs through [`submit`], the enqueue path a host request
//! takes, with the company's policy and its service actor: the answer is immediate, the
//! run goes on. The same change sent again (identity providers retry) starts no second
//! run: the user's active run already is the change, and the unique index on active runs
//! refuses a second one to two requests racing.

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{
    LIST_SCHEMA, ScimBody, ScimCaller, ScimError, base_url,
    discovery::MAX_RESULTS,
    filter, patch,
    resource::{self, Projection},
    scim_json,
};
use crate::{
    api::{AppState, enqueue::submit, policy::service_actor},
    crm::provisioning::{self, ProvisionedUser, Refusal, UserAttributes},
    domain::{
        Action, CompanyId, OffboardingRequest, Origin, TransferPlan, UserId, UserStatus,
        transfer::Recipient,
    },
    ledger::policies,
};

fn user_id(raw: &str) -> Result<i64, ScimError> {
    raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| ScimError::not_found("no such user"))
}

async fn load(app: &AppState, company_id: i64, id: i64) -> Result<ProvisionedUser, ScimError> {
    provisioning::find(&app.pool, company_id, id)
        .await?
        .ok_or_else(|| ScimError::not_found(format!("user {id} not found")))
}

fn integer(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ScimError> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ScimError::bad("invalidValue", format!("{name} must be an integer")))
        })
        .transpose()
}

fn param<'a>(query: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn projection(query: &HashMap<String, String>) -> Projection {
    Projection::new(param(query, "attributes"), param(query, "excludedAttributes"))
}

pub async fn list(
    State(app): State<AppState>,
    caller: ScimCaller,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    let start_index = integer(&query, "startIndex")?.unwrap_or(1).max(1);
    let count = integer(&query, "count")?.unwrap_or(100).clamp(0, MAX_RESULTS);
    let filter = match param(&query, "filter") {
        Some(raw) => filter::parse(raw)?,
        None => filter::Filter::default(),
    };
    let (total, users) = if filter.matches_nothing {
        (0, Vec::new())
    } else {
        let mut conn = app.pool.acquire().await?;
        provisioning::list(&mut conn, caller.company_id, &filter.users, start_index - 1, count)
            .await?
    };
    let base = base_url(&headers);
    let projection = projection(&query);
    let resources: Vec<_> =
        users.iter().map(|u| projection.apply(resource::render(u, &base))).collect();
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "itemsPerPage": resources.len(),
            "startIndex": start_index,
            "Resources": resources,
        }),
    ))
}

pub async fn show(
    State(app): State<AppState>,
    caller: ScimCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    let user = load(&app, caller.company_id, user_id(&id)?).await?;
    let body = projection(&query).apply(resource::render(&user, &base_url(&headers)));
    Ok(scim_json(StatusCode::OK, &body))
}

fn refusal(refusal: Refusal) -> ScimError {
    match refusal {
        Refusal::UserNameTaken => ScimError::conflict(
            Some("uniqueness"),
            "userName is already taken by another user of the company",
        ),
        Refusal::EmailTaken => ScimError::conflict(
            Some("uniqueness"),
            "the email is already taken by another user of the company",
        ),
        Refusal::NoFreeSeat(seats) => ScimError::conflict(
            None,
            format!("all {seats} seats of the company are taken; free one or buy more"),
        ),
        Refusal::CompanyNotFound => ScimError::not_found("company not found"),
    }
}

pub async fn create(
    State(app): State<AppState>,
    caller: ScimCaller,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let (attributes, active) = resource::read_resource(&body)?;
    let mut conn = app.pool.acquire().await?;
    let id =
        provisioning::create(&mut conn, caller.company_id, &attributes, active.unwrap_or(true))
            .await?
            .map_err(refusal)?;
    drop(conn);
    tracing::info!(company_id = caller.company_id, user_id = id, "user provisioned over SCIM");
    let user = load(&app, caller.company_id, id).await?;
    let base = base_url(&headers);
    let mut response = scim_json(
        StatusCode::CREATED,
        &Projection::default().apply(resource::render(&user, &base)),
    );
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/Users/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn replace(
    State(app): State<AppState>,
    caller: ScimCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let user = load(&app, caller.company_id, user_id(&id)?).await?;
    let (mut attributes, active) = resource::read_resource(&body)?;
    // The extension is not an attribute a replacement sets: it stays as it was.
    attributes.extension_hidden = user.extension_hidden;
    change(&app, caller.company_id, &user, attributes, active).await?;
    let user = load(&app, caller.company_id, user.id).await?;
    Ok(scim_json(
        StatusCode::OK,
        &Projection::default().apply(resource::render(&user, &base_url(&headers))),
    ))
}

pub async fn modify(
    State(app): State<AppState>,
    caller: ScimCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let user = load(&app, caller.company_id, user_id(&id)?).await?;
    let mut attributes = user.attributes();
    let mut active = None;
    patch::apply(&body, &mut attributes, &mut active)?;
    change(&app, caller.company_id, &user, attributes, active).await?;
    let user = load(&app, caller.company_id, user.id).await?;
    Ok(scim_json(
        StatusCode::OK,
        &Projection::default().apply(resource::render(&user, &base_url(&headers))),
    ))
}

/// Applies new attributes and a wanted `active`. A refused run changes nothing: the
/// uniqueness of the attributes is checked first, the run enqueued next, the attributes
/// written last.
async fn change(
    app: &AppState,
    company_id: i64,
    user: &ProvisionedUser,
    attributes: UserAttributes,
    active: Option<bool>,
) -> Result<(), ScimError> {
    let changed = attributes != user.attributes();
    let mut conn = app.pool.acquire().await?;
    if changed
        && let Some(r) =
            provisioning::collision(&mut conn, company_id, &attributes, Some(user.id)).await?
    {
        return Err(refusal(r));
    }
    drop(conn);
    if let Some(want) = active {
        set_active(app, company_id, user, want).await?;
    }
    if changed {
        let mut conn = app.pool.acquire().await?;
        provisioning::update(&mut conn, company_id, user.id, &attributes)
            .await?
            .map_err(refusal)?;
    }
    Ok(())
}

/// Makes the user active or not: a deactivation run with the policy's plan, or a
/// reactivation run (which cancels the pending private-email purge). Nothing when the user
/// already is, or is becoming, what is asked.
async fn set_active(
    app: &AppState,
    company_id: i64,
    user: &ProvisionedUser,
    want: bool,
) -> Result<(), ScimError> {
    if user.is_active() == want {
        return Ok(());
    }
    if user.run_active {
        let run = user.run_id.map(|id| id.to_string()).unwrap_or_default();
        let action = user.run_action.map_or("offboarding", Action::as_str);
        return Err(ScimError::conflict(
            None,
            format!(
                "user {} has an active {action} run ({run}); send this again once it finished",
                user.id
            ),
        ));
    }
    let action = match (want, user.status) {
        (false, UserStatus::Active) => {
            policies::find(&app.pool, company_id).await?.policy.on_deactivate.action()
        }
        (true, UserStatus::Deactivated) => Action::Reactivate,
        _ => return Ok(()),
    };
    start(app, company_id, user, action, Goal::Active(want)).await
}

/// What a SCIM call wants of the user: what a run another request started must achieve
/// for this call to be that run's repetition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    Active(bool),
    Gone,
}

/// Enqueues `action` for the user through the host's enqueue path.
async fn start(
    app: &AppState,
    company_id: i64,
    user: &ProvisionedUser,
    action: Action,
    goal: Goal,
) -> Result<(), ScimError> {
    let actor = service_actor(app, company_id).await?;
    let transfer: TransferPlan<Recipient> = if action.accepts_transfer() {
        policies::find(&app.pool, company_id).await?.policy.transfer.map_targets(Recipient::User)
    } else {
        TransferPlan::default()
    };
    let request = OffboardingRequest {
        company_id: CompanyId::new(company_id).expect("a scoped company id is positive"),
        user_id: UserId::new(user.id).expect("user ids are positive"),
        actor_user_id: UserId::new(actor).expect("user ids are positive"),
        action,
        transfer,
        replacement: None,
        redaction: None,
        origin: Origin::IdentityProvider,
        effective_at: None,
    };
    match submit(app, &request, None, None).await {
        Ok((run_id, _)) => {
            tracing::info!(%run_id, company_id, user_id = user.id, %action, "SCIM started a run");
            Ok(())
        }
        Err(e) if e.code == "active_run_exists" => {
            // Another request for the same change got there first: that run is this one.
            let now = provisioning::find(&app.pool, company_id, user.id).await?;
            match (goal, now) {
                (Goal::Active(want), Some(u)) if u.is_active() == want => Ok(()),
                (Goal::Gone, None) => Ok(()),
                _ => Err(ScimError::conflict(
                    None,
                    format!("{}; send this again once it finished", e.message),
                )),
            }
        }
        Err(e) => Err(refused(e)),
    }
}

/// A refusal of the enqueue rules, said so that an identity provider's admin can act.
fn refused(e: crate::api::error::ApiError) -> ScimError {
    match e.code {
        "last_admin" => ScimError::conflict(
            None,
            "the company must keep at least one active admin, and this user is the last one; nothing was started",
        ),
        "invalid_target" => ScimError::conflict(
            None,
            format!(
                "the company's offboarding policy names a transfer target that cannot take items ({}); change the policy; nothing was started",
                e.message
            ),
        ),
        code if e.status == StatusCode::CONFLICT => {
            ScimError::conflict(None, format!("{} ({code}); nothing was started", e.message))
        }
        _ => e.into(),
    }
}

pub async fn remove(
    State(app): State<AppState>,
    caller: ScimCaller,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    let user = load(&app, caller.company_id, user_id(&id)?).await?;
    let policy = policies::find(&app.pool, caller.company_id).await?.policy;
    let Some(action) = policy.on_delete.action_for(user.status) else {
        return Err(ScimError::conflict(
            None,
            format!(
                "the company's offboarding policy deletes only deactivated users and user {} is active; deactivate it first (active: false)",
                user.id
            ),
        ));
    };
    if user.run_active {
        let run = user.run_id.map(|id| id.to_string()).unwrap_or_default();
        return Err(ScimError::conflict(
            None,
            format!(
                "user {} has an active {} run ({run}); send the DELETE again once it finished",
                user.id,
                user.run_action.map_or("offboarding", Action::as_str)
            ),
        ));
    }
    start(&app, caller.company_id, &user, action, Goal::Gone).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
