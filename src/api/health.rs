//! `/healthz` (is PostgreSQL and Redis reachable) and `/metrics` (Prometheus text).

use std::fmt::Write;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    AppState,
    views::{ErrorBody, Health},
};
use crate::metrics::METRICS;

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
    let word = |ok: bool| if ok { "ok" } else { "down" };
    (
        status,
        Json(Health {
            status: word(postgres && redis).into(),
            postgres: word(postgres).into(),
            redis: word(redis).into(),
        }),
    )
        .into_response()
}

/// Prometheus text: gauges from the ledger (shared by every process) and this process'
/// counters. No token needed; no personal data in any label.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn metrics(State(app): State<AppState>) -> Result<Response, super::error::ApiError> {
    let mut out = String::with_capacity(4096);
    let runs: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM offboard.runs GROUP BY status")
            .fetch_all(&app.pool)
            .await?;
    out.push_str("# HELP offboard_runs Runs by status.\n# TYPE offboard_runs gauge\n");
    for status in ["queued", "running", "succeeded", "failed", "canceled"] {
        let n = runs.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "offboard_runs{{status=\"{status}\"}} {n}");
    }
    let steps = crate::ledger::steps::counts_by_status(&app.pool).await?;
    out.push_str("# HELP offboard_steps Steps by status.\n# TYPE offboard_steps gauge\n");
    for status in
        ["pending", "ready", "queued", "running", "succeeded", "skipped", "dead", "canceled"]
    {
        let n = steps.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "offboard_steps{{status=\"{status}\"}} {n}");
    }
    let dead = steps.iter().find(|(s, _)| s == "dead").map_or(0, |(_, n)| *n);
    out.push_str("# HELP offboard_dead_steps Steps out of attempts, waiting for an operator.\n# TYPE offboard_dead_steps gauge\n");
    let _ = writeln!(out, "offboard_dead_steps {dead}");
    let (due, scheduled, done): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'scheduled' AND due_at <= now()),
                count(*) FILTER (WHERE status = 'scheduled'),
                count(*) FILTER (WHERE status = 'done')
         FROM offboard.scheduled_purges",
    )
    .fetch_one(&app.pool)
    .await?;
    out.push_str(
        "# HELP offboard_purges Private-email purges by state.\n# TYPE offboard_purges gauge\n",
    );
    let _ = writeln!(out, "offboard_purges{{state=\"due\"}} {due}");
    let _ = writeln!(out, "offboard_purges{{state=\"scheduled\"}} {scheduled}");
    let _ = writeln!(out, "offboard_purges{{state=\"done\"}} {done}");
    out.push_str("# HELP offboard_queue_depth Tasks held in Redis by queue.\n# TYPE offboard_queue_depth gauge\n");
    if let Ok(depth) = app.queues.step_depth().await {
        let _ = writeln!(out, "offboard_queue_depth{{queue=\"steps\"}} {}", depth.total());
    }
    if let Ok(depth) = app.queues.purge_depth().await {
        let _ = writeln!(out, "offboard_queue_depth{{queue=\"purges\"}} {}", depth.total());
    }
    METRICS.render(&mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response())
}
