//! `/v1/companies/{company_id}/users/{user_id}/preview`: what the user owns (GET), and
//! for a transfer plan the exact count each target will get (POST, a dry run that
//! changes nothing).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde_json::Value;

use super::{
    AppState,
    auth::Caller,
    body::JsonBody,
    enqueue::{check_targets, named_targets},
    error::ApiError,
    views::ErrorBody,
};
use crate::{
    crm::{preview, users},
    domain::{
        FieldError,
        transfer::{PLAN_NOT_AN_OBJECT, PlanBody, RuleBody},
        wire,
    },
    ledger::runs,
};

fn ids(company_id: &str, user_id: &str) -> Result<(i64, i64), ApiError> {
    let parse = |raw: &str, name: &str| {
        raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_request("invalid_id", format!("{name} must be a positive whole number"))
        })
    };
    Ok((parse(company_id, "company_id")?, parse(user_id, "user_id")?))
}

async fn load_user(
    tx: &mut sqlx::PgConnection,
    company_id: i64,
    user_id: i64,
) -> Result<users::UserRecord, ApiError> {
    users::find(&mut *tx, company_id, user_id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            format!("user {user_id} not found in company {company_id}"),
        )
    })
}

/// What the user owns: items per type (open and all), syncs, apps, webhooks, dashboards,
/// reports, automations and rules naming the user, chats, playbooks, forms, private emails.
#[utoipa::path(
    get,
    path = "/v1/companies/{company_id}/users/{user_id}/preview",
    tag = "preview",
    params(("company_id" = i64, Path, minimum = 1), ("user_id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, description = "Counts of what the user owns", body = Object),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn show(
    State(app): State<AppState>,
    caller: Caller,
    Path((company_id, user_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (company_id, user_id) = ids(&company_id, &user_id)?;
    caller.check_company(company_id)?;
    let mut tx = app.pool.begin().await?;
    let user = load_user(&mut tx, company_id, user_id).await?;
    let mut out = preview::belongings(&mut tx, company_id, user_id, user.is_admin()).await?;
    out["user_id"] = user_id.into();
    out["company_id"] = company_id.into();
    out["is_admin"] = user.is_admin().into();
    out["status"] = user.status.as_str().into();
    Ok(Json(out))
}

/// The body of a dry run.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"transfer": {"deals": {"mode": "ratio",
    "targets": [{"user_id": 4, "weight": 2}, {"user_id": 5, "weight": 1}]}}}))]
pub struct DryRunBody {
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, RuleBody>, required = true)]
    pub transfer: Option<PlanBody>,
}

/// A dry run of a transfer plan: exactly how many items of each type each target gets and
/// how many stay. Nothing changes.
#[utoipa::path(
    post,
    path = "/v1/companies/{company_id}/users/{user_id}/preview",
    tag = "preview",
    params(("company_id" = i64, Path, minimum = 1), ("user_id" = i64, Path, minimum = 1)),
    request_body = DryRunBody,
    responses(
        (status = 200, description = "Per item type: mode, scope, in_scope, targets [{user_id, count}], stays, not_in_scope", body = Object),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn dry_run(
    State(app): State<AppState>,
    caller: Caller,
    Path((company_id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (company_id, user_id) = ids(&company_id, &user_id)?;
    caller.check_company(company_id)?;
    let body: DryRunBody = wire::from_json(&body, "must be an object like {\"transfer\": {...}}")
        .map_err(ApiError::invalid_request)?;
    let requested = body
        .transfer
        .ok_or_else(|| FieldError::new("transfer", PLAN_NOT_AN_OBJECT))
        .and_then(PlanBody::validate)
        .map_err(ApiError::invalid_request)?;
    let plan = requested.clone().resolve(None).map_err(ApiError::invalid_request)?;

    // Read-only: the transaction is rolled back when dropped.
    let mut tx = app.pool.begin().await?;
    load_user(&mut tx, company_id, user_id).await?;
    let named = named_targets(&requested);
    let ids: Vec<i64> = named.iter().map(|(id, _)| *id).collect();
    let found = runs::target_states(&mut *tx, company_id, user_id, &ids).await?;
    check_targets(&named, &found, company_id)?;
    let mut out = preview::dry_run(&mut tx, company_id, user_id, &plan).await?;
    out["user_id"] = user_id.into();
    out["company_id"] = company_id.into();
    Ok(Json(out))
}
