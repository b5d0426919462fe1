//! The `baseline` side: a plain tokio-tungstenite 0.30 server, as one would write it from
//! the crate's examples. One task per connection runs a select loop over the split
//! reader and writer; other tasks reach a connection through its bounded tokio mpsc
//! channel, kept in a registry. Read and write buffers are 4096 bytes.
//!
//! With a heartbeat (W6s) one task sends the text `PING` into every connection's channel
//! each interval, as our provider's single heartbeat cycle does; a `PONG` is read and
//! dropped (it does not count strikes: only the memory of the cycle is measured).
//!
//! W3 paces its broadcast as [`ours`](crate::ours) does: [`BROADCAST_BATCH`] rounds of
//! `try_send`, then a wait until every channel is under [`LOW_WATER`] messages. (With
//! `send().await` per message instead, tokio's cooperative budget makes the broadcaster
//! yield every 128 sends and each connection task then flushes one or two messages per
//! syscall: 15x slower, which would measure the pattern rather than the server.)

use crate::common::{wait_for, BROADCAST_BATCH, DRAIN_WAIT};
use crate::mode::Mode;
use crate::spec::PAYLOAD;
use crate::tally;
use cluster_transport::{PING, PONG};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Messages a connection's channel holds before senders wait.
const QUEUE: usize = 8192;
/// W3 waits while any channel holds more than this many messages (about as many bytes as
/// `ours` allows: 4096 frames of 66 bytes).
const LOW_WATER: usize = 4096;

/// The websocket configuration: 4 KiB read and write buffers.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

/// Every open connection's sender, by connection number.
#[derive(Debug, Default)]
struct Peers {
    next_id: AtomicU64,
    map: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
}

impl Peers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Message>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, tx: mpsc::Sender<Message>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.map().insert(id, tx);
        id
    }

    fn remove(&self, id: u64) {
        self.map().remove(&id);
    }

    fn len(&self) -> usize {
        self.map().len()
    }

    fn snapshot(&self) -> Vec<mpsc::Sender<Message>> {
        self.map().values().cloned().collect()
    }
}

/// The baseline server, running.
#[derive(Debug)]
pub(crate) struct Server {
    port: u16,
    peers: Arc<Peers>,
}

impl Server {
    /// Listens on 127.0.0.1 (any port) and serves connections per `mode`, sending every
    /// connection `PING` each `heartbeat` when one is given.
    pub(crate) async fn start(mode: Mode, heartbeat: Option<Duration>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let peers = Arc::new(Peers::default());
        tokio::spawn(accept_loop(listener, Arc::clone(&peers), mode));
        if let Some(interval) = heartbeat {
            tokio::spawn(heartbeat_cycle(Arc::clone(&peers), interval));
        }
        Ok(Self { port, peers })
    }

    /// How many connections are open.
    pub(crate) fn connection_count(&self) -> usize {
        self.peers.len()
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// W3: `k` times, sends the payload into every connection's channel.
    pub(crate) async fn broadcast(&self, k: u64, conns: usize) -> anyhow::Result<Duration> {
        wait_for(|| self.peers.len(), conns, "connections").await?;
        let message = Message::Text(Utf8Bytes::from_static(PAYLOAD));
        let watched = self.peers.snapshot();
        let start = Instant::now();
        let mut sent = 0;
        while sent < k {
            wait_for_room(&watched).await?;
            let rounds = BROADCAST_BATCH.min(k - sent);
            for _ in 0..rounds {
                for tx in self.peers.snapshot() {
                    send(&tx, message.clone()).await?;
                }
            }
            sent += rounds;
        }
        Ok(start.elapsed())
    }
}

/// Queues one message, waiting only if the channel is full.
async fn send(tx: &mpsc::Sender<Message>, message: Message) -> anyhow::Result<()> {
    let closed = || anyhow::anyhow!("a connection closed during the broadcast");
    match tx.try_send(message) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(message)) => {
            tx.send(message).await.map_err(|_| closed())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
    }
}

/// Waits until no channel holds more than [`LOW_WATER`] messages.
async fn wait_for_room(senders: &[mpsc::Sender<Message>]) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_WAIT;
    while senders
        .iter()
        .any(|tx| tx.max_capacity() - tx.capacity() > LOW_WATER)
    {
        if Instant::now() > deadline {
            anyhow::bail!("a connection's channel did not drain in {DRAIN_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Every `interval`, queues `PING` for every connection (one whose channel is full skips
/// a beat).
async fn heartbeat_cycle(peers: Arc<Peers>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        for tx in peers.snapshot() {
            let _ = tx.try_send(Message::Text(Utf8Bytes::from_static(PING)));
        }
    }
}

async fn accept_loop(listener: TcpListener, peers: Arc<Peers>, mode: Mode) {
    loop {
        match listener.accept().await {
            Ok((stream, _addr)) => {
                tokio::spawn(serve(stream, Arc::clone(&peers), mode.clone()));
            }
            Err(error) => {
                tracing::warn!(cause = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, peers: Arc<Peers>, mode: Mode) {
    let _ = stream.set_nodelay(true);
    let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config())).await {
        Ok(ws) => ws,
        Err(error) => {
            tracing::debug!(cause = %error, "handshake failed");
            return;
        }
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let id = peers.insert(tx);
    if let Err(error) = connection(ws, rx, &mode).await {
        tracing::debug!(cause = %error, "connection ended");
    }
    peers.remove(id);
}

/// The connection's one task: reads and handles messages, writes what others queued.
async fn connection(
    ws: WebSocketStream<TcpStream>,
    mut rx: mpsc::Receiver<Message>,
    mode: &Mode,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let Some(message) = incoming else { return Ok(()) };
                let message = message?;
                let payload: &[u8] = match &message {
                    Message::Text(text) if text.as_str() == PONG => continue,
                    Message::Text(text) => text.as_bytes(),
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => return Ok(()),
                    // tungstenite answers pings itself.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                match mode {
                    Mode::Ingest(ingest) => {
                        if let Some(done) = ingest.record(payload) {
                            tally::report(done);
                        }
                    }
                    Mode::Echo => sink.send(message).await?,
                    Mode::Ignore => {}
                }
            }
            Some(out) = rx.recv() => {
                sink.feed(out).await?;
                while let Ok(more) = rx.try_recv() {
                    sink.feed(more).await?;
                }
                sink.flush().await?;
            }
        }
    }
}
