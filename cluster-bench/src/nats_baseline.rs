//! W8's baselines, the clients child ([`ClientKind::Nats`](crate::spec::ClientKind)):
//! bare async-nats clients straight to the NATS server, each on its own connection as
//! each of our members is, doing the work W8 does through three hubs.
//!
//! - **Fan-out** (beside W8's pub/sub): one publisher and `conns` subscribers of
//!   [`PATTERN`] on core NATS; the publisher keeps at most
//!   [`WINDOW`](crate::pubsub::WINDOW) messages ahead of the slowest subscriber, as ours
//!   does. Lines: `CONNECTED`, then after `GO` `PUBSUB <deliveries> <ns>`.
//! - **Work queue** (beside W8's jobs): a JetStream work-queue stream (file storage, R1,
//!   the same duplicate window as ours), one producer publishing every job with its index
//!   as the message id and waiting for JetStream's acks (at most [`PUBLISH_WINDOW`]
//!   outstanding), and `conns` workers pulling from one durable consumer, each at most
//!   `in_flight` messages at once; a worker hashes the payload, acks the message and
//!   publishes the result to the producer, which checks every result once. Lines:
//!   `CONNECTED`, then after `GO` `JOBS <n> <ns> 0 0`, from the first publish to the last
//!   checked result.

use crate::common::{print_line, spawn_or_fail};
use crate::jobs::{fnv, payload};
use crate::pubsub::{publish, Progress, PATTERN, SUBJECT};
use crate::spec::{ClientSpec, PAYLOAD};
use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest wait for one message or acknowledgement.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 16;
/// The work-queue stream, its subject and its durable consumer.
const STREAM: &str = "W8BASE_JOBS";
const JOBS_SUBJECT: &str = "w8base.jobs";
const CONSUMER: &str = "workers";
/// Where the workers send results.
const RESULTS_SUBJECT: &str = "w8base.results";
/// Publishes the producer has sent and JetStream not yet acknowledged, at most.
const PUBLISH_WINDOW: usize = 4096;
/// The stream's duplicate window, as our store's default.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Deliveries not yet acked over all workers, at most: our store's default.
const MAX_ACK_PENDING: i64 = 100_000;

/// A client of the NATS server in `spec`.
async fn connect(spec: &ClientSpec) -> anyhow::Result<async_nats::Client> {
    let url = spec
        .nats
        .as_deref()
        .context("W8's baseline needs a NATS URL")?;
    // A client the server cut off (a slow consumer on a loaded machine) reconnects and
    // has lost messages: said on stderr, so that the run's timeout has its cause.
    let connecting = async_nats::ConnectOptions::new()
        .event_callback(|event| async move {
            if !matches!(event, async_nats::Event::Connected) {
                tracing::warn!(%event, "a baseline NATS client");
            }
        })
        .connect(url);
    Ok(tokio::time::timeout(IO_TIMEOUT, connecting)
        .await
        .context("connecting to NATS timed out")??)
}

/// The next message of `sub`; a timer is armed only when none is ready.
async fn next<S: futures_util::Stream + Unpin>(sub: &mut S) -> anyhow::Result<S::Item> {
    let got = match sub.next().now_or_never() {
        Some(got) => got,
        None => tokio::time::timeout(IO_TIMEOUT, sub.next())
            .await
            .context("no message in time")?,
    };
    got.context("subscription ended")
}

/// The fan-out: connects and subscribes everyone, says `CONNECTED`, and on go publishes.
pub(super) async fn fan_out(spec: &ClientSpec) -> anyhow::Result<watch::Sender<bool>> {
    let publisher = connect(spec).await?;
    let subscribers: Vec<_> = futures_util::stream::iter(0..spec.conns)
        .map(|_| async {
            let client = connect(spec).await?;
            let sub = client.subscribe(PATTERN).await?;
            // The server has the subscription once the flush returns.
            client.flush().await?;
            anyhow::Ok((client, sub))
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let progress = Arc::new(Progress::new(spec.count, subscribers.len()));
    for (i, (client, mut sub)) in subscribers.into_iter().enumerate() {
        let progress = Arc::clone(&progress);
        spawn_or_fail(async move {
            for n in 1..=progress.per_sub() {
                let message = next(&mut sub).await?;
                anyhow::ensure!(
                    message.subject.as_str() == SUBJECT && message.payload == PAYLOAD.as_bytes(),
                    "message {n}: got {} bytes on {:?}",
                    message.payload.len(),
                    message.subject
                );
                progress.record(i, n);
            }
            progress.sub_done();
            let _open = (client, sub);
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    let (go_tx, mut go_rx) = watch::channel(false);
    spawn_or_fail(async move {
        go_rx.wait_for(|go| *go).await?;
        let payload = Bytes::from_static(PAYLOAD.as_bytes());
        let (publisher, payload) = (&publisher, &payload);
        publish(&progress, move |n| async move {
            for _ in 0..n {
                publisher.publish(SUBJECT, payload.clone()).await?;
            }
            Ok(())
        })
        .await?;
        std::future::pending::<()>().await;
        Ok(())
    });
    print_line("CONNECTED");
    Ok(go_tx)
}

/// The work queue: creates the stream and its consumer, starts the workers, says
/// `CONNECTED`, and on go produces `spec.count` jobs and checks every result.
pub(super) async fn work_queue(spec: &ClientSpec) -> anyhow::Result<watch::Sender<bool>> {
    let producer = connect(spec).await?;
    let js = jetstream::new(producer.clone());
    let jobs = js
        .get_or_create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![JOBS_SUBJECT.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: 1,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the stream: {e}"))?;
    jobs.get_or_create_consumer(
        CONSUMER,
        consumer::pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the consumer: {e}"))?;
    let mut results = producer.subscribe(RESULTS_SUBJECT).await?;
    producer.flush().await?;
    let credits = spec.in_flight.max(1);
    for _ in 0..spec.conns {
        let client = connect(spec).await?;
        let consumer: consumer::PullConsumer = jetstream::new(client.clone())
            .get_consumer_from_stream(CONSUMER, STREAM)
            .await
            .map_err(|e| anyhow::anyhow!("opening the consumer: {e}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(credits)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("pulling: {e}"))?;
        spawn_or_fail(work(client, messages));
    }
    let n = spec.count;
    let (go_tx, mut go_rx) = watch::channel(false);
    spawn_or_fail(async move {
        go_rx.wait_for(|go| *go).await?;
        let start = Instant::now();
        let checking = async {
            let mut seen = vec![false; usize::try_from(n)?];
            for _ in 0..n {
                let result = next(&mut results).await?;
                let (i, hash) = parse_result(&result.payload).context("a malformed result")?;
                let slot = usize::try_from(i)
                    .ok()
                    .and_then(|i| seen.get_mut(i))
                    .with_context(|| format!("a result for job {i}, which was not sent"))?;
                anyhow::ensure!(!*slot, "job {i} answered twice");
                anyhow::ensure!(hash == fnv(&payload(i)), "job {i}: wrong result");
                *slot = true;
            }
            anyhow::Ok(())
        };
        let (produced, checked) = tokio::join!(produce(&js, n), checking);
        produced?;
        checked?;
        print_line(&format!("JOBS {n} {} 0 0", start.elapsed().as_nanos()));
        let _open = producer;
        std::future::pending::<()>().await;
        Ok(())
    });
    print_line("CONNECTED");
    Ok(go_tx)
}

/// Publishes jobs `0..n`, each with its index as the message id, and waits for every
/// acknowledgement (at most [`PUBLISH_WINDOW`] outstanding).
async fn produce(js: &jetstream::Context, n: u64) -> anyhow::Result<()> {
    let mut acks = FuturesUnordered::new();
    for i in 0..n {
        let job = jetstream::message::PublishMessage::build()
            .payload(payload(i).into())
            .message_id(i.to_string());
        let ack = js
            .send_publish(JOBS_SUBJECT, job)
            .await
            .map_err(|e| anyhow::anyhow!("publishing job {i}: {e}"))?;
        acks.push(ack.into_future());
        while acks.len() >= PUBLISH_WINDOW {
            next_ack(&mut acks).await?;
        }
    }
    while !acks.is_empty() {
        next_ack(&mut acks).await?;
    }
    Ok(())
}

/// Waits for one acknowledgement of a publish.
async fn next_ack<F, E>(acks: &mut FuturesUnordered<F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<jetstream::publish::PublishAck, E>>,
    E: std::fmt::Display,
{
    let ack = next(acks).await?;
    ack.map_err(|e| anyhow::anyhow!("JetStream did not store a job: {e}"))?;
    Ok(())
}

/// One worker: hashes each job, acks it, and publishes `index, hash` to the producer.
async fn work(
    client: async_nats::Client,
    mut messages: consumer::pull::Stream,
) -> anyhow::Result<()> {
    loop {
        let message = next(&mut messages)
            .await?
            .map_err(|e| anyhow::anyhow!("pulling: {e}"))?;
        let index = message
            .payload
            .first_chunk::<8>()
            .map(|b| u64::from_le_bytes(*b))
            .context("a job shorter than 8 bytes")?;
        let hash = fnv(&message.payload);
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("acking: {e}"))?;
        let mut result = Vec::with_capacity(16);
        result.extend_from_slice(&index.to_le_bytes());
        result.extend_from_slice(&hash.to_le_bytes());
        client.publish(RESULTS_SUBJECT, result.into()).await?;
    }
}

/// A result's job index and hash.
fn parse_result(payload: &[u8]) -> Option<(u64, u64)> {
    let (index, hash) = payload.split_first_chunk::<8>()?;
    let hash = hash.first_chunk::<8>()?;
    Some((u64::from_le_bytes(*index), u64::from_le_bytes(*hash)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse_and_refuse_short_ones() {
        let mut bytes = 7u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&9u64.to_le_bytes());
        assert_eq!(parse_result(&bytes), Some((7, 9)));
        assert_eq!(parse_result(&bytes[..15]), None);
    }
}
