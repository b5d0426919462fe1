//! The clients child: the lean tokio-tungstenite load generator, the same code for both
//! systems. It answers the provider's text `PING` with `PONG` and skips its
//! `PROVIDER_HEARTBEAT|…` frame; the baseline sends neither.
//!
//! With a `ca` in the spec it connects over TLS (`wss://127.0.0.1`, trusting only that
//! certificate, no session resumption: every connection is a full handshake).
//!
//! Lines to the parent: `CONNECTED` (W1, W3), `ECHO <n> <total ns> <p50 ns> <p99 ns>
//! <p999 ns>` (W2), `BROADCAST <deliveries> <ns>` (W3), `READY <conns> <connect ns>` (W6).
//! From the parent: `GO` (W1, W4, W7) and `CPU` (answered `CPU <ns>`). The process ends
//! when stdin does. W4, W5 and W7 run our `cluster_rpc::Member` instead ([`rpc`],
//! [`jobs`], [`pubsub`]); W8's baselines bare async-nats clients ([`nats_baseline`]).

use crate::common::{print_line, report_echo, spawn_or_fail};
use crate::spec::{
    ClientKind, ClientSpec, Workload, INGEST_DATA, INGEST_END, PAYLOAD, PAYLOAD_LEN,
};
use crate::{consumer_client, dispatch, jobs, nats_baseline, pubsub, rpc, sys};
use anyhow::Context;
use cluster_transport::{PING, PONG, PROVIDER_HEARTBEAT_PREFIX};
use futures_util::{FutureExt, SinkExt, StreamExt, TryStreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// A client connection, plain or TLS.
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How the lean client reaches the server: the port, and the TLS configuration for
/// `wss://` (`None`: plain `ws://`).
#[derive(Debug, Clone)]
struct Target {
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// The spec's server: TLS when it names a certificate to trust.
    fn of(spec: &ClientSpec) -> anyhow::Result<Self> {
        let tls = spec.ca.as_deref().map(tls_config).transpose()?;
        Ok(Self {
            port: spec.port,
            tls,
        })
    }
}

/// A rustls client configuration (ring, as the library uses) trusting only the
/// certificate in `ca`, without session resumption.
fn tls_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Read buffer of a client connection. tungstenite zero-fills the whole read buffer before
/// each read, so its default 128 KiB made the clients spend most of their time in memset
/// when frames arrive one or two per read (W3); 8 KiB still takes 120 frames per read.
const CLIENT_READ_BUFFER: usize = 8 * 1024;
/// Longest wait for one connect or one message.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a clients child until its stdin ends.
pub(crate) fn main(spec: ClientSpec) -> anyhow::Result<()> {
    let single = matches!(spec.workload, Workload::W4 | Workload::W5);
    let runtime = sys::child_runtime(single, spec.setup)?;
    runtime.block_on(async move {
        let mut stdin = sys::stdin_lines();
        let mut go = None;
        let mut _workers = Vec::new();
        let mut _consumers = Vec::new();
        match (spec.workload, spec.client) {
            (Workload::W1, ClientKind::Consumer) => {
                let (go_tx, consumers) = consumer_client::ingest(&spec).await?;
                go = Some(go_tx);
                _consumers = consumers;
            }
            (Workload::W2, ClientKind::Consumer) => consumer_client::echo(&spec).await?,
            (Workload::W6, ClientKind::Consumer) => {
                _consumers = consumer_client::idle_connections(&spec).await?;
            }
            (_, ClientKind::Consumer) => anyhow::bail!("our consumer only runs W1, W2 and W6"),
            (Workload::W4, ClientKind::Member) => go = Some(rpc::calls(&spec).await?),
            (Workload::W7, ClientKind::Member) => go = Some(pubsub::pubsub(&spec).await?),
            (Workload::W5, ClientKind::Member) => _workers = jobs::workers(&spec).await?,
            (_, ClientKind::Member) => anyhow::bail!("our member only runs W4, W5 and W7"),
            (Workload::W7, ClientKind::Nats) => go = Some(nats_baseline::fan_out(&spec).await?),
            (Workload::W5, ClientKind::Nats) => {
                go = Some(nats_baseline::work_queue(&spec).await?);
            }
            (_, ClientKind::Nats) => anyhow::bail!("the bare NATS clients only run W5 and W7"),
            (Workload::W5, ClientKind::Lean) => dispatch::workers(&spec).await?,
            (Workload::W4 | Workload::W7, ClientKind::Lean) => {
                anyhow::bail!("W4 and W7 run on our member only")
            }
            (Workload::W8, ClientKind::Lean) => {
                anyhow::bail!("W8 runs as W4, W5 and W7 across hubs")
            }
            (Workload::W1, ClientKind::Lean) => go = Some(ingest(&spec).await?),
            (Workload::W2, ClientKind::Lean) => echo(&spec).await?,
            (Workload::W3, ClientKind::Lean) => broadcast(&spec).await?,
            (Workload::W6 | Workload::W6s, ClientKind::Lean) => idle_connections(&spec).await?,
        }
        // Stay connected (answering heartbeats) until the parent closes stdin.
        while let Some(line) = stdin.recv().await {
            match (line.trim(), &go) {
                ("GO", Some(go)) => go.send(true)?,
                ("CPU", _) => print_line(&format!("CPU {}", sys::cpu_ns()?)),
                _ => anyhow::bail!("unexpected command {line:?}"),
            }
        }
        Ok(())
    })
}

/// The clients' websocket configuration for W1–W3.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER)
}

/// Opens one connection to `ws://127.0.0.1:PORT/connect` (`wss://` over TLS).
async fn connect(target: &Target, config: WebSocketConfig) -> anyhow::Result<Ws> {
    let connecting = async {
        let port = target.port;
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (ws, _response) = match &target.tls {
            None => {
                let url = format!("ws://127.0.0.1:{port}/connect");
                let stream = MaybeTlsStream::Plain(stream);
                tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?
            }
            Some(tls) => {
                let url = format!("wss://127.0.0.1:{port}/connect");
                let connector = Some(Connector::Rustls(Arc::clone(tls)));
                tokio_tungstenite::client_async_tls_with_config(
                    url,
                    stream,
                    Some(config),
                    connector,
                )
                .await?
            }
        };
        anyhow::Ok(ws)
    };
    tokio::time::timeout(IO_TIMEOUT, connecting)
        .await
        .context("connect timed out")?
}

/// Opens `n` connections, [`CONNECT_CONCURRENCY`] at a time.
async fn connect_all(
    target: &Target,
    n: usize,
    config: WebSocketConfig,
) -> anyhow::Result<Vec<Ws>> {
    futures_util::stream::iter(0..n)
        .map(|_| connect(target, config))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// The next data message, answering the provider's heartbeat on the way.
async fn next_data(ws: &mut Ws) -> anyhow::Result<Message> {
    loop {
        // A timer per message would cost the clients more than parsing it: frames already
        // read or readable are taken without one.
        let next = match ws.next().now_or_never() {
            Some(next) => next,
            None => tokio::time::timeout(IO_TIMEOUT, ws.next())
                .await
                .context("no message in time")?,
        };
        let message = next.context("connection ended")??;
        match &message {
            Message::Text(text) if text.as_str() == PING => ws.send(Message::text(PONG)).await?,
            Message::Text(text) if text.starts_with(PROVIDER_HEARTBEAT_PREFIX) => {}
            Message::Text(_) | Message::Binary(_) => return Ok(message),
            Message::Close(frame) => anyhow::bail!("closed by the server: {frame:?}"),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Keeps a connection open, answering heartbeats, until it ends.
async fn idle(mut ws: Ws) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.as_str() == PING => {
                if ws.send(Message::text(PONG)).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// W1: every connection sends `count` messages back-to-back once the returned sender
/// says go, the last one an end marker.
async fn ingest(spec: &ClientSpec) -> anyhow::Result<watch::Sender<bool>> {
    let conns = connect_all(&Target::of(spec)?, spec.conns, client_config()).await?;
    let (go_tx, go_rx) = watch::channel(false);
    for ws in conns {
        let mut go = go_rx.clone();
        let count = spec.count;
        spawn_or_fail(async move {
            go.wait_for(|go| *go).await?;
            let ws = send_stream(ws, count).await?;
            idle(ws).await;
            Ok(())
        });
    }
    print_line("CONNECTED");
    Ok(go_tx)
}

/// Sends `count` messages, the last one an end marker, then flushes.
async fn send_stream(mut ws: Ws, count: u64) -> anyhow::Result<Ws> {
    let data = Message::Text(Utf8Bytes::from_static(INGEST_DATA));
    for _ in 1..count {
        ws.feed(data.clone()).await?;
    }
    ws.feed(Message::Text(Utf8Bytes::from_static(INGEST_END)))
        .await?;
    ws.flush().await?;
    Ok(ws)
}

/// One round trip: send the payload, wait for a data message of the same size.
async fn round_trip(ws: &mut Ws, message: &Message) -> anyhow::Result<()> {
    ws.send(message.clone()).await?;
    let reply = next_data(ws).await?;
    anyhow::ensure!(
        reply.len() == PAYLOAD_LEN,
        "echo of {} bytes, sent {PAYLOAD_LEN}",
        reply.len()
    );
    Ok(())
}

/// W2: sequential round trips on one connection.
async fn echo(spec: &ClientSpec) -> anyhow::Result<()> {
    let mut ws = connect(&Target::of(spec)?, client_config()).await?;
    let message = Message::Text(Utf8Bytes::from_static(PAYLOAD));
    for _ in 0..spec.warmup {
        round_trip(&mut ws, &message).await?;
    }
    let mut samples = Vec::with_capacity(usize::try_from(spec.count).unwrap_or(0));
    let start = Instant::now();
    for _ in 0..spec.count {
        let sent = Instant::now();
        round_trip(&mut ws, &message).await?;
        samples.push(sent.elapsed());
    }
    report_echo(samples, start.elapsed());
    tokio::spawn(idle(ws));
    Ok(())
}

/// W3's progress over every connection.
#[derive(Debug)]
struct Deliveries {
    per_conn: u64,
    conns: usize,
    done_conns: AtomicUsize,
    first: OnceLock<Instant>,
}

impl Deliveries {
    /// One connection received everything: the last one reports.
    fn conn_done(&self) {
        if self.done_conns.fetch_add(1, Ordering::AcqRel) + 1 == self.conns {
            let nanos = self
                .first
                .get()
                .map_or(0, |first| first.elapsed().as_nanos());
            let total = self.per_conn * self.conns as u64;
            print_line(&format!("BROADCAST {total} {nanos}"));
        }
    }
}

/// W3: every connection counts the server's messages until it has `count`.
async fn broadcast(spec: &ClientSpec) -> anyhow::Result<()> {
    let conns = connect_all(&Target::of(spec)?, spec.conns, client_config()).await?;
    let progress = Arc::new(Deliveries {
        per_conn: spec.count,
        conns: conns.len(),
        done_conns: AtomicUsize::new(0),
        first: OnceLock::new(),
    });
    for mut ws in conns {
        let progress = Arc::clone(&progress);
        spawn_or_fail(async move {
            for _ in 0..progress.per_conn {
                next_data(&mut ws).await?;
                progress.first.get_or_init(Instant::now);
            }
            progress.conn_done();
            idle(ws).await;
            Ok(())
        });
    }
    print_line("CONNECTED");
    Ok(())
}

/// W6: opens the connections, does one echo on each, and keeps them open.
async fn idle_connections(spec: &ClientSpec) -> anyhow::Result<()> {
    // Small buffers: thousands of connections in this process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let target = Target::of(spec)?;
    let start = Instant::now();
    let conns = connect_all(&target, spec.conns, config).await?;
    let connect_time = start.elapsed();
    let message = Message::Text(Utf8Bytes::from_static(PAYLOAD));
    let conns: Vec<Ws> = futures_util::stream::iter(conns)
        .map(|mut ws| {
            let message = message.clone();
            async move {
                round_trip(&mut ws, &message).await?;
                anyhow::Ok(ws)
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    print_line(&format!(
        "READY {} {}",
        conns.len(),
        connect_time.as_nanos()
    ));
    for ws in conns {
        tokio::spawn(idle(ws));
    }
    Ok(())
}
