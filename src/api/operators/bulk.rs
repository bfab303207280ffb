//! Bulk retry and cancel by filter, with a dry run; the workers work through an operation in
//! chunks, its progress readable at `/v1/bulk-operations/{id}`.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, de::Error as _};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{FilterBody, operator, scope_filter};
use crate::{
    api::{AppState, auth::Caller, body::JsonBody, error::ApiError, views::ErrorBody},
    domain::{Actor, FieldError, wire},
    ledger::{
        bulk::{self, BulkKind, BulkOperation, BulkStatus},
        filter::RunFilter,
    },
};

/// The body of a bulk action.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"filter": {"company_id": 1, "status": "failed", "step": "uninstall_apps",
                                     "step_status": "dead"}, "dry_run": true}))]
pub struct BulkRequest {
    /// Which runs; every field optional, all must hold. `{}` is every run the action
    /// applies to (in the token's company).
    #[serde(default, deserialize_with = "some_filter")]
    #[schema(value_type = FilterBody, required = true)]
    pub filter: Option<FilterBody>,
    /// Only count the runs the action would touch; change nothing.
    #[serde(default, deserialize_with = "dry_run")]
    pub dry_run: Option<bool>,
}

fn some_filter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FilterBody>, D::Error> {
    wire::object(d).map(Some)
}

fn dry_run<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        _ => Err(D::Error::custom("must be a boolean")),
    }
}

/// The answer to a dry run: how many runs the action would touch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkDryRun {
    pub kind: BulkKind,
    pub dry_run: bool,
    /// Runs the action would touch now.
    pub matched: i64,
    /// The filter as understood (a scoped token's company filled in).
    #[schema(value_type = Object)]
    pub filter: Value,
}

/// A bulk operation and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkOperationView {
    pub id: Uuid,
    pub kind: BulkKind,
    pub status: BulkStatus,
    /// Who asked: `token:operator` or `token:company-<id>`.
    pub operator: Actor,
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Runs the filter matched when the operation was recorded (the dry run's count).
    pub matched: i64,
    /// Runs acted on so far.
    pub touched: i64,
    /// Chunks committed so far (each one transaction).
    pub chunks: i32,
    /// The last run acted on; the operation goes on after it.
    pub cursor: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<BulkOperation> for BulkOperationView {
    fn from(op: BulkOperation) -> Self {
        Self {
            id: op.id,
            kind: op.kind,
            status: op.status,
            operator: op.operator,
            filter: op.filter,
            matched: op.matched,
            touched: op.touched,
            chunks: op.chunks,
            cursor: op.cursor,
            created_at: op.created_at,
            updated_at: op.updated_at,
            finished_at: op.finished_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkOperationList {
    pub operations: Vec<BulkOperationView>,
}

/// Reads a bulk action's body: `{"filter": {...}, "dry_run": bool}`.
fn parse_bulk(body: &Value) -> Result<(RunFilter, bool), ApiError> {
    let body: BulkRequest =
        wire::from_json(body, "must be a JSON object").map_err(ApiError::invalid_request)?;
    let filter = body.filter.ok_or_else(|| {
        ApiError::invalid_request(FieldError::new(
            "filter",
            "is required ({} for every run the action applies to)",
        ))
    })?;
    let filter = filter.validate().map_err(|e| {
        ApiError::invalid_request(FieldError::new(format!("filter.{}", e.field), e.message))
    })?;
    Ok((filter, body.dry_run.unwrap_or(false)))
}

async fn bulk_action(
    app: AppState,
    caller: Caller,
    body: Value,
    kind: BulkKind,
) -> Result<Response, ApiError> {
    let (mut filter, dry_run) = parse_bulk(&body)?;
    scope_filter(&caller, &mut filter)?;
    if dry_run {
        let matched = bulk::count(&app.pool, kind, &filter, caller.company_scope).await?;
        let filter = serde_json::to_value(&filter).expect("a filter serializes");
        return Ok(Json(BulkDryRun { kind, dry_run: true, matched, filter }).into_response());
    }
    let op =
        bulk::create(&app.pool, kind, &filter, caller.company_scope, operator(&caller)).await?;
    tracing::info!(bulk_operation = %op.id, kind = kind.as_str(), matched = op.matched, "bulk operation recorded");
    let location = HeaderValue::from_str(&format!("/v1/bulk-operations/{}", op.id)).expect("ascii");
    let mut response = (StatusCode::ACCEPTED, Json(BulkOperationView::from(op))).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// Retry the dead steps of every run the filter matches (runs with a dead step). With
/// `dry_run`, only count them. Otherwise the operation is recorded and the workers work
/// through it in chunks; follow it at the `Location`.
#[utoipa::path(
    post,
    path = "/v1/offboardings/bulk-retry",
    tag = "operators",
    request_body = BulkRequest,
    responses(
        (status = 200, description = "Dry run: the count", body = BulkDryRun),
        (status = 202, description = "Recorded; the workers work through it", body = BulkOperationView,
         headers(("Location" = String, description = "/v1/bulk-operations/{id}")),
         links(("GetBulkOperation" = (operation_id = "bulk_operation", parameters(("id" = "$response.body#/id")))))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A filter field is invalid; `field` names it", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn bulk_retry(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    bulk_action(app, caller, body, BulkKind::Retry).await
}

/// Cancel every active run the filter matches. With `dry_run`, only count them.
#[utoipa::path(
    post,
    path = "/v1/offboardings/bulk-cancel",
    tag = "operators",
    request_body = BulkRequest,
    responses(
        (status = 200, description = "Dry run: the count", body = BulkDryRun),
        (status = 202, description = "Recorded; the workers work through it", body = BulkOperationView,
         headers(("Location" = String, description = "/v1/bulk-operations/{id}")),
         links(("GetBulkOperation" = (operation_id = "bulk_operation", parameters(("id" = "$response.body#/id")))))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A filter field is invalid; `field` names it", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn bulk_cancel(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    bulk_action(app, caller, body, BulkKind::Cancel).await
}

/// A bulk operation's progress.
#[utoipa::path(
    get,
    path = "/v1/bulk-operations/{id}",
    tag = "operators",
    params(("id" = Uuid, Path, description = "The operation id")),
    responses(
        (status = 200, body = BulkOperationView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn bulk_operation(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BulkOperationView>, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "the operation id is not a UUID"))?;
    bulk::find(&app.pool, id, caller.company_scope)
        .await?
        .map(|op| Json(op.into()))
        .ok_or_else(|| ApiError::not_found("bulk operation"))
}

/// The newest bulk operations (50).
#[utoipa::path(
    get,
    path = "/v1/bulk-operations",
    tag = "operators",
    responses(
        (status = 200, body = BulkOperationList),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn bulk_operations(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<BulkOperationList>, ApiError> {
    let operations = bulk::list(&app.pool, caller.company_scope, 50).await?;
    Ok(Json(BulkOperationList { operations: operations.into_iter().map(Into::into).collect() }))
}
