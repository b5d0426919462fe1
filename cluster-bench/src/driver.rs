//! The parent: which cases run, how big they are, and each run against each system in
//! its own pair of child processes under a hard timeout.

use crate::cases::{cases, Case, Plan};
use crate::children::Children;
use crate::measure::{self, STEADY_CYCLES};
use crate::nats::NatsServer;
use crate::report::{deflated_len, si, CaseResult, RunFigures};
use crate::spec::{
    ClientKind, ClientSpec, ServerSpec, System, TlsFiles, Workload, INGEST_DATA, PAYLOAD_LEN,
};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// A run that has not finished by then is killed and its case reported as an error.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// What a full-size W1/W3 run aims to last (BENCH.md asks for 2–5 s).
const TARGET_SECS: f64 = 3.0;
/// W1 messages of a calibration run, over all connections.
const W1_PROBE_TOTAL: u64 = 1_000_000;
/// W3 messages per connection of a calibration run.
const W3_PROBE_K: u64 = 5_000;
/// W4 calls of a calibration run with many in flight.
const W4_PROBE_CALLS: u64 = 100_000;
/// W5 jobs of a round (BENCH.md's batch) and of a quick run.
const W5_JOBS: u64 = 200_000;
const W5_QUICK_JOBS: u64 = 20_000;
/// Most timed rounds of one W5 run: a wild calibration must not outlast [`RUN_TIMEOUT`].
const W5_MAX_ROUNDS: u64 = 50;
/// W7 messages published in a calibration run (each subscriber gets all of them).
const W7_PROBE_K: u64 = 5_000;
/// W8 jobs through JetStream of a calibration run (a full run is sized from its rate to
/// last [`TARGET_SECS`], ours and the baseline alike), and of a quick run.
const W8_PROBE_JOBS: u64 = 20_000;
const W8_QUICK_JOBS: u64 = 5_000;
/// Most jobs of one W8 run: a wild calibration must not outlast [`RUN_TIMEOUT`].
const W8_MAX_JOBS: u64 = 1_000_000;

/// How big one run is.
#[derive(Debug, Clone, Copy)]
struct Size {
    /// Per-connection messages (W1), round trips (W2), messages to each connection (W3),
    /// jobs of a round (W5).
    count: u64,
    /// W2/W4 warm-up round trips or calls; W5 warm-up rounds.
    warmup: u64,
    /// W5: timed rounds of `count` jobs, back to back on the same hub and workers (1
    /// elsewhere).
    rounds: u64,
}

/// Runs every case (or those whose name contains one of `only`, ignoring case); returns
/// a row per case and system.
pub(crate) async fn run_all(plan: &Plan, only: &[String]) -> Vec<CaseResult> {
    let only: Vec<String> = only.iter().map(|o| o.to_lowercase()).collect();
    let wanted = |case: &Case| {
        let name = case.name.to_lowercase();
        only.is_empty() || only.iter().any(|o| name.contains(o.as_str()))
    };
    let mut rows = Vec::new();
    for case in cases(plan).into_iter().filter(wanted) {
        rows.extend(run_case(plan, &case).await);
    }
    if let Some(Ok(files)) = TLS_FILES.get() {
        if let Some(dir) = files.cert.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    rows
}

/// The certificate and key of the TLS cases, made once per bench.
static TLS_FILES: OnceLock<Result<TlsFiles, String>> = OnceLock::new();

/// A self-signed certificate for 127.0.0.1 (rcgen's default: ECDSA P-256) and its key,
/// written once into a fresh directory under the system's temp dir; [`run_all`] removes
/// it at the end.
fn tls_files() -> anyhow::Result<TlsFiles> {
    TLS_FILES
        .get_or_init(|| write_tls_files().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("making a TLS certificate: {e}"))
}

fn write_tls_files() -> anyhow::Result<TlsFiles> {
    let dir = std::env::temp_dir().join(format!("cluster-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, certified.cert.pem())?;
    std::fs::write(&files.key, certified.key_pair.serialize_pem())?;
    Ok(files)
}

/// Sizes the case for each system, then runs it `plan.runs` times, alternating systems
/// so that drift on a shared machine hits both alike.
async fn run_case(plan: &Plan, case: &Case) -> Vec<CaseResult> {
    let mut sizes = Vec::new();
    let mut errors: Vec<Option<String>> = Vec::new();
    for &system in &case.systems {
        match timed(run_limit(case), size_for(plan, case, system)).await {
            Ok(size) => {
                sizes.push(size);
                errors.push(None);
            }
            Err(error) => {
                eprintln!(
                    "[{}] {}: sizing failed: {error:#}",
                    case.name,
                    system.name()
                );
                sizes.push(Size {
                    count: 0,
                    warmup: 0,
                    rounds: 1,
                });
                errors.push(Some(format!("sizing: {error:#}")));
            }
        }
    }
    let mut runs: Vec<Vec<RunFigures>> = vec![Vec::new(); case.systems.len()];
    for i in 1..=plan.runs {
        for (j, &system) in case.systems.iter().enumerate() {
            if errors[j].is_some() {
                continue;
            }
            match timed(run_limit(case), run_once(case, system, sizes[j])).await {
                Ok(figures) => {
                    eprintln!(
                        "[{}] {} run {i}/{}: {}",
                        case.name,
                        system.name(),
                        plan.runs,
                        summary(case, &figures)
                    );
                    runs[j].push(figures);
                }
                Err(error) => {
                    eprintln!(
                        "[{}] {} run {i}/{}: ERROR {error:#}",
                        case.name,
                        system.name(),
                        plan.runs
                    );
                    errors[j] = Some(format!("run {i}: {error:#}"));
                }
            }
        }
    }
    case.systems
        .iter()
        .zip(runs)
        .zip(errors)
        .map(|((&system, runs), error)| {
            let mut row =
                CaseResult::new(system, case.workload, &case.name, case.unit, runs, error);
            row.tls = case.tls;
            row.metrics = case.metrics;
            row.compressor = case.compressor.is_enabled().then(|| case.compressor.name());
            row.compare = case.compare.clone();
            row.setup = case.is_typed().then(|| case.setup.name());
            if case.workload == Workload::W1 && case.compressor.is_enabled() {
                row.set_deflated(PAYLOAD_LEN, deflated_len(INGEST_DATA.as_bytes()));
            }
            row
        })
        .collect()
}

/// One line of progress.
fn summary(case: &Case, f: &RunFigures) -> String {
    let rate = format!(
        "{}{} ({} in {:.2} s)",
        si(f.rate),
        case.unit,
        f.count,
        f.secs
    );
    match (f.p50_us, f.kb_per_conn) {
        (Some(p50), _) => format!(
            "p50 {p50:.1} µs, p99 {:.1}, p999 {:.1}; {rate}",
            f.p99_us.unwrap_or(f64::NAN),
            f.p999_us.unwrap_or(f64::NAN)
        ),
        (_, Some(kb)) if case.workload == Workload::W6s => {
            format!("{kb:.2} KB/conn ({} connections)", f.count)
        }
        (_, Some(kb)) => format!("{kb:.2} KB/conn; {rate}"),
        _ => {
            let rate = match (f.server_cpu_ns, f.client_cpu_ns) {
                (Some(server), Some(clients)) => {
                    format!("{rate}; CPU per msg: server {server:.0} ns, clients {clients:.0} ns")
                }
                _ => rate,
            };
            match f.lost {
                Some(lost) if lost > 0 => format!("{rate}; {lost} lost (core NATS: at most once)"),
                _ => rate,
            }
        }
    }
}

/// How long one run of `case` may take: [`RUN_TIMEOUT`], plus the heartbeat cycles W6s
/// waits for.
fn run_limit(case: &Case) -> Duration {
    RUN_TIMEOUT
        + case
            .heartbeat
            .map_or(Duration::ZERO, |h| h * (STEADY_CYCLES + 1))
}

/// `fut` under `limit`; dropping it on timeout kills its children.
async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {limit:?}")))
}

/// The size of the case's runs for `system`: fixed for W2/W6 and in quick mode, else
/// from a short calibration run so that each run lasts about [`TARGET_SECS`].
async fn size_for(plan: &Plan, case: &Case, system: System) -> anyhow::Result<Size> {
    let conns = case.conns as u64;
    let fixed = |count, warmup| {
        Ok(Size {
            count,
            warmup,
            rounds: 1,
        })
    };
    match (case.part, plan.quick) {
        (Workload::W5, true) if case.nats => fixed(W8_QUICK_JOBS, 0),
        (Workload::W5, false) if case.nats => {
            let probe = Size {
                count: W8_PROBE_JOBS,
                warmup: 0,
                rounds: 1,
            };
            let f = run_once(case, system, probe).await?;
            fixed(scaled(f.rate, 1, W8_PROBE_JOBS).min(W8_MAX_JOBS), 0)
        }
        (Workload::W1, true) => fixed((200_000 / conns).max(100), 0),
        (Workload::W3, true) => fixed(1_000, 0),
        (Workload::W2, true) => fixed(2_000, 200),
        (Workload::W2, false) => fixed(20_000, 1_000),
        (Workload::W6 | Workload::W6s, _) => fixed(0, 0),
        (Workload::W8, _) => anyhow::bail!("W8 runs as W4, W5 and W7 across hubs"),
        (Workload::W4, true) if case.in_flight <= 1 => fixed(2_000, 200),
        (Workload::W4, false) if case.in_flight <= 1 => fixed(20_000, 1_000),
        (Workload::W4, true) => fixed(20_000, 1_000),
        (Workload::W4, false) => {
            let f = run_once(
                case,
                system,
                Size {
                    count: W4_PROBE_CALLS,
                    warmup: 10_000,
                    rounds: 1,
                },
            )
            .await?;
            fixed(scaled(f.rate, 1, 10_000), 10_000)
        }
        (Workload::W5, true) => fixed(W5_QUICK_JOBS, 0),
        (Workload::W5, false) => {
            // A round of 200,000 jobs lasts 0.2-0.6 s here: a run is a warm-up round and
            // as many timed rounds as last about TARGET_SECS, on the same long-lived hub.
            let probe = Size {
                count: W5_JOBS,
                warmup: 0,
                rounds: 1,
            };
            let f = run_once(case, system, probe).await?;
            Ok(Size {
                count: W5_JOBS,
                warmup: 1,
                rounds: rounds_for(f.rate),
            })
        }
        (Workload::W7, true) => fixed(1_000, 0),
        (Workload::W7, false) => {
            let f = run_once(
                case,
                system,
                Size {
                    count: W7_PROBE_K,
                    warmup: 0,
                    rounds: 1,
                },
            )
            .await?;
            fixed(scaled(f.rate, conns, 1_000), 0)
        }
        (Workload::W1, false) => {
            let probe = Size {
                count: (W1_PROBE_TOTAL / conns).max(100),
                warmup: 0,
                rounds: 1,
            };
            let f = run_once(case, system, probe).await?;
            fixed(scaled(f.rate, conns, 1_000), 0)
        }
        (Workload::W3, false) => {
            let f = run_once(
                case,
                system,
                Size {
                    count: W3_PROBE_K,
                    warmup: 0,
                    rounds: 1,
                },
            )
            .await?;
            fixed(scaled(f.rate, conns, 1_000), 0)
        }
    }
}

/// Per-connection count for a run of [`TARGET_SECS`] at `rate` over `conns` connections.
fn scaled(rate: f64, conns: u64, min: u64) -> u64 {
    let per_conn = rate * TARGET_SECS / conns as f64;
    // Bounded: a wild calibration must not make a run take minutes.
    (per_conn as u64).clamp(min, 400_000_000 / conns)
}

/// W5 rounds of [`W5_JOBS`] for a run of about [`TARGET_SECS`] at `rate` jobs/s.
fn rounds_for(rate: f64) -> u64 {
    let rounds = (rate * TARGET_SECS / W5_JOBS as f64).ceil();
    // Bounded: a wild calibration must not make a run take minutes.
    (rounds as u64).clamp(1, W5_MAX_ROUNDS)
}

/// One run of the case against `system`.
async fn run_once(case: &Case, system: System, size: Size) -> anyhow::Result<RunFigures> {
    let senders = if case.workload == Workload::W1 {
        case.conns
    } else {
        0
    };
    let tls = if case.tls { Some(tls_files()?) } else { None };
    let ca: Option<PathBuf> = tls.as_ref().map(|files| files.cert.clone());
    let nats = if case.nats {
        Some(NatsServer::start().await?)
    } else {
        None
    };
    let nats_url = nats.as_ref().map(|n| n.url().to_owned());
    // W5d's data directory: made and removed here, not in the server child, which may be
    // killed at the end of a run (its own removal then never ran: 400 MB left per run).
    let data_dir = case.durable.then(tempfile::tempdir).transpose()?;
    let server = ServerSpec {
        system,
        workload: case.part,
        senders,
        tls,
        compressor: case.compressor,
        metrics: case.metrics,
        data_dir: data_dir.as_ref().map(|dir| dir.path().to_path_buf()),
        heartbeat_ms: case.heartbeat.map(|h| h.as_millis() as u64),
        setup: case.setup,
        nats: nats_url.clone(),
        across: case.hubs > 1,
    };
    // W8's baselines talk to NATS alone; our system runs `case.hubs` hubs.
    let client = case.client_for(system);
    let (mut children, hubs) = if client == ClientKind::Nats {
        (Children::without_server(), Vec::new())
    } else {
        let (mut children, port) = Children::start_server(server.clone()).await?;
        let mut hubs = vec![port];
        for _ in 1..case.hubs {
            hubs.push(children.start_hub(server.clone()).await?);
        }
        (children, hubs)
    };
    let clients = ClientSpec {
        workload: case.part,
        port: hubs.first().copied().unwrap_or(0),
        conns: case.conns,
        count: size.count,
        warmup: size.warmup,
        in_flight: case.in_flight,
        client,
        ca,
        setup: case.setup,
        hubs: if hubs.len() > 1 {
            hubs.clone()
        } else {
            Vec::new()
        },
        nats: nats_url,
    };
    let conns = clients.conns;
    // Members are spread over the hubs: member `i` on hub `i % hubs`.
    let on_hub = |h: usize| conns / hubs.len().max(1) + usize::from(h < conns % hubs.len().max(1));
    let figures = match case.part {
        Workload::W1 => measure::ingest(&mut children, clients).await?,
        Workload::W2 => measure::echo(&mut children, clients).await?,
        Workload::W3 => measure::broadcast(&mut children, clients).await?,
        Workload::W4 => measure::rpc(&mut children, clients).await?,
        Workload::W5 => {
            let rounds = measure::Rounds {
                warmup: size.warmup,
                timed: size.rounds,
            };
            measure::jobs(&mut children, clients, on_hub(0), rounds).await?
        }
        Workload::W6 => measure::idle(&mut children, clients).await?,
        Workload::W6s => {
            let heartbeat = case.heartbeat.context("W6s without a heartbeat")?;
            measure::steady(&mut children, clients, heartbeat).await?
        }
        Workload::W7 => {
            let subs: Vec<usize> = (0..hubs.len()).map(on_hub).collect();
            measure::pubsub(&mut children, clients, &subs).await?
        }
        Workload::W8 => anyhow::bail!("W8 runs as W4, W5 and W7 across hubs"),
    };
    if case.compressor.is_enabled() {
        measure::check_compressed(&mut children, conns).await?;
    }
    children.finish().await;
    drop(nats);
    drop(data_dir);
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_counts_are_bounded() {
        assert_eq!(scaled(1e6, 100, 1_000), 30_000);
        assert_eq!(scaled(0.0, 16, 1_000), 1_000);
        assert_eq!(scaled(1e12, 1, 1_000), 400_000_000);
    }

    #[test]
    fn w5_rounds_last_about_the_target_and_are_bounded() {
        assert_eq!(rounds_for(400_000.0), 6);
        assert_eq!(rounds_for(1_000_000.0), 15);
        assert_eq!(rounds_for(0.0), 1);
        assert_eq!(rounds_for(f64::NAN), 1);
        assert_eq!(rounds_for(1e12), W5_MAX_ROUNDS);
    }
}
