//! Refused upgrades, logged without flooding the log. Each refusal is logged at `debug`
//! with its peer; at `warn` they are counted and reported once per period, in one line:
//! "20,000 upgrades refused in the last 10 s (20,000 unauthorized, 0 by the upgrade
//! check)". A client hammering the port with a wrong key costs a line every 10 s, not a
//! line per attempt.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often counted refusals are reported.
pub(crate) const PERIOD: Duration = Duration::from_secs(10);

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The auth parameters or handler said no (403).
    Unauthorized,
    /// The upgrade check refused it, with this status.
    ByCheck(u16),
}

/// Refusals counted since the last report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) unauthorized: u64,
    pub(crate) by_check: u64,
    pub(crate) last_ip: Option<IpAddr>,
}

impl Summary {
    fn total(&self) -> u64 {
        self.unauthorized.saturating_add(self.by_check)
    }
}

/// The provider's count of refused upgrades.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    counted: Mutex<Summary>,
}

impl Refusals {
    /// Counts one refusal.
    pub(crate) fn record(&self, refusal: Refusal, ip: IpAddr) {
        tracing::debug!(peer.ip = %ip, ?refusal, "upgrade refused");
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        match refusal {
            Refusal::Unauthorized => counted.unauthorized = counted.unauthorized.saturating_add(1),
            Refusal::ByCheck(_) => counted.by_check = counted.by_check.saturating_add(1),
        }
        counted.last_ip = Some(ip);
    }

    /// What was counted since the last call (reset).
    fn take(&self) -> Summary {
        std::mem::take(&mut *self.counted.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Logs what was counted since the last report, if anything, in one line.
    pub(crate) fn report(&self, period: Duration) {
        let summary = self.take();
        let total = summary.total();
        if total == 0 {
            return;
        }
        tracing::warn!(
            refused = total,
            unauthorized = summary.unauthorized,
            by_check = summary.by_check,
            last.peer.ip = ?summary.last_ip,
            "{} upgrades refused in the last {} s ({} unauthorized, {} by the upgrade check)",
            thousands(total),
            period.as_secs().max(1),
            thousands(summary.unauthorized),
            thousands(summary.by_check),
        );
    }
}

/// Reports once per [`PERIOD`] until `stop`, and once more at the end.
pub(crate) async fn run(refusals: Arc<Refusals>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => refusals.report(PERIOD),
        }
    }
    refusals.report(PERIOD);
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_until_reported() {
        let refusals = Refusals::default();
        let ip = IpAddr::from([10, 0, 0, 7]);
        for _ in 0..20_000 {
            refusals.record(Refusal::Unauthorized, ip);
        }
        refusals.record(Refusal::ByCheck(409), ip);
        assert_eq!(
            refusals.take(),
            Summary {
                unauthorized: 20_000,
                by_check: 1,
                last_ip: Some(ip)
            }
        );
        assert_eq!(refusals.take().total(), 0, "a report starts a new count");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234), "1,234");
        assert_eq!(thousands(20_000), "20,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
