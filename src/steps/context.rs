//! What a step is given: its run (ids, action, plan, parameters), where the step stands,
//! and the settings steps read.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    config::StepSettings,
    domain::{Action, CompanyId, Service, TransferPlan, UserId},
};

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
    /// What started the run on someone's behalf: an identity provider (its actor is then
    /// the company's service actor) or the company's policy; absent for the host's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<Service>,
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
