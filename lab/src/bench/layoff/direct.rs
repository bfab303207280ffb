//! The layoff's baseline: the same steps' SQL applied directly, the step functions called
//! in transactions by as many tasks as a worker runs, no ledger, no Redis.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{PgPool, postgres::PgPoolOptions};

use super::Layoff;
use crate::bench::{BenchEnv, Cpu};
use offboard::{
    domain::{Action, CompanyId, TransferPlan, UserId},
    steps::{self, Progress, RunContext, RunParams, StepContext, StepKind, StepState},
};

/// The baseline: each user's steps applied by calling the step functions directly, each
/// call in its own transaction (as the executor does), `concurrency` users at a time. No
/// ledger rows except a bare run row (the purge the last step schedules refers to it), no
/// Redis.
pub(super) async fn direct_sql(env: &BenchEnv, layoff: &Layoff) -> anyhow::Result<(Duration, Cpu)> {
    let concurrency = env.settings.worker.concurrency;
    let pool = PgPoolOptions::new()
        .max_connections(concurrency as u32)
        .min_connections(concurrency as u32)
        .connect(&env.settings.database_url)
        .await?;
    let cpu_before = Cpu::sample(env, &[]).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let layoff_users = Arc::new(layoff.leaving.clone());
    let company_id = layoff.company.company_id;
    let actor = layoff.actor;
    let settings = Arc::new(env.settings.steps.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (pool, next, users, settings) =
            (pool.clone(), next.clone(), layoff_users.clone(), settings.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(&(user, target)) = users.get(next.fetch_add(1, Ordering::Relaxed)) {
                offboard_directly(&pool, &settings, company_id, actor, user, target).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let cpu = Cpu::sample(env, &[]).await?.since(&cpu_before);
    pool.close().await;
    Ok((elapsed, cpu))
}

async fn offboard_directly(
    pool: &PgPool,
    settings: &offboard::config::StepSettings,
    company_id: i64,
    actor: i64,
    user: i64,
    target: i64,
) -> anyhow::Result<()> {
    let bad = |what: &str| anyhow::anyhow!("bench: bad {what}");
    let plan = TransferPlan::parse(&Layoff::plan(target))
        .and_then(|p| p.resolve(None))
        .map_err(|e| anyhow::anyhow!("bench plan: {e:?}"))?;
    let run = RunContext {
        id: offboard::ledger::runs::new_run_id(),
        company_id: CompanyId::new(company_id).ok_or_else(|| bad("company"))?,
        user_id: UserId::new(user).ok_or_else(|| bad("user"))?,
        action: Action::Deactivate,
        actor_user_id: UserId::new(actor).ok_or_else(|| bad("actor"))?,
        plan: plan.clone(),
        params: RunParams::default(),
    };
    let specs = steps::plan(Action::Deactivate, &plan);
    sqlx::query(
        "INSERT INTO offboard.runs (id, company_id, user_id, action, plan, actor_user_id, status,
                                    steps_total, steps_remaining)
         VALUES ($1, $2, $3, 'deactivate', $4, $5, 'running', $6, $6)",
    )
    .bind(run.id)
    .bind(company_id)
    .bind(user)
    .bind(plan.to_json())
    .bind(actor)
    .bind(specs.len() as i32)
    .execute(pool)
    .await?;
    // The plan lists block_login first and finish_deactivation last.
    for spec in &specs {
        let kind = StepKind::from_name(&spec.name).ok_or_else(|| bad("step"))?;
        let mut state =
            StepState { name: spec.name.clone(), attempts: 1, done: 0, total: None, cursor: None };
        loop {
            let mut tx = pool.begin().await?;
            let cx = StepContext { run: &run, step: &state, settings };
            let progress = kind
                .apply(&cx, &mut tx)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", spec.name))?;
            tx.commit().await?;
            match progress {
                Progress::Batch { done, total, cursor } => {
                    state.done = done;
                    state.total = Some(total);
                    state.cursor = Some(cursor);
                }
                Progress::Finished(_) => break,
            }
        }
    }
    Ok(())
}
