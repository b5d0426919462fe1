//! The admin page's memory: once a second, the hub's counters become rates, kept for the
//! last [`HISTORY_SECONDS`] for the charts.

use super::view::{History, Rates, HISTORY_SECONDS};
use std::collections::VecDeque;
use std::time::Instant;

/// Counters read at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    pub(crate) at: Instant,
    pub(crate) messages_in: u64,
    pub(crate) messages_out: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) jobs_completed: u64,
    pub(crate) jobs_failed: u64,
}

/// Rates between readings, newest last.
#[derive(Debug)]
pub(crate) struct Sampler {
    started: Instant,
    last: Option<Reading>,
    rates: VecDeque<Rates>,
}

impl Sampler {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            last: None,
            rates: VecDeque::with_capacity(HISTORY_SECONDS),
        }
    }

    /// Adds the rates since the previous reading.
    pub(crate) fn record(&mut self, now: Reading) {
        if let Some(last) = self.last {
            let secs = now.at.saturating_duration_since(last.at).as_secs_f64();
            if secs > 0.0 {
                let rate = |now: u64, last: u64| now.saturating_sub(last) as f64 / secs;
                if self.rates.len() == HISTORY_SECONDS {
                    self.rates.pop_front();
                }
                self.rates.push_back(Rates {
                    messages_in: rate(now.messages_in, last.messages_in),
                    messages_out: rate(now.messages_out, last.messages_out),
                    bytes_in: rate(now.bytes_in, last.bytes_in),
                    bytes_out: rate(now.bytes_out, last.bytes_out),
                    jobs_completed: rate(now.jobs_completed, last.jobs_completed),
                    jobs_failed: rate(now.jobs_failed, last.jobs_failed),
                });
            }
        }
        self.last = Some(now);
    }

    /// The latest rates (zero before two readings).
    pub(crate) fn current(&self) -> Rates {
        self.rates.back().copied().unwrap_or_default()
    }

    /// Seconds since the sampler started.
    pub(crate) fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Every rate kept, oldest first.
    pub(crate) fn history(&self) -> History {
        let series = |f: fn(&Rates) -> f64| self.rates.iter().map(f).collect();
        History {
            messages_in: series(|r| r.messages_in),
            messages_out: series(|r| r.messages_out),
            jobs_completed: series(|r| r.jobs_completed),
            jobs_failed: series(|r| r.jobs_failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reading(at: Instant, n: u64) -> Reading {
        Reading {
            at,
            messages_in: n * 10,
            messages_out: n,
            bytes_in: n * 100,
            bytes_out: 0,
            jobs_completed: n * 2,
            jobs_failed: 0,
        }
    }

    #[test]
    fn rates_per_second_bounded_history() {
        let mut sampler = Sampler::new();
        let t0 = Instant::now();
        sampler.record(reading(t0, 0));
        assert_eq!(sampler.current(), Rates::default());
        sampler.record(reading(t0 + Duration::from_secs(2), 4));
        let rates = sampler.current();
        assert_eq!(rates.messages_in, 20.0);
        assert_eq!(rates.messages_out, 2.0);
        assert_eq!(rates.jobs_completed, 4.0);
        // Counters never go backwards into negative rates.
        sampler.record(reading(t0 + Duration::from_secs(3), 1));
        assert_eq!(sampler.current().messages_in, 0.0);
        for i in 0..2 * HISTORY_SECONDS as u64 {
            sampler.record(reading(t0 + Duration::from_secs(4 + i), i));
        }
        let history = sampler.history();
        assert_eq!(history.messages_in.len(), HISTORY_SECONDS);
        assert_eq!(history.jobs_completed.last(), Some(&2.0));
    }
}
