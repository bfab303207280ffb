//! offboard: offboards users of a multi-tenant CRM — deactivate, delete, redact, reactivate —
//! recording every run in PostgreSQL and carrying the work over Redis.
//!
//! Where things live:
//! - [`api`]: the HTTP API, and the operators' dashboard it serves at `/`.
//! - [`config`]: settings from the environment.
//! - [`domain`]: ids, actions, transfer plans and their arithmetic (no I/O).
//! - [`ledger`]: runs, steps and purges in PostgreSQL; every state transition.
//! - [`steps`]: one module per step, and the registry of which steps an action takes.
//! - [`executor`]: runs a step task: one step under a lease, or a run's ready steps in one
//!   transaction.
//! - [`dispatch`]: the dispatcher (ready steps to Redis) and the sweeper.
//! - [`queue`]: the Redis queues (apalis-redis).
//! - [`cli`], [`batch_cli`]: the operator CLI (runs, bulk actions, batch files) over the API.
//! - [`bulk`]: works through bulk retries and cancels, chunk by chunk.
//! - [`samples`]: per-second samples of the workers' rates for the dashboard's charts.
//! - [`worker`]: the apalis worker runtime.
//! - [`nudge`]: wakes the dispatcher across processes (`LISTEN`/`NOTIFY`).
//! - [`outbound`]: calls that leave offboard, through one guarded HTTP client — host
//!   webhooks (signed, from the ledger's outbox) and the steps' calls to outside systems
//!   (`outbound::outside`: OAuth revocations, vendors' uninstall callbacks), one ledger row
//!   per call, limited per destination and company, and broken per destination.
//! - [`faults`]: fault injection into steps (drills and tests).

pub mod api;
pub mod app;
pub mod backoff;
pub mod batch_cli;
pub mod bulk;
pub mod cli;
pub mod config;
pub mod crm;
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod executor;
pub mod faults;
pub mod ledger;
pub mod metrics;
pub mod nudge;
pub mod outbound;
pub mod queue;
pub mod samples;
pub mod shutdown;
pub mod steps;
pub mod worker;
