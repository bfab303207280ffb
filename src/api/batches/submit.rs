//! `POST /v1/offboarding-batches`: a file's rows, each judged as a single request, written
//! in chunks.

use std::collections::{HashMap, hash_map::Entry};

use axum::{
    Json,
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    api::{
        AppState,
        auth::Caller,
        batch_views::BatchView,
        enqueue::{EnqueueError, enqueue_checked_in, named_targets},
        error::ApiError,
        offboardings::idempotency_key,
        operators::operator,
        views::ErrorBody,
    },
    domain::{
        FieldError, OffboardingRequest,
        batch::{self, BatchFormat, BatchStatus, RowRefusal},
    },
    ledger::{
        batches::{self, NewBatch},
        idempotency::RequestHash,
        policies, runs,
    },
};

/// Largest batch body: 10,000 rows with inline plans fit well within it.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Rows written (or checked) per transaction.
pub const CHUNK_ROWS: usize = 250;

/// Submit up to 10,000 offboarding requests as JSON (`{"rows": [...]}`), NDJSON or CSV
/// (by `Content-Type`). Every row is checked as a single `POST /v1/offboardings` is; the
/// answer lists each refused row by number, code and field.
#[utoipa::path(
    post,
    path = "/v1/offboarding-batches",
    tag = "batches",
    request_body(content = crate::domain::batch::BatchRequest, description = "JSON `{\"rows\": [...], \"all_or_nothing\"?, \"actor_user_id\"?}`; or `application/x-ndjson` (one request a line) or `text/csv` (`company_id,user_id,action,effective_at,plan[,actor_user_id]`)",
                 content_type = "application/json"),
    params(
        ("all_or_nothing" = Option<bool>, Query, description = "Create nothing when any row is refused (for CSV and NDJSON; JSON may say it in the body)"),
        ("actor_user_id" = Option<i64>, Query, minimum = 1, description = "The actor of rows that name none"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key and body return the original batch"),
    ),
    responses(
        (status = 200, description = "An idempotent replay", body = BatchView),
        (status = 202, description = "Written: accepted rows are runs of the batch; refused rows listed", body = BatchView,
         headers(("Location" = String, description = "/v1/offboarding-batches/{id}"))),
        (status = 400, description = "Not JSON, or a bad query parameter or Idempotency-Key", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, description = "Body over 16 MiB", body = ErrorBody),
        (status = 415, description = "Not JSON, NDJSON or CSV", body = ErrorBody),
        (status = 422, description = "More than 10,000 rows (`too_many_rows`), a bad header or field (`invalid_request`), or all or nothing and a row refused (`rows_refused`, the rows in `details.refused`)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let format = BatchFormat::from_content_type(content_type).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the batch as application/json, application/x-ndjson or text/csv",
        )
    })?;
    let bytes = axum::body::to_bytes(body, MAX_BATCH_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BATCH_BYTES} bytes"),
        )
    })?;
    let options = BatchOptions::from_query(&query)?;
    let mut parsed = batch::parse(format, &bytes).map_err(|e| match e.field.as_str() {
        "body" => ApiError::bad_request("invalid_json", e.to_string()),
        "rows" if e.message.contains("at most") => {
            ApiError::field("too_many_rows", e).with_details(json!({"max_rows": batch::MAX_ROWS}))
        }
        _ => ApiError::invalid_request(e),
    })?;
    parsed.all_or_nothing |= options.all_or_nothing;
    let actor = parsed.actor_user_id.take().or(options.actor_user_id);

    let key = idempotency_key(&headers)?;
    let hash = key.map(|_| {
        // The actor as JSON, as it was hashed before it was typed: a key stored then still
        // matches its replay.
        let actor = actor.map(Value::from);
        let mut canonical =
            format!("{}|{}|{actor:?}|", format.as_str(), parsed.all_or_nothing).into_bytes();
        canonical.extend_from_slice(&bytes);
        RequestHash::of(app.idempotency_secret.expose_secret(), &canonical)
    });
    let submitted_by = operator(&caller);
    let new = NewBatch {
        id: Uuid::now_v7(),
        submitted_by,
        company_scope: caller.company_scope,
        format,
        all_or_nothing: parsed.all_or_nothing,
        rows_total: parsed.total() as i32,
        idempotency: key.zip(hash.as_ref().map(RequestHash::stored)),
    };
    if let Err((held, stored)) = batches::create(&app.pool, &new).await? {
        if !hash.zip(stored).is_some_and(|(h, s)| h.matches(&s)) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different batch",
            ));
        }
        let batch = batches::find(&app.pool, held, None)
            .await?
            .ok_or_else(|| ApiError::conflict("idempotency_conflict", "retry the request"))?;
        let mut view = BatchView::of(batch, caller.company_scope);
        view.replayed = Some(true);
        return Ok((StatusCode::OK, Json(view)).into_response());
    }
    let batch_id = new.id;

    // Every row into a request: the single request's parser, the token's company, the
    // policy's plan where a row asks for it; a user named twice is refused the second time.
    let mut refused = std::mem::take(&mut parsed.refused);
    let mut requests = Vec::with_capacity(parsed.rows.len());
    let mut policy_plans: HashMap<i64, Value> = HashMap::new();
    let mut seen = HashMap::new();
    for mut row in parsed.rows {
        let company_id = row.body.get("company_id").and_then(Value::as_i64);
        if let Some(actor) = &actor {
            row.body.entry("actor_user_id").or_insert_with(|| Value::from(*actor));
        }
        if row.policy_plan
            && let Some(company) = company_id.filter(|c| *c > 0)
        {
            if let Entry::Vacant(slot) = policy_plans.entry(company) {
                let policy = policies::find(&app.pool, company).await?.policy;
                slot.insert(policy.transfer.to_json());
            }
            row.body.insert("transfer".into(), policy_plans[&company].clone());
        }
        let refuse = |code: &str, err: FieldError| RowRefusal {
            company_id,
            ..RowRefusal::new(row.row, code, err)
        };
        let request = match OffboardingRequest::parse(&Value::Object(row.body.clone())) {
            Ok(request) => request,
            Err(e) => {
                refused.push(refuse("invalid_request", e));
                continue;
            }
        };
        if let Err(e) = caller.check_company(request.company_id.get()) {
            refused.push(refuse(e.code, FieldError::new("company_id", e.message)));
            continue;
        }
        let subject = (request.company_id.get(), request.user_id.get());
        if let Some(first) = seen.insert(subject, row.row) {
            seen.insert(subject, first);
            let message = format!("user {} is already in row {first} of this batch", subject.1);
            refused.push(refuse("duplicate_row", FieldError::new("user_id", message)));
            continue;
        }
        requests.push((row.row, request));
    }

    if parsed.all_or_nothing && refused.is_empty() {
        write_chunks(&app, batch_id, &requests, &mut refused, false).await?;
    }
    if parsed.all_or_nothing && !refused.is_empty() {
        refused.sort_by_key(|r| r.row);
        let list = serde_json::to_value(&refused).expect("refusals serialize");
        batches::finish(&app.pool, batch_id, BatchStatus::Refused, &list).await?;
        tracing::info!(%batch_id, refused = refused.len(), "batch refused (all or nothing)");
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rows_refused",
            format!(
                "{} of {} rows are refused; nothing was created",
                refused.len(),
                new.rows_total
            ),
        )
        .with_details(json!({"batch_id": batch_id, "refused": list})));
    }
    write_chunks(&app, batch_id, &requests, &mut refused, true).await?;
    refused.sort_by_key(|r| r.row);
    let list = serde_json::to_value(&refused).expect("refusals serialize");
    batches::finish(&app.pool, batch_id, BatchStatus::Written, &list).await?;
    tracing::info!(%batch_id, rows = new.rows_total, refused = refused.len(), "batch written");

    let batch = batches::find(&app.pool, batch_id, None).await?.expect("just written");
    let location =
        HeaderValue::from_str(&format!("/v1/offboarding-batches/{batch_id}")).expect("ascii");
    let mut view = BatchView::of(batch, caller.company_scope);
    view.replayed = Some(false);
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// The query parameters of a submission.
struct BatchOptions {
    all_or_nothing: bool,
    actor_user_id: Option<i64>,
}

impl BatchOptions {
    fn from_query(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let bad = |m: &str| ApiError::bad_request("invalid_query", m.to_string());
        if let Some(unknown) =
            query.keys().find(|k| !["all_or_nothing", "actor_user_id"].contains(&k.as_str()))
        {
            return Err(bad(&format!("unknown query parameter {unknown}")));
        }
        let all_or_nothing = match query.get("all_or_nothing").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(bad("all_or_nothing must be true or false")),
        };
        let actor_user_id = match query.get("actor_user_id") {
            None => None,
            Some(v) => Some(
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("actor_user_id must be a positive whole number"))?,
            ),
        };
        Ok(Self { all_or_nothing, actor_user_id })
    }
}

/// Takes each request through the single request's enqueue path, [`CHUNK_ROWS`] to a
/// transaction and a savepoint to a row: a refused row leaves the others of its chunk. With
/// `commit`, each chunk's runs are marked as the batch's and committed; without, every
/// chunk is rolled back (the all-or-nothing check). A failure of the database itself ends
/// the request (chunks committed before it stay, the batch stays `writing`).
async fn write_chunks(
    app: &AppState,
    batch_id: Uuid,
    requests: &[(usize, OffboardingRequest)],
    refused: &mut Vec<RowRefusal>,
    commit: bool,
) -> Result<(), ApiError> {
    for chunk in requests.chunks(CHUNK_ROWS) {
        let mut conn = app.pool.acquire().await?;
        let mut tx = runs::begin_enqueue(&mut conn).await?;
        let mut written = Vec::with_capacity(chunk.len());
        for (row, request) in chunk {
            let named = named_targets(&request.transfer);
            let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
            match enqueue_checked_in(&mut savepoint, app, request, &named, None, None).await {
                Ok((run_id, _)) => {
                    savepoint.commit().await?;
                    written.push(run_id);
                }
                Err(EnqueueError::Api(e)) if !e.status.is_server_error() => {
                    savepoint.rollback().await?;
                    refused.push(RowRefusal {
                        row: *row,
                        code: e.code.into(),
                        field: e.field,
                        message: e.message,
                        company_id: Some(request.company_id.get()),
                    });
                }
                Err(EnqueueError::Api(e)) => return Err(e),
                Err(EnqueueError::KeyRace) => {
                    return Err(ApiError::conflict("idempotency_conflict", "retry the request"));
                }
            }
        }
        if commit {
            batches::record_chunk(&mut tx, batch_id, &written).await?;
            tx.commit().await?;
            app.nudge.notify_one();
        } else {
            tx.rollback().await?;
        }
    }
    Ok(())
}
