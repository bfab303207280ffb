//! Give back what an earlier run transferred: the run of an undo (action `undo_transfer`)
//! walks the earlier run's transfer journal in order, in batches of
//! `OFFBOARD_REASSIGN_BATCH` entries, and moves each item whose owner is still the one the
//! run gave it to back to the run's user (reactivated), or to the user the undo names.
//! Items changed since — another owner, or gone — are left where they are and counted.
//!
//! Each batch is one statement in its own transaction, which also stores the cursor (the
//! journal row and the position in it) and the counts so far, so a killed worker resumes
//! after the last committed batch and no entry is looked at twice. The move's own
//! condition (`owner = the journal's new owner`) makes a batch that did commit a no-op if
//! it were ever applied again.

use std::collections::BTreeMap;

use serde_json::{Value, json};
// Dynamic SQL here only splices fixed table, column and kind names from `JOURNALED`.
use sqlx::{AssertSqlSafe, PgConnection};

use super::{Finished, Progress, Stage, Step, StepContext, StepError};
use crate::domain::{UserStatus, journal::JOURNALED};

/// Registered in [`super::REGISTRY`]; the one step of an `undo_transfer` run.
pub(super) const STEP: Step = Step {
    name: "undo_transfer",
    stage: Stage::Fixed,
    // A second pass finds every item it gave back no longer with the recipient and would
    // count it as changed since: the receipt would lie.
    safe_to_repeat: false,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

/// Where the walk of the journal stands, with the counts so far (stored as the cursor).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Walk {
    /// The journal row of the last entry looked at, and its position (1-based) in the row.
    journal_id: i64,
    ord: i64,
    moved_back: BTreeMap<String, i64>,
    left: BTreeMap<String, i64>,
}

async fn apply(cx: &StepContext<'_>, tx: &mut PgConnection) -> Result<Progress, StepError> {
    let source = cx.run.params.undo_of.ok_or_else(|| {
        StepError::permanent("bad_run", "an undo names no run whose transfer it gives back")
    })?;
    let target = cx.run.params.to_user_id.map(|u| u.get()).unwrap_or(cx.user());
    let mut walk = match &cx.step.cursor {
        None => Walk::default(),
        Some(value) => serde_json::from_value(value.clone()).map_err(|_| {
            StepError::permanent("bad_cursor", "the stored undo cursor is unreadable")
        })?,
    };
    let total = match cx.step.total {
        Some(total) => total,
        None => {
            sqlx::query_scalar(
                "SELECT coalesce(sum(cardinality(item_ids)), 0)::bigint
                 FROM offboard.transfer_journal WHERE run_id = $1",
            )
            .bind(source)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    lock_active_target(tx, cx.company(), target).await?;

    let wanted = cx.settings.reassign_batch;
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(AssertSqlSafe(batch_sql()))
        .bind(source)
        .bind(walk.journal_id)
        .bind(walk.ord)
        .bind(wanted)
        .bind(target)
        .bind(cx.company())
        .fetch_all(&mut *tx)
        .await?;
    let mut looked_at = 0;
    for (kind, entries, moved, journal_id, ord) in rows {
        looked_at += entries;
        *walk.moved_back.entry(kind.clone()).or_default() += moved;
        *walk.left.entry(kind).or_default() += entries - moved;
        (walk.journal_id, walk.ord) = (journal_id, ord);
    }
    let done = cx.step.done + looked_at;
    let total = total.max(done);
    if looked_at == wanted && done < total {
        let cursor = serde_json::to_value(&walk).expect("a walk serializes");
        return Ok(Progress::Batch { done, total, cursor });
    }
    Ok(Progress::Finished(Finished {
        counts: receipt_counts(source, target, total, &walk),
        done,
        total,
        after_commit: Vec::new(),
    }))
}

/// Locks the user who gets the items back `FOR SHARE` (so they cannot be deactivated
/// while a batch moves items to them) and fails for good if they are not active.
async fn lock_active_target(
    tx: &mut PgConnection,
    company_id: i64,
    target: i64,
) -> Result<(), StepError> {
    let status: Option<UserStatus> = sqlx::query_scalar(
        "SELECT status FROM crm.users WHERE company_id = $1 AND id = $2 FOR SHARE",
    )
    .bind(company_id)
    .bind(target)
    .fetch_optional(&mut *tx)
    .await?;
    match status {
        Some(UserStatus::Active) => Ok(()),
        _ => Err(StepError::permanent(
            "target_inactive",
            format!("user {target} who gets the items back is not active; retry once they are"),
        )),
    }
}

/// One batch: binds `$1` the run undone, `$2`/`$3` the cursor (journal row, position),
/// `$4` the batch size, `$5` who gets the items back, `$6` the company. Returns per kind
/// the entries looked at and the items moved back, and the last entry's position.
fn batch_sql() -> String {
    let moves: Vec<String> = JOURNALED
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            format!(
                "back_{i} AS (
                     UPDATE {table} t SET {owner} = $5 FROM entries e
                     WHERE e.item_type = '{key}' AND t.id = e.item_id AND t.company_id = $6
                       AND t.{owner} = e.new_owner
                     RETURNING t.id)",
                table = kind.table,
                owner = kind.owner_column,
                key = kind.key,
            )
        })
        .collect();
    let back: Vec<String> = JOURNALED
        .iter()
        .enumerate()
        .map(|(i, kind)| format!("SELECT '{key}' AS item_type, id FROM back_{i}", key = kind.key))
        .collect();
    format!(
        "WITH rows AS (
             -- Only the journal rows the batch reaches (each holds up to a batch).
             SELECT id, item_type, item_ids, new_owner_ids FROM (
                 SELECT id, item_type, item_ids, new_owner_ids,
                        sum(cardinality(item_ids)) OVER (ORDER BY id) - cardinality(item_ids) AS before
                 FROM offboard.transfer_journal WHERE run_id = $1 AND id >= $2) r
             WHERE before < $3 + $4),
         entries AS (
             SELECT r.id AS jid, x.ord, r.item_type, x.item_id, x.new_owner
             FROM rows r,
                  unnest(r.item_ids, r.new_owner_ids) WITH ORDINALITY AS x(item_id, new_owner, ord)
             WHERE (r.id, x.ord) > ($2, $3)
             ORDER BY r.id, x.ord LIMIT $4),
         {moves},
         back AS ({back}),
         last AS (SELECT jid, ord FROM entries ORDER BY jid DESC, ord DESC LIMIT 1)
         SELECT e.item_type, count(*)::bigint, count(b.id)::bigint,
                (SELECT jid FROM last), (SELECT ord FROM last)::bigint
         FROM entries e LEFT JOIN back b ON b.item_type = e.item_type AND b.id = e.item_id
         GROUP BY e.item_type",
        moves = moves.join(",\n         "),
        back = back.join(" UNION ALL "),
    )
}

fn receipt_counts(source: uuid::Uuid, target: i64, total: i64, walk: &Walk) -> Value {
    json!({
        "undo_of": source,
        "to_user_id": target,
        "journaled": total,
        "moved_back": walk.moved_back,
        "left": walk.left,
        "moved_back_total": walk.moved_back.values().sum::<i64>(),
        "left_total": walk.left.values().sum::<i64>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_round_trips_through_its_stored_cursor() {
        let walk = Walk {
            journal_id: 7,
            ord: 3,
            moved_back: [("deals".to_string(), 4)].into(),
            left: [("deals".to_string(), 1)].into(),
        };
        let stored = serde_json::to_value(&walk).unwrap();
        assert_eq!(serde_json::from_value::<Walk>(stored).unwrap(), walk);
    }

    #[test]
    fn every_journaled_kind_has_its_move_back() {
        let sql = batch_sql();
        for kind in JOURNALED {
            assert!(sql.contains(&format!("'{}'", kind.key)), "{}", kind.key);
        }
    }
}
