//! W8's baselines, the clients child ([`ClientKind::Nats`](crate::spec::ClientKind)):
//! bare async-nats clients straight to the NATS server, each on its own connection as
//! each of our members is, doing the work W8 does through three hubs.
//!
//! - **Fan-out** (beside W8's pub/sub): one publisher and `conns` subscribers of
//!   [`PATTERN`] on core NATS; the publisher keeps at most
//!   [`WINDOW`](crate::pubsub::WINDOW) messages ahead of the slowest subscriber, as ours
//!   does. Lines: `CONNECTED`, then after `GO` `PUBSUB <deliveries> <ns> <lost>`.
//!
//!   Each subscriber passes a [`barrier`] after subscribing, so the server has every
//!   subscription before `CONNECTED` (async-nats' `flush` only writes to the socket: on a
//!   loaded machine the publisher's first messages used to reach the server before the
//!   last subscribers' `SUB`, and those subscribers waited 30 s for them).
//!
//!   Core NATS still delivers at most once (a slow consumer is cut off and reconnects
//!   without what it missed). A lost message is found, not waited for: once the
//!   publisher has passed a barrier, the server has handed every message published before
//!   it to each subscriber's connection, so after a subscriber's own barrier anything it
//!   has not received will never come. The publisher announces such a checkpoint when it
//!   has published everything, and when the slowest subscriber has not moved for
//!   [`STALL_CHECK`] (a loss there would otherwise hold the window shut). The run reports
//!   its deliveries and its losses; the rate counts deliveries only.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest wait for one message or acknowledgement.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// A subject nobody subscribes to: requests on it are [`barrier`]s.
const BARRIER_SUBJECT: &str = "w8base.barrier";
/// How long the slowest subscriber may stand still before the publisher announces a
/// checkpoint, so that subscribers count what they lost.
const STALL_CHECK: Duration = Duration::from_millis(200);
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

/// Returns once the server has processed everything `client` sent before and `client`
/// has received everything the server queued for it before: a request nobody answers,
/// which the server answers itself ("no responders"), in order.
async fn barrier(client: &async_nats::Client) -> anyhow::Result<()> {
    match client.request(BARRIER_SUBJECT, Bytes::new()).await {
        Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(error) => Err(error).context("barrier request"),
        Ok(_) => anyhow::bail!("someone answered on {BARRIER_SUBJECT}"),
    }
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
            barrier(&client).await?;
            anyhow::Ok((client, sub))
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let progress = Arc::new(Progress::new(spec.count, subscribers.len()));
    // Messages the server has surely handed to every subscriber's connection.
    let (checkpoint_tx, checkpoint_rx) = watch::channel(0u64);
    for (i, (client, sub)) in subscribers.into_iter().enumerate() {
        let progress = Arc::clone(&progress);
        let checkpoint = checkpoint_rx.clone();
        spawn_or_fail(async move {
            let received = subscribe(i, &client, sub, &progress, checkpoint).await?;
            progress.lose(progress.per_sub() - received);
            progress.sub_done();
            let _open = client;
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    let (go_tx, mut go_rx) = watch::channel(false);
    spawn_or_fail(async move {
        go_rx.wait_for(|go| *go).await?;
        let payload = Bytes::from_static(PAYLOAD.as_bytes());
        let sent = AtomicU64::new(0);
        let (publisher, payload, sent) = (&publisher, &payload, &sent);
        let publishing = publish(&progress, move |n| async move {
            for _ in 0..n {
                publisher.publish(SUBJECT, payload.clone()).await?;
            }
            sent.fetch_add(n, Ordering::Relaxed);
            Ok(())
        });
        tokio::select! {
            published = publishing => published?,
            checked = watch_stalls(publisher, &progress, sent, &checkpoint_tx) => checked?,
        }
        barrier(publisher).await?;
        checkpoint_tx.send_replace(progress.per_sub());
        std::future::pending::<()>().await;
        Ok(())
    });
    print_line("CONNECTED");
    Ok(go_tx)
}

/// Subscriber `i`: counts messages until it has them all or the final checkpoint says
/// the rest are lost; returns how many it received.
async fn subscribe(
    i: usize,
    client: &async_nats::Client,
    mut sub: async_nats::Subscriber,
    progress: &Progress,
    mut checkpoint: watch::Receiver<u64>,
) -> anyhow::Result<u64> {
    let per_sub = progress.per_sub();
    let (mut received, mut accounted) = (0u64, 0u64);
    while received < per_sub {
        // A timer and the checkpoint are looked at only when no message is ready.
        let got = match sub.next().now_or_never() {
            Some(got) => got,
            None => tokio::select! {
                got = sub.next() => got,
                changed = checkpoint.changed() => {
                    changed?;
                    let at = *checkpoint.borrow_and_update();
                    if at > accounted.max(received) {
                        received += take_delivered(client, &mut sub, received).await?;
                        if at == per_sub {
                            break;
                        }
                        accounted = at;
                        progress.record(i, accounted.max(received));
                    }
                    continue;
                }
                () = tokio::time::sleep(IO_TIMEOUT) => anyhow::bail!("no message in time"),
            },
        };
        check(&got.context("subscription ended")?, received + 1)?;
        received += 1;
        progress.record(i, accounted.max(received));
    }
    Ok(received)
}

/// Passes a barrier, then takes every message the server handed over before it (the
/// subscriber had `received`); returns how many it took.
async fn take_delivered(
    client: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
    received: u64,
) -> anyhow::Result<u64> {
    barrier(client).await?;
    let mut taken = 0;
    // Unconstrained: tokio's task budget would cut the drain short.
    while let Some(got) = tokio::task::unconstrained(sub.next()).now_or_never() {
        taken += 1;
        check(&got.context("subscription ended")?, received + taken)?;
    }
    Ok(taken)
}

/// Message `n` is the publication.
fn check(message: &async_nats::Message, n: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        message.subject.as_str() == SUBJECT && message.payload == PAYLOAD.as_bytes(),
        "message {n}: got {} bytes on {:?}",
        message.payload.len(),
        message.subject
    );
    Ok(())
}

/// While the publisher publishes: whenever the slowest subscriber has not moved for
/// [`STALL_CHECK`] though more was sent, passes a barrier and announces what the
/// publisher had sent as a checkpoint. Never returns `Ok`.
async fn watch_stalls(
    publisher: &async_nats::Client,
    progress: &Progress,
    sent: &AtomicU64,
    checkpoint: &watch::Sender<u64>,
) -> anyhow::Result<()> {
    let mut before = progress.slowest();
    loop {
        tokio::time::sleep(STALL_CHECK).await;
        let slowest = progress.slowest();
        let at = sent.load(Ordering::Relaxed);
        if slowest == before && slowest < at {
            barrier(publisher).await?;
            checkpoint.send_if_modified(|c| std::mem::replace(c, at) != at);
        }
        before = slowest;
    }
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

    /// A subscriber short of messages when the final checkpoint comes counts them lost at
    /// once (not after a 30 s wait), and takes every message that did come, however many
    /// are queued (tokio's task budget once cut that drain short).
    #[tokio::test]
    async fn a_subscriber_counts_what_never_came_at_the_final_checkpoint() {
        let Some(server) = crate::nats::start_for_test().await else {
            return;
        };
        let subscriber = async_nats::connect(server.url()).await.unwrap();
        let sub = subscriber.subscribe(PATTERN).await.unwrap();
        barrier(&subscriber).await.unwrap();
        let publisher = async_nats::connect(server.url()).await.unwrap();
        // 3 of the 1,000 messages are never published: lost, as far as anyone can tell.
        for _ in 0..997 {
            let payload = Bytes::from_static(PAYLOAD.as_bytes());
            publisher.publish(SUBJECT, payload).await.unwrap();
        }
        barrier(&publisher).await.unwrap();
        let progress = Progress::new(1000, 1);
        let (checkpoint, checkpoints) = watch::channel(0);
        checkpoint.send_replace(1000);
        let counting = subscribe(0, &subscriber, sub, &progress, checkpoints);
        let received = tokio::time::timeout(Duration::from_secs(10), counting)
            .await
            .expect("the loss was waited for")
            .unwrap();
        assert_eq!(received, 997);
    }
}
