//! The scenario driver: each offboarded user's script played one run at a time, paced over
//! the fault phase; every plan checked against a dry run before its run is requested, some
//! deactivations canceled mid-flight, and transfer targets deactivated now and then
//! ([`targets`](super::targets)). It ends when every script is played or the deadline
//! passes, and hands what it asked for to the checks.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::{Rng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    ChaosOptions, RunRecord,
    api::Api,
    inject::Phase,
    model::{Ledger, Plan, Promise, Step},
    report::Interference,
    store::owned_by,
    targets::deactivate_a_target,
};
use offboard::domain::{Action, ItemType, RunStatus};

/// Runs in flight at once at most.
const MAX_RUNS_IN_FLIGHT: usize = 40;
/// One deactivation with a plan in this many is canceled mid-flight.
const CANCEL_ONE_IN: u32 = 4;
/// Transfer targets deactivated (once through the API, once outside offboard) this many
/// times during the faults.
const TARGET_DEACTIVATIONS: u32 = 6;

/// Where the runs are played: the API, the store, the company and who acts in it.
pub struct Stage<'a> {
    pub api: &'a Api,
    pub pool: &'a PgPool,
    pub company_id: i64,
    pub actor: i64,
    pub admins: &'a [i64],
    pub options: &'a ChaosOptions,
    /// The injector's phase: the driver ends the faults when their time is up.
    pub phase: &'a watch::Sender<Phase>,
}

/// What the driver did, for the checks and the report.
pub struct Driven {
    pub records: Vec<RunRecord>,
    /// Refusals and contradictions seen while driving.
    pub broken: Vec<String>,
    pub interference: Interference,
    /// Items the user owned when the suite saw its run `canceled`.
    pub owned_when_canceled: HashMap<Uuid, i64>,
    /// Runs the suite's probes created (a target's deactivation accepted after its run ended).
    pub probe_runs: Vec<Uuid>,
}

/// One offboarded user's remaining script.
pub struct Lane {
    steps: VecDeque<Step>,
    /// The run in flight (an index into the records).
    pub active: Option<usize>,
    /// A run did not succeed or was refused: the rest of the script is dropped.
    stopped: bool,
}

/// Plays the scripts until they are done or the deadline passes, booking each run's
/// promise into `ledger`.
pub async fn drive(
    stage: Stage<'_>,
    scripts: Vec<Vec<Step>>,
    ledger: &mut Ledger,
    rng: &mut StdRng,
) -> Driven {
    let Stage { api, pool, company_id, actor, admins, options, phase: phase_tx } = stage;
    // Drive the scripts: one run per user at a time, paced over the first 80% of the
    // chaos phase, each checked against a dry run before it is requested.
    let mut lanes: Vec<Lane> = scripts
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| Lane { steps: s.into(), active: None, stopped: false })
        .collect();
    let mut records: Vec<RunRecord> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    let mut interference = Interference::default();
    // Cancels to send: (record, when).
    let mut cancels: Vec<(usize, Instant)> = Vec::new();
    let mut cancel_sent: HashSet<Uuid> = HashSet::new();
    // Items the user owned when the suite saw its run `canceled`.
    let mut owned_when_canceled: HashMap<Uuid, i64> = HashMap::new();
    // Runs the suite's probes created (a target's deactivation accepted after its run ended).
    let mut probe_runs: Vec<Uuid> = Vec::new();
    let mut target_faults_done = 0u32;
    let pace = options.duration.mul_f64(0.8);
    let chaos_started = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        for k in poll_lanes(pool, &mut lanes, &records).await {
            if cancel_sent.contains(&records[k].id) {
                match owned_by(pool, company_id, records[k].user).await {
                    Ok(n) => {
                        owned_when_canceled.insert(records[k].id, n);
                    }
                    Err(e) => broken.push(format!(
                        "could not count the items of user {} when run {} read canceled: {e:#}",
                        records[k].user, records[k].id
                    )),
                }
            }
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = cancels.drain(..).partition(|(_, at)| *at <= now);
        cancels = later;
        for (k, _) in due {
            let id = records[k].id;
            // A run whose lane has let it go ended (succeeded or failed) before its cancel was
            // due: canceling a failed run would end it `canceled` unseen by the lanes.
            if !lanes.iter().any(|l| l.active == Some(k)) {
                interference.cancels_too_late += 1;
                continue;
            }
            match api.post(&format!("/v1/offboardings/{id}/cancel"), &json!({}), None).await {
                Ok((status, _)) if status < 300 => {
                    interference.cancels_sent += 1;
                    cancel_sent.insert(id);
                }
                Ok((409, _)) => interference.cancels_too_late += 1,
                Ok((status, body)) => broken.push(format!(
                    "cancel of run {id} answered {status}: {}",
                    body["error"]["code"]
                )),
                Err(e) => broken.push(format!("cancel of run {id}: {e:#}")),
            }
        }
        let since = chaos_started.elapsed();
        if *phase_tx.borrow() == Phase::Chaos
            && target_faults_done < TARGET_DEACTIVATIONS
            && since
                >= options.duration.mul_f64(
                    0.8 * f64::from(target_faults_done + 1) / f64::from(TARGET_DEACTIVATIONS + 1),
                )
        {
            target_faults_done += 1;
            let outside = target_faults_done.is_multiple_of(2);
            let outcome = deactivate_a_target(
                api,
                pool,
                &lanes,
                &records,
                company_id,
                actor,
                admins,
                outside,
                target_faults_done,
                &mut interference,
                &mut probe_runs,
            )
            .await;
            if let Err(e) = outcome {
                broken.push(format!("deactivating a transfer target: {e:#}"));
            }
        }
        let in_flight = lanes.iter().filter(|l| l.active.is_some()).count();
        let waiting = lanes.iter().filter(|l| !l.stopped && !l.steps.is_empty()).count();
        if in_flight == 0 && waiting == 0 {
            break;
        }
        let elapsed = chaos_started.elapsed();
        if elapsed >= options.duration && *phase_tx.borrow() == Phase::Chaos {
            let _ = phase_tx.send(Phase::Calm);
            eprintln!(
                "chaos: faults over after {:.0}s; letting the runs finish",
                elapsed.as_secs_f64()
            );
        }
        if elapsed >= options.duration + options.settle {
            eprintln!("chaos: deadline passed with {in_flight} runs unfinished");
            break;
        }
        let allowed = ((options.runs as f64 * elapsed.as_secs_f64() / pace.as_secs_f64()).ceil()
            as usize)
            .saturating_add(8);
        let mut in_flight = in_flight;
        while records.len() < allowed && in_flight < MAX_RUNS_IN_FLIGHT {
            let free: Vec<usize> = (0..lanes.len())
                .filter(|&k| {
                    lanes[k].active.is_none() && !lanes[k].stopped && !lanes[k].steps.is_empty()
                })
                .collect();
            let Some(&k) = free.choose(rng) else { break };
            let step = lanes[k].steps.pop_front().expect("a step");
            let seq = records.len();
            match request(api, ledger, &step, company_id, actor, seq).await {
                Ok(record) => {
                    if record.step.action == Action::Deactivate
                        && record.step.plan.is_some()
                        && rng.random_ratio(1, CANCEL_ONE_IN)
                    {
                        let after = Duration::from_millis(rng.random_range(100..1_500));
                        cancels.push((records.len(), Instant::now() + after));
                    }
                    lanes[k].active = Some(records.len());
                    records.push(record);
                    in_flight += 1;
                }
                Err(e) => {
                    broken.push(format!("{} of user {}: {e:#}", step.action, step.user));
                    lanes[k].stopped = true;
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let done = records.len() - lanes.iter().filter(|l| l.active.is_some()).count();
            eprintln!(
                "chaos: {:>4.0}s  runs {done}/{} finished, {} in flight",
                elapsed.as_secs_f64(),
                options.runs,
                in_flight
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driven { records, broken, interference, owned_when_canceled, probe_runs }
}

/// Frees the lanes whose run finished, and returns the records that turned `canceled`. A
/// read that fails (PostgreSQL restarting) is simply tried again on the next tick.
async fn poll_lanes(pool: &PgPool, lanes: &mut [Lane], records: &[RunRecord]) -> Vec<usize> {
    let mut canceled = Vec::new();
    let ids: Vec<Uuid> = lanes.iter().filter_map(|l| l.active).map(|k| records[k].id).collect();
    if ids.is_empty() {
        return canceled;
    }
    let Ok(rows) = sqlx::query_as::<_, (Uuid, RunStatus)>(
        "SELECT id, status FROM offboard.runs WHERE id = ANY ($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    else {
        return canceled;
    };
    let status: HashMap<Uuid, RunStatus> = rows.into_iter().collect();
    for lane in lanes.iter_mut() {
        let Some(k) = lane.active else { continue };
        match status.get(&records[k].id) {
            Some(RunStatus::Succeeded) => lane.active = None,
            Some(status @ (RunStatus::Failed | RunStatus::Canceled)) => {
                if *status == RunStatus::Canceled {
                    canceled.push(k);
                }
                lane.active = None;
                lane.stopped = true;
            }
            _ => {}
        }
    }
    canceled
}

/// Dry-runs the plan, checks the dry run against the suite's own arithmetic, requests the
/// run, and books its promise into the ledger.
async fn request(
    api: &Api,
    ledger: &mut Ledger,
    step: &Step,
    company_id: i64,
    actor: i64,
    seq: usize,
) -> anyhow::Result<RunRecord> {
    let promise = match &step.plan {
        Some(plan) => {
            let promise = ledger.promise(step.user, plan);
            let path = format!("/v1/companies/{company_id}/users/{}/preview", step.user);
            let (status, dry_run) =
                api.post(&path, &json!({"transfer": plan.to_json()}), None).await?;
            if status != 200 {
                bail!("the dry run was refused ({status}): {}", dry_run["error"]["code"]);
            }
            check_dry_run(plan, &promise, &dry_run)?;
            promise
        }
        None => Promise::new(),
    };
    let key = format!("chaos-{seq}");
    let (status, body) =
        api.post("/v1/offboardings", &step.body(company_id, actor), Some(&key)).await?;
    if status != 202 {
        bail!("refused ({status}): {} {}", body["error"]["code"], body["error"]["message"]);
    }
    let id = body["id"].as_str().and_then(|s| s.parse().ok()).context("no run id")?;
    ledger.apply(&promise);
    Ok(RunRecord { id, user: step.user, step: step.clone(), promise })
}

fn check_dry_run(plan: &Plan, promise: &Promise, dry_run: &Value) -> anyhow::Result<()> {
    for item in ItemType::ALL {
        let entry = &dry_run["items"][item.key()];
        let Some(expected) = promise.get(&item) else {
            if plan.rule_for(item).is_none()
                && entry["targets"].as_array().is_some_and(|t| t.is_empty())
            {
                continue;
            }
            bail!("the dry run of {item} does not match the plan");
        };
        let counts: BTreeMap<i64, u64> = entry["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t["user_id"].as_i64()?, t["count"].as_u64()?)))
            .filter(|(_, n)| *n > 0)
            .collect();
        if entry["in_scope"].as_u64() != Some(expected.in_scope) || counts != expected.to {
            bail!(
                "broken promise: the dry run gives {item} {counts:?} of {}, the arithmetic {:?} of {}",
                entry["in_scope"],
                expected.to,
                expected.in_scope
            );
        }
    }
    Ok(())
}
