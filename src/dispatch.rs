//! The dispatcher and the sweeper: the only code that decides what goes to Redis.
//!
//! The dispatcher moves ready steps to `queued` within the in-flight limits (global, so
//! Redis never holds an unbounded backlog, and per company, so one tenant's layoff cannot
//! starve another) and pushes them after the commit. It runs when nudged (a commit made
//! steps ready) and on a short interval (retries coming due, other processes' commits).
//!
//! Private-email purges stay in the ledger until due; the dispatcher (and the sweeper) push
//! those come due in bounded batches, so Redis never holds a month of future purges.
//!
//! The sweeper runs every second (a tokio interval in the worker runtime): it takes back
//! steps whose worker vanished (expired leases), re-pushes queued steps whose Redis task was
//! lost (the outbox), pushes purges come due, fires itself those still not fired after a
//! grace, starts scheduled runs whose time has come ([`crate::ledger::scheduled`]), takes up
//! unfinished bulk operations ([`crate::bulk`]), deletes expired idempotency keys, writes the
//! second's metric sample ([`crate::samples`]) and
//! trims finished tasks from Redis.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::{
    config::WorkerSettings,
    ledger::{
        approval, idempotency,
        scheduled::{self, Start},
        steps::{self, DispatchLimits},
    },
    metrics::METRICS,
    queue::Queues,
    shutdown::Shutdown,
    steps::private_email_purge::{self, FiredBy},
};

pub use crate::config::PURGE_GRACE;

/// Purge tasks Redis may hold at once (due, not yet fired): far below the ~8,000 due
/// tasks past which apalis-redis's fetch fails for good. The rest wait in the ledger.
pub const PURGES_IN_REDIS: u64 = 1_000;

/// Purges one pass marks and pushes at most.
pub const PURGE_BATCH: i64 = 250;

/// How often the dispatcher looks for purges come due (the sweeper also does, each second).
const PURGE_PASS_EVERY: Duration = Duration::from_millis(250);

/// A pushed purge still scheduled this long after its push lost its Redis task (a flush,
/// a restart) or waits behind a long queue: it is pushed again.
pub const PURGE_REPUSH_AFTER: Duration = Duration::from_secs(30);

/// The least time from the start of one dispatch pass to the start of the next, however
/// many nudges came in between: far below what `OFFBOARD_MAX_IN_FLIGHT` steps take to run,
/// so workers never wait on it, and on a busy system each pass takes the room many
/// completions freed, and the runs many commits made ready, instead of one pass per
/// nudge (thousands a second while an enqueue burst meets a full in-flight limit).
pub const PASS_GAP: Duration = Duration::from_millis(10);

/// What this dispatcher did: passes made and steps they dispatched (also counted in the
/// process's metrics, `offboard_dispatch_passes` and `offboard_dispatched_steps`).
#[derive(Debug, Default)]
pub struct DispatchStats {
    passes: AtomicU64,
    dispatched: AtomicU64,
    busy: AtomicU64,
}

impl DispatchStats {
    /// Times this dispatcher found another process's dispatcher passing (and looked again
    /// after [`PASS_GAP`]).
    pub fn busy(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    pub fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    pub pool: PgPool,
    pub queues: Queues,
    pub settings: WorkerSettings,
    /// Idempotency keys older than this are deleted by the sweep.
    pub idempotency_retention: Duration,
    pub nudge: Arc<Notify>,
    /// Step attempts this process's workers ended since the last sample.
    pub samples: Arc<crate::samples::Counters>,
    pub stats: Arc<DispatchStats>,
}

impl Dispatcher {
    fn limits(&self) -> DispatchLimits {
        DispatchLimits {
            max_in_flight: self.settings.max_in_flight,
            max_in_flight_per_company: self.settings.max_in_flight_per_company,
        }
    }

    /// Dispatches what may start now; returns how many steps were pushed.
    pub async fn dispatch_once(&self) -> anyhow::Result<usize> {
        Ok(self.pass().await?.unwrap_or(0))
    }

    /// [`Dispatcher::dispatch_once`]; `None` when another process's dispatcher was passing.
    async fn pass(&self) -> anyhow::Result<Option<usize>> {
        let Some(dispatched) = steps::try_dispatch_ready(&self.pool, self.limits()).await? else {
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        self.stats.dispatched.fetch_add(dispatched.len() as u64, Ordering::Relaxed);
        METRICS.dispatch_pass(dispatched.len());
        if dispatched.is_empty() {
            return Ok(Some(0));
        }
        // Committed as queued first: if a push fails the sweeper pushes them again.
        let lanes = steps::into_lanes(&dispatched);
        self.queues.push_steps(&lanes.back).await?;
        self.queues.push_steps_first(&lanes.front).await?;
        Ok(Some(dispatched.len()))
    }

    /// Pushes purges that came due, in batches, while Redis holds fewer than
    /// [`PURGES_IN_REDIS`] purge tasks; returns how many were pushed. Marked pushed first:
    /// if the push fails they are pushed again after [`PURGE_REPUSH_AFTER`].
    pub async fn push_due_purges(&self) -> anyhow::Result<usize> {
        let mut pushed = 0;
        loop {
            let depth = self.queues.purge_depth().await?.total();
            let room = PURGES_IN_REDIS.saturating_sub(depth).min(PURGE_BATCH as u64) as i64;
            if room == 0 {
                return Ok(pushed);
            }
            let due = private_email_purge::take_due(&self.pool, room, PURGE_REPUSH_AFTER).await?;
            if due.is_empty() {
                return Ok(pushed);
            }
            self.queues.push_purges(&due).await?;
            pushed += due.len();
            if due.len() < room as usize {
                return Ok(pushed);
            }
        }
    }

    /// Passes until `shutdown`: when nudged (a commit made steps ready, a step finished), on
    /// the interval, and again after a pass that dispatched something (more may wait) —
    /// never two passes less than [`PASS_GAP`] apart, and never more than one in flight:
    /// nudges that come during a pass or the gap leave one permit, so a burst of them costs
    /// one more pass, not one each.
    pub async fn run(self, shutdown: Shutdown) {
        let mut purges_looked_at = tokio::time::Instant::now() - PURGE_PASS_EVERY;
        let mut last_pass: Option<tokio::time::Instant> = None;
        loop {
            if let Some(last) = last_pass {
                tokio::select! {
                    _ = tokio::time::sleep_until(last + PASS_GAP) => {}
                    _ = shutdown.wait() => break,
                }
            }
            last_pass = Some(tokio::time::Instant::now());
            if purges_looked_at.elapsed() >= PURGE_PASS_EVERY {
                purges_looked_at = tokio::time::Instant::now();
                if let Err(e) = self.push_due_purges().await {
                    tracing::warn!(error = %format!("{e:#}"), "pushing due purges failed; will retry");
                }
            }
            match self.pass().await {
                // More may be waiting: go again (after the gap).
                Ok(Some(n)) if n > 0 => continue,
                // Another process's dispatcher was passing, and its pass may not have seen
                // what this one was woken for: look again after the gap. (Waiting for the
                // next nudge or the interval instead could leave the steps this process's
                // own commit had just made ready until the interval, whenever two
                // processes' passes met.)
                Ok(None) => continue,
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "dispatch failed; will retry"),
            }
            tokio::select! {
                _ = self.nudge.notified() => {}
                _ = tokio::time::sleep(self.settings.dispatch_interval) => {}
                _ = shutdown.wait() => break,
            }
        }
    }

    /// One sweep. Errors are logged and the next sweep tries again.
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        match steps::reap_expired_leases(
            &self.pool,
            self.settings.backoff_base,
            self.settings.backoff_cap,
        )
        .await
        {
            Ok(reaped) => {
                for (run_id, step, status) in &reaped {
                    tracing::warn!(%run_id, step = %step, new_status = %status, "lease expired; step taken back");
                }
                report.leases_expired = reaped.len();
                if !reaped.is_empty() {
                    self.nudge.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaping expired leases failed"),
        }
        match self.redeliver_stale().await {
            Ok(n) => report.redelivered = n,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "redelivering queued steps failed"),
        }
        match self.push_due_purges().await {
            Ok(n) => report.purges_pushed = n,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "pushing due purges failed"),
        }
        match private_email_purge::overdue(&self.pool, self.settings.purge_grace, 100).await {
            Ok(due) => {
                for purge_id in due {
                    match private_email_purge::fire(&self.pool, purge_id, FiredBy::Sweeper).await {
                        Ok(Some(_)) => {
                            METRICS.purge_fired("sweeper");
                            report.purges_fired += 1;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(purge_id, error = %e, "purge failed; next sweep retries")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for overdue purges failed"),
        }
        match idempotency::delete_expired(&self.pool, self.idempotency_retention, 1_000).await {
            Ok(n) => report.idempotency_keys_expired = n,
            Err(e) => tracing::warn!(error = %e, "deleting expired idempotency keys failed"),
        }
        report.scheduled_started = self.start_due_scheduled().await;
        match approval::expire_overdue(&self.pool, 100).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(runs = n, "runs awaiting approval expired");
                }
                report.approvals_expired = n as usize;
            }
            Err(e) => tracing::warn!(error = %e, "expiring runs awaiting approval failed"),
        }
        match crate::bulk::take_one(&self.pool, &self.settings, &self.nudge).await {
            Ok(taken) => report.bulk_taken = taken,
            Err(e) => tracing::warn!(error = %e, "looking for unfinished bulk operations failed"),
        }
        if let Err(e) = crate::samples::write(&self.pool, &self.queues, &self.samples).await {
            tracing::debug!(error = %format!("{e:#}"), "writing the metric sample failed");
        }
        if let Err(e) = self.queues.trim_finished(2_000).await {
            tracing::debug!(error = %e, "trimming finished Redis tasks failed");
        }
        report
    }

    /// Starts the scheduled runs whose `effective_at` has passed, up to 100 a sweep (one
    /// transaction each), and wakes the dispatcher for them.
    async fn start_due_scheduled(&self) -> usize {
        let mut started = 0;
        while started < 100 {
            match scheduled::start_next_due(&self.pool).await {
                Ok(Some((run_id, start))) => {
                    started += 1;
                    match start {
                        Start::Queued => tracing::info!(%run_id, "scheduled run started"),
                        Start::Refused(code) => {
                            tracing::warn!(%run_id, code, "scheduled run failed at its start: its plan no longer holds")
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "starting scheduled runs failed; next sweep retries");
                    break;
                }
            }
        }
        if started > 0 {
            self.nudge.notify_one();
        }
        started
    }

    /// Re-pushes queued steps nobody claimed in time, but only while Redis holds fewer
    /// tasks than the in-flight limit, so a long worker outage cannot pile duplicates up.
    async fn redeliver_stale(&self) -> anyhow::Result<usize> {
        let depth = self.queues.step_depth().await?.total() as i64;
        let room = self.settings.max_in_flight - depth;
        if room <= 0 {
            return Ok(0);
        }
        let ids = steps::take_stale_queued(&self.pool, self.settings.redeliver_after, room).await?;
        if !ids.is_empty() {
            tracing::info!(
                steps = ids.len(),
                "re-pushing queued steps whose Redis task was lost or late"
            );
            let alone: Vec<Vec<_>> = ids.iter().map(|&step| vec![step]).collect();
            self.queues.push_steps(&alone).await?;
        }
        Ok(ids.len())
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub leases_expired: usize,
    pub redelivered: usize,
    pub purges_fired: usize,
    /// Purges come due pushed to Redis by this sweep (the dispatcher pushes most).
    pub purges_pushed: usize,
    /// Idempotency keys past `OFFBOARD_IDEMPOTENCY_RETENTION` deleted (at most 1,000 a sweep).
    pub idempotency_keys_expired: u64,
    /// An unfinished bulk operation was taken up.
    pub bulk_taken: bool,
    /// Scheduled runs whose time had come, started (or failed at their start).
    pub scheduled_started: usize,
    /// Runs awaiting approval whose window passed, now expired.
    pub approvals_expired: usize,
}
