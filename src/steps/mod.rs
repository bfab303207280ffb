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
mod disable_webhooks;
mod erase_personal_data;
mod finish_deactivation;
mod hand_over_leadbooster;
mod noop;
pub mod private_email_purge;
mod reactivate_user;
pub mod reassign;
mod redact_profile;
mod review_automations;
mod stop_syncs;
mod transfer_dashboards;
mod undo_transfer;
mod uninstall_apps;

use std::fmt;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    config::StepSettings,
    domain::{Action, CompanyId, ItemType, TransferPlan, UserId},
};

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
    fn of(step: &'static Step, arg: StepArg) -> Self {
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

fn from_name_in(registry: &'static [Step], name: &str) -> Option<StepKind> {
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

/// A step as the ledger records it when a run is enqueued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    pub name: String,
    pub depends_on: Vec<String>,
}

/// The steps an action takes, with their dependencies. Login is blocked first so no new
/// data arrives; everything else a deactivation does runs concurrently after it; the
/// user is marked deactivated last; deletion starts only once deactivation has finished.
pub fn plan(action: Action, transfer: &TransferPlan) -> Vec<StepSpec> {
    plan_in(REGISTRY, action, transfer)
}

fn plan_in(registry: &'static [Step], action: Action, transfer: &TransferPlan) -> Vec<StepSpec> {
    let fixed = |step: &'static Step| StepKind::of(step, StepArg::None).name();
    let spec = |name: String, deps: &[String]| StepSpec { name, depends_on: deps.to_vec() };
    let in_stage = |stage: Stage| registry.iter().filter(move |s| s.stage == stage);
    let per_item: Vec<String> = in_stage(Stage::PerItemType)
        .flat_map(|step| {
            transfer.item_types().into_iter().map(|item| StepKind::of(step, StepArg::Item(item)))
        })
        .map(StepKind::name)
        .collect();

    let deactivation = |specs: &mut Vec<StepSpec>| {
        let blocked = [fixed(&block_login::STEP)];
        specs.push(spec(fixed(&block_login::STEP), &[]));
        let alongside = in_stage(Stage::WhileDeactivating).map(fixed).chain(per_item.clone());
        for name in alongside {
            specs.push(spec(name, &blocked));
        }
        let all_before: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        specs.push(spec(fixed(&finish_deactivation::STEP), &all_before));
    };

    let mut specs = Vec::new();
    match action {
        Action::Deactivate => deactivation(&mut specs),
        Action::DeactivateAndDelete => {
            deactivation(&mut specs);
            specs.push(spec(
                fixed(&erase_personal_data::STEP),
                &[fixed(&finish_deactivation::STEP)],
            ));
        }
        Action::Delete => {
            for name in &per_item {
                specs.push(spec(name.clone(), &[]));
            }
            let before: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
            specs.push(spec(fixed(&erase_personal_data::STEP), &before));
        }
        Action::Redact => specs.push(spec(fixed(&redact_profile::STEP), &[])),
        Action::Reactivate => specs.push(spec(fixed(&reactivate_user::STEP), &[])),
        Action::UndoTransfer => specs.push(spec(fixed(&undo_transfer::STEP), &[])),
    }
    specs
}

/// Action parameters stored with the run. Only ids and flags, except a redaction's new
/// display name, which the redaction step removes from the ledger once applied.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_picture: bool,
    /// `scim` when an identity provider started the run (its actor is then the company's
    /// service actor); absent for the host's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// An undo: the run whose transfer it gives back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_of: Option<Uuid>,
    /// An undo: who gets the items back when it is not the run's (reactivated) user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user_id: Option<UserId>,
}

crate::domain::debug_without_personal_data!(RunParams {
    replacement_user_id,
    remove_picture,
    started_by,
    undo_of,
    to_user_id
});

/// The run a step belongs to.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub id: Uuid,
    pub company_id: CompanyId,
    pub user_id: UserId,
    pub action: Action,
    pub actor_user_id: UserId,
    pub plan: TransferPlan,
    pub params: RunParams,
}

/// Where a step stands, as of the start of this transaction.
#[derive(Clone, Debug)]
pub struct StepState {
    pub name: String,
    pub attempts: i32,
    pub done: i64,
    pub total: Option<i64>,
    pub cursor: Option<Value>,
}

pub struct StepContext<'a> {
    pub run: &'a RunContext,
    pub step: &'a StepState,
    pub settings: &'a StepSettings,
}

impl StepContext<'_> {
    pub fn company(&self) -> i64 {
        self.run.company_id.get()
    }

    pub fn user(&self) -> i64 {
        self.run.user_id.get()
    }
}

/// What one call of a step achieved.
#[derive(Debug)]
pub enum Progress {
    /// One batch committed; call again to continue from `cursor`.
    Batch { done: i64, total: i64, cursor: Value },
    /// The step is complete.
    Finished(Finished),
}

#[derive(Debug, Default)]
pub struct Finished {
    /// Counts of what changed, shown in the receipt. Ids only, never names or emails.
    pub counts: Value,
    pub done: i64,
    pub total: i64,
    /// Work that must follow the commit (none today: a purge is pushed to Redis by the
    /// dispatcher when it comes due, not when it is scheduled).
    pub after_commit: Vec<AfterCommit>,
}

impl Finished {
    pub fn with_counts(counts: Value) -> Progress {
        Progress::Finished(Finished { counts, done: 1, total: 1, after_commit: Vec::new() })
    }
}

/// What a step needs done after its transaction commits (a remote call that must not run
/// inside it). No step needs one today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCommit {}

/// A failed step says at its source whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Connection lost, deadlock, serialization failure, timeout: worth another attempt.
    #[error("{code}: {message}")]
    Retryable { code: String, message: String },
    /// A rule that cannot start holding by waiting: the step is dead at once.
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
    /// An outside system asked for time: try again no sooner than `pause` (a
    /// `Retry-After`), or — `counted: false` — nothing was attempted (a destination's
    /// breaker is open, its rate limit spent) and the attempt is given back.
    #[error("{code}: {message}")]
    Later { code: String, message: String, pause: std::time::Duration, counted: bool },
}

impl StepError {
    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        StepError::Permanent { code: code.into(), message: message.into() }
    }

    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        StepError::Retryable { code: code.into(), message: message.into() }
    }

    pub fn later(
        code: &str,
        message: impl Into<String>,
        pause: std::time::Duration,
        counted: bool,
    ) -> Self {
        StepError::Later { code: code.into(), message: message.into(), pause, counted }
    }

    pub fn code(&self) -> &str {
        match self {
            StepError::Retryable { code, .. }
            | StepError::Permanent { code, .. }
            | StepError::Later { code, .. } => code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StepError::Retryable { message, .. }
            | StepError::Permanent { message, .. }
            | StepError::Later { message, .. } => message,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, StepError::Retryable { .. } | StepError::Later { .. })
    }
}

impl From<sqlx::Error> for StepError {
    /// Classifies a database error. Messages carry the SQLSTATE and constraint name only:
    /// PostgreSQL's detail text can quote row values, which may be personal data.
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) => {
                let state = db.code().map(|c| c.to_string()).unwrap_or_default();
                let constraint = db.constraint().map(|c| format!(" ({c})")).unwrap_or_default();
                let message = format!("database error {state}{constraint}");
                // A statement or lock wait past the pool's statement_timeout or
                // lock_timeout: worth another attempt, under its own code.
                if matches!(state.as_str(), "57014" | "55P03") {
                    let what = if state == "55P03" { "a lock wait" } else { "a statement" };
                    return StepError::retryable(
                        "timeout",
                        format!("{what} passed its time limit ({message})"),
                    );
                }
                match state.get(..2) {
                    // serialization failure, deadlock; connection exceptions; operator
                    // intervention (shutdown, cancel); insufficient resources.
                    Some("40") | Some("08") | Some("57") | Some("53") => {
                        StepError::retryable("database_unavailable", message)
                    }
                    _ => StepError::permanent("database_rejected", message),
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => StepError::retryable("database_unavailable", err.to_string()),
            _ => StepError::permanent("database_rejected", err.to_string()),
        }
    }
}

/// The first admin of the company other than `excluding` who is not leaving (no active
/// run deactivates them): who receives shared dashboards, chatbot playbooks and web forms.
/// The admin's row is locked `FOR SHARE` for the transaction, so their own deactivation
/// cannot commit in between.
pub(crate) async fn first_admin(
    tx: &mut PgConnection,
    company_id: i64,
    excluding: i64,
) -> Result<i64, StepError> {
    let admin: Option<i64> = sqlx::query_scalar(concat!(
        "SELECT u.id FROM crm.users u
         WHERE u.company_id = $1 AND u.role = 'admin' AND u.status = 'active' AND u.id <> $2
           AND NOT EXISTS (
               SELECT 1 FROM offboard.runs r
               WHERE r.company_id = u.company_id AND r.user_id = u.id
                 AND r.action IN ('deactivate', 'deactivate_and_delete')
                 AND r.status IN ",
        crate::active_run_statuses_sql!(),
        ")
         ORDER BY u.id LIMIT 1
         FOR SHARE OF u",
    ))
    .bind(company_id)
    .bind(excluding)
    .fetch_optional(&mut *tx)
    .await?;
    admin.ok_or_else(|| {
        StepError::permanent(
            "no_active_admin",
            "the company has no other active admin who is not being offboarded",
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::transfer::TransferPlan as Plan;

    #[test]
    fn every_step_name_maps_back_to_its_kind() {
        let plan_json = json!({"default": {"mode": "single", "targets": [{"user_id": 2}]}});
        let transfer = Plan::from_stored(&plan_json).unwrap();
        for action in Action::ALL {
            for spec in plan(action, &transfer) {
                let kind = StepKind::from_name(&spec.name).expect(&spec.name);
                assert_eq!(kind.name(), spec.name);
            }
        }
    }

    #[test]
    fn noop_steps_are_numbered_and_never_planned() {
        let noop = StepKind::from_name("noop_7").unwrap();
        assert_eq!(noop, StepKind::of(&noop::STEP, StepArg::Number(7)));
        assert_eq!(noop.name(), "noop_7");
        assert_eq!(StepKind::from_name("noop_x"), None);
        let transfer =
            Plan::from_stored(&json!({"default": {"mode": "single", "targets": [{"user_id": 2}]}}))
                .unwrap();
        for action in Action::ALL {
            assert!(plan(action, &transfer).iter().all(|s| !s.name.starts_with("noop")));
        }
    }

    #[test]
    fn deactivation_blocks_login_first_and_finishes_last() {
        let transfer =
            Plan::from_stored(&json!({"deals": {"mode": "single", "targets": [{"user_id": 2}]}}))
                .unwrap();
        let specs = plan(Action::Deactivate, &transfer);
        assert_eq!(specs[0].name, "block_login");
        assert!(specs[0].depends_on.is_empty());
        let last = specs.last().unwrap();
        assert_eq!(last.name, "finish_deactivation");
        assert_eq!(last.depends_on.len(), specs.len() - 1);
        assert!(specs.iter().any(|s| s.name == "reassign_deals"));
        assert!(!specs.iter().any(|s| s.name == "reassign_leads"));
        for middle in &specs[1..specs.len() - 1] {
            assert_eq!(middle.depends_on, vec!["block_login".to_string()]);
        }
    }

    #[test]
    fn deletion_waits_for_deactivation_in_one_run() {
        let specs = plan(Action::DeactivateAndDelete, &Plan::default());
        let erase = specs.iter().find(|s| s.name == "erase_personal_data").unwrap();
        assert_eq!(erase.depends_on, vec!["finish_deactivation".to_string()]);
    }

    mod archive_notes {
        //! A step written as a new one would be: this module and one registry line.
        use serde_json::json;
        use sqlx::PgConnection;

        use super::super::{Finished, Progress, Stage, Step, StepContext, StepError};

        pub const STEP: Step = Step {
            name: "archive_notes",
            stage: Stage::WhileDeactivating,
            safe_to_repeat: true,
            apply: |cx, tx, _| Box::pin(apply(cx, tx)),
        };

        async fn apply(_: &StepContext<'_>, _: &mut PgConnection) -> Result<Progress, StepError> {
            Ok(Finished::with_counts(json!({"notes_archived": 0})))
        }
    }

    /// The registry with one more line, as a developer adding `archive_notes` writes it.
    static WITH_ARCHIVE_NOTES: std::sync::LazyLock<&'static [Step]> =
        std::sync::LazyLock::new(|| {
            let mut registry: Vec<Step> = REGISTRY
                .iter()
                .map(|s| Step {
                    name: s.name,
                    stage: s.stage,
                    safe_to_repeat: s.safe_to_repeat,
                    apply: s.apply,
                })
                .collect();
            registry.push(archive_notes::STEP);
            Vec::leak(registry)
        });

    #[test]
    fn a_new_step_is_one_entry_in_the_registry() {
        let registry: &'static [Step] = *WITH_ARCHIVE_NOTES;
        let specs = plan_in(registry, Action::Deactivate, &Plan::default());
        let archive = specs.iter().find(|s| s.name == "archive_notes").expect("planned");
        assert_eq!(archive.depends_on, vec!["block_login".to_string()]);
        let finish = specs.last().unwrap();
        assert_eq!(finish.name, "finish_deactivation");
        assert!(finish.depends_on.contains(&"archive_notes".to_string()));
        let kind = from_name_in(registry, "archive_notes").expect("found by name");
        assert_eq!(kind.name(), "archive_notes");
        // Not planned where its stage does not belong.
        assert!(
            !plan_in(registry, Action::Redact, &Plan::default())
                .iter()
                .any(|s| s.name == "archive_notes")
        );
        // And unknown to the real registry until its line is added.
        assert!(StepKind::from_name("archive_notes").is_none());
    }

    #[test]
    fn every_registered_step_has_a_unique_name() {
        let mut names: Vec<&str> = REGISTRY.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
    }
}
