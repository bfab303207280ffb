//! A batch of offboarding requests from a file: JSON (`{"rows": [...]}`), NDJSON (one row
//! a line) or CSV (`company_id,user_id,action,effective_at,plan`). All three become the
//! same rows — each one the body a single `POST /v1/offboardings` takes — so that every row
//! is then checked by the one request parser and the one enqueue path, with the same
//! codes and fields. A row that cannot become such a body (a CSV line of the wrong width,
//! an NDJSON line that is not JSON, a plan that is neither `policy` nor JSON) is refused
//! here, by its row number.

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{FieldError, text_enum::text_enum, wire};

/// The most rows one batch may hold.
pub const MAX_ROWS: usize = 10_000;

/// The CSV columns a batch file may have (`company_id`, `user_id` and `action` must be there).
pub const CSV_COLUMNS: [&str; 6] =
    ["company_id", "user_id", "action", "effective_at", "plan", "actor_user_id"];

/// The plan value that stands for the company's offboarding policy's default plan.
pub const POLICY_PLAN: &str = "policy";

text_enum! {
    /// The file a batch came as (`offboard.offboarding_batches.format`).
    pub enum BatchFormat("batch format") {
        Json = "json",
        Ndjson = "ndjson",
        Csv = "csv",
    }
}

text_enum! {
    /// Where a batch is (`offboard.offboarding_batches.status`): its rows being written as
    /// runs, all written, or refused as a whole (`all_or_nothing` with a refused row).
    pub enum BatchStatus("batch status") {
        Writing = "writing",
        Written = "written",
        Refused = "refused",
    }
}

impl BatchFormat {
    /// The format a `Content-Type` names (parameters such as `charset` ignored).
    pub fn from_content_type(raw: &str) -> Option<Self> {
        match raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "application/json" => Some(Self::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(Self::Ndjson)
            }
            "text/csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// One row, as the body of a single request (without the batch's defaults yet).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    /// 1-based: the n-th row of `rows`, the n-th non-empty NDJSON line, the n-th CSV
    /// record after the header.
    pub row: usize,
    pub body: Map<String, Value>,
    /// The row asks for the company's policy plan (`"plan": "policy"`).
    pub policy_plan: bool,
}

/// Why a row was refused: the code and field a single request would get.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowRefusal {
    pub row: usize,
    pub code: String,
    pub field: Option<String>,
    pub message: String,
    /// The row's company, when it could be read (a scoped token sees its own rows only).
    pub company_id: Option<i64>,
}

impl RowRefusal {
    pub fn new(row: usize, code: &str, err: FieldError) -> Self {
        Self {
            row,
            code: code.into(),
            message: err.to_string(),
            field: Some(err.field),
            company_id: None,
        }
    }
}

/// A batch as read: its rows (and those refused already), and the options a JSON body
/// gives.
#[derive(Debug, Default)]
pub struct ParsedBatch {
    pub rows: Vec<BatchRow>,
    pub refused: Vec<RowRefusal>,
    pub all_or_nothing: bool,
    /// The actor of rows that name none (`actor_user_id` of a JSON body).
    pub actor_user_id: Option<i64>,
}

impl ParsedBatch {
    pub fn total(&self) -> usize {
        self.rows.len() + self.refused.len()
    }
}

/// Reads a batch. A whole-batch problem (not JSON, no `rows`, a CSV header without the
/// needed columns, more than [`MAX_ROWS`] rows) is an error naming the field; a problem of
/// one row refuses only that row.
pub fn parse(format: BatchFormat, bytes: &[u8]) -> Result<ParsedBatch, FieldError> {
    let parsed = match format {
        BatchFormat::Json => parse_json(bytes)?,
        BatchFormat::Ndjson => parse_ndjson(bytes)?,
        BatchFormat::Csv => parse_csv(bytes)?,
    };
    if parsed.total() > MAX_ROWS {
        return Err(FieldError::new(
            "rows",
            format!("a batch holds at most {MAX_ROWS} rows; this one has {}", parsed.total()),
        ));
    }
    if parsed.total() == 0 {
        return Err(FieldError::new("rows", "the batch has no rows"));
    }
    Ok(parsed)
}

/// The JSON form of a batch submission (NDJSON and CSV send the rows as their lines).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"rows": [
    {"company_id": 1, "user_id": 17, "action": "deactivate", "plan": "policy"},
    {"company_id": 1, "user_id": 18, "action": "deactivate", "effective_at": "2027-01-31T17:00:00Z",
     "transfer": {"default": {"mode": "single", "targets": [{"user_id": 12}]}}}],
    "actor_user_id": 1}))]
pub struct BatchRequest {
    /// Up to 10,000 requests, each the body of `POST /v1/offboardings`; `plan` may stand for
    /// `transfer`: `"policy"` (the company's policy plan) or a plan object. Each row is
    /// parsed as a single request is, and refused alone.
    #[serde(deserialize_with = "rows")]
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
    /// Create nothing when any row is refused.
    #[serde(default, deserialize_with = "wire::optional_flag")]
    pub all_or_nothing: Option<bool>,
    /// The actor of rows that name none: a positive whole number, checked here for the
    /// whole batch (a bad one refuses the batch, not each row); each row then checks the
    /// user, as its own.
    #[serde(default, deserialize_with = "wire::some_positive_id")]
    #[schema(minimum = 1)]
    pub actor_user_id: Option<i64>,
}

fn rows<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    match Value::deserialize(d)? {
        Value::Array(rows) => Ok(rows),
        _ => Err(D::Error::custom("must be an array of requests")),
    }
}

fn parse_json(bytes: &[u8]) -> Result<ParsedBatch, FieldError> {
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|e| FieldError::new("body", format!("is not valid JSON: {e}")))?;
    let request: BatchRequest = wire::from_json(&body, "must be a JSON object")?;
    let mut parsed = ParsedBatch {
        all_or_nothing: request.all_or_nothing.unwrap_or(false),
        actor_user_id: request.actor_user_id,
        ..ParsedBatch::default()
    };
    if request.rows.len() > MAX_ROWS {
        return Err(too_many(request.rows.len()));
    }
    for (i, row) in request.rows.into_iter().enumerate() {
        push_json_row(&mut parsed, i + 1, row);
    }
    Ok(parsed)
}

fn parse_ndjson(bytes: &[u8]) -> Result<ParsedBatch, FieldError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| FieldError::new("body", "is not UTF-8 text"))?;
    let mut parsed = ParsedBatch::default();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        if i >= MAX_ROWS {
            return Err(too_many(text.lines().filter(|l| !l.trim().is_empty()).count()));
        }
        match serde_json::from_str::<Value>(line) {
            Ok(row) => push_json_row(&mut parsed, i + 1, row),
            Err(e) => parsed.refused.push(RowRefusal::new(
                i + 1,
                "invalid_json",
                FieldError::new("row", format!("is not valid JSON: {e}")),
            )),
        }
    }
    Ok(parsed)
}

fn too_many(rows: usize) -> FieldError {
    FieldError::new("rows", format!("a batch holds at most {MAX_ROWS} rows; this one has {rows}"))
}

/// A JSON row: a single request's body, where `plan` may stand for `transfer` (`"policy"`
/// or a plan object), as in the CSV.
fn push_json_row(parsed: &mut ParsedBatch, row: usize, value: Value) {
    let Value::Object(mut body) = value else {
        parsed.refused.push(RowRefusal::new(
            row,
            "invalid_request",
            FieldError::new("body", "must be a JSON object"),
        ));
        return;
    };
    let plan = body.remove("plan");
    let policy_plan = match plan {
        None | Some(Value::Null) => false,
        Some(_) if body.contains_key("transfer") => {
            let err = FieldError::new("plan", "give either plan or transfer, not both");
            parsed.refused.push(refusal_of(row, &body, "invalid_request", err));
            return;
        }
        Some(Value::String(s)) if s == POLICY_PLAN => true,
        Some(Value::Object(p)) => {
            body.insert("transfer".into(), Value::Object(p));
            false
        }
        Some(_) => {
            let err = FieldError::new("plan", "must be \"policy\" or a transfer plan object");
            parsed.refused.push(refusal_of(row, &body, "invalid_request", err));
            return;
        }
    };
    parsed.rows.push(BatchRow { row, body, policy_plan });
}

fn refusal_of(row: usize, body: &Map<String, Value>, code: &str, err: FieldError) -> RowRefusal {
    RowRefusal {
        company_id: body.get("company_id").and_then(Value::as_i64),
        ..RowRefusal::new(row, code, err)
    }
}

fn parse_csv(bytes: &[u8]) -> Result<ParsedBatch, FieldError> {
    let mut reader =
        csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| FieldError::new("header", format!("is not a CSV header: {e}")))?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if let Some(unknown) = header.iter().find(|h| !CSV_COLUMNS.contains(&h.as_str())) {
        return Err(FieldError::new(
            "header",
            format!("unknown column {unknown:?}; the columns are {}", CSV_COLUMNS.join(",")),
        ));
    }
    for needed in ["company_id", "user_id", "action"] {
        if !header.iter().any(|h| h == needed) {
            return Err(FieldError::new("header", format!("needs a {needed} column")));
        }
    }
    let mut parsed = ParsedBatch::default();
    for (i, record) in reader.records().enumerate() {
        let row = i + 1;
        if row > MAX_ROWS {
            return Err(too_many(row + reader.records().count()));
        }
        let record = match record {
            Ok(r) if r.len() == header.len() => r,
            Ok(r) => {
                let err = FieldError::new(
                    "row",
                    format!("has {} fields; the header has {}", r.len(), header.len()),
                );
                parsed.refused.push(RowRefusal::new(row, "invalid_csv", err));
                continue;
            }
            Err(e) => {
                let err = FieldError::new("row", format!("is not valid CSV: {e}"));
                parsed.refused.push(RowRefusal::new(row, "invalid_csv", err));
                continue;
            }
        };
        let mut body = Map::new();
        let mut plan = None;
        for (column, value) in header.iter().zip(record.iter()) {
            if value.is_empty() {
                continue;
            }
            match column.as_str() {
                "plan" => plan = Some(value.to_string()),
                "action" | "effective_at" => {
                    body.insert(column.clone(), Value::String(value.into()));
                }
                // Ids as numbers when they are whole numbers; otherwise left as text for the
                // request parser to refuse with its own message.
                _ => {
                    let id = value.parse::<i64>().map(Value::from);
                    body.insert(column.clone(), id.unwrap_or_else(|_| Value::String(value.into())));
                }
            }
        }
        let plan = match plan {
            None => None,
            Some(p) if p == POLICY_PLAN => Some(Value::String(p)),
            Some(p) => match serde_json::from_str::<Value>(&p) {
                Ok(v @ Value::Object(_)) => Some(v),
                _ => {
                    let err = FieldError::new(
                        "plan",
                        "must be \"policy\" or a transfer plan as JSON (quoted CSV field)",
                    );
                    parsed.refused.push(refusal_of(row, &body, "invalid_request", err));
                    continue;
                }
            },
        };
        if let Some(plan) = plan {
            body.insert("plan".into(), plan);
        }
        push_json_row(&mut parsed, row, Value::Object(body));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
