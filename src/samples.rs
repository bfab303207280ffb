//! The numbers behind the dashboard's charts. Each process's workers count the step
//! attempts they end (here, in memory: [`Counters`], shared by its executor and sweeper);
//! its sweeper adds them, once a second, into that second's row of
//! `offboard.metric_samples`, with the steps in flight and the Redis queue depth. Several
//! worker processes add into the same rows, so the charts show the whole service, read
//! by any API process; an hour of rows is kept.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use sqlx::PgPool;

use crate::{ledger::samples as ledger, queue::Queues};

/// Upper bounds (milliseconds) of the attempt-duration buckets; the last bucket takes the
/// rest. p95 is read as the upper bound of the bucket it falls in.
pub const DURATION_BOUNDS_MS: [u64; 12] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 30_000];

/// How the attempt of a step ended, as the charts count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    /// Failed; another attempt is scheduled.
    Retry,
    /// Failed for good.
    Dead,
    /// The lease was lost: not counted.
    Lost,
}

/// Attempts ended since the last sample, by how they ended and how long they took.
#[derive(Debug, Default)]
pub struct Counters {
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    buckets: [AtomicU64; DURATION_BOUNDS_MS.len() + 1],
}

impl Counters {
    /// Counts one ended attempt.
    pub fn attempt_ended(&self, ended: Ended, took: Duration) {
        let counter = match ended {
            Ended::Succeeded => &self.succeeded,
            Ended::Retry => &self.retried,
            Ended::Dead => &self.dead,
            Ended::Lost => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        let bucket =
            DURATION_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(DURATION_BOUNDS_MS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// What was counted since the last call (the counters start again from 0).
    fn take(&self) -> ledger::Delta {
        ledger::Delta {
            succeeded: self.succeeded.swap(0, Ordering::Relaxed) as i64,
            retried: self.retried.swap(0, Ordering::Relaxed) as i64,
            dead: self.dead.swap(0, Ordering::Relaxed) as i64,
            buckets: self.buckets.iter().map(|b| b.swap(0, Ordering::Relaxed) as i64).collect(),
        }
    }

    /// Puts counts taken back, when writing them failed (the next sample has them).
    fn give_back(&self, delta: &ledger::Delta) {
        self.succeeded.fetch_add(delta.succeeded as u64, Ordering::Relaxed);
        self.retried.fetch_add(delta.retried as u64, Ordering::Relaxed);
        self.dead.fetch_add(delta.dead as u64, Ordering::Relaxed);
        for (bucket, n) in self.buckets.iter().zip(&delta.buckets) {
            bucket.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

/// Writes this second's sample: the counts since the last one, the steps in flight, the
/// Redis queue depth (null while Redis does not answer); and drops samples older than
/// [`ledger::KEPT`].
pub async fn write(pool: &PgPool, queues: &Queues, counters: &Counters) -> anyhow::Result<()> {
    let depth = queues.step_depth().await.ok().map(|d| d.total() as i64);
    let delta = counters.take();
    if let Err(e) = ledger::add(pool, &delta, depth).await {
        counters.give_back(&delta);
        return Err(e.into());
    }
    ledger::trim(pool).await?;
    Ok(())
}

/// The 95th percentile of summed bucket counts, as the upper bound (ms) of its bucket;
/// `None` without any attempt. The last bucket has no bound: reported as twice the last.
pub fn p95_ms(buckets: &[i64]) -> Option<u64> {
    let total: i64 = buckets.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = (total as f64 * 0.95).ceil() as i64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(
                DURATION_BOUNDS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(DURATION_BOUNDS_MS[DURATION_BOUNDS_MS.len() - 1] * 2),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_is_the_bound_of_the_bucket_it_falls_in() {
        let mut buckets = vec![0i64; DURATION_BOUNDS_MS.len() + 1];
        assert_eq!(p95_ms(&buckets), None);
        buckets[2] = 95; // <= 5 ms
        buckets[7] = 5; // <= 250 ms
        assert_eq!(p95_ms(&buckets), Some(5));
        buckets[7] = 6;
        assert_eq!(p95_ms(&buckets), Some(250));
        buckets[DURATION_BOUNDS_MS.len()] = 1_000;
        assert_eq!(p95_ms(&buckets), Some(60_000));
    }
}
