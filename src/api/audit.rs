//! `GET /v1/companies/{company_id}/audit`: the company's audit trail as CSV or NDJSON,
//! streamed page by page (memory stays bounded however long the history): one row per
//! run, then one per history entry. Ids, codes and counts only.

use std::collections::HashMap;

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use uuid::Uuid;

use super::{AppState, auth::Caller, error::ApiError, views::ErrorBody};
use crate::ledger::audit::{self, AuditRange, AuditRow};

/// Rows read per page (and written per chunk of the body).
const PAGE: i64 = 500;

/// The columns of the CSV export, in order.
const CSV_COLUMNS: [&str; 18] = [
    "record",
    "at",
    "run_id",
    "company_id",
    "user_id",
    "action",
    "status",
    "actor",
    "approver_user_id",
    "event",
    "step",
    "error_code",
    "effective_at",
    "finished_at",
    "step_counts",
    "items_by_recipient",
    "detail",
    "batch_id",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

/// Where the stream is: the runs after a key, then the events after an id.
enum Cursor {
    Runs(Option<(DateTime<Utc>, Uuid)>),
    Events(i64),
    Done,
}

/// The company's runs and their history, as CSV or NDJSON.
#[utoipa::path(
    get,
    path = "/v1/companies/{company_id}/audit",
    tag = "policy",
    params(
        ("company_id" = i64, Path, minimum = 1),
        ("from" = Option<DateTime<Utc>>, Query, description = "Rows at or after (RFC 3339): runs created, history entries made"),
        ("to" = Option<DateTime<Utc>>, Query, description = "Rows before (RFC 3339)"),
        ("format" = Option<String>, Query, description = "`ndjson` (default) or `csv`"),
    ),
    responses(
        (status = 200, description = "One row per run (`record: run`: actor, approver, counts per step, items per recipient), then one per history entry (`record: event`)",
         content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, description = "A query parameter is invalid", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A company outside the token's scope", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn export(
    State(app): State<AppState>,
    caller: Caller,
    Path(company): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let company_id = company.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request("invalid_id", "company_id must be a positive whole number")
    })?;
    caller.check_company(company_id)?;
    if let Some(unknown) = query.keys().find(|k| !["from", "to", "format"].contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("unknown query parameter {unknown}"),
        ));
    }
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
        query
            .get(name)
            .map(|v| {
                DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{name} must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"),
                    )
                })
            })
            .transpose()
    };
    let (from, to) = (time("from")?, time("to")?);
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::bad_request("invalid_query", "from must be before to"));
    }
    let format = match query.get("format").map(String::as_str) {
        None | Some("ndjson") => Format::Ndjson,
        Some("csv") => Format::Csv,
        Some(_) => {
            return Err(ApiError::bad_request("invalid_query", "format must be csv or ndjson"));
        }
    };
    // Fails here, with a JSON error, while the database is unavailable; later pages that
    // fail end the stream early (the status line has gone out).
    let range = AuditRange { company_id, from, to };
    let first = audit::runs_page(&app.pool, range, None, PAGE).await?;
    tracing::info!(company_id, ?format, "audit export");

    let pool = app.pool.clone();
    let header_chunk = match format {
        Format::Csv => Some(Ok::<_, std::io::Error>(csv_chunk(&[], true))),
        Format::Ndjson => None,
    };
    let first_chunk = {
        let cursor = next_cursor(&first, Cursor::Runs(None));
        (encode(&first, format), cursor)
    };
    let rest = stream::unfold(Some(first_chunk), move |state| {
        let pool = pool.clone();
        async move {
            let (chunk, cursor) = state?;
            let next = match cursor {
                Cursor::Done => None,
                cursor => Some(cursor),
            };
            let following = match next {
                None => None,
                Some(cursor) => match fetch(&pool, range, cursor).await {
                    Ok(Some((rows, cursor))) => Some((encode(&rows, format), cursor)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(company_id = range.company_id, error = %e, "audit export ended early");
                        return Some((
                            Err(std::io::Error::other("audit export ended early")),
                            None,
                        ));
                    }
                },
            };
            Some((Ok(chunk), following))
        }
    });
    let body = Body::from_stream(stream::iter(header_chunk).chain(rest));
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Ndjson => "application/x-ndjson",
    };
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// Reads the page at `cursor`; `None` once both runs and events are through.
async fn fetch(
    pool: &sqlx::PgPool,
    range: AuditRange,
    cursor: Cursor,
) -> Result<Option<(Vec<AuditRow>, Cursor)>, sqlx::Error> {
    let mut cursor = cursor;
    loop {
        let rows = match cursor {
            Cursor::Done => return Ok(None),
            Cursor::Runs(after) => audit::runs_page(pool, range, after, PAGE).await?,
            Cursor::Events(after) => audit::events_page(pool, range, after, PAGE).await?,
        };
        let next = next_cursor(&rows, cursor);
        if rows.is_empty() {
            cursor = next;
            continue;
        }
        return Ok(Some((rows, next)));
    }
}

/// The position after `rows`, read at `cursor`: the next page of the same kind while a
/// page was full, else the start of the events, else the end.
fn next_cursor(rows: &[AuditRow], cursor: Cursor) -> Cursor {
    let full = rows.len() as i64 == PAGE;
    match cursor {
        Cursor::Runs(_) if full => {
            let last = rows.last().expect("a full page");
            Cursor::Runs(Some((last.at, last.run_id)))
        }
        Cursor::Runs(_) => Cursor::Events(0),
        Cursor::Events(_) if full => {
            Cursor::Events(rows.last().and_then(|r| r.event_id).expect("an event id"))
        }
        Cursor::Events(_) | Cursor::Done => Cursor::Done,
    }
}

fn encode(rows: &[AuditRow], format: Format) -> Bytes {
    match format {
        Format::Csv => csv_chunk(rows, false),
        Format::Ndjson => {
            let mut out = Vec::with_capacity(rows.len() * 256);
            for row in rows {
                serde_json::to_writer(&mut out, row).expect("a row serializes");
                out.push(b'\n');
            }
            Bytes::from(out)
        }
    }
}

fn csv_chunk(rows: &[AuditRow], header: bool) -> Bytes {
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 256 + 256));
    if header {
        writer.write_record(CSV_COLUMNS).expect("in memory");
    }
    let time = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)).unwrap_or_default()
    };
    let json =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    for row in rows {
        writer
            .write_record([
                row.record.to_string(),
                time(Some(row.at)),
                row.run_id.to_string(),
                row.company_id.to_string(),
                row.user_id.to_string(),
                row.action.to_string(),
                row.status.to_string(),
                row.actor.to_string(),
                row.approver_user_id.map(|id| id.to_string()).unwrap_or_default(),
                row.event.map(|kind| kind.to_string()).unwrap_or_default(),
                row.step.clone().unwrap_or_default(),
                row.error_code.clone().unwrap_or_default(),
                time(row.effective_at),
                time(row.finished_at),
                json(&row.step_counts),
                json(&row.items_by_recipient),
                json(&row.detail),
                row.batch_id.map(|id| id.to_string()).unwrap_or_default(),
            ])
            .expect("in memory");
    }
    Bytes::from(writer.into_inner().expect("in memory"))
}
