//! The steps of an offboarding run, one file each, and the registry that says which steps
//! an action takes and in what order. Adding a step is one file plus one line in
//! [`StepKind`] and one in [`plan`].
//!
//! Every step has the same shape: given the run and a transaction, apply the effect
//! idempotently and return what changed. The executor commits the effect in the same
//! transaction that records the step done, so a re-delivered task never applies it twice.
//! A step that moves many rows returns [`Progress::Batch`] and is called again, each batch
//! its own transaction, resuming from the cursor it stored.

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
mod uninstall_apps;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    config::StepSettings,
    domain::{Action, CompanyId, ItemType, TransferPlan, UserId},
};

/// Every step a run can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    BlockLogin,
    StopSyncs,
    UninstallApps,
    DisableWebhooks,
    TransferDashboards,
    ReviewAutomations,
    HandOverLeadbooster,
    Reassign(ItemType),
    FinishDeactivation,
    ErasePersonalData,
    RedactProfile,
    ReactivateUser,
    /// Does nothing; numbered so a run can hold many. Only `offboard bench steps` uses it.
    Noop(u32),
}

impl StepKind {
    /// The deactivation steps that only need login blocked before them.
    const AFTER_LOGIN_BLOCKED: [StepKind; 6] = [
        StepKind::StopSyncs,
        StepKind::UninstallApps,
        StepKind::DisableWebhooks,
        StepKind::TransferDashboards,
        StepKind::ReviewAutomations,
        StepKind::HandOverLeadbooster,
    ];

    pub fn name(self) -> String {
        match self {
            StepKind::BlockLogin => "block_login".into(),
            StepKind::StopSyncs => "stop_syncs".into(),
            StepKind::UninstallApps => "uninstall_apps".into(),
            StepKind::DisableWebhooks => "disable_webhooks".into(),
            StepKind::TransferDashboards => "transfer_dashboards".into(),
            StepKind::ReviewAutomations => "review_automations".into(),
            StepKind::HandOverLeadbooster => "hand_over_leadbooster".into(),
            StepKind::Reassign(item) => format!("reassign_{}", item.key()),
            StepKind::FinishDeactivation => "finish_deactivation".into(),
            StepKind::ErasePersonalData => "erase_personal_data".into(),
            StepKind::RedactProfile => "redact_profile".into(),
            StepKind::ReactivateUser => "reactivate_user".into(),
            StepKind::Noop(n) => format!("noop_{n}"),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        if let Some(item) = name.strip_prefix("reassign_") {
            return item.parse().ok().map(StepKind::Reassign);
        }
        if let Some(n) = name.strip_prefix("noop_") {
            return n.parse().ok().map(StepKind::Noop);
        }
        let fixed = [
            StepKind::BlockLogin,
            StepKind::StopSyncs,
            StepKind::UninstallApps,
            StepKind::DisableWebhooks,
            StepKind::TransferDashboards,
            StepKind::ReviewAutomations,
            StepKind::HandOverLeadbooster,
            StepKind::FinishDeactivation,
            StepKind::ErasePersonalData,
            StepKind::RedactProfile,
            StepKind::ReactivateUser,
        ];
        fixed.into_iter().find(|k| k.name() == name)
    }

    /// Applies the step's effect (or the next batch of it) inside `tx`.
    pub async fn apply(
        self,
        cx: &StepContext<'_>,
        tx: &mut PgConnection,
    ) -> Result<Progress, StepError> {
        match self {
            StepKind::BlockLogin => block_login::apply(cx, tx).await,
            StepKind::StopSyncs => stop_syncs::apply(cx, tx).await,
            StepKind::UninstallApps => uninstall_apps::apply(cx, tx).await,
            StepKind::DisableWebhooks => disable_webhooks::apply(cx, tx).await,
            StepKind::TransferDashboards => transfer_dashboards::apply(cx, tx).await,
            StepKind::ReviewAutomations => review_automations::apply(cx, tx).await,
            StepKind::HandOverLeadbooster => hand_over_leadbooster::apply(cx, tx).await,
            StepKind::Reassign(item) => reassign::apply(cx, tx, item).await,
            StepKind::FinishDeactivation => finish_deactivation::apply(cx, tx).await,
            StepKind::ErasePersonalData => erase_personal_data::apply(cx, tx).await,
            StepKind::RedactProfile => redact_profile::apply(cx, tx).await,
            StepKind::ReactivateUser => reactivate_user::apply(cx, tx).await,
            StepKind::Noop(_) => noop::apply(cx, tx).await,
        }
    }
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
    let spec =
        |kind: StepKind, deps: &[String]| StepSpec { name: kind.name(), depends_on: deps.to_vec() };
    let reassign: Vec<StepKind> =
        transfer.item_types().into_iter().map(StepKind::Reassign).collect();

    let deactivation = |specs: &mut Vec<StepSpec>| {
        let blocked = [StepKind::BlockLogin.name()];
        specs.push(spec(StepKind::BlockLogin, &[]));
        for kind in StepKind::AFTER_LOGIN_BLOCKED.iter().chain(&reassign) {
            specs.push(spec(*kind, &blocked));
        }
        let all_before: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        specs.push(spec(StepKind::FinishDeactivation, &all_before));
    };

    let mut specs = Vec::new();
    match action {
        Action::Deactivate => deactivation(&mut specs),
        Action::DeactivateAndDelete => {
            deactivation(&mut specs);
            specs.push(spec(StepKind::ErasePersonalData, &[StepKind::FinishDeactivation.name()]));
        }
        Action::Delete => {
            for kind in &reassign {
                specs.push(spec(*kind, &[]));
            }
            let before: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
            specs.push(spec(StepKind::ErasePersonalData, &before));
        }
        Action::Redact => specs.push(spec(StepKind::RedactProfile, &[])),
        Action::Reactivate => specs.push(spec(StepKind::ReactivateUser, &[])),
    }
    specs
}

/// Action parameters stored with the run. Only ids and flags, except a redaction's new
/// display name, which the redaction step removes from the ledger once applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_picture: bool,
}

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
    /// Work that must follow the commit, such as the punctual Redis task of a purge.
    pub after_commit: Vec<AfterCommit>,
}

impl Finished {
    pub fn with_counts(counts: Value) -> Progress {
        Progress::Finished(Finished { counts, done: 1, total: 1, after_commit: Vec::new() })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCommit {
    PurgeScheduled { purge_id: i64, due_at: DateTime<Utc> },
}

/// A failed step says at its source whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Connection lost, deadlock, serialization failure, timeout: worth another attempt.
    #[error("{code}: {message}")]
    Retryable { code: String, message: String },
    /// A rule that cannot start holding by waiting: the step is dead at once.
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
}

impl StepError {
    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        StepError::Permanent { code: code.into(), message: message.into() }
    }

    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        StepError::Retryable { code: code.into(), message: message.into() }
    }

    pub fn code(&self) -> &str {
        match self {
            StepError::Retryable { code, .. } | StepError::Permanent { code, .. } => code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StepError::Retryable { message, .. } | StepError::Permanent { message, .. } => message,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, StepError::Retryable { .. })
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
        assert_eq!(StepKind::from_name("noop_7"), Some(StepKind::Noop(7)));
        assert_eq!(StepKind::Noop(7).name(), "noop_7");
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
}
