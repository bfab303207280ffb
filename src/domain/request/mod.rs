//! An offboarding request: read by serde into [`OffboardingRequestBody`] (the API's request
//! type, unknown fields refused), then checked into an [`OffboardingRequest`], whose types
//! cannot hold an invalid value. Only the shape is checked here; rules that need the CRM
//! store (targets are active users of the company, the company keeps an admin, …) are
//! checked by the API in its transaction.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    Action, CompanyId, FieldError, UserId,
    transfer::{PlanBody, Recipient, RuleBody, TransferPlan, string_enum},
    wire::{self, Object},
};

/// A user created by "delete and replace", who inherits the seat and can be a target.
#[derive(Clone, PartialEq, Eq)]
pub struct Replacement {
    pub first_name: String,
    pub last_name: String,
    /// Lower-cased; unique in the company (checked against the store).
    pub email: String,
}

super::debug_without_personal_data!(Replacement {});

/// What a redaction changes on a deactivated user.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Redaction {
    pub display_name: Option<String>,
    pub remove_picture: bool,
}

super::debug_without_personal_data!(Redaction { remove_picture });

/// Who started a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Origin {
    /// The host, through the API, as `actor_user_id`.
    #[default]
    Host,
    /// An identity provider, through SCIM; the actor is the company's service actor.
    IdentityProvider,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffboardingRequest {
    pub company_id: CompanyId,
    pub user_id: UserId,
    pub actor_user_id: UserId,
    pub action: Action,
    pub transfer: TransferPlan<Recipient>,
    pub replacement: Option<Replacement>,
    pub redaction: Option<Redaction>,
    pub origin: Origin,
    /// When the run starts: `None` at once; otherwise the run is `scheduled` until then
    /// (in the future, at most [`MAX_SCHEDULE_AHEAD_DAYS`] ahead).
    pub effective_at: Option<DateTime<Utc>>,
}

/// How far ahead a run may be scheduled.
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 366;

/// `POST /v1/offboardings` (and each row of a batch), as serde reads it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateOffboarding, example = json!({
    "company_id": 1, "user_id": 7, "actor_user_id": 2, "action": "deactivate",
    "transfer": {"default": {"mode": "single", "targets": [{"user_id": 3}]},
                 "deals": {"mode": "ratio", "scope": "all",
                           "targets": [{"user_id": 4, "weight": 2}, {"user_id": 5, "weight": 1}]}}
}))]
pub struct OffboardingRequestBody {
    #[serde(deserialize_with = "wire::positive_id")]
    #[schema(minimum = 1)]
    pub company_id: i64,
    /// The user to offboard.
    #[serde(deserialize_with = "wire::positive_id")]
    #[schema(minimum = 1)]
    pub user_id: i64,
    /// Who asks: an active user of the company with account-settings access.
    #[serde(deserialize_with = "wire::positive_id")]
    #[schema(minimum = 1)]
    pub actor_user_id: i64,
    #[serde(deserialize_with = "requested_action")]
    #[schema(schema_with = requestable_actions)]
    pub action: Action,
    /// Keyed by `default` or an item type: leads, deals, contacts, products, activities,
    /// projects, project_tasks. A type's own rule wins over `default`.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, RuleBody>>)]
    pub transfer: Option<PlanBody>,
    /// Delete and replace: a new user who inherits the seat; name it as a target with
    /// `{"replacement": true}`.
    #[serde(default, deserialize_with = "wire::optional_object")]
    pub replacement: Option<ReplacementBody>,
    /// `redact` only: the new display name.
    #[serde(default, deserialize_with = "wire::optional_string")]
    #[schema(max_length = 100)]
    pub display_name: Option<String>,
    /// `redact` only: remove the profile picture.
    #[serde(default, deserialize_with = "wire::optional_flag")]
    pub remove_picture: Option<bool>,
    /// Start the run at this time (RFC 3339, in the future, at most 366 days ahead)
    /// instead of now: until then it is `scheduled` and counts as the user's active run.
    /// Not with `replacement`.
    #[serde(default, deserialize_with = "wire::optional_timestamp")]
    pub effective_at: Option<DateTime<Utc>>,
}

super::debug_without_personal_data!(OffboardingRequestBody {
    company_id,
    user_id,
    actor_user_id,
    action,
    remove_picture,
    effective_at,
});

/// `replacement`: the new user's name and email.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplacementBody {
    #[serde(deserialize_with = "wire::string")]
    pub first_name: String,
    #[serde(deserialize_with = "wire::string")]
    pub last_name: String,
    #[serde(deserialize_with = "wire::string")]
    pub email: String,
}

super::debug_without_personal_data!(ReplacementBody {});

impl Object<'_> for ReplacementBody {
    const NOT_AN_OBJECT: &'static str = "must be an object with first_name, last_name and email";
}

/// An action a host may ask for here (an undo is asked for on the run it undoes).
fn requested_action<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
    let action: Action = wire::parsed(d)?;
    if !action.requestable() {
        return Err(D::Error::custom(
            "an undo is asked for on the run it undoes: POST /v1/offboardings/{id}/undo-transfer",
        ));
    }
    Ok(action)
}

fn requestable_actions() -> utoipa::openapi::Object {
    let names: Vec<&str> =
        Action::ALL.into_iter().filter(|a| a.requestable()).map(Action::as_str).collect();
    string_enum(&names)
}

impl OffboardingRequest {
    pub fn parse(body: &Value) -> Result<Self, FieldError> {
        Self::parse_at(body, Utc::now())
    }

    /// [`OffboardingRequest::parse`], with `now` the time `effective_at` must be after.
    pub fn parse_at(body: &Value, now: DateTime<Utc>) -> Result<Self, FieldError> {
        Self::from_body(wire::from_json(body, "must be a JSON object")?, now)
    }

    /// The request a body asks for, checked (see [`OffboardingRequest::parse_at`]).
    pub fn from_body(body: OffboardingRequestBody, now: DateTime<Utc>) -> Result<Self, FieldError> {
        let action = body.action;
        let not_accepted =
            |field: &str| FieldError::new(field, format!("is not accepted for action {action}"));
        let transfer = match body.transfer {
            None => TransferPlan::default(),
            Some(plan) if action.accepts_transfer() => plan.validate()?,
            Some(_) => return Err(not_accepted("transfer")),
        };
        let replacement = match body.replacement {
            None => None,
            Some(replacement) if action.accepts_transfer() => Some(replacement.validate()?),
            Some(_) => return Err(not_accepted("replacement")),
        };

        let redaction = if action == Action::Redact {
            let display_name =
                body.display_name.map(|s| bounded_text(&s, "display_name", 100)).transpose()?;
            let remove_picture = body.remove_picture.unwrap_or(false);
            if display_name.is_none() && !remove_picture {
                return Err(FieldError::new(
                    "display_name",
                    "redact needs a display_name, remove_picture: true, or both",
                ));
            }
            Some(Redaction { display_name, remove_picture })
        } else {
            let given = [
                ("display_name", body.display_name.is_some()),
                ("remove_picture", body.remove_picture.is_some()),
            ];
            if let Some((field, _)) = given.into_iter().find(|(_, given)| *given) {
                return Err(FieldError::new(field, "is only accepted for action redact"));
            }
            None
        };

        let effective_at = body.effective_at.map(|at| check_effective_at(at, now)).transpose()?;
        if effective_at.is_some() && replacement.is_some() {
            return Err(FieldError::new(
                "effective_at",
                "a scheduled run cannot create a replacement user; create the user first and name them as a target",
            ));
        }

        Ok(Self {
            company_id: CompanyId::new(body.company_id).expect("positive"),
            user_id: UserId::new(body.user_id).expect("positive"),
            actor_user_id: UserId::new(body.actor_user_id).expect("positive"),
            action,
            transfer,
            replacement,
            redaction,
            origin: Origin::Host,
            effective_at,
        })
    }
}

/// An `effective_at`: after `now` and at most [`MAX_SCHEDULE_AHEAD_DAYS`] ahead (a
/// reschedule checks it the same way).
pub fn check_effective_at(
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, FieldError> {
    if at <= now {
        return Err(FieldError::new("effective_at", "must be in the future"));
    }
    if at > now + Duration::days(MAX_SCHEDULE_AHEAD_DAYS) {
        return Err(FieldError::new(
            "effective_at",
            format!("must be at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead"),
        ));
    }
    Ok(at)
}

fn bounded_text(raw: &str, field: &str, max_chars: usize) -> Result<String, FieldError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > max_chars {
        return Err(FieldError::new(field, format!("must be at most {max_chars} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(trimmed.to_string())
}

impl ReplacementBody {
    fn validate(self) -> Result<Replacement, FieldError> {
        let first_name = bounded_text(&self.first_name, "replacement.first_name", 100)?;
        let last_name = bounded_text(&self.last_name, "replacement.last_name", 100)?;
        let email = bounded_text(&self.email, "replacement.email", 254)?.to_lowercase();
        if !looks_like_email(&email) {
            return Err(FieldError::new("replacement.email", "is not an email address"));
        }
        Ok(Replacement { first_name, last_name, email })
    }
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests;
