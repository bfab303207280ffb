//! `/v1/webhook-endpoints` and `/v1/webhook-deliveries`: a company's endpoints (the secret
//! shown once, at creation and rotation), its deliveries, and replays. A company-scoped
//! token sees and touches only its company's; another company's are not found.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, auth::Caller, body::JsonBody, error::ApiError, views::ErrorBody};
use crate::{
    domain::{
        FieldError,
        webhook::{self, WebhookSecret},
    },
    ledger::webhooks::{
        self as ledger, DeliveryFilter, DeliveryRow, EndpointChange, EndpointRow, NewEndpoint,
        ReplayRefusal,
    },
};

/// The body of `POST /v1/webhook-endpoints`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; parsed field by field for precise errors
pub struct CreateEndpoint {
    #[schema(minimum = 1)]
    pub company_id: i64,
    /// `https` and a public address (plain http and private addresses only where
    /// `OFFBOARD_WEBHOOK_ALLOW_PRIVATE=1`).
    #[schema(example = "https://host.example.com/hooks/offboard", max_length = 2048)]
    pub url: String,
    /// Event types to receive; absent or empty means all.
    pub events: Option<Vec<String>>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// The body of `PATCH /v1/webhook-endpoints/{id}`; absent fields stay as they are.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct UpdateEndpoint {
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// `true` also clears the failing flag and the breaker; `false` stops deliveries.
    pub enabled: Option<bool>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// An endpoint with its secret: only in the answers to create and rotate-secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: EndpointRow,
    /// `whsec_…`: the key deliveries are signed with. Shown once.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryRow>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub endpoint_id: Uuid,
    /// New deliveries made of failed ones.
    pub replayed: i64,
}

const MAX_DESCRIPTION: usize = 500;

fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request("invalid_id", format!("the {what} id is not a UUID")))
}

fn object(body: &Value) -> Result<&serde_json::Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::invalid_request(FieldError::new("body", "must be a JSON object")))
}

fn refuse_unknown(body: &serde_json::Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid_request(FieldError::new(k.clone(), "unknown field"))),
        None => Ok(()),
    }
}

fn url_field(value: &Value, app: &AppState) -> Result<String, ApiError> {
    let raw = value
        .as_str()
        .ok_or_else(|| ApiError::invalid_request(FieldError::new("url", "must be a string")))?;
    let url = webhook::parse_endpoint_url(raw, app.settings.webhooks.allow_private)
        .map_err(|e| ApiError::field("url_not_allowed", e))?;
    Ok(url.to_string())
}

fn events_field(value: &Value) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid_request(FieldError::new("events", "must be a list of strings"));
    let list = value.as_array().ok_or_else(bad)?;
    let names: Vec<String> = list
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
        .collect::<Result<_, _>>()?;
    webhook::parse_event_types(&names).map_err(ApiError::invalid_request)
}

fn description_field(value: &Value) -> Result<Option<String>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.chars().count() <= MAX_DESCRIPTION => Ok(Some(s.clone())),
        Value::String(_) => Err(ApiError::invalid_request(FieldError::new(
            "description",
            "is longer than 500 characters",
        ))),
        _ => Err(ApiError::invalid_request(FieldError::new("description", "must be a string"))),
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
    let fields = object(&body)?;
    refuse_unknown(fields, &["company_id", "url", "events", "description"])?;
    let company_id =
        fields.get("company_id").and_then(Value::as_i64).filter(|c| *c > 0).ok_or_else(|| {
            ApiError::invalid_request(FieldError::new("company_id", "must be a positive integer"))
        })?;
    caller.check_company(company_id)?;
    let url = url_field(
        fields
            .get("url")
            .ok_or_else(|| ApiError::invalid_request(FieldError::new("url", "is required")))?,
        &app,
    )?;
    let events = match fields.get("events") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => events_field(v)?,
    };
    let description = match fields.get("description") {
        None => None,
        Some(v) => description_field(v)?,
    };
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
    let fields = object(&body)?;
    refuse_unknown(fields, &["url", "events", "enabled", "description"])?;
    let url = fields.get("url").map(|v| url_field(v, &app)).transpose()?;
    let events = match fields.get("events") {
        None => None,
        Some(Value::Null) => Some(Vec::new()),
        Some(v) => Some(events_field(v)?),
    };
    let enabled = match fields.get("enabled") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::invalid_request(FieldError::new("enabled", "must be a boolean")));
        }
    };
    let description = fields.get("description").map(description_field).transpose()?;
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

fn replay_refused(refusal: ReplayRefusal) -> ApiError {
    match refusal {
        ReplayRefusal::NotFound => ApiError::not_found("webhook delivery"),
        ReplayRefusal::InProgress => {
            ApiError::conflict("invalid_state", "the delivery is still pending or being sent")
        }
        ReplayRefusal::EndpointDisabled => ApiError::conflict(
            "endpoint_disabled",
            "the endpoint is disabled; enable it first (PATCH enabled: true)",
        ),
    }
}

/// Deliveries, newest first, filtered and paged.
#[utoipa::path(
    get,
    path = "/v1/webhook-deliveries",
    tag = "webhooks",
    params(
        ("company_id" = Option<i64>, Query, minimum = 1),
        ("endpoint_id" = Option<Uuid>, Query),
        ("status" = Option<String>, Query, description = "pending, sending, succeeded or failed"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, body = DeliveryList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn list_deliveries(
    State(app): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeliveryList>, ApiError> {
    let company_id = scoped_company(&caller, positive(&query, "company_id")?)?;
    let endpoint_id = query
        .get("endpoint_id")
        .map(|v| {
            Uuid::parse_str(v)
                .map_err(|_| ApiError::bad_request("invalid_query", "endpoint_id must be a UUID"))
        })
        .transpose()?;
    let status = query
        .get("status")
        .map(|s| {
            if ["pending", "sending", "succeeded", "failed"].contains(&s.as_str()) {
                Ok(s.clone())
            } else {
                Err(ApiError::bad_request(
                    "invalid_query",
                    "status must be one of pending, sending, succeeded, failed",
                ))
            }
        })
        .transpose()?;
    let limit = positive(&query, "limit")?.unwrap_or(50);
    if limit > 500 {
        return Err(ApiError::bad_request("invalid_query", "limit must be at most 500"));
    }
    let before_id = query
        .get("cursor")
        .map(|c| {
            c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request("invalid_query", "cursor is not one this API returned")
            })
        })
        .transpose()?;
    let filter = DeliveryFilter { company_id, endpoint_id, status, before_id, limit };
    let deliveries = ledger::list_deliveries(&app.pool, &filter).await?;
    let next_cursor = (deliveries.len() as i64 == limit)
        .then(|| deliveries.last().map(|d| d.id.to_string()))
        .flatten();
    Ok(Json(DeliveryList { deliveries, next_cursor }))
}

/// Send a delivery's event again to its endpoint, as a new delivery with the same
/// `webhook-id`.
#[utoipa::path(
    post,
    path = "/v1/webhook-deliveries/{id}/replay",
    tag = "webhooks",
    params(("id" = i64, Path, minimum = 1)),
    responses(
        (status = 202, body = DeliveryRow),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Still pending or being sent, or the endpoint is disabled", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn replay_delivery(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request("invalid_id", "the delivery id is not a positive integer")
    })?;
    match ledger::replay(&app.pool, id, caller.company_scope).await? {
        Ok(delivery) => {
            tracing::info!(delivery_id = id, replay_id = delivery.id, "delivery replayed");
            Ok((StatusCode::ACCEPTED, Json(delivery)).into_response())
        }
        Err(refusal) => Err(replay_refused(refusal)),
    }
}

fn positive(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    query
        .get(name)
        .map(|v| {
            v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("{name} must be a positive whole number"),
                )
            })
        })
        .transpose()
}

/// The company a listing covers: a scoped token's own, whatever was asked; another
/// company is not found.
fn scoped_company(caller: &Caller, asked: Option<i64>) -> Result<Option<i64>, ApiError> {
    match caller.company_scope {
        Some(scope) if asked.is_some_and(|c| c != scope) => Err(ApiError::not_found("company")),
        Some(scope) => Ok(Some(scope)),
        None => Ok(asked),
    }
}
