//! What the suite did and found, and how `offboard-lab chaos` prints it: one line a
//! figure, then the lists of what was lost, doubled or broken.

use std::{collections::BTreeMap, fmt, time::Duration};

use super::{
    ChaosOptions, faults::FaultStats, hooks::HookTally, remote::OutsideTally, verify::Findings,
    verify::Tally,
};

/// Cancels and target deactivations the suite did beside the faults.
#[derive(Debug, Default, Clone)]
pub struct Interference {
    pub cancels_sent: usize,
    /// The run had finished before the cancel came (answered 409).
    pub cancels_too_late: usize,
    /// Deactivations of a user receiving items from an active run, refused with 409
    /// `user_is_transfer_target` as they must be.
    pub target_deactivations_refused: usize,
    /// Such deactivations accepted: only when the run had finished in between.
    pub target_deactivations_accepted: usize,
    /// Targets deactivated outside offboard (a direct update) while a run moved items to
    /// them, and reactivated after.
    pub targets_deactivated_outside: usize,
    /// Reassignment steps that stopped with `target_inactive` because of it.
    pub steps_stopped_target_inactive: i64,
}

/// What the suite did and found.
#[derive(Debug)]
pub struct Report {
    pub options: ChaosOptions,
    pub company_id: i64,
    pub items: usize,
    pub runs_by_action: BTreeMap<&'static str, usize>,
    pub runs_requested: usize,
    pub faults: FaultStats,
    pub interference: Interference,
    pub findings: Findings,
    pub tally: Tally,
    pub outside: OutsideTally,
    pub hooks: HookTally,
    pub wall_time: Duration,
    pub log_dir: String,
    pub database_kept: bool,
}

impl Report {
    pub fn lost(&self) -> usize {
        self.findings.lost.len()
    }

    pub fn doubled(&self) -> usize {
        self.findings.doubled.len()
    }

    pub fn passed(&self) -> bool {
        self.findings.lost.is_empty()
            && self.findings.doubled.is_empty()
            && self.findings.broken.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let s = &self.faults;
        let t = &self.tally;
        let mode = if o.service_restarts() {
            "real Redis/PostgreSQL restarts, FLUSHALL"
        } else {
            "no service restarts: own keys flushed, own connections cut"
        };
        writeln!(
            f,
            "offboard-lab chaos: company {} ({} users, {} items), {} workers, batch {}, seed {}; {mode}",
            self.company_id, o.users, self.items, o.workers, o.reassign_batch, o.seed
        )?;
        let actions: Vec<String> =
            self.runs_by_action.iter().map(|(a, n)| format!("{a} {n}")).collect();
        writeln!(
            f,
            "  runs       {}: {} succeeded, {} dead with a recorded reason, {} unfinished ({})",
            self.runs_requested,
            t.succeeded,
            t.dead_with_reason.len(),
            t.unfinished,
            actions.join(", ")
        )?;
        writeln!(
            f,
            "  steps      {} succeeded; {} leases taken back from lost workers, {} retries after errors",
            t.steps_succeeded, t.leases_taken_back, t.retries
        )?;
        writeln!(
            f,
            "  kills      {} workers SIGKILLed ({} holding steps, {} mid-reassignment); {} worker processes started, {} exited by themselves",
            s.kills,
            s.kills_holding_steps,
            s.kills_mid_reassignment,
            s.worker_processes_started,
            s.worker_exits
        )?;
        let flush = if o.service_restarts() { "FLUSHALL" } else { "own keys deleted" };
        writeln!(f, "  flushes    {} ({flush})", s.flushes)?;
        if o.service_restarts() {
            writeln!(
                f,
                "  restarts   Redis {}, PostgreSQL {}",
                s.redis_restarts, s.postgres_restarts
            )?;
        } else {
            writeln!(
                f,
                "  restarts   none (simulated PostgreSQL restarts: {}, {} connections cut)",
                s.postgres_restarts, s.postgres_connections_cut
            )?;
        }
        let i = &self.interference;
        writeln!(
            f,
            "  cancels    {} sent mid-flight ({} came after the run finished), {} runs canceled and checked",
            i.cancels_sent, i.cancels_too_late, t.canceled
        )?;
        writeln!(
            f,
            "  targets    {} deactivations of a target refused (409 user_is_transfer_target), {} accepted after its run ended; {} deactivated outside offboard ({} steps stopped with target_inactive)",
            i.target_deactivations_refused,
            i.target_deactivations_accepted,
            i.targets_deactivated_outside,
            i.steps_stopped_target_inactive
        )?;
        writeln!(
            f,
            "  purges     {} fired ({} by the queue, {} by the sweeper), {} canceled by reactivation",
            t.purges_by_queue + t.purges_by_sweeper,
            t.purges_by_queue,
            t.purges_by_sweeper,
            t.purges_canceled
        )?;
        writeln!(
            f,
            "  items      {} checked, {} reassigned by plans",
            t.items_checked, t.items_moved
        )?;
        let x = &self.outside;
        writeln!(
            f,
            "  outside    {} calls to a provider and a vendor failing ~30 % and hanging ~5 % ({} failed or hung): {} grants revoked, {} installs' vendors told; {} called again after a 200 (a worker killed before it recorded the outcome, or two admins' runs telling one shared install's vendor, under one key)",
            x.calls, x.failed_or_hung, x.grants_revoked, x.installs_told, x.repeated_after_ok
        )?;
        let h = &self.hooks;
        writeln!(
            f,
            "  webhooks   {} events to {} receivers failing ~30 % and hanging ~5 % ({} deliveries, {} requests, {} failed or hung, {} workers killed while deliveries were being sent): {} duplicates absorbed by dedupe on webhook-id, {} bad signatures",
            h.events,
            h.endpoints,
            h.deliveries,
            h.requests,
            h.failed_or_hung,
            self.faults.kills_during_delivery,
            h.duplicates_absorbed,
            h.bad_signatures
        )?;
        writeln!(f, "  lost       {}", self.lost())?;
        writeln!(f, "  doubled    {}", self.doubled())?;
        if !self.findings.broken.is_empty() {
            writeln!(f, "  broken     {}", self.findings.broken.len())?;
        }
        writeln!(f, "  wall time  {:.1}s", self.wall_time.as_secs_f64())?;
        for (label, list) in [
            ("lost", &self.findings.lost),
            ("doubled", &self.findings.doubled),
            ("broken", &self.findings.broken),
            ("dead with a recorded reason", &t.dead_with_reason),
        ] {
            if list.is_empty() {
                continue;
            }
            writeln!(f, "{label}:")?;
            for line in list.iter().take(12) {
                writeln!(f, "  - {line}")?;
            }
            if list.len() > 12 {
                writeln!(f, "  … and {} more", list.len() - 12)?;
            }
        }
        for error in &s.errors {
            writeln!(f, "fault injection error: {error}")?;
        }
        if self.database_kept {
            writeln!(
                f,
                "database {} kept for inspection; worker logs in {}",
                o.database, self.log_dir
            )?;
        }
        Ok(())
    }
}
