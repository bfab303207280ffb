//! The verdict, read from the store once the faults are over: every run, step, item, user
//! and purge of the company against what the suite asked for and the dry runs promised.
//!
//! - **lost**: something asked for did not happen — a run not finished by the deadline, a
//!   run failed by a lost task (a step dead with `lease_expired` or `quarantined`), an item
//!   still with the offboarded user though promised to a target, a reassignment that moved
//!   fewer items than promised, a status, seat, revocation or redaction not applied, a
//!   deactivation without its purge, a purge still scheduled after due + grace for a user
//!   who was not reactivated, a purge canceled without a reactivation or fired after one.
//! - **doubled**: something happened more than once or beyond the promise — a run created
//!   twice, an item owned by someone other than its promised owner (a re-applied ratio
//!   batch shifts positions), a step with more done than promised, more than one
//!   `succeeded` event for a run, a run that completed more steps than it has, a second
//!   purge for one deactivation, emails deleted twice or without a purge, more seats held
//!   than the company has, a status that undid the user's last run.
//! - **canceled runs** (the suite canceled them mid-flight) are accepted when no item of the
//!   user moved after the suite saw the run `canceled`, every item is with the user or its
//!   promised target (never a third owner), no step did more than promised, no purge was
//!   scheduled, and the user is active again with login unblocked; anything else is doubled
//!   or lost. A reassignment stopped by a target deactivated outside offboard is a step dead
//!   with `target_inactive`: a recorded reason.
//! - **broken**: the service contradicted itself without losing or doubling — a dry run that
//!   disagrees with the arithmetic, a request refused, a receipt whose counts are not what
//!   happened, a purge fired before it was due.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    RunRecord,
    model::{Ledger, Status},
};
use offboard::domain::{ItemType, RunEventKind};

#[derive(Debug, Default)]
pub struct Findings {
    pub lost: Vec<String>,
    pub doubled: Vec<String>,
    pub broken: Vec<String>,
}

/// Figures for the report.
#[derive(Debug, Default)]
pub struct Tally {
    pub succeeded: usize,
    pub dead_with_reason: Vec<String>,
    pub unfinished: usize,
    pub steps_succeeded: i64,
    pub leases_taken_back: i64,
    pub retries: i64,
    pub purges_by_queue: usize,
    pub purges_by_sweeper: usize,
    pub purges_canceled: usize,
    /// Runs the suite canceled that ended `canceled` and passed the checks of one.
    pub canceled: usize,
    pub items_checked: usize,
    pub items_moved: u64,
}

pub struct Input<'a> {
    pub pool: &'a PgPool,
    pub company_id: i64,
    pub seats: i64,
    pub records: &'a [RunRecord],
    pub ledger: &'a Ledger,
    pub leavers: &'a [i64],
    pub keepers: &'a [i64],
    /// Private emails linked to an entity, per user, before the first run.
    pub emails_at_start: &'a HashMap<i64, i64>,
    /// Runs the suite canceled and saw `canceled`, with the items their user owned then.
    pub canceled: &'a HashMap<Uuid, i64>,
    /// Runs the suite's target probes created (not part of any script).
    pub probe_runs: &'a [Uuid],
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: Uuid,
    status: String,
    steps_total: i32,
    steps_remaining: i32,
    receipt: Option<Value>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    run_id: Uuid,
    name: String,
    status: String,
    done: i64,
    total: Option<i64>,
    result: Option<Value>,
    last_error_code: Option<String>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    status: String,
    holds_seat: bool,
    name: Option<String>,
    picture_removed: bool,
    deactivated: bool,
    deleted: bool,
    access: i64,
}

#[derive(sqlx::FromRow)]
struct PurgeRow {
    id: i64,
    user_id: i64,
    run_id: Uuid,
    status: String,
    fired_by: Option<String>,
    emails_deleted: Option<i32>,
    fired_at: Option<DateTime<Utc>>,
    due_at: DateTime<Utc>,
}

pub async fn verify(input: Input<'_>) -> anyhow::Result<(Findings, Tally)> {
    let mut f = Findings::default();
    let mut t = Tally::default();
    let pool = input.pool;
    let company = input.company_id;

    let runs: Vec<RunRow> = sqlx::query_as(
        "SELECT id, status, steps_total, steps_remaining, receipt
         FROM offboard.runs WHERE company_id = $1",
    )
    .bind(company)
    .fetch_all(pool)
    .await?;
    let runs: HashMap<Uuid, RunRow> = runs.into_iter().map(|r| (r.id, r)).collect();
    let steps: Vec<StepRow> = sqlx::query_as(
        "SELECT run_id, name, status, done, total, result, last_error_code FROM offboard.steps
         WHERE company_id = $1",
    )
    .bind(company)
    .fetch_all(pool)
    .await?;
    let mut steps_of: HashMap<Uuid, Vec<&StepRow>> = HashMap::new();
    for step in &steps {
        steps_of.entry(step.run_id).or_default().push(step);
    }
    let events: Vec<(Uuid, RunEventKind, i64)> = sqlx::query_as(
        "SELECT e.run_id, e.kind, count(*) FROM offboard.run_events e
         JOIN offboard.runs r ON r.id = e.run_id WHERE r.company_id = $1 GROUP BY 1, 2",
    )
    .bind(company)
    .fetch_all(pool)
    .await?;
    let event_count = |run: Uuid, kind: RunEventKind| {
        events.iter().find(|(r, k, _)| *r == run && *k == kind).map_or(0, |(_, _, n)| *n)
    };
    let count_of = |kind: RunEventKind| -> i64 {
        events.iter().filter(|(_, k, _)| *k == kind).map(|(_, _, n)| n).sum()
    };
    t.leases_taken_back = count_of(RunEventKind::LeaseExpired);
    t.retries = count_of(RunEventKind::StepRetryScheduled);

    // Runs: each asked for once, each finished, each step's progress what was promised.
    let asked: HashSet<Uuid> = input.records.iter().map(|r| r.id).collect();
    for id in runs.keys().filter(|id| !asked.contains(id) && !input.probe_runs.contains(id)) {
        f.doubled.push(format!("run {id} exists though the suite never asked for it"));
    }
    // Users whose items and status cannot be predicted: one of their runs did not succeed.
    let mut unpredictable: HashSet<i64> = HashSet::new();
    for record in input.records {
        let Some(run) = runs.get(&record.id) else {
            f.lost.push(format!("run {} (user {}) is not in the ledger", record.id, record.user));
            unpredictable.insert(record.user);
            continue;
        };
        let run_steps = steps_of.get(&record.id).cloned().unwrap_or_default();
        if run.status != "succeeded" {
            unpredictable.insert(record.user);
        }
        match run.status.as_str() {
            "succeeded" => t.succeeded += 1,
            "failed" => {
                let dead: Vec<_> = run_steps.iter().filter(|s| s.status == "dead").collect();
                let lost_task = dead.is_empty()
                    || dead.iter().any(|s| {
                        matches!(
                            s.last_error_code.as_deref(),
                            None | Some("lease_expired" | "quarantined")
                        )
                    });
                let reasons: Vec<String> = dead
                    .iter()
                    .map(|s| format!("{}: {}", s.name, s.last_error_code.as_deref().unwrap_or("?")))
                    .collect();
                let what = format!(
                    "run {} ({} of user {}) failed [{}]",
                    record.id,
                    record.step.action,
                    record.user,
                    reasons.join(", ")
                );
                if lost_task {
                    f.lost.push(what);
                } else {
                    t.dead_with_reason.push(what);
                }
                continue;
            }
            "canceled" if input.canceled.contains_key(&record.id) => {
                check_canceled(&input, record, &run_steps, &mut f).await?;
                t.canceled += 1;
                continue;
            }
            "queued" | "running" | "canceling" => {
                t.unfinished += 1;
                f.lost.push(format!(
                    "run {} ({} of user {}) is still {} at the deadline",
                    record.id, record.step.action, record.user, run.status
                ));
                continue;
            }
            other => {
                f.broken.push(format!("run {} ended {other}", record.id));
                continue;
            }
        }
        if run.steps_remaining < 0 {
            f.doubled.push(format!(
                "run {} completed {} more steps than it has",
                record.id, -run.steps_remaining
            ));
        }
        let succeeded_steps = run_steps.iter().filter(|s| s.status == "succeeded").count();
        t.steps_succeeded += succeeded_steps as i64;
        if succeeded_steps != run.steps_total as usize || run_steps.len() != succeeded_steps {
            f.lost.push(format!(
                "run {} succeeded with {succeeded_steps} of {} steps succeeded",
                record.id, run.steps_total
            ));
        }
        match event_count(record.id, RunEventKind::Succeeded) {
            1 => {}
            0 => f.broken.push(format!("run {} succeeded without a history event", record.id)),
            n => f.doubled.push(format!("run {} has {n} succeeded events", record.id)),
        }
        if event_count(record.id, RunEventKind::Enqueued) != 1 {
            f.doubled.push(format!("run {} was enqueued more than once", record.id));
        }
        check_steps(record, run, &run_steps, &mut f);
    }

    // Items: each one where the dry run put it; a canceled run's user's, where it was or
    // where it was promised.
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

    check_users(&input, &unpredictable, &mut f).await?;
    // What each reactivation says it canceled, from its step's counts.
    let canceled_by: HashMap<Uuid, i64> = steps
        .iter()
        .filter(|s| s.name == "reactivate_user" && s.status == "succeeded")
        .map(|s| {
            let n = s.result.as_ref().and_then(|r| r["private_email_purges_canceled"].as_i64());
            (s.run_id, n.unwrap_or(0))
        })
        .collect();
    check_purges(&input, &canceled_by, &unpredictable, &mut f, &mut t).await?;
    Ok((f, t))
}

/// A run the suite canceled and saw `canceled`.
async fn check_canceled(
    input: &Input<'_>,
    record: &RunRecord,
    steps: &[&StepRow],
    f: &mut Findings,
) -> anyhow::Result<()> {
    let user = record.user;
    let mut owned = 0;
    for item in ItemType::ALL {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE company_id = $1 AND owner_id = $2",
            item.table()
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(input.company_id)
            .bind(user)
            .fetch_one(input.pool)
            .await?;
        owned += n;
    }
    let then = input.canceled[&record.id];
    if owned != then {
        f.doubled.push(format!(
            "user {user} owned {then} items when run {} read canceled and {owned} now: items moved after the cancel",
            record.id
        ));
    }
    let (status, blocked): (String, bool) =
        sqlx::query_as("SELECT status, login_blocked FROM crm.users WHERE id = $1")
            .bind(user)
            .fetch_one(input.pool)
            .await?;
    if status != "active" || blocked {
        f.lost.push(format!(
            "user {user} is {status} (login blocked: {blocked}) after run {} was canceled",
            record.id
        ));
    }
    for step in steps {
        let Some(key) = step.name.strip_prefix("reassign_") else { continue };
        let promised = key
            .parse::<ItemType>()
            .ok()
            .and_then(|k| record.promise.get(&k))
            .map_or(0, |p| p.moved as i64);
        if step.done > promised {
            f.doubled.push(format!(
                "{} of canceled run {}: {} done, {promised} promised",
                step.name, record.id, step.done
            ));
        }
    }
    let purges: i64 =
        sqlx::query_scalar("SELECT count(*) FROM offboard.scheduled_purges WHERE run_id = $1")
            .bind(record.id)
            .fetch_one(input.pool)
            .await?;
    if purges > 0 {
        f.doubled.push(format!("canceled run {} scheduled a purge", record.id));
    }
    Ok(())
}

fn check_steps(record: &RunRecord, run: &RunRow, steps: &[&StepRow], f: &mut Findings) {
    let receipt = run.receipt.as_ref().map(|r| &r["reassigned"]);
    for step in steps {
        let Some(key) = step.name.strip_prefix("reassign_") else {
            // A step that calls outside counts its calls (done of total, never more);
            // [`super::remote::check`] checks each call against the receivers. Every other
            // step is one unit of work.
            let calls_out = offboard::outbound::outside::CallKind::of_step(&step.name).is_some();
            let over = if calls_out {
                step.done > step.total.unwrap_or(1)
            } else {
                step.done > 1 || step.total.unwrap_or(1) > 1
            };
            if over {
                f.doubled.push(format!(
                    "step {} of run {} counts {} done of {:?}",
                    step.name, record.id, step.done, step.total
                ));
            }
            continue;
        };
        let Some(promise) = key.parse::<ItemType>().ok().and_then(|k| record.promise.get(&k))
        else {
            f.broken.push(format!("run {} has a step {} nobody asked for", record.id, step.name));
            continue;
        };
        let (moved, in_scope) = (promise.moved as i64, promise.in_scope as i64);
        if step.done > moved {
            f.doubled.push(format!(
                "{} of run {}: {} done, {moved} promised",
                step.name, record.id, step.done
            ));
        } else if step.done < moved {
            f.lost.push(format!(
                "{} of run {}: {} done, {moved} promised",
                step.name, record.id, step.done
            ));
        }
        if step.total != Some(in_scope) {
            f.broken.push(format!(
                "{} of run {}: total {:?}, the dry run counted {in_scope} in scope",
                step.name, record.id, step.total
            ));
        }
        let receipt = receipt.map(|r| &r[key]);
        let receipt_to: BTreeMap<i64, u64> = receipt
            .and_then(|r| r["to"].as_object())
            .map(|to| {
                to.iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                    .filter(|(_, n)| *n > 0)
                    .collect()
            })
            .unwrap_or_default();
        let receipt_moved = receipt.and_then(|r| r["moved"].as_i64());
        if receipt_to != promise.to || receipt_moved != Some(moved) {
            f.broken.push(format!(
                "the receipt of run {} says {key} went {receipt_to:?} ({receipt_moved:?} moved); promised {:?}",
                record.id, promise.to
            ));
        }
    }
    for key in record.promise.keys() {
        if !steps.iter().any(|s| s.name == format!("reassign_{}", key.key())) {
            f.lost.push(format!("run {} has no step reassigning {key}", record.id));
        }
    }
}

async fn check_users(
    input: &Input<'_>,
    unpredictable: &HashSet<i64>,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let users: Vec<UserRow> = sqlx::query_as(
        "SELECT u.id, u.status, u.holds_seat, u.name, u.picture_url IS NULL AS picture_removed,
                u.deactivated_at IS NOT NULL AS deactivated, u.deleted_at IS NOT NULL AS deleted,
                (SELECT count(*) FROM crm.sessions s WHERE s.user_id = u.id)
                  + (SELECT count(*) FROM crm.api_tokens a WHERE a.user_id = u.id) AS access
         FROM crm.users u WHERE u.company_id = $1",
    )
    .bind(input.company_id)
    .fetch_all(input.pool)
    .await?;
    let seats_held = users.iter().filter(|u| u.holds_seat).count() as i64;
    if seats_held > input.seats {
        f.doubled.push(format!("{seats_held} seats held; the company has {}", input.seats));
    }
    for user in &users {
        if input.keepers.contains(&user.id) {
            if user.status != "active" || !user.holds_seat {
                f.broken.push(format!("target user {} is {}", user.id, user.status));
            }
            continue;
        }
        if !input.leavers.contains(&user.id) || unpredictable.contains(&user.id) {
            continue;
        }
        let runs: Vec<&RunRecord> = input.records.iter().filter(|r| r.user == user.id).collect();
        let mut before = Status::Active;
        let mut expected = Status::Active;
        for run in &runs {
            before = expected;
            expected = run.step.status_after(expected);
        }
        if user.status != expected.as_str() {
            let what = format!(
                "user {} is {}; its last run ({}) should have left it {}",
                user.id,
                user.status,
                runs.last().map_or("none", |r| r.step.action),
                expected.as_str()
            );
            if user.status == before.as_str() {
                f.lost.push(what)
            } else {
                f.doubled.push(what)
            }
            continue;
        }
        if user.holds_seat != (expected == Status::Active) {
            f.lost.push(format!(
                "user {} is {} and {} a seat",
                user.id,
                user.status,
                if user.holds_seat { "holds" } else { "holds no" }
            ));
        }
        if user.deactivated != (expected != Status::Active)
            || user.deleted != (expected == Status::Deleted)
        {
            f.lost.push(format!("user {} is {} with the wrong timestamps", user.id, user.status));
        }
        if !runs.is_empty() && user.access > 0 {
            f.lost
                .push(format!("user {} still has {} sessions or API tokens", user.id, user.access));
        }
        // The last redaction stands unless a deletion erased everything after it.
        if expected != Status::Deleted
            && let Some(redaction) = runs.iter().rev().find(|r| r.step.action == "redact")
        {
            if let Some(name) = &redaction.step.display_name
                && user.name.as_deref() != Some(name.as_str())
            {
                f.lost.push(format!("user {} was not renamed by run {}", user.id, redaction.id));
            }
            if redaction.step.remove_picture && !user.picture_removed {
                f.lost.push(format!(
                    "user {} kept the picture run {} removed",
                    user.id, redaction.id
                ));
            }
        }
    }
    Ok(())
}

async fn check_purges(
    input: &Input<'_>,
    canceled_by: &HashMap<Uuid, i64>,
    unpredictable: &HashSet<i64>,
    f: &mut Findings,
    t: &mut Tally,
) -> anyhow::Result<()> {
    let purges: Vec<PurgeRow> = sqlx::query_as(
        "SELECT id, user_id, run_id, status, fired_by, emails_deleted, fired_at, due_at
         FROM offboard.scheduled_purges WHERE company_id = $1 ORDER BY id",
    )
    .bind(input.company_id)
    .fetch_all(input.pool)
    .await?;
    let remaining: HashMap<i64, i64> = sqlx::query_as(
        "SELECT owner_id, count(*) FROM crm.emails
         WHERE company_id = $1 AND visibility = 'private' AND linked_type IS NOT NULL GROUP BY 1",
    )
    .bind(input.company_id)
    .fetch_all(input.pool)
    .await?
    .into_iter()
    .collect();

    for purge in &purges {
        match (purge.status.as_str(), purge.fired_by.as_deref()) {
            ("done", Some("queue")) => t.purges_by_queue += 1,
            ("done", _) => t.purges_by_sweeper += 1,
            ("canceled", _) => t.purges_canceled += 1,
            _ => {}
        }
    }
    for (k, record) in input.records.iter().enumerate() {
        let deactivates = matches!(record.step.action, "deactivate" | "deactivate_and_delete");
        if !deactivates || unpredictable.contains(&record.user) {
            continue;
        }
        let mine: Vec<&PurgeRow> = purges.iter().filter(|p| p.run_id == record.id).collect();
        let purge = match mine.as_slice() {
            [] => {
                f.lost.push(format!("deactivation run {} recorded no purge", record.id));
                continue;
            }
            [one] => *one,
            more => {
                f.doubled.push(format!(
                    "deactivation run {} recorded {} purges",
                    record.id,
                    more.len()
                ));
                continue;
            }
        };
        // The reactivation that followed, if any, and whether its transaction canceled a
        // purge: exact whatever the commit order of the purge and the reactivation.
        let canceled = input.records[k + 1..]
            .iter()
            .find(|r| r.user == record.user && r.step.action == "reactivate")
            .map(|r| canceled_by.get(&r.id).copied().unwrap_or(0));
        match (purge.status.as_str(), canceled) {
            // Fired before a reactivation came (the retention had passed), or canceled by it.
            ("done", None | Some(0)) | ("canceled", Some(1)) => {}
            ("done", Some(_)) => f.lost.push(format!(
                "purge {} fired though the reactivation of user {} canceled it",
                purge.id, record.user
            )),
            ("scheduled", None) => f.lost.push(format!(
                "purge {} of user {} is still scheduled after due + grace",
                purge.id, record.user
            )),
            ("scheduled", Some(_)) => f.lost.push(format!(
                "purge {} of user {} was not canceled by the reactivation",
                purge.id, record.user
            )),
            ("canceled", None) => f.lost.push(format!(
                "purge {} of user {} was canceled without a reactivation",
                purge.id, record.user
            )),
            (other, n) => f
                .broken
                .push(format!("purge {} is {other}; the reactivation canceled {n:?}", purge.id)),
        }
        if purge.status == "done" && purge.fired_at.is_some_and(|at| at < purge.due_at) {
            f.broken.push(format!("purge {} fired before it was due", purge.id));
        }
    }
    for purge in &purges {
        if !input.records.iter().any(|r| r.id == purge.run_id) {
            f.broken.push(format!("purge {} belongs to no run of the suite", purge.id));
        }
    }

    // Emails: the first purge that fired deleted them all, later ones nothing.
    for &user in input.leavers {
        if unpredictable.contains(&user) {
            continue;
        }
        let at_start = input.emails_at_start.get(&user).copied().unwrap_or(0);
        let left = remaining.get(&user).copied().unwrap_or(0);
        let mut fired: Vec<&PurgeRow> =
            purges.iter().filter(|p| p.user_id == user && p.status == "done").collect();
        fired.sort_by_key(|p| p.fired_at);
        let deleted: i64 = fired.iter().map(|p| i64::from(p.emails_deleted.unwrap_or(0))).sum();
        if deleted > at_start || fired.iter().skip(1).any(|p| p.emails_deleted.unwrap_or(0) > 0) {
            f.doubled.push(format!("user {user}: purges deleted {deleted} of {at_start} emails"));
        }
        match (fired.is_empty(), left) {
            (false, 0) => {}
            (false, n) => f.lost.push(format!("user {user}: {n} private emails survived a purge")),
            (true, n) if n == at_start => {}
            (true, n) => f.doubled.push(format!(
                "user {user}: {} private emails deleted without a purge",
                at_start - n
            )),
        }
    }
    Ok(())
}
