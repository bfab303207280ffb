//! A company's offboarding policy: what the runs an identity provider starts do — the
//! default transfer plan, the action a SCIM deactivation takes and the one a SCIM DELETE
//! takes. Parsed from the API's JSON like a request; the rules that need the store (targets
//! are active users of the company, none of them leaving) are checked by the API.
//!
//! New settings are new fields with a default (see [`FIELDS`] and [`OffboardingPolicy::parse`]),
//! so a stored policy keeps meaning what it meant.

use serde_json::{Map, Value, json};

use super::{Action, FieldError, TransferPlan, UserId};

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

    /// The action a DELETE starts for a user in `status` (`active` or `deactivated`), or
    /// `None` when the policy does not delete a user in that status.
    pub fn action_for(self, status: &str) -> Option<Action> {
        match (self, status) {
            (_, "deactivated") => Some(Action::Delete),
            (OnDelete::DeactivateAndDelete, "active") => Some(Action::DeactivateAndDelete),
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

/// The fields a policy body may hold (`actor` is shown, never set).
const FIELDS: &[&str] = &[
    "transfer",
    "on_deactivate",
    "on_delete",
    "delete_after_days",
    "require_approval",
    "approval_ttl_hours",
];

impl OffboardingPolicy {
    /// Parses a policy body; a field left out keeps its default. Errors name the field.
    pub fn parse(body: &Value) -> Result<Self, FieldError> {
        let object =
            body.as_object().ok_or_else(|| FieldError::new("body", "must be a JSON object"))?;
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            let message = if unknown == "actor" {
                "is the company's service actor and cannot be set"
            } else {
                "unknown field"
            };
            return Err(FieldError::new(unknown.as_str(), message));
        }
        let mut policy = Self::default();
        match object.get("transfer") {
            None | Some(Value::Null) => {}
            Some(value) => {
                let plan = TransferPlan::parse(value)?;
                policy.transfer = plan.resolve(None).map_err(|e| {
                    FieldError::new(e.field, "a policy cannot name a replacement user")
                })?;
            }
        }
        match text(object, "on_deactivate")? {
            None | Some("deactivate") => {}
            Some(_) => {
                return Err(FieldError::new("on_deactivate", "must be \"deactivate\""));
            }
        }
        policy.on_delete = match text(object, "on_delete")? {
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
        policy.delete_after_days = match object.get("delete_after_days") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|d| (1..=u64::from(MAX_DELETE_AFTER_DAYS)).contains(d))
                    .map(|d| d as u16)
                    .ok_or_else(|| {
                        FieldError::new(
                            "delete_after_days",
                            format!("must be a whole number from 1 to {MAX_DELETE_AFTER_DAYS}"),
                        )
                    })?,
            ),
        };
        policy.require_approval = match object.get("require_approval") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(FieldError::new("require_approval", "must be true or false")),
        };
        policy.approval_ttl_hours = match object.get("approval_ttl_hours") {
            None | Some(Value::Null) => DEFAULT_APPROVAL_TTL_HOURS,
            Some(v) => v
                .as_u64()
                .filter(|h| (1..=u64::from(MAX_APPROVAL_TTL_HOURS)).contains(h))
                .map(|h| h as u16)
                .ok_or_else(|| {
                    FieldError::new(
                        "approval_ttl_hours",
                        format!("must be a whole number from 1 to {MAX_APPROVAL_TTL_HOURS}"),
                    )
                })?,
        };
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

fn text<'a>(object: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, FieldError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(FieldError::new(field, "must be a string")),
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
        assert_eq!(OnDelete::Delete.action_for("active"), None);
        assert_eq!(OnDelete::Delete.action_for("deactivated"), Some(Action::Delete));
        assert_eq!(
            OnDelete::DeactivateAndDelete.action_for("active"),
            Some(Action::DeactivateAndDelete)
        );
        assert_eq!(OnDelete::DeactivateAndDelete.action_for("deactivated"), Some(Action::Delete));
    }
}
