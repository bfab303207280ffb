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
//!
//! Here the scenario is set up and played; beside it [`options`], the [`drive`]r of the
//! runs (and [`targets`] deactivated under them), the fault [`inject`]or ([`faults`], the
//! worker processes in [`workers`]), the outside systems ([`remote`], [`hooks`]), the
//! expected state ([`model`]), the checks ([`verify`]) and the [`report`].

mod api;
mod drive;
mod faults;
mod hooks;
mod inject;
mod model;
mod options;
mod remote;
mod report;
mod store;
mod targets;
mod verify;
mod workers;

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use anyhow::{Context, bail};
use rand::{SeedableRng, rngs::StdRng};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use self::{
    api::Api,
    drive::{Driven, Stage},
    faults::{Fleet, Services},
    inject::Phase,
    model::{Ledger, Promise, Step},
    store::{wait_for_deliveries, wait_for_purges},
};
pub use self::{options::ChaosOptions, report::Report};
use crate::throwaway::{drop_database, with_database};
use offboard::{
    app,
    config::Settings,
    crm::seed::{self, SeedOptions},
    shutdown::Shutdown,
};

/// One run the suite asked for.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: Uuid,
    pub user: i64,
    pub step: Step,
    pub promise: Promise,
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
        Services::new(&settings.redis_url, &prefix, &options.database, options.service_restarts())?;

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
    let emails_at_start = store::private_emails(&pool, company_id).await?;
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
        workers::worker_env(&settings, &database_url, &prefix, &options, &log_dir),
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
    let injector = tokio::spawn(inject::inject(
        fleet,
        services.clone(),
        pool.clone(),
        phase_rx,
        options.seed.wrapping_add(1),
        options.duration,
    ));

    let stage = Stage {
        api: &api,
        pool: &pool,
        company_id,
        actor,
        admins,
        options: &options,
        phase: &phase_tx,
    };
    let Driven { records, broken, mut interference, owned_when_canceled, probe_runs } =
        drive::drive(stage, scripts, &mut ledger, &mut rng).await;
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
        *runs_by_action.entry(record.step.action.as_str()).or_default() += 1;
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
