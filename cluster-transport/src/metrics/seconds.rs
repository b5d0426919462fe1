//! The `…_seconds` histograms of [`MetricsEndpoint::install`](super::MetricsEndpoint::install)'s
//! recorder, counted in the fixed buckets [`SECONDS_BUCKETS`].
//!
//! The Prometheus exporter keeps every histogram sample, with a clock read each, until its
//! upkeep sorts them into buckets: a sample costs as much as the work it measures on a
//! fast path, and `record_many(value, n)` costs `n` samples. Here a sample, or `n` of one
//! value (the typed layer hands its call durations over once a second that way), is one
//! bucket search and two atomic adds. Every other metric goes to the exporter's recorder
//! underneath, and the endpoint renders both.

use super::SECONDS_BUCKETS;
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::formatting::{
    sanitize_description, sanitize_label_key, sanitize_label_value, sanitize_metric_name,
};
use metrics_exporter_prometheus::PrometheusRecorder;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

/// Whether a histogram of this name is counted here (the exporter would have given it
/// [`SECONDS_BUCKETS`] too).
fn is_seconds(name: &str) -> bool {
    name.ends_with("_seconds")
}

/// One histogram: a count per bucket (the last for samples above every bound) and the
/// sum of the samples.
#[derive(Default)]
struct Buckets {
    counts: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    /// An `f64`'s bits.
    sum: AtomicU64,
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        if value.is_nan() || count == 0 {
            return;
        }
        // Prometheus buckets are `le`: the first bound at or above the value.
        let bucket = SECONDS_BUCKETS.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(count as u64, Relaxed);
        let added = value * count as f64;
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + added).to_bits())
        });
    }
}

/// The histograms counted here, by key, and their descriptions.
#[derive(Default)]
pub(crate) struct SecondsHistograms {
    by_key: Mutex<HashMap<Key, Arc<Buckets>>>,
    help: Mutex<HashMap<String, SharedString>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SecondsHistograms {
    fn register(&self, key: &Key) -> Histogram {
        let buckets = Arc::clone(lock(&self.by_key).entry(key.clone()).or_default());
        Histogram::from_arc(buckets)
    }

    /// Keeps the first description of `name`, as the exporter does.
    fn describe(&self, name: &str, description: SharedString) {
        lock(&self.help)
            .entry(name.to_owned())
            .or_insert(description);
    }

    /// Appends every histogram in the Prometheus text format, as the exporter writes its
    /// own: cumulative `_bucket` lines with `le`, then `_sum` and `_count`.
    pub(crate) fn render(&self, out: &mut String) {
        let mut all: Vec<(Key, Arc<Buckets>)> = lock(&self.by_key)
            .iter()
            .map(|(key, buckets)| (key.clone(), Arc::clone(buckets)))
            .collect();
        all.sort_by(|(a, _), (b, _)| a.name().cmp(b.name()));
        let help = lock(&self.help);
        let mut family: Option<&str> = None;
        for (key, buckets) in &all {
            let name = sanitize_metric_name(key.name());
            if family != Some(key.name()) {
                family = Some(key.name());
                if let Some(description) = help.get(key.name()) {
                    let _ = writeln!(out, "# HELP {name} {}", sanitize_description(description));
                }
                let _ = writeln!(out, "# TYPE {name} histogram");
            }
            let labels: String = key
                .labels()
                .map(|label| {
                    format!(
                        "{}=\"{}\",",
                        sanitize_label_key(label.key()),
                        sanitize_label_value(label.value())
                    )
                })
                .collect();
            let mut count = 0u64;
            for (bound, bucket) in SECONDS_BUCKETS.iter().zip(&buckets.counts) {
                count += bucket.load(Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {count}");
            }
            count += buckets.counts[SECONDS_BUCKETS.len()].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
            let sum = f64::from_bits(buckets.sum.load(Relaxed));
            let labels = labels.trim_end_matches(',');
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{name}_sum{labels} {sum}");
            let _ = writeln!(out, "{name}_count{labels} {count}");
        }
    }
}

/// The recorder [`MetricsEndpoint::install`](super::MetricsEndpoint::install) installs:
/// `…_seconds` histograms here, everything else in the exporter's recorder.
pub(crate) struct SecondsRecorder {
    pub(crate) inner: PrometheusRecorder,
    pub(crate) histograms: Arc<SecondsHistograms>,
}

impl Recorder for SecondsRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if is_seconds(key.as_str()) {
            self.histograms.describe(key.as_str(), description);
        } else {
            self.inner.describe_histogram(key, unit, description);
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if is_seconds(key.name()) {
            self.histograms.register(key)
        } else {
            self.inner.register_histogram(key, metadata)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Label;

    fn key(labels: &[(&'static str, &'static str)]) -> Key {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
        Key::from_parts("call_seconds", labels)
    }

    #[test]
    fn samples_land_in_le_buckets_and_render_cumulatively() {
        let histograms = SecondsHistograms::default();
        histograms.describe("call_seconds", "Time to serve a call.".into());
        let h = histograms.register(&key(&[("method", "echo")]));
        h.record(0.0001); // exactly the first bound: `le` takes it
        h.record(0.00011);
        h.record_many(0.003, 3);
        h.record(31.0); // above every bound
        h.record(f64::NAN); // ignored
        let mut text = String::new();
        histograms.render(&mut text);
        let line = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("call_seconds_{suffix}")))
                .unwrap_or_else(|| panic!("{suffix} in {text}"))
                .to_owned()
        };
        assert!(text.starts_with(
            "# HELP call_seconds Time to serve a call.\n# TYPE call_seconds histogram\n"
        ));
        assert_eq!(
            line("bucket{method=\"echo\",le=\"0.0001\"}"),
            "call_seconds_bucket{method=\"echo\",le=\"0.0001\"} 1"
        );
        assert!(text.contains("call_seconds_bucket{method=\"echo\",le=\"0.00025\"} 2\n"));
        assert!(text.contains("call_seconds_bucket{method=\"echo\",le=\"0.0025\"} 2\n"));
        assert!(text.contains("call_seconds_bucket{method=\"echo\",le=\"0.005\"} 5\n"));
        assert!(text.contains("call_seconds_bucket{method=\"echo\",le=\"30\"} 5\n"));
        assert!(text.contains("call_seconds_bucket{method=\"echo\",le=\"+Inf\"} 6\n"));
        assert_eq!(line("count"), "call_seconds_count{method=\"echo\"} 6");
        let sum: f64 = line("sum").rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(
            (sum - (0.0001 + 0.00011 + 0.009 + 31.0)).abs() < 1e-9,
            "{sum}"
        );
    }

    #[test]
    fn one_key_one_histogram_and_no_labels_render_bare() {
        let histograms = SecondsHistograms::default();
        histograms.register(&key(&[])).record(1.0);
        histograms.register(&key(&[])).record(2.0);
        let mut text = String::new();
        histograms.render(&mut text);
        assert!(text.contains("call_seconds_count 2\n"), "{text}");
        assert!(text.contains("call_seconds_sum 3\n"), "{text}");
        assert!(!text.contains("# HELP"), "{text}");
    }
}
