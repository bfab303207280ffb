//! A run's steps against its promise (and its receipt), and a run the suite canceled.

use std::collections::BTreeMap;

use super::{Findings, Input, RunRow, StepRow};
use crate::chaos::{RunRecord, store::owned_by};
use offboard::domain::{ItemType, UserStatus};

/// A run the suite canceled and saw `canceled`.
pub async fn check_canceled(
    input: &Input<'_>,
    record: &RunRecord,
    steps: &[&StepRow],
    f: &mut Findings,
) -> anyhow::Result<()> {
    let user = record.user;
    let owned = owned_by(input.pool, input.company_id, user).await?;
    let then = input.canceled[&record.id];
    if owned != then {
        f.doubled.push(format!(
            "user {user} owned {then} items when run {} read canceled and {owned} now: items moved after the cancel",
            record.id
        ));
    }
    let (status, blocked): (UserStatus, bool) =
        sqlx::query_as("SELECT status, login_blocked FROM crm.users WHERE id = $1")
            .bind(user)
            .fetch_one(input.pool)
            .await?;
    if status != UserStatus::Active || blocked {
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

pub fn check_steps(record: &RunRecord, run: &RunRow, steps: &[&StepRow], f: &mut Findings) {
    let receipt = run.receipt.as_ref().map(|r| &r["reassigned"]);
    for step in steps {
        let Some(key) = step.name.strip_prefix("reassign_") else {
            // A step that calls outside counts its calls (done of total, never more);
            // [`remote::check`](crate::chaos::remote::check) checks each call against the receivers. Every other
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
