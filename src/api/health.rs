//! `/healthz` (is PostgreSQL and Redis reachable) and `/metrics` (OpenMetrics text).

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::auth::Caller;
use super::{
    AppState,
    views::{ErrorBody, Health},
};
use crate::metrics;

/// Whether PostgreSQL and Redis answer. No token needed.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, body = Health), (status = 503, description = "PostgreSQL or Redis is down", body = Health))
)]
pub async fn healthz(State(app): State<AppState>) -> Response {
    let postgres = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&app.pool).await.is_ok();
    let redis = app.queues.ping().await.is_ok();
    let status = if postgres && redis { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        Json(Health {
            status: (postgres && redis).into(),
            postgres: postgres.into(),
            redis: redis.into(),
        }),
    )
        .into_response()
}

/// OpenMetrics text: gauges from the ledger (shared by every process; a snapshot at most
/// `OFFBOARD_STATS_MAX_AGE` old) and this process' counters. Every tenant's totals are in
/// it, so it takes an unscoped token: a missing token is 401, a company-scoped one 403.
/// No personal data in any label.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "OpenMetrics text 1.0.0", content_type = "application/openmetrics-text", body = String),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn metrics(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Response, super::error::ApiError> {
    if caller.company_scope.is_some() {
        return Err(super::error::ApiError::forbidden(
            "metrics count every company: they need an unscoped token",
        ));
    }
    let counts = app.ledger_snapshot.get(&app.pool, &app.queues).await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(&counts)).into_response())
}
