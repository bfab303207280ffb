//! What a step answers: one batch committed and more to do, or finished with its counts.

use serde_json::Value;

/// What one call of a step achieved.
#[derive(Debug)]
pub enum Progress {
    /// One batch committed; call again to continue from `cursor`.
    Batch { done: i64, total: i64, cursor: Value },
    /// The step is complete.
    Finished(Finished),
}

#[derive(Debug, Default)]
pub struct Finished {
    /// Counts of what changed, shown in the receipt. Ids only, never names or emails.
    pub counts: Value,
    pub done: i64,
    pub total: i64,
    /// Work that must follow the commit (none today: a purge is pushed to Redis by the
    /// dispatcher when it comes due, not when it is scheduled).
    pub after_commit: Vec<AfterCommit>,
}

impl Finished {
    pub fn with_counts(counts: Value) -> Progress {
        Progress::Finished(Finished { counts, done: 1, total: 1, after_commit: Vec::new() })
    }
}

/// What a step needs done after its transaction commits (a remote call that must not run
/// inside it). No step needs one today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCommit {}
