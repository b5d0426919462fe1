//! `cluster soak` (`cluster-bench soak`): a real `cluster provider` process under hostile
//! and heavy load, phase by phase, on loopback; every phase bounded in count and time.
//!
//! The provider runs with its defaults except a short heartbeat (so that idle consumers
//! live through several cycles) and, with `--quick`, a short handshake time limit; more
//! provider flags go after `--`. One healthy consumer echoes through it all along
//! ([`healthy`]). Phases ([`PhaseKind`]): slowloris, a handshake flood, garbage after a
//! valid upgrade, a ping flood, slow readers during a broadcast, churn, and idle
//! consumers.
//!
//! For each phase the soak prints the provider's resident memory and open file
//! descriptors before, at the peak during, and after it (once settled), the healthy
//! consumer's p99 round trip, the lines the provider logged, and the phase's own checks.
//! A phase passes when RSS is back within 10% of the baseline (taken before the first
//! phase), the file descriptors are back to it, the healthy consumer never dropped nor
//! missed an echo and its p99 stayed under 50 ms, and the phase's own checks held. The
//! command fails naming each failed criterion.

mod crowd;
mod flood;
mod garbage;
mod healthy;
mod ping_flood;
mod provider;
mod report;
mod slow_readers;
mod slowloris;
mod wire;

pub(crate) use provider::exec_child;
use report::Check;

use crate::common::print_line;
use crate::sys;
use healthy::Healthy;
use provider::{usage_of, ProviderProcess, Usage};
use report::{Around, HealthyFigures, PhaseReport, RSS_SLACK};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The key consumers present (`--auth key=…` of the provider).
const KEY: &str = "SOAK";
/// Round trips of the healthy consumer a phase's window holds at least (its phase
/// waits for them after the load, up to an echo's wait).
const MIN_ROUND_TRIPS: usize = 3;
/// How often the peak sampler reads the provider's usage.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How often settling looks at the provider's usage.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// How long the warm-up's ping flood and broadcast last.
const WARM_UP_BURST: Duration = Duration::from_secs(1);

/// The phases, in the order they run by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PhaseKind {
    /// Connections sending an upgrade request one byte at a time.
    Slowloris,
    /// Wrong-key upgrades from many concurrent clients, each answered 403.
    HandshakeFlood,
    /// Broken frames after a valid upgrade, each closed with the right code.
    Garbage,
    /// Control pings from a client that never reads.
    PingFlood,
    /// Subscribers reading slowly while a publisher broadcasts.
    SlowReaders,
    /// Consumers connecting, echoing and closing in waves.
    Churn,
    /// Idle consumers held through several heartbeat cycles.
    Idle,
}

impl PhaseKind {
    /// The name the report uses.
    fn name(self) -> &'static str {
        match self {
            PhaseKind::Slowloris => "slowloris",
            PhaseKind::HandshakeFlood => "handshake-flood",
            PhaseKind::Garbage => "garbage",
            PhaseKind::PingFlood => "ping-flood",
            PhaseKind::SlowReaders => "slow-readers",
            PhaseKind::Churn => "churn",
            PhaseKind::Idle => "idle",
        }
    }
}

/// Options of `cluster soak`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Phases to run, comma separated, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "slowloris,handshake-flood,garbage,ping-flood,slow-readers,churn,idle"
    )]
    phases: Vec<PhaseKind>,
    /// A tenth of the counts, short durations and a 2 s handshake time limit: about a
    /// minute (the CI's version).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per phase on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// The `cluster` executable to run as the provider. Default: the one that ran
    /// `cluster soak`, else `cluster` next to this executable.
    #[arg(long, value_name = "PATH", env = "CLUSTER_EXE")]
    cluster: Option<PathBuf>,
    /// More `cluster provider` flags, after `--` (e.g. `-- --max-backpressure 262144`).
    #[arg(last = true, value_name = "PROVIDER_FLAGS")]
    provider_flags: Vec<String>,
}

/// The size of every phase.
#[derive(Debug, Clone, Copy)]
struct Plan {
    heartbeat: Duration,
    /// The provider's handshake time limit when the soak sets one.
    handshake_timeout: Option<Duration>,
    slowloris: slowloris::Slowloris,
    flood: flood::Flood,
    garbage: garbage::GarbageAfterUpgrade,
    ping_flood: ping_flood::PingFlood,
    slow_readers: slow_readers::SlowReaders,
    churn: crowd::Churn,
    idle: crowd::Idle,
    /// Longest wait for RSS and fds to come back after a phase.
    settle: Duration,
    /// Longest a phase's load may run.
    phase_limit: Duration,
    /// How long the healthy consumer runs before the baseline is taken.
    warm_up: Duration,
}

impl Plan {
    /// The full soak of issue 10, or its quick version.
    fn new(quick: bool) -> Self {
        let heartbeat = Duration::from_millis(if quick { 1000 } else { 2000 });
        // Three heartbeat cycles and a little more.
        let hold = heartbeat * 3 + heartbeat / 2;
        let (n, secs) = if quick { (10, 3) } else { (1, 10) };
        Self {
            heartbeat,
            handshake_timeout: quick.then(|| Duration::from_secs(2)),
            slowloris: slowloris::Slowloris {
                conns: 2_000 / n,
                byte_every: if quick {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(2)
                },
                limit: Duration::from_secs(if quick { 20 } else { 60 }),
            },
            flood: flood::Flood {
                upgrades: 20_000 / n,
                clients: if quick { 50 } else { 200 },
            },
            garbage: garbage::GarbageAfterUpgrade {
                conns: if quick { 120 } else { 1_000 },
            },
            ping_flood: ping_flood::PingFlood {
                duration: Duration::from_secs(secs),
            },
            slow_readers: slow_readers::SlowReaders {
                readers: 50 / n.min(5),
                read_rate: 16 * 1024,
                publish_rate: 20_000,
                duration: Duration::from_secs(secs),
            },
            churn: crowd::Churn {
                total: 5_000 / n,
                wave: 1_000 / n,
            },
            idle: crowd::Idle {
                conns: 10_000 / n,
                hold,
            },
            settle: Duration::from_secs(30),
            phase_limit: Duration::from_secs(if quick { 60 } else { 180 }),
            warm_up: Duration::from_secs(if quick { 1 } else { 2 }),
        }
    }

    /// The flags of `cluster provider` for this plan.
    fn provider_flags(&self, extra: &[String]) -> Vec<String> {
        let mut flags: Vec<String> = [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--json",
            "--quiet",
            "--echo",
            "--auth",
        ]
        .map(str::to_owned)
        .into();
        flags.push(format!("key={KEY}"));
        flags.push("--heartbeat-interval-ms".to_owned());
        flags.push(self.heartbeat.as_millis().to_string());
        if let Some(limit) = self.handshake_timeout {
            flags.push("--handshake-timeout-ms".to_owned());
            flags.push(limit.as_millis().to_string());
        }
        flags.extend_from_slice(extra);
        flags
    }
}

/// Runs the soak; fails naming every failed phase and criterion.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    // Before the provider starts: it inherits the raised limit.
    sys::raise_nofile();
    let runtime = sys::runtime()?;
    let reports = runtime.block_on(soak(&args))?;
    let table = report::table(&reports);
    if args.json {
        for report in &reports {
            print_line(&report.json());
        }
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} ({})", r.phase, r.failed.join("; ")))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} phases failed: {}",
        failed.len(),
        reports.len(),
        failed.join("; ")
    );
    Ok(())
}

async fn soak(args: &Args) -> anyhow::Result<Vec<PhaseReport>> {
    let plan = Plan::new(args.quick);
    let exe = provider::cluster_exe(args.cluster.clone())?;
    let mut provider =
        ProviderProcess::start(&exe, &plan.provider_flags(&args.provider_flags)).await?;
    let healthy = Healthy::start(provider.port(), KEY).await?;
    warm_up(provider.port(), &plan).await?;
    tokio::time::sleep(plan.warm_up).await;
    let baseline = provider.usage()?;
    eprintln!(
        "soak: {} provider (pid {}) on port {}: baseline {} KiB RSS, {} fds",
        exe.display(),
        provider.pid(),
        provider.port(),
        baseline.rss_kib,
        baseline.fds
    );
    healthy.take_window();
    let mut reports = Vec::with_capacity(args.phases.len());
    for &kind in &args.phases {
        let report = phase(kind, &plan, &mut provider, &healthy, baseline).await;
        eprintln!(
            "soak: {} {} (RSS {} -> peak {} -> {} KiB, fds {} -> {} -> {}, healthy p99 \
             {:.1} ms)",
            report.phase,
            if report.passed() { "passed" } else { "FAILED" },
            report.usage.before.rss_kib,
            report.usage.peak.rss_kib,
            report.usage.after.rss_kib,
            report.usage.before.fds,
            report.usage.peak.fds,
            report.usage.after.fds,
            report.healthy.p99_ms
        );
        if !report.passed() {
            for line in provider.log().last_lines() {
                eprintln!("soak:   provider log: {line}");
            }
        }
        reports.push(report);
        if !provider.is_running() {
            break;
        }
    }
    drop(healthy);
    provider.stop().await?;
    Ok(reports)
}

/// Runs every path a phase takes once, so that what the provider allocates once for good
/// is in the baseline: the code of each path (the executable's pages are part of RSS, and
/// a path first taken in a phase would count against it) and its one-time high-water
/// structures. A hub that has run for a while has seen a crowd before: its connection
/// registry's table, tokio's I/O registrations and the allocator's metadata for that many
/// connections are already grown. So the warm-up opens as many connections at once as
/// the largest phase holds, echoes once on each and closes them; refuses upgrades from as
/// many concurrent clients as the handshake flood has (a tenth of its count); sends each
/// kind of garbage twice; floods pings for a moment; and has two slow readers cut for
/// backpressure during a short broadcast (the typed layer's subscribe and publish paths).
/// The baseline is taken after it: a phase then passes only if it leaves more behind than
/// its own kind of traffic does the first time, which repeating a phase shows it does not
/// (BENCHMARKS.md, "Soak").
async fn warm_up(port: u16, plan: &Plan) -> anyhow::Result<()> {
    let crowd = plan.idle.conns;
    crowd::Churn {
        total: crowd,
        wave: crowd,
    }
    .run(port, KEY)
    .await?;
    let mut refused = wire::connect(port).await?;
    let (head, _) = wire::exchange(&mut refused, &wire::upgrade_request("WARM-UP")).await?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 403"), "warm-up: {head}");
    let clients = plan.flood.clients;
    flood::Flood {
        upgrades: (plan.flood.upgrades / 10).max(clients),
        clients,
    }
    .run(port)
    .await?;
    garbage::GarbageAfterUpgrade {
        conns: 2 * garbage::KINDS,
    }
    .run(port, KEY)
    .await?;
    ping_flood::PingFlood {
        duration: WARM_UP_BURST,
    }
    .run(port, KEY)
    .await?;
    slow_readers::SlowReaders {
        readers: 2,
        duration: WARM_UP_BURST,
        ..plan.slow_readers
    }
    .run(port, KEY)
    .await?;
    Ok(())
}

/// Runs one phase and measures around it.
async fn phase(
    kind: PhaseKind,
    plan: &Plan,
    provider: &mut ProviderProcess,
    healthy: &Healthy,
    baseline: Usage,
) -> PhaseReport {
    let before = provider.usage().unwrap_or_default();
    let log_before = provider.log().counts();
    let (stop_sampling, peak) = sample_peak(provider.pid());
    let start = Instant::now();
    let checks = match tokio::time::timeout(plan.phase_limit, load(kind, plan, provider)).await {
        Ok(Ok(checks)) => checks,
        Ok(Err(error)) => vec![Check::new("the phase ran", false, format!("{error:#}"))],
        Err(_) => vec![Check::new(
            "the phase ran",
            false,
            format!("timed out after {:?}", plan.phase_limit),
        )],
    };
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_sampling.send(());
    let peak = peak.await.unwrap_or_default().max(before);
    let (after, settle_secs) = settle(provider, baseline, plan.settle).await;
    healthy
        .until_round_trips(MIN_ROUND_TRIPS, healthy::ECHO_WAIT)
        .await;
    let log_after = provider.log().counts();
    PhaseReport::new(
        kind.name(),
        secs,
        Around {
            baseline,
            before,
            peak,
            after,
            settle_secs,
        },
        HealthyFigures::of(healthy.take_window()),
        (log_after.0 - log_before.0, log_after.1 - log_before.1),
        checks,
        provider.is_running(),
    )
}

/// The load of one phase.
async fn load(
    kind: PhaseKind,
    plan: &Plan,
    provider: &ProviderProcess,
) -> anyhow::Result<Vec<Check>> {
    let port = provider.port();
    match kind {
        PhaseKind::Slowloris => plan.slowloris.run(port, KEY).await,
        PhaseKind::HandshakeFlood => plan.flood.run(port).await,
        PhaseKind::Garbage => plan.garbage.run(port, KEY).await,
        PhaseKind::PingFlood => plan.ping_flood.run(port, KEY).await,
        PhaseKind::SlowReaders => plan.slow_readers.run(port, KEY).await,
        PhaseKind::Churn => plan.churn.run(port, KEY).await,
        PhaseKind::Idle => plan.idle.run(port, KEY, provider.pid()).await,
    }
}

/// Samples the usage of process `pid` every [`SAMPLE_EVERY`] until told to stop; the
/// task's result is the peak.
fn sample_peak(
    pid: u32,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Usage>,
) {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
    let peak = tokio::spawn(async move {
        let mut peak = Usage::default();
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = &mut stop_rx => return peak,
                _ = ticks.tick() => {
                    if let Ok(now) = usage_of(pid) {
                        peak = peak.max(now);
                    }
                }
            }
        }
    });
    (stop_tx, peak)
}

/// Waits until RSS is within [`RSS_SLACK`] of `baseline` and the fds are back, or until
/// `limit`; returns the usage then and how long it took.
async fn settle(provider: &ProviderProcess, baseline: Usage, limit: Duration) -> (Usage, f64) {
    let start = Instant::now();
    let rss_limit = baseline.rss_kib as f64 * (1.0 + RSS_SLACK);
    loop {
        let now = provider.usage().unwrap_or_default();
        let back = now.rss_kib as f64 <= rss_limit && now.fds <= baseline.fds;
        if back || start.elapsed() >= limit {
            return (now, start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_plan_is_issue_10_s() {
        let plan = Plan::new(false);
        assert_eq!(plan.slowloris.conns, 2_000);
        assert_eq!(plan.slowloris.byte_every, Duration::from_secs(2));
        assert_eq!((plan.flood.upgrades, plan.flood.clients), (20_000, 200));
        assert_eq!(plan.garbage.conns, 1_000);
        assert_eq!(plan.slow_readers.readers, 50);
        assert_eq!((plan.churn.total, plan.churn.wave), (5_000, 1_000));
        assert_eq!(plan.idle.conns, 10_000);
        assert!(plan.idle.hold >= plan.heartbeat * 3);
        assert!(plan.handshake_timeout.is_none());
    }

    #[test]
    fn the_quick_plan_is_smaller_and_its_provider_cuts_sooner() {
        let plan = Plan::new(true);
        assert_eq!(plan.slowloris.conns, 200);
        assert_eq!(plan.idle.conns, 1_000);
        assert!(plan.idle.hold >= plan.heartbeat * 3);
        let flags = plan.provider_flags(&["--max-backpressure".into(), "1000".into()]);
        let joined = flags.join(" ");
        assert!(joined.contains("--auth key=SOAK"), "{joined}");
        assert!(joined.contains("--handshake-timeout-ms 2000"), "{joined}");
        assert!(joined.contains("--heartbeat-interval-ms 1000"), "{joined}");
        assert!(joined.ends_with("--max-backpressure 1000"), "{joined}");
        assert!(
            joined.contains("--json") && joined.contains("--quiet"),
            "{joined}"
        );
    }
}
