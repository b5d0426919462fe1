//! The server child: starts our provider or the baseline, prints `PORT <port>`, then
//! answers the parent's stdin commands:
//!
//! - `RSS` → `RSS <KiB>`
//! - `CPU` → `CPU <ns>` (CPU time of the process so far)
//! - `COMPRESSED` (our provider) → `COMPRESSED <compressed> <open>`: open connections that
//!   negotiated permessage-deflate, and all open connections
//! - `BROADCAST <k> <conns>` → waits for `conns` connections, sends `k` messages to each,
//!   then `BROADCAST_SENT <nanos>`
//! - `SUBS <n>` (W7, our hub) → waits for `n` subscriptions, then `SUBS <count>`
//! - `JOBS <n> <workers>` (W5, our hub) → waits for `workers` workers, submits `n` jobs
//!   and checks every result, then `JOBS <n> <ns>` ([`jobs::submit_and_check`])
//!
//! For W4, W5 and W7 the server is our `cluster_rpc::Hub` ([`rpc::HubServer`]).
//!
//! W1 prints `INGEST <count> <nanos>` by itself once every sender has ended.

use super::spec::{ServerSpec, System, Workload};
use super::tally::Ingest;
use super::{baseline, jobs, ours, rpc, sys};
use crate::commands::print_line;
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// W3 sends this many rounds between looks at the connections' queues (both systems).
pub(crate) const BROADCAST_BATCH: u64 = 2048;
/// Longest W3 wait for a connection's queue to drain.
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(20);
/// How long a broadcast waits for its connections (W7: the hub for its subscriptions).
const CONNS_WAIT: Duration = Duration::from_secs(20);

/// What a server does with each message it receives.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// W1: count it.
    Ingest(Arc<Ingest>),
    /// W2, W6: send it back.
    Echo,
    /// W3: nothing (the clients only answer heartbeats).
    Ignore,
}

/// A running server of either system.
#[derive(Debug, Clone)]
pub(crate) enum Running {
    /// Our provider.
    Ours(Arc<ours::Server>),
    /// The plain tokio-tungstenite server.
    Baseline(Arc<baseline::Server>),
    /// Our hub on our provider (W4, W5, W7).
    Hub(Arc<rpc::HubServer>),
}

impl Running {
    /// The port it listens on.
    fn port(&self) -> u16 {
        match self {
            Running::Ours(s) => s.port(),
            Running::Baseline(s) => s.port(),
            Running::Hub(s) => s.port(),
        }
    }

    /// W3: sends `k` messages to each of `conns` connections; returns the time it took.
    async fn broadcast(&self, k: u64, conns: usize) -> anyhow::Result<Duration> {
        match self {
            Running::Ours(s) => s.broadcast(k, conns).await,
            Running::Baseline(s) => s.broadcast(k, conns).await,
            Running::Hub(_) => anyhow::bail!("the hub does not run W3"),
        }
    }
}

/// Runs a server child until its stdin ends.
pub(crate) fn main(spec: ServerSpec) -> anyhow::Result<()> {
    sys::child_runtime(spec.workload == Workload::W5)?.block_on(serve(spec))
}

async fn serve(spec: ServerSpec) -> anyhow::Result<()> {
    let mode = match spec.workload {
        Workload::W1 => Mode::Ingest(Arc::new(Ingest::new(spec.senders))),
        Workload::W2 | Workload::W6 => Mode::Echo,
        Workload::W3 => Mode::Ignore,
        Workload::W4 | Workload::W5 | Workload::W7 => match spec.system {
            System::Ours => Mode::Ignore,
            System::Baseline => anyhow::bail!("{} runs on our hub only", spec.workload.name()),
        },
    };
    let server = match (spec.system, spec.workload) {
        (System::Ours, Workload::W4 | Workload::W5 | Workload::W7) => {
            Running::Hub(Arc::new(rpc::HubServer::start(spec.workload).await?))
        }
        (System::Ours, _) => Running::Ours(Arc::new(
            ours::Server::start(mode, spec.tls.as_ref(), spec.compressor).await?,
        )),
        (System::Baseline, _) => {
            anyhow::ensure!(
                spec.tls.is_none() && !spec.compressor.is_enabled(),
                "the baseline has no TLS or compression"
            );
            Running::Baseline(Arc::new(baseline::Server::start(mode).await?))
        }
    };
    print_line(&format!("PORT {}", server.port()));
    let mut commands = sys::stdin_lines();
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["RSS"] => print_line(&format!("RSS {}", sys::rss_kib()?)),
            ["CPU"] => print_line(&format!("CPU {}", sys::cpu_ns()?)),
            ["COMPRESSED"] => {
                let Running::Ours(ours) = &server else {
                    anyhow::bail!("COMPRESSED needs our provider");
                };
                let (compressed, open) = ours.compressed();
                print_line(&format!("COMPRESSED {compressed} {open}"));
            }
            ["BROADCAST", k, conns] => {
                let k: u64 = k.parse().context("BROADCAST k")?;
                let conns: usize = conns.parse().context("BROADCAST conns")?;
                let server = server.clone();
                tokio::spawn(async move {
                    match server.broadcast(k, conns).await {
                        Ok(took) => print_line(&format!("BROADCAST_SENT {}", took.as_nanos())),
                        Err(error) => sys::fail(&error),
                    }
                });
            }
            ["SUBS", n] => {
                let Running::Hub(hub) = &server else {
                    anyhow::bail!("SUBS needs the hub");
                };
                let n: usize = n.parse().context("SUBS n")?;
                print_line(&format!("SUBS {}", hub.wait_for_subscriptions(n).await?));
            }
            ["JOBS", n, workers] => {
                let Running::Hub(hub) = &server else {
                    anyhow::bail!("JOBS needs the hub");
                };
                let n: u64 = n.parse().context("JOBS n")?;
                let workers: usize = workers.parse().context("JOBS workers")?;
                let hub = Arc::clone(hub);
                tokio::spawn(async move {
                    match jobs::submit_and_check(hub.hub(), n, workers).await {
                        Ok(took) => print_line(&format!("JOBS {n} {}", took.as_nanos())),
                        Err(error) => sys::fail(&error),
                    }
                });
            }
            _ => anyhow::bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

/// Waits (bounded) until `count()` reaches `n` (of `what`, for the error).
pub(crate) async fn wait_for(
    count: impl Fn() -> usize,
    n: usize,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONNS_WAIT;
    while count() < n {
        if Instant::now() > deadline {
            anyhow::bail!("only {} of {n} {what} after {CONNS_WAIT:?}", count());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
