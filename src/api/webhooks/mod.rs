//! `/v1/webhook-endpoints` and `/v1/webhook-deliveries`: a company's endpoints (the secret
//! shown once, at creation and rotation), its deliveries, and replays. A company-scoped
//! token sees and touches only its company's; another company's are not found.

mod bodies;
mod deliveries;
mod endpoints;

use std::collections::HashMap;

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub use self::{
    bodies::{CreateEndpoint, UpdateEndpoint},
    deliveries::{
        __path_list_deliveries, __path_replay_delivery, list_deliveries, replay_delivery,
    },
    endpoints::{
        __path_create_endpoint, __path_delete_endpoint, __path_get_endpoint, __path_list_endpoints,
        __path_replay_failed, __path_rotate_secret, __path_update_endpoint, create_endpoint,
        delete_endpoint, get_endpoint, list_endpoints, replay_failed, rotate_secret,
        update_endpoint,
    },
};
use super::{auth::Caller, error::ApiError};
use crate::ledger::webhooks::{DeliveryRow, EndpointRow, ReplayRefusal};

/// An endpoint with its secret: only in the answers to create and rotate-secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: EndpointRow,
    /// `whsec_…`: the key deliveries are signed with. Shown once.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryRow>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub endpoint_id: Uuid,
    /// New deliveries made of failed ones.
    pub replayed: i64,
}

fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request("invalid_id", format!("the {what} id is not a UUID")))
}

fn replay_refused(refusal: ReplayRefusal) -> ApiError {
    match refusal {
        ReplayRefusal::NotFound => ApiError::not_found("webhook delivery"),
        ReplayRefusal::InProgress => {
            ApiError::conflict("invalid_state", "the delivery is still pending or being sent")
        }
        ReplayRefusal::EndpointDisabled => ApiError::conflict(
            "endpoint_disabled",
            "the endpoint is disabled; enable it first (PATCH enabled: true)",
        ),
    }
}

fn positive(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    query
        .get(name)
        .map(|v| {
            v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("{name} must be a positive whole number"),
                )
            })
        })
        .transpose()
}

/// The company a listing covers: a scoped token's own, whatever was asked; another
/// company is not found.
fn scoped_company(caller: &Caller, asked: Option<i64>) -> Result<Option<i64>, ApiError> {
    match caller.company_scope {
        Some(scope) if asked.is_some_and(|c| c != scope) => Err(ApiError::not_found("company")),
        Some(scope) => Ok(Some(scope)),
        None => Ok(asked),
    }
}
