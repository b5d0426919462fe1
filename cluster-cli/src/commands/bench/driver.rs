//! The parent: which cases run, how big they are, and each run against each system in
//! its own pair of child processes under a hard timeout.

use super::children::{Children, Who};
use super::report::{si, CaseResult, RunFigures};
use super::spec::{ClientKind, ClientSpec, ServerSpec, System, Workload};
use anyhow::Context;
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
/// Time W6 leaves the server to settle before reading its RSS again.
const W6_SETTLE: Duration = Duration::from_millis(200);

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
    client: ClientKind,
    systems: Vec<System>,
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
        client,
        systems: systems.to_vec(),
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
            Workload::W6 => {
                let conns = if plan.quick { 500 } else { 5000 };
                out.push(case(
                    workload,
                    format!("W6 idle x{conns}"),
                    "connects/s",
                    conns,
                    ClientKind::Lean,
                    all,
                ));
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
    rows
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
            CaseResult::new(system, case.workload, &case.name, case.unit, runs, error)
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
    let server = ServerSpec {
        system,
        workload: case.workload,
        senders,
    };
    let (mut children, port) = Children::start_server(server).await?;
    let clients = ClientSpec {
        workload: case.workload,
        port,
        conns: case.conns,
        count: size.count,
        warmup: size.warmup,
        client: case.client,
    };
    let figures = match case.workload {
        Workload::W1 => ingest(&mut children, clients).await?,
        Workload::W2 => echo(&mut children, clients).await?,
        Workload::W3 => broadcast(&mut children, clients).await?,
        Workload::W6 => idle(&mut children, clients).await?,
    };
    children.finish().await;
    Ok(figures)
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
    Ok(RunFigures {
        rate: count as f64 / secs(nanos).max(1e-9),
        count,
        secs: secs(nanos),
        server_cpu_ns: per_msg(server_before, server_after, count),
        client_cpu_ns: per_msg(clients_before, clients_after, count),
        ..RunFigures::default()
    })
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
    Ok(RunFigures {
        rate: total as f64 / secs(nanos).max(1e-9),
        count: total,
        secs: secs(nanos),
        server_cpu_ns: per_msg(server_before, server_after, total),
        client_cpu_ns: per_msg(clients_before, clients_after, total),
        ..RunFigures::default()
    })
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
            workloads: vec![Workload::W1, Workload::W2, Workload::W3, Workload::W6],
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
                "W2 echo",
                "W2 echo (our consumer)",
                "W3 broadcast",
                "W6 idle x5000"
            ]
        );
        let baseline_only = Plan {
            systems: vec![System::Baseline],
            ..plan
        };
        assert!(cases(&baseline_only)
            .iter()
            .all(|c| c.name != "W2 echo (our consumer)"));
    }

    #[test]
    fn scaled_counts_are_bounded() {
        assert_eq!(scaled(1e6, 100, 1_000), 30_000);
        assert_eq!(scaled(0.0, 16, 1_000), 1_000);
        assert_eq!(scaled(1e12, 1, 1_000), 400_000_000);
    }
}
