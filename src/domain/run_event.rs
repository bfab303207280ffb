//! What an entry of a run's history (`offboard.run_events.kind`) says happened: the run's
//! own moves (asked for, started, approved, retried, canceled, finished) and its steps'
//! (a retry scheduled, a pause, a lost worker, a dead or canceled step).
//!
//! The column has no `CHECK`: several statements write these words as SQL literals (in a
//! `CASE` over a step's new status, say), and every read decodes them into this enum, so a
//! word written but not listed here fails the read that meets it. The unit test below
//! holds the list to every word those statements write.

use super::text_enum::text_enum;

text_enum! {
    pub enum RunEventKind("run event kind") {
        /// The run was asked for (`detail.status` and `effective_at` when it waits).
        Enqueued = "enqueued",
        /// A scheduled (or approved) run's time came; its steps went in line.
        Started = "started",
        /// An operator moved a scheduled run's start.
        Rescheduled = "rescheduled",
        /// A second admin approved the run.
        Approved = "approved",
        /// A second admin refused the run (final).
        Rejected = "rejected",
        /// Nobody approved the run in time (final).
        Expired = "expired",
        /// The plan no longer held when a scheduled run started.
        Failed = "failed",
        /// An operator put the dead steps back in line.
        Retried = "retried",
        /// An operator ran the run again from one step on.
        Restarted = "restarted",
        /// A cancel came while steps were running; they stop at their next batch boundary.
        Canceling = "canceling",
        /// The run stopped for good, by a cancel.
        Canceled = "canceled",
        /// Every step succeeded or was skipped.
        Succeeded = "succeeded",
        /// A step failed and will be tried again later.
        StepRetryScheduled = "step_retry_scheduled",
        /// A step could not start its work (a breaker open, a rate limit spent) and waits,
        /// its attempt given back.
        StepDeferred = "step_deferred",
        /// A step's worker was lost or passed its deadline; the step is back in line.
        LeaseExpired = "lease_expired",
        /// A step failed for good, or ran out of attempts.
        StepDead = "step_dead",
        /// A step stopped because its run is canceling.
        StepCanceled = "step_canceled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words the ledger's statements write as SQL literals (`src/ledger`), each a
    /// variant; a statement that starts writing another word must add it here and above.
    #[test]
    fn every_kind_the_ledger_writes_reads_back_as_a_variant() {
        let written = [
            "enqueued",
            "started",
            "rescheduled",
            "approved",
            "rejected",
            "expired",
            "failed",
            "succeeded",
            "step_retry_scheduled",
            "step_deferred",
            "lease_expired",
            "step_dead",
            "step_canceled",
        ];
        for word in written {
            let kind: RunEventKind = word.parse().unwrap();
            assert_eq!(kind.as_str(), word);
            assert_eq!(serde_json::to_value(kind).unwrap(), word);
        }
        for kind in RunEventKind::ALL {
            assert_eq!(kind.as_str().parse::<RunEventKind>(), Ok(kind));
        }
        assert!("Enqueued".parse::<RunEventKind>().is_err());
    }
}
