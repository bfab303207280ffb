//! The transfer plans the suite sends, drawn at random over every mode and scope, and how
//! one rule shares a user's items among its targets.

use std::collections::BTreeMap;

use rand::{Rng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Map, Value, json};

use offboard::domain::ItemType;

/// How one rule shares items, by position in the oldest-first order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Single(i64),
    Ratio(Vec<(i64, u64)>),
    Hardcoded(Vec<(i64, u64)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub mode: Mode,
    /// `all` when true, else `open`.
    pub all: bool,
}

impl Rule {
    /// The new owner of the item at `position`, or `None` when it stays. Ratio: the
    /// position modulo the sum of weights walks the weights; hardcoded: the first counts in
    /// order, the rest stays.
    pub fn recipient(&self, position: u64) -> Option<i64> {
        match &self.mode {
            Mode::Single(user) => Some(*user),
            Mode::Ratio(weights) => {
                let cycle: u64 = weights.iter().map(|(_, w)| w).sum();
                holder(weights, position % cycle)
            }
            Mode::Hardcoded(counts) => holder(counts, position),
        }
    }

    fn to_json(&self) -> Value {
        let (mode, targets): (&str, Vec<Value>) = match &self.mode {
            Mode::Single(user) => ("single", vec![json!({"user_id": user})]),
            Mode::Ratio(v) => {
                ("ratio", v.iter().map(|(u, w)| json!({"user_id": u, "weight": w})).collect())
            }
            Mode::Hardcoded(v) => {
                ("hardcoded", v.iter().map(|(u, c)| json!({"user_id": u, "count": c})).collect())
            }
        };
        json!({"mode": mode, "scope": if self.all { "all" } else { "open" }, "targets": targets})
    }
}

/// A transfer plan as the suite sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub default: Option<Rule>,
    pub per_type: BTreeMap<ItemType, Rule>,
}

impl Plan {
    pub fn rule_for(&self, item: ItemType) -> Option<&Rule> {
        self.per_type.get(&item).or(self.default.as_ref())
    }

    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if let Some(rule) = &self.default {
            map.insert("default".into(), rule.to_json());
        }
        for (item, rule) in &self.per_type {
            map.insert(item.key().into(), rule.to_json());
        }
        Value::Object(map)
    }

    /// A random plan over `targets`: sometimes a default, one to three per-type rules,
    /// every mode and both scopes.
    pub fn random(rng: &mut StdRng, targets: &[i64]) -> Self {
        let mut plan = Plan::default();
        if rng.random_bool(0.6) {
            plan.default = Some(random_rule(rng, targets));
        }
        let extra =
            if plan.default.is_some() { rng.random_range(0..=2) } else { rng.random_range(1..=3) };
        for _ in 0..extra {
            let item = *ItemType::ALL.choose(rng).expect("item types");
            plan.per_type.insert(item, random_rule(rng, targets));
        }
        plan
    }
}

/// The user whose share holds `offset`, the shares laid end to end in order.
fn holder(shares: &[(i64, u64)], mut offset: u64) -> Option<i64> {
    shares.iter().find_map(|(user, share)| {
        if offset < *share {
            Some(*user)
        } else {
            offset -= share;
            None
        }
    })
}

fn random_rule(rng: &mut StdRng, targets: &[i64]) -> Rule {
    let all = rng.random_bool(0.4);
    let pick = |rng: &mut StdRng, n: usize| -> Vec<i64> {
        targets.choose_multiple(rng, n).copied().collect::<Vec<i64>>()
    };
    let mode = match rng.random_range(0..20) {
        0..7 => Mode::Single(pick(rng, 1)[0]),
        7..15 => {
            let n = rng.random_range(2..=4);
            let mut weights: Vec<(i64, u64)> =
                pick(rng, n).into_iter().map(|u| (u, rng.random_range(0..=4))).collect();
            if weights.iter().all(|(_, w)| *w == 0) {
                weights[0].1 = 1;
            }
            Mode::Ratio(weights)
        }
        _ => {
            let n = rng.random_range(1..=3);
            Mode::Hardcoded(
                pick(rng, n).into_iter().map(|u| (u, rng.random_range(0..=150))).collect(),
            )
        }
    };
    Rule { mode, all }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_walks_the_weights_and_hardcoded_leaves_the_rest() {
        let ratio = Rule { mode: Mode::Ratio(vec![(1, 2), (2, 0), (3, 1)]), all: true };
        let owners: Vec<_> = (0..6).map(|p| ratio.recipient(p)).collect();
        assert_eq!(owners, [Some(1), Some(1), Some(3), Some(1), Some(1), Some(3)]);
        let hardcoded = Rule { mode: Mode::Hardcoded(vec![(1, 1), (2, 2)]), all: false };
        let owners: Vec<_> = (0..4).map(|p| hardcoded.recipient(p)).collect();
        assert_eq!(owners, [Some(1), Some(2), Some(2), None]);
    }
}
