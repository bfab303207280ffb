//! outbound: the delivery engine for calls that leave offboard — host webhooks and the
//! steps' calls to outside systems. It never imports steps or api.
//!
//! - [`guard`]: the SSRF guard — public addresses only, checked at connect time.
//! - [`client`]: the one HTTP client (guarded, no redirects, a timeout per attempt) and
//!   the answer reduced to status, error code, latency and `Retry-After`.
//! - [`signing`]: Standard Webhooks signatures (HMAC-SHA256, secret rotation).
//! - [`limits`]: per destination host, calls in flight and a token bucket (never waiting).
//! - [`schedule`]: when a failed call is tried again.
//! - [`webhooks`]: the deliverer — outbox rows claimed from the ledger within
//!   per-endpoint limits and a breaker, sent, and their outcome recorded.
//!
//! - [`outside`]: the steps' calls to outside systems — each call's intent recorded in the
//!   ledger, the call made through [`client::Client`] (a form for RFC 7009 revocations,
//!   JSON signed with [`signing`] for vendors' callbacks) within [`limits`] and the host's
//!   breaker, and the outcome recorded.

pub mod client;
pub mod guard;
pub mod limits;
pub mod outside;
pub mod schedule;
pub mod signing;
pub mod webhooks;
