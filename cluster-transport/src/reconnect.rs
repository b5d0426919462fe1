//! How long a consumer waits before each reconnect attempt: a function of the attempt
//! number, as async-nats' `reconnect_delay_callback_default` is.

use crate::options::{Backoff, ReconnectOptions};
use std::time::Duration;

impl ReconnectOptions {
    /// The longest wait before attempt `attempt` (1 for the first attempt after a drop):
    /// `interval` with [`Backoff::Fixed`]; `min(max_interval, interval x 2^(attempt-1))`
    /// with [`Backoff::Exponential`].
    pub fn max_delay(&self, attempt: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed => self.interval,
            Backoff::Exponential => {
                let doublings = attempt.saturating_sub(1).min(31);
                self.interval
                    .saturating_mul(1 << doublings)
                    .min(self.max_interval)
            }
        }
    }

    /// The wait before attempt `attempt`: [`max_delay`](Self::max_delay) with
    /// [`Backoff::Fixed`], a uniformly random time in `0..=max_delay` with
    /// [`Backoff::Exponential`] (full jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        jittered(self, attempt, rand::random::<f64>())
    }
}

/// The wait before `attempt` for a random `fraction` in `0.0..1.0`.
fn jittered(options: &ReconnectOptions, attempt: u32, fraction: f64) -> Duration {
    let max = options.max_delay(attempt);
    match options.backoff {
        Backoff::Fixed => max,
        // Rounded through f64: never past the ceiling, and no panic near Duration::MAX.
        Backoff::Exponential => {
            Duration::try_from_secs_f64(max.as_secs_f64() * fraction.clamp(0.0, 1.0))
                .map_or(max, |d| d.min(max))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exponential(interval_ms: u64, max_ms: u64) -> ReconnectOptions {
        ReconnectOptions {
            interval: Duration::from_millis(interval_ms),
            backoff: Backoff::Exponential,
            max_interval: Duration::from_millis(max_ms),
            ..ReconnectOptions::default()
        }
    }

    #[test]
    fn fixed_is_the_seed_interval_every_time() {
        let fixed = ReconnectOptions::default();
        for attempt in [0, 1, 2, 10, u32::MAX] {
            assert_eq!(fixed.delay(attempt), Duration::from_secs(1));
        }
    }

    #[test]
    fn the_ceiling_doubles_per_attempt_up_to_the_maximum() {
        let o = exponential(100, 5_000);
        let ceilings: Vec<u128> = (0..=8).map(|n| o.max_delay(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // Huge attempt numbers and intervals saturate instead of overflowing.
        assert_eq!(o.max_delay(u32::MAX), Duration::from_millis(5_000));
        let huge = exponential(u64::MAX, u64::MAX);
        assert_eq!(huge.max_delay(40), Duration::from_millis(u64::MAX));
        let most = ReconnectOptions {
            interval: Duration::MAX,
            max_interval: Duration::MAX,
            ..huge
        };
        assert_eq!(jittered(&most, 2, 1.0), Duration::MAX);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let o = exponential(100, 5_000);
        assert_eq!(jittered(&o, 3, 0.0), Duration::ZERO);
        assert_eq!(jittered(&o, 3, 0.5), Duration::from_millis(200));
        assert_eq!(jittered(&o, 3, 1.0), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..1000).map(|_| o.delay(4)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(800)));
        let below_half = waits
            .iter()
            .filter(|w| **w < Duration::from_millis(400))
            .count();
        assert!(
            (350..=650).contains(&below_half),
            "{below_half} of 1000 below half"
        );
    }
}
