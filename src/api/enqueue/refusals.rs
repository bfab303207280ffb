//! The rules' verdict ([`RequestVerdict`]) as the API's errors: each refusal code of
//! [`crate::ledger::runs`]'s rules mapped to its stable code, status and message. No rule
//! is decided here.

use axum::http::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::{
    api::error::ApiError,
    domain::{FieldError, OffboardingRequest, TransferPlan, UserStatus, transfer::Recipient},
    ledger::{
        idempotency::RequestHash,
        runs::{RequestVerdict, TargetState},
    },
};

/// The error of the first rule about the user that refuses the request; `Ok(Some(run))`
/// when the request repeats one under its idempotency key, `Ok(None)` when none refuses.
pub(super) fn user_refusal(
    verdict: &RequestVerdict,
    request: &OffboardingRequest,
    hash: Option<&RequestHash>,
) -> Result<Option<Uuid>, ApiError> {
    let Some(refusal) = verdict.refusal.as_deref() else { return Ok(None) };
    let (company_id, user_id, action) =
        (request.company_id.get(), request.user_id.get(), request.action);
    let status = verdict.user_status.map_or("not found", UserStatus::as_str);
    Err(match refusal {
        "replay" => {
            let run_id = verdict.key_run_id.expect("a replay has its run");
            let stored = verdict.key_hash.as_deref().unwrap_or_default();
            return match hash {
                Some(hash) if !hash.matches(stored) => Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request",
                )),
                _ => Ok(Some(run_id)),
            };
        }
        "self_offboarding" => ApiError::field(
            "self_offboarding",
            FieldError::new("actor_user_id", "a user cannot offboard themself"),
        ),
        "actor_not_permitted" => ApiError::new(
            StatusCode::FORBIDDEN,
            "actor_not_permitted",
            "actor_user_id must be an active user of the company with account-settings access",
        ),
        "user_not_found" => ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            format!("user {user_id} not found in company {company_id}"),
        ),
        "user_deleted" => ApiError::conflict(
            "user_deleted",
            format!("user {user_id} is deleted; no further action is possible"),
        ),
        "user_not_in_status" if action.required_status() == UserStatus::Active => ApiError::conflict(
            "user_not_active",
            format!("{action} needs an active user; user {user_id} is {status}"),
        ),
        "user_not_in_status" => ApiError::conflict(
            "user_not_deactivated",
            format!("{action} needs a deactivated user; user {user_id} is {status}"),
        ),
        "active_run_exists" => active_run_exists(user_id, verdict.active_run),
        "user_is_transfer_target" => ApiError::conflict(
            "user_is_transfer_target",
            format!(
                "user {user_id} receives items from an active offboarding run; it must finish or be canceled first"
            ),
        )
        .with_details(json!({"run_id": verdict.transfer_target_of})),
        other => ApiError::internal("an enqueue rule this API does not know refused", other),
    })
}

/// The error of the first named target the verdict found a problem with.
pub(super) fn target_refusal(
    verdict: &RequestVerdict,
    named: &[(i64, String)],
    company_id: i64,
) -> Result<(), ApiError> {
    check_targets(named, verdict.bad_target().as_slice(), company_id)
}

pub(super) fn active_run_exists(user_id: i64, run_id: Option<Uuid>) -> ApiError {
    let err = ApiError::conflict(
        "active_run_exists",
        format!("user {user_id} already has an active offboarding run"),
    );
    match run_id {
        Some(id) => err.with_details(json!({"run_id": id})),
        None => err,
    }
}

/// The users a requested plan names, each with the field that names it first (the
/// replacement is not a user yet and is not among them).
pub(in crate::api) fn named_targets(requested: &TransferPlan<Recipient>) -> Vec<(i64, String)> {
    requested
        .targets_with_fields()
        .into_iter()
        .filter_map(|(recipient, field)| match recipient {
            Recipient::User(id) => Some((id.get(), field)),
            Recipient::Replacement => None,
        })
        .collect()
}

/// The error of the first of `judged` (targets as [`crate::ledger::runs::target_states`]
/// judged them, `named` in the same order) that has a problem. The error names the field,
/// e.g. `transfer.deals.targets[1].user_id: user 17 is deactivated`.
pub(in crate::api) fn check_targets(
    named: &[(i64, String)],
    judged: &[TargetState],
    company_id: i64,
) -> Result<(), ApiError> {
    let Some(bad) = judged.iter().find(|t| t.problem.is_some()) else { return Ok(()) };
    let id = bad.id;
    let message = match bad.problem.as_deref() {
        Some("is_user") => format!("user {id} is the user being offboarded"),
        Some("not_in_company") => format!("user {id} is not a user of company {company_id}"),
        Some("inactive") => {
            format!("user {id} is {}", bad.status.map_or("inactive", UserStatus::as_str))
        }
        Some("leaving") => format!("user {id} is being offboarded"),
        other => {
            return Err(ApiError::internal(
                "a target rule this API does not know refused",
                other.unwrap_or_default(),
            ));
        }
    };
    let field = usize::try_from(bad.ord - 1)
        .ok()
        .and_then(|i| named.get(i))
        .map_or_else(|| "transfer".to_string(), |(_, field)| format!("{field}.user_id"));
    Err(ApiError::field("invalid_target", FieldError::new(field, message)))
}
