//! Items: each one where the dry run put it; a canceled run's user's, where it was or
//! where it was promised.

use std::collections::{HashMap, HashSet};

use super::{Findings, Input, Tally};
use offboard::domain::ItemType;

/// Every item of the company against the ledger; counts the items checked and moved.
pub async fn check(
    input: &Input<'_>,
    unpredictable: &HashSet<i64>,
    f: &mut Findings,
    t: &mut Tally,
) -> anyhow::Result<()> {
    let (pool, company) = (input.pool, input.company_id);
    let canceled_users: HashSet<i64> = input
        .records
        .iter()
        .filter(|r| input.canceled.contains_key(&r.id))
        .map(|r| r.user)
        .collect();
    for item in ItemType::ALL {
        let sql = format!("SELECT id, owner_id FROM {} WHERE company_id = $1", item.table());
        let owners: Vec<(i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(company).fetch_all(pool).await?;
        let owners: HashMap<i64, i64> = owners.into_iter().collect();
        for (&(kind, id), &original) in &input.ledger.original {
            if kind == item && canceled_users.contains(&original) {
                let expected = input.ledger.expected[&(kind, id)];
                match owners.get(&id) {
                    None => f.lost.push(format!("{item} {id} is gone")),
                    Some(&owner) if owner == original || owner == expected => {}
                    Some(&owner) => f.doubled.push(format!(
                        "{item} {id} of canceled user {original} is owned by user {owner}; \
                         it was theirs or promised to user {expected}"
                    )),
                }
            }
            if kind != item || unpredictable.contains(&original) {
                continue;
            }
            t.items_checked += 1;
            let expected = input.ledger.expected[&(kind, id)];
            match owners.get(&id) {
                None => f.lost.push(format!("{item} {id} is gone")),
                Some(&owner) if owner == expected => {}
                Some(&owner) if owner == original => f.lost.push(format!(
                    "{item} {id} is still with user {owner}; the dry run promised it to user {expected}"
                )),
                Some(&owner) => f.doubled.push(format!(
                    "{item} {id} is owned by user {owner}; the dry run promised user {expected}"
                )),
            }
        }
    }
    t.items_moved = input
        .records
        .iter()
        .filter(|r| !unpredictable.contains(&r.user))
        .flat_map(|r| r.promise.values())
        .map(|p| p.moved)
        .sum();

    Ok(())
}
