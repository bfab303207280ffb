//! The shapes the API sends and accepts, typed so that `/openapi.json` is generated from the
//! same structs the handlers serialize. Free-form parts (a step's counts, a receipt, a
//! preview of belongings) stay JSON objects.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    domain::{Action, Actor, RunStatus, StepStatus},
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
    /// `user:<actor_user_id>`, or `service:scim` for a run an identity provider started,
    /// `service:policy` for a deletion the company's policy scheduled.
    pub requested_by: Actor,
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
    /// `ok` when PostgreSQL and Redis both answer.
    pub status: Reachability,
    pub postgres: Reachability,
    pub redis: Reachability,
}

/// Whether a store answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    Ok,
    Down,
}

impl From<bool> for Reachability {
    fn from(answers: bool) -> Self {
        if answers { Reachability::Ok } else { Reachability::Down }
    }
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
            requested_by: run.requested_by,
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
    pub requested_by: Actor,
}
