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
//!
//! The checks are by what they look at: here the runs and what they tell (events, steps'
//! sums); [`runs`] a run's steps and a canceled run, [`items`] who owns each item,
//! [`users`] statuses, seats and redactions, [`purges`] the private-email purges.

mod items;
mod purges;
mod runs;
mod users;

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{RunRecord, model::Ledger};
use offboard::domain::{RunEventKind, RunStatus, StepStatus};

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
    status: RunStatus,
    steps_total: i32,
    steps_remaining: i32,
    receipt: Option<Value>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    run_id: Uuid,
    name: String,
    status: StepStatus,
    done: i64,
    total: Option<i64>,
    result: Option<Value>,
    last_error_code: Option<String>,
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
        if run.status != RunStatus::Succeeded {
            unpredictable.insert(record.user);
        }
        match run.status {
            RunStatus::Succeeded => t.succeeded += 1,
            RunStatus::Failed => {
                let dead: Vec<_> =
                    run_steps.iter().filter(|s| s.status == StepStatus::Dead).collect();
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
            RunStatus::Canceled if input.canceled.contains_key(&record.id) => {
                runs::check_canceled(&input, record, &run_steps, &mut f).await?;
                t.canceled += 1;
                continue;
            }
            RunStatus::Queued | RunStatus::Running | RunStatus::Canceling => {
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
        let succeeded_steps =
            run_steps.iter().filter(|s| s.status == StepStatus::Succeeded).count();
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
        runs::check_steps(record, run, &run_steps, &mut f);
    }

    items::check(&input, &unpredictable, &mut f, &mut t).await?;
    users::check(&input, &unpredictable, &mut f).await?;
    // What each reactivation says it canceled, from its step's counts.
    let canceled_by: HashMap<Uuid, i64> = steps
        .iter()
        .filter(|s| s.name == "reactivate_user" && s.status == StepStatus::Succeeded)
        .map(|s| {
            let n = s.result.as_ref().and_then(|r| r["private_email_purges_canceled"].as_i64());
            (s.run_id, n.unwrap_or(0))
        })
        .collect();
    purges::check(&input, &canceled_by, &unpredictable, &mut f, &mut t).await?;
    Ok((f, t))
}
