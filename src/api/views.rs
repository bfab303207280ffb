//! The shapes the API sends and accepts, typed so that `/openapi.json` is generated from the
//! same structs the handlers serialize. Free-form parts (a step's counts, a receipt, a
//! preview of belongings) stay JSON objects.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    domain::{Action, RunStatus, StepStatus},
    ledger::runs::{EventRow, PurgeRow, RunDetail, RunSummary},
};

/// Every error: a stable `code` to branch on, a message for people, and the field at fault
/// when there is one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    #[schema(example = "invalid_target")]
    pub code: String,
    #[schema(example = "transfer.deals.targets[1].user_id: user 17 is deactivated")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// The body of `POST /v1/offboardings`. The handler reads it field by field so that each
/// refusal names its field; this struct is the contract.
#[derive(ToSchema)]
#[schema(example = json!({
    "company_id": 1, "user_id": 3, "actor_user_id": 1, "action": "deactivate",
    "transfer": {"default": {"mode": "single", "targets": [{"user_id": 4}]},
                 "deals": {"mode": "ratio", "scope": "all",
                           "targets": [{"user_id": 4, "weight": 2}, {"user_id": 5, "weight": 1}]}}
}))]
#[allow(dead_code)]
pub struct CreateOffboarding {
    #[schema(minimum = 1)]
    pub company_id: i64,
    /// The user to offboard.
    #[schema(minimum = 1)]
    pub user_id: i64,
    /// Who asks: an active user of the company with account-settings access.
    #[schema(minimum = 1)]
    pub actor_user_id: i64,
    pub action: ActionName,
    /// Keyed by `default` or an item type: leads, deals, contacts, products, activities,
    /// projects, project_tasks. A type's own rule wins over `default`.
    pub transfer: Option<BTreeMap<String, TransferRuleBody>>,
    /// Delete and replace: a new user who inherits the seat; name it as a target with
    /// `{"replacement": true}`.
    pub replacement: Option<ReplacementBody>,
    /// `redact` only: the new display name.
    #[schema(max_length = 100)]
    pub display_name: Option<String>,
    /// `redact` only: remove the profile picture.
    pub remove_picture: Option<bool>,
    /// Start the run at this time (RFC 3339, in the future, at most 366 days ahead)
    /// instead of now: until then it is `scheduled` and counts as the user's active run.
    /// Not with `replacement`.
    pub effective_at: Option<DateTime<Utc>>,
}

/// `PATCH /v1/offboardings/{id}`: move a scheduled run.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RescheduleBody {
    /// The new start (RFC 3339, in the future, at most 366 days ahead).
    pub effective_at: DateTime<Utc>,
}

crate::domain::debug_without_personal_data!(CreateOffboarding {
    company_id,
    user_id,
    actor_user_id,
    action,
    transfer,
    replacement,
    remove_picture,
});

#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ActionName {
    Deactivate,
    Delete,
    DeactivateAndDelete,
    Redact,
    Reactivate,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct TransferRuleBody {
    pub mode: TransferMode,
    /// `open` (default) or `all`.
    pub scope: Option<TransferScope>,
    #[schema(min_items = 1, max_items = 100)]
    pub targets: Vec<TargetBody>,
}

#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TransferMode {
    Single,
    Ratio,
    Hardcoded,
}

#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TransferScope {
    Open,
    All,
}

/// A target: `user_id`, or `replacement: true`; with `weight` (ratio) or `count` (hardcoded).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct TargetBody {
    #[schema(minimum = 1)]
    pub user_id: Option<i64>,
    pub replacement: Option<bool>,
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub weight: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub count: Option<i64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReplacementBody {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
}

crate::domain::debug_without_personal_data!(ReplacementBody {});

/// The body of a dry run.
#[derive(Debug, ToSchema)]
#[schema(example = json!({"transfer": {"deals": {"mode": "ratio",
    "targets": [{"user_id": 4, "weight": 2}, {"user_id": 5, "weight": 1}]}}}))]
#[allow(dead_code)]
pub struct DryRunBody {
    pub transfer: BTreeMap<String, TransferRuleBody>,
}

/// `202` for a new run, and for a replay of the same request with the same `Idempotency-Key`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    /// `queued`, or `scheduled` when the request had an `effective_at`.
    pub status: RunStatus,
    /// When a scheduled run starts.
    pub effective_at: Option<DateTime<Utc>>,
    /// True when the `Idempotency-Key` matched an earlier request: this is its run.
    pub replayed: bool,
}

/// A run with its steps, receipt, purge and history.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    pub company_id: i64,
    pub user_id: i64,
    pub action: Action,
    /// queued, running, canceling (stopping: still the user's active run), succeeded,
    /// failed or canceled (and, with scheduling and approval, scheduled,
    /// awaiting_approval, expired, rejected).
    pub status: RunStatus,
    pub actor_user_id: i64,
    /// `user:<actor_user_id>`, or `service:scim` for a run an identity provider started.
    pub requested_by: String,
    /// When a scheduled run starts (or started); null for a run that started at once.
    pub effective_at: Option<DateTime<Utc>>,
    /// While `awaiting_approval`: until when a second admin may approve it (then it is
    /// `expired`).
    pub approval_expires_at: Option<DateTime<Utc>>,
    /// The admin who approved or rejected the run.
    pub approver_user_id: Option<i64>,
    /// The batch (`POST /v1/offboarding-batches`) the run came from.
    pub batch_id: Option<Uuid>,
    /// The validated transfer plan (user ids only).
    #[schema(value_type = Object)]
    pub transfer: Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: RunProgress,
    pub error: Option<ErrorCodeView>,
    pub steps: Vec<StepView>,
    /// What was done, counts per step, who asked and when; set once the run is finished.
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<Value>,
    pub private_email_purge: Option<PurgeRow>,
    pub history: Vec<EventRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunProgress {
    pub steps_total: i32,
    pub steps_succeeded: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorCodeView {
    pub code: String,
    pub message: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub name: String,
    /// pending, ready, queued, running, succeeded, skipped, dead or canceled.
    pub status: StepStatus,
    pub depends_on: Vec<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub done: i64,
    pub total: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When a ready step may start (a retry's scheduled time).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<ErrorCodeView>,
    /// What the step changed, once it succeeded.
    #[schema(value_type = Option<Object>)]
    pub counts: Option<Value>,
    /// The step's calls to outside systems (grant revocations, vendors' uninstall
    /// callbacks): destination host, status, attempts, last code. Empty for other steps.
    pub calls: Vec<crate::ledger::calls::CallView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub id: Uuid,
    pub status: RunStatus,
    pub steps_retried: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Canceled {
    pub id: Uuid,
    /// `canceled` when no step was running; `canceling` while running steps stop at their
    /// next batch boundary (the run then turns `canceled` by itself).
    pub status: RunStatus,
    /// Steps that had not started (or were dead) and never will.
    pub steps_canceled: i64,
    /// Steps still running when the cancel came; each stops at its next batch boundary.
    pub steps_running: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// ok or down.
    pub status: String,
    pub postgres: String,
    pub redis: String,
}

impl From<&RunDetail> for RunView {
    fn from(detail: &RunDetail) -> Self {
        let run = &detail.run;
        let steps: Vec<StepView> = detail
            .steps
            .iter()
            .map(|s| StepView {
                name: s.name.clone(),
                status: s.status,
                depends_on: s.depends_on.clone(),
                attempts: s.attempts,
                max_attempts: s.max_attempts,
                done: s.done,
                total: s.total,
                started_at: s.started_at,
                finished_at: s.finished_at,
                next_attempt_at: (s.status == StepStatus::Ready).then_some(s.next_attempt_at),
                last_error: s.last_error_code.as_ref().map(|code| ErrorCodeView {
                    code: code.clone(),
                    message: s.last_error_message.clone(),
                }),
                counts: s.result.clone(),
                calls: detail.calls.iter().filter(|c| c.step == s.name).cloned().collect(),
            })
            .collect();
        let steps_succeeded = detail.steps.iter().filter(|s| s.status.is_done()).count() as i64;
        RunView {
            id: run.id,
            company_id: run.company_id,
            user_id: run.user_id,
            action: run.action,
            status: run.status,
            actor_user_id: run.actor_user_id,
            requested_by: run.requested_by.clone(),
            effective_at: run.effective_at,
            approval_expires_at: run.approval_expires_at,
            approver_user_id: run.approver_user_id,
            batch_id: run.batch_id,
            transfer: run.plan.clone(),
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            progress: RunProgress { steps_total: run.steps_total, steps_succeeded },
            error: run.error_code.as_ref().map(|code| ErrorCodeView {
                code: code.clone(),
                message: run.error_message.clone(),
            }),
            steps,
            receipt: run.receipt.clone(),
            private_email_purge: detail.purge.clone(),
            history: detail.events.clone(),
        }
    }
}

/// The body of `PUT /v1/companies/{company_id}/offboarding-policy`; a field left out
/// takes its default.
#[derive(Debug, ToSchema)]
#[schema(example = json!({
    "transfer": {"default": {"mode": "single", "targets": [{"user_id": 1}]}},
    "on_deactivate": "deactivate",
    "on_delete": "deactivate_and_delete"
}))]
#[allow(dead_code)]
pub struct PolicyBody {
    /// The default transfer plan of runs an identity provider starts, in the shape of a
    /// request's `transfer` (no replacement). Default: nothing is transferred.
    pub transfer: Option<BTreeMap<String, TransferRuleBody>>,
    /// What a SCIM deactivation (`active: false`) does: `deactivate` (the default).
    pub on_deactivate: Option<OnDeactivateName>,
    /// What a SCIM DELETE does: `delete` (only a user already deactivated) or
    /// `deactivate_and_delete` (the default).
    pub on_delete: Option<OnDeleteName>,
    /// Delete a user this many days after a deactivation run deactivated them, as a
    /// scheduled delete run (cancel or reschedule it like any). Default: never.
    #[schema(minimum = 1, maximum = 365)]
    pub delete_after_days: Option<u16>,
    /// `delete` and `deactivate_and_delete` runs (from the API, SCIM or a policy) wait in
    /// `awaiting_approval` until a second admin of the company approves them. Default
    /// false.
    pub require_approval: Option<bool>,
    /// Hours a run awaits approval before it is `expired` (counted from its
    /// `effective_at` when it is scheduled later). Default 168 (7 days).
    #[schema(minimum = 1, maximum = 2160)]
    pub approval_ttl_hours: Option<u16>,
}

/// `POST /v1/offboardings/{id}/approve` and `/reject`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ApprovalBody {
    /// The deciding admin: an active admin of the run's company; for an approval, not
    /// the user who asked for the run.
    #[schema(minimum = 1)]
    pub approver_user_id: i64,
}

/// What an approval or rejection did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decided {
    pub id: Uuid,
    /// `queued` (approved, starting), `scheduled` (approved, waiting for its
    /// `effective_at`), `failed` (approved, but its plan no longer held: `error_code`) or
    /// `rejected`.
    pub status: RunStatus,
    pub approver_user_id: i64,
    pub error_code: Option<String>,
}

#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OnDeactivateName {
    Deactivate,
}

#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OnDeleteName {
    Delete,
    DeactivateAndDelete,
}

/// A company's offboarding policy and the service actor its runs are recorded under.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub company_id: i64,
    /// The default transfer plan (user ids only).
    #[schema(value_type = Object)]
    pub transfer: Value,
    pub on_deactivate: String,
    pub on_delete: String,
    /// Days after a deactivation that the user is deleted; null: never.
    pub delete_after_days: Option<u16>,
    /// `delete` and `deactivate_and_delete` runs wait in `awaiting_approval` for a second
    /// admin.
    pub require_approval: bool,
    /// How long a run awaits approval before it is `expired`.
    pub approval_ttl_hours: u16,
    pub actor: ServiceActorView,
    /// When the policy was last set; null while the company has the defaults.
    pub updated_at: Option<DateTime<Utc>>,
    /// `token:company-<id>` or `token:operator`; null while the company has the defaults.
    pub updated_by: Option<String>,
}

/// The actor of the runs an identity provider starts: the company's service actor, a CRM
/// user without a seat or a name of a person.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceActorView {
    /// Always `service`.
    pub kind: String,
    /// The service actor's user id: the runs' `actor_user_id`.
    pub user_id: i64,
    /// How runs and their history name it: `service:scim`.
    pub requested_by: String,
}
