//! Slow readers during a broadcast: subscribers (real `cluster_rpc::Member`s) that each
//! reach the hub through a slow link, while a publisher broadcasts on their subject
//! faster than they read. The provider must bound what it queues for each (closing those
//! over `max_backpressure`) and keep everyone else flowing.
//!
//! The slow link is a proxy in this process: it reads from the provider at most
//! [`SlowReaders::read_rate`] bytes a second through a small socket buffer, so the
//! provider sees a peer that reads, slowly.

use super::Check;
use anyhow::Context;
use cluster_rpc::Member;
use cluster_transport::Consumer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// The subject of the broadcast.
const SUBJECT: &str = "soak.broadcast";
/// The payload: 64 bytes.
const PAYLOAD: &str = "Bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
/// The slow link's receive buffer toward the provider: small, so that the provider's own
/// queue (not the kernel's) holds what the reader has not taken.
const LINK_RCVBUF: u32 = 16 * 1024;
/// Bytes the slow link moves per step.
const LINK_STEP: usize = 1024;
/// Publications per pacing step of the publisher.
const PACE_STEP: Duration = Duration::from_millis(10);
/// Longest wait for every subscriber's first message.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(20);

/// How the phase runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlowReaders {
    /// Subscribers behind slow links.
    pub(crate) readers: usize,
    /// Bytes a second each slow link reads from the provider.
    pub(crate) read_rate: u64,
    /// Publications a second.
    pub(crate) publish_rate: u64,
    /// How long the broadcast lasts.
    pub(crate) duration: Duration,
}

impl SlowReaders {
    /// Runs the phase against the hub on `port`.
    pub(crate) async fn run(self, port: u16, key: &str) -> anyhow::Result<Vec<Check>> {
        let mut links = JoinSet::new();
        let mut readers = Vec::with_capacity(self.readers);
        let received: Arc<Vec<AtomicU64>> =
            Arc::new((0..self.readers).map(|_| AtomicU64::new(0)).collect());
        let mut counting = JoinSet::new();
        for i in 0..self.readers {
            let link = slow_link(port, self.read_rate, &mut links).await?;
            let member = member(link, key).await?;
            let mut subscription = member.subscribe::<String>(SUBJECT).await?;
            let received = Arc::clone(&received);
            counting.spawn(async move {
                while let Some(Ok(_)) = subscription.recv().await {
                    if let Some(count) = received.get(i) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            readers.push(member);
        }
        let publisher = member(port, key).await?;
        // Subscriptions reach the hub asynchronously: publish until every reader has one.
        let deadline = Instant::now() + SUBSCRIBE_WAIT;
        while received.iter().any(|c| c.load(Ordering::Relaxed) == 0) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "not every slow reader got a message within {SUBSCRIBE_WAIT:?}"
            );
            publisher.publish(SUBJECT, PAYLOAD)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (published, refused) = self.broadcast(&publisher).await;
        let cut = readers
            .iter()
            .filter(|m| !m.consumer().is_connected())
            .count();
        let counts: Vec<u64> = received.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let (least, most) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        let publisher_ok = publisher.consumer().is_connected();
        for member in readers.iter().chain([&publisher]) {
            member.consumer().destroy();
        }
        links.abort_all();
        counting.abort_all();
        Ok(vec![Check::new(
            "the publisher kept its connection",
            publisher_ok,
            format!(
                "{published} published to {} slow readers in {:?} ({refused} refused while \
                 the publisher's own queue was full); the readers got {least}..{most} each; \
                 {cut} of them closed by the provider",
                self.readers, self.duration
            ),
        )])
    }

    /// Publishes at [`Self::publish_rate`] for [`Self::duration`]; returns how many went
    /// out and how many were refused (the publisher's queue full).
    async fn broadcast(&self, publisher: &Member) -> (u64, u64) {
        let per_step = (self.publish_rate / (1000 / PACE_STEP.as_millis() as u64)).max(1);
        let mut ticks = tokio::time::interval(PACE_STEP);
        let start = Instant::now();
        let (mut published, mut refused) = (0u64, 0u64);
        while start.elapsed() < self.duration {
            ticks.tick().await;
            for _ in 0..per_step {
                match publisher.publish(SUBJECT, PAYLOAD) {
                    Ok(()) => published += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        (published, refused)
    }
}

/// A member presenting `key`, connected to 127.0.0.1:`port`, not reconnecting.
async fn member(port: u16, key: &str) -> anyhow::Result<Member> {
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("key", key)
        .max_attempts(0);
    Member::builder(consumer)
        .connect()
        .await
        .context("a member connecting")
}

/// A proxy to the provider on `port` for one connection, reading from the provider at
/// most `rate` bytes a second; returns the port to connect to.
async fn slow_link(port: u16, rate: u64, links: &mut JoinSet<()>) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?.port();
    let upstream = TcpSocket::new_v4()?;
    upstream.set_recv_buffer_size(LINK_RCVBUF)?;
    let upstream = upstream.connect(([127, 0, 0, 1], port).into()).await?;
    let step = Duration::from_secs_f64(LINK_STEP as f64 / rate.max(1) as f64);
    links.spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        relay(client, upstream, step).await;
    });
    Ok(local)
}

/// Moves bytes both ways: toward the provider at once, from it [`LINK_STEP`] bytes per
/// `step`. Ends when either side does.
async fn relay(client: TcpStream, upstream: TcpStream, step: Duration) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let to_provider = tokio::io::copy(&mut client_read, &mut up_write);
    let from_provider = async {
        let mut buf = vec![0u8; LINK_STEP];
        let mut ticks = tokio::time::interval(step);
        loop {
            ticks.tick().await;
            let n = match up_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if client_write
                .write_all(buf.get(..n).unwrap_or_default())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = to_provider => {}
        () = from_provider => {}
    }
}
