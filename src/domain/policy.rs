//! A company's offboarding policy: what the runs an identity provider starts do — the
//! default transfer plan, the action a SCIM deactivation takes and the one a SCIM DELETE
//! takes. Parsed from the API's JSON like a request; the rules that need the store (targets
//! are active users of the company, none of them leaving) are checked by the API.
//!
//! New settings are new fields with a default (see [`PolicyBody`] and [`OffboardingPolicy::parse`]),
//! so a stored policy keeps meaning what it meant.

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{
    Action, FieldError, TransferPlan, UserId, UserStatus,
    transfer::{PlanBody, RuleBody, string_enum},
    wire,
};

/// What a SCIM `DELETE /Users/{id}` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    /// Delete a user the identity provider deactivated before (Entra's hard delete,
    /// 30 days after its soft delete); an active user is refused.
    Delete,
    /// Deactivate and delete in one run; a user already deactivated is deleted.
    DeactivateAndDelete,
}

impl OnDelete {
    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::DeactivateAndDelete => "deactivate_and_delete",
        }
    }

    /// The action a DELETE starts for a user in `status`, or `None` when the policy does
    /// not delete a user in that status.
    pub fn action_for(self, status: UserStatus) -> Option<Action> {
        match (self, status) {
            (_, UserStatus::Deactivated) => Some(Action::Delete),
            (OnDelete::DeactivateAndDelete, UserStatus::Active) => {
                Some(Action::DeactivateAndDelete)
            }
            _ => None,
        }
    }
}

/// What a SCIM deactivation (`active: false`) does. One choice today; a policy says it
/// so that the stored row names what runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDeactivate {
    Deactivate,
}

impl OnDeactivate {
    pub fn as_str(self) -> &'static str {
        match self {
            OnDeactivate::Deactivate => "deactivate",
        }
    }

    pub fn action(self) -> Action {
        match self {
            OnDeactivate::Deactivate => Action::Deactivate,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffboardingPolicy {
    /// The default transfer plan of runs an identity provider starts.
    pub transfer: TransferPlan<UserId>,
    pub on_deactivate: OnDeactivate,
    pub on_delete: OnDelete,
    /// A user a deactivation run deactivated is deleted this many days after it finished,
    /// by a scheduled delete run; `None`: never.
    pub delete_after_days: Option<u16>,
    /// `delete` and `deactivate_and_delete` runs wait for a second admin's approval.
    pub require_approval: bool,
    /// Hours a run awaits approval before it expires.
    pub approval_ttl_hours: u16,
}

/// The default approval window: 7 days.
pub const DEFAULT_APPROVAL_TTL_HOURS: u16 = 168;
/// The longest approval window: 90 days.
pub const MAX_APPROVAL_TTL_HOURS: u16 = 2160;

/// The longest `delete_after_days` a policy may set.
pub const MAX_DELETE_AFTER_DAYS: u16 = 365;

impl Default for OffboardingPolicy {
    /// A company without a policy: nothing is transferred, a deactivation deactivates and
    /// a DELETE deactivates (if needed) and deletes.
    fn default() -> Self {
        Self {
            transfer: TransferPlan::default(),
            on_deactivate: OnDeactivate::Deactivate,
            on_delete: OnDelete::DeactivateAndDelete,
            delete_after_days: None,
            require_approval: false,
            approval_ttl_hours: DEFAULT_APPROVAL_TTL_HOURS,
        }
    }
}

/// `PUT /v1/companies/{company_id}/offboarding-policy`, as serde reads it; a field left out
/// keeps its default.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PolicyBody, example = json!({
    "transfer": {"default": {"mode": "single", "targets": [{"user_id": 3}]}},
    "on_deactivate": "deactivate",
    "on_delete": "deactivate_and_delete"
}))]
pub struct PolicyBody {
    /// The default transfer plan of runs an identity provider starts, in the shape of a
    /// request's `transfer` (no replacement). Default: nothing is transferred.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, RuleBody>>)]
    pub transfer: Option<PlanBody>,
    /// What a SCIM deactivation (`active: false`) does: `deactivate` (the default).
    #[serde(default, deserialize_with = "wire::optional_string")]
    #[schema(schema_with = on_deactivate_names)]
    pub on_deactivate: Option<String>,
    /// What a SCIM DELETE does: `delete` (only a user already deactivated) or
    /// `deactivate_and_delete` (the default).
    #[serde(default, deserialize_with = "wire::optional_string")]
    #[schema(schema_with = on_delete_names)]
    pub on_delete: Option<String>,
    /// Delete a user this many days after a deactivation run deactivated them, as a
    /// scheduled delete run (cancel or reschedule it like any). Default: never.
    #[serde(default, deserialize_with = "days")]
    #[schema(minimum = 1, maximum = 365)]
    pub delete_after_days: Option<u16>,
    /// `delete` and `deactivate_and_delete` runs (from the API, SCIM or a policy) wait in
    /// `awaiting_approval` until a second admin of the company approves them. Default
    /// false.
    #[serde(default, deserialize_with = "wire::optional_flag")]
    pub require_approval: Option<bool>,
    /// Hours a run awaits approval before it is `expired` (counted from its
    /// `effective_at` when it is scheduled later). Default 168 (7 days).
    #[serde(default, deserialize_with = "hours")]
    #[schema(minimum = 1, maximum = 2160)]
    pub approval_ttl_hours: Option<u16>,
    /// Shown with the policy, never set.
    #[serde(default, deserialize_with = "refuse_actor")]
    #[schema(ignore)]
    pub actor: Option<()>,
}

fn on_deactivate_names() -> utoipa::openapi::Object {
    string_enum(&[OnDeactivate::Deactivate.as_str()])
}

fn on_delete_names() -> utoipa::openapi::Object {
    string_enum(&[OnDelete::Delete.as_str(), OnDelete::DeactivateAndDelete.as_str()])
}

/// A whole number from 1 to `max`, where `null` or absent is `None`.
fn bounded<'de, D: Deserializer<'de>>(d: D, max: u16) -> Result<Option<u16>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .filter(|n| (1..=u64::from(max)).contains(n))
            .map(|n| Some(n as u16))
            .ok_or_else(|| D::Error::custom(format!("must be a whole number from 1 to {max}"))),
    }
}

fn days<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    bounded(d, MAX_DELETE_AFTER_DAYS)
}

fn hours<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    bounded(d, MAX_APPROVAL_TTL_HOURS)
}

fn refuse_actor<'de, D: Deserializer<'de>>(_: D) -> Result<Option<()>, D::Error> {
    Err(D::Error::custom("is the company's service actor and cannot be set"))
}

impl OffboardingPolicy {
    /// Parses a policy body (or the stored form); a field left out keeps its default.
    /// Errors name the field.
    pub fn parse(body: &Value) -> Result<Self, FieldError> {
        Self::from_body(wire::from_json(body, "must be a JSON object")?)
    }

    /// The policy a body asks for, checked.
    pub fn from_body(body: PolicyBody) -> Result<Self, FieldError> {
        let mut policy = Self::default();
        if let Some(plan) = body.transfer {
            policy.transfer = plan
                .validate()?
                .resolve(None)
                .map_err(|e| FieldError::new(e.field, "a policy cannot name a replacement user"))?;
        }
        match body.on_deactivate.as_deref() {
            None | Some("deactivate") => {}
            Some(_) => {
                return Err(FieldError::new("on_deactivate", "must be \"deactivate\""));
            }
        }
        policy.on_delete = match body.on_delete.as_deref() {
            None => policy.on_delete,
            Some("delete") => OnDelete::Delete,
            Some("deactivate_and_delete") => OnDelete::DeactivateAndDelete,
            Some(_) => {
                return Err(FieldError::new(
                    "on_delete",
                    "must be \"delete\" or \"deactivate_and_delete\"",
                ));
            }
        };
        policy.delete_after_days = body.delete_after_days;
        policy.require_approval = body.require_approval.unwrap_or(false);
        policy.approval_ttl_hours = body.approval_ttl_hours.unwrap_or(DEFAULT_APPROVAL_TTL_HOURS);
        Ok(policy)
    }

    /// The stored and shown form of the settings (user ids only).
    pub fn to_json(&self) -> Value {
        json!({
            "transfer": self.transfer.to_json(),
            "on_deactivate": self.on_deactivate.as_str(),
            "on_delete": self.on_delete.as_str(),
            "delete_after_days": self.delete_after_days,
            "require_approval": self.require_approval,
            "approval_ttl_hours": self.approval_ttl_hours,
        })
    }

    /// The users the default plan names, each with the field that names it first.
    pub fn named_targets(&self) -> Vec<(i64, String)> {
        self.transfer.targets_with_fields().into_iter().map(|(id, f)| (id.get(), f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_empty_policy_is_the_default() {
        assert_eq!(OffboardingPolicy::parse(&json!({})).unwrap(), OffboardingPolicy::default());
    }

    #[test]
    fn a_policy_round_trips_through_its_stored_form() {
        let policy = OffboardingPolicy::parse(&json!({
            "transfer": {"default": {"mode": "ratio", "targets": [{"user_id": 3, "weight": 2}, {"user_id": 4, "weight": 1}]}},
            "on_delete": "delete",
            "delete_after_days": 30,
            "require_approval": true,
            "approval_ttl_hours": 48,
        }))
        .unwrap();
        assert!(policy.require_approval);
        assert_eq!(policy.approval_ttl_hours, 48);
        assert_eq!(policy.delete_after_days, Some(30));
        assert_eq!(policy.on_delete, OnDelete::Delete);
        assert_eq!(OffboardingPolicy::parse(&policy.to_json()).unwrap(), policy);
        assert_eq!(policy.named_targets().len(), 2);
    }

    #[test]
    fn shape_errors_name_the_field() {
        let field = |body: Value| OffboardingPolicy::parse(&body).unwrap_err().field;
        assert_eq!(field(json!({"on_delete": "erase"})), "on_delete");
        assert_eq!(field(json!({"on_deactivate": "delete"})), "on_deactivate");
        assert_eq!(field(json!({"actor": {"user_id": 3}})), "actor");
        assert_eq!(field(json!({"colour": 1})), "colour");
        assert_eq!(field(json!({"delete_after_days": 0})), "delete_after_days");
        assert_eq!(field(json!({"delete_after_days": 366})), "delete_after_days");
        assert_eq!(field(json!({"delete_after_days": "30"})), "delete_after_days");
        assert_eq!(field(json!({"require_approval": "yes"})), "require_approval");
        assert_eq!(field(json!({"approval_ttl_hours": 0})), "approval_ttl_hours");
        assert_eq!(field(json!({"approval_ttl_hours": 2161})), "approval_ttl_hours");
        assert_eq!(
            field(json!({"transfer": {"deals": {"mode": "single", "targets": [{"user_id": 0}]}}})),
            "transfer.deals.targets[0].user_id"
        );
        assert_eq!(
            field(
                json!({"transfer": {"default": {"mode": "single", "targets": [{"replacement": true}]}}})
            ),
            "transfer.default.targets[0].replacement"
        );
    }

    #[test]
    fn delete_of_an_active_user_follows_the_policy() {
        assert_eq!(OnDelete::Delete.action_for(UserStatus::Active), None);
        assert_eq!(OnDelete::Delete.action_for(UserStatus::Deactivated), Some(Action::Delete));
        assert_eq!(
            OnDelete::DeactivateAndDelete.action_for(UserStatus::Active),
            Some(Action::DeactivateAndDelete)
        );
        assert_eq!(
            OnDelete::DeactivateAndDelete.action_for(UserStatus::Deactivated),
            Some(Action::Delete)
        );
    }
}
