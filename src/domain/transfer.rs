//! Transfer plans: which owned items move, and to whom.
//!
//! A plan has a rule per item type, or a `default` rule for every type without its own.
//! Items are taken oldest first (created_at, then id), and a rule's distribution maps an
//! item's position in that order to its new owner, so the split of `n` items is plain
//! arithmetic: a preview can promise exactly what the run then does.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde_json::{Map, Value, json};

use super::{FieldError, UserId};

/// The kinds of items a user owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ItemType {
    Leads,
    Deals,
    Contacts,
    Products,
    Activities,
    Projects,
    ProjectTasks,
}

impl ItemType {
    pub const ALL: [ItemType; 7] = [
        ItemType::Leads,
        ItemType::Deals,
        ItemType::Contacts,
        ItemType::Products,
        ItemType::Activities,
        ItemType::Projects,
        ItemType::ProjectTasks,
    ];

    /// The key in plans, previews and receipts.
    pub fn key(self) -> &'static str {
        match self {
            ItemType::Leads => "leads",
            ItemType::Deals => "deals",
            ItemType::Contacts => "contacts",
            ItemType::Products => "products",
            ItemType::Activities => "activities",
            ItemType::Projects => "projects",
            ItemType::ProjectTasks => "project_tasks",
        }
    }

    /// The CRM table holding the items (a fixed name, never user input).
    pub fn table(self) -> &'static str {
        match self {
            ItemType::Leads => "crm.leads",
            ItemType::Deals => "crm.deals",
            ItemType::Contacts => "crm.persons",
            ItemType::Products => "crm.products",
            ItemType::Activities => "crm.activities",
            ItemType::Projects => "crm.projects",
            ItemType::ProjectTasks => "crm.project_tasks",
        }
    }

    /// SQL condition for an item that is still open (fixed text, never user input).
    /// Contacts and products have no open/closed state, so all of them count as open.
    pub fn open_condition(self) -> &'static str {
        match self {
            ItemType::Leads => "status = 'open'",
            ItemType::Deals => "status = 'open'",
            ItemType::Contacts | ItemType::Products => "true",
            ItemType::Activities => "NOT done",
            ItemType::Projects => "status = 'open'",
            ItemType::ProjectTasks => "status = 'pending'",
        }
    }

    /// The SQL condition selecting the items a scope moves.
    pub fn scope_condition(self, scope: Scope) -> &'static str {
        match scope {
            Scope::Open => self.open_condition(),
            Scope::All => "true",
        }
    }
}

impl fmt::Display for ItemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for ItemType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemType::ALL.into_iter().find(|t| t.key() == s).ok_or(())
    }
}

/// Which items of a type move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scope {
    /// Open deals and leads, undone activities, pending project tasks, open projects, and
    /// all contacts and products.
    #[default]
    Open,
    All,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Open => "open",
            Scope::All => "all",
        }
    }
}

/// Who a plan names as a target: an existing user, or the replacement user the same
/// request creates (delete and replace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Recipient {
    User(UserId),
    Replacement,
}

/// How items are shared among targets, by position in the oldest-first order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Distribution<T> {
    /// Every item to one user.
    Single(T),
    /// Each user takes up to its weight in turn; the cycle repeats until no item is left.
    /// Round robin is all weights 1. Weights are not all zero.
    Ratio(Vec<(T, u64)>),
    /// Each user takes up to its count, in order; what is left stays with the offboarded user.
    Hardcoded(Vec<(T, u64)>),
}

impl<T: Copy + Eq> Distribution<T> {
    pub fn mode(&self) -> &'static str {
        match self {
            Distribution::Single(_) => "single",
            Distribution::Ratio(_) => "ratio",
            Distribution::Hardcoded(_) => "hardcoded",
        }
    }

    pub fn targets(&self) -> Vec<T> {
        match self {
            Distribution::Single(t) => vec![*t],
            Distribution::Ratio(v) | Distribution::Hardcoded(v) => {
                v.iter().map(|(t, _)| *t).collect()
            }
        }
    }

    /// The new owner of the item at `position` (0-based, oldest first), or `None` when it
    /// stays with the offboarded user.
    pub fn recipient_at(&self, position: u64) -> Option<T> {
        match self {
            Distribution::Single(t) => Some(*t),
            Distribution::Ratio(weights) => {
                let cycle: u64 = weights.iter().map(|(_, w)| w).sum();
                let mut offset = position % cycle;
                for (target, weight) in weights {
                    if offset < *weight {
                        return Some(*target);
                    }
                    offset -= weight;
                }
                unreachable!("offset is below the cycle length")
            }
            Distribution::Hardcoded(counts) => {
                let mut offset = position;
                for (target, count) in counts {
                    if offset < *count {
                        return Some(*target);
                    }
                    offset -= count;
                }
                None
            }
        }
    }

    /// How many items a plan over `limit` items moves at most: everything, except that
    /// hardcoded counts stop at their sum.
    pub fn moves_at_most(&self, items: u64) -> u64 {
        match self {
            Distribution::Hardcoded(counts) => items.min(counts.iter().map(|(_, c)| c).sum()),
            _ => items,
        }
    }

    /// How `items` items are split: per target (in plan order) and what stays.
    pub fn split(&self, items: u64) -> Split<T> {
        match self {
            Distribution::Single(t) => Split { targets: vec![(*t, items)], stays: 0 },
            Distribution::Ratio(weights) => {
                let cycle: u64 = weights.iter().map(|(_, w)| w).sum();
                let (full, mut rest) = (items / cycle, items % cycle);
                let targets = weights
                    .iter()
                    .map(|(t, w)| {
                        let extra = rest.min(*w);
                        rest -= extra;
                        (*t, full * w + extra)
                    })
                    .collect();
                Split { targets, stays: 0 }
            }
            Distribution::Hardcoded(counts) => {
                let mut rest = items;
                let targets = counts
                    .iter()
                    .map(|(t, c)| {
                        let take = rest.min(*c);
                        rest -= take;
                        (*t, take)
                    })
                    .collect();
                Split { targets, stays: rest }
            }
        }
    }

    fn map<U>(self, f: &impl Fn(T) -> U) -> Distribution<U> {
        match self {
            Distribution::Single(t) => Distribution::Single(f(t)),
            Distribution::Ratio(v) => {
                Distribution::Ratio(v.into_iter().map(|(t, w)| (f(t), w)).collect())
            }
            Distribution::Hardcoded(v) => {
                Distribution::Hardcoded(v.into_iter().map(|(t, c)| (f(t), c)).collect())
            }
        }
    }
}

/// The outcome of a distribution over a number of items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split<T> {
    pub targets: Vec<(T, u64)>,
    pub stays: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRule<T = UserId> {
    pub scope: Scope,
    pub distribution: Distribution<T>,
}

/// Per item type (or a default for all), which items move and to whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferPlan<T = UserId> {
    pub default: Option<TransferRule<T>>,
    pub per_type: BTreeMap<ItemType, TransferRule<T>>,
}

impl<T> Default for TransferPlan<T> {
    fn default() -> Self {
        Self { default: None, per_type: BTreeMap::new() }
    }
}

const MAX_TARGETS: usize = 100;
const MAX_WEIGHT: i64 = 1_000_000;
const MAX_COUNT: i64 = 1_000_000_000;

impl<T: Copy + Eq + Ord> TransferPlan<T> {
    /// A type's own rule wins over the default; a type with neither stays with the user.
    pub fn rule_for(&self, item: ItemType) -> Option<&TransferRule<T>> {
        self.per_type.get(&item).or(self.default.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.per_type.is_empty()
    }

    /// The item types this plan moves, in a fixed order.
    pub fn item_types(&self) -> Vec<ItemType> {
        ItemType::ALL.into_iter().filter(|t| self.rule_for(*t).is_some()).collect()
    }

    /// Every target named anywhere in the plan, each with the field that names it first.
    pub fn targets_with_fields(&self) -> Vec<(T, String)> {
        let mut seen = BTreeMap::new();
        let rules = self
            .default
            .iter()
            .map(|r| ("default", r))
            .chain(self.per_type.iter().map(|(k, r)| (k.key(), r)));
        for (key, rule) in rules {
            for (i, target) in rule.distribution.targets().into_iter().enumerate() {
                seen.entry(target).or_insert_with(|| format!("transfer.{key}.targets[{i}]"));
            }
        }
        seen.into_iter().collect()
    }

    pub fn map_targets<U>(self, f: impl Fn(T) -> U) -> TransferPlan<U> {
        let map_rule = |r: TransferRule<T>| TransferRule {
            scope: r.scope,
            distribution: r.distribution.map(&f),
        };
        TransferPlan {
            default: self.default.map(map_rule),
            per_type: self.per_type.into_iter().map(|(k, r)| (k, map_rule(r))).collect(),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn u(id: i64) -> UserId {
        UserId::new(id).unwrap()
    }

    fn plan(v: Value) -> Result<TransferPlan, FieldError> {
        TransferPlan::parse(&v)?.resolve(None)
    }

    #[test]
    fn a_types_own_rule_wins_over_the_default() {
        let p = plan(json!({
            "default": {"mode": "single", "targets": [{"user_id": 12}]},
            "deals": {"mode": "ratio", "scope": "all",
                      "targets": [{"user_id": 12, "weight": 2}, {"user_id": 13, "weight": 1}]},
        }))
        .unwrap();
        assert_eq!(p.rule_for(ItemType::Leads).unwrap().distribution, Distribution::Single(u(12)));
        let deals = p.rule_for(ItemType::Deals).unwrap();
        assert_eq!(deals.scope, Scope::All);
        assert_eq!(deals.distribution.mode(), "ratio");
    }

    #[test]
    fn a_type_with_no_rule_stays() {
        let p = plan(json!({"deals": {"mode": "single", "targets": [{"user_id": 12}]}})).unwrap();
        assert!(p.rule_for(ItemType::Leads).is_none());
        assert_eq!(p.item_types(), vec![ItemType::Deals]);
    }

    #[test]
    fn ratio_cycles_through_weights() {
        let d = Distribution::Ratio(vec![(u(1), 2), (u(2), 1)]);
        let owners: Vec<_> = (0..7).map(|p| d.recipient_at(p).unwrap().get()).collect();
        assert_eq!(owners, vec![1, 1, 2, 1, 1, 2, 1]);
        assert_eq!(d.split(7), Split { targets: vec![(u(1), 5), (u(2), 2)], stays: 0 });
    }

    #[test]
    fn hardcoded_leaves_the_rest_with_the_user() {
        let d = Distribution::Hardcoded(vec![(u(1), 2), (u(2), 3)]);
        assert_eq!(d.split(7), Split { targets: vec![(u(1), 2), (u(2), 3)], stays: 2 });
        assert_eq!(d.split(4), Split { targets: vec![(u(1), 2), (u(2), 2)], stays: 0 });
        assert_eq!(d.recipient_at(5), None);
        assert_eq!(d.moves_at_most(7), 5);
    }

    #[test]
    fn stored_form_round_trips() {
        let p = plan(json!({
            "default": {"mode": "hardcoded", "targets": [{"user_id": 3, "count": 5}]},
            "activities": {"mode": "ratio", "targets": [{"user_id": 4, "weight": 0}, {"user_id": 5, "weight": 1}]},
        }))
        .unwrap();
        assert_eq!(TransferPlan::from_stored(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"dealz": {"mode": "single", "targets": [{"user_id": 1}]}}), "transfer.dealz"),
            (
                json!({"deals": {"mode": "spread", "targets": [{"user_id": 1}]}}),
                "transfer.deals.mode",
            ),
            (
                json!({"deals": {"mode": "ratio", "targets": [{"user_id": 1, "weight": 1}, {"user_id": 2, "weight": -1}]}}),
                "transfer.deals.targets[1].weight",
            ),
            (
                json!({"deals": {"mode": "ratio", "targets": [{"user_id": 1, "weight": 0}]}}),
                "transfer.deals.targets",
            ),
            (
                json!({"leads": {"mode": "hardcoded", "targets": [{"user_id": 1}]}}),
                "transfer.leads.targets[0].count",
            ),
            (
                json!({"default": {"mode": "single", "targets": [{"user_id": 1}, {"user_id": 2}]}}),
                "transfer.default.targets",
            ),
            (
                json!({"default": {"mode": "single", "targets": [{"user_id": "x"}]}}),
                "transfer.default.targets[0].user_id",
            ),
            (
                json!({"default": {"mode": "single", "scope": "closed", "targets": [{"user_id": 1}]}}),
                "transfer.default.scope",
            ),
            (
                json!({"deals": {"mode": "ratio", "targets": [{"user_id": 1, "weight": 1}, {"user_id": 1, "weight": 1}]}}),
                "transfer.deals.targets[1]",
            ),
            (
                json!({"deals": {"mode": "single", "targets": [{"replacement": true}]}}),
                "transfer.deals.targets[0].replacement",
            ),
        ];
        for (input, field) in cases {
            let err = plan(input.clone()).unwrap_err();
            assert_eq!(err.field, field, "for {input}: {err}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn targets(max: u64) -> impl Strategy<Value = Vec<(UserId, u64)>> {
            prop::collection::vec(0..=max, 1..6).prop_map(|amounts| {
                amounts.into_iter().enumerate().map(|(i, a)| (u(i as i64 + 1), a)).collect()
            })
        }

        fn ratio() -> impl Strategy<Value = Distribution<UserId>> {
            targets(5)
                .prop_filter("weights not all zero", |t| t.iter().any(|(_, w)| *w > 0))
                .prop_map(Distribution::Ratio)
        }

        fn any_distribution() -> impl Strategy<Value = Distribution<UserId>> {
            prop_oneof![
                (1i64..10).prop_map(|id| Distribution::Single(u(id))),
                ratio(),
                targets(40).prop_map(Distribution::Hardcoded),
            ]
        }

        /// Counts per target by walking every position: the definition the split must match.
        fn walk(d: &Distribution<UserId>, n: u64) -> (BTreeMap<UserId, u64>, u64) {
            let mut counts = BTreeMap::new();
            let mut stays = 0;
            for position in 0..n {
                match d.recipient_at(position) {
                    Some(t) => *counts.entry(t).or_default() += 1,
                    None => stays += 1,
                }
            }
            (counts, stays)
        }

        proptest! {
            #[test]
            fn a_split_preserves_the_total(d in any_distribution(), n in 0u64..500) {
                let split = d.split(n);
                prop_assert_eq!(split.targets.iter().map(|(_, c)| c).sum::<u64>() + split.stays, n);
            }

            #[test]
            fn a_split_agrees_with_item_by_item_assignment(d in any_distribution(), n in 0u64..300) {
                let split = d.split(n);
                let (walked, stays) = walk(&d, n);
                prop_assert_eq!(split.stays, stays);
                for (target, count) in &split.targets {
                    prop_assert_eq!(*count, walked.get(target).copied().unwrap_or(0));
                }
            }

            #[test]
            fn ratio_repeats_its_cycle(d in ratio(), n in 0u64..300) {
                let Distribution::Ratio(weights) = &d else { unreachable!() };
                let cycle: u64 = weights.iter().map(|(_, w)| w).sum();
                for position in 0..n {
                    prop_assert_eq!(d.recipient_at(position), d.recipient_at(position + cycle));
                }
                // Over whole cycles every target gets exactly its weight per cycle.
                let split = d.split(cycle * 3);
                for ((_, weight), (_, count)) in weights.iter().zip(&split.targets) {
                    prop_assert_eq!(*count, weight * 3);
                }
                prop_assert_eq!(split.stays, 0);
            }

            #[test]
            fn zero_weight_targets_receive_nothing(d in ratio(), n in 0u64..300) {
                let Distribution::Ratio(weights) = &d else { unreachable!() };
                for ((target, weight), (_, count)) in weights.iter().zip(&d.split(n).targets) {
                    if *weight == 0 {
                        prop_assert_eq!(*count, 0, "user {} has weight 0", target);
                    }
                }
            }

            #[test]
            fn hardcoded_leftovers_stay_and_counts_are_never_exceeded(counts in targets(40), n in 0u64..300) {
                let d = Distribution::Hardcoded(counts.clone());
                let split = d.split(n);
                let capacity: u64 = counts.iter().map(|(_, c)| c).sum();
                prop_assert_eq!(split.stays, n.saturating_sub(capacity));
                for ((_, limit), (_, got)) in counts.iter().zip(&split.targets) {
                    prop_assert!(got <= limit);
                }
                prop_assert_eq!(d.moves_at_most(n), n.min(capacity));
            }

            #[test]
            fn the_outcome_is_deterministic(d in any_distribution(), n in 0u64..300) {
                prop_assert_eq!(d.split(n), d.clone().split(n));
                let first: Vec<_> = (0..n).map(|p| d.recipient_at(p)).collect();
                let second: Vec<_> = (0..n).map(|p| d.recipient_at(p)).collect();
                prop_assert_eq!(first, second);
            }
        }
    }
}
