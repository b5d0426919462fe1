//! Consumer failover on loopback: a consumer with several hosts moves to the next when its
//! provider goes away (in order, wrapping around, no wait inside a round, the reconnect
//! policy between rounds); sends made while reconnecting are buffered within bounds and
//! arrive first and in order, or are refused with a clear error; a member gets its
//! services, subscriptions and job handles back on the next hub. (Providers killed -9 as
//! real processes: `cluster-cli/tests/cli.rs`.)

mod common;

use common::*;
use network_cluster::prelude::*;
use network_cluster::rpc::{ByteBuf, Job, JobContext, Subscription};
use network_cluster::transport::{
    ConnectErrorKind, ConsumerBuilder, ConsumerEvent, EventStream, ProviderBuilder, ProviderEvent,
    SendErrorKind,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;

/// `host:port` of a provider.
fn addr(provider: &Provider) -> String {
    format!("127.0.0.1:{}", provider.port())
}

/// A loopback port nothing listens on (it was free a moment ago).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// A consumer of `hosts` with fast reconnects.
fn consumer_of(hosts: &[String]) -> ConsumerBuilder {
    Consumer::builder()
        .hosts(hosts.iter().cloned())
        .reconnect_interval(Duration::from_millis(20))
}

/// A provider whose upgrades wait until the gate opens (`send(true)`): a consumer trying
/// it is "reconnecting" for as long as the test wants, without any timing.
fn gated() -> (watch::Sender<bool>, ProviderBuilder) {
    let (gate, open) = watch::channel(false);
    let builder = local().auth_handler(move |_| {
        let mut open = open.clone();
        async move { open.wait_for(|open| *open).await.is_ok() }
    });
    (gate, builder)
}

/// Waits for the consumer's next `Disconnect` event.
async fn disconnected(events: &mut EventStream<ConsumerEvent>) {
    within("the consumer to notice the drop", async {
        while !matches!(events.recv().await, Some(ConsumerEvent::Disconnect(_))) {}
    })
    .await;
}

/// The next `n` text messages a provider receives.
async fn received(events: &mut EventStream<ProviderEvent>, n: usize) -> Vec<String> {
    let mut texts = Vec::with_capacity(n);
    while texts.len() < n {
        let text = next_event(events, |event| match event {
            ProviderEvent::Message(_, message) => message.as_text().map(str::to_owned),
            ProviderEvent::Lagged(n) => panic!("the test's event receiver lost {n} events"),
            _ => None,
        })
        .await;
        texts.push(text);
    }
    texts
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn a_consumer_moves_to_the_next_host_in_order_and_wraps_around() {
    let first = local().bind().await.unwrap();
    let second = local().bind().await.unwrap();
    let first_port = first.port();
    let consumer = consumer_of(&[addr(&first), addr(&second)]).build();
    within("connect", consumer.connect()).await.unwrap();
    assert_eq!(consumer.connected_host(), Some(addr(&first)));

    let mut opens = second.events();
    first.shutdown().await;
    next_event(&mut opens, |e| {
        matches!(e, ProviderEvent::Open(_)).then_some(())
    })
    .await;
    within("ready", consumer.ready()).await.unwrap();
    assert_eq!(consumer.connected_host(), Some(addr(&second)));

    // The first host comes back; the second goes: the consumer wraps around to the first.
    let again = local().port(first_port).bind().await.unwrap();
    let mut opens = again.events();
    second.shutdown().await;
    next_event(&mut opens, |e| {
        matches!(e, ProviderEvent::Open(_)).then_some(())
    })
    .await;
    within("ready", consumer.ready()).await.unwrap();
    assert_eq!(consumer.connected_host(), Some(addr(&again)));
    consumer.shutdown().await;
    again.shutdown().await;
}

#[tokio::test]
async fn hosts_of_one_round_are_tried_back_to_back() {
    let alive = local().bind().await.unwrap();
    // A minute between rounds: connecting within the test's wait proves the dead first
    // host did not cost one.
    let consumer = Consumer::builder()
        .hosts([format!("127.0.0.1:{}", dead_port()), addr(&alive)])
        .reconnect_interval(Duration::from_secs(60))
        .build();
    within("connect past a dead host", consumer.connect())
        .await
        .unwrap();
    assert_eq!(consumer.connected_host(), Some(addr(&alive)));
    consumer.shutdown().await;
    alive.shutdown().await;
}

#[tokio::test]
async fn max_attempts_counts_failed_rounds_over_every_host() {
    let hosts = [dead_port(), dead_port()].map(|port| format!("127.0.0.1:{port}"));
    let consumer = consumer_of(&hosts)
        .reconnect_interval(Duration::from_millis(5))
        .max_attempts(2)
        .build();
    let mut events = consumer.events();
    let error = within("giving up", consumer.connect()).await.unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::MaxAttempts);
    // Three rounds (the first and two retries), each trying both hosts.
    let mut failed = 0;
    loop {
        match within("events", events.recv()).await {
            Some(ConsumerEvent::Disconnect(_)) => failed += 1,
            Some(ConsumerEvent::Close) | None => break,
            Some(_) => {}
        }
    }
    assert_eq!(failed, 6);
}

#[tokio::test]
async fn an_unreadable_host_fails_the_connect_for_good() {
    let consumer = Consumer::builder()
        .hosts(["127.0.0.1:1", "hub:notaport"])
        .build();
    let error = within("connect", consumer.connect()).await.unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::InvalidOptions);
    assert!(error.to_string().contains("hub:notaport"), "{error}");
}

/// A consumer whose first provider just went away, trying the second, which holds its
/// upgrade until `gate` opens: it is reconnecting for as long as the test wants.
struct Reconnecting {
    consumer: Consumer,
    second: Provider,
    gate: watch::Sender<bool>,
    /// The second provider's events, from before the consumer got there.
    arrivals: EventStream<ProviderEvent>,
}

impl Reconnecting {
    /// `buffer`: the consumer's `reconnect_buffer` (messages, bytes), if any.
    async fn start(buffer: Option<(usize, usize)>) -> Self {
        let first = local().bind().await.unwrap();
        let (gate, second) = gated();
        let second = second.event_capacity(4096).bind().await.unwrap();
        let mut builder = consumer_of(&[addr(&first), addr(&second)]);
        if let Some((messages, bytes)) = buffer {
            builder = builder.reconnect_buffer(messages, bytes);
        }
        let consumer = builder.build();
        within("connect", consumer.connect()).await.unwrap();
        let mut events = consumer.events();
        let arrivals = second.events();
        first.shutdown().await;
        disconnected(&mut events).await;
        Self {
            consumer,
            second,
            gate,
            arrivals,
        }
    }

    /// Lets the consumer in and waits until it is connected.
    async fn open(&self) {
        self.gate.send_replace(true);
        within("ready", self.consumer.ready()).await.unwrap();
        assert_eq!(self.consumer.connected_host(), Some(addr(&self.second)));
    }

    async fn stop(self) {
        self.consumer.shutdown().await;
        self.second.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_while_reconnecting_go_first_on_the_next_host_in_order() {
    let mut scene = Reconnecting::start(Some((10_000, 1 << 20))).await;
    // The second host holds the upgrade: these are kept.
    for message in numbered(0..200) {
        scene.consumer.send(message).unwrap();
    }
    assert!(!scene.consumer.is_connected());
    // More from another task while the gate opens: whether a send lands in the buffer or
    // on the new connection, none passes a buffered one.
    let sender = scene.consumer.clone();
    let sending = tokio::spawn(async move {
        for message in numbered(200..2000) {
            sender.send(message).unwrap();
            tokio::task::yield_now().await;
        }
    });
    scene.open().await;
    within("the sender", sending).await.unwrap();
    assert_eq!(received(&mut scene.arrivals, 2000).await, numbered(0..2000));
    scene.stop().await;
}

#[tokio::test]
async fn past_its_bounds_the_buffer_refuses_with_buffer_full() {
    let mut scene = Reconnecting::start(Some((5, 1 << 20))).await;
    for message in numbered(0..5) {
        scene.consumer.send(message).unwrap();
    }
    let refused = scene.consumer.send("m5").unwrap_err();
    assert_eq!(refused.kind(), SendErrorKind::BufferFull);
    assert!(
        refused.to_string().contains("reconnect buffer is full"),
        "{refused}"
    );
    scene.open().await;
    scene.consumer.send("after").unwrap();
    let mut expected = numbered(0..5);
    expected.push("after".into());
    assert_eq!(received(&mut scene.arrivals, 6).await, expected);

    // Closed for good: refused, not kept.
    scene.consumer.shutdown().await;
    let refused = scene.consumer.send("late").unwrap_err();
    assert_eq!(refused.kind(), SendErrorKind::NotConnected);
    scene.stop().await;
}

#[tokio::test]
async fn the_buffer_is_bounded_in_bytes_too() {
    // 1000 bytes: one 900-byte message (plus its 14 bytes of header) fits, two do not.
    let scene = Reconnecting::start(Some((100, 1000))).await;
    scene.consumer.send("x".repeat(900)).unwrap();
    let refused = scene.consumer.send("x".repeat(900)).unwrap_err();
    assert_eq!(refused.kind(), SendErrorKind::BufferFull);
    scene.consumer.send("x".repeat(1000 - 914 - 14)).unwrap();
    scene.stop().await;
}

#[tokio::test]
async fn without_a_buffer_sends_while_reconnecting_are_refused_as_the_seed() {
    let mut scene = Reconnecting::start(None).await;
    let refused = scene.consumer.send("lost").unwrap_err();
    assert_eq!(refused.kind(), SendErrorKind::NotConnected);
    scene.open().await;
    scene.consumer.send("first").unwrap();
    assert_eq!(received(&mut scene.arrivals, 1).await, ["first"]);
    scene.stop().await;
}

/// The member's own service.
#[cluster_service]
pub trait Whoami {
    /// The member's name.
    async fn name(&self) -> String;
}

struct Named(&'static str);

impl Whoami for Named {
    async fn name(&self) -> String {
        self.0.to_owned()
    }
}

/// A job no worker is connected for yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Echo(ByteBuf);

impl Job for Echo {
    const NAME: &'static str = "echo";
    type Output = ByteBuf;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_gets_services_subscriptions_and_job_handles_back_on_the_next_hub() {
    // Both hubs keep jobs in one directory, one at a time (as hubs sharing a job store
    // do): the second knows the job the member submitted to the first.
    let dir = tempfile::tempdir().unwrap();
    let first = Hub::builder(local())
        .jobs_storage(dir.path())
        .start()
        .await
        .unwrap();
    let second_port = dead_port();
    let member = Member::builder(
        consumer_of(&[addr(first.provider()), format!("127.0.0.1:{second_port}")])
            .max_attempts(1000),
    )
    .serve(WhoamiServer::new(Named("m1")))
    .connect()
    .await
    .unwrap();
    let mut news: Subscription<String> = member.subscribe("news.>").await.unwrap();
    let handle = member
        .jobs()
        .submit(&Echo(ByteBuf::from(b"abc".to_vec())))
        .await
        .unwrap();
    first.shutdown().await;

    let second = Hub::builder(local().port(second_port))
        .jobs_storage(dir.path())
        .start()
        .await
        .unwrap();
    let mut opens = second.provider().events();
    next_event(&mut opens, |e| {
        matches!(e, ProviderEvent::Open(_)).then_some(())
    })
    .await;
    within("the member on the second hub", member.ready())
        .await
        .unwrap();

    // Its service (a connect parameter) and its subscription are there.
    let who: WhoamiClient = second.any().unwrap();
    assert_eq!(within("a call", who.name()).await.unwrap(), "m1");
    assert_eq!(second.publish("news.today", "hello").unwrap(), 1);
    let published = within("a publication", news.recv()).await.unwrap().unwrap();
    assert_eq!(
        (published.subject.as_str(), published.value.as_str()),
        ("news.today", "hello")
    );

    // Its job handle re-attached: a worker on the second hub answers it.
    let _worker = Member::builder(consumer_of(&[addr(second.provider())]))
        .worker(
            |job: Echo, _ctx: JobContext| async move { Ok::<_, std::convert::Infallible>(job.0) },
        )
        .connect()
        .await
        .unwrap();
    let output = within("the job's result", handle).await.unwrap();
    assert_eq!(output.as_slice(), b"abc");
    member.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_buffer_a_member_s_calls_and_publications_reach_the_next_hub() {
    let first = Hub::builder(local()).start().await.unwrap();
    let (gate, second) = gated();
    let second = Hub::builder(second)
        .serve(WhoamiServer::new(Named("second hub")))
        .start()
        .await
        .unwrap();
    let mut hub_news: Subscription<String> = second.subscribe("news.>").unwrap();
    let consumer = consumer_of(&[addr(first.provider()), addr(second.provider())])
        .reconnect_buffer(100, 1 << 16);
    let member = Member::builder(consumer).connect().await.unwrap();
    // Streams see an event after every callback ran: the member knows of the drop too.
    let mut events = member.consumer().events();
    first.shutdown().await;
    disconnected(&mut events).await;

    // Reconnecting: the publication and the call's request wait in the buffer.
    member.publish("news.today", "while away").unwrap();
    let who: WhoamiClient = member.client().unwrap();
    let call = tokio::spawn(async move { who.name().await });
    gate.send_replace(true);
    assert_eq!(
        within("the call", call).await.unwrap().unwrap(),
        "second hub"
    );
    let published = within("the publication", hub_news.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(published.value, "while away");
    member.shutdown().await;
    second.shutdown().await;
}
