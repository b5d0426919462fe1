//! The `network-cluster` side: our provider, heartbeat on, default limits; for the TLS and
//! compression cases with `wss://` and/or a permessage-deflate preset.

use crate::common::{wait_for, BROADCAST_BATCH, DRAIN_WAIT};
use crate::mode::Mode;
use crate::spec::{TlsFiles, PAYLOAD};
use crate::tally;
use cluster_transport::{Compressor, Connection, MetricsEndpoint, Provider, SslOptions};
use std::time::{Duration, Instant};

/// W3 waits while any connection has more than this many bytes queued. With
/// [`BROADCAST_BATCH`] rounds of 66-byte frames on top this stays well under the default
/// 1 MiB `max_backpressure`, so the provider never closes a consumer for being slow.
const LOW_WATER: usize = 256 * 1024;

/// Our provider, running.
#[derive(Debug)]
pub(crate) struct Server {
    provider: Provider,
}

impl Server {
    /// Binds a provider on 127.0.0.1 (any port) that handles messages per `mode`, serving
    /// `wss://` when `tls` is given, compressing with `compressor`, serving `metrics`
    /// when given, and with a heartbeat every `heartbeat` (`None`: the default interval).
    pub(crate) async fn start(
        mode: Mode,
        tls: Option<&TlsFiles>,
        compressor: Compressor,
        metrics: Option<MetricsEndpoint>,
        heartbeat: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let mut builder = Provider::builder()
            .host("127.0.0.1")
            .port(0)
            .compressor(compressor);
        if let Some(endpoint) = metrics {
            builder = builder.metrics(endpoint);
        }
        if let Some(interval) = heartbeat {
            builder = builder.heartbeat_interval(interval);
        }
        if let Some(files) = tls {
            builder = builder.tls(SslOptions::new(&files.cert, &files.key));
        }
        let builder = match mode {
            Mode::Ingest(ingest) => builder.on_message(move |_conn, message| {
                if let Some(done) = ingest.record(message.as_bytes()) {
                    tally::report(done);
                }
            }),
            Mode::Echo => builder.on_message(|conn, message| {
                if let Err(error) = conn.send(message) {
                    tracing::warn!(cause = %error, "echo failed");
                }
            }),
            Mode::Ignore => builder,
        };
        Ok(Self {
            provider: builder.bind().await?,
        })
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.provider.port()
    }

    /// How many connections are open.
    pub(crate) fn connection_count(&self) -> usize {
        self.provider.connection_count()
    }

    /// How many open connections negotiated permessage-deflate, and how many are open.
    pub(crate) fn compressed(&self) -> (usize, usize) {
        let connections = self.provider.connections();
        let compressed = connections.values().filter(|c| c.is_compressed()).count();
        (compressed, connections.len())
    }

    /// W3: `send_to_all` `k` times, pausing while a consumer's queue is long.
    pub(crate) async fn broadcast(&self, k: u64, conns: usize) -> anyhow::Result<Duration> {
        wait_for(|| self.provider.connection_count(), conns, "connections").await?;
        let connections: Vec<Connection> = self.provider.connections().into_values().collect();
        let start = Instant::now();
        let mut sent = 0;
        while sent < k {
            wait_for_room(&connections).await?;
            let rounds = BROADCAST_BATCH.min(k - sent);
            for _ in 0..rounds {
                let took = self.provider.send_to_all(PAYLOAD);
                if took != connections.len() {
                    anyhow::bail!(
                        "send_to_all reached {took} of {} connections",
                        connections.len()
                    );
                }
            }
            sent += rounds;
        }
        Ok(start.elapsed())
    }
}

/// Waits until no connection has more than [`LOW_WATER`] bytes queued.
async fn wait_for_room(connections: &[Connection]) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_WAIT;
    while connections.iter().any(|c| c.backpressure() > LOW_WATER) {
        if Instant::now() > deadline {
            anyhow::bail!("a consumer's queue did not drain in {DRAIN_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}
