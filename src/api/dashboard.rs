//! The operators' dashboard: a static page at `/` (HTML, CSS and vanilla JS embedded in the
//! binary, no build step) that calls the same `/v1` API with the operator's token, and
//! `GET /v1/stats`, the numbers its header shows.
//!
//! The page itself needs no token: it holds no data. Everything it shows comes from
//! authenticated API calls, so a company-scoped token sees its company only here too.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use serde_json::{Map, Value, json};
use sqlx::PgExecutor;
use tokio::sync::Mutex;

use super::{AppState, auth::Caller, error::ApiError};
use crate::domain::{BreakerState, RunStatus, StepStatus};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
/// Bulk actions, the run's graph and the charts (kept apart from app.js).
const OPERATORS_JS: &str = include_str!("dashboard/operators.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
/// The batch views (kept apart from app.js).
const BATCHES_JS: &str = include_str!("dashboard/batches.js");

/// Only this origin's own script and style run; the page calls only this origin. A bearer
/// token sits in localStorage, so nothing foreign may run beside it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Throughput is counted over this window.
const THROUGHPUT_WINDOW_SECONDS: i64 = 60;

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn operators_script() -> Response {
    asset("text/javascript; charset=utf-8", OPERATORS_JS)
}

pub async fn batches_script() -> Response {
    asset("text/javascript; charset=utf-8", BATCHES_JS)
}

pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `no-cache`: the assets are part of the binary, so an upgraded server serves new ones
/// at once (browsers revalidate instead of keeping a stale script).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY")),
    ];
    (headers, body).into_response()
}

/// `GET /v1/stats[?company_id=N]`: runs and steps by status, steps in flight, throughput
/// (steps succeeded in the last minute), private-email purges, and — for an unscoped
/// token only, since Redis and destinations are shared by every company — the Redis queue
/// depth and the outside destinations whose breaker is open.
/// The numbers the dashboard's header shows: runs and steps by status, steps in flight,
/// throughput, due purges, and (for unscoped tokens) Redis queue depth.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "operators",
    params(("company_id" = Option<i64>, Query, minimum = 1)),
    responses(
        (status = 200, body = Object),
        (status = 400, body = super::views::ErrorBody),
        (status = 401, body = super::views::ErrorBody),
        (status = 404, body = super::views::ErrorBody),
        (status = 503, body = super::views::ErrorBody),
    )
)]
pub async fn stats(
    State(app): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let requested = match query.get("company_id") {
        None => None,
        Some(raw) => Some(raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_request("invalid_query", "company_id must be a positive whole number")
        })?),
    };
    let company_id = match (caller.company_scope, requested) {
        (Some(scope), Some(asked)) if asked != scope => return Err(ApiError::not_found("company")),
        (Some(scope), _) => Some(scope),
        (None, asked) => asked,
    };

    let scoped = caller.company_scope.is_some();
    let mut cached = app.stats_cache.entries.lock().await;
    if let Some((at, value)) = cached.get(&(company_id, scoped))
        && at.elapsed() < app.stats_cache.max_age
    {
        return Ok(Json(value.clone()));
    }
    let value = read_stats(&app, company_id, scoped).await?;
    cached.insert((company_id, scoped), (Instant::now(), value.clone()));
    Ok(Json(value))
}

/// The company filter of a `/v1/stats` request, and whether its caller is scoped.
type StatsKey = (Option<i64>, bool);

/// Recent `/v1/stats` answers: the counts run at most once per `max_age` for each
/// (company filter, scoped caller); concurrent requests wait for one read.
#[derive(Debug)]
pub struct StatsCache {
    max_age: Duration,
    entries: Mutex<HashMap<StatsKey, (Instant, Value)>>,
}

impl StatsCache {
    pub fn new(max_age: Duration) -> Self {
        Self { max_age, entries: Mutex::new(HashMap::new()) }
    }
}

async fn read_stats(
    app: &AppState,
    company_id: Option<i64>,
    scoped: bool,
) -> Result<Value, ApiError> {
    let runs = runs_by_status(&app.pool, company_id).await?;
    let steps = steps_by_status(&app.pool, company_id).await?;
    let purges = purges(&app.pool, company_id).await?;

    fn count_of<S: PartialEq>(rows: &[(S, i64, i64)], status: S) -> i64 {
        rows.iter().find(|(s, _, _)| *s == status).map_or(0, |(_, n, _)| *n)
    }
    fn by_status<S: Copy + PartialEq + std::fmt::Display>(
        statuses: &[S],
        rows: &[(S, i64, i64)],
    ) -> Map<String, Value> {
        statuses.iter().map(|&s| (s.to_string(), json!(count_of(rows, s)))).collect()
    }
    let succeeded_recently = steps
        .iter()
        .find(|(s, _, _)| *s == StepStatus::Succeeded)
        .map_or(0, |(_, _, recent)| *recent);
    let in_flight = count_of(&steps, StepStatus::Queued) + count_of(&steps, StepStatus::Running);
    let queue_depth = if scoped { Value::Null } else { queue_depth(app).await };
    // Breakers of destination hosts that are not closed (open, or half-open awaiting a
    // probe); hosts are shared by every company, so for unscoped tokens only.
    let open_breakers = if scoped {
        Value::Null
    } else {
        let breakers = crate::ledger::calls::breakers(&app.pool).await?;
        json!(breakers.into_iter().filter(|b| b.state != BreakerState::Closed).collect::<Vec<_>>())
    };

    Ok(json!({
        "company_id": company_id,
        "at": Utc::now(),
        // Every status has its count, from the domain's lists, present in the ledger or not.
        "runs": by_status(&RunStatus::ALL, &runs),
        "steps": by_status(&StepStatus::ALL, &steps),
        "in_flight": in_flight,
        "throughput": {
            "window_seconds": THROUGHPUT_WINDOW_SECONDS,
            "steps_succeeded": succeeded_recently,
        },
        "purges": {"due": purges.0, "scheduled": purges.1, "done": purges.2},
        "queue_depth": queue_depth,
        "open_breakers": open_breakers,
    }))
}

/// Tasks Redis holds, or null while Redis does not answer (the page says so; `/healthz`
/// tells why).
async fn queue_depth(app: &AppState) -> Value {
    match (app.queues.step_depth().await, app.queues.purge_depth().await) {
        (Ok(steps), Ok(purges)) => json!({"steps": steps, "purges": purges}),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "queue depth unavailable");
            Value::Null
        }
    }
}

/// (status, runs, 0) per run status present.
async fn runs_by_status<'e>(
    db: impl PgExecutor<'e>,
    company_id: Option<i64>,
) -> Result<Vec<(RunStatus, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, count(*), 0::bigint FROM offboard.runs
         WHERE ($1::bigint IS NULL OR company_id = $1)
         GROUP BY status",
    )
    .bind(company_id)
    .fetch_all(db)
    .await
}

/// (status, steps, of which finished within the throughput window) per step status present.
/// For one company, the finished steps are read from `steps_company_finished` alone, and
/// the unfinished ones (which that index leaves out: they were most of its writes) through
/// the company's active runs, where they all are — a run ends only when its steps have.
async fn steps_by_status<'e>(
    db: impl PgExecutor<'e>,
    company_id: Option<i64>,
) -> Result<Vec<(StepStatus, i64, i64)>, sqlx::Error> {
    let window = THROUGHPUT_WINDOW_SECONDS as f64;
    let Some(company_id) = company_id else {
        return sqlx::query_as(
            "SELECT status, count(*),
                    count(*) FILTER (WHERE finished_at > now() - make_interval(secs => $1))
             FROM offboard.steps
             GROUP BY status",
        )
        .bind(window)
        .fetch_all(db)
        .await;
    };
    sqlx::query_as(concat!(
        "SELECT status, count(*),
                count(*) FILTER (WHERE finished_at > now() - make_interval(secs => $2))
         FROM (SELECT s.status, s.finished_at FROM offboard.steps s
               WHERE s.company_id = $1 AND s.finished_at IS NOT NULL
               UNION ALL
               SELECT s.status, NULL FROM offboard.runs r JOIN offboard.steps s ON s.run_id = r.id
               WHERE r.company_id = $1 AND r.status IN ",
        crate::active_run_statuses_sql!(),
        " AND s.finished_at IS NULL) steps
         GROUP BY status"
    ))
    .bind(company_id)
    .bind(window)
    .fetch_all(db)
    .await
}

/// Private-email purges: (due and not yet fired, scheduled, done).
async fn purges<'e>(
    db: impl PgExecutor<'e>,
    company_id: Option<i64>,
) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'scheduled' AND due_at <= now()),
                count(*) FILTER (WHERE status = 'scheduled'),
                count(*) FILTER (WHERE status = 'done')
         FROM offboard.scheduled_purges
         WHERE ($1::bigint IS NULL OR company_id = $1)",
    )
    .bind(company_id)
    .fetch_one(db)
    .await
}
