//! `offboard-lab bench enqueue`: HTTP enqueue throughput and latency from a loopback load
//! generator with 64 concurrent connections, against two baselines measured in the same
//! run: the same load on `/healthz` (HTTP, a PostgreSQL `SELECT 1` and a Redis `PING`), and
//! the raw rate of the writes an enqueue commits — run, steps and history (`runs::insert`)
//! plus the idempotency key, in the one statement (one transaction) an enqueue writes them with — issued directly over 64 connections.
//!
//! The API runs in this process on its own runtime, without workers: this measures the
//! request path, not the steps the runs would start.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use hyper::StatusCode;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

use super::{
    ApiServer, BenchEnv, BenchOptions, Cpu, LoadResult, get, http_load, mib, peak_rss_of,
    post_json, verdict,
};
use offboard::{
    config::Settings,
    domain::{Action, TransferPlan},
    ledger::runs::{self, NewRun},
    steps::{self, RunParams},
};

const CONNECTIONS: usize = 64;
/// Companies the deactivated users belong to: a host app's traffic spans tenants, and a
/// deactivation locks its company row (seats and admin counts), so one company alone
/// would measure that lock.
const COMPANIES: usize = 32;

pub(super) async fn run(base: &Settings, options: &BenchOptions) -> anyhow::Result<()> {
    let env = BenchEnv::create(base, "enqueue").await?;
    let result = measure(&env, options).await;
    env.teardown().await;
    result
}

/// Who can be deactivated, and by whom, in one company.
struct Tenant {
    company_id: i64,
    actor: i64,
    target: i64,
    users: Vec<i64>,
}

async fn measure(env: &BenchEnv, options: &BenchOptions) -> anyhow::Result<()> {
    let warmup = options.scaled_duration(Duration::from_secs(1));
    let window = options.scaled_duration(Duration::from_secs(8));
    let users_per_company = options.scaled(1_000, 50);
    println!(
        "## enqueue: {CONNECTIONS} connections, {:.0} s warm-up + {:.0} s measured per load; {COMPANIES} companies of {users_per_company} users; API pool {} connections",
        warmup.as_secs_f64(),
        window.as_secs_f64(),
        env.settings.db_pool_size
    );
    let started = Instant::now();
    let mut tenants = Vec::with_capacity(COMPANIES);
    for _ in 0..COMPANIES {
        tenants.push(seed_tenant(env, users_per_company).await?);
    }
    sqlx::raw_sql("VACUUM ANALYZE").execute(&env.pool).await?;
    println!("# seeded in {:.1} s", started.elapsed().as_secs_f64());
    let tenants = Arc::new(tenants);

    let api = ApiServer::start(env.settings.clone()).await?;
    let healthz =
        http_load(api.addr, CONNECTIONS, warmup, window, StatusCode::OK, |_| Some(get("/healthz")))
            .await?;
    let cpu_before = Cpu::sample(env, &[]).await?;
    let enqueue = {
        let tenants = tenants.clone();
        http_load(api.addr, CONNECTIONS, warmup, window, StatusCode::ACCEPTED, move |i| {
            // Requests walk the companies in turn.
            let tenant = &tenants[i % COMPANIES];
            let user = *tenant.users.get(i / COMPANIES)?;
            let body = json!({
                "company_id": tenant.company_id,
                "user_id": user,
                "actor_user_id": tenant.actor,
                "action": "deactivate",
                "transfer": {"default": {"mode": "single", "targets": [{"user_id": tenant.target}]}},
            });
            let key = format!("bench-{user}");
            Some(post_json("/v1/offboardings", &body, &[("idempotency-key", &key)]))
        })
        .await?
    };
    // Includes the warm-up: CPU per request over every accepted request.
    let cpu = Cpu::sample(env, &[]).await?.since(&cpu_before);
    let accepted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM offboard.runs").fetch_one(&env.pool).await?;
    let api_rss = peak_rss_of("/proc/self/status").unwrap_or(0);
    api.stop().await?;
    let (raw, raw_cpu, raw_count) = raw_transactions(env, warmup, window).await?;

    report_load("offboard enqueue", &enqueue);
    report_load("baseline healthz", &healthz);
    println!("baseline raw transaction: {:.0} tx/s", raw);
    println!("ratio to raw transaction: {:.2}", enqueue.rate() / raw);
    println!("ratio to healthz: {:.2}", enqueue.rate() / healthz.rate());
    println!("bench process (API + load generator) peak RSS: {:.1} MiB", mib(api_rss));
    cpu.report(accepted as f64, "request");
    println!(
        "cpu postgres, raw transaction: {:.3} ms/transaction",
        raw_cpu.postgres.as_secs_f64() * 1000.0 / raw_count.max(1) as f64
    );
    println!("target >= 2000 req/s: {}", verdict(enqueue.rate() >= 2000.0));
    println!("target p99 < 50 ms: {}", verdict(enqueue.percentile_ms(99.0) < 50.0));
    println!("target >= 0.6 x raw transaction: {}", verdict(enqueue.rate() / raw >= 0.6));
    Ok(())
}

/// A company of `users` users, 10% admins with account-settings access. Only users: the
/// enqueue path reads nothing else of the CRM store (the full seed takes a minute here).
async fn seed_tenant(env: &BenchEnv, users: usize) -> anyhow::Result<Tenant> {
    let admins = (users / 10).max(2);
    let company_id: i64 = sqlx::query_scalar(
        "INSERT INTO crm.companies (name, seats) VALUES ('Bench company', $1) RETURNING id",
    )
    .bind((users + admins) as i32)
    .fetch_one(&env.pool)
    .await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO crm.users (company_id, name, email, role, account_settings_access)
         SELECT $1, 'User ' || k, 'user' || k || '@c' || $1 || '.example.com',
                CASE WHEN k <= $3 THEN 'admin' ELSE 'regular' END, k <= $3
         FROM generate_series(1, $2::bigint) k ORDER BY k
         RETURNING id",
    )
    .bind(company_id)
    .bind(users as i64)
    .bind(admins as i64)
    .fetch_all(&env.pool)
    .await?;
    Ok(Tenant { company_id, actor: ids[0], target: ids[1], users: ids[admins..].to_vec() })
}

fn report_load(name: &str, load: &LoadResult) {
    println!("{name}: {:.0} req/s", load.rate());
    println!("{name} p50: {:.1} ms", load.percentile_ms(50.0));
    println!("{name} p99: {:.1} ms", load.percentile_ms(99.0));
    if load.failed > 0 {
        println!(
            "{name} failed: {} requests (first: {})",
            load.failed,
            load.first_failure.as_deref().unwrap_or("?")
        );
    }
}

/// The writes of one enqueue — run, its 15 steps, its history entry and its idempotency
/// key — in the one statement an enqueue writes them with (no BEGIN/COMMIT around it), from `CONNECTIONS` connections at once; transactions per second.
async fn raw_transactions(
    env: &BenchEnv,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<(f64, Cpu, u64)> {
    let pool = PgPoolOptions::new()
        .max_connections(CONNECTIONS as u32)
        .min_connections(CONNECTIONS as u32)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&env.settings.database_url)
        .await
        .context("the raw baseline needs 64 connections")?;
    let plan =
        TransferPlan::parse(&json!({"default": {"mode": "single", "targets": [{"user_id": 1}]}}))
            .and_then(|p| p.resolve(None))
            .map_err(|e| anyhow::anyhow!("bench plan: {e:?}"))?;
    let steps = steps::plan(Action::Deactivate, &plan);
    let plan = plan.to_json();
    let params = serde_json::to_value(RunParams::default())?;
    // The pool's connections are open (min_connections), so the sample sees their backends.
    let cpu_before = Cpu::sample(env, &[]).await?;
    let start = Instant::now();
    let (window_start, window_end) = (start + warmup, start + warmup + window);
    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let (pool, steps, plan, params) =
            (pool.clone(), steps.clone(), plan.clone(), params.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut counted = 0u64;
            let mut i = 0i64;
            while Instant::now() < window_end {
                // Users that exist nowhere else: the ledger has no foreign key to the CRM.
                let user_id = 100_000_000 + connection as i64 * 10_000_000 + i;
                i += 1;
                let run_id = runs::new_run_id();
                let key = format!("raw-{user_id}");
                runs::insert(
                    &mut conn,
                    &NewRun {
                        id: run_id,
                        company_id: 1,
                        user_id,
                        action: offboard::domain::Action::Deactivate,
                        plan: plan.clone(),
                        params: params.clone(),
                        actor_user_id: 1,
                        idempotency_key: Some(&key),
                        steps: steps.clone(),
                        max_attempts: 8,
                        status: offboard::domain::RunStatus::Queued,
                        effective_at: None,
                    },
                    Some((&key, "0")),
                )
                .await?;
                let done = Instant::now();
                if done >= window_start && done < window_end {
                    counted += 1;
                }
            }
            anyhow::Ok((counted, i as u64))
        }));
    }
    let (mut total, mut all) = (0, 0);
    for task in tasks {
        let (counted, issued) = task.await??;
        total += counted;
        all += issued;
    }
    let cpu = Cpu::sample(env, &[]).await?.since(&cpu_before);
    pool.close().await;
    Ok((total as f64 / window.as_secs_f64(), cpu, all))
}
