//! Transfer plans: which owned items move, and to whom.
//!
//! A plan has a rule per item type, or a `default` rule for every type without its own.
//! Items are taken oldest first (created_at, then id), and a rule's distribution maps an
//! item's position in that order to its new owner, so the split of `n` items is plain
//! arithmetic: a preview can promise exactly what the run then does.

mod distribution;
mod parse;

use std::{collections::BTreeMap, fmt, str::FromStr};

pub use self::{
    distribution::{Distribution, Split},
    parse::{PLAN_NOT_AN_OBJECT, PlanBody, RuleBody, TargetBody, string_enum},
};
use super::UserId;

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

#[cfg(test)]
mod tests;
