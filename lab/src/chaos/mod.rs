//! `offboard-lab chaos`: the fault suite. Seeds a company in a database of its own, starts
//! the API in this process and several worker processes (`offboard-lab worker`, the product's worker runtime), requests runs of every
//! action (with random transfer plans, each checked against a dry run first) and, while
//! they run, SIGKILLs workers, flushes and restarts Redis and restarts PostgreSQL, cancels
//! some deactivations mid-flight, and deactivates transfer targets while items flow to
//! them (through the API, which must refuse, and outside offboard, which must stop the
//! reassignment). Then it reads the store and checks that nothing was lost or doubled
//! ([`verify`] says exactly what counts as which).
//!
//! Only ids and counts are printed: never a name or an email.

mod faults;
mod hooks;
mod model;
mod remote;
mod verify;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use self::{
    faults::{Fault, FaultStats, Fleet, Services, WorkerEnv},
    model::{Ledger, Plan, Promise, Step},
    verify::{Findings, Tally},
};
use offboard::{
    app,
    config::{DEV_TOKEN, Settings},
    crm::seed::{self, SeedOptions},
    dispatch::PURGE_GRACE,
    domain::ItemType,
    shutdown::Shutdown,
};

/// How the suite runs. The defaults are the full version (`offboard-lab chaos`).
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Runs to request, over all actions.
    pub runs: usize,
    /// How long faults are injected.
    pub duration: Duration,
    /// After the faults, how long runs may take to finish before they count as lost.
    pub settle: Duration,
    pub workers: usize,
    pub users: usize,
    pub items_per_user: usize,
    pub reassign_batch: i64,
    pub seed: u64,
    /// Real Redis and PostgreSQL restarts and FLUSHALL. Off: only the suite's own Redis
    /// keys are deleted and only its own database connections are cut.
    pub service_restarts: bool,
    /// The suite's database, dropped and created at the start (its name must contain
    /// "chaos").
    pub database: String,
    /// Keep the database after a passing run too (it is always kept after a failing one).
    pub keep_database: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            runs: 240,
            duration: Duration::from_secs(90),
            settle: Duration::from_secs(180),
            workers: 4,
            users: 120,
            items_per_user: 4_000,
            reassign_batch: 5,
            seed: 1,
            service_restarts: true,
            database: "offboard_chaos".into(),
            keep_database: false,
        }
    }
}

/// Private emails are purged this long after deactivation in the suite, so purges come
/// due (and the sweeper fires those whose Redis task a flush took) while faults go on.
const RETENTION: &str = "5s";
/// Runs in flight at once at most.
const MAX_RUNS_IN_FLIGHT: usize = 40;
/// One deactivation with a plan in this many is canceled mid-flight.
const CANCEL_ONE_IN: u32 = 4;
/// Transfer targets deactivated (once through the API, once outside offboard) this many
/// times during the faults.
const TARGET_DEACTIVATIONS: u32 = 6;

/// Cancels and target deactivations the suite did beside the faults.
#[derive(Debug, Default, Clone)]
pub struct Interference {
    pub cancels_sent: usize,
    /// The run had finished before the cancel came (answered 409).
    pub cancels_too_late: usize,
    /// Deactivations of a user receiving items from an active run, refused with 409
    /// `user_is_transfer_target` as they must be.
    pub target_deactivations_refused: usize,
    /// Such deactivations accepted: only when the run had finished in between.
    pub target_deactivations_accepted: usize,
    /// Targets deactivated outside offboard (a direct update) while a run moved items to
    /// them, and reactivated after.
    pub targets_deactivated_outside: usize,
    /// Reassignment steps that stopped with `target_inactive` because of it.
    pub steps_stopped_target_inactive: i64,
}

/// One run the suite asked for.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: Uuid,
    pub user: i64,
    pub step: Step,
    pub promise: Promise,
}

/// What the suite did and found.
#[derive(Debug)]
pub struct Report {
    pub options: ChaosOptions,
    pub company_id: i64,
    pub items: usize,
    pub runs_by_action: BTreeMap<&'static str, usize>,
    pub runs_requested: usize,
    pub faults: FaultStats,
    pub interference: Interference,
    pub findings: Findings,
    pub tally: Tally,
    pub outside: remote::OutsideTally,
    pub hooks: hooks::HookTally,
    pub wall_time: Duration,
    pub log_dir: String,
    pub database_kept: bool,
}

impl Report {
    pub fn lost(&self) -> usize {
        self.findings.lost.len()
    }

    pub fn doubled(&self) -> usize {
        self.findings.doubled.len()
    }

    pub fn passed(&self) -> bool {
        self.findings.lost.is_empty()
            && self.findings.doubled.is_empty()
            && self.findings.broken.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let s = &self.faults;
        let t = &self.tally;
        let mode = if o.service_restarts {
            "real Redis/PostgreSQL restarts, FLUSHALL"
        } else {
            "no service restarts: own keys flushed, own connections cut"
        };
        writeln!(
            f,
            "offboard-lab chaos: company {} ({} users, {} items), {} workers, batch {}, seed {}; {mode}",
            self.company_id, o.users, self.items, o.workers, o.reassign_batch, o.seed
        )?;
        let actions: Vec<String> =
            self.runs_by_action.iter().map(|(a, n)| format!("{a} {n}")).collect();
        writeln!(
            f,
            "  runs       {}: {} succeeded, {} dead with a recorded reason, {} unfinished ({})",
            self.runs_requested,
            t.succeeded,
            t.dead_with_reason.len(),
            t.unfinished,
            actions.join(", ")
        )?;
        writeln!(
            f,
            "  steps      {} succeeded; {} leases taken back from lost workers, {} retries after errors",
            t.steps_succeeded, t.leases_taken_back, t.retries
        )?;
        writeln!(
            f,
            "  kills      {} workers SIGKILLed ({} holding steps, {} mid-reassignment); {} worker processes started, {} exited by themselves",
            s.kills,
            s.kills_holding_steps,
            s.kills_mid_reassignment,
            s.worker_processes_started,
            s.worker_exits
        )?;
        let flush = if o.service_restarts { "FLUSHALL" } else { "own keys deleted" };
        writeln!(f, "  flushes    {} ({flush})", s.flushes)?;
        if o.service_restarts {
            writeln!(
                f,
                "  restarts   Redis {}, PostgreSQL {}",
                s.redis_restarts, s.postgres_restarts
            )?;
        } else {
            writeln!(
                f,
                "  restarts   none (simulated PostgreSQL restarts: {}, {} connections cut)",
                s.postgres_restarts, s.postgres_connections_cut
            )?;
        }
        let i = &self.interference;
        writeln!(
            f,
            "  cancels    {} sent mid-flight ({} came after the run finished), {} runs canceled and checked",
            i.cancels_sent, i.cancels_too_late, t.canceled
        )?;
        writeln!(
            f,
            "  targets    {} deactivations of a target refused (409 user_is_transfer_target), {} accepted after its run ended; {} deactivated outside offboard ({} steps stopped with target_inactive)",
            i.target_deactivations_refused,
            i.target_deactivations_accepted,
            i.targets_deactivated_outside,
            i.steps_stopped_target_inactive
        )?;
        writeln!(
            f,
            "  purges     {} fired ({} by the queue, {} by the sweeper), {} canceled by reactivation",
            t.purges_by_queue + t.purges_by_sweeper,
            t.purges_by_queue,
            t.purges_by_sweeper,
            t.purges_canceled
        )?;
        writeln!(
            f,
            "  items      {} checked, {} reassigned by plans",
            t.items_checked, t.items_moved
        )?;
        let x = &self.outside;
        writeln!(
            f,
            "  outside    {} calls to a provider and a vendor failing ~30 % and hanging ~5 % ({} failed or hung): {} grants revoked, {} installs' vendors told; {} called again after a 200 (a worker killed before it recorded the outcome, or two admins' runs telling one shared install's vendor, under one key)",
            x.calls, x.failed_or_hung, x.grants_revoked, x.installs_told, x.repeated_after_ok
        )?;
        let h = &self.hooks;
        writeln!(
            f,
            "  webhooks   {} events to {} receivers failing ~30 % and hanging ~5 % ({} deliveries, {} requests, {} failed or hung, {} workers killed while deliveries were being sent): {} duplicates absorbed by dedupe on webhook-id, {} bad signatures",
            h.events,
            h.endpoints,
            h.deliveries,
            h.requests,
            h.failed_or_hung,
            self.faults.kills_during_delivery,
            h.duplicates_absorbed,
            h.bad_signatures
        )?;
        writeln!(f, "  lost       {}", self.lost())?;
        writeln!(f, "  doubled    {}", self.doubled())?;
        if !self.findings.broken.is_empty() {
            writeln!(f, "  broken     {}", self.findings.broken.len())?;
        }
        writeln!(f, "  wall time  {:.1}s", self.wall_time.as_secs_f64())?;
        for (label, list) in [
            ("lost", &self.findings.lost),
            ("doubled", &self.findings.doubled),
            ("broken", &self.findings.broken),
            ("dead with a recorded reason", &t.dead_with_reason),
        ] {
            if list.is_empty() {
                continue;
            }
            writeln!(f, "{label}:")?;
            for line in list.iter().take(12) {
                writeln!(f, "  - {line}")?;
            }
            if list.len() > 12 {
                writeln!(f, "  … and {} more", list.len() - 12)?;
            }
        }
        for error in &s.errors {
            writeln!(f, "fault injection error: {error}")?;
        }
        if self.database_kept {
            writeln!(
                f,
                "database {} kept for inspection; worker logs in {}",
                o.database, self.log_dir
            )?;
        }
        Ok(())
    }
}

/// Phases of the fault injector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Chaos,
    /// No more faults; every worker is brought back.
    Calm,
    Stop,
}

pub async fn run(settings: Settings, options: ChaosOptions) -> anyhow::Result<Report> {
    let started = Instant::now();
    if !options.database.contains("chaos") {
        bail!(
            "--database must name a database of the fault suite (containing \"chaos\"): it is dropped"
        );
    }
    anyhow::ensure!(options.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(options.users >= 20, "--users must be at least 20");
    let database_url = with_database(&settings.database_url, &options.database)?;
    let prefix = format!("offboard-chaos-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let services =
        Services::new(&settings.redis_url, &prefix, &options.database, options.service_restarts)?;

    // A fresh database each time; `app::Services::connect` creates and migrates it.
    drop_database(&database_url, &options.database).await?;
    let mut api_settings = settings.clone();
    api_settings.database_url = database_url.clone();
    api_settings.queue_prefix = prefix.clone();
    api_settings.bind = "127.0.0.1:0".parse().expect("valid address");
    // The chaos API lives in this process, on loopback, for the lab's own requests.
    api_settings.dev_token = true;
    api_settings.api_tokens.clear();
    api_settings.db_pool_size = 10;
    api_settings.faults = Vec::new();
    // The suite's webhook receivers are plain http on loopback.
    api_settings.webhooks.allow_private = true;
    let core = app::Services::connect(api_settings).await?;
    let pool = core.pool.clone();

    eprintln!("chaos: seeding {} users × {} items…", options.users, options.items_per_user);
    let seeded = seed::seed(
        &pool,
        SeedOptions {
            users: options.users,
            items_per_user: options.items_per_user,
            seed: options.seed,
        },
    )
    .await?;
    let company_id = seeded.company_id;
    let actor = seeded.admin_ids[0];
    // Outside systems that fail and hang: the users' grants and the apps' vendors.
    let provider = remote::Remote::start().await?;
    let vendor = remote::Remote::start().await?;
    seed::connect_outside(&pool, company_id, Some(&provider.base), Some(&vendor.base)).await?;
    let tokens = remote::tokens(&pool, company_id).await?;
    // Targets are never offboarded and the offboarded are never targets, so a user's items
    // change only through that user's own runs: each run's promise is exact.
    let regular: Vec<i64> = seeded.users.iter().filter(|u| !u.is_admin).map(|u| u.id).collect();
    let admins = &seeded.admin_ids;
    let mut keepers: Vec<i64> = admins.iter().take(2).copied().collect();
    keepers.extend(regular.iter().take(10));
    let leavers: Vec<i64> = admins.iter().skip(2).chain(regular.iter().skip(10)).copied().collect();
    let targets: Vec<i64> = keepers.iter().copied().filter(|&u| u != actor).collect();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let scripts = model::scripts(&mut rng, &leavers, &targets, options.runs)?;
    let mut ledger = Ledger::load(&pool, company_id, &leavers).await?;
    let emails_at_start: HashMap<i64, i64> = sqlx::query_as(
        "SELECT owner_id, count(*) FROM crm.emails
         WHERE company_id = $1 AND visibility = 'private' AND linked_type IS NOT NULL GROUP BY 1",
    )
    .bind(company_id)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .collect();
    let seats: i32 = sqlx::query_scalar("SELECT seats FROM crm.companies WHERE id = $1")
        .bind(company_id)
        .fetch_one(&pool)
        .await?;

    let shutdown = Shutdown::new();
    let server = app::start_api(
        core.app_state(Arc::new(Notify::new())),
        core.settings.bind,
        shutdown.clone(),
    )
    .await?;
    let api = Api::new(&format!("http://{}", server.addr));
    // The host's receivers, registered before any run so every event has them.
    let mut receivers = vec![
        hooks::Receiver::start("/hooks/offboard").await?,
        hooks::Receiver::start("/hooks/audit").await?,
    ];
    for receiver in &mut receivers {
        receiver.register(&api, company_id).await?;
    }

    let log_dir = std::env::temp_dir().join(&prefix);
    let fleet = Fleet::start(
        options.workers,
        worker_env(&settings, &database_url, &prefix, &options, &log_dir),
    )?;
    eprintln!(
        "chaos: company {company_id}, {} offboarded users, {} targets; {} workers (logs in {}); API on {}",
        leavers.len(),
        targets.len(),
        options.workers,
        log_dir.display(),
        server.addr
    );

    let (phase_tx, phase_rx) = watch::channel(Phase::Chaos);
    let injector = tokio::spawn(inject(
        fleet,
        services.clone(),
        pool.clone(),
        phase_rx,
        options.seed.wrapping_add(1),
        options.duration,
    ));

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
        for k in poll_lanes(&pool, &mut lanes, &records).await {
            if cancel_sent.contains(&records[k].id) {
                match owned_by(&pool, company_id, records[k].user).await {
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
                &api,
                &pool,
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
            let Some(&k) = free.choose(&mut rng) else { break };
            let step = lanes[k].steps.pop_front().expect("a step");
            let seq = records.len();
            match request(&api, &mut ledger, &step, company_id, actor, seq).await {
                Ok(record) => {
                    if record.step.action == "deactivate"
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
    let _ = phase_tx.send(Phase::Calm);
    wait_for_purges(&pool, company_id).await;
    wait_for_deliveries(&pool, company_id, options.settle).await;
    let _ = phase_tx.send(Phase::Stop);
    let faults = injector.await.context("the fault injector panicked")?;
    interference.steps_stopped_target_inactive = sqlx::query_scalar(
        "SELECT count(*) FROM offboard.steps WHERE company_id = $1 AND last_error_code = 'target_inactive'",
    )
    .bind(company_id)
    .fetch_one(&pool)
    .await?;

    eprintln!("chaos: checking the store…");
    let (mut findings, tally) = verify::verify(verify::Input {
        pool: &pool,
        company_id,
        seats: i64::from(seats),
        records: &records,
        ledger: &ledger,
        canceled: &owned_when_canceled,
        probe_runs: &probe_runs,
        leavers: &leavers,
        keepers: &keepers,
        emails_at_start: &emails_at_start,
    })
    .await?;
    findings.broken.extend(broken);
    let (outside, lost_outside, broken_outside) =
        remote::check(&pool, company_id, &tokens, &provider, &vendor).await?;
    findings.lost.extend(lost_outside);
    findings.broken.extend(broken_outside);
    let (hooks, lost_hooks, doubled_hooks, broken_hooks) =
        hooks::check(&pool, company_id, &receivers).await?;
    findings.lost.extend(lost_hooks);
    findings.doubled.extend(doubled_hooks);
    findings.broken.extend(broken_hooks);
    let mut runs_by_action = BTreeMap::new();
    for record in &records {
        *runs_by_action.entry(record.step.action).or_default() += 1;
    }

    shutdown.trigger();
    let _ = server.handle.await;
    pool.close().await;
    let _ = services.flush_own_keys().await;
    let mut report = Report {
        options: options.clone(),
        company_id,
        items: ledger.items(),
        runs_by_action,
        runs_requested: records.len(),
        faults,
        interference,
        findings,
        tally,
        outside,
        hooks,
        wall_time: started.elapsed(),
        log_dir: log_dir.display().to_string(),
        database_kept: true,
    };
    if report.passed() && !options.keep_database {
        drop_database(&database_url, &options.database).await?;
        let _ = std::fs::remove_dir_all(&log_dir);
        report.database_kept = false;
    }
    Ok(report)
}

/// One offboarded user's remaining script.
struct Lane {
    steps: std::collections::VecDeque<Step>,
    /// The run in flight (an index into the records).
    active: Option<usize>,
    /// A run did not succeed or was refused: the rest of the script is dropped.
    stopped: bool,
}

/// Frees the lanes whose run finished, and returns the records that turned `canceled`. A
/// read that fails (PostgreSQL restarting) is simply tried again on the next tick.
async fn poll_lanes(pool: &PgPool, lanes: &mut [Lane], records: &[RunRecord]) -> Vec<usize> {
    let mut canceled = Vec::new();
    let ids: Vec<Uuid> = lanes.iter().filter_map(|l| l.active).map(|k| records[k].id).collect();
    if ids.is_empty() {
        return canceled;
    }
    let Ok(rows) = sqlx::query_as::<_, (Uuid, String)>(
        "SELECT id, status FROM offboard.runs WHERE id = ANY ($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    else {
        return canceled;
    };
    let status: HashMap<Uuid, String> = rows.into_iter().collect();
    for lane in lanes.iter_mut() {
        let Some(k) = lane.active else { continue };
        match status.get(&records[k].id).map(String::as_str) {
            Some("succeeded") => lane.active = None,
            Some(status @ ("failed" | "canceled")) => {
                if status == "canceled" {
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

/// Items of every type `user` owns.
async fn owned_by(pool: &PgPool, company_id: i64, user: i64) -> anyhow::Result<i64> {
    let mut n = 0;
    for item in ItemType::ALL {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE company_id = $1 AND owner_id = $2",
            item.table()
        );
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(company_id)
            .bind(user)
            .fetch_one(pool)
            .await?;
        n += count;
    }
    Ok(n)
}

/// Deactivates a user some in-flight run is moving items to. Through the API
/// (`outside == false`) the request must be refused with 409 `user_is_transfer_target`.
/// Outside offboard (a direct update of the store, as a host could), the run's
/// reassignment must stop with `target_inactive` and write nothing more to the user; the
/// user is made active again after, so the rest of the suite's plans stay valid.
#[allow(clippy::too_many_arguments)]
async fn deactivate_a_target(
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
                let run_status: String = retrying(|| async {
                    sqlx::query_scalar("SELECT status FROM offboard.runs WHERE id = $1")
                        .bind(run_id)
                        .fetch_one(pool)
                        .await
                })
                .await?;
                api.post(&format!("/v1/offboardings/{id}/cancel"), &json!({}), None).await?;
                if matches!(run_status.as_str(), "queued" | "running" | "canceling") {
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

/// Retries a read or write of the suite's own through a PostgreSQL restart (a minute).
async fn retrying<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if started.elapsed() > Duration::from_secs(60) => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
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

/// Waits until no purge is scheduled, or one is overdue beyond the sweeper's grace plus
/// a margin (it is then lost, and the check says so).
async fn wait_for_purges(pool: &PgPool, company_id: i64) {
    let limit = Instant::now() + Duration::from_secs(120);
    let margin = (PURGE_GRACE + Duration::from_secs(15)).as_secs_f64();
    while Instant::now() < limit {
        let state: Result<(i64, bool), _> = sqlx::query_as(
            "SELECT count(*), coalesce(bool_or(due_at < now() - make_interval(secs => $2)), false)
             FROM offboard.scheduled_purges WHERE company_id = $1 AND status = 'scheduled'",
        )
        .bind(company_id)
        .bind(margin)
        .fetch_one(pool)
        .await;
        match state {
            Ok((0, _)) | Ok((_, true)) => return,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until every webhook delivery of the company has finished, or `limit` passes
/// (what is left then counts as lost). Workers stay up meanwhile.
async fn wait_for_deliveries(pool: &PgPool, company_id: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        match hooks::unfinished(pool, company_id).await {
            Ok(0) => return,
            Ok(n) if last_report.elapsed() >= Duration::from_secs(5) => {
                last_report = Instant::now();
                eprintln!("chaos: {n} webhook deliveries still to finish");
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fault injector: random kills, flushes and Redis restarts every 0.6–2.4 s, and
/// PostgreSQL restarts at fixed points, until the chaos phase ends; then every worker is
/// brought back and kept up until the suite stops them.
async fn inject(
    mut fleet: Fleet,
    services: Services,
    pool: PgPool,
    mut phase: watch::Receiver<Phase>,
    seed: u64,
    duration: Duration,
) -> FaultStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = FaultStats::default();
    let started = Instant::now();
    let mut postgres_at: std::collections::VecDeque<Duration> =
        faults::postgres_at(duration).into();
    let gap = |rng: &mut StdRng| Duration::from_millis(rng.random_range(600..2400));
    let mut next = Instant::now() + gap(&mut rng);
    let mut calm = false;
    loop {
        let current = *phase.borrow();
        match current {
            Phase::Stop => break,
            Phase::Calm if !calm => {
                calm = true;
                // The suite promises at least one PostgreSQL restart, even if the runs were
                // quicker than the schedule.
                if stats.postgres_restarts == 0 {
                    disturb(
                        Fault::RestartPostgres,
                        &mut fleet,
                        &services,
                        &pool,
                        &mut rng,
                        &mut stats,
                    )
                    .await;
                }
                if let Err(e) = fleet.restart_all_now() {
                    stats.errors.push(format!("{e:#}"));
                }
            }
            Phase::Calm => {}
            Phase::Chaos => {
                if postgres_at.front().is_some_and(|at| started.elapsed() >= *at) {
                    postgres_at.pop_front();
                    disturb(
                        Fault::RestartPostgres,
                        &mut fleet,
                        &services,
                        &pool,
                        &mut rng,
                        &mut stats,
                    )
                    .await;
                } else if Instant::now() >= next {
                    let fault = Fault::random(&mut rng, services.service_restarts);
                    disturb(fault, &mut fleet, &services, &pool, &mut rng, &mut stats).await;
                    next = Instant::now() + gap(&mut rng);
                }
            }
        }
        if let Err(e) = fleet.tend() {
            stats.errors.push(format!("{e:#}"));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = phase.changed() => {}
        }
    }
    fleet.stop().await;
    stats.worker_processes_started = fleet.started;
    stats.worker_exits = fleet.exited;
    stats
}

async fn disturb(
    fault: Fault,
    fleet: &mut Fleet,
    services: &Services,
    pool: &PgPool,
    rng: &mut StdRng,
    stats: &mut FaultStats,
) {
    let outcome: anyhow::Result<()> = async {
        match fault {
            Fault::Kill => {
                let Some(&(slot, pid)) = fleet.alive().choose(rng) else { return Ok(()) };
                let held =
                    tokio::time::timeout(Duration::from_millis(500), faults::held_by(pool, pid))
                        .await
                        .ok()
                        .flatten();
                let sending =
                    tokio::time::timeout(Duration::from_millis(500), hooks::sending(pool))
                        .await
                        .ok()
                        .flatten();
                fleet.kill(slot, Duration::from_millis(rng.random_range(200..2000))).await;
                stats.kills += 1;
                stats.kills_during_delivery += usize::from(sending.is_some_and(|n| n > 0));
                if let Some((running, mid_reassignment)) = held {
                    stats.kills_holding_steps += usize::from(running > 0);
                    stats.kills_mid_reassignment += usize::from(mid_reassignment > 0);
                }
            }
            Fault::Flush => {
                services.flush_redis().await?;
                stats.flushes += 1;
            }
            Fault::RestartRedis => {
                let down = Duration::from_millis(rng.random_range(300..2000));
                let took = services.restart_redis(down).await?;
                stats.redis_restarts += 1;
                eprintln!("chaos: Redis restarted ({:.1}s down)", took.as_secs_f64());
            }
            Fault::RestartPostgres => {
                let (took, cut) = services.restart_postgres(pool).await?;
                stats.postgres_restarts += 1;
                if cut >= 0 {
                    stats.postgres_connections_cut += cut;
                    eprintln!("chaos: cut {cut} connections to the suite's database");
                } else {
                    eprintln!("chaos: PostgreSQL restarted ({:.1}s)", took.as_secs_f64());
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        stats.errors.push(format!("{fault:?}: {e:#}"));
    }
}

fn worker_env(
    settings: &Settings,
    database_url: &str,
    prefix: &str,
    options: &ChaosOptions,
    log_dir: &std::path::Path,
) -> WorkerEnv {
    let log = std::env::var("OFFBOARD_CHAOS_WORKER_LOG").unwrap_or_else(|_| "warn".into());
    let vars = [
        ("DATABASE_URL", database_url.to_string()),
        ("REDIS_URL", settings.redis_url.clone()),
        ("OFFBOARD_QUEUE_PREFIX", prefix.to_string()),
        ("OFFBOARD_LEASE", "2s".into()),
        ("OFFBOARD_REDELIVER_AFTER", "2s".into()),
        ("OFFBOARD_REASSIGN_BATCH", options.reassign_batch.to_string()),
        ("OFFBOARD_PRIVATE_EMAIL_RETENTION", RETENTION.into()),
        ("OFFBOARD_BACKOFF_BASE", "200ms".into()),
        ("OFFBOARD_BACKOFF_CAP", "5s".into()),
        ("OFFBOARD_WORKER_CONCURRENCY", "8".into()),
        ("OFFBOARD_WORKER_DB_POOL", "6".into()),
        ("OFFBOARD_DISPATCH_INTERVAL", "50ms".into()),
        ("OFFBOARD_POLL_INTERVAL", "20ms".into()),
        ("OFFBOARD_SHUTDOWN_TIMEOUT", "2s".into()),
        ("OFFBOARD_LOG_FORMAT", "text".into()),
        ("OFFBOARD_OUTBOUND_ALLOW_PRIVATE", "1".into()),
        (
            "OFFBOARD_OAUTH_CLIENTS",
            "google=chaos-client:chaos-secret,microsoft=chaos-client:chaos-secret".into(),
        ),
        ("OFFBOARD_OUTBOUND_TIMEOUT", "1s".into()),
        ("OFFBOARD_OUTBOUND_BREAKER_PAUSE", "1s".into()),
        // Webhooks to the suite's receivers: short timeout (hangs end quickly) and a
        // short schedule long enough that ~35 % failures never exhaust it.
        ("OFFBOARD_WEBHOOK_ALLOW_PRIVATE", "1".into()),
        ("OFFBOARD_WEBHOOK_TIMEOUT", "1s".into()),
        (
            "OFFBOARD_WEBHOOK_RETRY_SCHEDULE",
            "200ms,500ms,1s,2s,3s,3s,3s,3s,3s,3s,3s,3s,3s,3s".into(),
        ),
        ("OFFBOARD_WEBHOOK_BREAKER_PAUSE", "1s".into()),
        ("OFFBOARD_WEBHOOK_POLL_INTERVAL", "200ms".into()),
        ("RUST_LOG", log),
    ];
    WorkerEnv {
        vars: vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        log_dir: log_dir.to_path_buf(),
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let scheme = url.find("://").context("DATABASE_URL is not a URL")? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let server = match base[scheme..].find('/') {
        Some(slash) => &base[..scheme + slash],
        None => base,
    };
    Ok(format!("{server}/{database}{query}"))
}

async fn admin_connection(database_url: &str) -> anyhow::Result<sqlx::PgConnection> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(database_url)?.database("postgres");
    sqlx::PgConnection::connect_with(&options).await.context("cannot reach PostgreSQL")
}

async fn drop_database(database_url: &str, database: &str) -> anyhow::Result<()> {
    let mut admin = admin_connection(database_url).await?;
    let quoted = database.replace('"', "\"\"");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot drop database {database}"))?;
    Ok(())
}

/// The suite's HTTP client. Requests are retried while the API cannot answer (PostgreSQL
/// restarting): with the same Idempotency-Key, so a retry never enqueues a second run.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self { base: base.to_string(), http }
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut request =
                self.http.post(format!("{}{path}", self.base)).bearer_auth(DEV_TOKEN).json(body);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            let last = match request.send().await {
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status().as_u16();
                    match response.json::<Value>().await {
                        Ok(value) => return Ok((status, value)),
                        Err(e) => e.to_string(),
                    }
                }
                Ok(response) => response.status().to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!("POST {path}: no answer within two minutes (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_options_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/offboard", "offboard_chaos").unwrap(),
            "postgres://postgres@127.0.0.1:5432/offboard_chaos"
        );
        assert_eq!(
            with_database("postgres://u:p@db/x?sslmode=disable", "c").unwrap(),
            "postgres://u:p@db/c?sslmode=disable"
        );
        assert_eq!(with_database("postgres://db", "c").unwrap(), "postgres://db/c");
    }
}
