//! The SCIM User resource: how a CRM user is shown (core schema plus the read-only
//! offboarding extension with the user's current run), how a posted or put resource is
//! read, and the `attributes` / `excludedAttributes` projection.

use serde_json::{Map, Value, json};

use super::{OFFBOARDING_SCHEMA, ScimError, USER_SCHEMA, filter::normalize_path};
use crate::crm::provisioning::{ProvisionedUser, UserAttributes};

/// The longest text attribute accepted.
const MAX_TEXT: usize = 320;

pub fn render(user: &ProvisionedUser, base: &str) -> Value {
    let mut out = Map::new();
    let mut schemas = vec![json!(USER_SCHEMA)];
    out.insert("id".into(), json!(user.id.to_string()));
    if let Some(external_id) = &user.external_id {
        out.insert("externalId".into(), json!(external_id));
    }
    out.insert("userName".into(), json!(user.user_name.clone().unwrap_or_default()));
    let mut name = Map::new();
    if let Some(given) = &user.given_name {
        name.insert("givenName".into(), json!(given));
    }
    if let Some(family) = &user.family_name {
        name.insert("familyName".into(), json!(family));
    }
    if !name.is_empty() {
        out.insert("name".into(), Value::Object(name));
    }
    if let Some(display_name) = &user.display_name {
        out.insert("displayName".into(), json!(display_name));
    }
    if let Some(email) = &user.email {
        let kind = user.email_type.clone().unwrap_or_else(|| "work".into());
        let primary = user.email_primary.unwrap_or(true);
        out.insert("emails".into(), json!([{"value": email, "type": kind, "primary": primary}]));
    }
    out.insert("active".into(), json!(user.is_active()));
    // Its attributes are returned on request (`attributes=`), see [`Projection::apply`];
    // an identity provider that took the extension off the resource sees none of it.
    if !user.extension_hidden {
        schemas.push(json!(OFFBOARDING_SCHEMA));
        let mut run = Map::new();
        if let (Some(id), Some(action), Some(status)) =
            (&user.run_id, &user.run_action, &user.run_status)
        {
            run.insert("runId".into(), json!(id));
            run.insert("runAction".into(), json!(action));
            run.insert("runStatus".into(), json!(status));
        }
        out.insert(OFFBOARDING_SCHEMA.into(), Value::Object(run));
    }
    out.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": user.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "lastModified": user.last_modified.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "location": format!("{base}/Users/{}", user.id),
        }),
    );
    out.insert("schemas".into(), Value::Array(schemas));
    Value::Object(out)
}

/// A text attribute's value: a string (trimmed, bounded, no control characters) or null.
pub fn text(value: &Value, attribute: &str) -> Result<Option<String>, ScimError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            if s.chars().count() > MAX_TEXT || s.chars().any(char::is_control) {
                return Err(ScimError::bad(
                    "invalidValue",
                    format!(
                        "{attribute} must be at most {MAX_TEXT} characters without control characters"
                    ),
                ));
            }
            Ok(Some(s.to_string()))
        }
        _ => Err(ScimError::bad("invalidValue", format!("{attribute} must be a string"))),
    }
}

/// `active` as identity providers send it: a boolean, or (Entra) `"True"` / `"False"`.
pub fn boolean(value: &Value, attribute: &str) -> Result<bool, ScimError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ScimError::bad("invalidValue", format!("{attribute} must be true or false"))),
    }
}

/// An email's address, type and primary flag, each as the client said it (or not).
pub type EmailParts = (Option<String>, Option<String>, Option<bool>);

/// The email an `emails` value carries: the primary one, else the first; with its type and
/// primary flag.
pub fn email(value: &Value) -> Result<EmailParts, ScimError> {
    let entries = match value {
        Value::Null => return Ok((None, None, None)),
        Value::Array(entries) => entries.clone(),
        Value::Object(_) => vec![value.clone()],
        _ => {
            return Err(ScimError::bad(
                "invalidValue",
                "emails must be a list of {value, type, primary}",
            ));
        }
    };
    let chosen = entries
        .iter()
        .find(|e| {
            e.get("primary")
                .is_some_and(|p| p == &json!(true) || p == &json!("True") || p == &json!("true"))
        })
        .or_else(|| entries.first());
    let Some(entry) = chosen else { return Ok((None, None, None)) };
    let Some(object) = entry.as_object() else {
        return Err(ScimError::bad(
            "invalidValue",
            "emails must be a list of {value, type, primary}",
        ));
    };
    let address = text(object.get("value").unwrap_or(&Value::Null), "emails.value")?;
    let kind = text(object.get("type").unwrap_or(&Value::Null), "emails.type")?
        .map(|k| k.to_ascii_lowercase());
    let primary = match object.get("primary") {
        None | Some(Value::Null) => None,
        Some(p) => Some(boolean(p, "emails.primary")?),
    };
    Ok((address, kind, primary))
}

/// Applies one attribute of a resource or of a PATCH value object (`name`, `userName`, …,
/// or a sub-attribute such as `name.givenName`) to the attributes and the wanted `active`.
/// Unknown and read-only attributes are ignored, as RFC 7644 §3.3 lets a service
/// provider do (Entra sends attributes a CRM does not keep).
pub fn set_attribute(
    attributes: &mut UserAttributes,
    active: &mut Option<bool>,
    path: &str,
    value: &Value,
) -> Result<(), ScimError> {
    match normalize_path(path).as_str() {
        "username" => {
            attributes.user_name = text(value, "userName")?.ok_or_else(|| {
                ScimError::bad("invalidValue", "userName is required and cannot be empty")
            })?;
        }
        "externalid" => attributes.external_id = text(value, "externalId")?,
        "displayname" => attributes.display_name = text(value, "displayName")?,
        "name" => match value {
            Value::Null => {
                attributes.given_name = None;
                attributes.family_name = None;
            }
            Value::Object(name) => {
                for (key, sub) in name {
                    set_attribute(attributes, active, &format!("name.{key}"), sub)?;
                }
            }
            _ => return Err(ScimError::bad("invalidValue", "name must be an object")),
        },
        "name.givenname" => attributes.given_name = text(value, "name.givenName")?,
        "name.familyname" => attributes.family_name = text(value, "name.familyName")?,
        "emails" => {
            (attributes.email, attributes.email_type, attributes.email_primary) = email(value)?
        }
        "emails.value" => attributes.email = text(value, "emails.value")?,
        p if p.starts_with("emails[") && p.ends_with("].value") => {
            attributes.email = text(value, "emails.value")?;
            // The type is the client's text as much as the value is.
            if let Some(kind) = bracket_type(p) {
                attributes.email_type = text(&Value::String(kind), "emails.type")?;
            }
        }
        "active" => *active = Some(boolean(value, "active")?),
        _ => {}
    }
    Ok(())
}

/// The type of an `emails[type eq "work"].value` path.
fn bracket_type(path: &str) -> Option<String> {
    let inner = path.strip_prefix("emails[")?.strip_suffix("].value")?;
    let (_, quoted) = inner.split_once('"')?;
    Some(quoted.trim_end_matches('"').to_ascii_lowercase())
}

/// Reads a posted or put User resource: userName is required; `active` is `None` when
/// the resource does not say.
pub fn read_resource(
    body: &Map<String, Value>,
) -> Result<(UserAttributes, Option<bool>), ScimError> {
    let mut attributes = UserAttributes::default();
    let mut active = None;
    for (key, value) in body {
        if key.eq_ignore_ascii_case(USER_SCHEMA) {
            if let Value::Object(inner) = value {
                for (k, v) in inner {
                    set_attribute(&mut attributes, &mut active, k, v)?;
                }
            }
        } else {
            set_attribute(&mut attributes, &mut active, key, value)?;
        }
    }
    if attributes.user_name.is_empty() {
        return Err(ScimError::bad("invalidValue", "userName is required"));
    }
    Ok((attributes, active))
}

/// The `attributes` / `excludedAttributes` of a query: which attributes a response holds.
#[derive(Debug, Default)]
pub struct Projection {
    only: Vec<String>,
    except: Vec<String>,
}

impl Projection {
    pub fn new(attributes: Option<&str>, excluded: Option<&str>) -> Self {
        let split = |raw: Option<&str>| -> Vec<String> {
            raw.map(|r| {
                r.split(',').map(str::trim).filter(|s| !s.is_empty()).map(projection_path).collect()
            })
            .unwrap_or_default()
        };
        Self { only: split(attributes), except: split(excluded) }
    }

    pub fn apply(&self, resource: Value) -> Value {
        let Value::Object(map) = resource else { return resource };
        let mut out = Map::new();
        let extension = OFFBOARDING_SCHEMA.to_ascii_lowercase();
        for (key, value) in map {
            let lower = key.to_ascii_lowercase();
            // The offboarding extension's attributes are returned on request only (RFC 7643
            // §7 "request"): its object stays, empty, unless `attributes` names it.
            if lower == extension {
                let asked = self.only.contains(&lower);
                let subs: Vec<&str> =
                    self.only.iter().filter_map(|p| p.strip_prefix(&format!("{lower}."))).collect();
                let kept: Map<String, Value> = match value {
                    Value::Object(inner) if asked => inner,
                    Value::Object(inner) => inner
                        .into_iter()
                        .filter(|(k, _)| subs.contains(&k.to_ascii_lowercase().as_str()))
                        .collect(),
                    _ => Map::new(),
                };
                out.insert(key, Value::Object(kept));
                continue;
            }
            // Returned always (RFC 7643 §7): id and schemas.
            if matches!(lower.as_str(), "id" | "schemas") {
                out.insert(key, value);
                continue;
            }
            if !self.only.is_empty() {
                let subs: Vec<&str> =
                    self.only.iter().filter_map(|p| p.strip_prefix(&format!("{lower}."))).collect();
                if self.only.contains(&lower) {
                    out.insert(key, value);
                } else if let (false, Value::Object(inner)) = (subs.is_empty(), &value) {
                    let kept: Map<String, Value> = inner
                        .iter()
                        .filter(|(k, _)| subs.contains(&k.to_ascii_lowercase().as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    out.insert(key, Value::Object(kept));
                }
                continue;
            }
            if self.except.contains(&lower) {
                continue;
            }
            let subs: Vec<&str> =
                self.except.iter().filter_map(|p| p.strip_prefix(&format!("{lower}."))).collect();
            match value {
                Value::Object(inner) if !subs.is_empty() => {
                    let kept: Map<String, Value> = inner
                        .into_iter()
                        .filter(|(k, _)| !subs.contains(&k.to_ascii_lowercase().as_str()))
                        .collect();
                    out.insert(key, Value::Object(kept));
                }
                other => {
                    out.insert(key, other);
                }
            }
        }
        Value::Object(out)
    }
}

/// A projection path, lower-cased; an extension's attribute (`urn:…:Offboarding:runId`)
/// becomes `<extension urn>.<attribute>`.
fn projection_path(raw: &str) -> String {
    let lower = normalize_path(raw);
    let ext = OFFBOARDING_SCHEMA.to_ascii_lowercase();
    match lower.strip_prefix(&format!("{ext}:")) {
        Some(attr) => format!("{ext}.{attr}"),
        None => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_and_okta_booleans_read_alike() {
        for v in [json!(false), json!("False"), json!("false")] {
            assert!(!boolean(&v, "active").unwrap());
        }
        assert!(boolean(&json!("True"), "active").unwrap());
        assert!(boolean(&json!(0), "active").is_err());
    }

    #[test]
    fn a_resource_needs_a_user_name_and_keeps_the_primary_email() {
        let body = json!({
            "schemas": [USER_SCHEMA], "userName": "ada", "active": true,
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"value": "a@home.test", "type": "home"}, {"value": "a@work.test", "type": "work", "primary": true}],
            "title": "ignored"
        });
        let (attributes, active) = read_resource(body.as_object().unwrap()).unwrap();
        assert_eq!(active, Some(true));
        assert_eq!(attributes.email.as_deref(), Some("a@work.test"));
        assert_eq!(attributes.email_type.as_deref(), Some("work"));
        assert_eq!(attributes.family_name.as_deref(), Some("Lovelace"));
        let err = read_resource(json!({"active": true}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.scim_type, Some("invalidValue"));
    }

    #[test]
    fn projection_keeps_what_is_asked_and_always_id() {
        let user = json!({"id": "1", "schemas": [], "userName": "u", "displayName": "D",
                          "name": {"givenName": "G", "familyName": "F"}, "active": true});
        let only = Projection::new(Some("name.givenName"), None).apply(user.clone());
        assert_eq!(only, json!({"id": "1", "schemas": [], "name": {"givenName": "G"}}));
        let except = Projection::new(None, Some("displayName,name.familyName")).apply(user);
        assert_eq!(except["name"], json!({"givenName": "G"}));
        assert!(except.get("displayName").is_none() && except.get("active").is_some());
    }
}
