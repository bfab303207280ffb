//! The audit export's rows (`GET /v1/companies/{id}/audit`): a run, or one entry of a
//! run's history.

use super::text_enum::text_enum;

text_enum! {
    /// What one row of the audit export is.
    pub enum AuditRecord("audit record") {
        /// A run, with its counts per step and items per recipient.
        Run = "run",
        /// One entry of a run's history (`offboard.run_events`).
        Event = "event",
    }
}
