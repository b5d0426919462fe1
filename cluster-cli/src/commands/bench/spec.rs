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
    /// Pub/sub: one publisher, 100 subscribers on a wildcard (our hub only).
    #[value(name = "W7")]
    W7,
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
            Workload::W7 => "W7",
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

/// Which client code generates the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ClientKind {
    /// The lean tokio-tungstenite client, the same for both systems.
    Lean,
    /// Our `cluster_transport::Consumer`, against our provider: W2 (the "our consumer"
    /// row), and W1 and W6 where the case compresses (the lean client cannot do
    /// permessage-deflate) or compares with a compressed case.
    Consumer,
    /// Our `cluster_rpc::Member` (W4, W5 and W7, against our hub).
    Member,
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
        });
        let json = serde_json::to_string(&spec).unwrap();
        let back: ChildSpec = serde_json::from_str(&json).unwrap();
        assert!(matches!(back, ChildSpec::Clients(c) if c.count == 7 && c.port == 9));
    }

    #[test]
    fn older_specs_read_as_plain_and_uncompressed() {
        let server: ServerSpec =
            serde_json::from_str(r#"{"system":"Ours","workload":"W6","senders":0}"#).unwrap();
        assert!(server.tls.is_none());
        assert_eq!(server.compressor, Compressor::Disabled);
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
