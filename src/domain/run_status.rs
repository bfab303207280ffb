//! The statuses a run can be in, and which of them hold the user: one list, used by the
//! Rust rules and spliced into every SQL statement that asks "does this user have an active
//! run?" (the partial unique index `runs_one_active_per_user` counts the same ones; a test
//! reads the index back and compares).

use super::text_enum::text_enum;

text_enum! {
    /// Where a run is (`offboard.runs.status`), in the order a list shows them.
    pub enum RunStatus("run status") {
        /// Waits for its `effective_at`.
        Scheduled = "scheduled",
        /// Waits for a second admin.
        AwaitingApproval = "awaiting_approval",
        /// Its steps wait for workers.
        Queued = "queued",
        /// A step of it started.
        Running = "running",
        /// Told to stop; waits for its running steps to stop.
        Canceling = "canceling",
        /// Every step succeeded or was skipped.
        Succeeded = "succeeded",
        /// A step is dead, or the plan no longer held when the run started.
        Failed = "failed",
        /// Stopped by an operator (final).
        Canceled = "canceled",
        /// Nobody approved it in time (final).
        Expired = "expired",
        /// An admin refused it (final).
        Rejected = "rejected",
    }
}

/// Statuses of a run that still holds its user: waiting to start, running, stopping, or
/// failed and not yet retried or canceled. The user has at most one such run.
pub const ACTIVE_RUN_STATUSES: [RunStatus; 6] = [
    RunStatus::Scheduled,
    RunStatus::AwaitingApproval,
    RunStatus::Queued,
    RunStatus::Running,
    RunStatus::Canceling,
    RunStatus::Failed,
];

/// Every status a run can be in, in the order a list shows them.
pub const RUN_STATUSES: [&str; 10] = RunStatus::NAMES;

/// [`ACTIVE_RUN_STATUSES`] as a SQL list, for `status IN (...)` in statements built with
/// `concat!` (the planner matches it to the partial index only as literals).
#[macro_export]
macro_rules! active_run_statuses_sql {
    () => {
        "('scheduled', 'awaiting_approval', 'queued', 'running', 'canceling', 'failed')"
    };
}

/// The statuses a run ends in — every status not in [`ACTIVE_RUN_STATUSES`] — as a SQL
/// list, for `status NOT IN (...)`: the same runs as `status IN` the active list, said so
/// that it matches `runs_active_targets` and no other partial index.
#[macro_export]
macro_rules! final_run_statuses_sql {
    () => {
        "('succeeded', 'canceled', 'expired', 'rejected')"
    };
}

impl RunStatus {
    /// Whether a run in this status still holds its user.
    pub fn is_active(self) -> bool {
        match self {
            RunStatus::Scheduled
            | RunStatus::AwaitingApproval
            | RunStatus::Queued
            | RunStatus::Running
            | RunStatus::Canceling
            | RunStatus::Failed => true,
            RunStatus::Succeeded
            | RunStatus::Canceled
            | RunStatus::Expired
            | RunStatus::Rejected => false,
        }
    }

    /// Whether the run has stopped moving: nothing more happens to it unless an operator
    /// acts (a failed run waits for a retry; the others are final). What `runs watch` and
    /// anything else that waits for a run waits for.
    pub fn is_finished(self) -> bool {
        match self {
            RunStatus::Succeeded
            | RunStatus::Failed
            | RunStatus::Canceled
            | RunStatus::Expired
            | RunStatus::Rejected => true,
            RunStatus::Scheduled
            | RunStatus::AwaitingApproval
            | RunStatus::Queued
            | RunStatus::Running
            | RunStatus::Canceling => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_list_is_the_rust_list() {
        let sql: Vec<String> = active_run_statuses_sql!()
            .trim_matches(|c| c == '(' || c == ')')
            .split(", ")
            .map(|s| s.trim_matches('\'').to_string())
            .collect();
        assert_eq!(sql, ACTIVE_RUN_STATUSES.map(RunStatus::as_str));
        let active: Vec<RunStatus> = RunStatus::ALL.into_iter().filter(|s| s.is_active()).collect();
        assert_eq!(active, ACTIVE_RUN_STATUSES);
        let finals: Vec<String> = final_run_statuses_sql!()
            .trim_matches(|c| c == '(' || c == ')')
            .split(", ")
            .map(|s| s.trim_matches('\'').to_string())
            .collect();
        let not_active: Vec<&str> =
            RunStatus::ALL.into_iter().filter(|s| !s.is_active()).map(RunStatus::as_str).collect();
        assert_eq!(finals, not_active);
    }

    #[test]
    fn a_status_reads_back_from_its_word_and_refuses_others() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert!("Running".parse::<RunStatus>().is_err());
    }

    #[test]
    fn a_run_ended_by_an_expiry_or_a_rejection_is_finished() {
        let finished: Vec<RunStatus> =
            RunStatus::ALL.into_iter().filter(|s| s.is_finished()).collect();
        assert_eq!(
            finished,
            [
                RunStatus::Succeeded,
                RunStatus::Failed,
                RunStatus::Canceled,
                RunStatus::Expired,
                RunStatus::Rejected
            ]
        );
    }
}
