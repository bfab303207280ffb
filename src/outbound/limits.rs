//! Per-destination limits of one process: at most N calls in flight to one host, and a
//! token bucket per host. Neither ever waits: a call that finds no room is told when to
//! come back, and its step is re-scheduled instead of holding a worker slot. (The breaker,
//! shared by every process, lives in the ledger: `ledger::calls`.)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate, burst, tokens: burst, at: now }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Why a call may not go now, and when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// The host's calls in flight are at the limit.
    InFlight(Duration),
    /// The host's bucket is empty.
    Rate(Duration),
}

impl NoRoom {
    pub fn pause(self) -> Duration {
        match self {
            NoRoom::InFlight(d) | NoRoom::Rate(d) => d,
        }
    }
}

/// How soon a step whose host had no free slot looks again.
const IN_FLIGHT_PAUSE: Duration = Duration::from_millis(200);

struct Host {
    slots: Arc<Semaphore>,
    bucket: Bucket,
}

/// The process' limits, by destination host.
pub struct HostLimits {
    max_in_flight: usize,
    rate: f64,
    burst: u32,
    hosts: Mutex<HashMap<String, Host>>,
}

impl HostLimits {
    pub fn new(max_in_flight: usize, rate: f64, burst: u32) -> Self {
        Self { max_in_flight, rate, burst, hosts: Mutex::new(HashMap::new()) }
    }

    /// A slot for one call to `host` (held until the permit drops) and a token of its
    /// bucket, or when to try again. Never waits.
    pub fn try_acquire(&self, host: &str) -> Result<OwnedSemaphorePermit, NoRoom> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().expect("host limits lock");
        let entry = hosts.entry(host.to_string()).or_insert_with(|| Host {
            slots: Arc::new(Semaphore::new(self.max_in_flight)),
            bucket: Bucket::new(self.rate, self.burst, now),
        });
        let permit = entry
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| NoRoom::InFlight(IN_FLIGHT_PAUSE))?;
        entry.bucket.take(now).map_err(NoRoom::Rate)?;
        Ok(permit)
    }

    /// Calls in flight to each host now.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        let hosts = self.hosts.lock().expect("host limits lock");
        hosts
            .iter()
            .map(|(h, e)| (h.clone(), self.max_in_flight - e.slots.available_permits()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 3, t0);
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(100)).is_err());
        // Never more than the burst saved up.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_host_at_its_in_flight_limit_refuses_without_waiting_and_others_go() {
        let limits = HostLimits::new(2, 1000.0, 1000);
        let a1 = limits.try_acquire("a.example").unwrap();
        let _a2 = limits.try_acquire("a.example").unwrap();
        assert!(matches!(limits.try_acquire("a.example"), Err(NoRoom::InFlight(_))));
        assert!(limits.try_acquire("b.example").is_ok());
        drop(a1);
        assert!(limits.try_acquire("a.example").is_ok());
    }
}
