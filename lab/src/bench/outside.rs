//! `offboard-lab bench outside`: the layoff with steps that call outside systems. Every
//! leaving user holds 3 OAuth grants (email, contacts, calendar: Google, or Microsoft for
//! every third user's email and calendar) and 2 app installs, so each deactivation revokes
//! 3 grants (RFC 7009) and calls 2 vendors' uninstall callbacks. The two providers and the
//! 8 app vendors are real HTTP servers on loopback in the bench process, each its own
//! destination host (its own port), so the per-host limits apply as in production.
//!
//! - The layoff with every provider and vendor answering in 100 ms, next to the same
//!   layoff on an identical company with them answering at once (the cost of the calls'
//!   latency).
//! - Fairness: a single deactivation in a small company (which holds no install of the
//!   hanging app), timed on an idle system and again while a third identical company's
//!   layoff runs with one vendor hanging every call (never answering; the call's timeout
//!   ends it). Target: within 1.5 × its idle time.
//!
//! One worker process (`offboard worker`) with the product's settings, except the
//! per-host rate limit, raised so the figure is the engine's and the latency's rather than
//! the token bucket's (printed below).

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{
    ApiServer, BenchEnv, BenchOptions, WorkerProcess, http_client,
    layoff::{Layoff, enqueue, layoff, single_offboarding},
    median,
    remote::Remote,
    verdict, wait_for_workers,
};
use offboard::{
    config::Settings,
    crm::seed::{self, SeedOptions, Seeded},
};

const ITEMS_PER_USER: usize = 50;
const LATENCY: Duration = Duration::from_millis(100);
const FAIRNESS_SAMPLES: usize = 3;
/// The app whose vendor hangs in the fairness part.
const HANGING_APP: &str = "zoom";
const RATE_PER_HOST: &str = "1000";

pub(super) async fn run(base: &Settings, options: &BenchOptions) -> anyhow::Result<()> {
    let env = BenchEnv::create(base, "outside").await?;
    let result = measure(&env, options).await;
    env.teardown().await;
    result
}

/// The providers and vendors, and the seeded catalogue pointed at them.
struct Outside {
    google: Remote,
    microsoft: Remote,
    vendors: Vec<(String, Remote)>,
}

impl Outside {
    async fn start(pool: &PgPool, companies: &[&Seeded]) -> anyhow::Result<Self> {
        let google = Remote::start(LATENCY).await?;
        let microsoft = Remote::start(LATENCY).await?;
        let mut vendors = Vec::new();
        for company in companies {
            seed::connect_outside(pool, company.company_id, Some(&google.base), Some(&google.base))
                .await?;
        }
        let ids: Vec<i64> = companies.iter().map(|c| c.company_id).collect();
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT key FROM crm.apps ORDER BY key").fetch_all(pool).await?;
        for key in keys {
            let vendor = Remote::start(LATENCY).await?;
            sqlx::query("UPDATE crm.apps SET vendor_uninstall_url = $2 WHERE key = $1")
                .bind(&key)
                .bind(format!("{}/apps/{key}/uninstall", vendor.base))
                .execute(pool)
                .await?;
            vendors.push((key, vendor));
        }
        sqlx::query("UPDATE crm.oauth_providers SET revocation_url = $1 WHERE name = 'microsoft'")
            .bind(format!("{}/oauth2/revoke", microsoft.base))
            .execute(pool)
            .await?;
        // 3 grants: Drive syncs hold none. 2 apps: a second install of another app each.
        sqlx::query(
            "UPDATE crm.account_syncs SET refresh_token = NULL, provider_id = NULL
             WHERE company_id = ANY ($1) AND kind = 'google_drive'",
        )
        .bind(&ids)
        .execute(pool)
        .await?;
        sqlx::query(
            "INSERT INTO crm.app_installs (company_id, app_key, installed_by, shared)
             SELECT i.company_id,
                    (SELECT a.key FROM crm.apps a WHERE a.key <> i.app_key
                     ORDER BY md5(a.key || i.installed_by::text) LIMIT 1),
                    i.installed_by, false
             FROM crm.app_installs i WHERE i.company_id = ANY ($1) AND NOT i.shared",
        )
        .bind(&ids)
        .execute(pool)
        .await?;
        Ok(Self { google, microsoft, vendors })
    }

    fn all(&self) -> impl Iterator<Item = &Remote> {
        [&self.google, &self.microsoft].into_iter().chain(self.vendors.iter().map(|(_, v)| v))
    }

    fn set_delay(&self, delay: Duration) {
        self.all().for_each(|r| r.set_delay(delay));
    }

    fn received(&self) -> usize {
        self.all().map(Remote::received).sum()
    }

    fn vendor(&self, key: &str) -> Option<&Remote> {
        self.vendors.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

async fn measure(env: &BenchEnv, options: &BenchOptions) -> anyhow::Result<()> {
    let leaving = options.scaled(200, 10);
    let users = leaving * 2;
    let started = Instant::now();
    let seed_company = |users: usize, seed: u64| {
        seed::seed(&env.pool, SeedOptions { users, items_per_user: ITEMS_PER_USER, seed })
    };
    let small = seed_company(20, 11).await?;
    let slow = seed_company(users, 1).await?;
    let instant = seed_company(users, 2).await?;
    let hanging = seed_company(users, 3).await?;
    let outside = Outside::start(&env.pool, &[&small, &slow, &instant, &hanging]).await?;
    // The small company holds nothing of the hanging vendor's: its run must not wait on it.
    sqlx::query("DELETE FROM crm.app_installs WHERE company_id = $1 AND app_key = $2")
        .bind(small.company_id)
        .bind(HANGING_APP)
        .execute(&env.pool)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&env.pool).await?;
    let (small, slow, instant, hanging) = (
        Layoff::new(small, 2 * FAIRNESS_SAMPLES),
        Layoff::new(slow, leaving),
        Layoff::new(instant, leaving),
        Layoff::new(hanging, leaving),
    );
    let leavers: Vec<i64> = slow.leaving.iter().map(|(u, _)| *u).collect();
    let calls_per_run: f64 = sqlx::query_scalar(
        "SELECT ((SELECT count(*) FROM crm.account_syncs
                  WHERE user_id = ANY ($1) AND refresh_token IS NOT NULL)
               + (SELECT count(*) FROM crm.app_installs
                  WHERE installed_by = ANY ($1) AND NOT shared))::float8 / cardinality($1)",
    )
    .bind(&leavers)
    .fetch_one(&env.pool)
    .await?;
    let timeout = env.settings.outbound.timeout;
    let vars = [
        ("OFFBOARD_OUTBOUND_ALLOW_PRIVATE", "1"),
        (
            "OFFBOARD_OAUTH_CLIENTS",
            "google=bench-client:bench-secret,microsoft=bench-client:bench-secret",
        ),
        ("OFFBOARD_OUTBOUND_RATE_PER_HOST", RATE_PER_HOST),
        ("OFFBOARD_OUTBOUND_BURST_PER_HOST", RATE_PER_HOST),
    ];
    println!(
        "## outside: {leaving} of {users} users deactivated at once, {calls_per_run:.1} outside calls per run (3 grants, 2 app callbacks); 2 providers and 8 vendors, each its own host; {} calls in flight per host, rate limit raised to {RATE_PER_HOST}/s per host, call timeout {timeout:?}; worker concurrency {}",
        env.settings.outbound.max_in_flight_per_host, env.settings.worker.concurrency
    );
    println!("# seeded in {:.1} s", started.elapsed().as_secs_f64());

    let api = ApiServer::start(env.settings.clone()).await?;
    let client = http_client(4)?;
    let mut workers = vec![WorkerProcess::spawn_with(env, "worker", &vars)?];
    wait_for_workers(env, &mut workers).await?;
    let mut fairness_pending = small.leaving.iter().copied();

    let mut idle = Vec::new();
    for _ in 0..FAIRNESS_SAMPLES {
        let who = fairness_pending.next().expect("enough small-company users");
        idle.push(single_offboarding(env, &api, &client, &small, who).await?);
    }
    let before = outside.received();
    let slow_elapsed = layoff(env, &api, &slow).await?;
    let slow_calls = outside.received() - before;
    outside.set_delay(Duration::ZERO);
    let instant_elapsed = layoff(env, &api, &instant).await?;

    // Fairness: one vendor hangs every call while the third company's layoff runs.
    outside.set_delay(LATENCY);
    outside.vendor(HANGING_APP).expect("the hanging app's vendor").set_hang(true);
    let layoff_started = Instant::now();
    enqueue(&api, &hanging).await?;
    let mut loaded = Vec::new();
    for k in 0..FAIRNESS_SAMPLES {
        // Spread over the hanging layoff: at 2, 6 and 10 s after it began.
        let at = Duration::from_secs(2 + 4 * k as u64);
        tokio::time::sleep(at.saturating_sub(layoff_started.elapsed())).await;
        let who = fairness_pending.next().expect("enough small-company users");
        let busy = busy_slots(&env.pool, hanging.company.company_id).await?;
        loaded.push(single_offboarding(env, &api, &client, &small, who).await?);
        println!(
            "# at sample {k}: {} of the layoff's steps running, {} of them uninstall_apps",
            busy.0, busy.1
        );
    }
    let unfinished = unfinished(&env.pool, hanging.company.company_id).await?;
    let rss = workers.pop().expect("one worker").stop().await?;
    api.stop().await?;

    let rate = |d: Duration| leaving as f64 / d.as_secs_f64();
    let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<f64>>();
    let (idle_ms, loaded_ms) = (ms(&idle), ms(&loaded));
    let fairness = median(&loaded_ms) / median(&idle_ms);
    let samples = |v: &[f64]| v.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(", ");
    println!("# {slow_calls} calls received in the 100 ms layoff");
    profile(&env.pool, small.company.company_id).await?;
    println!(
        "# fairness samples (ms): idle {}; under the layoff with {HANGING_APP}'s vendor hanging {} ({unfinished} of its runs unfinished at the end)",
        samples(&idle_ms),
        samples(&loaded_ms)
    );
    println!(
        "offboard layoff, outside calls answering in 100 ms: {:.1} runs/s",
        rate(slow_elapsed)
    );
    println!("baseline the same layoff, answering at once: {:.1} runs/s", rate(instant_elapsed));
    println!(
        "ratio: {:.2}",
        slow_elapsed.as_secs_f64().recip() / instant_elapsed.as_secs_f64().recip()
    );
    println!("fairness idle: {:.0} ms", median(&idle_ms));
    println!("fairness with a hanging vendor: {:.0} ms", median(&loaded_ms));
    println!("fairness ratio: {fairness:.2}");
    println!("worker peak RSS: {:.1} MiB", super::mib(rss));
    println!("target fairness ratio <= 1.5: {}", verdict(fairness <= 1.5));
    Ok(())
}

/// Runs of the company not finished yet ([`RunStatus::is_finished`]'s list).
///
/// [`RunStatus::is_finished`]: offboard::domain::RunStatus::is_finished
async fn unfinished(pool: &PgPool, company_id: i64) -> anyhow::Result<i64> {
    let finished: Vec<&str> = offboard::domain::RunStatus::ALL
        .into_iter()
        .filter(|s| s.is_finished())
        .map(|s| s.as_str())
        .collect();
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM offboard.runs
         WHERE company_id = $1 AND status <> ALL($2)",
    )
    .bind(company_id)
    .bind(finished)
    .fetch_one(pool)
    .await?)
}

/// The layoff's steps running now, and how many of them are `uninstall_apps`.
async fn busy_slots(pool: &PgPool, company_id: i64) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE name = 'uninstall_apps')
         FROM offboard.steps WHERE company_id = $1 AND status = 'running'",
    )
    .bind(company_id)
    .fetch_one(pool)
    .await?)
}

/// Where each of the small company's runs spent its time: from request to finish, and for
/// each outside-calling step its attempts, its time from first claim to finish, and the
/// slowest of its calls' own latencies (the rest of the step's time is waiting: for a
/// host's in-flight slot or rate, a re-scheduled attempt, a worker slot).
async fn profile(pool: &PgPool, company_id: i64) -> anyhow::Result<()> {
    let rows: Vec<(f64, String, i32, f64, i32)> = sqlx::query_as(
        "SELECT extract(epoch FROM r.finished_at - r.created_at)::float8 * 1000, s.name, s.attempts,
                extract(epoch FROM s.finished_at - s.started_at)::float8 * 1000,
                (SELECT coalesce(max(c.last_latency_ms), 0) FROM offboard.outbound_calls c
                 WHERE c.run_id = s.run_id AND c.position = s.position)
         FROM offboard.runs r JOIN offboard.steps s ON s.run_id = r.id
         WHERE r.company_id = $1 AND r.status = 'succeeded'
           AND s.name IN ('stop_syncs', 'uninstall_apps')
         ORDER BY r.created_at, s.name",
    )
    .bind(company_id)
    .fetch_all(pool)
    .await?;
    for (total, step, attempts, took, slowest) in rows {
        println!(
            "# small run of {total:.0} ms: {step} {attempts} attempt(s), {took:.0} ms from claim to finish, slowest call {slowest} ms"
        );
    }
    super::print_timelines(pool, company_id).await?;
    Ok(())
}
