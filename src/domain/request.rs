//! An offboarding request, parsed from JSON into types that cannot hold an invalid value.
//! Only the shape is checked here; rules that need the CRM store (targets are active users
//! of the company, the company keeps an admin, …) are checked by the API in its transaction.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

use super::{
    Action, CompanyId, FieldError, UserId,
    transfer::{Recipient, TransferPlan},
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

const FIELDS: &[&str] = &[
    "company_id",
    "user_id",
    "actor_user_id",
    "action",
    "transfer",
    "replacement",
    "display_name",
    "remove_picture",
    "effective_at",
];

impl OffboardingRequest {
    pub fn parse(body: &Value) -> Result<Self, FieldError> {
        Self::parse_at(body, Utc::now())
    }

    /// [`OffboardingRequest::parse`], with `now` the time `effective_at` must be after.
    pub fn parse_at(body: &Value, now: DateTime<Utc>) -> Result<Self, FieldError> {
        let object =
            body.as_object().ok_or_else(|| FieldError::new("body", "must be a JSON object"))?;
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(FieldError::new(unknown.as_str(), "unknown field"));
        }
        let company_id = positive_id(object, "company_id").and_then(|id| {
            CompanyId::new(id).ok_or_else(|| FieldError::new("company_id", "must be positive"))
        })?;
        let user_id = user_id_field(object, "user_id")?;
        let actor_user_id = user_id_field(object, "actor_user_id")?;
        let action = match object.get("action") {
            Some(Value::String(s)) => {
                match s.parse::<Action>().map_err(|m| FieldError::new("action", m))? {
                    action if action.requestable() => action,
                    _ => {
                        return Err(FieldError::new(
                            "action",
                            "an undo is asked for on the run it undoes: POST /v1/offboardings/{id}/undo-transfer",
                        ));
                    }
                }
            }
            Some(_) => return Err(FieldError::new("action", "must be a string")),
            None => return Err(FieldError::new("action", "is required")),
        };

        let transfer = match object.get("transfer") {
            None | Some(Value::Null) => TransferPlan::default(),
            Some(value) if action.accepts_transfer() => TransferPlan::parse(value)?,
            Some(_) => {
                return Err(FieldError::new(
                    "transfer",
                    format!("is not accepted for action {action}"),
                ));
            }
        };

        let replacement = match object.get("replacement") {
            None | Some(Value::Null) => None,
            Some(value) if action.accepts_transfer() => Some(parse_replacement(value)?),
            Some(_) => {
                return Err(FieldError::new(
                    "replacement",
                    format!("is not accepted for action {action}"),
                ));
            }
        };

        let redaction = if action == Action::Redact {
            let display_name = match object.get("display_name") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(bounded_text(s, "display_name", 100)?),
                Some(_) => return Err(FieldError::new("display_name", "must be a string")),
            };
            let remove_picture = match object.get("remove_picture") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(FieldError::new("remove_picture", "must be true or false")),
            };
            if display_name.is_none() && !remove_picture {
                return Err(FieldError::new(
                    "display_name",
                    "redact needs a display_name, remove_picture: true, or both",
                ));
            }
            Some(Redaction { display_name, remove_picture })
        } else {
            for field in ["display_name", "remove_picture"] {
                if object.get(field).is_some_and(|v| !v.is_null()) {
                    return Err(FieldError::new(field, "is only accepted for action redact"));
                }
            }
            None
        };

        let effective_at = match object.get("effective_at") {
            None | Some(Value::Null) => None,
            Some(value) => Some(effective_at(value, now)?),
        };
        if effective_at.is_some() && replacement.is_some() {
            return Err(FieldError::new(
                "effective_at",
                "a scheduled run cannot create a replacement user; create the user first and name them as a target",
            ));
        }

        Ok(Self {
            company_id,
            user_id,
            actor_user_id,
            action,
            transfer,
            replacement,
            redaction,
            origin: Origin::Host,
            effective_at,
        })
    }
}

/// An `effective_at` value: an RFC 3339 time after `now` and at most
/// [`MAX_SCHEDULE_AHEAD_DAYS`] ahead (a reschedule checks it the same way).
pub fn effective_at(value: &Value, now: DateTime<Utc>) -> Result<DateTime<Utc>, FieldError> {
    let at = value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            FieldError::new("effective_at", "must be an RFC 3339 time, e.g. 2027-01-31T17:00:00Z")
        })?;
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

fn positive_id(object: &Map<String, Value>, field: &str) -> Result<i64, FieldError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(FieldError::new(field, "is required")),
        Some(v) => v
            .as_i64()
            .filter(|n| *n > 0)
            .ok_or_else(|| FieldError::new(field, "must be a positive whole number")),
    }
}

fn user_id_field(object: &Map<String, Value>, field: &str) -> Result<UserId, FieldError> {
    positive_id(object, field).map(|id| UserId::new(id).expect("positive"))
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

fn parse_replacement(value: &Value) -> Result<Replacement, FieldError> {
    let object = value.as_object().ok_or_else(|| {
        FieldError::new("replacement", "must be an object with first_name, last_name and email")
    })?;
    if let Some(unknown) =
        object.keys().find(|k| !matches!(k.as_str(), "first_name" | "last_name" | "email"))
    {
        return Err(FieldError::new(format!("replacement.{unknown}"), "unknown field"));
    }
    let text = |key: &str, max: usize| -> Result<String, FieldError> {
        let field = format!("replacement.{key}");
        match object.get(key) {
            Some(Value::String(s)) => bounded_text(s, &field, max),
            Some(_) => Err(FieldError::new(field, "must be a string")),
            None => Err(FieldError::new(field, "is required")),
        }
    };
    let first_name = text("first_name", 100)?;
    let last_name = text("last_name", 100)?;
    let email = text("email", 254)?.to_lowercase();
    if !looks_like_email(&email) {
        return Err(FieldError::new("replacement.email", "is not an email address"));
    }
    Ok(Replacement { first_name, last_name, email })
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
mod tests {
    use serde_json::json;

    use super::*;

    fn scheduled(at: Value) -> Result<OffboardingRequest, FieldError> {
        let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z").unwrap().to_utc();
        OffboardingRequest::parse_at(
            &json!({"company_id": 1, "user_id": 2, "actor_user_id": 3, "action": "deactivate",
                    "effective_at": at}),
            now,
        )
    }

    #[test]
    fn effective_at_is_a_future_rfc3339_time_at_most_366_days_ahead() {
        let at = scheduled(json!("2026-12-02T11:00:00+01:00")).unwrap_err();
        assert_eq!(
            (at.field.as_str(), at.message.as_str()),
            ("effective_at", "must be in the future")
        );
        let ok = scheduled(json!("2026-12-02T10:00:01Z")).unwrap();
        assert_eq!(ok.effective_at.unwrap().to_rfc3339(), "2026-12-02T10:00:01+00:00");
        assert!(scheduled(json!("2027-12-03T10:00:00Z")).is_ok());
        assert_eq!(scheduled(json!("2027-12-03T10:00:01Z")).unwrap_err().field, "effective_at");
        for bad in [json!("tomorrow"), json!("2026-12-24"), json!(1_800_000_000)] {
            assert_eq!(scheduled(bad).unwrap_err().field, "effective_at");
        }
        assert_eq!(scheduled(Value::Null).unwrap().effective_at, None);
    }

    #[test]
    fn a_minimal_deactivation_parses() {
        let r = OffboardingRequest::parse(&json!({
            "company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "deactivate"
        }))
        .unwrap();
        assert_eq!(r.action, Action::Deactivate);
        assert!(r.transfer.is_empty());
    }

    #[test]
    fn shape_errors_name_the_field() {
        let base =
            json!({"company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "deactivate"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            OffboardingRequest::parse(&b).unwrap_err().field
        };
        assert_eq!(with("user_id", json!("5")), "user_id");
        assert_eq!(with("company_id", json!(-1)), "company_id");
        assert_eq!(with("action", json!("fire")), "action");
        assert_eq!(with("colour", json!("red")), "colour");
        assert_eq!(with("display_name", json!("X")), "display_name");
        assert_eq!(
            with("replacement", json!({"first_name": "A", "last_name": "B", "email": "nope"})),
            "replacement.email"
        );
        assert_eq!(OffboardingRequest::parse(&json!([1])).unwrap_err().field, "body");
    }

    #[test]
    fn redact_needs_something_to_change() {
        let err = OffboardingRequest::parse(&json!({
            "company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "redact"
        }))
        .unwrap_err();
        assert_eq!(err.field, "display_name");
        let ok = OffboardingRequest::parse(&json!({
            "company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "redact", "remove_picture": true
        }))
        .unwrap();
        assert_eq!(ok.redaction, Some(Redaction { display_name: None, remove_picture: true }));
    }

    #[test]
    fn transfer_is_refused_where_it_makes_no_sense() {
        let err = OffboardingRequest::parse(&json!({
            "company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "reactivate",
            "transfer": {"default": {"mode": "single", "targets": [{"user_id": 3}]}}
        }))
        .unwrap_err();
        assert_eq!(err.field, "transfer");
    }
}
