//! Crowds of well-behaved consumers: churn (waves that connect, echo once and close) and
//! idle consumers held open through several heartbeat cycles. They are lean
//! tokio-tungstenite clients (small buffers, so that this process holds thousands) that
//! answer the provider's `PING` with `PONG`, as the original's consumers do.

use super::provider::{usage_of, Usage};
use super::Check;
use anyhow::Context;
use cluster_transport::{PING, PONG};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A lean consumer's connection.
type Ws = WebSocketStream<TcpStream>;

/// Consumers connecting (or closing) at once.
const CONCURRENCY: usize = 64;
/// Longest wait for one connect, echo or close.
const IO_WAIT: Duration = Duration::from_secs(30);
/// What each consumer echoes once.
const HELLO: &str = "hello from the crowd";

/// Churn: `total` consumers in waves of `wave`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Churn {
    /// Consumers in all.
    pub(crate) total: usize,
    /// Consumers per wave.
    pub(crate) wave: usize,
}

impl Churn {
    /// Runs the phase against the provider on `port`.
    pub(crate) async fn run(self, port: u16, key: &str) -> anyhow::Result<Vec<Check>> {
        let mut done = 0;
        let mut waves = 0;
        while done < self.total {
            let n = self.wave.min(self.total - done);
            let conns = connect_and_echo(port, key, n).await?;
            futures_util::stream::iter(conns)
                .for_each_concurrent(CONCURRENCY, close)
                .await;
            done += n;
            waves += 1;
        }
        Ok(vec![Check::new(
            "every churn consumer connected, echoed and closed",
            done == self.total,
            format!("{done} consumers in {waves} waves of {}", self.wave),
        )])
    }
}

/// Idle consumers held open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idle {
    /// Consumers.
    pub(crate) conns: usize,
    /// How long they are held (several heartbeat cycles).
    pub(crate) hold: Duration,
}

impl Idle {
    /// Runs the phase against the provider (process `pid`) on `port`: every consumer
    /// connects and echoes once, then all idle for [`Idle::hold`], answering heartbeats;
    /// the provider's memory per connection is read at the end of the hold.
    pub(crate) async fn run(self, port: u16, key: &str, pid: u32) -> anyhow::Result<Vec<Check>> {
        let before = usage_of(pid)?;
        let conns = connect_and_echo(port, key, self.conns).await?;
        let open = Arc::new(AtomicUsize::new(conns.len()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut idlers = JoinSet::new();
        for ws in conns {
            idlers.spawn(idle(ws, stop_rx.clone(), Arc::clone(&open)));
        }
        tokio::time::sleep(self.hold).await;
        let held = usage_of(pid)?;
        let still_open = open.load(Ordering::Relaxed);
        let _ = stop_tx.send(true);
        while idlers.join_next().await.is_some() {}
        Ok(vec![
            Check::new(
                "every idle consumer kept through the heartbeats",
                still_open == self.conns,
                format!(
                    "{still_open} of {} still open after {:?}",
                    self.conns, self.hold
                ),
            ),
            Check::info(
                "memory per idle connection",
                per_connection(before, held, self.conns),
            ),
        ])
    }
}

/// The provider's growth per connection between two readings, for people.
fn per_connection(before: Usage, held: Usage, conns: usize) -> String {
    let grown = held.rss_kib.saturating_sub(before.rss_kib) as f64;
    format!(
        "{:.2} KB per connection at the end of the hold ({} -> {} KiB)",
        grown / conns.max(1) as f64,
        before.rss_kib,
        held.rss_kib
    )
}

/// Connects `n` consumers, [`CONCURRENCY`] at a time, each echoing [`HELLO`] once.
async fn connect_and_echo(port: u16, key: &str, n: usize) -> anyhow::Result<Vec<Ws>> {
    let url = format!("ws://127.0.0.1:{port}/connect?key={key}");
    futures_util::stream::iter(0..n)
        .map(|_| {
            let url = url.clone();
            async move {
                let mut ws = connect(port, &url).await?;
                echo(&mut ws).await?;
                anyhow::Ok(ws)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

/// One lean consumer: small read buffer, no write buffer.
async fn connect(port: u16, url: &str) -> anyhow::Result<Ws> {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let connecting = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .context("upgrade")?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(IO_WAIT, connecting)
        .await
        .context("connect timed out")?
}

/// Sends [`HELLO`] and waits for it back, answering heartbeats on the way.
async fn echo(ws: &mut Ws) -> anyhow::Result<()> {
    ws.send(Message::text(HELLO)).await?;
    let waiting = async {
        while let Some(message) = ws.next().await {
            match message? {
                Message::Text(text) if text.as_str() == HELLO => return Ok(()),
                Message::Text(text) if text.as_str() == PING => {
                    ws.send(Message::text(PONG)).await?;
                }
                Message::Close(frame) => anyhow::bail!("closed by the provider: {frame:?}"),
                _ => {}
            }
        }
        anyhow::bail!("connection ended before the echo")
    };
    tokio::time::timeout(IO_WAIT, waiting)
        .await
        .context("no echo in time")?
}

/// Answers heartbeats until `stop` changes, then closes; counts itself out of `open` when the
/// provider ended it first.
async fn idle(mut ws: Ws, mut stop: watch::Receiver<bool>, open: Arc<AtomicUsize>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) if text.as_str() == PING => {
                    if ws.send(Message::text(PONG)).await.is_err() {
                        open.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
    close(ws).await;
}

/// A normal close: sends the close frame and waits (bounded) for the provider's.
async fn close(mut ws: Ws) {
    let closing = async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(IO_WAIT, closing).await;
}
