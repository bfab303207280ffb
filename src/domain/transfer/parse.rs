//! A plan from its JSON (a request's `transfer`, a policy's, or the ledger's stored form),
//! and back. serde reads the JSON into [`PlanBody`] (unknown fields refused, each field
//! typed); [`PlanBody::validate`] then checks what serde cannot say — counts, ranges, a
//! target's amount against the rule's mode. Errors name the field.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::{Distribution, ItemType, Recipient, Scope, TransferPlan, TransferRule};
use crate::domain::{
    FieldError, UserId,
    wire::{self, Object, ObjectSeed},
};

const MAX_TARGETS: usize = 100;
const MAX_WEIGHT: i64 = 1_000_000;
const MAX_COUNT: i64 = 1_000_000_000;

/// A plan as received: a rule per item type, or `default`, in the order given.
#[derive(Clone, Debug, Default)]
pub struct PlanBody(pub Vec<(Option<ItemType>, RuleBody)>);

/// One rule of a plan: `{"mode": ..., "scope": ..., "targets": [...]}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TransferRuleBody)]
pub struct RuleBody {
    /// `single` (one target), `ratio` (targets with weights) or `hardcoded` (targets with
    /// counts; the rest stays).
    #[serde(default, deserialize_with = "wire::some_string")]
    #[schema(schema_with = modes, required = true)]
    pub mode: Option<String>,
    /// `open` (default) or `all`.
    #[serde(default, deserialize_with = "optional_scope")]
    #[schema(schema_with = scopes)]
    pub scope: Option<Scope>,
    #[serde(default, deserialize_with = "some_targets")]
    #[schema(min_items = 1, max_items = 100, required = true)]
    pub targets: Option<Vec<TargetBody>>,
}

impl Object<'_> for RuleBody {
    const NOT_AN_OBJECT: &'static str =
        "must be an object like {\"mode\": \"single\", \"targets\": [...]}";
}

/// A target: `user_id`, or `replacement: true`; with `weight` (ratio) or `count` (hardcoded).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    #[serde(default, deserialize_with = "wire::some_positive_id")]
    #[schema(minimum = 1)]
    pub user_id: Option<i64>,
    #[serde(default, deserialize_with = "replacement_flag")]
    pub replacement: Option<bool>,
    #[serde(default, deserialize_with = "wire::some_whole_number")]
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub weight: Option<i64>,
    #[serde(default, deserialize_with = "wire::some_whole_number")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub count: Option<i64>,
}

impl Object<'_> for TargetBody {
    const NOT_AN_OBJECT: &'static str = "must be an object like {\"user_id\": 12}";
}

fn modes() -> utoipa::openapi::Object {
    string_enum(&["single", "ratio", "hardcoded"])
}

fn scopes() -> utoipa::openapi::Object {
    string_enum(&[Scope::Open.as_str(), Scope::All.as_str()])
}

/// A string schema with these values only.
pub fn string_enum(values: &[&str]) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

fn optional_scope<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Scope>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s == "open" => Ok(Some(Scope::Open)),
        Value::String(s) if s == "all" => Ok(Some(Scope::All)),
        _ => Err(D::Error::custom("must be \"open\" or \"all\"")),
    }
}

fn replacement_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(true) => Ok(Some(true)),
        _ => Err(D::Error::custom("must be true when given")),
    }
}

/// A rule's targets: an array of objects.
fn some_targets<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<TargetBody>>, D::Error> {
    struct Targets;
    impl<'de> Visitor<'de> for Targets {
        type Value = Vec<TargetBody>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("must be an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut targets = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(MAX_TARGETS));
            while let Some(target) = seq.next_element_seed(ObjectSeed(PhantomData))? {
                targets.push(target);
            }
            Ok(targets)
        }
    }
    d.deserialize_seq(Targets).map(Some)
}

/// A plan's key: `default` (`None`) or an item type.
struct PlanKey;

impl<'de> DeserializeSeed<'de> for PlanKey {
    type Value = Option<ItemType>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for PlanKey {
    type Value = Option<ItemType>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an item type or \"default\"")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if key == "default" {
            return Ok(None);
        }
        key.parse::<ItemType>().map(Some).map_err(|()| {
            E::custom(format!(
                "unknown item type; expected \"default\" or one of {}",
                ItemType::ALL.map(ItemType::key).join(", ")
            ))
        })
    }
}

impl<'de> Deserialize<'de> for PlanBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Rules;
        impl<'de> Visitor<'de> for Rules {
            type Value = PlanBody;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(PLAN_NOT_AN_OBJECT)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PlanBody, A::Error> {
                let mut rules = Vec::new();
                while let Some(key) = map.next_key_seed(PlanKey)? {
                    rules.push((key, map.next_value_seed(ObjectSeed(PhantomData))?));
                }
                Ok(PlanBody(rules))
            }
        }
        d.deserialize_map(Rules)
    }
}

/// What a `transfer` that is not an object is told.
pub const PLAN_NOT_AN_OBJECT: &str = "must be an object keyed by item type or \"default\"";

impl PlanBody {
    /// The plan, checked: errors name the field under `transfer`.
    pub fn validate(self) -> Result<TransferPlan<Recipient>, FieldError> {
        let mut plan = TransferPlan::default();
        for (item, rule) in self.0 {
            let field = format!("transfer.{}", item.map_or("default", ItemType::key));
            let rule = rule.validate(&field)?;
            match item {
                None => plan.default = Some(rule),
                Some(item) => {
                    plan.per_type.insert(item, rule);
                }
            }
        }
        Ok(plan)
    }
}

impl TransferPlan<Recipient> {
    /// Parses a `transfer` object (a policy's, or the ledger's stored form). Errors name
    /// the field under `transfer`.
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        wire::from_json_at::<PlanBody>(value, "transfer")?.validate()
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

impl RuleBody {
    fn validate(self, field: &str) -> Result<TransferRule<Recipient>, FieldError> {
        let at = |key: &str| format!("{field}.{key}");
        let mode = self.mode.ok_or_else(|| {
            FieldError::new(at("mode"), "is required: single, ratio or hardcoded")
        })?;
        let scope = self.scope.unwrap_or(Scope::Open);
        let targets = self.targets.ok_or_else(|| FieldError::new(at("targets"), "is required"))?;
        if targets.is_empty() {
            return Err(FieldError::new(at("targets"), "needs at least one target"));
        }
        if targets.len() > MAX_TARGETS {
            return Err(FieldError::new(
                at("targets"),
                format!("has {} targets; at most {MAX_TARGETS} are allowed", targets.len()),
            ));
        }
        let amount_key = match mode.as_str() {
            "single" => None,
            "ratio" => Some("weight"),
            "hardcoded" => Some("count"),
            _ => {
                return Err(FieldError::new(
                    at("mode"),
                    format!("unknown mode {mode:?}; expected single, ratio or hardcoded"),
                ));
            }
        };
        if amount_key.is_none() && targets.len() != 1 {
            return Err(FieldError::new(
                at("targets"),
                format!("single mode takes exactly one target, got {}", targets.len()),
            ));
        }

        let mut parsed: Vec<(Recipient, u64)> = Vec::with_capacity(targets.len());
        for (i, target) in targets.into_iter().enumerate() {
            let tfield = format!("{field}.targets[{i}]");
            let (recipient, amount) = target.validate(&tfield, &mode, amount_key)?;
            if parsed.iter().any(|(r, _)| *r == recipient) {
                let what = match recipient {
                    Recipient::User(id) => format!("user {id}"),
                    Recipient::Replacement => "the replacement user".into(),
                };
                return Err(FieldError::new(
                    tfield,
                    format!("{what} is listed twice in this rule"),
                ));
            }
            parsed.push((recipient, amount));
        }

        let distribution = match amount_key {
            None => Distribution::Single(parsed[0].0),
            Some("weight") => {
                if parsed.iter().all(|(_, w)| *w == 0) {
                    return Err(FieldError::new(at("targets"), "weights must not all be zero"));
                }
                Distribution::Ratio(parsed)
            }
            Some(_) => Distribution::Hardcoded(parsed),
        };
        Ok(TransferRule { scope, distribution })
    }
}

impl TargetBody {
    /// The recipient and its amount (0 in single mode).
    fn validate(
        self,
        field: &str,
        mode: &str,
        amount_key: Option<&str>,
    ) -> Result<(Recipient, u64), FieldError> {
        // A target's fields depend on its rule's mode: `weight` only in ratio mode, `count`
        // only in hardcoded mode.
        for (key, given) in [("count", self.count.is_some()), ("weight", self.weight.is_some())] {
            if given && amount_key != Some(key) {
                return Err(FieldError::new(format!("{field}.{key}"), "unknown field"));
            }
        }
        let recipient = match (self.user_id, self.replacement) {
            (Some(id), None) => Recipient::User(UserId::new(id).expect("positive")),
            (None, Some(_)) => Recipient::Replacement,
            (Some(_), Some(_)) => {
                return Err(FieldError::new(field, "give either user_id or replacement, not both"));
            }
            (None, None) => return Err(FieldError::new(format!("{field}.user_id"), "is required")),
        };
        let Some(key) = amount_key else { return Ok((recipient, 0)) };
        let afield = format!("{field}.{key}");
        let (given, max) =
            if key == "weight" { (self.weight, MAX_WEIGHT) } else { (self.count, MAX_COUNT) };
        let amount = match given {
            None => return Err(FieldError::new(afield, format!("is required in {mode} mode"))),
            Some(n) if n < 0 => return Err(FieldError::new(afield, "must not be negative")),
            Some(n) if n > max => {
                return Err(FieldError::new(afield, format!("must be at most {max}")));
            }
            Some(n) => n as u64,
        };
        Ok((recipient, amount))
    }
}
