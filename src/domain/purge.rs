//! A private-email purge's status (`offboard.scheduled_purges`): scheduled until due, then
//! done (fired by its delayed Redis task or by the sweeper) or canceled by a reactivation.

use super::text_enum::text_enum;

text_enum! {
    pub enum PurgeStatus("purge status") {
        Scheduled = "scheduled",
        Done = "done",
        Canceled = "canceled",
    }
}

text_enum! {
    /// What fired a purge: its delayed Redis task, or the sweeper finding it due.
    pub enum FiredBy("purge trigger") {
        Queue = "queue",
        Sweeper = "sweeper",
    }
}
