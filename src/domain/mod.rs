//! The vocabulary of offboarding, parsed and validated once at the boundary: ids, actions,
//! transfer plans and their distribution arithmetic. No I/O lives here.

pub mod action;
pub mod field_error;
pub mod ids;
pub mod request;
pub mod transfer;
pub mod webhook;

pub use action::Action;
pub use field_error::FieldError;
pub use ids::{CompanyId, UserId};
pub use request::{OffboardingRequest, Replacement};
pub use transfer::{Distribution, ItemType, Scope, TransferPlan, TransferRule};
