//! What the fault suite expects: who is offboarded and how (a script of runs per user),
//! the transfer plans, and — item by item — who owns what after each run. The arithmetic
//! is written here again on purpose, independently of `domain::transfer`, so the suite
//! checks the service against the README's rules rather than against itself.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rand::{Rng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

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
                let mut offset = position % cycle;
                weights.iter().find_map(|(user, weight)| {
                    if offset < *weight {
                        Some(*user)
                    } else {
                        offset -= weight;
                        None
                    }
                })
            }
            Mode::Hardcoded(counts) => {
                let mut offset = position;
                counts.iter().find_map(|(user, count)| {
                    if offset < *count {
                        Some(*user)
                    } else {
                        offset -= count;
                        None
                    }
                })
            }
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

/// What a user's status is after a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    Deactivated,
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Deactivated => "deactivated",
            Status::Deleted => "deleted",
        }
    }
}

/// One run the suite will request.
#[derive(Clone, Debug)]
pub struct Step {
    pub user: i64,
    pub action: &'static str,
    pub plan: Option<Plan>,
    /// Redaction: the new display name (never personal data: it names an id) and whether
    /// the picture goes.
    pub display_name: Option<String>,
    pub remove_picture: bool,
}

impl Step {
    pub fn status_after(&self, before: Status) -> Status {
        match self.action {
            "deactivate" => Status::Deactivated,
            "delete" | "deactivate_and_delete" => Status::Deleted,
            "reactivate" => Status::Active,
            _ => before,
        }
    }

    /// The request body (without the transfer plan's absence spelled out).
    pub fn body(&self, company_id: i64, actor: i64) -> Value {
        let mut body = json!({
            "company_id": company_id,
            "user_id": self.user,
            "actor_user_id": actor,
            "action": self.action,
        });
        if let Some(plan) = &self.plan {
            body["transfer"] = plan.to_json();
        }
        if self.action == "redact" {
            if let Some(name) = &self.display_name {
                body["display_name"] = json!(name);
            }
            if self.remove_picture {
                body["remove_picture"] = json!(true);
            }
        }
        body
    }
}

/// A script per offboarded user: a random walk over the actions each status allows, one
/// action per user per round, until `runs` actions are scripted.
pub fn scripts(
    rng: &mut StdRng,
    leavers: &[i64],
    targets: &[i64],
    runs: usize,
) -> anyhow::Result<Vec<Vec<Step>>> {
    let mut scripts: Vec<Vec<Step>> = vec![Vec::new(); leavers.len()];
    let mut status = vec![Status::Active; leavers.len()];
    let mut scripted = 0;
    while scripted < runs {
        let mut progressed = false;
        for (k, &user) in leavers.iter().enumerate() {
            if scripted == runs {
                break;
            }
            let step = match status[k] {
                Status::Deleted => continue,
                Status::Active if rng.random_bool(0.75) => Step {
                    user,
                    action: "deactivate",
                    plan: rng.random_bool(0.85).then(|| Plan::random(rng, targets)),
                    display_name: None,
                    remove_picture: false,
                },
                Status::Active => Step {
                    user,
                    action: "deactivate_and_delete",
                    plan: Some(Plan::random(rng, targets)),
                    display_name: None,
                    remove_picture: false,
                },
                Status::Deactivated => match rng.random_range(0..10) {
                    0..4 => Step {
                        user,
                        action: "reactivate",
                        plan: None,
                        display_name: None,
                        remove_picture: false,
                    },
                    4..7 => {
                        let rename = rng.random_bool(0.7);
                        Step {
                            user,
                            action: "redact",
                            plan: None,
                            display_name: rename.then(|| format!("Former colleague {user}")),
                            remove_picture: !rename || rng.random_bool(0.5),
                        }
                    }
                    _ => Step {
                        user,
                        action: "delete",
                        plan: rng.random_bool(0.5).then(|| Plan::random(rng, targets)),
                        display_name: None,
                        remove_picture: false,
                    },
                },
            };
            status[k] = step.status_after(status[k]);
            scripts[k].push(step);
            scripted += 1;
            progressed = true;
        }
        anyhow::ensure!(
            progressed,
            "every offboarded user was deleted after {scripted} runs; use more --users for {runs} runs"
        );
    }
    Ok(scripts)
}

#[derive(Clone, Copy, Debug)]
pub struct Item {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub open: bool,
}

/// What one run promises for one item type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypePromise {
    pub in_scope: u64,
    pub moved: u64,
    /// Items per target (targets that get none left out).
    pub to: BTreeMap<i64, u64>,
    /// (item id, new owner), item by item.
    pub moves: Vec<(i64, i64)>,
}

pub type Promise = BTreeMap<ItemType, TypePromise>;

/// Every item of the company with the owner the suite expects, updated as runs are
/// enqueued (one active run per user, and targets are never offboarded, so a user's items
/// change only through that user's own runs, in order).
pub struct Ledger {
    /// Each offboarded user's items per type, oldest first.
    by_user: HashMap<(i64, ItemType), Vec<Item>>,
    pub expected: HashMap<(ItemType, i64), i64>,
    pub original: HashMap<(ItemType, i64), i64>,
}

impl Ledger {
    pub async fn load(pool: &PgPool, company_id: i64, leavers: &[i64]) -> anyhow::Result<Self> {
        let mut by_user: HashMap<(i64, ItemType), Vec<Item>> = HashMap::new();
        let mut original = HashMap::new();
        for item in ItemType::ALL {
            let sql = format!(
                "SELECT id, owner_id, created_at, ({}) AS open FROM {} WHERE company_id = $1
                 ORDER BY created_at, id",
                item.open_condition(),
                item.table()
            );
            let rows: Vec<(i64, i64, DateTime<Utc>, bool)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(company_id).fetch_all(pool).await?;
            for (id, owner, created_at, open) in rows {
                original.insert((item, id), owner);
                if leavers.contains(&owner) {
                    by_user.entry((owner, item)).or_default().push(Item { id, created_at, open });
                }
            }
        }
        for items in by_user.values_mut() {
            items.sort_by_key(|i| (i.created_at, i.id));
        }
        Ok(Self { by_user, expected: original.clone(), original })
    }

    /// What `plan` does to `user`'s items now: the items in scope that the user still owns,
    /// oldest first, each to the recipient of its position.
    pub fn promise(&self, user: i64, plan: &Plan) -> Promise {
        let mut promise = Promise::new();
        for item in ItemType::ALL {
            let Some(rule) = plan.rule_for(item) else { continue };
            let mut p = TypePromise::default();
            let items = self.by_user.get(&(user, item)).map(Vec::as_slice).unwrap_or_default();
            let in_scope = items
                .iter()
                .filter(|i| self.expected[&(item, i.id)] == user && (rule.all || i.open));
            for (position, i) in in_scope.enumerate() {
                p.in_scope += 1;
                if let Some(target) = rule.recipient(position as u64) {
                    p.moved += 1;
                    *p.to.entry(target).or_default() += 1;
                    p.moves.push((i.id, target));
                }
            }
            promise.insert(item, p);
        }
        promise
    }

    pub fn apply(&mut self, promise: &Promise) {
        for (item, p) in promise {
            for (id, owner) in &p.moves {
                self.expected.insert((*item, *id), *owner);
            }
        }
    }

    pub fn items(&self) -> usize {
        self.original.len()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

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

    #[test]
    fn scripts_have_exactly_the_runs_asked_for_and_respect_statuses() {
        let mut rng = StdRng::seed_from_u64(3);
        let leavers: Vec<i64> = (10..60).collect();
        let scripts = scripts(&mut rng, &leavers, &[1, 2, 3, 4], 130).unwrap();
        assert_eq!(scripts.iter().map(Vec::len).sum::<usize>(), 130);
        for script in &scripts {
            let mut status = Status::Active;
            for step in script {
                let needs = match step.action {
                    "deactivate" | "deactivate_and_delete" => Status::Active,
                    _ => Status::Deactivated,
                };
                assert_eq!(status, needs, "{script:?}");
                status = step.status_after(status);
            }
        }
    }
}
