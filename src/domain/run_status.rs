//! The statuses a run can be in, and which of them hold the user: one list, used by the
//! Rust rules and spliced into every SQL statement that asks "does this user have an active
//! run?" (the partial unique index `runs_one_active_per_user` counts the same ones; a test
//! reads the index back and compares).

/// Statuses of a run that still holds its user: waiting to start, running, stopping, or
/// failed and not yet retried or canceled. The user has at most one such run.
pub const ACTIVE_RUN_STATUSES: [&str; 6] =
    ["scheduled", "awaiting_approval", "queued", "running", "canceling", "failed"];

/// Every status a run can be in, in the order a list shows them.
pub const RUN_STATUSES: [&str; 10] = [
    "scheduled",
    "awaiting_approval",
    "queued",
    "running",
    "canceling",
    "succeeded",
    "failed",
    "canceled",
    "expired",
    "rejected",
];

/// [`ACTIVE_RUN_STATUSES`] as a SQL list, for `status IN (...)` in statements built with
/// `concat!` (the planner matches it to the partial index only as literals).
#[macro_export]
macro_rules! active_run_statuses_sql {
    () => {
        "('scheduled', 'awaiting_approval', 'queued', 'running', 'canceling', 'failed')"
    };
}

/// Whether a run in `status` still holds its user.
pub fn is_active(status: &str) -> bool {
    ACTIVE_RUN_STATUSES.contains(&status)
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
        assert_eq!(sql, ACTIVE_RUN_STATUSES);
        assert!(ACTIVE_RUN_STATUSES.iter().all(|s| RUN_STATUSES.contains(s)));
    }
}
