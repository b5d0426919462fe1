//! Helpers every part of the bench and the soak shares: the line protocol to a parent
//! process, bounded waiting, tasks that fail the whole child, and latency percentiles.
//! A leaf: it uses no other module of this crate.

use std::future::Future;
use std::time::{Duration, Instant};

/// W3 sends this many rounds between looks at the connections' queues (both systems).
pub(crate) const BROADCAST_BATCH: u64 = 2048;
/// Longest W3 wait for a connection's queue to drain.
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(20);
/// How long [`wait_for`] waits.
const COUNT_WAIT: Duration = Duration::from_secs(20);

/// Prints one line on stdout and flushes, so a driving process sees it at once.
pub(crate) fn print_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reports a failure to the parent as one `ERROR` line and ends the process.
pub(crate) fn fail(error: &anyhow::Error) -> ! {
    let text = format!("{error:#}").replace(['\n', '\r'], " ");
    print_line(&format!("ERROR {text}"));
    std::process::exit(1)
}

/// Runs `task` on its own; a failure is reported to the parent and ends the process.
pub(crate) fn spawn_or_fail(task: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(error) = task.await {
            fail(&error);
        }
    });
}

/// Waits (bounded) until `count()` reaches `n` (of `what`, for the error).
pub(crate) async fn wait_for(
    count: impl Fn() -> usize,
    n: usize,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + COUNT_WAIT;
    while count() < n {
        if Instant::now() > deadline {
            anyhow::bail!("only {} of {n} {what} after {COUNT_WAIT:?}", count());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The sample at `per_mille` of sorted `samples` (500: the median, 990: p99); zero for
/// no samples.
pub(crate) fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    let i = (sorted.len() * per_mille / 1000).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

/// Prints the W2 result line from the round-trip times.
pub(crate) fn report_echo(samples: Vec<Duration>, total: Duration) {
    print_line(&echo_line(samples, total));
}

/// `ECHO <n> <total ns> <p50 ns> <p99 ns> <p999 ns>`.
fn echo_line(mut samples: Vec<Duration>, total: Duration) -> String {
    samples.sort_unstable();
    let at = |per_mille| percentile(&samples, per_mille).as_nanos();
    format!(
        "ECHO {} {} {} {} {}",
        samples.len(),
        total.as_nanos(),
        at(500),
        at(990),
        at(999)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_line_picks_percentiles() {
        let samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        assert_eq!(
            echo_line(samples, Duration::from_secs(1)),
            "ECHO 1000 1000000000 501000 991000 1000000"
        );
        assert_eq!(
            echo_line(Vec::new(), Duration::from_secs(1)),
            "ECHO 0 1000000000 0 0 0"
        );
    }
}
