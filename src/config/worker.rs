//! How workers take and run steps, the database's time limits, and fault drills.

use std::time::Duration;

use super::PURGE_GRACE;

/// How workers take and run steps.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Tasks one worker process runs at once (a task: one step, or a run's ready steps).
    pub concurrency: usize,
    /// Steps handed to Redis (queued) or running, across all companies.
    pub max_in_flight: i64,
    /// Steps in flight for one company, so one tenant's layoff cannot starve another.
    pub max_in_flight_per_company: i64,
    /// How long a worker's claim on a step lasts without renewal.
    pub lease: Duration,
    /// A queued step not claimed within this time is pushed to Redis again (outbox).
    pub redeliver_after: Duration,
    /// Attempts before a step is dead (a lease that expires counts as one).
    pub max_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How often an idle worker looks for work in Redis.
    pub poll_interval: Duration,
    /// How often the dispatcher looks for ready steps without being nudged.
    pub dispatch_interval: Duration,
    /// Running steps get this long to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// PostgreSQL connections of a process's workers (their own pool, beside the API's).
    pub db_pool_size: u32,
    /// Runs one transaction of a bulk retry or cancel acts on.
    pub bulk_chunk: i64,
    /// The pause between two chunks of a bulk action, so steps keep running beside it.
    pub bulk_pause: Duration,
    /// A purge is the purge queue's to fire until this long after it was due; then the
    /// sweeper fires it itself (its Redis task was lost).
    pub purge_grace: Duration,
    /// The deadline of one attempt of a step (every batch of it): past it the attempt
    /// fails with `timeout` and is retried with backoff, and its lease is no longer renewed.
    pub step_timeout: Duration,
}

/// Time limits set on every PostgreSQL connection of both pools (sent with the connection's
/// start-up, so they cost no statement): a statement, a lock wait, a transaction left idle
/// never run past them; the server's TCP keepalive finds a peer that vanished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbTimeouts {
    /// `statement_timeout`.
    pub statement: Duration,
    /// `lock_timeout`.
    pub lock: Duration,
    /// `idle_in_transaction_session_timeout`.
    pub idle_in_transaction: Duration,
    /// `tcp_keepalives_idle` (probes every tenth of it after, 3 of them).
    pub keepalive_idle: Duration,
}

impl Default for DbTimeouts {
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(60),
            lock: Duration::from_secs(10),
            idle_in_transaction: Duration::from_secs(60),
            keepalive_idle: Duration::from_secs(30),
        }
    }
}

/// What steps need to know beyond the run.
#[derive(Clone, Debug)]
pub struct StepSettings {
    /// Rows one reassignment transaction may touch.
    pub reassign_batch: i64,
    /// Private emails are purged this long after deactivation.
    pub private_email_retention: Duration,
}

/// What a fault drill injects into a named step (`OFFBOARD_FAULTS`): plain data, turned into
/// live faults by the engine's `faults` module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    pub step: String,
    pub kind: FaultKind,
    pub times: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Retryable,
    Permanent,
    /// Abort the whole process after the claim: a step that kills its worker.
    Crash,
}

impl FaultSpec {
    /// `step=kind[*n],...` with kind `retryable`, `permanent` or `crash`, e.g.
    /// `stop_syncs=permanent,reassign_deals=retryable*3`.
    pub fn parse(spec: &str) -> Result<Vec<Self>, String> {
        let mut specs = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (step, rest) =
                entry.split_once('=').ok_or_else(|| format!("{entry:?}: expected step=kind"))?;
            let (kind, times) = match rest.split_once('*') {
                Some((kind, n)) => {
                    (kind, n.parse::<usize>().map_err(|_| format!("{entry:?}: bad count"))?)
                }
                None => (rest, 1),
            };
            let kind = match kind {
                "retryable" => FaultKind::Retryable,
                "permanent" => FaultKind::Permanent,
                "crash" => FaultKind::Crash,
                other => return Err(format!("{entry:?}: unknown fault kind {other:?}")),
            };
            specs.push(Self { step: step.to_string(), kind, times });
        }
        Ok(specs)
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            max_in_flight: 1024,
            max_in_flight_per_company: 48,
            lease: Duration::from_secs(10),
            redeliver_after: Duration::from_secs(10),
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            poll_interval: Duration::from_millis(50),
            dispatch_interval: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(20),
            db_pool_size: 16 + 8,
            bulk_chunk: 100,
            bulk_pause: Duration::from_millis(20),
            purge_grace: PURGE_GRACE,
            step_timeout: Duration::from_secs(600),
        }
    }
}

impl Default for StepSettings {
    fn default() -> Self {
        Self { reassign_batch: 5_000, private_email_retention: Duration::from_secs(30 * 24 * 3600) }
    }
}
