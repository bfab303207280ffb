//! Host webhooks in the ledger: endpoints, and deliveries — the outbox. Event and delivery
//! rows are written by triggers in the transaction that changes state (migration
//! `20261202040001_webhooks`); here they are claimed, recorded, listed and replayed. A
//! delivery's state moves in single statements guarded by its status and attempt number,
//! so a deliverer whose lease expired cannot record over the next attempt.

mod deliveries;
mod endpoints;
mod outbox;

pub use self::{deliveries::*, endpoints::*, outbox::*};
