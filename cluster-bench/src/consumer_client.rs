//! Our own `cluster_transport::Consumer` as the client: W2 (the row
//! "W2 echo (our consumer)", what a user of the library sees end to end), and W1 and W6
//! where the case is about permessage-deflate (the lean tungstenite client cannot do it;
//! the consumer offers it and compresses every message of 16 bytes or more once the
//! provider accepts), or compares with such a case. Over TLS when the spec names a
//! certificate to trust.

use crate::common::{print_line, report_echo, spawn_or_fail};
use crate::spec::{ClientSpec, INGEST_DATA, INGEST_END, PAYLOAD, PAYLOAD_LEN};
use anyhow::Context;
use cluster_transport::{Consumer, ConsumerEvent, EventStream, SendErrorKind};
use futures_util::{StreamExt, TryStreamExt};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest wait for one echo.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Consumers connecting at once (W1, W6), as the lean client.
const CONNECT_CONCURRENCY: usize = 64;
/// How long a W1 sender waits when its consumer's outbox is full (1 MiB queued).
const OUTBOX_FULL_WAIT: Duration = Duration::from_millis(1);
/// A W1 sender yields after this many sends. `Consumer::send` only queues (and
/// compresses) without awaiting anything, so a sender that never yields would queue up to
/// its whole outbox before the session tasks write a byte, and the server, which times
/// from the first message it receives, would miss that part of the senders' work.
const SENDS_PER_YIELD: u64 = 64;

/// A consumer of the spec's server (over TLS when the spec has a `ca`), failing at the
/// first failed attempt instead of retrying.
fn consumer(spec: &ClientSpec) -> Consumer {
    let builder = Consumer::builder()
        .host("127.0.0.1")
        .port(spec.port)
        .max_attempts(0);
    match &spec.ca {
        Some(ca) => builder.ca_file(ca).build(),
        None => builder.build(),
    }
}

/// Connects `n` consumers, [`CONNECT_CONCURRENCY`] at a time.
async fn connect_all(spec: &ClientSpec) -> anyhow::Result<Vec<Consumer>> {
    futures_util::stream::iter(0..spec.conns)
        .map(|_| async {
            let consumer = consumer(spec);
            consumer.connect().await?;
            anyhow::Ok(consumer)
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// W1: every consumer sends `count` messages back-to-back through `Consumer::send` once
/// the returned sender says go, the last one an end marker. A full outbox
/// (`Backpressure`) is waited out, so every message is sent. The consumers are returned
/// to be kept open until the process ends.
pub(super) async fn ingest(
    spec: &ClientSpec,
) -> anyhow::Result<(watch::Sender<bool>, Vec<Consumer>)> {
    let consumers = connect_all(spec).await?;
    let (go_tx, go_rx) = watch::channel(false);
    for consumer in &consumers {
        let consumer = consumer.clone();
        let mut go = go_rx.clone();
        let count = spec.count;
        spawn_or_fail(async move {
            go.wait_for(|go| *go).await?;
            for i in 1..=count {
                let message = if i == count { INGEST_END } else { INGEST_DATA };
                send_when_room(&consumer, message).await?;
                if i % SENDS_PER_YIELD == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok(())
        });
    }
    print_line("CONNECTED");
    Ok((go_tx, consumers))
}

/// `Consumer::send`, waiting while the outbox is full.
async fn send_when_room(consumer: &Consumer, message: &'static str) -> anyhow::Result<()> {
    loop {
        match consumer.send(message) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == SendErrorKind::Backpressure => {
                tokio::time::sleep(OUTBOX_FULL_WAIT).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// W6: connects the consumers, does one echo on each, and returns them to be kept open
/// (each answers the provider's heartbeat by itself). Prints `READY <conns> <connect ns>`.
pub(super) async fn idle_connections(spec: &ClientSpec) -> anyhow::Result<Vec<Consumer>> {
    let start = Instant::now();
    let consumers = connect_all(spec).await?;
    let connect_time = start.elapsed();
    futures_util::stream::iter(&consumers)
        .map(|consumer| async move {
            let mut events = consumer.events();
            round_trip(consumer, &mut events).await
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    print_line(&format!(
        "READY {} {}",
        consumers.len(),
        connect_time.as_nanos()
    ));
    Ok(consumers)
}

/// Sequential round trips through `Consumer::send` and `Consumer::events`.
pub(super) async fn echo(spec: &ClientSpec) -> anyhow::Result<()> {
    let consumer = consumer(spec);
    let mut events = consumer.events();
    consumer.connect().await?;
    for _ in 0..spec.warmup {
        round_trip(&consumer, &mut events).await?;
    }
    let mut samples = Vec::with_capacity(usize::try_from(spec.count).unwrap_or(0));
    let start = Instant::now();
    for _ in 0..spec.count {
        let sent = Instant::now();
        round_trip(&consumer, &mut events).await?;
        samples.push(sent.elapsed());
    }
    report_echo(samples, start.elapsed());
    // Kept open (answering heartbeats by itself) until the process ends.
    tokio::spawn(async move {
        let _open = consumer;
        std::future::pending::<()>().await;
    });
    Ok(())
}

async fn round_trip(
    consumer: &Consumer,
    events: &mut EventStream<ConsumerEvent>,
) -> anyhow::Result<()> {
    consumer.send(PAYLOAD)?;
    loop {
        let event = tokio::time::timeout(REPLY_TIMEOUT, events.recv())
            .await
            .context("no echo in time")?
            .context("consumer ended")?;
        match event {
            ConsumerEvent::Message(message) => {
                anyhow::ensure!(
                    message.len() == PAYLOAD_LEN,
                    "echo of {} bytes",
                    message.len()
                );
                return Ok(());
            }
            ConsumerEvent::Disconnect(info) => {
                anyhow::bail!("disconnected: {} {}", info.code, info.reason)
            }
            ConsumerEvent::Close => anyhow::bail!("consumer closed"),
            _ => {}
        }
    }
}
