//! The server child: starts our provider or the baseline, prints `PORT <port>`, then
//! answers the parent's stdin commands:
//!
//! - `RSS` → `RSS <KiB>`
//! - `CPU` → `CPU <ns>` (CPU time of the process so far)
//! - `CONNS` (W6s) → `CONNS <n>`: open connections
//! - `COMPRESSED` (our provider) → `COMPRESSED <compressed> <open>`: open connections that
//!   negotiated permessage-deflate, and all open connections
//! - `BROADCAST <k> <conns>` → waits for `conns` connections, sends `k` messages to each,
//!   then `BROADCAST_SENT <nanos>`
//! - `SUBS <n>` (W7, our hub) → waits for `n` subscriptions, then `SUBS <count>`
//! - `JOBS <n> <workers> <rounds>` (W5, our hub or the dispatcher) → waits for `workers`
//!   workers, then `rounds` times back to back submits `n` jobs and checks every result;
//!   then `JOBS <n × rounds> <ns> <fsyncs> <bytes written>` (the rounds' summed time, the
//!   job store's counts, 0 in memory) ([`jobs::submit_and_check`])
//!
//! For W4, W5 and W7 the server is our `cluster_rpc::Hub` ([`rpc::HubServer`]), in W8 one
//! of three in a cluster on NATS; W5's baseline is the bare credit dispatcher
//! ([`dispatch::Dispatcher`]).
//!
//! W1 prints `INGEST <count> <nanos>` by itself once every sender has ended.

use crate::common::{fail, print_line};
use crate::mode::Mode;
use crate::spec::{ServerSpec, System, Workload};
use crate::tally::Ingest;
use crate::{baseline, dispatch, jobs, ours, rpc, sys};
use anyhow::Context;
use cluster_transport::MetricsEndpoint;
use std::sync::Arc;
use std::time::Duration;

/// A running server of either system.
#[derive(Debug, Clone)]
pub(crate) enum Running {
    /// Our provider.
    Ours(Arc<ours::Server>),
    /// The plain tokio-tungstenite server.
    Baseline(Arc<baseline::Server>),
    /// Our hub on our provider (W4, W5, W7).
    Hub(Arc<rpc::HubServer>),
    /// W5's baseline: the bare credit dispatcher.
    Dispatcher(Arc<dispatch::Dispatcher>),
}

impl Running {
    /// The port it listens on.
    fn port(&self) -> u16 {
        match self {
            Running::Ours(s) => s.port(),
            Running::Baseline(s) => s.port(),
            Running::Hub(s) => s.port(),
            Running::Dispatcher(s) => s.port(),
        }
    }

    /// How many connections are open (our hub: its provider's).
    fn connection_count(&self) -> usize {
        match self {
            Running::Ours(s) => s.connection_count(),
            Running::Baseline(s) => s.connection_count(),
            Running::Hub(s) => s.hub().provider().connection_count(),
            Running::Dispatcher(s) => s.workers(),
        }
    }

    /// W3: sends `k` messages to each of `conns` connections; returns the time it took.
    async fn broadcast(&self, k: u64, conns: usize) -> anyhow::Result<Duration> {
        match self {
            Running::Ours(s) => s.broadcast(k, conns).await,
            Running::Baseline(s) => s.broadcast(k, conns).await,
            Running::Hub(_) | Running::Dispatcher(_) => {
                anyhow::bail!("W3 runs on the plain servers only")
            }
        }
    }
}

/// With `on`, the Prometheus recorder installed as the process's recorder and `/metrics`
/// to serve, as a user of our metrics runs (the metrics on/off cases).
fn metrics(on: bool) -> anyhow::Result<Option<MetricsEndpoint>> {
    Ok(if on {
        Some(MetricsEndpoint::install()?)
    } else {
        None
    })
}

/// Runs a server child until its stdin ends.
pub(crate) fn main(spec: ServerSpec) -> anyhow::Result<()> {
    sys::child_runtime(spec.workload == Workload::W5, spec.setup)?.block_on(serve(spec))
}

async fn serve(spec: ServerSpec) -> anyhow::Result<()> {
    let mode = match spec.workload {
        Workload::W1 => Mode::Ingest(Arc::new(Ingest::new(spec.senders))),
        Workload::W2 | Workload::W6 | Workload::W6s => Mode::Echo,
        Workload::W3 => Mode::Ignore,
        Workload::W4 | Workload::W7 if spec.system == System::Baseline => {
            anyhow::bail!("{} runs on our hub only", spec.workload.name())
        }
        Workload::W4 | Workload::W5 | Workload::W7 => Mode::Ignore,
        Workload::W8 => anyhow::bail!("W8's hubs run W4, W5 and W7 across them"),
    };
    let heartbeat = spec.heartbeat_ms.map(Duration::from_millis);
    let server = match (spec.system, spec.workload) {
        (System::Ours, Workload::W4 | Workload::W5 | Workload::W7) => Running::Hub(Arc::new(
            rpc::HubServer::start(
                spec.workload,
                metrics(spec.metrics)?,
                spec.data_dir.as_deref(),
                spec.nats.as_deref().map(|nats| rpc::Clustered {
                    nats,
                    across: spec.across,
                }),
            )
            .await?,
        )),
        (System::Baseline, Workload::W5) => {
            Running::Dispatcher(Arc::new(dispatch::Dispatcher::start().await?))
        }
        (System::Ours, _) => Running::Ours(Arc::new(
            ours::Server::start(
                mode,
                spec.tls.as_ref(),
                spec.compressor,
                metrics(spec.metrics)?,
                heartbeat,
            )
            .await?,
        )),
        (System::Baseline, _) => {
            anyhow::ensure!(
                spec.tls.is_none() && !spec.compressor.is_enabled() && !spec.metrics,
                "the baseline has no TLS, compression or metrics"
            );
            Running::Baseline(Arc::new(baseline::Server::start(mode, heartbeat).await?))
        }
    };
    print_line(&format!("PORT {}", server.port()));
    let mut commands = sys::stdin_lines();
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["RSS"] => print_line(&format!("RSS {}", sys::rss_kib()?)),
            ["CPU"] => print_line(&format!("CPU {}", sys::cpu_ns()?)),
            ["CONNS"] => print_line(&format!("CONNS {}", server.connection_count())),
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
                        Err(error) => fail(&error),
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
            ["JOBS", n, workers, rounds] => {
                let n: u64 = n.parse().context("JOBS n")?;
                let workers: usize = workers.parse().context("JOBS workers")?;
                let rounds: u64 = rounds.parse().context("JOBS rounds")?;
                let server = server.clone();
                tokio::spawn(async move {
                    match run_rounds(&server, n, workers, rounds).await {
                        Ok((took, fsyncs, bytes)) => print_line(&format!(
                            "JOBS {} {} {fsyncs} {bytes}",
                            n.saturating_mul(rounds),
                            took.as_nanos()
                        )),
                        Err(error) => fail(&error),
                    }
                });
            }
            _ => anyhow::bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

/// W5: `rounds` rounds of `n` jobs on the hub or the dispatcher, back to back; their
/// summed time, and the job store's fsyncs and bytes written meanwhile.
async fn run_rounds(
    server: &Running,
    n: u64,
    workers: usize,
    rounds: u64,
) -> anyhow::Result<(Duration, u64, u64)> {
    let mut took = Duration::ZERO;
    match server {
        Running::Hub(hub) => {
            let before = hub.hub().jobs().store_stats();
            for _ in 0..rounds {
                took += jobs::submit_and_check(hub.hub(), n, workers, !hub.is_across()).await?;
            }
            let after = hub.hub().jobs().store_stats();
            Ok((
                took,
                after.fsyncs - before.fsyncs,
                after.bytes_written - before.bytes_written,
            ))
        }
        Running::Dispatcher(d) => {
            for _ in 0..rounds {
                took += d.submit_and_check(n, workers).await?;
            }
            Ok((took, 0, 0))
        }
        _ => Err(anyhow::anyhow!("JOBS needs the hub or the dispatcher")),
    }
}
