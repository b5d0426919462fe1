//! W2 with our own `cluster_transport::Consumer` as the client (the row
//! "W2 echo (our consumer)"): what a user of the library sees end to end.

use super::client::report_echo;
use super::spec::{ClientSpec, PAYLOAD, PAYLOAD_LEN};
use anyhow::Context;
use cluster_transport::{Consumer, ConsumerEvent, EventStream};
use std::time::{Duration, Instant};

/// Longest wait for one echo.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sequential round trips through `Consumer::send` and `Consumer::events`.
pub(super) async fn echo(spec: &ClientSpec) -> anyhow::Result<()> {
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(spec.port)
        .max_attempts(0)
        .build();
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
