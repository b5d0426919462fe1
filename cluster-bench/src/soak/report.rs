//! A phase's outcome: what the provider used before, during and after it, what the
//! healthy consumer saw, the phase's own checks, the pass criteria, the table for people
//! and the JSON line.

use super::healthy::Window;
use super::provider::Usage;
use crate::common::percentile;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// RSS after a phase may exceed the baseline by this fraction at most.
pub(crate) const RSS_SLACK: f64 = 0.10;
/// The healthy consumer's p99 round trip must stay under this.
pub(crate) const HEALTHY_P99_MAX: Duration = Duration::from_millis(50);

/// One check of a phase: a criterion (`ok` is set) or a figure for people (`ok` is null).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// What is checked or shown.
    pub(crate) name: String,
    /// Whether it held; `None` for a figure that is not a criterion.
    pub(crate) ok: Option<bool>,
    /// The figures behind it.
    pub(crate) detail: String,
}

impl Check {
    /// A criterion.
    pub(crate) fn new(name: &str, ok: bool, detail: String) -> Self {
        Self {
            name: name.to_owned(),
            ok: Some(ok),
            detail,
        }
    }

    /// A figure for people, not a criterion.
    pub(crate) fn info(name: &str, detail: String) -> Self {
        Self {
            name: name.to_owned(),
            ok: None,
            detail,
        }
    }
}

/// The provider's usage around a phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Around {
    /// Before the soak's first phase: what "back" means.
    pub(crate) baseline: Usage,
    /// When the phase started.
    pub(crate) before: Usage,
    /// The most seen while it ran.
    pub(crate) peak: Usage,
    /// Once it settled (or the settle time ran out).
    pub(crate) after: Usage,
    /// How long settling took, s.
    pub(crate) settle_secs: f64,
}

/// The healthy consumer during a phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct HealthyFigures {
    /// Round trips measured.
    pub(crate) round_trips: usize,
    /// Median, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// Slowest, ms.
    pub(crate) max_ms: f64,
    /// Times its connection dropped.
    pub(crate) disconnects: u32,
    /// Echoes that never came back.
    pub(crate) missed: u32,
}

impl HealthyFigures {
    /// The figures of a window.
    pub(crate) fn of(mut window: Window) -> Self {
        window.round_trips.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Self {
            round_trips: window.round_trips.len(),
            p50_ms: ms(percentile(&window.round_trips, 500)),
            p99_ms: ms(percentile(&window.round_trips, 990)),
            max_ms: ms(window.round_trips.last().copied().unwrap_or_default()),
            disconnects: window.disconnects,
            missed: window.missed,
        }
    }
}

/// One phase's outcome, as the JSON line says it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseReport {
    /// The phase's name.
    pub(crate) phase: &'static str,
    /// Wall time of the load, s (settling not included).
    pub(crate) secs: f64,
    /// The provider's memory (KiB) and file descriptors.
    pub(crate) usage: Around,
    /// The healthy consumer.
    pub(crate) healthy: HealthyFigures,
    /// Lines the provider logged during the phase.
    pub(crate) log_lines: u64,
    /// Bytes it logged.
    pub(crate) log_bytes: u64,
    /// The phase's own checks and figures.
    pub(crate) checks: Vec<Check>,
    /// The criteria that failed; empty when the phase passed.
    pub(crate) failed: Vec<String>,
}

impl PhaseReport {
    /// A report with its pass criteria evaluated: RSS back within [`RSS_SLACK`] of the
    /// baseline, file descriptors back to it, the healthy consumer never dropped and its
    /// p99 under [`HEALTHY_P99_MAX`], the provider alive, and the phase's own checks.
    pub(crate) fn new(
        phase: &'static str,
        secs: f64,
        usage: Around,
        healthy: HealthyFigures,
        log: (u64, u64),
        checks: Vec<Check>,
        provider_alive: bool,
    ) -> Self {
        let mut failed = Vec::new();
        if !provider_alive {
            failed.push("the provider exited".to_owned());
        }
        let (base, after) = (usage.baseline, usage.after);
        let rss_limit = base.rss_kib as f64 * (1.0 + RSS_SLACK);
        if after.rss_kib as f64 > rss_limit {
            failed.push(format!(
                "RSS not back within {:.0}% of baseline: {} KiB after, baseline {} KiB \
                 (+{:.0}%)",
                RSS_SLACK * 100.0,
                after.rss_kib,
                base.rss_kib,
                (after.rss_kib as f64 / base.rss_kib.max(1) as f64 - 1.0) * 100.0
            ));
        }
        if after.fds > base.fds {
            failed.push(format!(
                "fds not back to baseline: {} after, baseline {}",
                after.fds, base.fds
            ));
        }
        if healthy.disconnects > 0 || healthy.missed > 0 {
            failed.push(format!(
                "the healthy consumer dropped {} times and missed {} echoes",
                healthy.disconnects, healthy.missed
            ));
        }
        let p99_max = HEALTHY_P99_MAX.as_secs_f64() * 1e3;
        if healthy.round_trips == 0 || healthy.p99_ms >= p99_max {
            failed.push(format!(
                "healthy p99 {:.1} ms over {} round trips (must be under {p99_max:.0} ms)",
                healthy.p99_ms, healthy.round_trips
            ));
        }
        for check in &checks {
            if check.ok == Some(false) {
                failed.push(format!("{}: {}", check.name, check.detail));
            }
        }
        Self {
            phase,
            secs,
            usage,
            healthy,
            log_lines: log.0,
            log_bytes: log.1,
            checks,
            failed,
        }
    }

    /// Whether every criterion held.
    pub(crate) fn passed(&self) -> bool {
        self.failed.is_empty()
    }

    /// The JSON line.
    pub(crate) fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The table for people, then each phase's checks and failures.
pub(crate) fn table(reports: &[PhaseReport]) -> String {
    let header = [
        "phase",
        "RSS KiB before / peak / after",
        "fds before / peak / after",
        "healthy p99 (max) ms",
        "log lines",
        "verdict",
    ];
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            let u = &r.usage;
            [
                r.phase.to_owned(),
                format!(
                    "{} / {} / {} (settled {:.1} s)",
                    u.before.rss_kib, u.peak.rss_kib, u.after.rss_kib, u.settle_secs
                ),
                format!("{} / {} / {}", u.before.fds, u.peak.fds, u.after.fds),
                format!("{:.1} ({:.1})", r.healthy.p99_ms, r.healthy.max_ms),
                r.log_lines.to_string(),
                if r.passed() { "pass" } else { "FAIL" }.to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        out.push('|');
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(out, " {cell}{} |", " ".repeat(w - cell.chars().count()));
        }
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    line(&widths.map(|w| "-".repeat(w)));
    for row in &rows {
        line(row);
    }
    if let Some(first) = reports.first() {
        let b = first.usage.baseline;
        let _ = writeln!(
            out,
            "\nbaseline: {} KiB RSS, {} fds; pass: RSS back within {:.0}%, fds back, the \
             healthy consumer never dropped and its p99 under {} ms",
            b.rss_kib,
            b.fds,
            RSS_SLACK * 100.0,
            HEALTHY_P99_MAX.as_millis()
        );
    }
    for r in reports {
        let _ = writeln!(out, "\n{}:", r.phase);
        for check in &r.checks {
            let mark = match check.ok {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "    ",
            };
            let _ = writeln!(out, "  {mark} {}: {}", check.name, check.detail);
        }
        for failure in &r.failed {
            let _ = writeln!(out, "  FAILED: {failure}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(rss_kib: u64, fds: usize) -> Usage {
        Usage { rss_kib, fds }
    }

    fn around(after: Usage) -> Around {
        Around {
            baseline: usage(10_000, 20),
            before: usage(10_100, 20),
            peak: usage(50_000, 2_020),
            after,
            settle_secs: 1.5,
        }
    }

    fn healthy(p99_ms: f64, disconnects: u32) -> HealthyFigures {
        HealthyFigures {
            round_trips: 500,
            p50_ms: 0.2,
            p99_ms,
            max_ms: p99_ms * 2.0,
            disconnects,
            missed: 0,
        }
    }

    #[test]
    fn a_phase_passes_only_when_every_criterion_holds() {
        let ok = PhaseReport::new(
            "churn",
            2.0,
            around(usage(10_999, 20)),
            healthy(3.0, 0),
            (0, 0),
            vec![Check::new("all connected", true, "5000".into())],
            true,
        );
        assert!(ok.passed(), "{:?}", ok.failed);
        let bad = PhaseReport::new(
            "churn",
            2.0,
            around(usage(11_001, 21)),
            healthy(50.0, 1),
            (0, 0),
            vec![Check::new("all connected", false, "4999 of 5000".into())],
            false,
        );
        let failed = bad.failed.join("\n");
        for expected in [
            "the provider exited",
            "RSS not back within 10%",
            "fds not back to baseline: 21 after, baseline 20",
            "dropped 1 times",
            "healthy p99 50.0 ms",
            "all connected: 4999 of 5000",
        ] {
            assert!(failed.contains(expected), "{expected}: {failed}");
        }
    }

    #[test]
    fn the_table_and_json_show_every_figure() {
        let report = PhaseReport::new(
            "idle",
            4.0,
            around(usage(10_500, 20)),
            healthy(1.5, 0),
            (3, 300),
            vec![Check::info("memory per idle connection", "1.10 KB".into())],
            true,
        );
        let table = table(std::slice::from_ref(&report));
        assert!(table.contains("| idle "), "{table}");
        assert!(table.contains("10100 / 50000 / 10500"), "{table}");
        assert!(table.contains("pass"), "{table}");
        assert!(
            table.contains("memory per idle connection: 1.10 KB"),
            "{table}"
        );
        let v: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(v["phase"], "idle");
        assert_eq!(v["usage"]["peak"]["fds"], 2020);
        assert_eq!(v["healthy"]["p99_ms"], 1.5);
        assert!(v["checks"][0]["ok"].is_null());
        assert_eq!(v["failed"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn healthy_figures_from_a_window() {
        let window = Window {
            round_trips: (1..=100).map(Duration::from_millis).collect(),
            disconnects: 0,
            missed: 2,
        };
        let f = HealthyFigures::of(window);
        assert_eq!(
            (f.round_trips, f.p99_ms, f.max_ms, f.missed),
            (100, 100.0, 100.0, 2)
        );
        assert_eq!(f.p50_ms, 51.0);
    }
}
