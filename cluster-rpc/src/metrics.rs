//! The typed layer's metrics through the [`metrics`] facade: calls served, pub/sub, the
//! job queue. Every metric, its type, labels and meaning are in the README's table.
//!
//! Handles are resolved once and kept, never looked up per message: a method's at its
//! first call, pub/sub's and the queue's when the hub starts, a job name's the first time
//! a job of that name finishes. Calls served are counted in atomics of our own and handed
//! to the facade at most a second later (`calls.rs`). Install your recorder before the hub starts (or, for a
//! member, before it connects); handles resolved earlier stay with the recorder they were
//! resolved against.
//!
//! Labels are bounded: service and method names are those the node serves (a call for
//! anything else counts as `unknown`); job names get their own label for the first
//! [`MAX_JOB_NAMES`] seen, later ones share `other`. No connection id, subject or job id
//! is ever a label.

use crate::jobs::Queue;
use metrics::{Counter, Gauge, Histogram, Unit};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod calls;

pub(crate) use calls::{
    flush as flush_calls, flush_every_second, forwarded, unknown_service, CallOutcome,
    ServiceMetrics,
};

/// The typed layer's metric names.
pub(crate) mod names {
    pub(crate) const CALLS: &str = "cluster_rpc_calls_total";
    pub(crate) const CALL_DURATION: &str = "cluster_rpc_call_duration_seconds";
    pub(crate) const PUBLICATIONS: &str = "cluster_pubsub_publications_total";
    pub(crate) const DELIVERIES: &str = "cluster_pubsub_deliveries_total";
    pub(crate) const SLOW_DROPS: &str = "cluster_pubsub_slow_subscriber_drops_total";
    pub(crate) const JOBS: &str = "cluster_jobs";
    pub(crate) const JOB_DURATION: &str = "cluster_job_duration_seconds";
    pub(crate) const JOB_ATTEMPTS: &str = "cluster_job_attempts_total";
    pub(crate) const WORKER_CREDITS: &str = "cluster_job_worker_credits";
}

/// Job names with a label of their own; later names are counted as `other`.
pub(crate) const MAX_JOB_NAMES: usize = 64;

fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            names::CALLS,
            "Calls served, by service, method and outcome."
        );
        describe_histogram!(
            names::CALL_DURATION,
            Unit::Seconds,
            "Time to serve a call, from the read that brought it, by service and method."
        );
        describe_counter!(names::PUBLICATIONS, "Messages published through the hub.");
        describe_counter!(
            names::DELIVERIES,
            "Publications delivered to subscriptions."
        );
        describe_counter!(
            names::SLOW_DROPS,
            "Deliveries refused by a subscriber over its backpressure limit (it is closed)."
        );
        describe_gauge!(names::JOBS, "Jobs in the queue, by state.");
        describe_histogram!(
            names::JOB_DURATION,
            Unit::Seconds,
            "Time from an attempt's start to its worker's answer, by job name."
        );
        describe_counter!(names::JOB_ATTEMPTS, "Job attempts ended, by outcome.");
        describe_gauge!(names::WORKER_CREDITS, "Workers' credits: all, and in use.");
    });
}

/// A hub's pub/sub handles.
pub(crate) struct PubSubMetrics {
    publications: Counter,
    deliveries: Counter,
    slow_drops: Counter,
}

impl PubSubMetrics {
    pub(crate) fn new() -> Self {
        describe();
        Self {
            publications: metrics::counter!(names::PUBLICATIONS),
            deliveries: metrics::counter!(names::DELIVERIES),
            slow_drops: metrics::counter!(names::SLOW_DROPS),
        }
    }

    /// One publication, delivered `delivered` times, refused by `dropped` subscribers.
    pub(crate) fn published(&self, delivered: usize, dropped: usize) {
        self.publications.increment(1);
        if delivered > 0 {
            self.deliveries.increment(delivered as u64);
        }
        if dropped > 0 {
            self.slow_drops.increment(dropped as u64);
        }
    }
}

/// How a job attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    /// The worker answered with an output.
    Completed = 0,
    /// The worker answered with an error (or its handler panicked).
    Failed = 1,
    /// The attempt's time limit passed.
    TimedOut = 2,
    /// The job was cancelled while running.
    Cancelled = 3,
    /// The worker left mid-attempt; the job went back to the queue.
    Requeued = 4,
}

const ATTEMPT_OUTCOMES: [&str; 5] = ["completed", "failed", "timed_out", "cancelled", "requeued"];

/// Attempts counted during one pass over the queue's state, added to the counters once.
#[derive(Debug, Default)]
pub(crate) struct AttemptTally([u64; 5]);

impl AttemptTally {
    pub(crate) fn add(&mut self, outcome: AttemptOutcome) {
        self.add_n(outcome, 1);
    }

    pub(crate) fn add_n(&mut self, outcome: AttemptOutcome, n: usize) {
        self.0[outcome as usize] += n as u64;
    }
}

/// A hub's job queue handles.
pub(crate) struct JobMetrics {
    attempts: [Counter; 5],
    /// Duration histograms by interned job name.
    durations: Mutex<HashMap<Arc<str>, Histogram>>,
    other: Histogram,
}

impl JobMetrics {
    pub(crate) fn new() -> Self {
        describe();
        Self {
            attempts: ATTEMPT_OUTCOMES
                .map(|outcome| metrics::counter!(names::JOB_ATTEMPTS, "outcome" => outcome)),
            durations: Mutex::new(HashMap::new()),
            other: metrics::histogram!(names::JOB_DURATION, "name" => "other"),
        }
    }

    /// One attempt ended.
    pub(crate) fn attempt(&self, outcome: AttemptOutcome) {
        self.attempts[outcome as usize].increment(1);
    }

    /// Adds a pass's attempts.
    pub(crate) fn attempts(&self, tally: &AttemptTally) {
        for (counter, n) in self.attempts.iter().zip(tally.0) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    /// The duration histogram of job `name` (a lock and a lookup: call it once per run of
    /// jobs of one name, and record each job through the handle).
    pub(crate) fn duration(&self, name: &Arc<str>) -> Histogram {
        let mut by_name = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(histogram) = by_name.get(name) {
            return histogram.clone();
        }
        if by_name.len() >= MAX_JOB_NAMES {
            return self.other.clone();
        }
        let histogram = metrics::histogram!(names::JOB_DURATION, "name" => name.to_string());
        by_name.insert(Arc::clone(name), histogram.clone());
        histogram
    }
}

/// Records job durations during one pass over answers: the histogram of the last name
/// seen is kept, so a run of jobs of one name costs one lookup.
pub(crate) struct Durations<'a> {
    metrics: &'a JobMetrics,
    last: Option<(Arc<str>, Histogram)>,
}

impl<'a> Durations<'a> {
    pub(crate) fn new(metrics: &'a JobMetrics) -> Self {
        Self {
            metrics,
            last: None,
        }
    }

    /// A job of `name` took `elapsed`.
    pub(crate) fn record(&mut self, name: &Arc<str>, elapsed: Duration) {
        let histogram = match &self.last {
            Some((last, histogram)) if Arc::ptr_eq(last, name) => histogram,
            _ => {
                let histogram = self.metrics.duration(name);
                &self.last.insert((Arc::clone(name), histogram)).1
            }
        };
        histogram.record(elapsed.as_secs_f64());
    }
}

/// The queue's gauges (jobs by state, workers' credits), set from its statistics once a
/// second by what changed, so several hubs in one process add up.
pub(crate) struct QueueGauges {
    jobs: [Gauge; 4],
    credits: [Gauge; 2],
    last: [f64; 6],
}

impl QueueGauges {
    pub(crate) fn new() -> Self {
        describe();
        Self {
            jobs: ["waiting", "delayed", "active", "dead"]
                .map(|state| metrics::gauge!(names::JOBS, "state" => state)),
            credits: ["total", "in_use"]
                .map(|state| metrics::gauge!(names::WORKER_CREDITS, "state" => state)),
            last: [0.0; 6],
        }
    }

    /// Sets the gauges to `now`: waiting, delayed, active, dead, credits, credits in use.
    pub(crate) fn set(&mut self, now: [f64; 6]) {
        for (i, gauge) in self.jobs.iter().chain(&self.credits).enumerate() {
            let delta = now[i] - self.last[i];
            if delta != 0.0 {
                gauge.increment(delta);
            }
        }
        self.last = now;
    }
}

/// Sets the queue's gauges once a second until the hub stops or the queue is dropped;
/// the gauges go back to zero then.
pub(crate) async fn publish_queue(queue: Weak<Queue>, stop: CancellationToken) {
    let mut gauges = QueueGauges::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(queue) = queue.upgrade() else { break };
        let stats = queue.stats();
        let credits: usize = stats.workers.iter().map(|w| w.credits).sum();
        let in_use: usize = stats.workers.iter().map(|w| w.active).sum();
        gauges.set([
            stats.waiting as f64,
            stats.delayed as f64,
            stats.active as f64,
            stats.dead as f64,
            credits as f64,
            in_use as f64,
        ]);
    }
    gauges.set([0.0; 6]);
}
