//! The gauges read from the ledger (runs and steps by status, purges, breakers) and Redis
//! (queue depths): one set of counts per process per `OFFBOARD_STATS_MAX_AGE`. Every
//! status of a run or a step has its series, zero or not.

use std::time::{Duration, Instant};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::{
    domain::{BreakerState, RunStatus, StepStatus},
    queue::Queues,
};

/// Counts read from the ledger and Redis, shared by every process.
#[derive(Clone, Debug, Default)]
pub struct LedgerCounts {
    pub runs: Vec<(RunStatus, i64)>,
    pub steps: Vec<(StepStatus, i64)>,
    /// (due and not fired, scheduled, done)
    pub purges: (i64, i64, i64),
    pub step_queue_depth: Option<u64>,
    pub purge_queue_depth: Option<u64>,
    /// Breakers of destination hosts: (host, state).
    pub breakers: Vec<(String, BreakerState)>,
}

impl LedgerCounts {
    async fn read(pool: &PgPool, queues: &Queues) -> Result<Self, sqlx::Error> {
        let runs = sqlx::query_as("SELECT status, count(*) FROM offboard.runs GROUP BY status")
            .fetch_all(pool)
            .await?;
        let steps = crate::ledger::steps::counts_by_status(pool).await?;
        let purges = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'scheduled' AND due_at <= now()),
                    count(*) FILTER (WHERE status = 'scheduled'),
                    count(*) FILTER (WHERE status = 'done')
             FROM offboard.scheduled_purges",
        )
        .fetch_one(pool)
        .await?;
        let breakers = crate::ledger::calls::breakers(pool)
            .await?
            .into_iter()
            .map(|b| (b.host, b.state))
            .collect();
        Ok(Self {
            runs,
            steps,
            purges,
            breakers,
            step_queue_depth: queues.step_depth().await.ok().map(|d| d.total()),
            purge_queue_depth: queues.purge_depth().await.ok().map(|d| d.total()),
        })
    }

    fn count<S: PartialEq>(rows: &[(S, i64)], status: S) -> i64 {
        rows.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n)
    }

    /// The gauges as a registry of their own (encoded before the process' counters).
    pub(super) fn registry(&self) -> Registry {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Status {
            status: &'static str,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct State {
            state: &'static str,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Queue {
            queue: &'static str,
        }
        let mut registry = Registry::default();
        let runs = Family::<Status, Gauge>::default();
        for status in RunStatus::ALL {
            runs.get_or_create(&Status { status: status.as_str() })
                .set(Self::count(&self.runs, status));
        }
        registry.register("offboard_runs", "Runs by status", runs);
        let steps = Family::<Status, Gauge>::default();
        for status in StepStatus::ALL {
            steps
                .get_or_create(&Status { status: status.as_str() })
                .set(Self::count(&self.steps, status));
        }
        registry.register("offboard_steps", "Steps by status", steps);
        let dead = Gauge::<i64>::default();
        dead.set(Self::count(&self.steps, StepStatus::Dead));
        registry.register(
            "offboard_dead_steps",
            "Steps out of attempts, waiting for an operator",
            dead,
        );
        let purges = Family::<State, Gauge>::default();
        let (due, scheduled, done) = self.purges;
        for (state, n) in [("due", due), ("scheduled", scheduled), ("done", done)] {
            purges.get_or_create(&State { state }).set(n);
        }
        registry.register("offboard_purges", "Private-email purges by state", purges);
        let depth = Family::<Queue, Gauge>::default();
        for (queue, n) in [("steps", self.step_queue_depth), ("purges", self.purge_queue_depth)] {
            if let Some(n) = n {
                depth.get_or_create(&Queue { queue }).set(n as i64);
            }
        }
        registry.register("offboard_queue_depth", "Tasks held in Redis by queue", depth);
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Breaker {
            destination: String,
            state: &'static str,
        }
        let breakers = Family::<Breaker, Gauge>::default();
        for (host, state) in &self.breakers {
            for s in BreakerState::ALL {
                breakers
                    .get_or_create(&Breaker { destination: host.clone(), state: s.as_str() })
                    .set(i64::from(*state == s));
            }
        }
        registry.register(
            "offboard_outbound_breaker",
            "Breaker of each destination host outside calls reached: 1 for its state",
            breakers,
        );
        registry
    }
}

/// The ledger gauges of one process (one database), read at most once per `max_age`.
#[derive(Debug)]
pub struct LedgerSnapshot {
    max_age: Duration,
    taken: Mutex<Option<(Instant, LedgerCounts)>>,
}

impl LedgerSnapshot {
    pub fn new(max_age: Duration) -> Self {
        Self { max_age, taken: Mutex::new(None) }
    }

    /// The counts, read anew only when the last read is older than `max_age`. Concurrent
    /// scrapes wait for one read instead of each running their own.
    pub async fn get(&self, pool: &PgPool, queues: &Queues) -> Result<LedgerCounts, sqlx::Error> {
        let mut taken = self.taken.lock().await;
        if let Some((at, counts)) = taken.as_ref()
            && at.elapsed() < self.max_age
        {
            return Ok(counts.clone());
        }
        let counts = LedgerCounts::read(pool, queues).await?;
        *taken = Some((Instant::now(), counts.clone()));
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_status_has_its_series_waiting_and_final_ones_too() {
        let counts = LedgerCounts {
            runs: vec![(RunStatus::AwaitingApproval, 2), (RunStatus::Rejected, 1)],
            ..LedgerCounts::default()
        };
        let out = super::super::render(&counts);
        assert!(out.contains("offboard_runs{status=\"awaiting_approval\"} 2"), "{out}");
        assert!(out.contains("offboard_runs{status=\"rejected\"} 1"), "{out}");
        for status in RunStatus::NAMES {
            assert!(out.contains(&format!("offboard_runs{{status=\"{status}\"}}")), "{status}");
        }
    }
}
