//! Purges: one per deactivation, fired after it was due unless a reactivation canceled it,
//! and every private email deleted once, by the first purge that fired.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Findings, Input, Tally};
use crate::chaos::store::private_emails;
use offboard::domain::{Action, FiredBy, PurgeStatus};

#[derive(sqlx::FromRow)]
struct PurgeRow {
    id: i64,
    user_id: i64,
    run_id: Uuid,
    status: PurgeStatus,
    fired_by: Option<FiredBy>,
    emails_deleted: Option<i32>,
    fired_at: Option<DateTime<Utc>>,
    due_at: DateTime<Utc>,
}

pub async fn check(
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
    let remaining = private_emails(input.pool, input.company_id).await?;

    for purge in &purges {
        match (purge.status, purge.fired_by) {
            (PurgeStatus::Done, Some(FiredBy::Queue)) => t.purges_by_queue += 1,
            (PurgeStatus::Done, _) => t.purges_by_sweeper += 1,
            (PurgeStatus::Canceled, _) => t.purges_canceled += 1,
            (PurgeStatus::Scheduled, _) => {}
        }
    }
    for (k, record) in input.records.iter().enumerate() {
        let deactivates =
            matches!(record.step.action, Action::Deactivate | Action::DeactivateAndDelete);
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
            .find(|r| r.user == record.user && r.step.action == Action::Reactivate)
            .map(|r| canceled_by.get(&r.id).copied().unwrap_or(0));
        match (purge.status, canceled) {
            // Fired before a reactivation came (the retention had passed), or canceled by it.
            (PurgeStatus::Done, None | Some(0)) | (PurgeStatus::Canceled, Some(1)) => {}
            (PurgeStatus::Done, Some(_)) => f.lost.push(format!(
                "purge {} fired though the reactivation of user {} canceled it",
                purge.id, record.user
            )),
            (PurgeStatus::Scheduled, None) => f.lost.push(format!(
                "purge {} of user {} is still scheduled after due + grace",
                purge.id, record.user
            )),
            (PurgeStatus::Scheduled, Some(_)) => f.lost.push(format!(
                "purge {} of user {} was not canceled by the reactivation",
                purge.id, record.user
            )),
            (PurgeStatus::Canceled, None) => f.lost.push(format!(
                "purge {} of user {} was canceled without a reactivation",
                purge.id, record.user
            )),
            (other, n) => f
                .broken
                .push(format!("purge {} is {other}; the reactivation canceled {n:?}", purge.id)),
        }
        if purge.status == PurgeStatus::Done && purge.fired_at.is_some_and(|at| at < purge.due_at) {
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
            purges.iter().filter(|p| p.user_id == user && p.status == PurgeStatus::Done).collect();
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
