//! outbound: the delivery engine for calls that leave offboard — host webhooks now, the
//! steps' calls to outside systems next. It never imports steps or api.
//!
//! - [`guard`]: the SSRF guard — public addresses only, checked at connect time.
//! - [`client`]: the one HTTP client (guarded, no redirects, a timeout per attempt) and
//!   the answer reduced to status, error code, latency and `Retry-After`.
//! - [`signing`]: Standard Webhooks signatures (HMAC-SHA256, secret rotation).
//! - [`schedule`]: when a failed call is tried again.
//! - [`webhooks`]: the deliverer — outbox rows claimed from the ledger within
//!   per-endpoint limits and a breaker, sent, and their outcome recorded.
//!
//! A step that calls out (the next issue) records its intent in the ledger, calls through
//! [`client::Client`] (JSON or a form, signed with [`signing`] where the receiver expects
//! it), and records the outcome with the pause [`schedule::next_pause`] gives.

pub mod client;
pub mod guard;
pub mod schedule;
pub mod signing;
pub mod webhooks;
