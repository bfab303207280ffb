//! One step under a lease: claimed (its attempt committed first), applied in transactions
//! of its own until done, then concluded — succeeded, or its failure recorded with the
//! next attempt's time.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::FutureExt;
use tracing::Instrument;

use super::{
    Attempt, Executor, Fault, Outcome, Prepared, leases::LeaseGuard, prepare, step_span, subject,
};
use crate::{
    backoff::Backoff,
    config::StepSettings,
    domain::{RunStatus, StepKey, StepStatus},
    ledger::steps::{self, Claim, Failure},
    metrics::METRICS,
    outbound::outside::{CallKind, CallsEnd, CallsFailure, Retry},
    samples::Ended,
    steps::{AfterCommit, Progress, RunContext, StepContext, StepError, StepKind, StepState},
};

impl Executor {
    /// Claims the step and runs it in transactions of its own. `None`: it was not queued.
    /// `detach`: see [`Executor::run_task`].
    pub(super) async fn run_alone(
        &self,
        step_id: StepKey,
        detach: Option<&Arc<Self>>,
    ) -> anyhow::Result<Option<(StepKey, Outcome)>> {
        let Some(claim) =
            steps::claim(&self.pool, step_id, &self.worker_name, self.worker.lease).await?
        else {
            return Ok(None);
        };
        let span = step_span(&claim);
        let outcome = self.run_claimed(claim, detach).instrument(span).await?;
        Ok(Some((step_id, outcome)))
    }

    async fn run_claimed(
        &self,
        claim: Claim,
        detach: Option<&Arc<Self>>,
    ) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let lease = self.leases.hold(claim.lease_token, started + self.worker.step_timeout);
        let result = match prepare(&claim) {
            Ok((run, kind)) => match detach {
                Some(this) if CallKind::of_step(&claim.name).is_some() => {
                    let p = Prepared { claim, run, kind };
                    return this.go_on_detached(p, true, lease, started).await;
                }
                _ => self.apply_within_deadline(&claim, &run, kind, true, started).await,
            },
            Err(e) => Err(e),
        };
        self.conclude(&claim, result, started).await
    }

    /// A claimed step that calls outside goes on in a task of its own, holding one of the
    /// slots for such steps and its lease, so the worker's slot is free at once; with every
    /// such slot taken, it is re-scheduled shortly, its attempt given back.
    pub(super) async fn go_on_detached(
        self: &Arc<Self>,
        p: Prepared,
        first: bool,
        lease: LeaseGuard,
        started: Instant,
    ) -> anyhow::Result<Outcome> {
        let Ok(slot) = self.outside_steps.clone().try_acquire_owned() else {
            let full = StepError::later(
                "outside_waiting",
                "every slot for steps that call outside is taken (OFFBOARD_OUTBOUND_CONCURRENCY); \
                 the step waits for one",
                OUTSIDE_SLOTS_FULL_PAUSE,
                false,
            );
            return self.conclude(&p.claim, Err(full), started).await;
        };
        let this = self.clone();
        // The caller's step span (a task spawned does not inherit it).
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let (_slot, _lease) = (slot, lease);
                let result =
                    this.apply_within_deadline(&p.claim, &p.run, p.kind, first, started).await;
                if let Err(e) = this.conclude(&p.claim, result, started).await {
                    tracing::warn!(error = %format!("{e:#}"), "the step's end was not recorded; its lease will expire and it runs again");
                }
            }
            .instrument(span),
        );
        Ok(Outcome::Continues)
    }

    /// [`Executor::apply_until_done`] within the attempt's deadline (`OFFBOARD_STEP_TIMEOUT`
    /// from `started`). Past it the attempt fails with `timeout`: its open transaction is
    /// dropped (rolled back; a statement still running on the server ends at the pool's
    /// `statement_timeout` or `lock_timeout` at the latest) and the failure is recorded for
    /// a retry with backoff.
    pub(super) async fn apply_within_deadline(
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
                    .run(calls, subject(run), claim.key(), claim.lease_token, self.worker.lease)
                    .await?
                {
                    CallsEnd::Done => {}
                    CallsEnd::LeaseLost => return Ok(None),
                    CallsEnd::Failed(failure) => return Err(step_error(failure)),
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

    pub(super) fn attempt_timed_out(&self) -> StepError {
        StepError::retryable(
            "timeout",
            format!(
                "the attempt passed its deadline of {} ms (OFFBOARD_STEP_TIMEOUT)",
                self.worker.step_timeout.as_millis()
            ),
        )
    }

    /// How a step's attempt ended: after-commit work, or the failure recorded; metrics.
    pub(super) async fn conclude(
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
                if steps::stop_canceled(&self.pool, claim.key(), claim.lease_token).await? {
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
            Outcome::LeaseLost | Outcome::NotQueued | Outcome::Continues => "lease_lost",
        };
        METRICS.step_attempt(&claim.name, label, started.elapsed());
        self.samples.attempt_ended(
            match outcome {
                Outcome::Succeeded => Ended::Succeeded,
                Outcome::WillRetry => Ended::Retry,
                Outcome::Dead => Ended::Dead,
                Outcome::Canceled
                | Outcome::LeaseLost
                | Outcome::NotQueued
                | Outcome::Continues => Ended::Lost,
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
                steps::fence(&mut tx, claim.key(), claim.lease_token, self.worker.lease).await?
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
                if !steps::record_progress(&mut tx, claim.key(), token, done, total, &cursor)
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
                    claim.key(),
                    claim.lease_token,
                    &finished.counts,
                    finished.done,
                    finished.total,
                )
                .await?
                else {
                    return Ok(Attempt::LeaseLost);
                };
                if completion.steps_remaining == 0 && completion.run_status == RunStatus::Running {
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
    pub(super) async fn apply_in(
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
                    claim.key(),
                    claim.lease_token,
                    error.code(),
                    error.message(),
                    *pause,
                )
                .await?;
                return Ok(match status {
                    Some(StepStatus::Canceled) => Outcome::Canceled,
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
        let status = steps::fail(&self.pool, claim.key(), claim.lease_token, &failure).await?;
        Ok(match status {
            Some(StepStatus::Canceled) => Outcome::Canceled,
            Some(StepStatus::Dead) => {
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

/// How soon a step that found every slot for steps that call outside taken looks again.
const OUTSIDE_SLOTS_FULL_PAUSE: Duration = Duration::from_millis(200);

/// The step's failure from its calls'.
fn step_error(failure: CallsFailure) -> StepError {
    match failure.retry {
        Retry::Never => StepError::permanent(failure.code, failure.message),
        Retry::After { pause, counted } => {
            StepError::later(failure.code, failure.message, pause, counted)
        }
    }
}
