//! `offboard-lab bench reassign`: a 1,000,000-deal company in which one user owns 200,000 deals
//! (every fifth row, so they are spread over the whole table, as a user's items are). In one
//! run it times (a) one raw `UPDATE` moving those rows to one owner, the baseline, and (b)
//! offboard's reassignment step moving the same rows — single target, then ratio over 4
//! targets — through the whole path (ledger, dispatcher, Redis, a worker process). And
//! (c) the transfer journal's cost: the step's own batch statements with the journal row
//! each batch writes, next to the same statements without it ([`super::journal`]).
//!
//! Before each phase the rows go back to their owner (untimed), the table is vacuumed and
//! a checkpoint is taken, so every phase starts from the same state.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::{
    BenchEnv, BenchOptions, WorkerProcess, journal, median, mib, verdict, wait_for_workers,
};
use offboard::{
    config::Settings,
    crm::seed::{self, SeedOptions},
    domain::{StepStatus, TransferPlan, UserId},
    ledger::runs::{self, NewRun},
    steps::{RunParams, StepSpec, reassign::Journal},
};

pub(super) async fn run(base: &Settings, options: &BenchOptions) -> anyhow::Result<()> {
    let env = BenchEnv::create(base, "reassign").await?;
    let result = measure(&env, options).await;
    env.teardown().await;
    result
}

struct Company {
    id: i64,
    owner: i64,
    targets: Vec<i64>,
}

async fn measure(env: &BenchEnv, options: &BenchOptions) -> anyhow::Result<()> {
    let items = options.scaled(1_000_000, 10_000);
    let owned = items / 5;
    let batch = env.settings.steps.reassign_batch;
    println!(
        "## reassign: {items} deals in one company, one user owns {owned}; OFFBOARD_REASSIGN_BATCH {batch}"
    );
    let company = build_company(env, items).await?;

    // The phases take turns, ROUNDS times, and each figure is the median of its rounds:
    // the machine is shared and noisy, and a burst of someone else's work should not
    // decide a ratio.
    let mut workers = vec![WorkerProcess::spawn(env, "worker")?];
    wait_for_workers(env, &mut workers).await?;
    let single_plan = json!({"deals": {"mode": "single", "scope": "all",
                                        "targets": [{"user_id": company.targets[0]}]}});
    let ratio_plan = json!({"deals": {"mode": "ratio", "scope": "all",
        "targets": company.targets.iter().map(|t| json!({"user_id": t, "weight": 1})).collect::<Vec<_>>()}});
    let (mut raw, mut single, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    // (journal off, journal on), single target and ratio-4.
    let (mut single_off, mut single_on, mut ratio_off, mut ratio_on) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut largest = (0, 0);
    for _ in 0..ROUNDS {
        // (a) The baseline: one statement, one transaction, every row at once.
        prepare(env, &company).await?;
        raw.push(raw_update(env, &company, owned).await?);
        // (b) offboard, in the worker process.
        prepare(env, &company).await?;
        let phase = reassign_through_offboard(env, &company, &single_plan, owned).await?;
        single.push(phase.rate);
        largest.0 = largest.0.max(phase.largest_transaction);
        prepare(env, &company).await?;
        let phase = reassign_through_offboard(env, &company, &ratio_plan, owned).await?;
        ratio.push(phase.rate);
        largest.1 = largest.1.max(phase.largest_transaction);
        // (c) The journal: the same batches, off then on, single target then ratio-4.
        let one = &company.targets[..1];
        for (targets, journal, rates) in [
            (one, Journal::Off, &mut single_off),
            (one, Journal::On, &mut single_on),
            (&company.targets[..], Journal::Off, &mut ratio_off),
            (&company.targets[..], Journal::On, &mut ratio_on),
        ] {
            prepare(env, &company).await?;
            let (rate, moved) =
                journal::move_all(&env.pool, company.id, company.owner, targets, batch, journal)
                    .await?;
            anyhow::ensure!(
                moved as usize == owned,
                "the journal phase moved {moved}, not {owned}"
            );
            rates.push(rate);
        }
    }
    let rss = workers.pop().expect("one worker").stop().await?;
    let rounds = |v: &[f64]| v.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "# rows/s per round: raw update {}; single {}; ratio-4 {}",
        rounds(&raw),
        rounds(&single),
        rounds(&ratio)
    );
    let raw_rate = median(&raw);
    let single = Phase { rate: median(&single), largest_transaction: largest.0 };
    let ratio = Phase { rate: median(&ratio), largest_transaction: largest.1 };
    let single_ratio = single.rate / raw_rate;
    let ratio_ratio = ratio.rate / raw_rate;
    println!("raw update: {raw_rate:.0} rows/s");
    println!("single: {:.0} rows/s, ratio {single_ratio:.2}", single.rate);
    println!("ratio-4: {:.0} rows/s, ratio {ratio_ratio:.2}", ratio.rate);
    println!("single largest transaction: {} rows", single.largest_transaction);
    println!("ratio-4 largest transaction: {} rows", ratio.largest_transaction);
    println!("worker peak RSS: {:.1} MiB", mib(rss));
    println!(
        "# journal rows/s per round: single off {}; single on {}; ratio-4 off {}; ratio-4 on {}",
        rounds(&single_off),
        rounds(&single_on),
        rounds(&ratio_off),
        rounds(&ratio_on)
    );
    let journal_single = median(&single_on) / median(&single_off);
    let journal_ratio = median(&ratio_on) / median(&ratio_off);
    println!(
        "journal, single: off {:.0} rows/s, on {:.0} rows/s, ratio {journal_single:.2} (cost x{:.2})",
        median(&single_off),
        median(&single_on),
        1.0 / journal_single
    );
    println!(
        "journal, ratio-4: off {:.0} rows/s, on {:.0} rows/s, ratio {journal_ratio:.2} (cost x{:.2})",
        median(&ratio_off),
        median(&ratio_on),
        1.0 / journal_ratio
    );
    let bounded = single.largest_transaction <= batch && ratio.largest_transaction <= batch;
    println!("target no transaction over {batch} rows: {}", verdict(bounded));
    println!("target single >= 0.70 x raw update: {}", verdict(single_ratio >= 0.7));
    println!("target ratio-4 >= 0.50 x raw update: {}", verdict(ratio_ratio >= 0.5));
    println!("target worker RSS < 32 MiB: {}", verdict(mib(rss) < 32.0));
    println!(
        "target journal on >= 0.77 x off (cost <= 1.3x): {}",
        verdict(journal_single >= 0.77 && journal_ratio >= 0.77)
    );
    Ok(())
}

/// Rounds of (raw, single, ratio-4).
const ROUNDS: usize = 3;

async fn raw_update(env: &BenchEnv, company: &Company, owned: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let moved =
        sqlx::query("UPDATE crm.deals SET owner_id = $3 WHERE company_id = $1 AND owner_id = $2")
            .bind(company.id)
            .bind(company.owner)
            .bind(company.targets[0])
            .execute(&env.pool)
            .await?
            .rows_affected();
    let rate = moved as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(moved as usize == owned, "the raw UPDATE moved {moved} rows, not {owned}");
    Ok(rate)
}

async fn build_company(env: &BenchEnv, items: usize) -> anyhow::Result<Company> {
    let started = Instant::now();
    let seeded =
        seed::seed(&env.pool, SeedOptions { users: 10, items_per_user: 0, seed: 1 }).await?;
    let regular: Vec<i64> = seeded.users.iter().filter(|u| !u.is_admin).map(|u| u.id).collect();
    let owner = regular[0];
    let targets = regular[1..5].to_vec();
    // Everyone else owns the other 80%.
    let others: Vec<i64> = seeded
        .users
        .iter()
        .map(|u| u.id)
        .filter(|id| *id != owner && !targets.contains(id))
        .collect();
    sqlx::query(
        "INSERT INTO crm.deals (company_id, owner_id, title, value, status, created_at)
         SELECT $1,
                CASE WHEN g % 5 = 0 THEN $2 ELSE ($3::bigint[])[1 + g % cardinality($3::bigint[])] END,
                'Deal #' || g, (g * 37 % 500) * 100,
                CASE WHEN g % 10 < 6 THEN 'open' WHEN g % 2 = 0 THEN 'won' ELSE 'lost' END,
                -- Roughly in id order, as items are created, with some jitter.
                timestamptz '2024-01-01' + make_interval(secs => (g * 60 + g * 7919 % 3600)::double precision)
         FROM generate_series(1, $4) g",
    )
    .bind(seeded.company_id)
    .bind(owner)
    .bind(&others)
    .bind(items as i64)
    .execute(&env.pool)
    .await?;
    // The phases vacuum themselves; autovacuum waking up in the middle of one would only
    // add noise.
    sqlx::raw_sql("ALTER TABLE crm.deals SET (autovacuum_enabled = false)")
        .execute(&env.pool)
        .await?;
    println!("# seeded in {:.1} s", started.elapsed().as_secs_f64());
    Ok(Company { id: seeded.company_id, owner, targets })
}

/// Gives every moved row back to its owner, vacuums and checkpoints (untimed).
async fn prepare(env: &BenchEnv, company: &Company) -> anyhow::Result<()> {
    sqlx::query("UPDATE crm.deals SET owner_id = $2 WHERE company_id = $1 AND owner_id = ANY ($3)")
        .bind(company.id)
        .bind(company.owner)
        .bind(&company.targets)
        .execute(&env.pool)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE crm.deals").execute(&env.pool).await?;
    sqlx::raw_sql("CHECKPOINT").execute(&env.pool).await.context("CHECKPOINT")?;
    Ok(())
}

struct Phase {
    rate: f64,
    largest_transaction: i64,
}

/// Inserts a run with one `reassign_deals` step and waits for a worker to finish it. Timed
/// from the claim (the step's `started_at`) to its success.
async fn reassign_through_offboard(
    env: &BenchEnv,
    company: &Company,
    plan: &serde_json::Value,
    owned: usize,
) -> anyhow::Result<Phase> {
    let plan = TransferPlan::parse(plan)
        .and_then(|p| p.resolve(None))
        .map_err(|e| anyhow::anyhow!("bench plan: {e:?}"))?;
    let run_id = runs::new_run_id();
    let mut tx = env.pool.begin().await?;
    runs::insert(
        &mut tx,
        &NewRun {
            id: run_id,
            company_id: company.id,
            user_id: company.owner,
            action: offboard::domain::Action::Deactivate,
            plan: plan.to_json(),
            params: serde_json::to_value(RunParams::default())?,
            actor_user_id: UserId::new(company.targets[0]).expect("positive").get(),
            idempotency_key: None,
            steps: vec![StepSpec { name: "reassign_deals".into(), depends_on: Vec::new() }],
            max_attempts: env.settings.worker.max_attempts,
            status: offboard::domain::RunStatus::Queued,
            effective_at: None,
        },
        None,
    )
    .await?;
    tx.commit().await?;

    let deadline = Instant::now() + Duration::from_secs(600);
    let (elapsed, done) = loop {
        let (status, elapsed, done, error): (StepStatus, Option<f64>, i64, Option<String>) =
            sqlx::query_as(
                "SELECT status, extract(epoch FROM clock_timestamp() - started_at)::float8, done,
                        last_error_code || ': ' || last_error_message
                 FROM offboard.steps WHERE run_id = $1",
            )
            .bind(run_id)
            .fetch_one(&env.pool)
            .await?;
        match status {
            StepStatus::Succeeded => break (elapsed.unwrap_or(f64::NAN), done),
            StepStatus::Dead | StepStatus::Canceled => {
                bail!("the reassignment step ended {status}: {error:?}")
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("the reassignment did not finish within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    anyhow::ensure!(done as usize == owned, "offboard moved {done} rows, not {owned}");
    // Every row a transaction updates carries its id as xmin: the largest group is the
    // largest number of item rows one transaction changed (and locked).
    let largest: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(n), 0) FROM (
             SELECT count(*) AS n FROM crm.deals
             WHERE company_id = $1 AND owner_id = ANY ($2) GROUP BY xmin::text) t",
    )
    .bind(company.id)
    .bind(&company.targets)
    .fetch_one(&env.pool)
    .await?;
    Ok(Phase { rate: done as f64 / elapsed, largest_transaction: largest })
}
