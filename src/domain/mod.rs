//! The vocabulary of offboarding, parsed and validated once at the boundary: ids, actions,
//! transfer plans and their distribution arithmetic. No I/O lives here.

/// Implements `Debug` for a type holding personal data (names, emails, user names): it
/// shows the type and the fields named here (ids, flags, statuses) and hides the rest as
/// `..`, so a `{:?}` in a log line or a panic message never carries a name or an email.
macro_rules! debug_without_personal_data {
    ($ty:ident { $($shown:ident),* $(,)? }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($shown), &self.$shown))*
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use debug_without_personal_data;

mod text_enum;

pub mod action;
pub mod actor;
pub mod audit;
pub mod batch;
pub mod bulk;
pub mod call;
pub mod field_error;
pub mod ids;
pub mod journal;
pub mod policy;
pub mod purge;
pub mod request;
pub mod run_event;
pub mod run_status;
pub mod step_status;
pub mod transfer;
pub mod user;
pub mod webhook;
pub mod wire;

pub use action::Action;
pub use actor::{Actor, Service};
pub use audit::AuditRecord;
pub use batch::{BatchFormat, BatchStatus};
pub use bulk::{BulkKind, BulkStatus};
pub use call::{BreakerState, CallKind, CallStatus};
pub use field_error::FieldError;
pub use ids::{CompanyId, StepKey, UserId};
pub use policy::{OffboardingPolicy, OnDeactivate, OnDelete};
pub use purge::{FiredBy, PurgeStatus};
pub use request::{OffboardingRequest, OffboardingRequestBody, Origin, Replacement};
pub use run_event::RunEventKind;
pub use run_status::RunStatus;
pub use step_status::StepStatus;
pub use transfer::{Distribution, ItemType, Scope, TransferPlan, TransferRule};
pub use user::{UserRole, UserStatus};
pub use webhook::DeliveryStatus;
