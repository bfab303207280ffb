//! The vocabulary of offboarding, parsed and validated once at the boundary: ids, actions,
//! transfer plans and their distribution arithmetic. No I/O lives here.

pub mod action;
pub mod field_error;
pub mod ids;
pub mod policy;
pub mod request;
pub mod run_status;
pub mod transfer;
pub mod webhook;

pub use action::Action;
pub use field_error::FieldError;
pub use ids::{CompanyId, UserId};
pub use policy::{OffboardingPolicy, OnDeactivate, OnDelete};
pub use request::{OffboardingRequest, Origin, Replacement};
pub use transfer::{Distribution, ItemType, Scope, TransferPlan, TransferRule};
