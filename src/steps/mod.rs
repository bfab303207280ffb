//! The steps of an offboarding run, one file each, and the registry that says which steps
//! exist and where an action's plan puts them.
//!
//! Every step has the same shape, a [`Step`]: its name, its [`Stage`] in a plan and its
//! effect. Given the run and a transaction, the effect is applied idempotently and says what
//! changed. The executor commits the effect in the same transaction that records the step
//! done, so a re-delivered task never applies it twice. A step that moves many rows returns
//! [`Progress::Batch`] and is called again, each batch its own transaction, resuming from
//! the cursor it stored.
//!
//! # Adding a step
//! One file and one line. The file, say `src/steps/archive_notes.rs`, holds the effect and
//! its entry:
//!
//! ```ignore
//! use super::{Finished, Progress, Stage, Step, StepContext, StepError};
//!
//! pub(super) const STEP: Step = Step {
//!     name: "archive_notes",
//!     // Runs in every deactivation once login is blocked, beside the others.
//!     stage: Stage::WhileDeactivating,
//!     // May run again when an operator restarts a run from it or an earlier step.
//!     safe_to_repeat: true,
//!     apply: |cx, tx, _| Box::pin(apply(cx, tx)),
//! };
//!
//! async fn apply(cx: &StepContext<'_>, tx: &mut PgConnection) -> Result<Progress, StepError> {
//!     /* … */
//!     Ok(Finished::with_counts(json!({"notes_archived": n})))
//! }
//! ```
//!
//! and the line is `archive_notes::STEP,` in [`REGISTRY`] (plus its `mod archive_notes;`).
//! The test `a_new_step_is_one_entry_in_the_registry` does exactly this.

mod block_login;
mod context;
mod disable_webhooks;
mod erase_personal_data;
mod error;
mod finish_deactivation;
pub mod first_admin;
mod hand_over_leadbooster;
mod noop;
mod plan;
pub mod private_email_purge;
mod progress;
mod reactivate_user;
pub mod reassign;
mod redact_profile;
pub mod review_automations;
mod stop_syncs;
mod transfer_dashboards;
mod undo_transfer;
mod uninstall_apps;
use std::fmt;

use futures::future::BoxFuture;
use sqlx::PgConnection;

pub use self::{
    context::{RunContext, RunParams, StepContext, StepState},
    error::StepError,
    plan::{StepSpec, plan},
    progress::{AfterCommit, Finished, Progress},
};
use crate::domain::ItemType;
pub(crate) use first_admin::first_admin;

/// Every step there is, in the order a plan lists those of one stage.
pub const REGISTRY: &[Step] = &[
    block_login::STEP,
    stop_syncs::STEP,
    uninstall_apps::STEP,
    disable_webhooks::STEP,
    transfer_dashboards::STEP,
    review_automations::STEP,
    hand_over_leadbooster::STEP,
    reassign::STEP,
    finish_deactivation::STEP,
    erase_personal_data::STEP,
    redact_profile::STEP,
    reactivate_user::STEP,
    undo_transfer::STEP,
    noop::STEP,
];

/// A step's effect: applies it (or its next batch) inside the transaction.
pub type Apply = for<'a> fn(
    &'a StepContext<'a>,
    &'a mut PgConnection,
    StepArg,
) -> BoxFuture<'a, Result<Progress, StepError>>;

/// One step: what the ledger calls it, where a plan puts it, what it does.
pub struct Step {
    /// The ledger's name (for per-item and numbered steps, the prefix before `_<arg>`).
    pub name: &'static str,
    pub stage: Stage,
    /// Whether the step may run again after it succeeded, when an operator restarts a run
    /// from it or from a step before it (`POST /v1/offboardings/{id}/restart`): its
    /// effect, applied a second time, changes nothing the first did not (a second
    /// revocation, uninstall or hand-over finds nothing left; a reassignment moves only
    /// what the user still owns). Not so for steps that count or hand out something once
    /// (a seat, a purge, an erasure recorded in the receipt, a redaction whose name the
    /// ledger no longer holds).
    pub safe_to_repeat: bool,
    pub apply: Apply,
}

/// Where an action's plan puts a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Placed by [`plan`] itself: the steps that give the actions their shape (login
    /// blocked first, the user marked deactivated last, erasure, redaction, reactivation).
    Fixed,
    /// In every deactivation once login is blocked, beside the others, before the user is
    /// marked deactivated.
    WhileDeactivating,
    /// Once per item type of the transfer plan, named `<name>_<item>` (`reassign_deals`),
    /// in a deactivation and in a deletion.
    PerItemType,
    /// Numbered copies (`noop_7`) that no action plans (the bench inserts them).
    Numbered,
}

/// What distinguishes copies of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepArg {
    None,
    Item(ItemType),
    Number(u32),
}

/// A step of a run: a registered [`Step`] with its argument.
#[derive(Clone, Copy)]
pub struct StepKind {
    step: &'static Step,
    arg: StepArg,
}

impl PartialEq for StepKind {
    fn eq(&self, other: &Self) -> bool {
        self.step.name == other.step.name && self.arg == other.arg
    }
}

impl Eq for StepKind {}

impl fmt::Debug for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl StepKind {
    pub(super) fn of(step: &'static Step, arg: StepArg) -> Self {
        Self { step, arg }
    }

    pub fn name(self) -> String {
        match self.arg {
            StepArg::None => self.step.name.to_string(),
            StepArg::Item(item) => format!("{}_{}", self.step.name, item.key()),
            StepArg::Number(n) => format!("{}_{n}", self.step.name),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        from_name_in(REGISTRY, name)
    }

    /// Whether the step moves items (and shares a group's batch of rows).
    pub fn moves_items(self) -> bool {
        self.step.stage == Stage::PerItemType
    }

    /// See [`Step::safe_to_repeat`].
    pub fn safe_to_repeat(self) -> bool {
        self.step.safe_to_repeat
    }

    /// Applies the step's effect (or the next batch of it) inside `tx`.
    pub async fn apply(
        self,
        cx: &StepContext<'_>,
        tx: &mut PgConnection,
    ) -> Result<Progress, StepError> {
        (self.step.apply)(cx, tx, self.arg).await
    }
}

pub(super) fn from_name_in(registry: &'static [Step], name: &str) -> Option<StepKind> {
    registry.iter().find_map(|step| {
        let arg = match step.stage {
            Stage::Fixed | Stage::WhileDeactivating => {
                return (name == step.name).then(|| StepKind::of(step, StepArg::None));
            }
            Stage::PerItemType | Stage::Numbered => {
                name.strip_prefix(step.name)?.strip_prefix('_')?
            }
        };
        match step.stage {
            Stage::PerItemType => arg.parse().ok().map(StepArg::Item),
            _ => arg.parse().ok().map(StepArg::Number),
        }
        .map(|arg| StepKind::of(step, arg))
    })
}

#[cfg(test)]
mod tests;
