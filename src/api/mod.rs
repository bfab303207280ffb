//! The HTTP API (axum): offboarding runs, previews, health and metrics, and the operators'
//! dashboard at `/`. Handlers parse at the boundary into domain types; every error is
//! `{"error": {"code", "message"}}`.

mod audit;
mod auth;
mod batch_views;
mod batches;
mod body;
mod dashboard;
mod enqueue;
pub mod error;
mod health;
pub(crate) mod offboardings;
mod openapi;
mod operators;
mod policy;
mod preview;
mod scim;
mod trace;
mod undo;
pub mod views;
mod webhooks;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use secrecy::SecretSlice;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::{
    config::{ApiToken, Settings},
    metrics::{LedgerSnapshot, METRICS},
    queue::Queues,
};

/// What every handler shares, behind one `Arc`: axum clones the state for each extractor and
/// middleware that takes it, several times a request, and a clone of the fields themselves
/// (the queues' Redis storages, the idempotency secret's copy, wiped again on drop)
/// allocated each time.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state's fields ([`AppState`] derefs to them).
pub struct Shared {
    pub pool: PgPool,
    pub queues: Queues,
    pub settings: Arc<Settings>,
    pub tokens: Arc<Vec<ApiToken>>,
    /// The key of the hash kept of idempotent requests: `OFFBOARD_IDEMPOTENCY_SECRET`, or a
    /// random one for this process (development; `offboard serve` requires the setting
    /// otherwise).
    pub idempotency_secret: SecretSlice<u8>,
    /// Wakes the dispatcher of this process after a commit made steps ready.
    pub nudge: Arc<Notify>,
    /// The ledger's counts for `/metrics`, read at most once per `OFFBOARD_STATS_MAX_AGE`.
    pub ledger_snapshot: Arc<LedgerSnapshot>,
    /// `/v1/stats` answers by (company, scoped), as old as `OFFBOARD_STATS_MAX_AGE` at most.
    pub stats_cache: Arc<dashboard::StatsCache>,
}

impl AppState {
    pub fn new(pool: PgPool, queues: Queues, settings: Settings, nudge: Arc<Notify>) -> Self {
        let tokens = Arc::new(settings.accepted_tokens());
        let idempotency_secret = settings
            .idempotency_secret
            .clone()
            .unwrap_or_else(|| SecretSlice::from(rand::random::<[u8; 32]>().to_vec()));
        let max_age = settings.stats_max_age;
        Self(Arc::new(Shared {
            pool,
            queues,
            settings: Arc::new(settings),
            tokens,
            idempotency_secret,
            nudge,
            ledger_snapshot: Arc::new(LedgerSnapshot::new(max_age)),
            stats_cache: Arc::new(dashboard::StatsCache::new(max_age)),
        }))
    }
}

pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/operators.js", get(dashboard::operators_script))
        .route("/dashboard/batches.js", get(dashboard::batches_script))
        .route("/dashboard/style.css", get(dashboard::stylesheet))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/offboardings", post(offboardings::create).get(offboardings::list))
        .route("/v1/offboardings/{id}", get(offboardings::get).patch(offboardings::reschedule))
        .route("/v1/offboardings/{id}/retry", post(offboardings::retry))
        .route("/v1/offboardings/{id}/cancel", post(offboardings::cancel))
        .route("/v1/offboardings/{id}/approve", post(offboardings::approve))
        .route("/v1/offboardings/{id}/reject", post(offboardings::reject))
        .route("/v1/offboardings/{id}/restart", post(operators::restart))
        .route("/v1/offboardings/{id}/undo-transfer", post(undo::undo))
        .route("/v1/offboardings/{id}/undo-transfer/preview", get(undo::preview))
        .route("/v1/offboardings/bulk-retry", post(operators::bulk_retry))
        .route("/v1/offboardings/bulk-cancel", post(operators::bulk_cancel))
        .route("/v1/offboarding-batches", post(batches::create).get(batches::list))
        .route("/v1/offboarding-batches/{id}", get(batches::get))
        .route("/v1/offboarding-batches/{id}/cancel", post(batches::cancel))
        .route("/v1/bulk-operations", get(operators::bulk_operations))
        .route("/v1/bulk-operations/{id}", get(operators::bulk_operation))
        .route("/v1/stats", get(dashboard::stats))
        .route("/v1/stats/series", get(operators::series))
        .route("/v1/companies/{company_id}/offboarding-policy", get(policy::show).put(policy::put))
        .route("/v1/companies/{company_id}/audit", get(audit::export))
        .nest("/scim/v2", scim::router())
        .route(
            "/v1/webhook-endpoints",
            post(webhooks::create_endpoint).get(webhooks::list_endpoints),
        )
        .route(
            "/v1/webhook-endpoints/{id}",
            get(webhooks::get_endpoint)
                .patch(webhooks::update_endpoint)
                .delete(webhooks::delete_endpoint),
        )
        .route("/v1/webhook-endpoints/{id}/rotate-secret", post(webhooks::rotate_secret))
        .route("/v1/webhook-endpoints/{id}/replay-failed", post(webhooks::replay_failed))
        .route("/v1/webhook-deliveries", get(webhooks::list_deliveries))
        .route("/v1/webhook-deliveries/{id}/replay", post(webhooks::replay_delivery))
        .route(
            "/v1/companies/{company_id}/users/{user_id}/preview",
            get(preview::show).post(preview::dry_run),
        )
        .fallback(|| async { error::ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    trace::layer(router).with_state(state)
}

/// Counts each request by its route template (ids stay out of labels); [`trace`] logs it.
async fn observe(State(_): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    METRICS.http_request(&route, response.status().as_u16());
    response
}
