//! `PATCH /Users/{id}` operations (RFC 7644 §3.5.2) as Okta and Entra send them: `add`,
//! `replace` and `remove`, matched case-insensitively (Entra writes `Replace`); with a
//! `path`, or (Okta's deactivation) without one and an object `value`.

use serde_json::{Map, Value};

use super::{ScimError, resource::set_attribute};
use crate::crm::provisioning::UserAttributes;

/// Applies the operations of a PatchOp body to the user's attributes; `active` is set when
/// an operation says what it should be.
pub fn apply(
    body: &Map<String, Value>,
    attributes: &mut UserAttributes,
    active: &mut Option<bool>,
) -> Result<(), ScimError> {
    let operations = body
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Operations"))
        .and_then(|(_, v)| v.as_array())
        .filter(|ops| !ops.is_empty())
        .ok_or_else(|| ScimError::bad("invalidSyntax", "Operations must be a non-empty list"))?;
    for operation in operations {
        let object = operation
            .as_object()
            .ok_or_else(|| ScimError::bad("invalidSyntax", "each operation must be an object"))?;
        let field =
            |name: &str| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
        let op = field("op").and_then(Value::as_str).map(str::to_ascii_lowercase);
        let path = match field("path") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) if !p.trim().is_empty() => Some(p.trim().to_string()),
            Some(_) => return Err(ScimError::bad("invalidPath", "path must be a string")),
        };
        let value = field("value").cloned().unwrap_or(Value::Null);
        if let Some(p) = &path
            && is_extension(p)
        {
            // The offboarding extension's attributes are the service's: writing nothing to
            // them is nothing, writing a value is refused. The extension itself can be taken
            // off the resource (remove) and put back (add or replace with nothing in it).
            if !matches!(op.as_deref(), Some("add" | "replace" | "remove")) {
                return Err(ScimError::bad("invalidSyntax", "op must be add, replace or remove"));
            }
            if writes_something(&value) {
                return Err(ScimError::bad("mutability", "the offboarding extension is read-only"));
            }
            if p.eq_ignore_ascii_case(super::OFFBOARDING_SCHEMA) {
                attributes.extension_hidden = op.as_deref() == Some("remove");
            }
            continue;
        }
        match (op.as_deref(), path) {
            (Some("add" | "replace"), Some(path)) => {
                check_path(&path)?;
                set_attribute(attributes, active, &path, &value)?;
            }
            (Some("add" | "replace"), None) => {
                let Value::Object(values) = value else {
                    return Err(ScimError::bad(
                        "invalidValue",
                        "an operation without a path needs an object value",
                    ));
                };
                for (key, value) in &values {
                    set_attribute(attributes, active, key, value)?;
                }
            }
            (Some("remove"), Some(path)) => {
                check_path(&path)?;
                match super::filter::normalize_path(&path).as_str() {
                    "username" => {
                        return Err(ScimError::bad(
                            "mutability",
                            "userName is required and cannot be removed",
                        ));
                    }
                    "active" => {
                        return Err(ScimError::bad(
                            "mutability",
                            "active cannot be removed; replace it with true or false",
                        ));
                    }
                    _ => set_attribute(attributes, active, &path, &Value::Null)?,
                }
            }
            (Some("remove"), None) => {
                return Err(ScimError::bad("noTarget", "a remove operation needs a path"));
            }
            _ => {
                return Err(ScimError::bad("invalidSyntax", "op must be add, replace or remove"));
            }
        }
    }
    Ok(())
}

fn is_extension(path: &str) -> bool {
    path.to_ascii_lowercase().starts_with(&super::OFFBOARDING_SCHEMA.to_ascii_lowercase())
}

/// Whether a value sets anything: not null, and not an object of nulls (and `schemas`).
fn writes_something(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Object(o) => o.iter().any(|(k, v)| k != "schemas" && writes_something(v)),
        _ => true,
    }
}

/// Refuses paths to attributes a client cannot write: ids, meta and the offboarding
/// extension are the service's.
fn check_path(path: &str) -> Result<(), ScimError> {
    let lower = super::filter::normalize_path(path);
    let read_only = lower == "id" || lower == "meta" || lower.starts_with("meta.");
    if read_only {
        return Err(ScimError::bad("mutability", "the attribute is read-only"));
    }
    const KNOWN: [&str; 10] = [
        "username",
        "externalid",
        "displayname",
        "name",
        "name.givenname",
        "name.familyname",
        "emails",
        "emails.value",
        "active",
        "emails.type",
    ];
    if KNOWN.contains(&lower.as_str())
        || (lower.starts_with("emails[") && lower.ends_with("].value"))
    {
        return Ok(());
    }
    Err(ScimError::bad("invalidPath", "the path names no attribute of this service's User"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(body: Value) -> Result<(UserAttributes, Option<bool>), ScimError> {
        let mut attributes = UserAttributes { user_name: "u".into(), ..Default::default() };
        let mut active = None;
        apply(body.as_object().unwrap(), &mut attributes, &mut active)?;
        Ok((attributes, active))
    }

    #[test]
    fn okta_and_entra_deactivations_all_say_inactive() {
        let okta = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                          "Operations": [{"op": "replace", "value": {"active": false}}]});
        let entra = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                           "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
        let boolean = json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
        for body in [okta, entra, boolean] {
            assert_eq!(run(body).unwrap().1, Some(false));
        }
        let reactivate = json!({"Operations": [{"op": "replace", "value": {"active": true}}]});
        assert_eq!(run(reactivate).unwrap().1, Some(true));
    }

    #[test]
    fn entra_attribute_updates_apply() {
        let (attributes, active) = run(json!({"Operations": [
            {"op": "Add", "path": "emails[type eq \"work\"].value", "value": "a@b.test"},
            {"op": "Replace", "path": "name.familyName", "value": "Lovelace"},
            {"op": "Remove", "path": "externalId"},
        ]}))
        .unwrap();
        assert_eq!(active, None);
        assert_eq!(attributes.email.as_deref(), Some("a@b.test"));
        assert_eq!(attributes.email_type.as_deref(), Some("work"));
        assert_eq!(attributes.family_name.as_deref(), Some("Lovelace"));
        // A control character in the path's type is refused like one in a value.
        let error = run(json!({"Operations": [
            {"op": "replace", "path": "emails[type eq \"w\u{0}rk\"].value", "value": "a@b.test"},
        ]}))
        .unwrap_err();
        assert_eq!(error.scim_type, Some("invalidValue"));
    }

    #[test]
    fn the_offboarding_extension_can_be_taken_off_and_put_back() {
        let urn = crate::api::scim::OFFBOARDING_SCHEMA;
        let (attributes, _) = run(json!({"Operations": [{"op": "remove", "path": urn}]})).unwrap();
        assert!(attributes.extension_hidden);
        let mut attributes = attributes;
        let mut active = None;
        let body = json!({"Operations": [{"op": "add", "path": urn, "value": {}}]});
        apply(body.as_object().unwrap(), &mut attributes, &mut active).unwrap();
        assert!(!attributes.extension_hidden);
        // Removing one of its attributes leaves the extension on.
        let sub = format!("{urn}:runId");
        let (attributes, _) = run(json!({"Operations": [{"op": "remove", "path": sub}]})).unwrap();
        assert!(!attributes.extension_hidden);
    }

    #[test]
    fn bad_operations_are_refused_with_their_scim_type() {
        let kind = |body: Value| run(body).unwrap_err().scim_type;
        assert_eq!(kind(json!({"Operations": []})), Some("invalidSyntax"));
        assert_eq!(
            kind(json!({"Operations": [{"op": "move", "path": "active"}]})),
            Some("invalidSyntax")
        );
        assert_eq!(kind(json!({"Operations": [{"op": "remove"}]})), Some("noTarget"));
        assert_eq!(
            kind(json!({"Operations": [{"op": "replace", "path": "id", "value": "9"}]})),
            Some("mutability")
        );
        assert_eq!(
            kind(json!({"Operations": [{"op": "replace", "path": "title", "value": "x"}]})),
            Some("invalidPath")
        );
        let extension = format!("{}:runStatus", crate::api::scim::OFFBOARDING_SCHEMA);
        assert_eq!(
            kind(
                json!({"Operations": [{"op": "replace", "path": extension, "value": "succeeded"}]})
            ),
            Some("mutability")
        );
        assert_eq!(
            kind(json!({"Operations": [{"op": "replace", "path": "active", "value": "maybe"}]})),
            Some("invalidValue")
        );
    }
}
