//! The baseline of the enqueue loads: the raw write an enqueue commits, issued directly.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

use super::CONNECTIONS;
use crate::bench::{BenchEnv, Cpu};
use offboard::{
    domain::{Action, TransferPlan},
    ledger::runs::{self, NewRun},
    steps::{self, RunParams},
};

/// The writes of one enqueue — run, its 15 steps, its history entry and its idempotency
/// key — in the one statement an enqueue writes them with (no BEGIN/COMMIT around it),
/// from `CONNECTIONS` connections at once; transactions per second.
pub(super) async fn raw_transactions(
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
