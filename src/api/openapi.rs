//! `/openapi.json`, generated from the handlers' annotations and the typed views they
//! serialize, so it cannot say something the code does not do.

use std::sync::LazyLock;

use axum::{http::header, response::IntoResponse};
use serde_json::Value;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{
    audit, batch_views, batches, dashboard, health, offboardings, operators, policy, preview, undo,
    views, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "offboard",
        description = "Offboards users of a multi-tenant CRM: deactivate, delete, redact, reactivate, with transfer plans, previews and operator actions. Errors are always {\"error\": {\"code\", \"message\"}} with a stable code.",
    ),
    paths(
        health::healthz,
        health::metrics,
        offboardings::create,
        offboardings::list,
        offboardings::get,
        offboardings::retry,
        offboardings::cancel,
        offboardings::reschedule,
        offboardings::approve,
        offboardings::reject,
        undo::preview,
        undo::undo,
        preview::show,
        preview::dry_run,
        dashboard::stats,
        operators::bulk_retry,
        operators::bulk_cancel,
        operators::bulk_operation,
        operators::bulk_operations,
        operators::restart,
        operators::series,
        batches::create,
        batches::list,
        batches::get,
        batches::cancel,
        policy::show,
        policy::put,
        audit::export,
        webhooks::create_endpoint,
        webhooks::list_endpoints,
        webhooks::get_endpoint,
        webhooks::update_endpoint,
        webhooks::delete_endpoint,
        webhooks::rotate_secret,
        webhooks::replay_failed,
        webhooks::list_deliveries,
        webhooks::replay_delivery,
    ),
    components(schemas(
        views::ErrorBody,
        crate::domain::OffboardingRequestBody,
        crate::domain::request::ReplacementBody,
        crate::domain::transfer::RuleBody,
        crate::domain::transfer::TargetBody,
        views::Accepted,
        views::RunView,
        views::RunList,
        views::Retried,
        views::Canceled,
        offboardings::RescheduleBody,
        offboardings::ApprovalBody,
        views::Decided,
        undo::UndoPreview,
        undo::UndoCounts,
        undo::UndoTransferBody,
        views::Health,
        preview::DryRunBody,
        operators::BulkRequest,
        operators::FilterBody,
        operators::BulkDryRun,
        operators::BulkOperationView,
        operators::BulkOperationList,
        operators::RestartRequest,
        operators::Restarted,
        operators::Series,
        operators::SeriesPoint,
        crate::domain::batch::BatchRequest,
        batch_views::BatchView,
        batch_views::BatchList,
        batch_views::BatchProgress,
        batch_views::RefusedRow,
        crate::domain::policy::PolicyBody,
        views::PolicyView,
        webhooks::CreateEndpoint,
        webhooks::UpdateEndpoint,
        webhooks::EndpointWithSecret,
        webhooks::EndpointList,
        webhooks::DeliveryList,
        webhooks::Replayed,
        crate::ledger::webhooks::EndpointRow,
        crate::ledger::webhooks::DeliveryRow,
        crate::ledger::calls::CallView,
        crate::ledger::calls::BreakerView,
    )),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "offboardings", description = "Enqueue and follow runs"),
        (name = "preview", description = "What a user owns; dry runs of transfer plans"),
        (name = "operators", description = "Retry, cancel, restart from a step, bulk actions by filter, stats and their series"),
        (name = "batches", description = "Bulk offboarding from a file (JSON, NDJSON or CSV), its progress and its cancel"),
        (name = "policy", description = "A company's offboarding policy: what runs an identity provider (SCIM, at /scim/v2, outside this document) starts do"),
        (name = "operations", description = "Health and metrics"),
        (name = "webhooks", description = "Endpoints the host hears back on (Standard Webhooks), their deliveries and replays"),
    )
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut value = serde_json::to_value(&doc).expect("the OpenAPI document serializes");
    fix_link_field_names(&mut value);
    serde_json::to_string_pretty(&value).expect("the OpenAPI document serializes")
});

/// utoipa 5.5 writes a link's fields in snake case (`operation_id`); OpenAPI says
/// `operationId`, `operationRef`, `requestBody`.
fn fix_link_field_names(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for operation in
        paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut())
    {
        let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
            continue;
        };
        for links in responses
            .values_mut()
            .filter_map(|r| r.get_mut("links"))
            .filter_map(Value::as_object_mut)
        {
            for link in links.values_mut().filter_map(Value::as_object_mut) {
                for (from, to) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(v) = link.remove(from) {
                        link.insert(to.to_string(), v);
                    }
                }
            }
        }
    }
}

/// The OpenAPI document (no token needed).
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
