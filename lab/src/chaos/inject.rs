//! The fault injector, a task beside the runs: it picks the next fault and brings it
//! about ([`faults`](super::faults) says how each is done), and reports what it did.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use sqlx::PgPool;
use tokio::sync::watch;

use super::{
    faults::{self, Fault, FaultStats, Fleet, Services},
    hooks,
};

/// Phases of the fault injector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Chaos,
    /// No more faults; every worker is brought back.
    Calm,
    Stop,
}

/// The fault injector: random kills, flushes and Redis restarts every 0.6–2.4 s, and
/// PostgreSQL restarts at fixed points, until the chaos phase ends; then every worker is
/// brought back and kept up until the suite stops them.
pub async fn inject(
    fleet: Fleet,
    services: Services,
    pool: PgPool,
    mut phase: watch::Receiver<Phase>,
    seed: u64,
    duration: Duration,
) -> FaultStats {
    let rng = StdRng::seed_from_u64(seed);
    let mut injector = Injector { fleet, services, pool, rng, stats: FaultStats::default() };
    let started = Instant::now();
    let mut postgres_at: std::collections::VecDeque<Duration> =
        faults::postgres_at(duration).into();
    let gap = |rng: &mut StdRng| Duration::from_millis(rng.random_range(600..2400));
    let mut next = Instant::now() + gap(&mut injector.rng);
    let mut calm = false;
    loop {
        let current = *phase.borrow();
        match current {
            Phase::Stop => break,
            Phase::Calm if !calm => {
                calm = true;
                // The suite promises at least one PostgreSQL restart, even if the runs were
                // quicker than the schedule.
                if injector.stats.postgres_restarts == 0 {
                    injector.disturb(Fault::RestartPostgres).await;
                }
                if let Err(e) = injector.fleet.restart_all_now() {
                    injector.stats.errors.push(format!("{e:#}"));
                }
            }
            Phase::Calm => {}
            Phase::Chaos => {
                if postgres_at.front().is_some_and(|at| started.elapsed() >= *at) {
                    postgres_at.pop_front();
                    injector.disturb(Fault::RestartPostgres).await;
                } else if Instant::now() >= next {
                    let fault =
                        Fault::random(&mut injector.rng, injector.services.service_restarts);
                    injector.disturb(fault).await;
                    next = Instant::now() + gap(&mut injector.rng);
                }
            }
        }
        if let Err(e) = injector.fleet.tend() {
            injector.stats.errors.push(format!("{e:#}"));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = phase.changed() => {}
        }
    }
    let Injector { mut fleet, mut stats, .. } = injector;
    fleet.stop().await;
    stats.worker_processes_started = fleet.started;
    stats.worker_exits = fleet.exited;
    stats
}

/// What the injector disturbs, its dice, and what it did so far.
struct Injector {
    fleet: Fleet,
    services: Services,
    pool: PgPool,
    rng: StdRng,
    stats: FaultStats,
}

impl Injector {
    async fn disturb(&mut self, fault: Fault) {
        let Self { fleet, services, pool, rng, stats } = self;
        let outcome: anyhow::Result<()> = async {
            match fault {
                Fault::Kill => {
                    let Some(&(slot, pid)) = fleet.alive().choose(rng) else { return Ok(()) };
                    let held = tokio::time::timeout(
                        Duration::from_millis(500),
                        faults::held_by(pool, pid),
                    )
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
}
