//! A company's webhook endpoints: register, list, change, delete, rotate the secret,
//! replay the failed deliveries.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{
    CreateEndpoint, EndpointList, EndpointWithSecret, Replayed, UpdateEndpoint, parse_id, positive,
    replay_refused, scoped_company,
};
use crate::{
    api::{AppState, auth::Caller, body::JsonBody, error::ApiError, views::ErrorBody},
    domain::{
        FieldError,
        webhook::{self, WebhookSecret},
        wire,
    },
    ledger::webhooks::{self as ledger, EndpointChange, EndpointRow, NewEndpoint},
};

const MAX_DESCRIPTION: usize = 500;

fn checked_url(raw: &str, app: &AppState) -> Result<String, ApiError> {
    let url = webhook::parse_endpoint_url(raw, app.settings.webhooks.allow_private)
        .map_err(|e| ApiError::field("url_not_allowed", e))?;
    Ok(url.to_string())
}

fn checked_events(names: Vec<String>) -> Result<Vec<String>, ApiError> {
    webhook::parse_event_types(&names).map_err(ApiError::invalid_request)
}

fn checked_description(description: Option<String>) -> Result<Option<String>, ApiError> {
    match description {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => Err(ApiError::invalid_request(
            FieldError::new("description", "is longer than 500 characters"),
        )),
        // PostgreSQL's text cannot hold NUL; no control character belongs in a label.
        Some(d) if d.chars().any(char::is_control) => Err(ApiError::invalid_request(
            FieldError::new("description", "must not contain control characters"),
        )),
        d => Ok(d),
    }
}

/// Register an endpoint. The answer carries its secret, shown this once.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    request_body = CreateEndpoint,
    responses(
        (status = 201, body = EndpointWithSecret,
         links(
             ("GetEndpoint" = (operation_id = "get_endpoint", parameters(("id" = "$response.body#/id")))),
             ("RotateSecret" = (operation_id = "rotate_secret", parameters(("id" = "$response.body#/id")))),
         )),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A field breaks a rule (`url_not_allowed`: not https, or a private address)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn create_endpoint(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body: CreateEndpoint =
        wire::from_json(&body, "must be a JSON object").map_err(ApiError::invalid_request)?;
    let company_id = body.company_id.ok_or_else(|| {
        ApiError::invalid_request(FieldError::new("company_id", "must be a positive integer"))
    })?;
    caller.check_company(company_id)?;
    let url = checked_url(&body.url, &app)?;
    let events = body.events.map(checked_events).transpose()?.unwrap_or_default();
    let description = checked_description(body.description)?;
    let secret = WebhookSecret::generate().expose();
    let endpoint = ledger::create_endpoint(
        &app.pool,
        &NewEndpoint {
            company_id,
            url: &url,
            description: description.as_deref(),
            events: &events,
            secret: &secret,
        },
    )
    .await?;
    tracing::info!(endpoint_id = %endpoint.id, company_id, "webhook endpoint created");
    Ok((StatusCode::CREATED, Json(EndpointWithSecret { endpoint, secret })).into_response())
}

/// A company's endpoints (a scoped token's own company by default).
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    params(("company_id" = Option<i64>, Query, minimum = 1)),
    responses(
        (status = 200, body = EndpointList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn list_endpoints(
    State(app): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<EndpointList>, ApiError> {
    let company = scoped_company(&caller, positive(&query, "company_id")?)?;
    let endpoints = ledger::list_endpoints(&app.pool, company).await?;
    Ok(Json(EndpointList { endpoints }))
}

/// One endpoint (without its secret).
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = EndpointRow),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn get_endpoint(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EndpointRow>, ApiError> {
    let id = parse_id(&id, "endpoint")?;
    ledger::find_endpoint(&app.pool, id, caller.company_scope)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))
}

/// Change an endpoint's url, events, description, or whether it is enabled.
#[utoipa::path(
    patch,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path)),
    request_body = UpdateEndpoint,
    responses(
        (status = 200, body = EndpointRow),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn update_endpoint(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<EndpointRow>, ApiError> {
    let id = parse_id(&id, "endpoint")?;
    let body: UpdateEndpoint =
        wire::from_json(&body, "must be a JSON object").map_err(ApiError::invalid_request)?;
    let url = body.url.map(|url| checked_url(&url, &app)).transpose()?;
    let events = body
        .events
        .map(|events| events.map(checked_events).transpose().map(Option::unwrap_or_default))
        .transpose()?;
    let enabled = body.enabled;
    let description = body.description.map(checked_description).transpose()?;
    let change = EndpointChange {
        url: url.as_deref(),
        description: description.as_ref().map(|d| d.as_deref()),
        events: events.as_deref(),
        enabled,
    };
    let endpoint = ledger::update_endpoint(&app.pool, id, caller.company_scope, &change)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    if enabled == Some(true) {
        // Held-back deliveries may go now.
        let _ = sqlx::query("SELECT pg_notify('offboard_webhooks', '')").execute(&app.pool).await;
    }
    Ok(Json(endpoint))
}

/// Delete an endpoint and its deliveries.
#[utoipa::path(
    delete,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn delete_endpoint(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "endpoint")?;
    if ledger::delete_endpoint(&app.pool, id, caller.company_scope).await? {
        tracing::info!(endpoint_id = %id, "webhook endpoint deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook endpoint"))
    }
}

/// A new secret signs from now on; the previous one signs beside it (two space-separated
/// signatures) for `OFFBOARD_WEBHOOK_SECRET_OVERLAP`, so receivers can switch without
/// missing a delivery.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/rotate-secret",
    tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = EndpointWithSecret),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn rotate_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EndpointWithSecret>, ApiError> {
    let id = parse_id(&id, "endpoint")?;
    let secret = WebhookSecret::generate().expose();
    let endpoint = ledger::rotate_secret(
        &app.pool,
        id,
        caller.company_scope,
        &secret,
        app.settings.webhooks.secret_overlap,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    tracing::info!(endpoint_id = %id, "webhook secret rotated");
    Ok(Json(EndpointWithSecret { endpoint, secret }))
}

/// Send every failed delivery of the endpoint again (same `webhook-id`s).
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/replay-failed",
    tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 202, body = Replayed),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The endpoint is disabled", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn replay_failed(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "endpoint")?;
    match ledger::replay_failed(&app.pool, id, caller.company_scope).await? {
        Ok(replayed) => {
            tracing::info!(endpoint_id = %id, replayed, "failed deliveries replayed");
            Ok((StatusCode::ACCEPTED, Json(Replayed { endpoint_id: id, replayed })).into_response())
        }
        Err(refusal) => Err(replay_refused(refusal)),
    }
}
