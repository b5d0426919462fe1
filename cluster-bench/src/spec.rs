//! What `cluster bench` measures and what a child process is told to be. A child gets its
//! [`ChildSpec`] as JSON in the hidden `--child` argument.

use cluster_transport::Compressor;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Payload size of every message, as BENCH.md asks.
pub(crate) const PAYLOAD_LEN: usize = 64;

/// A W1 data message: 64 bytes, first byte `M`.
pub(crate) const INGEST_DATA: &str =
    "Mxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
/// The last W1 message of each connection: 64 bytes, first byte [`END_MARK`].
pub(crate) const INGEST_END: &str =
    "Exxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
/// First byte of [`INGEST_END`].
pub(crate) const END_MARK: u8 = b'E';
/// The W2/W3/W6 payload: 64 bytes.
pub(crate) const PAYLOAD: &str = "Pxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// A workload of BENCH.md that `cluster bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub(crate) enum Workload {
    /// Ingest: C consumers send M messages each; the server counts them.
    #[value(name = "W1")]
    W1,
    /// Echo: one consumer, sequential round trips.
    #[value(name = "W2")]
    W2,
    /// Broadcast: the server sends K messages to each of 100 consumers.
    #[value(name = "W3")]
    W3,
    /// RPC: a `#[cluster_service]` echo, one call in flight and 64 (our hub only).
    #[value(name = "W4")]
    W4,
    /// Jobs: 8 workers of 16 credits work FNV-1a jobs from the hub's queue (our hub only).
    #[value(name = "W5")]
    W5,
    /// Idle connections: server RSS per connection and connects/s.
    #[value(name = "W6")]
    W6,
    /// Idle connections in the steady state: server RSS per connection after at least
    /// three heartbeat cycles, every connection answering `PING`.
    #[value(name = "W6s")]
    W6s,
    /// Pub/sub: one publisher, 100 subscribers on a wildcard (our hub only).
    #[value(name = "W7")]
    W7,
    /// Three hubs on one NATS server: W7's pub/sub, W4's calls and W5's jobs (on
    /// JetStream) across them, beside bare async-nats baselines; and what cluster mode
    /// costs one hub's W4 and W7 when all traffic is local.
    #[value(name = "W8")]
    W8,
}

impl Workload {
    /// The name BENCH.md uses.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
            Workload::W5 => "W5",
            Workload::W6 => "W6",
            Workload::W6s => "W6s",
            Workload::W7 => "W7",
            Workload::W8 => "W8",
        }
    }
}

/// Which server a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub(crate) enum System {
    /// Our `cluster_transport::Provider`, heartbeat on.
    #[value(name = "network-cluster")]
    Ours,
    /// A plain tokio-tungstenite server (read/write buffers of 4096 bytes).
    #[value(name = "baseline")]
    Baseline,
}

impl System {
    /// The name the report uses.
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Ours => "network-cluster",
            System::Baseline => "baseline",
        }
    }
}

/// The global allocator of the running executable, as its `main` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// jemalloc (`cluster-bench`).
    Jemalloc,
    /// The system's (`cluster-bench-system-alloc`).
    System,
}

/// How the typed workloads' (W4, W5, W7) processes run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub(crate) enum Setup {
    /// Ours: current-thread runtimes where one thread does the work (W4's client, W5's hub
    /// and workers), jemalloc (the `cluster-bench` executable).
    #[default]
    #[value(name = "tuned")]
    Tuned,
    /// A library user's: tokio's multi-thread runtime everywhere, the system allocator
    /// (the `cluster-bench-system-alloc` executable).
    #[value(name = "default")]
    Default,
}

impl Setup {
    /// The name the report uses.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Setup::Tuned => "tuned",
            Setup::Default => "default",
        }
    }

    /// The allocator its processes use.
    pub(crate) fn allocator(self) -> Allocator {
        match self {
            Setup::Tuned => Allocator::Jemalloc,
            Setup::Default => Allocator::System,
        }
    }

    /// The executable its child processes run.
    pub(crate) fn exe(self) -> &'static str {
        match self {
            Setup::Tuned => "cluster-bench",
            Setup::Default => "cluster-bench-system-alloc",
        }
    }
}

/// Which client code generates the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ClientKind {
    /// The lean tokio-tungstenite client, the same for both systems (W5: the bare
    /// dispatcher's workers).
    Lean,
    /// Our `cluster_transport::Consumer`, against our provider: W2 (the "our consumer"
    /// row), and W1 and W6 where the case compresses (the lean client cannot do
    /// permessage-deflate) or compares with a compressed case.
    Consumer,
    /// Our `cluster_rpc::Member` (W4, W5 and W7, against our hub; W8 against three).
    Member,
    /// Bare async-nats clients straight to the NATS server (W8's baselines).
    Nats,
}

/// What a child process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub(crate) enum ChildSpec {
    /// A server: our provider or the baseline.
    Server(ServerSpec),
    /// A group of load-generating clients.
    Clients(ClientSpec),
}

/// A server child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ServerSpec {
    /// Which server: for W4, W5 and W7 `Ours` is a `cluster_rpc::Hub` on our provider.
    pub(crate) system: System,
    /// What it does with messages.
    pub(crate) workload: Workload,
    /// W1: how many connections send an end marker before the server reports.
    pub(crate) senders: usize,
    /// Serve `wss://` with this certificate and key (our provider only).
    #[serde(default)]
    pub(crate) tls: Option<TlsFiles>,
    /// permessage-deflate preset of our provider; `Disabled` (the default) for every case
    /// that is not about compression.
    #[serde(default)]
    pub(crate) compressor: Compressor,
    /// Install the Prometheus recorder and serve `/metrics` (our provider and hub only).
    #[serde(default)]
    pub(crate) metrics: bool,
    /// W5d: the hub keeps its jobs in this data directory (a temporary one on the local
    /// disk that the parent made, and removes once the child is gone, killed or not), with
    /// the durable store's defaults (group commit).
    #[serde(default)]
    pub(crate) data_dir: Option<PathBuf>,
    /// The heartbeat interval, ms (W6s): our provider's, and the baseline's own `PING`
    /// cycle. `None`: our provider's default, and no heartbeat on the baseline.
    #[serde(default)]
    pub(crate) heartbeat_ms: Option<u64>,
    /// How the process runs.
    #[serde(default)]
    pub(crate) setup: Setup,
    /// Our hub joins a cluster on the NATS server at this URL (`HubBuilder::cluster`).
    #[serde(default)]
    pub(crate) nats: Option<String>,
    /// W8: the hub is one of three: it serves nothing itself (a member on another hub
    /// serves W4's echo), and W5's jobs wait in JetStream on `nats`.
    #[serde(default)]
    pub(crate) across: bool,
}

/// A self-signed certificate for 127.0.0.1 and its key, PEM files written by the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TlsFiles {
    /// The certificate; the clients trust exactly this one.
    pub(crate) cert: PathBuf,
    /// Its private key (PKCS#8, unencrypted).
    pub(crate) key: PathBuf,
}

/// A clients child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClientSpec {
    /// What the clients do.
    pub(crate) workload: Workload,
    /// The server's port on 127.0.0.1.
    pub(crate) port: u16,
    /// How many connections (W5: worker members).
    pub(crate) conns: usize,
    /// W1: messages per connection; W2: measured round trips; W3: messages the server
    /// sends to each connection; W4: measured calls; W7: messages the publisher publishes
    /// (each subscriber gets them all). Unused by W6.
    pub(crate) count: u64,
    /// W2, W4: round trips or calls before measuring.
    pub(crate) warmup: u64,
    /// W4: calls in flight at once over the one connection; W5: credits of each worker.
    #[serde(default)]
    pub(crate) in_flight: usize,
    /// Which client code.
    pub(crate) client: ClientKind,
    /// Connect with TLS (`wss://127.0.0.1`), trusting only the certificate in this PEM
    /// file; `None`: plain `ws://`.
    #[serde(default)]
    pub(crate) ca: Option<PathBuf>,
    /// How the process runs.
    #[serde(default)]
    pub(crate) setup: Setup,
    /// W8: every hub's port (`port` is the first), the members spread over them; empty
    /// for one hub.
    #[serde(default)]
    pub(crate) hubs: Vec<u16>,
    /// W8's baselines ([`ClientKind::Nats`]): the NATS server's URL.
    #[serde(default)]
    pub(crate) nats: Option<String>,
}

impl ClientSpec {
    /// The hubs to spread members over: W8's three, else the one on `port`.
    pub(crate) fn hub_ports(&self) -> Vec<u16> {
        if self.hubs.is_empty() {
            vec![self.port]
        } else {
            self.hubs.clone()
        }
    }
}

impl ChildSpec {
    /// How the child runs.
    pub(crate) fn setup(&self) -> Setup {
        match self {
            ChildSpec::Server(spec) => spec.setup,
            ChildSpec::Clients(spec) => spec.setup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_64_bytes() {
        for p in [INGEST_DATA, INGEST_END, PAYLOAD] {
            assert_eq!(p.len(), PAYLOAD_LEN);
        }
        assert_eq!(INGEST_END.as_bytes()[0], END_MARK);
        assert_ne!(INGEST_DATA.as_bytes()[0], END_MARK);
    }

    #[test]
    fn specs_round_trip_as_json() {
        let spec = ChildSpec::Clients(ClientSpec {
            workload: Workload::W3,
            port: 9,
            conns: 100,
            count: 7,
            warmup: 0,
            in_flight: 0,
            client: ClientKind::Lean,
            ca: None,
            setup: Setup::Default,
            hubs: Vec::new(),
            nats: None,
        });
        let json = serde_json::to_string(&spec).unwrap();
        let back: ChildSpec = serde_json::from_str(&json).unwrap();
        assert!(matches!(back, ChildSpec::Clients(c) if c.count == 7 && c.port == 9));
        assert_eq!(spec.setup(), Setup::Default);
    }

    #[test]
    fn older_specs_read_as_plain_and_uncompressed() {
        let server: ServerSpec =
            serde_json::from_str(r#"{"system":"Ours","workload":"W6","senders":0}"#).unwrap();
        assert!(server.tls.is_none());
        assert_eq!(server.compressor, Compressor::Disabled);
        assert_eq!(server.setup, Setup::Tuned);
        let tls = ServerSpec {
            tls: Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
            }),
            compressor: Compressor::Shared,
            ..server
        };
        let back: ServerSpec = serde_json::from_str(&serde_json::to_string(&tls).unwrap()).unwrap();
        assert_eq!(back.compressor, Compressor::Shared);
        assert_eq!(back.tls.unwrap().cert, PathBuf::from("c.pem"));
    }
}
