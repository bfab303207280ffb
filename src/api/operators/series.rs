//! The per-second series the dashboard draws as charts.

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    api::{AppState, auth::Caller, error::ApiError, views::ErrorBody},
    ledger::samples as sample_rows,
    samples,
};

/// One point of the charts: rates per second over the point's interval, gauges at its
/// end; all null where no worker wrote a sample in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPoint {
    pub at: DateTime<Utc>,
    pub steps_finished_per_s: Option<f64>,
    /// Attempts that failed (retried or dead), per second.
    pub failures_per_s: Option<f64>,
    /// Failed attempts given another attempt, per second.
    pub retries_per_s: Option<f64>,
    /// Tasks in Redis.
    pub queue_depth: Option<i64>,
    /// Steps queued or running.
    pub in_flight: Option<i64>,
    /// 95th percentile of attempt durations in the interval (upper bound of its bucket).
    pub p95_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub window_seconds: u64,
    pub step_seconds: u64,
    pub to: DateTime<Utc>,
    pub points: Vec<SeriesPoint>,
    /// p95 of attempt durations over the whole window.
    pub p95_ms: Option<u64>,
}

/// Rates over the last hour (or `window` seconds) in points of `step` seconds: steps
/// finished, failures and retries per second, queue depth, steps in flight, p95 attempt
/// duration. From the samples the workers write each second; service-wide, so an
/// unscoped token's only.
#[utoipa::path(
    get,
    path = "/v1/stats/series",
    tag = "operators",
    params(
        ("window" = Option<u64>, Query, minimum = 10, maximum = 3600, description = "Seconds back from now; default 3600"),
        ("step" = Option<u64>, Query, minimum = 1, maximum = 600, description = "Seconds per point; default window/120"),
    ),
    responses(
        (status = 200, body = Series),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A company-scoped token (the series are service-wide)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn series(
    State(app): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Series>, ApiError> {
    if caller.company_scope.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "unscoped_token_required",
            "the series are service-wide; a company-scoped token cannot read them",
        ));
    }
    let number = |name: &str, min: u64, max: u64| -> Result<Option<u64>, ApiError> {
        query
            .get(name)
            .map(|v| {
                v.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{name} must be a whole number from {min} to {max}"),
                    )
                })
            })
            .transpose()
    };
    let window = number("window", 10, 3600)?.unwrap_or(3600);
    let step = number("step", 1, 600)?.unwrap_or((window / 120).max(1)).min(window);
    let (now, rows) = sample_rows::since(&app.pool, Duration::from_secs(window)).await?;
    Ok(Json(build_series(now, window, step, &rows)))
}

/// Cuts samples into points of `step` seconds ending at `now`.
fn build_series(
    now: DateTime<Utc>,
    window: u64,
    step: u64,
    rows: &[sample_rows::Sample],
) -> Series {
    let points_n = window.div_ceil(step) as usize;
    let end = now.timestamp();
    let start = end - (points_n as i64) * step as i64;
    let width = samples::DURATION_BOUNDS_MS.len() + 1;
    #[derive(Default, Clone)]
    struct Acc {
        samples: u64,
        succeeded: i64,
        failed: i64,
        retried: i64,
        buckets: Vec<i64>,
        depth: Option<i64>,
        in_flight: Option<i64>,
    }
    let mut acc = vec![Acc { buckets: vec![0; width], ..Default::default() }; points_n];
    let mut all = vec![0i64; width];
    for row in rows {
        let offset = row.at.timestamp() - start;
        if offset < 0 {
            continue;
        }
        let i = ((offset as u64) / step) as usize;
        let Some(a) = acc.get_mut(i.min(points_n - 1)) else { continue };
        a.samples += 1;
        a.succeeded += row.steps_succeeded;
        a.failed += row.steps_failed;
        a.retried += row.steps_retried;
        for (j, n) in row.duration_buckets.iter().enumerate().take(width) {
            a.buckets[j] += n;
            all[j] += n;
        }
        a.depth = row.queue_depth.or(a.depth);
        a.in_flight = Some(row.in_flight);
    }
    let per_s = |n: i64| n as f64 / step as f64;
    let points = acc
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let at =
                DateTime::from_timestamp(start + ((i as i64 + 1) * step as i64), 0).unwrap_or(now);
            let seen = a.samples > 0;
            SeriesPoint {
                at,
                steps_finished_per_s: seen.then(|| per_s(a.succeeded)),
                failures_per_s: seen.then(|| per_s(a.failed)),
                retries_per_s: seen.then(|| per_s(a.retried)),
                queue_depth: a.depth,
                in_flight: a.in_flight,
                p95_ms: samples::p95_ms(&a.buckets),
            }
        })
        .collect();
    Series {
        window_seconds: window,
        step_seconds: step,
        to: now,
        points,
        p95_ms: samples::p95_ms(&all),
    }
}
