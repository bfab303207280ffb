//! A plan from its JSON (a request's `transfer`, a policy's, or the ledger's stored form),
//! and back; errors name the field.

use serde_json::{Map, Value, json};

use super::{Distribution, ItemType, Recipient, Scope, TransferPlan, TransferRule};
use crate::domain::{FieldError, UserId};

const MAX_TARGETS: usize = 100;
const MAX_WEIGHT: i64 = 1_000_000;
const MAX_COUNT: i64 = 1_000_000_000;

impl TransferPlan<Recipient> {
    /// Parses the `transfer` object of a request. Errors name the field.
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let object = value.as_object().ok_or_else(|| {
            FieldError::new("transfer", "must be an object keyed by item type or \"default\"")
        })?;
        let mut plan = TransferPlan::default();
        for (key, rule) in object {
            let field = format!("transfer.{key}");
            let parsed = parse_rule(rule, &field)?;
            if key == "default" {
                plan.default = Some(parsed);
            } else {
                let item = key.parse::<ItemType>().map_err(|()| {
                    FieldError::new(
                        &field,
                        format!(
                            "unknown item type; expected \"default\" or one of {}",
                            ItemType::ALL.map(ItemType::key).join(", ")
                        ),
                    )
                })?;
                plan.per_type.insert(item, parsed);
            }
        }
        Ok(plan)
    }

    /// Replaces the `replacement` target by the replacement user's id.
    pub fn resolve(self, replacement: Option<UserId>) -> Result<TransferPlan<UserId>, FieldError> {
        if replacement.is_none()
            && let Some((_, field)) =
                self.targets_with_fields().into_iter().find(|(t, _)| *t == Recipient::Replacement)
        {
            return Err(FieldError::new(
                format!("{field}.replacement"),
                "names the replacement user, but the request has no \"replacement\"",
            ));
        }
        Ok(self.map_targets(|t| match t {
            Recipient::User(id) => id,
            Recipient::Replacement => replacement.expect("checked above"),
        }))
    }
}

impl TransferPlan<UserId> {
    /// The stored form (user ids only), read back by workers with [`TransferPlan::from_stored`].
    pub fn to_json(&self) -> Value {
        let rule_json = |r: &TransferRule<UserId>| {
            let targets: Vec<Value> = match &r.distribution {
                Distribution::Single(t) => vec![json!({"user_id": t.get()})],
                Distribution::Ratio(v) => {
                    v.iter().map(|(t, w)| json!({"user_id": t.get(), "weight": w})).collect()
                }
                Distribution::Hardcoded(v) => {
                    v.iter().map(|(t, c)| json!({"user_id": t.get(), "count": c})).collect()
                }
            };
            json!({"mode": r.distribution.mode(), "scope": r.scope.as_str(), "targets": targets})
        };
        let mut map = Map::new();
        if let Some(rule) = &self.default {
            map.insert("default".into(), rule_json(rule));
        }
        for (item, rule) in &self.per_type {
            map.insert(item.key().into(), rule_json(rule));
        }
        Value::Object(map)
    }

    pub fn from_stored(value: &Value) -> Result<Self, FieldError> {
        TransferPlan::parse(value)?.resolve(None)
    }
}

fn parse_rule(value: &Value, field: &str) -> Result<TransferRule<Recipient>, FieldError> {
    let object = value.as_object().ok_or_else(|| {
        FieldError::new(field, "must be an object like {\"mode\": \"single\", \"targets\": [...]}")
    })?;
    if let Some(unknown) =
        object.keys().find(|k| !matches!(k.as_str(), "mode" | "scope" | "targets"))
    {
        return Err(FieldError::new(format!("{field}.{unknown}"), "unknown field"));
    }
    let mode = match object.get("mode") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err(FieldError::new(format!("{field}.mode"), "must be a string")),
        None => {
            return Err(FieldError::new(
                format!("{field}.mode"),
                "is required: single, ratio or hardcoded",
            ));
        }
    };
    let scope = match object.get("scope") {
        None | Some(Value::Null) => Scope::Open,
        Some(Value::String(s)) if s == "open" => Scope::Open,
        Some(Value::String(s)) if s == "all" => Scope::All,
        Some(_) => {
            return Err(FieldError::new(format!("{field}.scope"), "must be \"open\" or \"all\""));
        }
    };
    let targets = match object.get("targets") {
        Some(Value::Array(t)) => t,
        Some(_) => return Err(FieldError::new(format!("{field}.targets"), "must be an array")),
        None => return Err(FieldError::new(format!("{field}.targets"), "is required")),
    };
    if targets.is_empty() {
        return Err(FieldError::new(format!("{field}.targets"), "needs at least one target"));
    }
    if targets.len() > MAX_TARGETS {
        return Err(FieldError::new(
            format!("{field}.targets"),
            format!("has {} targets; at most {MAX_TARGETS} are allowed", targets.len()),
        ));
    }

    let amount_key = match mode {
        "single" => None,
        "ratio" => Some("weight"),
        "hardcoded" => Some("count"),
        _ => {
            return Err(FieldError::new(
                format!("{field}.mode"),
                format!("unknown mode {mode:?}; expected single, ratio or hardcoded"),
            ));
        }
    };
    if mode == "single" && targets.len() != 1 {
        return Err(FieldError::new(
            format!("{field}.targets"),
            format!("single mode takes exactly one target, got {}", targets.len()),
        ));
    }

    let mut parsed: Vec<(Recipient, u64)> = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        let tfield = format!("{field}.targets[{i}]");
        let recipient = parse_recipient(target, &tfield, amount_key)?;
        if parsed.iter().any(|(r, _)| *r == recipient) {
            let what = match recipient {
                Recipient::User(id) => format!("user {id}"),
                Recipient::Replacement => "the replacement user".into(),
            };
            return Err(FieldError::new(tfield, format!("{what} is listed twice in this rule")));
        }
        let amount = match amount_key {
            None => 0,
            Some(key) => {
                let max = if key == "weight" { MAX_WEIGHT } else { MAX_COUNT };
                let afield = format!("{tfield}.{key}");
                match target.get(key) {
                    None => {
                        return Err(FieldError::new(afield, format!("is required in {mode} mode")));
                    }
                    Some(v) => match v.as_i64() {
                        Some(n) if n < 0 => {
                            return Err(FieldError::new(afield, "must not be negative"));
                        }
                        Some(n) if n > max => {
                            return Err(FieldError::new(afield, format!("must be at most {max}")));
                        }
                        Some(n) => n as u64,
                        None => return Err(FieldError::new(afield, "must be a whole number")),
                    },
                }
            }
        };
        parsed.push((recipient, amount));
    }

    let distribution = match mode {
        "single" => Distribution::Single(parsed[0].0),
        "ratio" => {
            if parsed.iter().all(|(_, w)| *w == 0) {
                return Err(FieldError::new(
                    format!("{field}.targets"),
                    "weights must not all be zero",
                ));
            }
            Distribution::Ratio(parsed)
        }
        _ => Distribution::Hardcoded(parsed),
    };
    Ok(TransferRule { scope, distribution })
}

fn parse_recipient(
    target: &Value,
    field: &str,
    amount_key: Option<&str>,
) -> Result<Recipient, FieldError> {
    let object = target
        .as_object()
        .ok_or_else(|| FieldError::new(field, "must be an object like {\"user_id\": 12}"))?;
    if let Some(unknown) = object.keys().find(|k| {
        !matches!(k.as_str(), "user_id" | "replacement") && Some(k.as_str()) != amount_key
    }) {
        return Err(FieldError::new(format!("{field}.{unknown}"), "unknown field"));
    }
    match (object.get("user_id"), object.get("replacement")) {
        (Some(id), None) => {
            id.as_i64().and_then(UserId::new).map(Recipient::User).ok_or_else(|| {
                FieldError::new(format!("{field}.user_id"), "must be a positive whole number")
            })
        }
        (None, Some(Value::Bool(true))) => Ok(Recipient::Replacement),
        (None, Some(_)) => {
            Err(FieldError::new(format!("{field}.replacement"), "must be true when given"))
        }
        (Some(_), Some(_)) => {
            Err(FieldError::new(field, "give either user_id or replacement, not both"))
        }
        (None, None) => Err(FieldError::new(format!("{field}.user_id"), "is required")),
    }
}
