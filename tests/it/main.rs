//! Integration tests against the real PostgreSQL and Redis: one binary, one module per
//! area. Each test gets its own database (`#[sqlx::test]`) and its own Redis key prefix.

mod actions;
mod approval;
mod audit;
mod bad_input;
mod batches;
mod dashboard;
mod deactivation;
mod enqueue_cost;
mod erasure;
mod hardening;
mod helpers;
mod lanes;
mod openapi;
mod operators;
mod outside;
mod polling;
mod processes;
mod purge;
mod recovery;
mod refusals;
mod request_ids;
mod retries;
mod scheduled;
mod scim;
mod security;
mod step_cost;
mod transfer;
mod undo;
mod upgrade;
mod webhooks;
mod words;
