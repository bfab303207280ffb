//! The ledger of items: every item of the company with the owner the suite expects, and
//! what a run promises to move, item by item.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Plan;
use offboard::domain::ItemType;

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
