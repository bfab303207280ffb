//! Request tracing: every request gets an id (`x-request-id`: the caller's when it is a
//! plain token, otherwise a fresh UUID), echoed on the response and carried by the span every
//! log line of the request is written in. The span names the route template, never the URI:
//! paths hold ids and query strings can hold emails (SCIM filters).

use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::HeaderName,
};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller.
const MAX_CALLER_ID: usize = 64;

/// Wraps `router` (whose routes are set) in the request-id and trace layers.
pub fn layer<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(span_for)
                .on_request(())
                .on_eos(())
                .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unfit_caller_id))
}

fn span_for(request: &Request) -> tracing::Span {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %request.method(), route, request_id = id)
}

/// A caller's id is kept only when it is a plain token (letters, digits, `-`, `_`; at most
/// 64): anything else — an email, a long or odd string — is replaced by a fresh id, so no
/// caller can put personal data into our logs through it.
async fn drop_unfit_caller_id(mut request: Request) -> Request {
    let fit = request.headers().get(&REQUEST_ID).is_none_or(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_CALLER_ID
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    });
    if !fit {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}
