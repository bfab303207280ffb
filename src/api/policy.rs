//! `/v1/companies/{company_id}/offboarding-policy`: what the runs an identity provider
//! starts do — the default transfer plan, the action of a SCIM deactivation and of a SCIM
//! DELETE — and the company's service actor they are recorded under. Validated like a
//! request: every target an active user of the company that no run is offboarding.

use axum::{
    Json,
    extract::{Path, State},
};

use super::{
    AppState,
    auth::Caller,
    body::JsonBody,
    enqueue::check_targets,
    error::ApiError,
    views::{ErrorBody, PolicyView, ServiceActorView},
};
use crate::{
    crm::provisioning,
    domain::{Actor, OffboardingPolicy, Service},
    ledger::{
        policies::{self, StoredPolicy},
        runs,
    },
};

fn company_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request("invalid_id", "company_id must be a positive whole number")
    })
}

/// The company's service actor (created the first time it is needed).
pub(super) async fn service_actor(app: &AppState, company_id: i64) -> Result<i64, ApiError> {
    let mut conn = app.pool.acquire().await?;
    provisioning::service_actor(&mut conn, company_id)
        .await?
        .ok_or_else(|| ApiError::not_found("company"))
}

fn view(company_id: i64, actor: i64, stored: StoredPolicy) -> PolicyView {
    let settings = stored.policy.to_json();
    PolicyView {
        company_id,
        transfer: settings["transfer"].clone(),
        on_deactivate: stored.policy.on_deactivate.as_str().into(),
        on_delete: stored.policy.on_delete.as_str().into(),
        delete_after_days: stored.policy.delete_after_days,
        require_approval: stored.policy.require_approval,
        approval_ttl_hours: stored.policy.approval_ttl_hours,
        actor: ServiceActorView {
            kind: "service".into(),
            user_id: actor,
            requested_by: Actor::Service(Service::Scim),
        },
        updated_at: stored.updated_at,
        updated_by: stored.updated_by,
    }
}

/// The company's offboarding policy (the defaults until one is set).
#[utoipa::path(
    get,
    path = "/v1/companies/{company_id}/offboarding-policy",
    tag = "policy",
    params(("company_id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, body = PolicyView),
        (status = 400, description = "The company id is not a positive number", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such company (for this token)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn show(
    State(app): State<AppState>,
    caller: Caller,
    Path(company): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    let company_id = company_id(&company)?;
    caller.check_company(company_id)?;
    let actor = service_actor(&app, company_id).await?;
    let stored = policies::find(&app.pool, company_id).await?;
    Ok(Json(view(company_id, actor, stored)))
}

/// Sets the company's offboarding policy. A field left out takes its default; a target
/// that is not an active user of the company, or that a run is offboarding, is refused
/// and nothing changes.
#[utoipa::path(
    put,
    path = "/v1/companies/{company_id}/offboarding-policy",
    tag = "policy",
    params(("company_id" = i64, Path, minimum = 1)),
    request_body = crate::domain::policy::PolicyBody,
    responses(
        (status = 200, body = PolicyView),
        (status = 400, description = "Malformed JSON or company id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such company (for this token)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A field breaks a rule; `field` names it", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn put(
    State(app): State<AppState>,
    caller: Caller,
    Path(company): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<PolicyView>, ApiError> {
    let company_id = company_id(&company)?;
    caller.check_company(company_id)?;
    let policy = OffboardingPolicy::parse(&body).map_err(ApiError::invalid_request)?;
    let actor = service_actor(&app, company_id).await?;
    let named = policy.named_targets();
    let ids: Vec<i64> = named.iter().map(|(id, _)| *id).collect();
    // No user is being offboarded by a policy: 0 is no user's id.
    let found = runs::target_states(&app.pool, company_id, 0, &ids).await?;
    check_targets(&named, &found, company_id)?;
    if let Some((id, field)) = named.iter().find(|(id, _)| *id == actor) {
        return Err(ApiError::invalid_request(crate::domain::FieldError::new(
            format!("{field}.user_id"),
            format!("user {id} is the company's service actor"),
        )));
    }
    let by = match caller.company_scope {
        Some(company) => format!("token:company-{company}"),
        None => "token:operator".into(),
    };
    let updated_at = policies::put(&app.pool, company_id, &policy, &by).await?;
    tracing::info!(company_id, "offboarding policy set");
    let stored = StoredPolicy { policy, updated_at: Some(updated_at), updated_by: Some(by) };
    Ok(Json(view(company_id, actor, stored)))
}
