//! Transfer targets deactivated while items flow to them: through the API, which must
//! refuse, and outside offboard, which must stop the reassignment with `target_inactive`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    RunRecord,
    api::Api,
    drive::Lane,
    report::Interference,
    store::{owned_by, retrying},
};
use offboard::domain::RunStatus;

/// Deactivates a user some in-flight run is moving items to. Through the API
/// (`outside == false`) the request must be refused with 409 `user_is_transfer_target`.
/// Outside offboard (a direct update of the store, as a host could), the run's
/// reassignment must stop with `target_inactive` and write nothing more to the user; the
/// user is made active again after, so the rest of the suite's plans stay valid.
#[allow(clippy::too_many_arguments)]
pub async fn deactivate_a_target(
    api: &Api,
    pool: &PgPool,
    lanes: &[Lane],
    records: &[RunRecord],
    company_id: i64,
    actor: i64,
    admins: &[i64],
    outside: bool,
    n: u32,
    interference: &mut Interference,
    probe_runs: &mut Vec<Uuid>,
) -> anyhow::Result<()> {
    // An in-flight run with a reassignment still to do, and one of its targets.
    let candidates: Vec<&RunRecord> = lanes
        .iter()
        .filter_map(|l| l.active)
        .map(|k| &records[k])
        .filter(|r| r.promise.values().any(|p| p.moved > 0))
        .collect();
    let mut chosen = None;
    for record in candidates {
        // A read that fails (PostgreSQL restarting) skips this deactivation.
        let Ok(pending) = sqlx::query_scalar::<_, String>(
            "SELECT name FROM offboard.steps
             WHERE run_id = $1 AND name LIKE 'reassign\\_%' AND status NOT IN ('succeeded', 'skipped', 'dead')",
        )
        .bind(record.id)
        .fetch_all(pool)
        .await
        else {
            return Ok(());
        };
        let target = record
            .promise
            .iter()
            .filter(|(item, _)| pending.iter().any(|s| s == &format!("reassign_{}", item.key())))
            .flat_map(|(_, p)| p.to.keys().copied())
            // Not an admin: the company-wide admin rules would answer first.
            .find(|u| !admins.contains(u));
        if let Some(target) = target {
            chosen = Some((record.id, target));
            break;
        }
    }
    let Some((run_id, target)) = chosen else { return Ok(()) };

    if !outside {
        let body = json!({"company_id": company_id, "user_id": target, "actor_user_id": actor,
                          "action": "deactivate"});
        let key = format!("chaos-target-probe-{n}");
        let (status, answer) = api.post("/v1/offboardings", &body, Some(&key)).await?;
        match (status, answer["error"]["code"].as_str()) {
            (409, Some("user_is_transfer_target")) => {
                interference.target_deactivations_refused += 1
            }
            (202, _) => {
                // Only right if the run ended in between: cancel the probe at once.
                let id: Uuid = answer["id"].as_str().and_then(|s| s.parse().ok()).context("id")?;
                probe_runs.push(id);
                interference.target_deactivations_accepted += 1;
                let run_status: RunStatus = retrying(|| async {
                    sqlx::query_scalar("SELECT status FROM offboard.runs WHERE id = $1")
                        .bind(run_id)
                        .fetch_one(pool)
                        .await
                })
                .await?;
                api.post(&format!("/v1/offboardings/{id}/cancel"), &json!({}), None).await?;
                if matches!(
                    run_status,
                    RunStatus::Queued | RunStatus::Running | RunStatus::Canceling
                ) {
                    bail!(
                        "the deactivation of user {target} was accepted while run {run_id} moves items to it"
                    );
                }
            }
            (status, code) => {
                bail!("the deactivation of target {target} answered {status} {code:?}")
            }
        }
        return Ok(());
    }

    // The update waits for the batches that hold the user's row (`FOR SHARE`) to commit:
    // what they moved landed while the user was active. Counted after it, then.
    let deactivated = sqlx::query(
        "UPDATE crm.users SET status = 'deactivated' WHERE id = $1 AND status = 'active'",
    )
    .bind(target)
    .execute(pool)
    .await;
    let outcome = watch_inactive_target(pool, company_id, target, run_id, deactivated).await;
    // Whatever happened, the user is active again before the suite goes on (through a
    // PostgreSQL restart if need be).
    retrying(|| async {
        sqlx::query("UPDATE crm.users SET status = 'active' WHERE id = $1")
            .bind(target)
            .execute(pool)
            .await
    })
    .await?;
    if outcome? {
        interference.targets_deactivated_outside += 1;
    }
    Ok(())
}

/// With `target` deactivated outside offboard (if `deactivated` went through), waits until
/// the run's reassignment stops or ends, and fails if the user received items meanwhile.
/// Returns whether the deactivation happened.
async fn watch_inactive_target(
    pool: &PgPool,
    company_id: i64,
    target: i64,
    run_id: Uuid,
    deactivated: Result<sqlx::postgres::PgQueryResult, sqlx::Error>,
) -> anyhow::Result<bool> {
    if !deactivated.is_ok_and(|r| r.rows_affected() == 1) {
        return Ok(false);
    }
    let Ok(before) = owned_by(pool, company_id, target).await else { return Ok(true) };
    // Until the run's step stops, or the run ends, or two seconds pass.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let stopped: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM offboard.steps WHERE run_id = $1
                 AND status = 'dead' AND last_error_code = 'target_inactive')
             OR NOT EXISTS (SELECT 1 FROM offboard.steps WHERE run_id = $1
                 AND name LIKE 'reassign\\_%' AND status IN ('queued', 'running', 'ready', 'pending'))",
        )
        .bind(run_id)
        .fetch_one(pool)
        .await
        .unwrap_or(false);
        if stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Ok(after) = owned_by(pool, company_id, target).await else { return Ok(true) };
    if after != before {
        bail!(
            "user {target} received {} items while deactivated outside offboard (run {run_id})",
            after - before
        );
    }
    Ok(true)
}
