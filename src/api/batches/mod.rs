//! `/v1/offboarding-batches`: bulk offboarding from a file. Rows come as JSON, NDJSON or
//! CSV ([`crate::domain::batch`]), each becomes the body of a single request and goes
//! through the single request's parser and enqueue path ([`super::offboardings`]), so a
//! refused row has the code and field a single request would get. Accepted rows are
//! written one chunk per transaction (a savepoint per row); `all_or_nothing` first checks
//! every row the same way in transactions that are rolled back.

mod submit;

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

pub use self::submit::{__path_create, create};
use super::{
    AppState,
    auth::Caller,
    batch_views::{BatchList, BatchView},
    error::ApiError,
    offboardings::{decode_cursor, encode_cursor},
    operators::{BulkOperationView, operator},
    views::ErrorBody,
};
use crate::ledger::{
    batches,
    bulk::{self, BulkKind},
    filter::RunFilter,
};

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request("invalid_id", "the batch id is not a UUID"))
}

/// A batch: its rows, refused rows, runs by status, items moved and an ETA from the rate
/// its runs have been finishing at.
#[utoipa::path(
    get,
    path = "/v1/offboarding-batches/{id}",
    tag = "batches",
    params(("id" = Uuid, Path, description = "The batch id")),
    responses(
        (status = 200, body = BatchView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let id = parse_id(&id)?;
    let batch = batches::find(&app.pool, id, caller.company_scope)
        .await?
        .ok_or_else(|| ApiError::not_found("batch"))?;
    Ok(Json(BatchView::of(batch, caller.company_scope)))
}

/// Batches, newest first (a scoped token's company's only), in keyset pages.
#[utoipa::path(
    get,
    path = "/v1/offboarding-batches",
    tag = "batches",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Default 20"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, body = BatchList),
        (status = 400, description = "A query parameter is invalid", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<BatchList>, ApiError> {
    let bad = |m: &str| ApiError::bad_request("invalid_query", m.to_string());
    if let Some(unknown) = query.keys().find(|k| !["limit", "cursor"].contains(&k.as_str())) {
        return Err(bad(&format!("unknown query parameter {unknown}")));
    }
    let limit = match query.get("limit") {
        None => 20,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| bad("limit must be a whole number from 1 to 100"))?,
    };
    let before = query.get("cursor").map(|c| decode_cursor(c)).transpose()?;
    let rows = batches::list(&app.pool, caller.company_scope, before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|b| encode_cursor(b.created_at, b.id)))
        .flatten();
    let batches = rows.into_iter().map(|b| BatchView::of(b, caller.company_scope)).collect();
    Ok(Json(BatchList { batches, next_cursor }))
}

/// Cancel every run of the batch that has not finished: recorded as a bulk cancel with
/// the filter `batch_id` (the workers work through it in chunks; follow it at the
/// `Location`). A scoped token cancels its company's runs only.
#[utoipa::path(
    post,
    path = "/v1/offboarding-batches/{id}/cancel",
    tag = "batches",
    params(("id" = Uuid, Path, description = "The batch id")),
    responses(
        (status = 202, description = "Recorded; the workers cancel the runs", body = BulkOperationView,
         headers(("Location" = String, description = "/v1/bulk-operations/{id}"))),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    batches::find(&app.pool, id, caller.company_scope)
        .await?
        .ok_or_else(|| ApiError::not_found("batch"))?;
    let filter =
        RunFilter { batch_id: Some(id), company_id: caller.company_scope, ..RunFilter::default() };
    let op =
        bulk::create(&app.pool, BulkKind::Cancel, &filter, caller.company_scope, operator(&caller))
            .await?;
    tracing::info!(batch_id = %id, bulk_operation = %op.id, matched = op.matched, "batch cancel recorded");
    let location = HeaderValue::from_str(&format!("/v1/bulk-operations/{}", op.id)).expect("ascii");
    let mut response = (StatusCode::ACCEPTED, Json(BulkOperationView::from(op))).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}
