//! Runs one step task: claim the step (a lease), apply it in transactions that also record
//! its progress, complete it together with its last effect, or record the failure with
//! the next attempt's time. Redis delivers at least once; the claim makes that exactly
//! once in effect.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::FutureExt;
use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    backoff::Backoff,
    config::{StepSettings, WorkerSettings},
    domain::{Action, CompanyId, TransferPlan, UserId},
    ledger::{
        runs,
        steps::{self, Claim, Failure},
    },
    metrics::METRICS,
    queue::Queues,
    steps::{
        AfterCommit, Progress, RunContext, RunParams, StepContext, StepError, StepKind, StepState,
    },
};

/// How a step task ended, for callers that drain the queue (tests, the demo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The step was not queued: a duplicate delivery, or it was canceled.
    NotQueued,
    Succeeded,
    /// Failed; the next attempt is scheduled in the ledger.
    WillRetry,
    Dead,
    /// Another worker took the step over (this lease expired) or the run was canceled.
    LeaseLost,
}

/// Lease tokens of the steps this process is running, renewed in the background.
#[derive(Debug, Default)]
pub struct Leases {
    tokens: Mutex<HashSet<Uuid>>,
}

impl Leases {
    pub fn snapshot(&self) -> Vec<Uuid> {
        self.tokens.lock().expect("leases lock").iter().copied().collect()
    }

    fn hold(self: &Arc<Self>, token: Uuid) -> LeaseGuard {
        self.tokens.lock().expect("leases lock").insert(token);
        LeaseGuard { leases: self.clone(), token }
    }
}

struct LeaseGuard {
    leases: Arc<Leases>,
    token: Uuid,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.leases.tokens.lock().expect("leases lock").remove(&self.token);
    }
}

/// A fault injected into a named step, for the fault suite, the browser test and tests.
#[derive(Debug)]
pub enum Fault {
    Fail(StepError),
    /// Abort the whole process after the claim: a step that kills its worker.
    Crash,
}

/// Faults to inject: each call of the named step takes the next one. Empty in normal
/// operation; set by `OFFBOARD_FAULTS` or by tests.
#[derive(Debug, Default)]
pub struct Faults {
    queued: Mutex<HashMap<String, VecDeque<Fault>>>,
}

impl Faults {
    /// `step=kind[*n],...` with kind `retryable`, `permanent` or `crash`, e.g.
    /// `stop_syncs=permanent,reassign_deals=retryable*3`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let faults = Faults::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (step, rest) =
                entry.split_once('=').ok_or_else(|| format!("{entry:?}: expected step=kind"))?;
            let (kind, times) = match rest.split_once('*') {
                Some((kind, n)) => {
                    (kind, n.parse::<usize>().map_err(|_| format!("{entry:?}: bad count"))?)
                }
                None => (rest, 1),
            };
            for _ in 0..times {
                let fault = match kind {
                    "retryable" => {
                        Fault::Fail(StepError::retryable("injected", "injected retryable fault"))
                    }
                    "permanent" => {
                        Fault::Fail(StepError::permanent("injected", "injected permanent fault"))
                    }
                    "crash" => Fault::Crash,
                    other => return Err(format!("{entry:?}: unknown fault kind {other:?}")),
                };
                faults.inject(step, fault);
            }
        }
        Ok(faults)
    }

    pub fn inject(&self, step: &str, fault: Fault) {
        self.queued
            .lock()
            .expect("faults lock")
            .entry(step.to_string())
            .or_default()
            .push_back(fault);
    }

    fn take(&self, step: &str) -> Option<Fault> {
        let mut queued = self.queued.lock().expect("faults lock");
        queued.get_mut(step).and_then(VecDeque::pop_front)
    }
}

pub struct Executor {
    pub pool: PgPool,
    pub queues: Queues,
    pub worker: WorkerSettings,
    pub steps: StepSettings,
    /// Unique per process (host, pid, random), so a restarted worker never reuses a name.
    pub worker_name: String,
    pub leases: Arc<Leases>,
    /// Wakes the dispatcher when a completion made steps ready.
    pub nudge: Arc<Notify>,
    pub faults: Faults,
}

enum Attempt {
    /// A batch committed; the step continues.
    More,
    Done(Vec<AfterCommit>),
    LeaseLost,
}

impl Executor {
    pub async fn run_step(&self, step_id: i64) -> anyhow::Result<Outcome> {
        let Some(claim) =
            steps::claim(&self.pool, step_id, &self.worker_name, self.worker.lease).await?
        else {
            return Ok(Outcome::NotQueued);
        };
        let span = tracing::info_span!(
            "step",
            run_id = %claim.run_id,
            step = %claim.name,
            company_id = claim.company_id,
            attempt = claim.attempts,
        );
        self.run_claimed(claim).instrument(span).await
    }

    async fn run_claimed(&self, claim: Claim) -> anyhow::Result<Outcome> {
        let _lease = self.leases.hold(claim.lease_token);
        let started = Instant::now();
        let prepared = run_context(&claim).and_then(|run| {
            let kind = StepKind::from_name(&claim.name).ok_or_else(|| {
                StepError::permanent("unknown_step", format!("no step is named {}", claim.name))
            })?;
            Ok((run, kind))
        });
        let result = match prepared {
            Ok((run, kind)) => self.apply_until_done(&claim, &run, kind).await,
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(Some(after_commit)) => {
                for action in after_commit {
                    self.after_commit(action).await;
                }
                tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "step succeeded");
                Outcome::Succeeded
            }
            Ok(None) => {
                tracing::info!("lease lost; another worker has the step or the run was canceled");
                Outcome::LeaseLost
            }
            Err(error) => self.record_failure(&claim, &error).await?,
        };
        let label = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::WillRetry => "retry",
            Outcome::Dead => "dead",
            Outcome::LeaseLost | Outcome::NotQueued => "lease_lost",
        };
        METRICS.step_attempt(&claim.name, label, started.elapsed());
        Ok(outcome)
    }

    /// Calls the step until it finishes. `Ok(None)`: the lease was lost.
    async fn apply_until_done(
        &self,
        claim: &Claim,
        run: &RunContext,
        kind: StepKind,
    ) -> Result<Option<Vec<AfterCommit>>, StepError> {
        let mut first = true;
        loop {
            match self.apply_once(claim, run, kind, first).await? {
                Attempt::More => first = false,
                Attempt::Done(after) => return Ok(Some(after)),
                Attempt::LeaseLost => return Ok(None),
            }
        }
    }

    /// One transaction: apply, and record either progress or completion, both fenced by
    /// the lease token. A transaction after the attempt's first one (the next batch) first
    /// renews the lease and locks the step row (the fence); the first one starts from the
    /// claim, which has just done both — skipping that statement takes a fifth of the
    /// statements of a one-transaction step.
    async fn apply_once(
        &self,
        claim: &Claim,
        run: &RunContext,
        kind: StepKind,
        first: bool,
    ) -> Result<Attempt, StepError> {
        let mut tx = self.pool.begin().await?;
        let (done, total, cursor) = if first {
            (claim.done, claim.total, claim.cursor.clone())
        } else {
            let Some(fenced) =
                steps::fence(&mut tx, claim.step_id, claim.lease_token, self.worker.lease).await?
            else {
                return Ok(Attempt::LeaseLost);
            };
            (fenced.done, fenced.total, fenced.cursor)
        };
        match self.faults.take(&claim.name) {
            Some(Fault::Fail(error)) => return Err(error),
            Some(Fault::Crash) => {
                tracing::error!("injected crash: aborting the process");
                std::process::abort();
            }
            None => {}
        }
        let state =
            StepState { name: claim.name.clone(), attempts: claim.attempts, done, total, cursor };
        let cx = StepContext { run, step: &state, settings: &self.steps };
        let progress = AssertUnwindSafe(kind.apply(&cx, &mut tx))
            .catch_unwind()
            .await
            .map_err(|_| StepError::retryable("panic", "the step panicked"))??;
        match progress {
            Progress::Batch { done, total, cursor } => {
                let token = claim.lease_token;
                if !steps::record_progress(&mut tx, claim.step_id, token, done, total, &cursor)
                    .await?
                {
                    return Ok(Attempt::LeaseLost);
                }
                tx.commit().await?;
                if matches!(kind, StepKind::Reassign(_)) {
                    METRICS.items_reassigned((done - state.done).max(0) as u64);
                }
                Ok(Attempt::More)
            }
            Progress::Finished(finished) => {
                let Some(completion) = steps::complete(
                    &mut tx,
                    claim.step_id,
                    claim.lease_token,
                    &finished.counts,
                    finished.done,
                    finished.total,
                )
                .await?
                else {
                    return Ok(Attempt::LeaseLost);
                };
                if completion.steps_remaining == 0 && completion.run_status == "running" {
                    runs::finish(&mut tx, run.id).await?;
                }
                tx.commit().await?;
                if matches!(kind, StepKind::Reassign(_)) {
                    METRICS.items_reassigned((finished.done - state.done).max(0) as u64);
                }
                if completion.unblocked > 0 {
                    self.nudge.notify_one();
                }
                if completion.steps_remaining == 0 {
                    tracing::info!(user_id = run.user_id.get(), action = %run.action, "run succeeded");
                }
                Ok(Attempt::Done(finished.after_commit))
            }
        }
    }

    async fn after_commit(&self, action: AfterCommit) {
        match action {
            AfterCommit::PurgeScheduled { purge_id, due_at } => {
                if let Err(e) = self.queues.push_purge(purge_id, due_at).await {
                    // The ledger row stands; the sweeper fires it when due.
                    tracing::warn!(purge_id, error = %e, "purge task not pushed; the sweeper will fire it");
                }
            }
        }
    }

    async fn record_failure(&self, claim: &Claim, error: &StepError) -> anyhow::Result<Outcome> {
        let backoff = Backoff { base: self.worker.backoff_base, cap: self.worker.backoff_cap };
        let retry_in = backoff.delay(claim.attempts, &mut rand::rng());
        let failure = Failure {
            code: error.code(),
            message: error.message(),
            permanent: !error.is_retryable(),
            retry_in,
            ceiling: backoff.ceiling(claim.attempts),
        };
        let status = steps::fail(&self.pool, claim.step_id, claim.lease_token, &failure).await?;
        Ok(match status.as_deref() {
            Some("dead") => {
                tracing::warn!(code = error.code(), error = error.message(), "step is dead");
                Outcome::Dead
            }
            Some(_) => {
                tracing::info!(
                    code = error.code(),
                    error = error.message(),
                    retry_in_ms = retry_in.as_millis() as u64,
                    "step failed; will retry"
                );
                Outcome::WillRetry
            }
            None => Outcome::LeaseLost,
        })
    }
}

fn run_context(claim: &Claim) -> Result<RunContext, StepError> {
    let bad =
        |what: &str| StepError::permanent("bad_run", format!("the run's {what} is unreadable"));
    Ok(RunContext {
        id: claim.run_id,
        company_id: CompanyId::new(claim.company_id).ok_or_else(|| bad("company_id"))?,
        user_id: UserId::new(claim.user_id).ok_or_else(|| bad("user_id"))?,
        action: claim.action.parse::<Action>().map_err(|_| bad("action"))?,
        actor_user_id: UserId::new(claim.actor_user_id).ok_or_else(|| bad("actor_user_id"))?,
        plan: TransferPlan::from_stored(&claim.plan).map_err(|_| bad("plan"))?,
        params: serde_json::from_value::<RunParams>(claim.params.clone())
            .map_err(|_| bad("params"))?,
    })
}
