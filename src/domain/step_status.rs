//! The statuses a step can be in (`offboard.steps.status`): pending (waiting on its
//! dependencies or its run's start) → ready → queued (handed to Redis) → running (leased by
//! a worker) → succeeded | skipped; a retryable failure returns to ready with a later
//! attempt time, a permanent one (or the last attempt) ends in dead; a cancel ends what has
//! not started in canceled.

use super::text_enum::text_enum;

text_enum! {
    pub enum StepStatus("step status") {
        /// Waits on dependencies, or on its run's start or approval.
        Pending = "pending",
        /// May be handed to Redis from its `next_attempt_at` on.
        Ready = "ready",
        /// Handed to Redis; not yet claimed.
        Queued = "queued",
        /// Leased by a worker.
        Running = "running",
        /// Done.
        Succeeded = "succeeded",
        /// Nothing to do for this user (counts as done).
        Skipped = "skipped",
        /// Failed for good, or out of attempts; an operator retry puts it back in line.
        Dead = "dead",
        /// Stopped by a cancel before it finished.
        Canceled = "canceled",
    }
}

impl StepStatus {
    /// Whether the step is done for its run's sake (its dependants may start).
    pub fn is_done(self) -> bool {
        matches!(self, StepStatus::Succeeded | StepStatus::Skipped)
    }
}
