//! A company's webhook deliveries: list them, send one again.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use super::{DeliveryList, positive, replay_refused, scoped_company};
use crate::{
    api::{AppState, auth::Caller, error::ApiError, views::ErrorBody},
    ledger::webhooks::{self as ledger, DeliveryFilter, DeliveryRow},
};

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
