//! `offboard-lab bench enqueue`: HTTP enqueue throughput and latency at 64 concurrent
//! keep-alive connections, in the shapes users deploy, each next to the baselines measured
//! in the same run:
//!
//! - **(a)** `offboard api` as a process of its own (no workers), requests spread over 32
//!   companies of 1,000 users, each company with its own target; and the same load from
//!   `wrk` (when it is on `PATH`), to show how an independent load generator agrees.
//! - **(b)** `offboard serve` — the API and its workers in one process — on the same kind of
//!   load, the workers busy with the runs being enqueued.
//! - **(c)** the layoff shape: one company of 20,000 users (2,000 admins), every request
//!   naming the same target, on `offboard api`; next to **(d)** 200 small companies of 100
//!   users (the same 20,000 users), each with its own target.
//!
//! Baselines: `/healthz` on the API process (HTTP, a PostgreSQL `SELECT 1`, a Redis
//! `PING`), and the raw write an enqueue commits — run, 15 steps, history and idempotency
//! key in the one statement of `runs::insert` — issued directly over 64 connections.
//!
//! Before each load the ledger is emptied (`TRUNCATE`, `VACUUM ANALYZE`), so every shape
//! starts from the same tables. CPU is per accepted request, per process.
//!
//! Here the loads and their report; [`wrk`] the same load from `wrk`, [`raw`] the baseline
//! transaction.

mod raw;
mod wrk;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::StatusCode;
use serde_json::json;

use self::{
    raw::raw_transactions,
    wrk::{WRK_THREADS, find_on_path, wrk_load},
};
use super::{
    BenchEnv, BenchOptions, Cpu, LoadRequest, LoadResult, Statements, WorkerProcess,
    free_loopback_addr, get, http_load, mib, post_json, verdict,
};
use offboard::config::Settings;

const CONNECTIONS: usize = 64;
/// Companies of shapes (a) and (b): a host app's traffic spans tenants.
const SMALL_COMPANIES: usize = 32;
/// Companies of shape (d).
const MANY_COMPANIES: usize = 200;

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
    /// Regular users, consecutive ids.
    users: Vec<i64>,
}

type Tenants = Arc<Vec<Tenant>>;

/// What one enqueue load measured.
struct Shape {
    load: LoadResult,
    cpu: Cpu,
    accepted: i64,
}

impl Shape {
    fn report(&self, name: &str, raw: f64) {
        report_load(name, &self.load);
        println!("{name} ratio to raw transaction: {:.2}", self.load.rate() / raw);
        self.cpu.report_for(name, self.accepted as f64, "request");
    }
}

async fn measure(env: &BenchEnv, options: &BenchOptions) -> anyhow::Result<()> {
    let warmup = options.scaled_duration(Duration::from_secs(1));
    let window = options.scaled_duration(Duration::from_secs(8));
    let small_users = options.scaled(1_000, 50);
    let big_users = options.scaled(20_000, 500);
    let many_users = options.scaled(100, 20);
    let wrk = find_on_path("wrk");
    println!(
        "## enqueue: {CONNECTIONS} connections, {:.0} s warm-up + {:.0} s measured per load; API pool {} connections; ledger emptied before each load",
        warmup.as_secs_f64(),
        window.as_secs_f64(),
        env.settings.db_pool_size
    );
    println!(
        "# (a) offboard api process, {SMALL_COMPANIES} companies of {small_users} users; (b) offboard serve (API + workers), the same; (c) one company of {big_users} users ({} admins), one target for every request; (d) {MANY_COMPANIES} companies of {many_users} users, a target each",
        big_users / 10
    );
    let started = Instant::now();
    let a = seed_tenants(env, SMALL_COMPANIES, small_users).await?;
    let w = if wrk.is_some() {
        Some(seed_tenants(env, SMALL_COMPANIES, small_users).await?)
    } else {
        None
    };
    let b = seed_tenants(env, SMALL_COMPANIES, small_users).await?;
    let c = seed_tenants(env, 1, big_users).await?;
    let d = seed_tenants(env, MANY_COMPANIES, many_users).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&env.pool).await?;
    println!("# seeded in {:.1} s", started.elapsed().as_secs_f64());
    let statements = Statements::detect(&env.pool).await;

    // (a), wrk, (c), (d): one `offboard api` process.
    let addr = free_loopback_addr()?;
    let mut api = spawn_service(env, "api", addr)?;
    api.wait_for_api(addr).await?;
    let healthz =
        http_load(addr, CONNECTIONS, warmup, window, StatusCode::OK, |_| Some(get("/healthz")))
            .await?;
    let load = Load { env, addr, statements: &statements, warmup, window };
    let shape_a = load.enqueue(&api, &a, "bench-a").await?;
    let by_wrk = match (&wrk, &w) {
        (Some(wrk), Some(w)) => {
            reset_ledger(env).await?;
            statements.reset(&env.pool).await?;
            let by_wrk = wrk_load(env, wrk, addr, &api, w, warmup + window).await?;
            statements.report(&env.pool, "(a) by wrk", by_wrk.accepted as f64, "request").await?;
            Some(by_wrk)
        }
        _ => None,
    };
    let shape_c = load.enqueue(&api, &c, "bench-c").await?;
    let shape_d = load.enqueue(&api, &d, "bench-d").await?;
    let api_rss = api.stop().await?;

    // (b): one `offboard serve` process, its workers running what is enqueued.
    reset_ledger(env).await?;
    let addr = free_loopback_addr()?;
    let mut serve = spawn_service(env, "serve", addr)?;
    serve.wait_for_api(addr).await?;
    let load = Load { addr, ..load };
    let shape_b = load.enqueue(&serve, &b, "bench-b").await?;
    let (succeeded, waiting): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                count(*) FILTER (WHERE status IN ('ready', 'queued', 'running'))
         FROM offboard.steps",
    )
    .fetch_one(&env.pool)
    .await?;
    let serve_rss = serve.stop().await?;

    reset_ledger(env).await?;
    let (raw, raw_cpu, raw_count) = raw_transactions(env, warmup, window).await?;

    println!("baseline raw transaction: {raw:.0} tx/s");
    println!(
        "cpu postgres, raw transaction: {:.3} ms/transaction",
        raw_cpu.postgres.as_secs_f64() * 1000.0 / raw_count.max(1) as f64
    );
    report_load("baseline healthz (api process)", &healthz);
    shape_a.report("enqueue (a) api process", raw);
    if let Some(by_wrk) = &by_wrk {
        println!(
            "# wrk {} -t{WRK_THREADS} -c{CONNECTIONS} -d{:.0}s --latency -s wrk-enqueue.lua (counts its whole run, no warm-up)",
            by_wrk.version,
            (warmup + window).as_secs_f64()
        );
        println!("enqueue (a) by wrk: {:.0} req/s", by_wrk.rate);
        println!("enqueue (a) by wrk p50: {:.1} ms", by_wrk.p50_ms);
        println!("enqueue (a) by wrk p99: {:.1} ms", by_wrk.p99_ms);
        if by_wrk.non_2xx > 0 {
            println!("enqueue (a) by wrk non-2xx: {} responses", by_wrk.non_2xx);
        }
        println!(
            "enqueue (a) by wrk: runs written {:.0}/s",
            by_wrk.accepted as f64 / (warmup + window).as_secs_f64()
        );
        println!("enqueue (a) wrk / ours: {:.2}", by_wrk.rate / shape_a.load.rate());
        by_wrk.cpu.report_for("enqueue (a) by wrk", by_wrk.accepted as f64, "request");
    } else {
        println!("# wrk is not on PATH: the wrk comparison of (a) is skipped");
    }
    shape_b.report("enqueue (b) serve", raw);
    println!(
        "enqueue (b) serve: {succeeded} steps succeeded meanwhile, {waiting} ready, queued or running at the end"
    );
    shape_c.report("enqueue (c) one company, one target", raw);
    shape_d.report("enqueue (d) many small companies", raw);
    println!("enqueue (c) / (d): {:.2}", shape_c.load.rate() / shape_d.load.rate());
    println!("api process peak RSS: {:.1} MiB", mib(api_rss));
    println!("serve process peak RSS: {:.1} MiB", mib(serve_rss));
    let ratio = |s: &Shape| s.load.rate() / raw;
    println!("target (a) >= 0.8 x raw transaction: {}", verdict(ratio(&shape_a) >= 0.8));
    println!("target (c) >= 0.8 x raw transaction: {}", verdict(ratio(&shape_c) >= 0.8));
    println!(
        "target (c) >= 0.9 x (d): {}",
        verdict(shape_c.load.rate() >= 0.9 * shape_d.load.rate())
    );
    for (name, shape) in [("(a)", &shape_a), ("(c)", &shape_c), ("(d)", &shape_d)] {
        println!(
            "target p99 < 50 ms in {name}: {}",
            verdict(shape.load.percentile_ms(99.0) < 50.0)
        );
    }
    Ok(())
}

/// `offboard api` or `offboard serve` (this binary's `api` and `serve`, the product's code)
/// on its own loopback port, accepting the development token.
fn spawn_service(
    env: &BenchEnv,
    subcommand: &str,
    addr: SocketAddr,
) -> anyhow::Result<WorkerProcess> {
    let bind = addr.to_string();
    WorkerProcess::spawn_command(
        env,
        subcommand,
        subcommand,
        &[("OFFBOARD_BIND", &bind), ("OFFBOARD_DEV_TOKEN", "1"), ("OFFBOARD_API_TOKENS", "")],
    )
}

/// Empties the ledger the loads write, so every load starts from the same tables.
///
/// The truncation locks the tables one after the other while a running `offboard serve`'s
/// workers and sweeper may hold one of them and want the next: PostgreSQL then ends one
/// side as a deadlock (seen once when (b) began). The truncation is tried again then; a
/// worker whose transaction was the one ended retries it itself.
async fn reset_ledger(env: &BenchEnv) -> anyhow::Result<()> {
    const TRIES: usize = 5;
    for tried in 1.. {
        // Two statements: VACUUM cannot run in the implicit transaction of a multi-statement
        // query.
        let truncated = sqlx::raw_sql(
            "TRUNCATE offboard.runs, offboard.steps, offboard.run_events, offboard.idempotency_keys CASCADE",
        )
        .execute(&env.pool)
        .await;
        match truncated {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("40P01") && tried < TRIES =>
            {
                continue;
            }
            other => {
                other?;
                break;
            }
        }
    }
    sqlx::raw_sql(
        "VACUUM ANALYZE offboard.runs, offboard.steps, offboard.run_events, offboard.idempotency_keys",
    )
    .execute(&env.pool)
    .await?;
    Ok(())
}

/// What every enqueue load of a run shares.
#[derive(Clone, Copy)]
struct Load<'a> {
    env: &'a BenchEnv,
    /// The API's address.
    addr: SocketAddr,
    statements: &'a Statements,
    warmup: Duration,
    window: Duration,
}

impl Load<'_> {
    /// The enqueue load on `tenants` against the API, served by `process`, from an empty
    /// ledger.
    async fn enqueue(
        &self,
        process: &WorkerProcess,
        tenants: &Tenants,
        key_prefix: &'static str,
    ) -> anyhow::Result<Shape> {
        let env = self.env;
        reset_ledger(env).await?;
        self.statements.reset(&env.pool).await?;
        let cpu_before = Cpu::sample_with(env, &[], &[process]).await?;
        let load = {
            let tenants = tenants.clone();
            http_load(
                self.addr,
                CONNECTIONS,
                self.warmup,
                self.window,
                StatusCode::ACCEPTED,
                move |i| enqueue_request(&tenants, i, key_prefix),
            )
            .await?
        };
        // Includes the warm-up: CPU per request over every accepted request.
        let cpu = Cpu::sample_with(env, &[], &[process]).await?.since(&cpu_before);
        let accepted: i64 =
            sqlx::query_scalar("SELECT count(*) FROM offboard.runs").fetch_one(&env.pool).await?;
        self.statements.report(&env.pool, key_prefix, accepted as f64, "request").await?;
        Ok(Shape { load, cpu, accepted })
    }
}

/// Request `i`: the companies in turn, each its next user.
fn enqueue_request(tenants: &[Tenant], i: usize, key_prefix: &str) -> Option<LoadRequest> {
    let tenant = &tenants[i % tenants.len()];
    let user = *tenant.users.get(i / tenants.len())?;
    let body = json!({
        "company_id": tenant.company_id,
        "user_id": user,
        "actor_user_id": tenant.actor,
        "action": "deactivate",
        "transfer": {"default": {"mode": "single", "targets": [{"user_id": tenant.target}]}},
    });
    let key = format!("{key_prefix}-{user}");
    Some(post_json("/v1/offboardings", &body, &[("idempotency-key", &key)]))
}

/// `companies` companies of `users` users each, 10% admins with account-settings access.
/// Only users: the enqueue path reads nothing else of the CRM store.
async fn seed_tenants(env: &BenchEnv, companies: usize, users: usize) -> anyhow::Result<Tenants> {
    let mut tenants = Vec::with_capacity(companies);
    for _ in 0..companies {
        tenants.push(seed_tenant(env, users).await?);
    }
    Ok(Arc::new(tenants))
}

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
