//! Calls served, counted per method in atomics of our own and handed to the facade by
//! [`flush`].
//!
//! A served call adds one to its outcome and two to its duration (a count and a sum in
//! its bucket of [`SECONDS_BUCKETS`]), in the calling thread's shard of the method's
//! counters: as the transport's traffic counters, a thread that owns its shard adds with
//! a relaxed load and store, the others atomically into a shared shard (a locked add
//! costs tens of cycles, and a call makes three). The method's
//! counters are found once per call by a short scan of its service's method names, never
//! through a map or a lock. Counts only grow; [`flush`] adds what grew since the last
//! flush to the facade's counters, and each bucket's samples to its histogram with one
//! `record_many` of their mean (so the sum stays exact, and the samples land in the same
//! buckets of a recorder that uses [`SECONDS_BUCKETS`]; another recorder gets means of
//! buckets). A hub flushes whenever its provider publishes (once a second and before
//! each `/metrics` scrape); a member once a second; a method's counters are flushed when
//! they are dropped too.

use super::names;
use cluster_transport::__shards::{self as shards, SHARDS};
use cluster_transport::SECONDS_BUCKETS;
use metrics::{Counter, Histogram};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// How a served call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// Answered.
    Ok = 0,
    /// The handler returned an error.
    Error = 1,
    /// The handler panicked.
    Panicked = 2,
    /// The deadline passed first.
    Timeout = 3,
    /// The caller cancelled it or went away.
    Cancelled = 4,
    /// Refused: too many calls running on that connection.
    Overloaded = 5,
    /// Refused: unknown service or method, or an undecodable request.
    Refused = 6,
}

const CALL_OUTCOMES: [&str; 7] = [
    "ok",
    "error",
    "panicked",
    "timeout",
    "cancelled",
    "overloaded",
    "refused",
];

/// The bounds of [`SECONDS_BUCKETS`] in whole nanoseconds.
const BOUNDS_NS: [u64; SECONDS_BUCKETS.len()] = {
    let mut out = [0; SECONDS_BUCKETS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = (SECONDS_BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    out
};

const BUCKETS: usize = SECONDS_BUCKETS.len() + 1;

/// Seconds from whole nanoseconds (exact for the bounds: `secs(BOUNDS_NS[i])` is
/// `SECONDS_BUCKETS[i]`, and the conversion never crosses a bound).
fn secs(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// One method's counts, and the facade's handles they go to.
pub(crate) struct MethodMetrics {
    /// One per thread shard (see the module's docs).
    shards: Box<[Counts]>,
    /// What the flushes handed over so far, summed over the shards.
    flushed: Mutex<Totals>,
    to: Handles,
}

/// One thread shard's counts of a method since it was registered, alone on its cache
/// lines.
#[derive(Default)]
#[repr(align(128))]
struct Counts {
    outcomes: [AtomicU64; 7],
    /// Calls per duration bucket (the last is above every bound).
    counts: [AtomicU64; BUCKETS],
    /// Their durations' sum per bucket, in nanoseconds.
    nanos: [AtomicU64; BUCKETS],
}

/// Counts summed over the shards.
#[derive(Default)]
struct Totals {
    outcomes: [u64; 7],
    counts: [u64; BUCKETS],
    nanos: [u64; BUCKETS],
}

/// The facade's handles of one method.
struct Handles {
    outcomes: [Counter; 7],
    duration: Histogram,
}

impl MethodMetrics {
    /// A method's counters, flushed by [`flush`] from now on.
    fn registered(service: &'static str, method: &'static str) -> Arc<Self> {
        super::describe();
        let metrics = Arc::new(Self {
            shards: (0..SHARDS).map(|_| Counts::default()).collect(),
            flushed: Mutex::default(),
            to: Handles {
                outcomes: CALL_OUTCOMES.map(|outcome| {
                    metrics::counter!(names::CALLS, "service" => service, "method" => method, "outcome" => outcome)
                }),
                duration: metrics::histogram!(names::CALL_DURATION, "service" => service, "method" => method),
            },
        });
        let mut all = registry().lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|m| m.strong_count() > 0);
        all.push(Arc::downgrade(&metrics));
        metrics
    }

    /// A call that ended with `outcome`; a handler that ran took `elapsed`.
    pub(crate) fn record(&self, outcome: CallOutcome, elapsed: Option<Duration>) {
        let (index, owned) = shards::current();
        // Below SHARDS, as `current` says; the shards are SHARDS long.
        let shard = &self.shards[index];
        shards::add(&shard.outcomes[outcome as usize], owned, 1);
        if let Some(elapsed) = elapsed {
            let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            let bucket = bucket_of(nanos);
            shards::add(&shard.nanos[bucket], owned, nanos);
            shards::add(&shard.counts[bucket], owned, 1);
        }
    }

    /// Hands what was counted since the last flush to the facade.
    fn flush(&self) {
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        let shards = &self.shards;
        for (i, counter) in self.to.outcomes.iter().enumerate() {
            let total = sum(shards, |c| &c.outcomes[i]);
            let n = total.wrapping_sub(std::mem::replace(&mut flushed.outcomes[i], total));
            if n > 0 {
                counter.increment(n);
            }
        }
        for bucket in 0..BUCKETS {
            let calls = sum(shards, |c| &c.counts[bucket]);
            let n = calls.wrapping_sub(flushed.counts[bucket]);
            if n == 0 {
                // Time counted without its call stays for the flush that gets the call.
                continue;
            }
            flushed.counts[bucket] = calls;
            let nanos = sum(shards, |c| &c.nanos[bucket]);
            let total = nanos.wrapping_sub(std::mem::replace(&mut flushed.nanos[bucket], nanos));
            for (value, times) in bucket_samples(bucket, n, total) {
                if times > 0 {
                    self.to.duration.record_many(secs(value), times);
                }
            }
        }
    }
}

impl Drop for MethodMetrics {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One counter summed over the shards (counts wrap, as their differences do).
fn sum(shards: &[Counts], pick: impl Fn(&Counts) -> &AtomicU64) -> u64 {
    let add = |total: u64, shard: &Counts| total.wrapping_add(pick(shard).load(Relaxed));
    shards.iter().fold(0, add)
}

/// The bucket of a call that took `nanos`: the first whose bound is not below it. Most
/// calls answer within the first bound, which is checked before searching (the search's
/// dependent loads cost more than the rest of the counting).
fn bucket_of(nanos: u64) -> usize {
    if nanos <= BOUNDS_NS[0] {
        return 0;
    }
    BOUNDS_NS.partition_point(|bound| *bound < nanos)
}

/// The samples handed over for `n` calls of `total` nanoseconds in `bucket`: their mean
/// rounded down, and one nanosecond more for the remainder, so the sum stays exact. Kept
/// inside the bucket (a call recorded while the flush ran may have its time in this flush
/// and its count in the next).
fn bucket_samples(bucket: usize, n: u64, total: u64) -> [(u64, usize); 2] {
    let low = match bucket.checked_sub(1) {
        Some(below) => BOUNDS_NS[below].saturating_add(1),
        None => 0,
    };
    let high = BOUNDS_NS.get(bucket).copied().unwrap_or(u64::MAX);
    let mean = total / n;
    let (mean, extra) = if (low..=high).contains(&mean) {
        (mean, total % n)
    } else {
        (mean.clamp(low, high), 0)
    };
    let extra = usize::try_from(extra).unwrap_or(0);
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    [(mean, n - extra), (mean.saturating_add(1).min(high), extra)]
}

/// Every method's counters in the process, for [`flush`].
fn registry() -> &'static Mutex<Vec<Weak<MethodMetrics>>> {
    static ALL: Mutex<Vec<Weak<MethodMetrics>>> = Mutex::new(Vec::new());
    &ALL
}

/// Hands every method's counts since the last flush to the facade (any node may call it:
/// each count goes over once).
pub(crate) fn flush() {
    let all: Vec<Arc<MethodMetrics>> = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for metrics in all {
        metrics.flush();
    }
}

/// A method's name and its counters, registered at its first call.
type MethodSlot = (&'static str, OnceLock<Arc<MethodMetrics>>);

/// The counters of one served service's methods, each registered at its first call.
pub(crate) struct ServiceMetrics {
    service: &'static str,
    methods: Box<[MethodSlot]>,
    unknown: OnceLock<Arc<MethodMetrics>>,
}

impl ServiceMetrics {
    pub(crate) fn new(service: &'static str, methods: &'static [&'static str]) -> Self {
        Self {
            service,
            methods: methods.iter().map(|m| (*m, OnceLock::new())).collect(),
            unknown: OnceLock::new(),
        }
    }

    /// The counters of `method` (a short scan of the service's own method names); a name
    /// the service does not have counts as `unknown`.
    pub(crate) fn method(&self, method: &str) -> &Arc<MethodMetrics> {
        match self.methods.iter().find(|(name, _)| *name == method) {
            Some((name, slot)) => {
                slot.get_or_init(|| MethodMetrics::registered(self.service, name))
            }
            None => self
                .unknown
                .get_or_init(|| MethodMetrics::registered(self.service, "unknown")),
        }
    }
}

/// The counters of calls to a service the node does not serve.
pub(crate) fn unknown_service() -> &'static MethodMetrics {
    static UNKNOWN: OnceLock<Arc<MethodMetrics>> = OnceLock::new();
    UNKNOWN.get_or_init(|| MethodMetrics::registered("unknown", "unknown"))
}

/// The counters of calls a hub passed on to a member or another hub (it does not serve
/// the service itself).
pub(crate) fn forwarded() -> &'static Arc<MethodMetrics> {
    static FORWARDED: OnceLock<Arc<MethodMetrics>> = OnceLock::new();
    FORWARDED.get_or_init(|| MethodMetrics::registered("forwarded", "forwarded"))
}

/// Flushes every method's counters once a second until `stop` (a member's; a hub's go
/// with its provider's publisher).
pub(crate) async fn flush_every_second(stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => flush(),
        }
    }
    flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    /// Keeps every histogram sample, and counter totals, for one test.
    #[derive(Default)]
    struct Samples {
        recorded: Mutex<Vec<(String, f64, usize)>>,
        counters: Mutex<Vec<(String, Arc<AtomicU64>)>>,
    }

    struct SampleFn(Arc<Samples>, String);

    impl HistogramFn for SampleFn {
        fn record(&self, value: f64) {
            self.record_many(value, 1);
        }
        fn record_many(&self, value: f64, count: usize) {
            let mut recorded = self.0.recorded.lock().unwrap();
            recorded.push((self.1.clone(), value, count));
        }
    }

    struct Test(Arc<Samples>);

    fn render(key: &Key) -> String {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for Test {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let count = Arc::new(AtomicU64::new(0));
            let mut counters = self.0.counters.lock().unwrap();
            counters.push((render(key), Arc::clone(&count)));
            Counter::from_arc(count)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(SampleFn(Arc::clone(&self.0), render(key))))
        }
    }

    fn micros(n: u64) -> Option<Duration> {
        Some(Duration::from_micros(n))
    }

    #[test]
    fn bounds_in_nanoseconds_convert_back_exactly() {
        for (ns, bound) in BOUNDS_NS.iter().zip(SECONDS_BUCKETS) {
            assert_eq!(secs(*ns), bound);
            assert!(secs(ns + 1) > bound);
        }
    }

    #[test]
    fn counts_reach_the_recorder_only_at_a_flush_and_exactly_once() {
        let samples = Arc::new(Samples::default());
        let recorder = Test(Arc::clone(&samples));
        let echo =
            metrics::with_local_recorder(&recorder, || ServiceMetrics::new("Echo", &["echo"]));
        let method = metrics::with_local_recorder(&recorder, || Arc::clone(echo.method("echo")));
        method.record(CallOutcome::Ok, micros(50)); // first bucket (<= 100 µs)
        method.record(CallOutcome::Ok, micros(120)); // (100, 250] µs
        method.record(CallOutcome::Ok, Some(Duration::from_nanos(120_001)));
        method.record(CallOutcome::Error, micros(130));
        method.record(CallOutcome::Overloaded, None);
        let total = |name: &str| {
            let counters = samples.counters.lock().unwrap();
            let found = counters.iter().find(|(key, _)| key == name);
            found.map(|(_, count)| count.load(Relaxed))
        };
        let ok = "cluster_rpc_calls_total{method=echo,outcome=ok,service=Echo}";
        let overloaded = "cluster_rpc_calls_total{method=echo,outcome=overloaded,service=Echo}";
        assert_eq!(total(ok), Some(0), "nothing before the flush");
        assert!(samples.recorded.lock().unwrap().is_empty());

        method.flush();
        assert_eq!(total(ok), Some(3));
        assert_eq!(total(overloaded), Some(1));
        let recorded = samples.recorded.lock().unwrap().clone();
        let duration = "cluster_rpc_call_duration_seconds{method=echo,service=Echo}";
        assert!(recorded.iter().all(|(key, _, _)| key == duration));
        let count: usize = recorded.iter().map(|(_, _, n)| n).sum();
        assert_eq!(count, 4, "{recorded:?}");
        let sum: f64 = recorded.iter().map(|(_, v, n)| v * *n as f64).sum();
        assert!((sum - 420.001e-6).abs() < 1e-12, "{sum} from {recorded:?}");
        // Each sample stays in its bucket: one at or under 100 µs, three in (100, 250].
        let first: usize = recorded
            .iter()
            .filter(|(_, v, n)| *v <= 0.0001 && *n > 0)
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(first, 1, "{recorded:?}");
        assert!(recorded
            .iter()
            .all(|(_, v, n)| *n == 0 || *v <= 0.0001 || (*v > 0.0001 && *v <= 0.00025)));

        // A second flush has nothing new; every registered method is flushed; a dropped
        // method hands over what is left.
        method.flush();
        assert_eq!(total(ok), Some(3));
        method.record(CallOutcome::Ok, micros(10));
        flush();
        assert_eq!(total(ok), Some(4));
        method.record(CallOutcome::Ok, micros(10));
        drop(method);
        drop(echo);
        assert_eq!(total(ok), Some(5));
    }

    #[test]
    fn buckets_hold_durations_up_to_their_bound() {
        for nanos in BOUNDS_NS
            .iter()
            .flat_map(|b| [0, 1, b - 1, *b, b + 1, u64::MAX])
        {
            let searched = BOUNDS_NS.partition_point(|bound| *bound < nanos);
            assert_eq!(bucket_of(nanos), searched, "{nanos} ns");
        }
        assert_eq!(bucket_of(100_000), 0);
        assert_eq!(bucket_of(100_001), 1);
        assert_eq!(bucket_of(u64::MAX), SECONDS_BUCKETS.len());
    }

    #[test]
    fn a_flush_racing_a_call_keeps_samples_in_their_bucket() {
        // Time counted without its call (it comes in the next flush) stays in the bucket.
        assert_eq!(bucket_samples(1, 1, 900_000), [(250_000, 1), (250_000, 0)]);
        // A call counted without its time: the lowest value of the bucket.
        assert_eq!(bucket_samples(1, 2, 120_000), [(100_001, 2), (100_002, 0)]);
        // Above every bound: no upper limit.
        assert_eq!(
            bucket_samples(17, 2, 61_000_000_001),
            [(30_500_000_000, 1), (30_500_000_001, 1)]
        );
        assert_eq!(bucket_samples(0, 3, 10), [(3, 2), (4, 1)]);
    }
}
