//! Results: per-run figures, medians, the JSON lines of BENCH.md and the table for people.

use crate::spec::{Setup, System, Workload};
use serde::Serialize;
use std::fmt::Write as _;

/// What one run measured. Fields that do not apply are `None` (null in JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RunFigures {
    /// The case's rate in its unit.
    pub(crate) rate: f64,
    /// Messages, round trips, deliveries or connections counted.
    pub(crate) count: u64,
    /// Seconds the rate was measured over.
    pub(crate) secs: f64,
    /// W2: median round trip, µs.
    pub(crate) p50_us: Option<f64>,
    /// W2: 99th percentile, µs.
    pub(crate) p99_us: Option<f64>,
    /// W2: 99.9th percentile, µs.
    pub(crate) p999_us: Option<f64>,
    /// W6: server RSS per connection, KiB.
    pub(crate) kb_per_conn: Option<f64>,
    /// W1, W3: CPU time of the server process per message, ns.
    pub(crate) server_cpu_ns: Option<f64>,
    /// W1, W3: CPU time of the clients process per message, ns (near the run's wall time
    /// per message on 2 cores means the clients, not the server, set the pace).
    pub(crate) client_cpu_ns: Option<f64>,
    /// W5d: the job store's fsyncs per second.
    pub(crate) fsyncs_per_sec: Option<f64>,
    /// W5d: bytes the job store wrote per job.
    pub(crate) bytes_per_job: Option<f64>,
    /// W7, W8 pub/sub: messages subscribers never got (only the bare core-NATS baseline
    /// can lose any; the rate counts deliveries).
    pub(crate) lost: Option<u64>,
}

/// One row: a case against one system, as BENCH.md's JSON line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseResult {
    /// `network-cluster` or `baseline`.
    pub(crate) system: &'static str,
    /// `W1` …
    pub(crate) workload: &'static str,
    /// The case's name, e.g. `W1 ingest C=16`.
    pub(crate) case: String,
    /// Unit of `median_rate`.
    pub(crate) unit: &'static str,
    /// Median rate over the runs.
    pub(crate) median_rate: Option<f64>,
    /// Median of the runs' p50.
    pub(crate) p50_us: Option<f64>,
    /// Median of the runs' p99.
    pub(crate) p99_us: Option<f64>,
    /// Median of the runs' p999.
    pub(crate) p999_us: Option<f64>,
    /// Median of the runs' KiB per connection.
    pub(crate) kb_per_conn: Option<f64>,
    /// W5d: the job store's fsyncs per second (median); null elsewhere.
    pub(crate) fsyncs_per_sec: Option<f64>,
    /// W5d: bytes the job store wrote per job (median); null elsewhere.
    pub(crate) bytes_per_job: Option<f64>,
    /// Every run.
    pub(crate) runs: Vec<RunFigures>,
    /// Why the case failed (a run errored or timed out); absent when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// Served and connected over TLS; absent (false) for the plain cases.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) tls: bool,
    /// Our server ran with the Prometheus recorder installed and `/metrics` served;
    /// absent (false) otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) metrics: bool,
    /// Our provider's permessage-deflate preset (`shared`, `dedicated-4kb`); absent when
    /// compression is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) compressor: Option<&'static str>,
    /// W1 compressed: bytes of the payload sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payload_bytes: Option<usize>,
    /// W1 compressed: bytes of that payload on the wire once deflated as the consumer does
    /// ([`deflated_len`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deflated_bytes: Option<usize>,
    /// W1 compressed: `deflated_bytes` over `payload_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) compression_ratio: Option<f64>,
    /// Our own row the ratio column compares this one with (TLS and compression cases).
    #[serde(skip)]
    pub(crate) compare: Option<Compare>,
    /// The typed workloads' setup (`tuned`, `default`); null for the others.
    pub(crate) setup: Option<&'static str>,
}

/// Which of our own rows a TLS or compression row is compared with, and what to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Compare {
    /// That row's case name.
    pub(crate) case: String,
    /// What the ratio column calls it ("plain", "lean client").
    pub(crate) label: &'static str,
}

/// The metrics target: with metrics on, a rate at least this many times metrics off.
const METRICS_TARGET_RATIO: f64 = 0.95;

/// The W6 target over TLS: KiB per idle connection at most this many times plain.
const W6_TLS_TARGET_RATIO: f64 = 2.0;

/// Bytes of the payload of a message of `payload` once our consumer compressed it for a
/// `Shared` provider (no context takeover), computed by the library's own encoder. The
/// frame adds the same 2-byte header and 4-byte mask key as an uncompressed one (RSV1 set).
pub(crate) fn deflated_len(payload: &[u8]) -> usize {
    cluster_transport::__bench::deflated_len(payload)
}

impl CaseResult {
    /// A row from its runs; the medians are left empty when a run failed.
    pub(crate) fn new(
        system: System,
        workload: Workload,
        case: &str,
        unit: &'static str,
        runs: Vec<RunFigures>,
        error: Option<String>,
    ) -> Self {
        let ok = error.is_none() && !runs.is_empty();
        let med = |f: fn(&RunFigures) -> Option<f64>| {
            if ok {
                median(runs.iter().filter_map(f))
            } else {
                None
            }
        };
        Self {
            system: system.name(),
            workload: workload.name(),
            case: case.to_owned(),
            unit,
            median_rate: med(|r| Some(r.rate)),
            p50_us: med(|r| r.p50_us),
            p99_us: med(|r| r.p99_us),
            p999_us: med(|r| r.p999_us),
            kb_per_conn: med(|r| r.kb_per_conn),
            fsyncs_per_sec: med(|r| r.fsyncs_per_sec),
            bytes_per_job: med(|r| r.bytes_per_job),
            runs,
            error,
            tls: false,
            metrics: false,
            compressor: None,
            payload_bytes: None,
            deflated_bytes: None,
            compression_ratio: None,
            compare: None,
            setup: None,
        }
    }

    /// Records that the payload of `payload` bytes went on the wire as `deflated` bytes.
    pub(crate) fn set_deflated(&mut self, payload: usize, deflated: usize) {
        self.payload_bytes = Some(payload);
        self.deflated_bytes = Some(deflated);
        self.compression_ratio = (payload > 0).then(|| deflated as f64 / payload as f64);
    }

    /// The JSON line.
    pub(crate) fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The median (mean of the middle two for an even count); `None` for no values.
pub(crate) fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// A rate with a k/M suffix.
pub(crate) fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2} M ", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1} k ", value / 1e3)
    } else {
        format!("{value:.1} ")
    }
}

/// The row's main figure for people.
fn figure(row: &CaseResult) -> String {
    if let Some(error) = &row.error {
        return format!("ERROR: {error}");
    }
    let rate = row
        .median_rate
        .map_or_else(|| "-".to_owned(), |r| format!("{}{}", si(r), row.unit));
    match row.workload {
        "W2" | "W4" if row.p50_us.is_some() => format!(
            "p50 {:.1} µs, p99 {:.1}, p999 {:.1}; {rate}",
            row.p50_us.unwrap_or(f64::NAN),
            row.p99_us.unwrap_or(f64::NAN),
            row.p999_us.unwrap_or(f64::NAN)
        ),
        "W6" => format!("{:.2} KB/conn; {rate}", row.kb_per_conn.unwrap_or(f64::NAN)),
        "W6s" => format!("{:.2} KB/conn", row.kb_per_conn.unwrap_or(f64::NAN)),
        _ => {
            let rate = match median(row.runs.iter().filter_map(|r| r.server_cpu_ns)) {
                Some(cpu) => format!("{rate} (server CPU {cpu:.0} ns/msg)"),
                None => rate,
            };
            let rate = match (row.fsyncs_per_sec, row.bytes_per_job) {
                (Some(fsyncs), Some(bytes)) => {
                    format!("{rate}; {fsyncs:.0} fsyncs/s, {bytes:.0} B written/job")
                }
                _ => rate,
            };
            match (row.payload_bytes, row.deflated_bytes, row.compression_ratio) {
                (Some(p), Some(d), Some(r)) => {
                    format!("{rate}; payload {p} B -> {d} B deflated (ratio {r:.3})")
                }
                _ => rate,
            }
        }
    }
}

/// The baseline row `row` is compared with: the same case, or plain W2 echo for the
/// "our consumer" row.
fn baseline_of<'a>(row: &CaseResult, rows: &'a [CaseResult]) -> Option<&'a CaseResult> {
    let case = if row.workload == "W2" {
        "W2 echo"
    } else {
        row.case.as_str()
    };
    rows.iter()
        .find(|r| r.system == System::Baseline.name() && r.case == case && r.error.is_none())
}

/// W6's target: KiB per idle connection, before any heartbeat.
const W6_TARGET_KB: f64 = 2.0;
/// W6s's target (issue 10): KiB per idle connection after heartbeat cycles.
const W6S_TARGET_KB: f64 = 1.2;
/// W4's target: calls/s with 64 in flight.
const W4_TARGET_RATE: f64 = 400_000.0;
/// W4's target: p50 with one call in flight over our W2 echo's p50 (pinned to one core).
const W4_TARGET_P50_RATIO: f64 = 1.3;
/// W5's target in the default setup: ours over the bare credit dispatcher.
const W5_DEFAULT_TARGET_RATIO: f64 = 1.0;
/// W5's target: jobs/s.
const W5_TARGET_RATE: f64 = 600_000.0;
/// W7's target: deliveries/s.
const W7_TARGET_RATE: f64 = 4_000_000.0;
/// W8's target across hubs: ours over the bare async-nats baseline (pub/sub and jobs).
const W8_TARGET_RATIO: f64 = 0.8;
/// W8's cluster-cost target: one hub clustered over the same hub standalone.
const W8_COST_TARGET_RATIO: f64 = 0.9;

/// What the target column says of a figure that met its target, or did not.
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Our own row of case `case` in this run, if it succeeded.
fn ours_of<'a>(case: &str, rows: &'a [CaseResult]) -> Option<&'a CaseResult> {
    rows.iter()
        .find(|r| r.system == System::Ours.name() && r.case == case && r.error.is_none())
}

/// Ours over baseline on the figure the target is about, with the target and whether it
/// was met. W4, W5 and W7 have no baseline: W4 with one call in flight is compared with
/// our own W2 echo rows of the same run (lean client, and our consumer), the rest with
/// absolute targets.
fn ratio(row: &CaseResult, rows: &[CaseResult]) -> (String, String) {
    if row.system != System::Ours.name() || row.error.is_some() {
        return (String::new(), String::new());
    }
    let base = baseline_of(row, rows);
    let ratio_of = |f: fn(&CaseResult) -> Option<f64>| match (f(row), base.and_then(f)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let show = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
    if let Some(compare) = &row.compare {
        return versus(row, compare, ours_of(&compare.case, rows));
    }
    match row.workload {
        "W1" | "W3" => {
            let r = ratio_of(|c| c.median_rate);
            let target = r.map_or(String::new(), |r| format!(">= 1.5x: {}", verdict(r >= 1.5)));
            (format!("rate {}", show(r)), target)
        }
        "W2" => {
            let r = ratio_of(|c| c.p50_us);
            let target = if row.case == "W2 echo" {
                r.map_or(String::new(), |r| {
                    format!("p50 <= 1.1x (pinned): {}", verdict(r <= 1.1))
                })
            } else {
                String::new()
            };
            (format!("p50 {}", show(r)), target)
        }
        "W4" if row.p50_us.is_some() => {
            let p50_over = |case| {
                let w2 = ours_of(case, rows)?.p50_us?;
                Some(row.p50_us? / w2).filter(|r| r.is_finite())
            };
            let (lean, consumer) = (p50_over("W2 echo"), p50_over("W2 echo (our consumer)"));
            let shown = match (lean, consumer) {
                (Some(l), Some(c)) => format!("p50 {l:.2}x W2 ({c:.2}x our consumer)"),
                (Some(l), None) => format!("p50 {l:.2}x W2"),
                // Without W2 in the same run there is nothing to compare with.
                (None, _) => "–".to_owned(),
            };
            let target = lean.map_or(String::new(), |r| {
                format!(
                    "p50 <= {W4_TARGET_P50_RATIO}x W2 (pinned): {}",
                    verdict(r <= W4_TARGET_P50_RATIO)
                )
            });
            (shown, target)
        }
        "W5" if row.setup == Some(Setup::Default.name()) => {
            // Issue 12: in a library user's setup the queue is held against the bare
            // credit dispatcher.
            let r = ratio_of(|c| c.median_rate);
            let target = r.map_or(String::new(), |r| {
                format!(
                    ">= {W5_DEFAULT_TARGET_RATIO:.1}x the bare dispatcher: {}",
                    verdict(r >= W5_DEFAULT_TARGET_RATIO)
                )
            });
            (format!("rate {}", show(r)), target)
        }
        // The absolute targets were set in the tuned setup.
        "W4" | "W7" if row.setup == Some(Setup::Default.name()) => ("–".to_owned(), String::new()),
        "W4" | "W5" | "W7" => {
            let min = match row.workload {
                "W4" => W4_TARGET_RATE,
                "W5" => W5_TARGET_RATE,
                _ => W7_TARGET_RATE,
            };
            let rate = row.median_rate.unwrap_or(0.0);
            let shown = ratio_of(|c| c.median_rate)
                .map_or_else(|| "–".to_owned(), |r| format!("rate {r:.2}x"));
            (
                shown,
                format!(">= {}/s: {}", si(min).trim_end(), verdict(rate >= min)),
            )
        }
        // Calls to another hub have no baseline.
        "W8" if base.is_none() => ("–".to_owned(), String::new()),
        "W8" => {
            let r = ratio_of(|c| c.median_rate);
            let target = r.map_or(String::new(), |r| {
                format!(
                    ">= {W8_TARGET_RATIO}x bare NATS: {}",
                    verdict(r >= W8_TARGET_RATIO)
                )
            });
            (format!("rate {}", show(r)), target)
        }
        "W6" | "W6s" => {
            let r = ratio_of(|c| c.kb_per_conn);
            let kb = row.kb_per_conn.unwrap_or(f64::NAN);
            let target = if row.workload == "W6" {
                W6_TARGET_KB
            } else {
                W6S_TARGET_KB
            };
            (
                format!("KB {}", show(r)),
                format!("<= {target} KB/conn: {}", verdict(kb <= target)),
            )
        }
        _ => (String::new(), String::new()),
    }
}

/// A TLS or compression row against our plain row `plain` (or our consumer's W1 row
/// against the lean client's): the rate for W1, KiB per connection for W6, where TLS has
/// its target (at most [`W6_TLS_TARGET_RATIO`] times plain) and what TLS adds per
/// connection.
fn versus(row: &CaseResult, compare: &Compare, plain: Option<&CaseResult>) -> (String, String) {
    let label = compare.label;
    let ratio = |f: fn(&CaseResult) -> Option<f64>| match (f(row), plain.and_then(f)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let Some(plain) = plain else {
        return (format!("- ({} not run)", compare.case), String::new());
    };
    match row.workload {
        "W6" => {
            let Some(r) = ratio(|c| c.kb_per_conn) else {
                return ("-".to_owned(), String::new());
            };
            let added = row.kb_per_conn.unwrap_or(f64::NAN) - plain.kb_per_conn.unwrap_or(f64::NAN);
            let shown = format!("KB {r:.2}x {label} ({added:+.2} KB/conn)");
            let target = if row.tls && row.compressor.is_none() {
                let met = verdict(r <= W6_TLS_TARGET_RATIO);
                format!("<= {W6_TLS_TARGET_RATIO}x {label}: {met}")
            } else {
                String::new()
            };
            (shown, target)
        }
        // One call in flight: the median latency says what a call costs (the rate
        // follows the tail, which a loaded machine sets); `plain` over `row`, so that
        // under 1 means slower, as for rates.
        "W8" if row.p50_us.is_some() => {
            let r = match (plain.p50_us, row.p50_us) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let shown = r.map_or_else(|| "-".to_owned(), |r| format!("p50 {r:.2}x {label}"));
            let target = r.map_or(String::new(), |r| {
                let met = verdict(r >= W8_COST_TARGET_RATIO);
                format!(">= {W8_COST_TARGET_RATIO}x {label} (p50): {met}")
            });
            (shown, target)
        }
        _ => {
            let r = ratio(|c| c.median_rate);
            let shown = r.map_or_else(|| "-".to_owned(), |r| format!("rate {r:.2}x {label}"));
            // The metrics rows and W8's clustered rows have a floor against their plain row.
            let floor = if row.metrics {
                Some(METRICS_TARGET_RATIO)
            } else if row.workload == "W8" {
                Some(W8_COST_TARGET_RATIO)
            } else {
                None
            };
            let target = match (floor, r, row.compression_ratio) {
                (Some(min), Some(r), _) => {
                    let met = verdict(r >= min);
                    format!(">= {min}x {label}: {met}")
                }
                (None, _, Some(c)) => format!("ratio reported: {c:.3}"),
                _ => String::new(),
            };
            (shown, target)
        }
    }
}

/// The table for people.
pub(crate) fn table(rows: &[CaseResult]) -> String {
    let header = ["case", "system", "figure (median)", "ratio", "target"];
    let body: Vec<[String; 5]> = rows
        .iter()
        .map(|row| {
            let (r, target) = ratio(row, rows);
            [
                row.case.clone(),
                row.system.to_owned(),
                figure(row),
                r,
                target,
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for line in &body {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: &[String]| {
        let mut line = String::from("|");
        for (cell, w) in cells.iter().zip(widths) {
            let pad = w - cell.chars().count();
            let _ = write!(line, " {cell}{} |", " ".repeat(pad));
        }
        out.push_str(&line);
        out.push('\n');
    };
    push(&header.map(str::to_owned));
    push(&widths.map(|w| "-".repeat(w)));
    for line in &body {
        push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: f64) -> RunFigures {
        RunFigures {
            rate,
            ..RunFigures::default()
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn json_has_bench_md_fields_and_nulls() {
        let row = CaseResult::new(
            System::Ours,
            Workload::W1,
            "W1 ingest C=1",
            "messages/s",
            vec![run(2.0), run(1.0), run(3.0)],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&row.json()).unwrap();
        assert_eq!(v["system"], "network-cluster");
        assert_eq!(v["median_rate"], 2.0);
        assert!(v["p50_us"].is_null());
        assert!(v["kb_per_conn"].is_null());
        assert_eq!(v["runs"].as_array().unwrap().len(), 3);
        assert!(v.get("error").is_none());
    }

    #[test]
    fn table_shows_ratio_against_baseline() {
        let rows = vec![
            CaseResult::new(
                System::Ours,
                Workload::W1,
                "W1 ingest C=1",
                "messages/s",
                vec![run(3e6)],
                None,
            ),
            CaseResult::new(
                System::Baseline,
                Workload::W1,
                "W1 ingest C=1",
                "messages/s",
                vec![run(1e6)],
                None,
            ),
            CaseResult::new(
                System::Ours,
                Workload::W3,
                "W3 broadcast",
                "deliveries/s",
                vec![],
                Some("timed out".into()),
            ),
        ];
        let t = table(&rows);
        assert!(t.contains("3.00x"), "{t}");
        assert!(t.contains("| ratio "), "{t}");
        assert!(t.contains(">= 1.5x: met"), "{t}");
        assert!(t.contains("ERROR: timed out"), "{t}");
    }

    #[test]
    fn metrics_rows_are_held_to_95_percent_of_metrics_off() {
        let row = |name: &str, rate, metrics: bool| {
            let mut row = CaseResult::new(
                System::Ours,
                Workload::W5,
                name,
                "jobs/s",
                vec![run(rate)],
                None,
            );
            row.metrics = metrics;
            if metrics {
                row.compare = Some(Compare {
                    case: "W5 jobs".into(),
                    label: "metrics off",
                });
            }
            row
        };
        let close = vec![
            row("W5 jobs", 1e6, false),
            row("W5 jobs metrics", 0.97e6, true),
        ];
        let t = table(&close);
        assert!(t.contains("rate 0.97x metrics off"), "{t}");
        assert!(t.contains(">= 0.95x metrics off: met"), "{t}");
        let far = vec![
            row("W5 jobs", 1e6, false),
            row("W5 jobs metrics", 0.9e6, true),
        ];
        assert!(table(&far).contains(">= 0.95x metrics off: MISSED"));
        let json = serde_json::to_string(&close[1]).unwrap();
        assert!(json.contains(r#""metrics":true"#), "{json}");
        assert!(!serde_json::to_string(&close[0])
            .unwrap()
            .contains("metrics"));
    }

    #[test]
    fn tls_and_deflate_rows_compare_with_our_plain_rows() {
        let idle = |kb| RunFigures {
            rate: 1e4,
            kb_per_conn: Some(kb),
            ..RunFigures::default()
        };
        let mut tls = CaseResult::new(
            System::Ours,
            Workload::W6,
            "W6 idle x5000 tls",
            "connects/s",
            vec![idle(3.0)],
            None,
        );
        tls.tls = true;
        tls.compare = Some(Compare {
            case: "W6 idle x5000".into(),
            label: "plain",
        });
        let mut deflate = CaseResult::new(
            System::Ours,
            Workload::W1,
            "W1 ingest C=16 deflate",
            "messages/s",
            vec![run(1e6)],
            None,
        );
        deflate.compressor = Some("shared");
        deflate.set_deflated(64, 6);
        deflate.compare = Some(Compare {
            case: "W1 ingest C=16 (our consumer)".into(),
            label: "plain",
        });
        let rows = vec![
            CaseResult::new(
                System::Ours,
                Workload::W6,
                "W6 idle x5000",
                "connects/s",
                vec![idle(1.0)],
                None,
            ),
            tls,
            CaseResult::new(
                System::Ours,
                Workload::W1,
                "W1 ingest C=16 (our consumer)",
                "messages/s",
                vec![run(4e6)],
                None,
            ),
            deflate,
        ];
        let t = table(&rows);
        assert!(t.contains("KB 3.00x plain (+2.00 KB/conn)"), "{t}");
        assert!(t.contains("<= 2x plain: MISSED"), "{t}");
        assert!(t.contains("rate 0.25x plain"), "{t}");
        assert!(
            t.contains("payload 64 B -> 6 B deflated (ratio 0.094)"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&rows[3].json()).unwrap();
        assert_eq!(v["compressor"], "shared");
        assert_eq!(v["compression_ratio"], 0.09375);
        assert!(v.get("tls").is_none());
        let plain: serde_json::Value = serde_json::from_str(&rows[0].json()).unwrap();
        assert!(plain.get("compressor").is_none() && plain.get("compression_ratio").is_none());
    }

    #[test]
    fn deflated_len_of_the_w1_payload_is_short() {
        use crate::spec::INGEST_DATA;
        let n = deflated_len(INGEST_DATA.as_bytes());
        assert!(n > 0 && n < 16, "{n}");
    }

    #[test]
    fn w4_is_compared_with_our_w2_and_w7_with_its_target() {
        let latency = |p50| RunFigures {
            rate: 1e4,
            p50_us: Some(p50),
            p99_us: Some(p50),
            p999_us: Some(p50),
            ..RunFigures::default()
        };
        let rows = vec![
            CaseResult::new(
                System::Ours,
                Workload::W2,
                "W2 echo",
                "round trips/s",
                vec![latency(20.0)],
                None,
            ),
            CaseResult::new(
                System::Ours,
                Workload::W4,
                "W4 rpc in-flight 1",
                "calls/s",
                vec![latency(30.0)],
                None,
            ),
            CaseResult::new(
                System::Ours,
                Workload::W4,
                "W4 rpc 64 in flight",
                "calls/s",
                vec![run(5e5)],
                None,
            ),
            CaseResult::new(
                System::Ours,
                Workload::W5,
                "W5 jobs 8x16 credits",
                "jobs/s",
                vec![run(7e5)],
                None,
            ),
            CaseResult::new(
                System::Ours,
                Workload::W7,
                "W7 pub/sub",
                "deliveries/s",
                vec![run(3e6)],
                None,
            ),
        ];
        let t = table(&rows);
        assert!(t.contains("p50 1.50x W2"), "{t}");
        assert!(t.contains("p50 <= 1.3x W2 (pinned): MISSED"), "{t}");
        assert!(t.contains(">= 400.0 k/s: met"), "{t}");
        assert!(t.contains(">= 600.0 k/s: met"), "{t}");
        assert!(t.contains(">= 4.00 M/s: MISSED"), "{t}");
    }

    #[test]
    fn w5_is_held_against_the_dispatcher_per_setup() {
        let row = |system, case: &str, setup: Setup, rate| {
            let mut row =
                CaseResult::new(system, Workload::W5, case, "jobs/s", vec![run(rate)], None);
            row.setup = Some(setup.name());
            row
        };
        let (tuned, default) = (
            "W5 jobs 8x16 credits",
            "W5 jobs 8x16 credits (default setup)",
        );
        let rows = vec![
            row(System::Ours, tuned, Setup::Tuned, 6.9e5),
            row(System::Baseline, tuned, Setup::Tuned, 7.0e5),
            row(System::Ours, default, Setup::Default, 2.65e5),
            row(System::Baseline, default, Setup::Default, 4.43e5),
        ];
        let t = table(&rows);
        assert!(t.contains("rate 0.99x"), "{t}");
        assert!(t.contains(">= 600.0 k/s: met"), "{t}");
        assert!(t.contains("rate 0.60x"), "{t}");
        assert!(t.contains(">= 1.0x the bare dispatcher: MISSED"), "{t}");
        let v: serde_json::Value = serde_json::from_str(&rows[2].json()).unwrap();
        assert_eq!(v["setup"], "default");
        let w1 = CaseResult::new(System::Ours, Workload::W1, "W1", "messages/s", vec![], None);
        let v: serde_json::Value = serde_json::from_str(&w1.json()).unwrap();
        assert!(v["setup"].is_null());
    }
}
