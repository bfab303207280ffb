//! Runs a step task. One step: claim it (a lease), apply it in transactions that also
//! record its progress, complete it together with its last effect, or record the failure
//! with the next attempt's time. A run's steps on their first attempt: lock them, apply
//! them all and complete them in one transaction. Redis delivers at least once; the claim,
//! or the lock on a queued step, makes that exactly once in effect.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::FutureExt;
use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

pub use crate::faults::{Fault, Faults};
use crate::{
    backoff::Backoff,
    config::{StepSettings, WorkerSettings},
    domain::{Action, CompanyId, TransferPlan, UserId},
    ledger::{
        runs,
        steps::{self, Claim, Failure},
    },
    metrics::METRICS,
    outside::{CallKind, CallsEnd},
    queue::Queues,
    samples::Ended,
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
    /// Another worker took the step over (this lease expired).
    LeaseLost,
    /// The run is canceling: the step stopped at a batch boundary and is canceled.
    Canceled,
}

/// Lease tokens of the steps this process is running, each with its attempt's deadline,
/// renewed in the background while inside it, and the group transactions it has open
/// (their steps are locked, not leased): what a graceful shutdown waits for.
#[derive(Debug, Default)]
pub struct Leases {
    tokens: Mutex<HashMap<Uuid, Instant>>,
    groups: std::sync::atomic::AtomicUsize,
}

impl Leases {
    /// The leases to renew: those of attempts still inside their deadline. An attempt past
    /// it (hung in a statement the server has not yet timed out, say) lets its lease
    /// expire, and the sweeper takes the step back.
    pub fn snapshot(&self) -> Vec<Uuid> {
        let now = Instant::now();
        let tokens = self.tokens.lock().expect("leases lock");
        tokens.iter().filter(|(_, deadline)| **deadline > now).map(|(t, _)| *t).collect()
    }

    /// Steps leased plus group transactions open.
    pub fn running(&self) -> usize {
        self.tokens.lock().expect("leases lock").len()
            + self.groups.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn hold(self: &Arc<Self>, token: Uuid, deadline: Instant) -> LeaseGuard {
        self.tokens.lock().expect("leases lock").insert(token, deadline);
        LeaseGuard { leases: self.clone(), held: Held::Token(token) }
    }

    fn hold_group(self: &Arc<Self>) -> LeaseGuard {
        self.groups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        LeaseGuard { leases: self.clone(), held: Held::Group }
    }
}

enum Held {
    Token(Uuid),
    Group,
}

struct LeaseGuard {
    leases: Arc<Leases>,
    held: Held,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        match self.held {
            Held::Token(token) => {
                self.leases.tokens.lock().expect("leases lock").remove(&token);
            }
            Held::Group => {
                self.leases.groups.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
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
    /// Ended attempts, for the second's metric sample the sweeper writes.
    pub samples: Arc<crate::samples::Counters>,
    /// The steps' calls to outside systems (revocations, vendors' callbacks).
    pub outside: Arc<crate::outside::Outside>,
}

enum Attempt {
    /// A batch committed; the step continues.
    More,
    Done(Vec<AfterCommit>),
    LeaseLost,
}

/// A claimed step with what it needs to run.
struct Prepared {
    claim: Claim,
    run: RunContext,
    kind: StepKind,
}

/// How a group transaction went.
enum GroupEnd {
    /// Committed: these steps finished in it (with their after-commit work); the others
    /// were claimed in it and continue alone, from what it recorded.
    Committed { finished: Vec<(Claim, Vec<AfterCommit>)>, continuing: Vec<Prepared> },
    /// Rolled back because this step failed; the others (`rest`) have not started.
    StepFailed { culprit: i64, error: StepError, rest: Vec<i64> },
    /// Rolled back for a reason no one step is to blame for (the database, say); none of
    /// the steps it had locked has started.
    RolledBack { error: anyhow::Error, steps: Vec<i64> },
}
impl Executor {
    /// Marks a run whose last step succeeded as succeeded, with its receipt, and writes
    /// the deletion its company's policy schedules after a deactivation (if any), in the
    /// caller's transaction.
    async fn finish_run(
        &self,
        tx: &mut sqlx::PgConnection,
        run_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        runs::finish(&mut *tx, run_id).await?;
        let deletion = crate::steps::plan(
            crate::domain::Action::Delete,
            &crate::domain::TransferPlan::default(),
        );
        if let Some(id) = crate::ledger::scheduled::schedule_deletion_after(
            &mut *tx,
            run_id,
            deletion,
            self.worker.max_attempts,
        )
        .await?
        {
            tracing::info!(%run_id, deletion_run_id = %id, "deletion scheduled by the company policy");
        }
        Ok(())
    }

    /// Runs one step task; see [`Executor::run_steps`].
    pub async fn run_step(&self, step_id: i64) -> anyhow::Result<Outcome> {
        let outcomes = self.run_steps(&[step_id]).await?;
        Ok(outcomes.into_iter().next().map(|(_, o)| o).unwrap_or(Outcome::NotQueued))
    }

    /// Runs the steps of one task and returns each one's outcome, in `step_ids` order. One
    /// step is claimed (its attempt committed first) and runs in transactions of its own;
    /// several — steps of one run on their first attempt — run in one transaction that
    /// also completes them, so a run's concurrent steps cost one commit, not one each.
    pub async fn run_steps(&self, step_ids: &[i64]) -> anyhow::Result<Vec<(i64, Outcome)>> {
        let mut outcomes: HashMap<i64, Outcome> =
            step_ids.iter().map(|&id| (id, Outcome::NotQueued)).collect();
        let ran = if step_ids.len() == 1 {
            self.run_alone(step_ids[0]).await?.into_iter().collect()
        } else {
            self.run_group(step_ids).await?
        };
        outcomes.extend(ran);
        Ok(step_ids.iter().map(|id| (*id, outcomes[id].clone())).collect())
    }

    /// Claims the step and runs it in transactions of its own. `None`: it was not queued.
    async fn run_alone(&self, step_id: i64) -> anyhow::Result<Option<(i64, Outcome)>> {
        let Some(claim) =
            steps::claim(&self.pool, step_id, &self.worker_name, self.worker.lease).await?
        else {
            return Ok(None);
        };
        let span = step_span(&claim);
        let outcome = self.run_claimed(claim).instrument(span).await?;
        Ok(Some((step_id, outcome)))
    }

    async fn run_claimed(&self, claim: Claim) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let _lease = self.leases.hold(claim.lease_token, started + self.worker.step_timeout);
        let result = match prepare(&claim) {
            Ok((run, kind)) => self.apply_within_deadline(&claim, &run, kind, true, started).await,
            Err(e) => Err(e),
        };
        self.conclude(&claim, result, started).await
    }

    /// [`Executor::apply_until_done`] within the attempt's deadline (`OFFBOARD_STEP_TIMEOUT`
    /// from `started`). Past it the attempt fails with `timeout`: its open transaction is
    /// dropped (rolled back; a statement still running on the server ends at the pool's
    /// `statement_timeout` or `lock_timeout` at the latest) and the failure is recorded for
    /// a retry with backoff.
    async fn apply_within_deadline(
        &self,
        claim: &Claim,
        run: &RunContext,
        kind: StepKind,
        first: bool,
        started: Instant,
    ) -> Result<Option<Vec<AfterCommit>>, StepError> {
        let deadline = tokio::time::Instant::from_std(started + self.worker.step_timeout);
        let work = async {
            let mut first = first;
            if let Some(calls) = CallKind::of_step(&claim.name) {
                match self
                    .outside
                    .run(calls, run, claim.step_id, claim.lease_token, self.worker.lease)
                    .await?
                {
                    CallsEnd::Done => {}
                    CallsEnd::LeaseLost => return Ok(None),
                    CallsEnd::Failed(error) => return Err(error),
                }
                // The calls committed progress: read it back through the fence.
                first = false;
            }
            self.apply_until_done(claim, run, kind, first).await
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(self.attempt_timed_out()),
        }
    }

    fn attempt_timed_out(&self) -> StepError {
        StepError::retryable(
            "timeout",
            format!(
                "the attempt passed its deadline of {} ms (OFFBOARD_STEP_TIMEOUT)",
                self.worker.step_timeout.as_millis()
            ),
        )
    }

    /// Several steps of one run in one transaction: locked (not claimed: a claim commits on
    /// its own), applied in turn, and completed in one statement. Rows moved by
    /// reassignments count against one batch for the whole transaction
    /// (`OFFBOARD_REASSIGN_BATCH` bounds every transaction): a reassignment that has more to
    /// move, or finds the batch spent, is claimed in the transaction and continues alone
    /// after it. If a step fails, the transaction is rolled back: that step is claimed
    /// and its failure recorded as its attempt, and the others run alone.
    async fn run_group(&self, step_ids: &[i64]) -> anyhow::Result<Vec<(i64, Outcome)>> {
        let _group = self.leases.hold_group();
        let started = Instant::now();
        let mut outcomes = Vec::with_capacity(step_ids.len());
        let mut continuing = Vec::new();
        let mut run_alone = Vec::new();
        let deadline = tokio::time::Instant::from_std(started + self.worker.step_timeout);
        match self.apply_group(step_ids, deadline).await {
            GroupEnd::Committed { finished, continuing: rest } => {
                for (claim, after_commit) in finished {
                    let outcome = self.conclude(&claim, Ok(Some(after_commit)), started).await?;
                    outcomes.push((claim.step_id, outcome));
                }
                continuing = rest;
            }
            GroupEnd::StepFailed { culprit, error, rest } => {
                // Recorded as the attempt it was.
                if let Some(claim) =
                    steps::claim(&self.pool, culprit, &self.worker_name, self.worker.lease).await?
                {
                    let _lease = self.leases.hold(claim.lease_token, Instant::now());
                    let span = step_span(&claim);
                    let outcome =
                        self.conclude(&claim, Err(error), started).instrument(span).await?;
                    outcomes.push((culprit, outcome));
                }
                run_alone = rest;
            }
            GroupEnd::RolledBack { error, steps } => {
                tracing::info!(error = %format!("{error:#}"), "group transaction rolled back; its steps run alone");
                run_alone = steps;
            }
        }
        // Concurrently, as they would have run had they been tasks of their own.
        let continued = futures::future::join_all(continuing.iter().map(|p| {
            async move {
                // A fresh attempt: the group's transaction counted it when it committed.
                let began = Instant::now();
                let _lease =
                    self.leases.hold(p.claim.lease_token, began + self.worker.step_timeout);
                let result =
                    self.apply_within_deadline(&p.claim, &p.run, p.kind, false, began).await;
                let outcome = self.conclude(&p.claim, result, started).await;
                outcome.map(|o| (p.claim.step_id, o))
            }
            .instrument(step_span(&p.claim))
        }))
        .await;
        for outcome in continued {
            outcomes.push(outcome?);
        }
        let alone = futures::future::join_all(run_alone.into_iter().map(|id| self.run_alone(id)));
        for outcome in alone.await {
            outcomes.extend(outcome?);
        }
        Ok(outcomes)
    }

    /// The group's one transaction, within the attempt's deadline; see
    /// [`Executor::run_group`]. Past the deadline it is rolled back and its steps run
    /// alone, each with a deadline of its own.
    async fn apply_group(&self, step_ids: &[i64], deadline: tokio::time::Instant) -> GroupEnd {
        let mut locked = Vec::new();
        let applied =
            tokio::time::timeout_at(deadline, self.try_apply_group(step_ids, &mut locked)).await;
        match applied {
            Ok(Ok(end)) => end,
            Ok(Err(error)) => GroupEnd::RolledBack { error, steps: locked },
            Err(_) => GroupEnd::RolledBack {
                error: anyhow::anyhow!(self.attempt_timed_out()),
                steps: locked,
            },
        }
    }

    async fn try_apply_group(
        &self,
        step_ids: &[i64],
        locked: &mut Vec<i64>,
    ) -> anyhow::Result<GroupEnd> {
        let mut tx = self.pool.begin().await?;
        let claims = steps::lock_queued(&mut tx, step_ids).await?;
        locked.extend(claims.iter().map(|c| c.step_id));
        let mut group = Vec::with_capacity(claims.len());
        for claim in claims {
            match prepare(&claim) {
                Ok((run, kind)) => group.push(Prepared { claim, run, kind }),
                Err(error) => {
                    let rest = locked.iter().copied().filter(|id| *id != claim.step_id).collect();
                    return Ok(GroupEnd::StepFailed { culprit: claim.step_id, error, rest });
                }
            }
        }
        // Rows reassigned in this transaction so far.
        let mut moved = 0;
        let mut finished = Vec::new();
        let mut continuing: Vec<(usize, i64, Option<i64>, Option<serde_json::Value>)> = Vec::new();
        for (i, p) in group.iter().enumerate() {
            let claim = &p.claim;
            let reassigns = p.kind.moves_items();
            // A step that calls outside goes on alone when it has calls to make: no call
            // is made inside a transaction. Its calls are planned here, committed with the
            // group.
            if let Some(calls) = CallKind::of_step(&claim.name) {
                match crate::outside::plan(&mut tx, calls, &p.run, claim.step_id).await {
                    Ok(0) => {}
                    Ok(_) => {
                        continuing.push((i, claim.done, claim.total, claim.cursor.clone()));
                        continue;
                    }
                    Err(error) => {
                        let culprit = claim.step_id;
                        let rest = locked.iter().copied().filter(|id| *id != culprit).collect();
                        return Ok(GroupEnd::StepFailed { culprit, error: error.into(), rest });
                    }
                }
            }
            if reassigns && moved >= self.steps.reassign_batch {
                continuing.push((i, claim.done, claim.total, claim.cursor.clone()));
                continue;
            }
            let settings = StepSettings {
                reassign_batch: self.steps.reassign_batch - moved,
                ..self.steps.clone()
            };
            let state = (claim.done, claim.total, claim.cursor.clone());
            let progress =
                match self.apply_in(&mut tx, claim, &p.run, p.kind, state, &settings).await {
                    Ok(progress) => progress,
                    Err(error) => {
                        let culprit = claim.step_id;
                        let rest = locked.iter().copied().filter(|id| *id != culprit).collect();
                        return Ok(GroupEnd::StepFailed { culprit, error, rest });
                    }
                };
            match progress {
                Progress::Batch { done, total, cursor } => {
                    moved += done - claim.done;
                    continuing.push((i, done, Some(total), Some(cursor)));
                }
                Progress::Finished(f) => {
                    if reassigns {
                        moved += f.done - claim.done;
                    }
                    finished.push((i, f));
                }
            }
        }
        let completed: Vec<steps::Completed> = finished
            .iter()
            .map(|(i, f)| steps::Completed {
                step_id: group[*i].claim.step_id,
                result: &f.counts,
                done: f.done,
                total: f.total,
            })
            .collect();
        let completions = steps::complete_many(&mut tx, &completed).await?;
        anyhow::ensure!(
            completions.completed == completed.len() as i64,
            "a locked step was not queued"
        );
        if !continuing.is_empty() {
            let goes_on: Vec<steps::GoesOn> = continuing
                .iter()
                .map(|(i, done, total, cursor)| steps::GoesOn {
                    step_id: group[*i].claim.step_id,
                    done_before: group[*i].claim.done,
                    done: *done,
                    total: *total,
                    cursor: cursor.as_ref(),
                })
                .collect();
            let leases =
                steps::claim_locked(&mut tx, &goes_on, &self.worker_name, self.worker.lease)
                    .await?;
            anyhow::ensure!(leases.len() == goes_on.len(), "a locked step was not queued");
            // Their next transaction reads their progress back through the fence.
            for (step_id, token) in leases {
                if let Some(p) = group.iter_mut().find(|p| p.claim.step_id == step_id) {
                    p.claim.lease_token = token;
                }
            }
        }
        for run_id in &completions.finished_runs {
            self.finish_run(&mut tx, *run_id).await?;
        }
        tx.commit().await?;
        METRICS.items_reassigned(moved.max(0) as u64);
        if completions.unblocked > 0 {
            self.nudge.notify_one();
        }
        for run_id in &completions.finished_runs {
            if let Some(p) = group.iter().find(|p| p.run.id == *run_id) {
                tracing::info!(%run_id, user_id = p.run.user_id.get(), action = %p.run.action, "run succeeded");
            }
        }
        let mut finished_claims = Vec::with_capacity(finished.len());
        let mut continuing_steps = Vec::with_capacity(continuing.len());
        let mut after: HashMap<usize, Vec<AfterCommit>> =
            finished.into_iter().map(|(i, f)| (i, f.after_commit)).collect();
        for (i, p) in group.into_iter().enumerate() {
            match after.remove(&i) {
                Some(after_commit) => finished_claims.push((p.claim, after_commit)),
                // Every step that did not finish was claimed above and goes on alone.
                None => continuing_steps.push(p),
            }
        }
        Ok(GroupEnd::Committed { finished: finished_claims, continuing: continuing_steps })
    }

    /// How a step's attempt ended: after-commit work, or the failure recorded; metrics.
    async fn conclude(
        &self,
        claim: &Claim,
        result: Result<Option<Vec<AfterCommit>>, StepError>,
        started: Instant,
    ) -> anyhow::Result<Outcome> {
        let outcome = match result {
            Ok(Some(after_commit)) => {
                for action in after_commit {
                    self.after_commit(action).await;
                }
                tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "step succeeded");
                Outcome::Succeeded
            }
            Ok(None) => {
                if steps::stop_canceled(&self.pool, claim.step_id, claim.lease_token).await? {
                    tracing::info!("the run is canceling: step stopped at a batch boundary");
                    Outcome::Canceled
                } else {
                    tracing::info!("lease lost; another worker has the step");
                    Outcome::LeaseLost
                }
            }
            Err(error) => self.record_failure(claim, &error).await?,
        };
        let label = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::WillRetry => "retry",
            Outcome::Dead => "dead",
            Outcome::Canceled => "canceled",
            Outcome::LeaseLost | Outcome::NotQueued => "lease_lost",
        };
        METRICS.step_attempt(&claim.name, label, started.elapsed());
        self.samples.attempt_ended(
            match outcome {
                Outcome::Succeeded => Ended::Succeeded,
                Outcome::WillRetry => Ended::Retry,
                Outcome::Dead => Ended::Dead,
                Outcome::Canceled | Outcome::LeaseLost | Outcome::NotQueued => Ended::Lost,
            },
            started.elapsed(),
        );
        Ok(outcome)
    }

    /// Calls the step until it finishes. `Ok(None)`: the lease was lost. `first`: nothing
    /// of this attempt has committed yet, so the claim's progress is current.
    async fn apply_until_done(
        &self,
        claim: &Claim,
        run: &RunContext,
        kind: StepKind,
        mut first: bool,
    ) -> Result<Option<Vec<AfterCommit>>, StepError> {
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
        let state = if first {
            (claim.done, claim.total, claim.cursor.clone())
        } else {
            let Some(fenced) =
                steps::fence(&mut tx, claim.step_id, claim.lease_token, self.worker.lease).await?
            else {
                return Ok(Attempt::LeaseLost);
            };
            (fenced.done, fenced.total, fenced.cursor)
        };
        let done_before = state.0;
        let progress = self.apply_in(&mut tx, claim, run, kind, state, &self.steps).await?;
        match progress {
            Progress::Batch { done, total, cursor } => {
                let token = claim.lease_token;
                if !steps::record_progress(&mut tx, claim.step_id, token, done, total, &cursor)
                    .await?
                {
                    return Ok(Attempt::LeaseLost);
                }
                tx.commit().await?;
                if kind.moves_items() {
                    METRICS.items_reassigned((done - done_before).max(0) as u64);
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
                    self.finish_run(&mut tx, run.id).await?;
                }
                tx.commit().await?;
                if kind.moves_items() {
                    METRICS.items_reassigned((finished.done - done_before).max(0) as u64);
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

    /// The step's effect (or its next batch) in `tx`, from the given progress
    /// (done, total, cursor); injected faults take effect here.
    async fn apply_in(
        &self,
        tx: &mut sqlx::PgConnection,
        claim: &Claim,
        run: &RunContext,
        kind: StepKind,
        (done, total, cursor): (i64, Option<i64>, Option<serde_json::Value>),
        settings: &StepSettings,
    ) -> Result<Progress, StepError> {
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
        let cx = StepContext { run, step: &state, settings };
        AssertUnwindSafe(kind.apply(&cx, tx))
            .catch_unwind()
            .await
            .map_err(|_| StepError::retryable("panic", "the step panicked"))?
    }

    async fn after_commit(&self, action: AfterCommit) {
        match action {}
    }

    async fn record_failure(&self, claim: &Claim, error: &StepError) -> anyhow::Result<Outcome> {
        let backoff = Backoff { base: self.worker.backoff_base, cap: self.worker.backoff_cap };
        let mut retry_in = backoff.delay(claim.attempts, &mut rand::rng());
        if let StepError::Later { pause, counted, .. } = error {
            if !counted {
                // Nothing was attempted: the attempt is given back and the step waits off
                // its worker slot.
                let status = steps::defer(
                    &self.pool,
                    claim.step_id,
                    claim.lease_token,
                    error.code(),
                    error.message(),
                    *pause,
                )
                .await?;
                return Ok(match status.as_deref() {
                    Some("canceled") => Outcome::Canceled,
                    Some(_) => {
                        tracing::debug!(
                            code = error.code(),
                            error = error.message(),
                            retry_in_ms = pause.as_millis() as u64,
                            "step waits for an outside destination"
                        );
                        Outcome::WillRetry
                    }
                    None => Outcome::LeaseLost,
                });
            }
            // Honour the destination's Retry-After.
            retry_in = retry_in.max(*pause);
        }
        let failure = Failure {
            code: error.code(),
            message: error.message(),
            permanent: !error.is_retryable(),
            retry_in,
            ceiling: backoff.ceiling(claim.attempts),
        };
        let status = steps::fail(&self.pool, claim.step_id, claim.lease_token, &failure).await?;
        Ok(match status.as_deref() {
            Some("canceled") => Outcome::Canceled,
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

fn step_span(claim: &Claim) -> tracing::Span {
    tracing::info_span!(
        "step",
        run_id = %claim.run_id,
        step = %claim.name,
        company_id = claim.company_id,
        attempt = claim.attempts,
    )
}

/// The run and the step's kind, from the claim.
fn prepare(claim: &Claim) -> Result<(RunContext, StepKind), StepError> {
    let run = run_context(claim)?;
    let kind = StepKind::from_name(&claim.name).ok_or_else(|| {
        StepError::permanent("unknown_step", format!("no step is named {}", claim.name))
    })?;
    Ok((run, kind))
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
