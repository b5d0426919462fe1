//! One run of each workload, as the parent drives its two children: the lines it sends
//! and expects, and the figures it makes of them.

use crate::children::{Children, Who};
use crate::report::RunFigures;
use crate::spec::ClientSpec;
use anyhow::Context;
use std::time::Duration;

/// W6s reads the server's RSS after this many heartbeat cycles.
pub(crate) const STEADY_CYCLES: u32 = 3;
/// Time W6 leaves the server to settle before reading its RSS again.
const W6_SETTLE: Duration = Duration::from_millis(200);

/// Fails the run unless all `conns` connections are open on the server and every one of
/// them negotiated permessage-deflate.
pub(crate) async fn check_compressed(children: &mut Children, conns: usize) -> anyhow::Result<()> {
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

/// The CPU time the children had spent at the start of a measured stretch.
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    /// Every server child's (W8: all three hubs), ns; `None` without a server child.
    server: Option<u128>,
    /// The clients child's, ns.
    clients: u128,
}

impl CpuMark {
    /// Reads every child's CPU time so far.
    async fn take(children: &mut Children) -> anyhow::Result<Self> {
        let servers = children.servers();
        for &who in servers.iter().chain([&Who::Clients]) {
            children.send(who, "CPU").await?;
        }
        let mut server = None;
        for &who in &servers {
            let [ns] = fields(children.expect(who, "CPU").await?, "CPU")?;
            server = Some(server.unwrap_or(0) + ns);
        }
        let [clients] = fields(children.expect(Who::Clients, "CPU").await?, "CPU")?;
        Ok(Self { server, clients })
    }

    /// Sets `figures`' CPU per message from this mark to now.
    async fn charge(self, children: &mut Children, figures: &mut RunFigures) -> anyhow::Result<()> {
        let now = Self::take(children).await?;
        let count = figures.count;
        let per_msg = |before: u128, after: u128| {
            (count > 0).then(|| after.saturating_sub(before) as f64 / count as f64)
        };
        figures.server_cpu_ns = self.server.zip(now.server).and_then(|(b, a)| per_msg(b, a));
        figures.client_cpu_ns = per_msg(self.clients, now.clients);
        Ok(())
    }

    /// A throughput run's figures: `count` messages in `nanos`, with the CPU spent
    /// since this mark.
    async fn throughput(
        self,
        children: &mut Children,
        count: u64,
        nanos: u128,
    ) -> anyhow::Result<RunFigures> {
        let mut figures = RunFigures {
            rate: count as f64 / secs(nanos).max(1e-9),
            count,
            secs: secs(nanos),
            ..RunFigures::default()
        };
        self.charge(children, &mut figures).await?;
        Ok(figures)
    }
}

/// The figures of an `ECHO <n> <total ns> <p50 ns> <p99 ns> <p999 ns>` line.
async fn latencies(children: &mut Children) -> anyhow::Result<RunFigures> {
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

pub(crate) async fn ingest(
    children: &mut Children,
    clients: ClientSpec,
) -> anyhow::Result<RunFigures> {
    let expected = clients.conns as u64 * clients.count;
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    let mark = CpuMark::take(children).await?;
    children.send(Who::Clients, "GO").await?;
    let [count, nanos] = fields(children.expect(Who::Server, "INGEST").await?, "INGEST")?;
    let count = u64::try_from(count)?;
    anyhow::ensure!(
        count == expected,
        "server counted {count} messages, {expected} were sent"
    );
    mark.throughput(children, count, nanos).await
}

pub(crate) async fn echo(
    children: &mut Children,
    clients: ClientSpec,
) -> anyhow::Result<RunFigures> {
    children.start_clients(clients)?;
    latencies(children).await
}

pub(crate) async fn broadcast(
    children: &mut Children,
    clients: ClientSpec,
) -> anyhow::Result<RunFigures> {
    let (k, conns) = (clients.count, clients.conns);
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    let mark = CpuMark::take(children).await?;
    children
        .send(Who::Server, &format!("BROADCAST {k} {conns}"))
        .await?;
    let [total, nanos] = fields(
        children.expect(Who::Clients, "BROADCAST").await?,
        "BROADCAST",
    )?;
    let total = u64::try_from(total)?;
    anyhow::ensure!(
        total == k * conns as u64,
        "clients got {total} messages, expected {}",
        k * conns as u64
    );
    mark.throughput(children, total, nanos).await
}

/// W4 (and W8's calls across hubs): the members warm up and connect; the calls are timed
/// after `GO`.
pub(crate) async fn rpc(
    children: &mut Children,
    clients: ClientSpec,
) -> anyhow::Result<RunFigures> {
    let in_flight = clients.in_flight;
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    let mark = CpuMark::take(children).await?;
    children.send(Who::Clients, "GO").await?;
    let mut figures = if in_flight <= 1 {
        latencies(children).await?
    } else {
        let [n, nanos] = fields(children.expect(Who::Clients, "RPC").await?, "RPC")?;
        RunFigures {
            rate: n as f64 / secs(nanos).max(1e-9),
            count: u64::try_from(n)?,
            secs: secs(nanos),
            ..RunFigures::default()
        }
    };
    mark.charge(children, &mut figures).await?;
    Ok(figures)
}

/// W5 rounds: untimed warm-up rounds, then timed ones, each of a run's count of jobs, on
/// the same hub and workers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rounds {
    pub(crate) warmup: u64,
    pub(crate) timed: u64,
}

/// W5 (and W8's jobs): the workers connect, then the submitter submits every job and
/// checks every result: the hub (the first, in W8), or, without a hub (W8's baseline),
/// the clients child on `GO`. A hub first runs `rounds.warmup` rounds outside the
/// measurement (its memory and connections warm, as in a long-lived hub), then
/// `rounds.timed` rounds back to back: the figures are their jobs over their summed time.
pub(crate) async fn jobs(
    children: &mut Children,
    clients: ClientSpec,
    local_workers: usize,
    rounds: Rounds,
) -> anyhow::Result<RunFigures> {
    let n = clients.count;
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    let hub = children.servers().first().copied();
    anyhow::ensure!(
        hub.is_some() || (rounds.warmup == 0 && rounds.timed == 1),
        "rounds of jobs need a hub"
    );
    if let Some(hub) = hub {
        for _ in 0..rounds.warmup {
            children
                .send(hub, &format!("JOBS {n} {local_workers} 1"))
                .await?;
            let [done, ..] = fields::<4>(children.expect(hub, "JOBS").await?, "JOBS")?;
            anyhow::ensure!(done == u128::from(n), "{done} results of {n} warm-up jobs");
        }
    }
    let mark = CpuMark::take(children).await?;
    let submitter = match hub {
        Some(hub) => {
            children
                .send(hub, &format!("JOBS {n} {local_workers} {}", rounds.timed))
                .await?;
            hub
        }
        None => {
            children.send(Who::Clients, "GO").await?;
            Who::Clients
        }
    };
    let [done, nanos, fsyncs, bytes] = fields(children.expect(submitter, "JOBS").await?, "JOBS")?;
    let done = u64::try_from(done)?;
    let expected = n.saturating_mul(rounds.timed);
    anyhow::ensure!(
        done == expected,
        "{done} results of {expected} jobs checked"
    );
    let mut figures = mark.throughput(children, done, nanos).await?;
    if bytes > 0 {
        figures.fsyncs_per_sec = Some(fsyncs as f64 / secs(nanos).max(1e-9));
        figures.bytes_per_job = Some(bytes as f64 / done.max(1) as f64);
    }
    Ok(figures)
}

/// W7 (and W8's pub/sub across hubs): every member connects and subscribes, each hub
/// confirms its share of the subscriptions (`subs_per_hub`, in the order of
/// [`Children::servers`]; none without a hub), then the publisher publishes after `GO`.
pub(crate) async fn pubsub(
    children: &mut Children,
    clients: ClientSpec,
    subs_per_hub: &[usize],
) -> anyhow::Result<RunFigures> {
    let (k, subscribers) = (clients.count, clients.conns);
    children.start_clients(clients)?;
    children.expect(Who::Clients, "CONNECTED").await?;
    for (who, &expected) in children.servers().into_iter().zip(subs_per_hub) {
        children.send(who, &format!("SUBS {expected}")).await?;
        let [subs] = fields(children.expect(who, "SUBS").await?, "SUBS")?;
        anyhow::ensure!(
            subs == expected as u128,
            "{who} has {subs} subscriptions, expected {expected}"
        );
    }
    let mark = CpuMark::take(children).await?;
    children.send(Who::Clients, "GO").await?;
    let [delivered, nanos, lost] =
        fields(children.expect(Who::Clients, "PUBSUB").await?, "PUBSUB")?;
    let (delivered, lost) = (u64::try_from(delivered)?, u64::try_from(lost)?);
    let expected = k * subscribers as u64;
    anyhow::ensure!(
        delivered.checked_add(lost) == Some(expected),
        "subscribers got {delivered} messages and lost {lost}, expected {expected}"
    );
    let mut figures = mark.throughput(children, delivered, nanos).await?;
    figures.lost = Some(lost);
    Ok(figures)
}

pub(crate) async fn idle(
    children: &mut Children,
    clients: ClientSpec,
) -> anyhow::Result<RunFigures> {
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

/// W6s: the connections open, each echoes once, then they idle (answering `PING`) for
/// [`STEADY_CYCLES`] heartbeat cycles and a half; the server's RSS is read then, and every
/// connection must still be open.
pub(crate) async fn steady(
    children: &mut Children,
    clients: ClientSpec,
    heartbeat: Duration,
) -> anyhow::Result<RunFigures> {
    children.send(Who::Server, "RSS").await?;
    let [before] = fields(children.expect(Who::Server, "RSS").await?, "RSS")?;
    children.start_clients(clients)?;
    let [n, nanos] = fields(children.expect(Who::Clients, "READY").await?, "READY")?;
    anyhow::ensure!(n > 0, "no connections");
    tokio::time::sleep(heartbeat * STEADY_CYCLES + heartbeat / 2).await;
    children.send(Who::Server, "CONNS").await?;
    let [open] = fields(children.expect(Who::Server, "CONNS").await?, "CONNS")?;
    anyhow::ensure!(
        open == n,
        "{open} of {n} connections open after {STEADY_CYCLES} heartbeat cycles"
    );
    children.send(Who::Server, "RSS").await?;
    let [after] = fields(children.expect(Who::Server, "RSS").await?, "RSS")?;
    let kb = after.saturating_sub(before) as f64 / n as f64;
    Ok(RunFigures {
        rate: kb,
        count: u64::try_from(n).context("connection count")?,
        secs: secs(nanos),
        kb_per_conn: Some(kb),
        ..RunFigures::default()
    })
}
