//! The worker runtime: apalis workers on the Redis step and purge queues, the sweeper (a
//! tokio interval), the dispatcher loop and the lease renewer, supervised until shutdown.
//! `offboard serve` runs this beside the API; `offboard-worker` runs only this.

use std::{future::Future, sync::Arc, time::Duration};

use apalis::prelude::{
    BackendExt, BoxDynError, Data, ParallelizeExt, Strategy, WorkerBuilder, WorkerBuilderExt,
    WorkerError,
};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use crate::{
    config::Settings,
    dispatch::Dispatcher,
    executor::{Executor, Leases},
    faults::Faults,
    ledger::steps,
    metrics::METRICS,
    outbound::webhooks::Deliverer,
    queue::{PurgeTask, Queues, StepTask},
    shutdown::Shutdown,
    steps::private_email_purge::{self, FiredBy},
};

/// What a process needs to run workers.
#[derive(Clone)]
pub struct Workers {
    pub executor: Arc<Executor>,
    pub dispatcher: Dispatcher,
    /// Host webhooks, on tasks of their own: a slow receiver never holds a step worker.
    pub deliverer: Arc<Deliverer>,
}

impl Workers {
    pub fn new(pool: PgPool, queues: Queues, settings: &Settings, nudge: Arc<Notify>) -> Self {
        let faults = Faults::from_specs(&settings.faults);
        if !settings.faults.is_empty() {
            tracing::warn!(faults = ?settings.faults, "fault injection is on");
        }
        let samples = Arc::new(crate::samples::Counters::default());
        let executor = Arc::new(Executor {
            pool: pool.clone(),
            queues: queues.clone(),
            worker: settings.worker.clone(),
            steps: settings.steps.clone(),
            worker_name: unique_worker_name(),
            leases: Arc::new(Leases::default()),
            nudge: nudge.clone(),
            faults,
            samples: samples.clone(),
            outside: Arc::new(
                crate::outbound::outside::Outside::new(pool.clone(), settings.outbound.clone())
                    .expect("the outbound HTTP client builds"),
            ),
            outside_steps: Arc::new(tokio::sync::Semaphore::new(settings.outbound.concurrency)),
        });
        let deliverer = Arc::new(
            Deliverer::new(pool.clone(), settings.webhooks.clone())
                .expect("the webhook HTTP client builds"),
        );
        let dispatcher = Dispatcher {
            pool,
            queues,
            settings: settings.worker.clone(),
            idempotency_retention: settings.idempotency_retention,
            nudge,
            samples,
            stats: Arc::default(),
        };
        Self { executor, dispatcher, deliverer }
    }

    /// Runs until `shutdown`, then lets running steps finish within the shutdown timeout.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let settings = self.executor.worker.clone();
        let name = self.executor.worker_name.clone();
        tracing::info!(worker = %name, concurrency = settings.concurrency, "workers starting");

        let dispatcher = tokio::spawn(self.dispatcher.clone().run(shutdown.clone()));
        // Commits of an API in another process (`offboard api`) wake this dispatcher.
        let nudges = tokio::spawn(crate::nudge::listen(
            self.dispatcher.pool.clone(),
            crate::nudge::DISPATCH_CHANNEL,
            self.dispatcher.nudge.clone(),
            shutdown.clone(),
        ));
        let renewer = tokio::spawn(renew_leases(self.executor.clone(), shutdown.clone()));
        let deliverer = tokio::spawn(self.deliverer.clone().run(shutdown.clone()));

        // Each apalis worker is a task of its own. apalis fetches from Redis each time its
        // worker is polled with nothing buffered, whatever woke it: joined in one task, every
        // fetch's answer (and every step's completion) polled the other worker into a fetch
        // of its own, whose answer polled the first again — thousands of empty fetches a
        // second under load, in Redis and in this process. Dropped with this future, as
        // they were when joined in it.
        let steps = {
            let executor = self.executor.clone();
            let queues = self.executor.queues.clone();
            let name = name.clone();
            let settings = settings.clone();
            AbortOnDropHandle::new(tokio::spawn(supervise(
                "steps",
                shutdown.clone(),
                move |restarts, stop| {
                    WorkerBuilder::new(format!("{name}-steps-{restarts}"))
                        .backend(
                            queues.step_storage().poll_with_strategy(
                                // Fetch as soon as this process pushed steps, else every interval.
                                Strategy::new()
                                    .stream(queues.step_pushes())
                                    .interval(settings.poll_interval),
                            ),
                        )
                        .data(executor.clone())
                        .concurrency(settings.concurrency)
                        .parallelize(spawn_handler)
                        .build(handle_step)
                        .run_until(stop)
                },
            )))
        };
        let purges = {
            let executor = self.executor.clone();
            let queues = self.executor.queues.clone();
            let name = name.clone();
            let poll = settings.poll_interval;
            AbortOnDropHandle::new(tokio::spawn(supervise(
                "purges",
                shutdown.clone(),
                move |restarts, stop| {
                    WorkerBuilder::new(format!("{name}-purges-{restarts}"))
                        .backend(queues.purge_storage().poll_with_interval(poll))
                        .data(executor.clone())
                        .concurrency(8)
                        .build(handle_purge)
                        .run_until(stop)
                },
            )))
        };
        let sweeper =
            tokio::spawn(sweep_every(self.dispatcher.clone(), SWEEP_EVERY, shutdown.clone()));

        let all = async {
            let (steps, purges, swept) = tokio::join!(steps, purges, sweeper);
            for (task, ended) in [("steps", steps), ("purges", purges), ("sweeper", swept)] {
                if let Err(e) = ended {
                    tracing::warn!(task, error = %e, "a worker task ended abnormally");
                }
            }
            // The queues stopped taking tasks; steps already running finish.
            while self.executor.leases.running() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::pin!(all);
        tokio::select! {
            _ = &mut all => {}
            _ = async {
                shutdown.wait().await;
                tokio::time::sleep(settings.shutdown_timeout).await;
            } => {
                tracing::warn!(
                    running = self.executor.leases.running(),
                    "shutdown timeout passed; leaving running steps to lease expiry"
                );
            }
        }
        dispatcher.abort();
        nudges.abort();
        renewer.abort();
        if let Err(e) = deliverer.await {
            tracing::warn!(error = %e, "the webhook deliverer ended abnormally");
        }
        tracing::info!(worker = %name, "workers stopped");
        Ok(())
    }
}

/// A worker that ran at least this long before it failed was healthy: its failure starts a
/// new incident, and the restart pause starts over from the shortest.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Restarts a worker that fails (Redis down, flushed or restarted, say) with a pause that
/// grows while failures follow each other, under a new name each time: apalis-redis refuses
/// a name re-registered within a heartbeat.
async fn supervise<F, Fut>(label: &'static str, shutdown: Shutdown, mut make: F)
where
    F: FnMut(usize, futures::future::BoxFuture<'static, Result<(), std::io::Error>>) -> Fut,
    Fut: Future<Output = Result<(), WorkerError>>,
{
    use futures::FutureExt;
    // Names are never reused; the pause counts only failures in a row.
    let mut restarts = 0usize;
    let mut failures_in_a_row = 0u32;
    loop {
        let stop = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.wait().await;
                Ok::<(), std::io::Error>(())
            }
            .boxed()
        };
        let began = tokio::time::Instant::now();
        let result = make(restarts, stop).await;
        if shutdown.is_triggered() {
            return;
        }
        match result {
            Ok(()) => tracing::warn!(worker = label, "worker stopped by itself; restarting"),
            Err(e) => tracing::warn!(worker = label, error = %e, "worker failed; restarting"),
        }
        if began.elapsed() >= HEALTHY_RUN {
            failures_in_a_row = 0;
        }
        let pause = Duration::from_millis(200u64 << failures_in_a_row.min(5));
        failures_in_a_row += 1;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait() => return,
        }
        restarts += 1;
    }
}

async fn handle_step(task: StepTask, executor: Data<Arc<Executor>>) -> Result<(), BoxDynError> {
    // The task always ends cleanly: retries are scheduled in the ledger, not by apalis
    // (whose backend retry policy is fixed), and a task that could not even reach the
    // ledger is pushed again by the sweeper.
    if let Err(e) = executor.run_task(&task.steps()).await {
        tracing::warn!(run_id = %task.run_id, positions = ?task.positions, error = %format!("{e:#}"), "step task not completed; the ledger will redeliver it");
    }
    Ok(())
}

async fn handle_purge(task: PurgeTask, executor: Data<Arc<Executor>>) -> Result<(), BoxDynError> {
    match private_email_purge::fire(&executor.pool, task.purge_id, FiredBy::Queue).await {
        Ok(Some(_)) => METRICS.purge_fired("queue"),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(purge_id = task.purge_id, error = %e, "purge failed; the sweeper will fire it")
        }
    }
    Ok(())
}

/// How often the sweeper runs: expired leases, lost tasks, overdue purges, bulk work, samples.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The sweeper: one sweep per `every` until `shutdown` (a tick missed while a sweep ran
/// long is not made up). A sweep that panics is logged and the next tick sweeps again.
async fn sweep_every(dispatcher: Dispatcher, every: Duration, shutdown: Shutdown) {
    use futures::FutureExt;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait() => return,
        }
        match std::panic::AssertUnwindSafe(dispatcher.sweep()).catch_unwind().await {
            Ok(report) if report != Default::default() => tracing::debug!(?report, "sweep"),
            Ok(_) => {}
            Err(_) => tracing::error!("a sweep panicked; the next tick sweeps again"),
        }
    }
}

async fn renew_leases(executor: Arc<Executor>, shutdown: Shutdown) {
    let every = executor.worker.lease / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => {
                // Keep renewing while running steps finish after the signal.
                if executor.leases.running() == 0 { return; }
                tokio::time::sleep(every).await;
            }
        }
        let tokens = executor.leases.snapshot();
        if let Err(e) = steps::renew_leases(&executor.pool, &tokens, executor.worker.lease).await {
            tracing::warn!(error = %e, "renewing leases failed");
        }
    }
}

/// host-pid-random: never reused, even when a process restarts under the same pid.
pub fn unique_worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}-{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff)
}

type HandlerFuture = apalis::prelude::LifecycleFuture<
    std::pin::Pin<Box<dyn Future<Output = Result<(), BoxDynError>> + Send + 'static>>,
>;

/// Runs each step on its own tokio task. A named function with the future type spelled
/// out (rather than `tokio::spawn` itself) keeps the worker future provably `Send`.
fn spawn_handler(fut: HandlerFuture) -> tokio::task::JoinHandle<Result<(), BoxDynError>> {
    tokio::spawn(fut)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_ran_healthily_is_restarted_quickly_whatever_failed_before() {
        // Six quick failures (Redis flushed or restarting) grow the pause to its ceiling;
        // then the worker runs for a minute and fails once more: that failure is a new
        // incident, and the worker must be back after the first pause, not the ceiling.
        let shutdown = Shutdown::new();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let recorded = starts.clone();
        let stopper = shutdown.clone();
        supervise("test", shutdown.clone(), move |restarts, _stop| {
            recorded.lock().unwrap().push(Instant::now());
            let stopper = stopper.clone();
            async move {
                match restarts {
                    6 => tokio::time::sleep(Duration::from_secs(60)).await,
                    7 => stopper.trigger(),
                    _ => {}
                }
                Ok::<(), WorkerError>(())
            }
        })
        .await;
        let starts = starts.lock().unwrap();
        assert_eq!(starts.len(), 8);
        let pauses: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(pauses[5], Duration::from_millis(6_400), "{pauses:?}");
        assert_eq!(pauses[6] - Duration::from_secs(60), Duration::from_millis(200), "{pauses:?}");
    }
}
