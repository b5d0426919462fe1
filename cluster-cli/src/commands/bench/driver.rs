//! The parent: which cases run, how big they are, and each run against each system in
//! its own pair of child processes under a hard timeout.

use super::children::{Children, Who};
use super::report::{deflated_len, si, CaseResult, Compare, RunFigures};
use super::spec::{
    ClientKind, ClientSpec, ServerSpec, System, TlsFiles, Workload, INGEST_DATA, PAYLOAD_LEN,
};
use anyhow::Context;
use cluster_transport::Compressor;
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
/// The sender counts of W1.
const W1_CONNS: [usize; 3] = [1, 16, 256];
/// Consumers of W3.
const W3_CONNS: usize = 100;
/// W4 calls of a calibration run with many in flight.
const W4_PROBE_CALLS: u64 = 100_000;
/// W4 calls in flight in the throughput case.
const W4_IN_FLIGHT: usize = 64;
/// W5 workers.
const W5_WORKERS: usize = 8;
/// W5 credits of each worker.
const W5_CREDITS: usize = 16;
/// W5 jobs of a full run (BENCH.md) and of a quick one.
const W5_JOBS: u64 = 200_000;
const W5_QUICK_JOBS: u64 = 20_000;
/// W7 subscribers.
const W7_SUBSCRIBERS: usize = 100;
/// W7 messages published in a calibration run (each subscriber gets all of them).
const W7_PROBE_K: u64 = 5_000;
/// Time W6 leaves the server to settle before reading its RSS again.
const W6_SETTLE: Duration = Duration::from_millis(200);
/// Senders of the W1 TLS and compression cases (and of W1 with our consumer).
const W1_VARIANT_CONNS: usize = 16;
/// The preset of the compressed cases: no per-connection compression state.
const SHARED: Compressor = Compressor::Shared;
/// The preset of the W6 case that shows what per-connection compression state costs.
const DEDICATED: Compressor = Compressor::Dedicated4Kb;

/// What the user asked for.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Workloads, in order.
    pub(crate) workloads: Vec<Workload>,
    /// Systems each case runs against.
    pub(crate) systems: Vec<System>,
    /// Runs per case and system.
    pub(crate) runs: u32,
    /// Small counts for a smoke test.
    pub(crate) quick: bool,
}

/// One case: a row per system in the report.
#[derive(Debug, Clone)]
struct Case {
    workload: Workload,
    name: String,
    unit: &'static str,
    conns: usize,
    /// W4: calls in flight; W5: credits of each worker.
    in_flight: usize,
    client: ClientKind,
    systems: Vec<System>,
    /// Serve and connect over TLS (our provider only).
    tls: bool,
    /// Our provider's permessage-deflate preset.
    compressor: Compressor,
    /// Our own row this case's ratio is taken against (the TLS and compression cases).
    compare: Option<Compare>,
}

/// How big one run is.
#[derive(Debug, Clone, Copy)]
struct Size {
    /// Per-connection messages (W1), round trips (W2), messages to each connection (W3).
    count: u64,
    /// W2 warm-up round trips.
    warmup: u64,
}

/// The cases of the plan.
fn cases(plan: &Plan) -> Vec<Case> {
    let case = |workload, name: String, unit, conns, client, systems: &[System]| Case {
        workload,
        name,
        unit,
        conns,
        in_flight: 0,
        client,
        systems: systems.to_vec(),
        tls: false,
        compressor: Compressor::Disabled,
        compare: None,
    };
    let versus = |case: &str, label| {
        Some(Compare {
            case: case.to_owned(),
            label,
        })
    };
    let all = &plan.systems[..];
    let ours: &[System] = if plan.systems.contains(&System::Ours) {
        &[System::Ours]
    } else {
        &[]
    };
    let mut out = Vec::new();
    for &workload in &plan.workloads {
        match workload {
            Workload::W1 => {
                for conns in W1_CONNS {
                    out.push(case(
                        workload,
                        format!("W1 ingest C={conns}"),
                        "messages/s",
                        conns,
                        ClientKind::Lean,
                        all,
                    ));
                }
                // Ours only: over TLS, and compressed. The lean client cannot compress, so
                // the compressed cases send with our consumer and compare with a plain
                // case sending with it too.
                if !ours.is_empty() {
                    let c = W1_VARIANT_CONNS;
                    let lean = format!("W1 ingest C={c}");
                    let consumer = format!("W1 ingest C={c} (our consumer)");
                    let w1 = |name: &str, client| {
                        case(workload, name.to_owned(), "messages/s", c, client, ours)
                    };
                    out.push(Case {
                        compare: versus(&lean, "lean client"),
                        ..w1(&consumer, ClientKind::Consumer)
                    });
                    out.push(Case {
                        tls: true,
                        compare: versus(&lean, "plain"),
                        ..w1(&format!("{lean} tls"), ClientKind::Lean)
                    });
                    out.push(Case {
                        compressor: SHARED,
                        compare: versus(&consumer, "plain"),
                        ..w1(&format!("{lean} deflate"), ClientKind::Consumer)
                    });
                    out.push(Case {
                        tls: true,
                        compressor: SHARED,
                        compare: versus(&consumer, "plain"),
                        ..w1(&format!("{lean} tls+deflate"), ClientKind::Consumer)
                    });
                }
            }
            Workload::W2 => {
                out.push(case(
                    workload,
                    "W2 echo".into(),
                    "round trips/s",
                    1,
                    ClientKind::Lean,
                    all,
                ));
                if !ours.is_empty() {
                    out.push(case(
                        workload,
                        "W2 echo (our consumer)".into(),
                        "round trips/s",
                        1,
                        ClientKind::Consumer,
                        ours,
                    ));
                }
            }
            Workload::W3 => {
                out.push(case(
                    workload,
                    "W3 broadcast".into(),
                    "deliveries/s",
                    W3_CONNS,
                    ClientKind::Lean,
                    all,
                ));
            }
            Workload::W4 if !ours.is_empty() => {
                for (name, in_flight) in [
                    ("W4 rpc in-flight 1".to_owned(), 1),
                    (format!("W4 rpc {W4_IN_FLIGHT} in flight"), W4_IN_FLIGHT),
                ] {
                    out.push(Case {
                        in_flight,
                        ..case(workload, name, "calls/s", 1, ClientKind::Member, ours)
                    });
                }
            }
            Workload::W7 if !ours.is_empty() => {
                out.push(case(
                    workload,
                    "W7 pub/sub".into(),
                    "deliveries/s",
                    W7_SUBSCRIBERS,
                    ClientKind::Member,
                    ours,
                ));
            }
            Workload::W5 if !ours.is_empty() => {
                out.push(Case {
                    in_flight: W5_CREDITS,
                    ..case(
                        workload,
                        format!("W5 jobs {W5_WORKERS}x{W5_CREDITS} credits"),
                        "jobs/s",
                        W5_WORKERS,
                        ClientKind::Member,
                        ours,
                    )
                });
            }
            // W4, W5 and W7 have no baseline.
            Workload::W4 | Workload::W5 | Workload::W7 => {}
            Workload::W6 => {
                let conns = if plan.quick { 500 } else { 5000 };
                let plain = format!("W6 idle x{conns}");
                out.push(case(
                    workload,
                    plain.clone(),
                    "connects/s",
                    conns,
                    ClientKind::Lean,
                    all,
                ));
                // Ours only: the same idle connections over TLS (the lean client), and
                // with permessage-deflate negotiated (our consumer: the lean client would
                // reject the provider's compressed frames).
                if !ours.is_empty() {
                    let w6 = |name: String, client| {
                        case(workload, name, "connects/s", conns, client, ours)
                    };
                    out.push(Case {
                        tls: true,
                        compare: versus(&plain, "plain"),
                        ..w6(format!("{plain} tls"), ClientKind::Lean)
                    });
                    for compressor in [SHARED, DEDICATED] {
                        let name = match compressor {
                            SHARED => format!("{plain} deflate"),
                            other => format!("{plain} deflate {}", other.name()),
                        };
                        out.push(Case {
                            compressor,
                            compare: versus(&plain, "plain"),
                            ..w6(name, ClientKind::Consumer)
                        });
                    }
                }
            }
        }
    }
    out
}

/// Runs every case; returns a row per case and system.
pub(crate) async fn run_all(plan: &Plan) -> Vec<CaseResult> {
    let mut rows = Vec::new();
    for case in cases(plan) {
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
        match timed(size_for(plan, case, system)).await {
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
            match timed(run_once(case, system, sizes[j])).await {
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
            row.compressor = case.compressor.is_enabled().then(|| case.compressor.name());
            row.compare = case.compare.clone();
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
        (_, Some(kb)) => format!("{kb:.2} KB/conn; {rate}"),
        _ => match (f.server_cpu_ns, f.client_cpu_ns) {
            (Some(server), Some(clients)) => {
                format!("{rate}; CPU per msg: server {server:.0} ns, clients {clients:.0} ns")
            }
            _ => rate,
        },
    }
}

/// `fut` under [`RUN_TIMEOUT`]; dropping it on timeout kills its children.
async fn timed<T>(fut: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(RUN_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {RUN_TIMEOUT:?}")))
}

/// The size of the case's runs for `system`: fixed for W2/W6 and in quick mode, else
/// from a short calibration run so that each run lasts about [`TARGET_SECS`].
async fn size_for(plan: &Plan, case: &Case, system: System) -> anyhow::Result<Size> {
    let conns = case.conns as u64;
    let fixed = |count, warmup| Ok(Size { count, warmup });
    match (case.workload, plan.quick) {
        (Workload::W1, true) => fixed((200_000 / conns).max(100), 0),
        (Workload::W3, true) => fixed(1_000, 0),
        (Workload::W2, true) => fixed(2_000, 200),
        (Workload::W2, false) => fixed(20_000, 1_000),
        (Workload::W6, _) => fixed(0, 0),
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
                },
            )
            .await?;
            fixed(scaled(f.rate, 1, 10_000), 10_000)
        }
        (Workload::W5, true) => fixed(W5_QUICK_JOBS, 0),
        (Workload::W5, false) => fixed(W5_JOBS, 0),
        (Workload::W7, true) => fixed(1_000, 0),
        (Workload::W7, false) => {
            let f = run_once(
                case,
                system,
                Size {
                    count: W7_PROBE_K,
                    warmup: 0,
                },
            )
            .await?;
            fixed(scaled(f.rate, conns, 1_000), 0)
        }
        (Workload::W1, false) => {
            let probe = Size {
                count: (W1_PROBE_TOTAL / conns).max(100),
                warmup: 0,
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

/// One run of the case against `system`.
async fn run_once(case: &Case, system: System, size: Size) -> anyhow::Result<RunFigures> {
    let senders = if case.workload == Workload::W1 {
        case.conns
    } else {
        0
    };
    let tls = if case.tls { Some(tls_files()?) } else { None };
    let ca: Option<PathBuf> = tls.as_ref().map(|files| files.cert.clone());
    let server = ServerSpec {
        system,
        workload: case.workload,
        senders,
        tls,
        compressor: case.compressor,
    };
    let (mut children, port) = Children::start_server(server).await?;
    let clients = ClientSpec {
        workload: case.workload,
        port,
        conns: case.conns,
        count: size.count,
        warmup: size.warmup,
        in_flight: case.in_flight,
        client: case.client,
        ca,
    };
    let conns = clients.conns;
    let figures = match case.workload {
        Workload::W1 => ingest(&mut children, clients).await?,
        Workload::W2 => echo(&mut children, clients).await?,
        Workload::W3 => broadcast(&mut children, clients).await?,
        Workload::W4 => rpc(&mut children, clients).await?,
        Workload::W5 => jobs(&mut children, clients).await?,
        Workload::W6 => idle(&mut children, clients).await?,
        Workload::W7 => pubsub(&mut children, clients).await?,
    };
    if case.compressor.is_enabled() {
        check_compressed(&mut children, conns).await?;
    }
    children.finish().await;
    Ok(figures)
}

/// Fails the run unless all `conns` connections are open on the server and every one of
/// them negotiated permessage-deflate.
async fn check_compressed(children: &mut Children, conns: usize) -> anyhow::Result<()> {
    children.send(Who::Server, "COMPRESSED").await?;
    let [compressed, open] = fields(
        children.expect(Who::Server, "COMPRESSED").await?,
        "COMPRESSED",
    )?;
    anyhow::ensure!(
        compressed == conns as u128 && open == conns as u128,
        "{compressed} of {open} open connections negotiated permessage-deflate, expected \
         all {conns}"
    );
    Ok(())
}

/// The numbers of a line, checked for count.
fn fields<const N: usize>(values: Vec<u128>, what: &str) -> anyhow::Result<[u128; N]> {
    values
        .try_into()
        .map_err(|v: Vec<u128>| anyhow::anyhow!("{what}: expected {N} numbers, got {}", v.len()))
}

/// Nanoseconds as seconds.
fn secs(nanos: u128) -> f64 {
    nanos as f64 / 1e9
}

/// Nanoseconds as microseconds.
fn micros(nanos: u128) -> f64 {
    nanos as f64 / 1e3
}

/// CPU time so far of the server and the clients, ns.
async fn cpu(children: &mut Children) -> anyhow::Result<[u128; 2]> {
    children.send(Who::Server, "CPU").await?;
    children.send(Who::Clients, "CPU").await?;
    let [server] = fields(children.expect(Who::Server, "CPU").await?, "CPU")?;
    let [clients] = fields(children.expect(Who::Clients, "CPU").await?, "CPU")?;
    Ok([server, clients])
}

/// A throughput run's figures: `count` messages in `nanos`, with the CPU both children
/// spent between two [`cpu`] readings.
fn throughput(count: u64, nanos: u128, before: [u128; 2], after: [u128; 2]) -> RunFigures {
    RunFigures {
        rate: count as f64 / secs(nanos).max(1e-9),
        count,
        secs: secs(nanos),
        server_cpu_ns: per_msg(before[0], after[0], count),
        client_cpu_ns: per_msg(before[1], after[1], count),
        ..RunFigures::default()
    }
}

/// CPU ns per message between two [`cpu`] readings.
fn per_msg(before: u128, after: u128, count: u64) -> Option<f64> {
    (count > 0).then(|| after.saturating_sub(before) as f64 / count as f64)
}

async fn ingest(children: &mut Children, clients: ClientSpec) -> anyhow::Result<RunFigures> {
    let expected = clients.conns as u64 * clients.count;
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    let [server_before, clients_before] = cpu(children).await?;
    children.send(Who::Clients, "GO").await?;
    let [count, nanos] = fields(children.expect(Who::Server, "INGEST").await?, "INGEST")?;
    let [server_after, clients_after] = cpu(children).await?;
    let count = u64::try_from(count)?;
    anyhow::ensure!(
        count == expected,
        "server counted {count} messages, {expected} were sent"
    );
    Ok(throughput(
        count,
        nanos,
        [server_before, clients_before],
        [server_after, clients_after],
    ))
}

async fn echo(children: &mut Children, clients: ClientSpec) -> anyhow::Result<RunFigures> {
    children.start_clients(clients)?;
    let [n, total, p50, p99, p999] = fields(children.expect(Who::Clients, "ECHO").await?, "ECHO")?;
    Ok(RunFigures {
        rate: n as f64 / secs(total).max(1e-9),
        count: u64::try_from(n)?,
        secs: secs(total),
        p50_us: Some(micros(p50)),
        p99_us: Some(micros(p99)),
        p999_us: Some(micros(p999)),
        ..RunFigures::default()
    })
}

async fn broadcast(children: &mut Children, clients: ClientSpec) -> anyhow::Result<RunFigures> {
    let (k, conns) = (clients.count, clients.conns);
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    let [server_before, clients_before] = cpu(children).await?;
    children
        .send(Who::Server, &format!("BROADCAST {k} {conns}"))
        .await?;
    let [total, nanos] = fields(
        children.expect(Who::Clients, "BROADCAST").await?,
        "BROADCAST",
    )?;
    let [server_after, clients_after] = cpu(children).await?;
    let total = u64::try_from(total)?;
    anyhow::ensure!(
        total == k * conns as u64,
        "clients got {total} messages, expected {}",
        k * conns as u64
    );
    Ok(throughput(
        total,
        nanos,
        [server_before, clients_before],
        [server_after, clients_after],
    ))
}

/// W4: the member warms up and connects; its calls are timed after `GO`.
async fn rpc(children: &mut Children, clients: ClientSpec) -> anyhow::Result<RunFigures> {
    let in_flight = clients.in_flight;
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    let [server_before, clients_before] = cpu(children).await?;
    children.send(Who::Clients, "GO").await?;
    let mut figures = if in_flight <= 1 {
        let [n, total, p50, p99, p999] =
            fields(children.expect(Who::Clients, "ECHO").await?, "ECHO")?;
        RunFigures {
            rate: n as f64 / secs(total).max(1e-9),
            count: u64::try_from(n)?,
            secs: secs(total),
            p50_us: Some(micros(p50)),
            p99_us: Some(micros(p99)),
            p999_us: Some(micros(p999)),
            ..RunFigures::default()
        }
    } else {
        let [n, nanos] = fields(children.expect(Who::Clients, "RPC").await?, "RPC")?;
        RunFigures {
            rate: n as f64 / secs(nanos).max(1e-9),
            count: u64::try_from(n)?,
            secs: secs(nanos),
            ..RunFigures::default()
        }
    };
    let [server_after, clients_after] = cpu(children).await?;
    figures.server_cpu_ns = per_msg(server_before, server_after, figures.count);
    figures.client_cpu_ns = per_msg(clients_before, clients_after, figures.count);
    Ok(figures)
}

/// W5: the workers connect, then the hub submits every job and checks every result.
async fn jobs(children: &mut Children, clients: ClientSpec) -> anyhow::Result<RunFigures> {
    let (n, workers) = (clients.count, clients.conns);
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    let [server_before, clients_before] = cpu(children).await?;
    children
        .send(Who::Server, &format!("JOBS {n} {workers}"))
        .await?;
    let [done, nanos] = fields(children.expect(Who::Server, "JOBS").await?, "JOBS")?;
    let [server_after, clients_after] = cpu(children).await?;
    let done = u64::try_from(done)?;
    anyhow::ensure!(done == n, "the hub checked {done} results of {n} jobs");
    Ok(throughput(
        done,
        nanos,
        [server_before, clients_before],
        [server_after, clients_after],
    ))
}

/// W7: every member connects and subscribes, the hub confirms the subscriptions, then
/// the publisher publishes after `GO`.
async fn pubsub(children: &mut Children, clients: ClientSpec) -> anyhow::Result<RunFigures> {
    let (k, subscribers) = (clients.count, clients.conns);
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    children
        .send(Who::Server, &format!("SUBS {subscribers}"))
        .await?;
    let [subs] = fields(children.expect(Who::Server, "SUBS").await?, "SUBS")?;
    anyhow::ensure!(
        subs == subscribers as u128,
        "the hub has {subs} subscriptions, expected {subscribers}"
    );
    let [server_before, clients_before] = cpu(children).await?;
    children.send(Who::Clients, "GO").await?;
    let [total, nanos] = fields(children.expect(Who::Clients, "PUBSUB").await?, "PUBSUB")?;
    let [server_after, clients_after] = cpu(children).await?;
    let total = u64::try_from(total)?;
    let expected = k * subscribers as u64;
    anyhow::ensure!(
        total == expected,
        "subscribers got {total} messages, expected {expected}"
    );
    Ok(throughput(
        total,
        nanos,
        [server_before, clients_before],
        [server_after, clients_after],
    ))
}

async fn idle(children: &mut Children, clients: ClientSpec) -> anyhow::Result<RunFigures> {
    children.send(Who::Server, "RSS").await?;
    let [before] = fields(children.expect(Who::Server, "RSS").await?, "RSS")?;
    children.start_clients(clients)?;
    let [n, nanos] = fields(children.expect(Who::Clients, "READY").await?, "READY")?;
    tokio::time::sleep(W6_SETTLE).await;
    children.send(Who::Server, "RSS").await?;
    let [after] = fields(children.expect(Who::Server, "RSS").await?, "RSS")?;
    anyhow::ensure!(n > 0, "no connections");
    let grown = after.saturating_sub(before) as f64;
    let n_f = n as f64;
    Ok(RunFigures {
        rate: n_f / secs(nanos).max(1e-9),
        count: u64::try_from(n).context("connection count")?,
        secs: secs(nanos),
        kb_per_conn: Some(grown / n_f),
        ..RunFigures::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_cover_the_plan() {
        let plan = Plan {
            workloads: vec![
                Workload::W1,
                Workload::W2,
                Workload::W3,
                Workload::W4,
                Workload::W5,
                Workload::W6,
                Workload::W7,
            ],
            systems: vec![System::Ours, System::Baseline],
            runs: 3,
            quick: false,
        };
        let names: Vec<String> = cases(&plan).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "W1 ingest C=1",
                "W1 ingest C=16",
                "W1 ingest C=256",
                "W1 ingest C=16 (our consumer)",
                "W1 ingest C=16 tls",
                "W1 ingest C=16 deflate",
                "W1 ingest C=16 tls+deflate",
                "W2 echo",
                "W2 echo (our consumer)",
                "W3 broadcast",
                "W4 rpc in-flight 1",
                "W4 rpc 64 in flight",
                "W5 jobs 8x16 credits",
                "W6 idle x5000",
                "W6 idle x5000 tls",
                "W6 idle x5000 deflate",
                "W6 idle x5000 deflate dedicated-4kb",
                "W7 pub/sub"
            ]
        );
        // The TLS and compression cases run on ours only, each against a plain row of ours.
        for case in cases(&plan) {
            let variant = case.tls || case.compressor.is_enabled();
            if variant {
                assert_eq!(case.systems, [System::Ours], "{}", case.name);
            }
            assert_eq!(
                variant || case.client == ClientKind::Consumer && case.workload == Workload::W1,
                case.compare.is_some(),
                "{}",
                case.name
            );
        }
        let baseline_only = Plan {
            systems: vec![System::Baseline],
            ..plan
        };
        assert!(cases(&baseline_only).iter().all(|c| {
            c.name != "W2 echo (our consumer)"
                && !c.tls
                && !c.compressor.is_enabled()
                && c.client != ClientKind::Consumer
                && !matches!(c.workload, Workload::W4 | Workload::W5 | Workload::W7)
        }));
    }

    #[test]
    fn scaled_counts_are_bounded() {
        assert_eq!(scaled(1e6, 100, 1_000), 30_000);
        assert_eq!(scaled(0.0, 16, 1_000), 1_000);
        assert_eq!(scaled(1e12, 1, 1_000), 400_000_000);
    }
}
