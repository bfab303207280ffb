//! A run's steps on their first attempt in one transaction: locked, applied in turn and
//! completed together, so a run's concurrent steps cost one commit, not one each.

use std::{collections::HashMap, sync::Arc, time::Instant};

use tracing::Instrument;

use super::{Executor, Outcome, Prepared, prepare, step_span, subject};
use crate::{
    config::StepSettings,
    domain::StepKey,
    ledger::steps::{self, Claim},
    metrics::METRICS,
    outbound::outside::CallKind,
    steps::{AfterCommit, Progress, StepError},
};

/// How a group transaction went.
enum GroupEnd {
    /// Committed: these steps finished in it (with their after-commit work); the others
    /// were claimed in it and continue alone, from what it recorded.
    Committed { finished: Vec<(Claim, Vec<AfterCommit>)>, continuing: Vec<Prepared> },
    /// Rolled back because this step failed; the others (`rest`) have not started.
    StepFailed { culprit: StepKey, error: StepError, rest: Vec<StepKey> },
    /// Rolled back for a reason no one step is to blame for (the database, say); none of
    /// the steps it had locked has started.
    RolledBack { error: anyhow::Error, steps: Vec<StepKey> },
}

impl Executor {
    /// Several steps of one run in one transaction: locked (not claimed: a claim commits on
    /// its own), applied in turn, and completed in one statement. Rows moved by
    /// reassignments count against one batch for the whole transaction
    /// (`OFFBOARD_REASSIGN_BATCH` bounds every transaction): a reassignment that has more to
    /// move, or finds the batch spent, is claimed in the transaction and continues alone
    /// after it. If a step fails, the transaction is rolled back: that step is claimed
    /// and its failure recorded as its attempt, and the others run alone.
    ///
    /// `detach`: a step that calls outside and continues goes on off the worker's slot
    /// (see [`Executor::run_task`]).
    pub(super) async fn run_group(
        &self,
        step_ids: &[StepKey],
        detach: Option<&Arc<Self>>,
    ) -> anyhow::Result<Vec<(StepKey, Outcome)>> {
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
                    outcomes.push((claim.key(), outcome));
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
        if let Some(this) = detach {
            let (outside, rest): (Vec<Prepared>, Vec<Prepared>) =
                continuing.into_iter().partition(|p| CallKind::of_step(&p.claim.name).is_some());
            continuing = rest;
            for p in outside {
                // A fresh attempt: the group's transaction counted it when it committed.
                let began = Instant::now();
                let lease = self.leases.hold(p.claim.lease_token, began + self.worker.step_timeout);
                let step_id = p.claim.key();
                let span = step_span(&p.claim);
                let outcome = this.go_on_detached(p, false, lease, began).instrument(span).await?;
                outcomes.push((step_id, outcome));
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
                outcome.map(|o| (p.claim.key(), o))
            }
            .instrument(step_span(&p.claim))
        }))
        .await;
        for outcome in continued {
            outcomes.push(outcome?);
        }
        // One after another: completed side by side, steps of one run that were not fenced
        // could deadlock on the run's row (40P01, seen under load), costing each an attempt.
        for id in run_alone {
            outcomes.extend(self.run_alone(id, detach).await?);
        }
        Ok(outcomes)
    }

    /// The group's one transaction, within the attempt's deadline; see
    /// [`Executor::run_group`]. Past the deadline it is rolled back and its steps run
    /// alone, each with a deadline of its own.
    async fn apply_group(&self, step_ids: &[StepKey], deadline: tokio::time::Instant) -> GroupEnd {
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
        step_ids: &[StepKey],
        locked: &mut Vec<StepKey>,
    ) -> anyhow::Result<GroupEnd> {
        let mut tx = self.pool.begin().await?;
        let claims = steps::lock_queued(&mut tx, step_ids).await?;
        locked.extend(claims.iter().map(|c| c.key()));
        let mut group = Vec::with_capacity(claims.len());
        for claim in claims {
            match prepare(&claim) {
                Ok((run, kind)) => group.push(Prepared { claim, run, kind }),
                Err(error) => {
                    let rest = locked.iter().copied().filter(|id| *id != claim.key()).collect();
                    return Ok(GroupEnd::StepFailed { culprit: claim.key(), error, rest });
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
                match crate::outbound::outside::plan(&mut tx, calls, subject(&p.run), claim.key())
                    .await
                {
                    Ok(0) => {}
                    Ok(_) => {
                        continuing.push((i, claim.done, claim.total, claim.cursor.clone()));
                        continue;
                    }
                    Err(error) => {
                        let culprit = claim.key();
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
                        let culprit = claim.key();
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
                step: group[*i].claim.key(),
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
                    step: group[*i].claim.key(),
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
                if let Some(p) = group.iter_mut().find(|p| p.claim.key() == step_id) {
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
}
