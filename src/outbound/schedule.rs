//! When the next attempt of a failed call goes: the retry schedule's pause for this
//! attempt with jitter (so receivers that fail together are not retried together), or the
//! receiver's `Retry-After` when it asked for longer.

use std::time::Duration;

use rand::Rng;

/// The pause before attempt `attempts + 1`, after `attempts` failed ones; `None` when the
/// schedule is used up. Jitter draws within ±10 % of the scheduled pause.
pub fn next_pause(
    schedule: &[Duration],
    attempts: i32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Option<Duration> {
    let scheduled = *schedule.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
    let jittered = scheduled.mul_f64(rng.random_range(0.9..=1.1));
    Some(retry_after.map_or(jittered, |asked| asked.max(jittered)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn standard() -> Vec<Duration> {
        crate::config::WebhookSettings::default().retry_schedule
    }

    #[test]
    fn the_schedule_runs_out_after_its_last_pause() {
        let mut rng = rand::rng();
        let s = standard();
        assert!(next_pause(&s, 0, None, &mut rng).is_none());
        assert!(next_pause(&s, 9, None, &mut rng).is_some());
        assert!(next_pause(&s, 10, None, &mut rng).is_none());
    }

    #[test]
    fn retry_after_is_honoured_when_longer() {
        let mut rng = rand::rng();
        let s = vec![Duration::from_secs(5)];
        let p = next_pause(&s, 1, Some(Duration::from_secs(60)), &mut rng).unwrap();
        assert_eq!(p, Duration::from_secs(60));
    }

    proptest! {
        #[test]
        fn pauses_stay_within_ten_percent_of_the_schedule(attempt in 1i32..=9) {
            let s = standard();
            let p = next_pause(&s, attempt, None, &mut rand::rng()).unwrap();
            let planned = s[attempt as usize - 1];
            prop_assert!(p >= planned.mul_f64(0.9) && p <= planned.mul_f64(1.1));
        }
    }
}
