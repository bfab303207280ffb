//! Reassign the items of one type per the transfer plan, in bounded batches.
//!
//! Items are taken oldest first (created_at, then id). Each call moves at most
//! `reassign_batch` rows in its own transaction, which also stores the keyset cursor and
//! `done`, so a killed worker resumes exactly where the last commit left off and the n-th
//! item in the order always goes where the plan's arithmetic says — what a dry run promised.
//!
//! Single and ratio plans move everything: they keep taking batches until one comes back
//! short, so items the user created while the run went on move too. Hardcoded counts stop
//! at their sum of the items in scope when the step began, exactly as the dry run said.
//! Every batch first locks its targets (`FOR SHARE`, so none can be deactivated while it
//! moves items to them) and fails for good with `target_inactive` if one is no longer
//! active: never an item written to an inactive user.
//!
//! The statement that moves a batch also writes its row of the transfer journal (the ids
//! moved and each one's new owner; see `offboard.transfer_journal`), so what a run moved
//! is recorded exactly when it commits, and an undo can give it back.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
// Dynamic SQL here only splices fixed table names and conditions from `ItemType`.
use sqlx::{AssertSqlSafe, PgConnection};

use super::{Finished, Progress, Stage, Step, StepArg, StepContext, StepError};
use crate::{
    crm::items::count_in_scope,
    domain::{Distribution, ItemType, Scope, UserId},
};

/// The position after the last moved item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    created_at: DateTime<Utc>,
    id: i64,
}

impl Cursor {
    fn start() -> Self {
        // Before any item; PostgreSQL cannot store chrono's own minimum.
        let year_one = "0001-01-01T00:00:00Z".parse().expect("valid timestamp");
        Self { created_at: year_one, id: 0 }
    }

    fn from_json(value: Option<&Value>) -> Result<Self, StepError> {
        let Some(value) = value else { return Ok(Self::start()) };
        let parsed = (|| {
            let created_at = value.get("created_at")?.as_str()?.parse().ok()?;
            let id = value.get("id")?.as_i64()?;
            Some(Self { created_at, id })
        })();
        parsed.ok_or_else(|| {
            StepError::permanent("bad_cursor", "the stored reassignment cursor is unreadable")
        })
    }

    fn to_json(self) -> Value {
        json!({"created_at": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), "id": self.id})
    }
}

/// Registered in [`super::REGISTRY`]; planned once per item type of the transfer plan
/// (`reassign_deals`, …).
pub(super) const STEP: Step = Step {
    name: "reassign",
    stage: Stage::PerItemType,
    safe_to_repeat: true,
    apply: |cx, tx, arg| {
        Box::pin(async move {
            let StepArg::Item(item) = arg else {
                return Err(StepError::permanent(
                    "unknown_step",
                    "a reassignment needs an item type",
                ));
            };
            apply(cx, tx, item).await
        })
    },
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
    item: ItemType,
) -> Result<Progress, StepError> {
    let rule = cx.run.plan.rule_for(item).ok_or_else(|| {
        StepError::permanent("no_transfer_rule", format!("the plan has no rule for {item}"))
    })?;
    let total = match cx.step.total {
        Some(total) => total,
        None => count_in_scope(&mut *tx, cx.company(), cx.user(), item, rule.scope).await?,
    };
    let open_ended = !matches!(rule.distribution, Distribution::Hardcoded(_));
    let limit = match open_ended {
        true => i64::MAX,
        false => rule.distribution.moves_at_most(total as u64) as i64,
    };
    let done = cx.step.done;
    let wanted = (limit - done).min(cx.settings.reassign_batch);
    let cursor = Cursor::from_json(cx.step.cursor.as_ref())?;

    let (moved, last) = if wanted <= 0 {
        (0, None)
    } else {
        lock_active_targets(tx, cx.company(), &rule.distribution.targets()).await?;
        match &rule.distribution {
            Distribution::Single(target) => {
                move_batch_to_one(tx, cx, item, rule.scope, cursor, wanted, *target).await?
            }
            distribution => {
                move_batch_by_position(tx, cx, item, rule.scope, cursor, wanted, done, distribution)
                    .await?
            }
        }
    };
    let done = done + moved;
    // Items created during the run count as in scope once moved.
    let total = total.max(done);

    match last {
        Some(last) if moved == wanted && done < limit => {
            Ok(Progress::Batch { done, total, cursor: last.to_json() })
        }
        _ => Ok(Progress::Finished(Finished {
            counts: receipt_counts(item, rule.scope, total, done, &rule.distribution),
            done,
            total,
            after_commit: Vec::new(),
        })),
    }
}

/// Locks the targets `FOR SHARE` for the transaction (in id order) and fails for good
/// with `target_inactive` if one is not an active user of the company.
async fn lock_active_targets(
    tx: &mut PgConnection,
    company_id: i64,
    targets: &[UserId],
) -> Result<(), StepError> {
    let ids: Vec<i64> = targets.iter().map(|t| t.get()).collect();
    // One target (every single-target rule) by `id = $2`: PostgreSQL plans `= ANY ($2)`
    // anew on every call, as it cannot tell how many ids a generic plan would be given
    // (0.18 ms of planning a call, 7 calls a run in `bench layoff`); `id = $2` it plans
    // once per connection.
    let active: Vec<i64> = match ids.as_slice() {
        [id] => sqlx::query_scalar(
            "SELECT id FROM (SELECT id, status FROM crm.users
                             WHERE company_id = $1 AND id = $2 FOR SHARE) u
             WHERE status = 'active'",
        )
        .bind(company_id)
        .bind(id),
        _ => sqlx::query_scalar(
            "SELECT id FROM (SELECT id, status FROM crm.users
                             WHERE company_id = $1 AND id = ANY ($2)
                             ORDER BY id FOR SHARE) u
             WHERE status = 'active'",
        )
        .bind(company_id)
        .bind(&ids),
    }
    .fetch_all(&mut *tx)
    .await?;
    match ids.iter().find(|id| !active.contains(id)) {
        None => Ok(()),
        Some(id) => Err(StepError::permanent(
            "target_inactive",
            format!(
                "target user {id} is no longer active; fix the plan (or the user), then retry the step"
            ),
        )),
    }
}

/// Single target: select, move and journal one batch in one statement.
async fn move_batch_to_one(
    tx: &mut PgConnection,
    cx: &StepContext<'_>,
    item: ItemType,
    scope: Scope,
    cursor: Cursor,
    wanted: i64,
    target: UserId,
) -> Result<(i64, Option<Cursor>), StepError> {
    let (moved, created_at, id): (i64, Option<DateTime<Utc>>, Option<i64>) =
        sqlx::query_as(AssertSqlSafe(single_target_sql(item, scope, Journal::On)))
            .bind(cx.company())
            .bind(cx.user())
            .bind(target.get())
            .bind(cursor.created_at)
            .bind(cursor.id)
            .bind(wanted)
            .bind(cx.run.id)
            .fetch_one(&mut *tx)
            .await?;
    let last = created_at.zip(id).map(|(created_at, id)| Cursor { created_at, id });
    Ok((moved, last))
}

/// Whether a batch's statement also writes its journal row. Always on in a run; the
/// bench runs the same statement without it as the baseline of the journal's cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    On,
    Off,
}

/// The statement moving one batch to one target: binds `$1` company, `$2` user, `$3`
/// target, `$4`/`$5` the cursor (created_at, id), `$6` the batch size, `$7` the run id;
/// returns the number moved and the last item's (created_at, id). With the journal on,
/// the moved ids go to one journal row (none when nothing moved).
pub fn single_target_sql(item: ItemType, scope: Scope, journal: Journal) -> String {
    let journal = match journal {
        Journal::On => format!(
            "journal AS (
                 INSERT INTO offboard.transfer_journal
                     (run_id, company_id, item_type, previous_owner_id, item_ids, new_owner_ids)
                 SELECT $7, $1, '{key}', $2, array_agg(id), array_fill($3::bigint, ARRAY[count(*)::int])
                 FROM moved HAVING count(*) > 0),",
            key = item.key()
        ),
        Journal::Off => String::new(),
    };
    format!(
        "WITH batch AS (
             SELECT id, created_at FROM {table}
             WHERE owner_id = $2 AND company_id = $1 AND {scope} AND (created_at, id) > ($4, $5)
             ORDER BY created_at, id LIMIT $6 FOR UPDATE),
         moved AS (
             UPDATE {table} t SET owner_id = $3 FROM batch b WHERE t.id = b.id
             RETURNING b.created_at, b.id),
         {journal}
         -- Every parameter typed, with the journal or without.
         params AS (SELECT $7::uuid AS run)
         SELECT c.n, l.created_at, l.id
         FROM (SELECT count(*) AS n FROM moved) c
         LEFT JOIN LATERAL (SELECT created_at, id FROM moved ORDER BY created_at DESC, id DESC LIMIT 1) l
           ON true",
        table = item.table(),
        scope = item.scope_condition(scope),
    )
}

/// The statement writing a read batch back by id, each item to its own owner: binds `$1`
/// the ids, `$2` their new owners, `$3` the run id, `$4` company, `$5` the previous owner;
/// with the journal on, the same arrays go to one journal row.
pub fn by_position_update_sql(item: ItemType, journal: Journal) -> String {
    let journal = match journal {
        Journal::On => format!(
            "journal AS (
                 INSERT INTO offboard.transfer_journal
                     (run_id, company_id, item_type, previous_owner_id, item_ids, new_owner_ids)
                 SELECT $3, $4, '{key}', $5, $1, $2 WHERE cardinality($1::bigint[]) > 0),",
            key = item.key()
        ),
        Journal::Off => String::new(),
    };
    format!(
        "WITH moved AS (
             UPDATE {table} t SET owner_id = v.owner
             FROM unnest($1::bigint[], $2::bigint[]) AS v(id, owner) WHERE t.id = v.id
             RETURNING t.id),
         {journal}
         -- Every parameter typed, with the journal or without.
         params AS (SELECT $3::uuid, $4::bigint, $5::bigint)
         SELECT count(*) FROM moved",
        table = item.table()
    )
}

/// Ratio and hardcoded: the owner depends on each item's position in the order, so the
/// batch is read, mapped, and written back by id.
#[allow(clippy::too_many_arguments)]
async fn move_batch_by_position(
    tx: &mut PgConnection,
    cx: &StepContext<'_>,
    item: ItemType,
    scope: Scope,
    cursor: Cursor,
    wanted: i64,
    done: i64,
    distribution: &Distribution<UserId>,
) -> Result<(i64, Option<Cursor>), StepError> {
    let select = format!(
        "SELECT id, created_at FROM {table}
         WHERE owner_id = $2 AND company_id = $1 AND {scope} AND (created_at, id) > ($3, $4)
         ORDER BY created_at, id LIMIT $5 FOR UPDATE",
        table = item.table(),
        scope = item.scope_condition(scope),
    );
    let batch: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(AssertSqlSafe(select))
        .bind(cx.company())
        .bind(cx.user())
        .bind(cursor.created_at)
        .bind(cursor.id)
        .bind(wanted)
        .fetch_all(&mut *tx)
        .await?;
    let Some(&(last_id, last_created)) = batch.last() else { return Ok((0, None)) };

    let mut ids = Vec::with_capacity(batch.len());
    let mut owners = Vec::with_capacity(batch.len());
    for (offset, (id, _)) in batch.iter().enumerate() {
        let position = (done + offset as i64) as u64;
        // Positions stay below the plan's limit, so every item has a recipient.
        let owner = distribution.recipient_at(position).ok_or_else(|| {
            StepError::permanent("plan_exhausted", "an item past the plan's counts was selected")
        })?;
        ids.push(*id);
        owners.push(owner.get());
    }
    let _: i64 = sqlx::query_scalar(AssertSqlSafe(by_position_update_sql(item, Journal::On)))
        .bind(&ids)
        .bind(&owners)
        .bind(cx.run.id)
        .bind(cx.company())
        .bind(cx.user())
        .fetch_one(&mut *tx)
        .await?;
    Ok((batch.len() as i64, Some(Cursor { created_at: last_created, id: last_id })))
}

fn receipt_counts(
    item: ItemType,
    scope: Scope,
    total: i64,
    moved: i64,
    distribution: &Distribution<UserId>,
) -> Value {
    let split = distribution.split(moved as u64);
    let to: Map<String, Value> =
        split.targets.iter().map(|(user, n)| (user.to_string(), json!(n))).collect();
    json!({
        "item_type": item.key(),
        "scope": scope.as_str(),
        "mode": distribution.mode(),
        "in_scope": total,
        "moved": moved,
        "stays": total - moved,
        "to": to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_with_microseconds() {
        let c = Cursor { created_at: "2026-01-02T03:04:05.123456Z".parse().unwrap(), id: 42 };
        assert_eq!(Cursor::from_json(Some(&c.to_json())).unwrap(), c);
        assert_eq!(Cursor::from_json(None).unwrap(), Cursor::start());
        assert!(Cursor::from_json(Some(&json!({"id": 1}))).is_err());
    }
}
