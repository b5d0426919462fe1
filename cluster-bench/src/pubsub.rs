//! W7 pub/sub, the clients child: one publisher member and `conns` subscriber members, all
//! subscribed to `bench.*`; the publisher publishes `count` 64-byte strings on `bench.x`
//! through the hub, and every subscriber counts them.
//!
//! The publisher keeps at most [`WINDOW`] messages ahead of the slowest subscriber, so no
//! queue on the way can overflow: the hub's queue per subscriber connection holds at most
//! `WINDOW` frames of ~95 bytes (under the 1 MiB `max_backpressure`), and a
//! subscription's local queue (4096) at most `WINDOW` messages. A message dropped anyway
//! ([`Subscription::dropped`]) fails the run.
//!
//! Lines to the parent: `CONNECTED` once every member is connected and subscribed (the
//! parent then asks the hub to confirm the subscriptions), then after `GO`
//! `PUBSUB <deliveries> <ns> <lost>`, measured from the first delivery to the moment every
//! subscriber has all `count` messages (`lost` is always 0 here: a drop fails the run; the
//! bare core-NATS baseline can lose messages, see [`nats_baseline`](crate::nats_baseline)).

use crate::common::print_line;
use crate::common::spawn_or_fail;
use crate::rpc::{connect_member, connect_members};
use crate::spec::{ClientSpec, PAYLOAD};
use anyhow::Context;
use cluster_rpc::{Published, RpcError, Subscription};
use futures_util::FutureExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The subject the publisher publishes on.
pub(crate) const SUBJECT: &str = "bench.x";
/// The pattern every subscriber subscribes to.
pub(crate) const PATTERN: &str = "bench.*";
/// Most messages the publisher is ahead of the slowest subscriber. Below the
/// subscription's queue of 4096, so a subscription can never drop.
pub(crate) const WINDOW: u64 = 2048;
/// The queue of a `cluster_rpc::Subscription` (not exported by cluster-rpc).
const SUBSCRIPTION_QUEUE: u64 = 4096;
const _: () = assert!(WINDOW < SUBSCRIPTION_QUEUE);
/// Longest wait for one message.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting subscriber looks at its drop counter.
const DROP_CHECK: Duration = Duration::from_millis(100);
/// How long the publisher sleeps when it is a full window ahead.
const PACE_SLEEP: Duration = Duration::from_millis(1);

/// One subscriber's count, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Count(AtomicU64);

/// Every subscriber's progress (W7, and W8's pub/sub and its baseline).
#[derive(Debug)]
pub(crate) struct Progress {
    per_sub: u64,
    counts: Vec<Count>,
    done: AtomicUsize,
    lost: AtomicU64,
    first: OnceLock<Instant>,
}

impl Progress {
    /// `subscribers` subscribers, none with any of the `per_sub` messages each expects.
    pub(crate) fn new(per_sub: u64, subscribers: usize) -> Self {
        Self {
            per_sub,
            counts: (0..subscribers).map(|_| Count::default()).collect(),
            done: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            first: OnceLock::new(),
        }
    }

    /// Messages each subscriber expects.
    pub(crate) fn per_sub(&self) -> u64 {
        self.per_sub
    }

    /// Subscriber `i` has `n` messages (the first delivery starts the clock).
    pub(crate) fn record(&self, i: usize, n: u64) {
        self.first.get_or_init(Instant::now);
        if let Some(count) = self.counts.get(i) {
            count.0.store(n, Ordering::Release);
        }
    }

    /// The fewest messages any subscriber has received (or knows lost).
    pub(crate) fn slowest(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.0.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// A subscriber knows that `n` messages meant for it will never arrive.
    pub(crate) fn lose(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::AcqRel);
    }

    /// One subscriber has everything it will get: the last one reports.
    pub(crate) fn sub_done(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.counts.len() {
            let nanos = self
                .first
                .get()
                .map_or(0, |first| first.elapsed().as_nanos());
            let lost = self.lost.load(Ordering::Acquire);
            let delivered = self.per_sub * self.counts.len() as u64 - lost;
            print_line(&format!("PUBSUB {delivered} {nanos} {lost}"));
        }
    }
}

/// The next publication; a timer is armed only when none is queued, and a subscription
/// that dropped messages fails at once.
async fn next(sub: &mut Subscription<String>) -> anyhow::Result<Published<String>> {
    let got = match sub.recv().now_or_never() {
        Some(got) => got,
        None => {
            let deadline = Instant::now() + IO_TIMEOUT;
            loop {
                if let Ok(got) = tokio::time::timeout(DROP_CHECK, sub.recv()).await {
                    break got;
                }
                anyhow::ensure!(
                    sub.dropped() == 0,
                    "a subscription dropped {} messages (its queue was full)",
                    sub.dropped()
                );
                anyhow::ensure!(Instant::now() < deadline, "no publication in time");
            }
        }
    };
    let published = got.context("subscription ended")?;
    Ok(published?)
}

/// W7: connects and subscribes everyone, says `CONNECTED`, and on go publishes. W8: the
/// publisher on the first hub, subscriber `i` on hub `i % 3` ([`ClientSpec::hub_ports`]).
pub(super) async fn pubsub(spec: &ClientSpec) -> anyhow::Result<watch::Sender<bool>> {
    let publisher = connect_member(spec.port).await?;
    let subscribers = connect_members(&spec.hub_ports(), spec.conns).await?;
    let progress = Arc::new(Progress::new(spec.count, subscribers.len()));
    for (i, member) in subscribers.into_iter().enumerate() {
        let mut sub = member.subscribe::<String>(PATTERN).await?;
        let progress = Arc::clone(&progress);
        spawn_or_fail(async move {
            for n in 1..=progress.per_sub {
                let published = next(&mut sub).await?;
                anyhow::ensure!(
                    published.subject == SUBJECT && published.value == PAYLOAD,
                    "message {n}: got {:?} on {:?}",
                    published.value,
                    published.subject
                );
                progress.record(i, n);
            }
            anyhow::ensure!(
                sub.dropped() == 0,
                "a subscription dropped {} messages",
                sub.dropped()
            );
            progress.sub_done();
            // Stay subscribed and connected until the process ends.
            let _open = (member, sub);
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    let (go_tx, mut go_rx) = watch::channel(false);
    spawn_or_fail(async move {
        go_rx.wait_for(|go| *go).await?;
        publish(&progress, |n| {
            let sent = (0..n).try_for_each(|_| publisher.publish(SUBJECT, PAYLOAD));
            std::future::ready(sent.map_err(|e: RpcError| anyhow::anyhow!("publish: {e}")))
        })
        .await?;
        let _open = publisher;
        std::future::pending::<()>().await;
        Ok(())
    });
    print_line("CONNECTED");
    Ok(go_tx)
}

/// Publishes `progress.per_sub` messages with `send(n)` (which publishes `n`), at most
/// [`WINDOW`] ahead of the slowest subscriber (refilling once half the window is free).
pub(crate) async fn publish<F>(
    progress: &Progress,
    mut send: impl FnMut(u64) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let total = progress.per_sub;
    let mut sent = 0u64;
    let mut stalled_since: Option<Instant> = None;
    while sent < total {
        let room = (progress.slowest() + WINDOW - sent).min(total - sent);
        if room < (WINDOW / 2).min(total - sent) {
            let since = *stalled_since.get_or_insert_with(Instant::now);
            anyhow::ensure!(
                since.elapsed() < IO_TIMEOUT,
                "the subscribers made no progress in {IO_TIMEOUT:?}"
            );
            tokio::time::sleep(PACE_SLEEP).await;
            continue;
        }
        stalled_since = None;
        send(room).await?;
        sent += room;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::HubServer;
    use crate::spec::Workload;

    #[test]
    fn pattern_matches_subject() {
        assert!(cluster_rpc::pubsub::matches(PATTERN, SUBJECT));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_subscriber_gets_every_message() {
        let hub = HubServer::start(Workload::W7, None, None, None)
            .await
            .unwrap();
        let publisher = connect_member(hub.port()).await.unwrap();
        let members = connect_members(&[hub.port()], 3).await.unwrap();
        let mut subs = Vec::new();
        for member in &members {
            subs.push(member.subscribe::<String>(PATTERN).await.unwrap());
        }
        assert_eq!(hub.wait_for_subscriptions(3).await.unwrap(), 3);
        let progress = Progress::new(3000, 3);
        // The subscriptions are read in turn by one task; the window keeps the publisher
        // from overflowing any of them meanwhile.
        let reading = async {
            for n in 1..=3000 {
                for (i, sub) in subs.iter_mut().enumerate() {
                    let p = next(sub).await.unwrap();
                    assert_eq!((p.subject.as_str(), p.value.as_str()), (SUBJECT, PAYLOAD));
                    progress.record(i, n);
                }
            }
        };
        let sending = publish(&progress, |n| {
            for _ in 0..n {
                publisher.publish(SUBJECT, PAYLOAD).unwrap();
            }
            std::future::ready(Ok(()))
        });
        let (published, ()) = tokio::join!(sending, reading);
        published.unwrap();
        assert!(subs.iter().all(|s| s.dropped() == 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publications_reach_subscribers_on_every_hub() {
        let Some(nats) = crate::nats::start_for_test().await else {
            return;
        };
        let clustered = Some(crate::rpc::Clustered {
            nats: nats.url(),
            across: true,
        });
        let mut hubs = Vec::new();
        for _ in 0..3 {
            hubs.push(
                HubServer::start(Workload::W7, None, None, clustered)
                    .await
                    .unwrap(),
            );
        }
        let ports: Vec<u16> = hubs.iter().map(HubServer::port).collect();
        let publisher = connect_member(ports[0]).await.unwrap();
        let members = connect_members(&ports, 3).await.unwrap();
        let mut subs = Vec::new();
        for member in &members {
            subs.push(member.subscribe::<String>(PATTERN).await.unwrap());
        }
        for hub in &hubs {
            assert_eq!(hub.wait_for_subscriptions(1).await.unwrap(), 1);
        }
        for _ in 0..100 {
            publisher.publish(SUBJECT, PAYLOAD).unwrap();
        }
        for sub in &mut subs {
            for _ in 0..100 {
                let p = next(sub).await.unwrap();
                assert_eq!((p.subject.as_str(), p.value.as_str()), (SUBJECT, PAYLOAD));
            }
        }
    }
}
