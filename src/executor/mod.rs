//! Runs a step task. One step: claim it (a lease), apply it in transactions that also
//! record its progress, complete it together with its last effect, or record the failure
//! with the next attempt's time. A run's steps on their first attempt: lock them, apply
//! them all and complete them in one transaction. Redis delivers at least once; the claim,
//! or the lock on a queued step, makes that exactly once in effect.

use std::{collections::HashMap, sync::Arc};

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

mod alone;
mod group;
mod leases;

pub use leases::Leases;

pub use crate::faults::{Fault, Faults};
use crate::{
    config::{StepSettings, WorkerSettings},
    domain::{CompanyId, StepKey, TransferPlan, UserId},
    ledger::{runs, steps::Claim},
    queue::Queues,
    steps::{AfterCommit, RunContext, RunParams, StepError, StepKind},
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
    /// The step calls outside and goes on in a task of its own, off the worker's slot
    /// ([`Executor::run_task`]); its outcome is recorded there.
    Continues,
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
    pub outside: Arc<crate::outbound::outside::Outside>,
    /// Slots for steps that call outside, apart from the worker's
    /// (`OFFBOARD_OUTBOUND_CONCURRENCY`).
    pub outside_steps: Arc<tokio::sync::Semaphore>,
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

impl Executor {
    /// Marks a run whose last step succeeded as succeeded, with its receipt, and writes
    /// the deletion its company's policy schedules after a deactivation (if any), in the
    /// caller's transaction.
    async fn finish_run(
        &self,
        tx: &mut sqlx::PgConnection,
        run_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        let finished = runs::finish(&mut *tx, run_id).await?;
        let Some(due) = finished.deletion_due else {
            return Ok(());
        };
        let deletion = crate::steps::plan(
            crate::domain::Action::Delete,
            &crate::domain::TransferPlan::default(),
        );
        let id = crate::ledger::scheduled::schedule_deletion(
            &mut *tx,
            &finished.run,
            due,
            deletion,
            self.worker.max_attempts,
        )
        .await?;
        tracing::info!(%run_id, deletion_run_id = %id, "deletion scheduled by the company policy");
        Ok(())
    }

    /// Runs one step task; see [`Executor::run_steps`].
    pub async fn run_step(&self, step_id: StepKey) -> anyhow::Result<Outcome> {
        let outcomes = self.run_steps(&[step_id]).await?;
        Ok(outcomes.into_iter().next().map(|(_, o)| o).unwrap_or(Outcome::NotQueued))
    }

    /// Runs a task as a worker does: as [`Executor::run_steps`], except that a step that
    /// calls outside, once claimed, goes on in a task of its own within
    /// `OFFBOARD_OUTBOUND_CONCURRENCY` ([`Outcome::Continues`]) and the worker's slot is
    /// free at once — or, with every such slot taken, is re-scheduled shortly with its
    /// attempt given back. A slow or hanging destination so never holds the slots the
    /// other steps need. (The step's lease is held, and renewed, by this process until it
    /// ends; a graceful shutdown waits for it.)
    pub async fn run_task(
        self: &Arc<Self>,
        step_ids: &[StepKey],
    ) -> anyhow::Result<Vec<(StepKey, Outcome)>> {
        self.run_steps_with(step_ids, Some(self)).await
    }

    /// Runs the steps of one task and returns each one's outcome, in `step_ids` order. One
    /// step is claimed (its attempt committed first) and runs in transactions of its own;
    /// several — steps of one run on their first attempt — run in one transaction that
    /// also completes them, so a run's concurrent steps cost one commit, not one each.
    pub async fn run_steps(&self, step_ids: &[StepKey]) -> anyhow::Result<Vec<(StepKey, Outcome)>> {
        self.run_steps_with(step_ids, None).await
    }

    /// `detach`: this executor's `Arc` when steps that call outside go on off the slot.
    async fn run_steps_with(
        &self,
        step_ids: &[StepKey],
        detach: Option<&Arc<Self>>,
    ) -> anyhow::Result<Vec<(StepKey, Outcome)>> {
        let mut outcomes: HashMap<StepKey, Outcome> =
            step_ids.iter().map(|&id| (id, Outcome::NotQueued)).collect();
        let ran = if step_ids.len() == 1 {
            self.run_alone(step_ids[0], detach).await?.into_iter().collect()
        } else {
            self.run_group(step_ids, detach).await?
        };
        outcomes.extend(ran);
        Ok(step_ids.iter().map(|id| (*id, outcomes[id].clone())).collect())
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

/// Whose calls a step makes: its run's ids.
fn subject(run: &RunContext) -> crate::outbound::outside::Subject {
    crate::outbound::outside::Subject {
        run_id: run.id,
        company_id: run.company_id.get(),
        user_id: run.user_id.get(),
    }
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
        action: claim.action,
        actor_user_id: UserId::new(claim.actor_user_id).ok_or_else(|| bad("actor_user_id"))?,
        plan: TransferPlan::from_stored(&claim.plan).map_err(|_| bad("plan"))?,
        params: serde_json::from_value::<RunParams>(claim.params.clone())
            .map_err(|_| bad("params"))?,
    })
}
