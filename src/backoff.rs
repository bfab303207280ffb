//! Retry delays: exponential with full jitter, capped. The drawn delay is stored in the
//! ledger as the step's `next_attempt_at`, so the schedule survives restarts; nothing
//! about retries lives in memory or in Redis.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The largest delay after failed attempt `attempt` (1-based): base · 2^(attempt-1),
    /// capped.
    pub fn ceiling(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 30) as u32;
        self.base.saturating_mul(1u32 << exponent).min(self.cap)
    }

    /// A delay drawn uniformly from [0, ceiling] ("full jitter"): retries of many steps that
    /// failed together spread out instead of failing together again.
    pub fn delay(&self, attempt: i32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = rng.random_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64);
        Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn policy() -> Backoff {
        Backoff { base: Duration::from_millis(500), cap: Duration::from_secs(60) }
    }

    #[test]
    fn ceilings_double_until_the_cap() {
        let b = policy();
        assert_eq!(b.ceiling(1), Duration::from_millis(500));
        assert_eq!(b.ceiling(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(4), Duration::from_secs(4));
        assert_eq!(b.ceiling(20), Duration::from_secs(60));
        assert_eq!(b.ceiling(i32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn delays_are_jittered() {
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<_> = (0..20).map(|_| policy().delay(5, &mut rng)).collect();
        assert!(delays.windows(2).any(|w| w[0] != w[1]));
    }

    proptest! {
        #[test]
        fn a_delay_never_exceeds_its_ceiling(attempt in 1i32..100, seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let b = policy();
            prop_assert!(b.delay(attempt, &mut rng) <= b.ceiling(attempt));
            prop_assert!(b.ceiling(attempt) <= b.ceiling(attempt + 1));
        }
    }
}
