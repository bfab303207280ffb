//! Per-destination limits of one process: at most N calls in flight to one host, shared
//! fairly between companies, and a token bucket per host. Neither ever waits: a call that
//! finds no room is told when to come back, and its step is re-scheduled instead of
//! holding a worker slot. (The breaker, shared by every process, lives in the ledger:
//! `ledger::calls`.)
//!
//! **Fair share of a host's slots.** A quarter of a host's slots (at least one, when it
//! has two) is a reserve for companies that hold none of them: a company with no call in
//! flight to the host takes any free slot; one that holds some takes another only while
//! the reserve stays free after it, and only below its share of the rest (the slots
//! outside the reserve divided among the companies holding some). So a lone layoff uses
//! up to three quarters of a host, a company that turns up finds a free slot at once
//! however many layoffs hold the host, and as a layoff's calls end their slots go to the
//! others until each holds its share.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

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
    /// The host's calls in flight are at the limit, or at the company's share of it.
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
    /// Slots held, in all and by company.
    held: usize,
    by_company: HashMap<i64, usize>,
    bucket: Bucket,
}

impl Host {
    /// Whether `company` may take one more slot of `max` (see the module's doc).
    fn admits(&self, company: i64, max: usize) -> bool {
        if self.held >= max {
            return false;
        }
        let mine = self.by_company.get(&company).copied().unwrap_or(0);
        if mine == 0 {
            return true;
        }
        let reserve = if max >= 2 { (max / 4).max(1) } else { 0 };
        let share = ((max - reserve) / self.by_company.len()).max(1);
        max - self.held > reserve && mine < share
    }
}

type Hosts = Arc<Mutex<HashMap<String, Host>>>;

/// The process' limits, by destination host.
pub struct HostLimits {
    max_in_flight: usize,
    rate: f64,
    burst: u32,
    hosts: Hosts,
}

/// One of a host's in-flight slots, held by a company until dropped.
pub struct Slot {
    hosts: Hosts,
    host: String,
    company: i64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut hosts = self.hosts.lock().expect("host limits lock");
        if let Some(h) = hosts.get_mut(&self.host) {
            h.held -= 1;
            if let Some(n) = h.by_company.get_mut(&self.company) {
                *n -= 1;
                if *n == 0 {
                    h.by_company.remove(&self.company);
                }
            }
        }
    }
}

impl HostLimits {
    pub fn new(max_in_flight: usize, rate: f64, burst: u32) -> Self {
        Self { max_in_flight, rate, burst, hosts: Arc::default() }
    }

    fn with_host<T>(&self, host: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut hosts = self.hosts.lock().expect("host limits lock");
        let entry = hosts.entry(host.to_string()).or_insert_with(|| Host {
            held: 0,
            by_company: HashMap::new(),
            bucket: Bucket::new(self.rate, self.burst, Instant::now()),
        });
        f(entry)
    }

    /// Up to `wanted` of `host`'s slots for `company`, as many as its share allows now (held
    /// until each drops). Never waits: none at all is `NoRoom::InFlight`.
    pub fn try_slots(&self, host: &str, company: i64, wanted: usize) -> Result<Vec<Slot>, NoRoom> {
        let max = self.max_in_flight;
        let granted = self.with_host(host, |h| {
            let mut granted = 0;
            while granted < wanted && h.admits(company, max) {
                h.held += 1;
                *h.by_company.entry(company).or_default() += 1;
                granted += 1;
            }
            granted
        });
        if granted == 0 {
            return Err(NoRoom::InFlight(IN_FLIGHT_PAUSE));
        }
        Ok((0..granted)
            .map(|_| Slot { hosts: self.hosts.clone(), host: host.to_string(), company })
            .collect())
    }

    /// A token of `host`'s bucket for one call, or when to try again. Never waits.
    pub fn try_token(&self, host: &str) -> Result<(), NoRoom> {
        self.with_host(host, |h| h.bucket.take(Instant::now())).map_err(NoRoom::Rate)
    }

    /// Calls in flight to each host now.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        let hosts = self.hosts.lock().expect("host limits lock");
        hosts.iter().map(|(h, e)| (h.clone(), e.held)).collect()
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
        let a = limits.try_slots("a.example", 1, 1).unwrap();
        let b = limits.try_slots("a.example", 2, 1).unwrap();
        assert!(matches!(limits.try_slots("a.example", 3, 1), Err(NoRoom::InFlight(_))));
        // Of two slots, one is the reserve: a lone company takes one.
        assert_eq!(limits.try_slots("b.example", 1, 5).unwrap().len(), 1);
        drop((a, b));
        assert_eq!(limits.try_slots("a.example", 3, 5).unwrap().len(), 1);
        assert_eq!(limits.in_flight().iter().map(|(_, n)| n).sum::<usize>(), 0);
    }

    #[test]
    fn a_lone_company_leaves_a_reserve_that_newcomers_take_at_once() {
        let limits = HostLimits::new(8, 1000.0, 1000);
        // A layoff alone takes three quarters of the host, however many calls it has.
        let mut layoff = limits.try_slots("google", 1, 100).unwrap();
        assert_eq!(layoff.len(), 6);
        assert!(limits.try_slots("google", 1, 1).is_err());
        // A small company finds a slot of the reserve free, and so does a third.
        let small = limits.try_slots("google", 2, 3).unwrap();
        assert_eq!(small.len(), 1);
        let third = limits.try_slots("google", 3, 3).unwrap();
        assert_eq!(third.len(), 1);
        assert!(limits.try_slots("google", 4, 1).is_err(), "the host is full");
        drop(third);
        // As the layoff's calls end, their slots go to the others up to their share (the
        // 6 slots outside the reserve, halved), not back to the layoff.
        layoff.truncate(3);
        assert!(limits.try_slots("google", 1, 1).is_err(), "the layoff holds its share");
        let more = limits.try_slots("google", 2, 5).unwrap();
        assert_eq!(more.len(), 2, "the small company grows to its share");
        drop((more, small));
        // Alone again, the layoff grows back up to the reserve.
        assert_eq!(limits.try_slots("google", 1, 100).unwrap().len(), 3);
    }

    #[test]
    fn two_layoffs_leave_a_third_company_a_slot() {
        let limits = HostLimits::new(8, 1000.0, 1000);
        let a = limits.try_slots("h", 1, 100).unwrap();
        let b = limits.try_slots("h", 2, 100).unwrap();
        assert_eq!((a.len(), b.len()), (6, 1));
        assert_eq!(limits.try_slots("h", 3, 100).unwrap().len(), 1);
    }

    #[test]
    fn a_host_of_one_slot_serves_whoever_comes_first() {
        let limits = HostLimits::new(1, 1000.0, 1000);
        let a = limits.try_slots("h", 1, 3).unwrap();
        assert_eq!(a.len(), 1);
        assert!(limits.try_slots("h", 2, 1).is_err());
        drop(a);
        assert_eq!(limits.try_slots("h", 2, 1).unwrap().len(), 1);
    }
}
