//! The typed layer end to end on loopback: calls both ways, deadlines, cancellation,
//! disconnects, typed errors, panics, limits (concurrent calls, name and frame sizes),
//! codec refusal, broadcast (with a member process killed mid-broadcast), pub/sub with
//! wildcards, exactly-once delivery, the subscription cap and resubscription, and raw
//! binary messages of plain consumers.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use network_cluster::prelude::*;
use network_cluster::rpc::envelope::{Envelope, VERSION};
#[cfg(feature = "bincode")]
use network_cluster::rpc::CodecKind;
use network_cluster::rpc::{ByteBuf, Subscription};
use network_cluster::transport::ConnectErrorKind;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Why a division failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DivError {
    /// Division by zero.
    ByZero,
}

/// A calculator.
#[cluster_service]
pub trait Calc {
    /// Adds.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Divides, or says why not.
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
    /// Counts the call (a side effect), then waits `ms` milliseconds and answers.
    async fn sleep(&self, ms: u64) -> u64;
    /// Panics.
    async fn boom(&self);
    /// `len` bytes.
    async fn blob(&self, len: usize) -> ByteBuf;
}

/// The member side's own service (`test_peer slow-member` serves one too).
#[cluster_service]
pub trait Whoami {
    /// The member's name.
    async fn name(&self) -> String;
}

/// What the calculator's `sleep` handlers did: started (counted before any wait), and
/// dropped before finishing (cancelled).
#[derive(Default)]
struct Probe {
    started: AtomicUsize,
    started_signal: Notify,
    dropped: AtomicUsize,
    dropped_signal: Notify,
}

impl Probe {
    async fn until(&self, count: &AtomicUsize, signal: &Notify, n: usize, what: &str) {
        within(what, async {
            loop {
                let notified = signal.notified();
                if count.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    async fn started(&self, n: usize) {
        self.until(&self.started, &self.started_signal, n, "handlers started")
            .await;
    }

    async fn dropped(&self, n: usize) {
        self.until(&self.dropped, &self.dropped_signal, n, "handlers dropped")
            .await;
    }
}

#[derive(Default)]
struct CalcImpl {
    probe: Arc<Probe>,
}

/// Counts a `sleep` handler dropped before it finished.
struct DropGuard(Arc<Probe>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
            self.0.dropped_signal.notify_waiters();
        }
    }
}

impl Calc for CalcImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
        if b == 0 {
            Err(DivError::ByZero)
        } else {
            Ok(a / b)
        }
    }

    async fn sleep(&self, ms: u64) -> u64 {
        self.probe.started.fetch_add(1, Ordering::SeqCst);
        self.probe.started_signal.notify_waiters();
        let mut guard = DropGuard(Arc::clone(&self.probe), false);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.1 = true;
        ms
    }

    async fn boom(&self) {
        panic!("boom on purpose");
    }

    async fn blob(&self, len: usize) -> ByteBuf {
        ByteBuf::from(vec![7; len])
    }
}

struct Named(String);

impl Whoami for Named {
    async fn name(&self) -> String {
        self.0.clone()
    }
}

async fn hub_with_calc() -> (Hub, Arc<Probe>) {
    hub_with_calc_on(Hub::builder(local())).await
}

async fn hub_with_calc_on(builder: network_cluster::rpc::HubBuilder) -> (Hub, Arc<Probe>) {
    let calc = CalcImpl::default();
    let probe = Arc::clone(&calc.probe);
    let hub = builder.serve(CalcServer::new(calc)).start().await.unwrap();
    (hub, probe)
}

fn member_of(hub: &Hub) -> network_cluster::rpc::MemberBuilder {
    Member::builder(consumer_of(hub))
}

fn consumer_of(hub: &Hub) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(hub.provider().port())
        .reconnect_interval(Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_both_ways_with_many_in_flight() {
    let (hub, _) = hub_with_calc().await;
    let member = member_of(&hub)
        .serve(WhoamiServer::new(Named("m1".into())))
        .connect()
        .await
        .unwrap();
    // Connected means registered: the hub calls the member at once, no waiting.
    let who: WhoamiClient = hub.any().unwrap();
    assert_eq!(who.name().await.unwrap(), "m1");
    let calc: CalcClient = member.client().unwrap();
    // 500 calls in flight over one connection, answers matched to their calls.
    let calls = (0..500).map(|i| {
        let calc = calc.clone();
        async move { (i, calc.add(i, 1000).await) }
    });
    for (i, sum) in futures_util::future::join_all(calls).await {
        assert_eq!(sum.unwrap(), i + 1000);
    }
    let names = futures_util::future::join_all((0..100).map(|_| who.name())).await;
    assert!(names.into_iter().all(|n| n.unwrap() == "m1"));
    // Raw text keeps working on the same connection. The provider's events carry every
    // frame, the typed layer's binary envelopes too: wait for the text.
    let mut events = hub.provider().events();
    member.consumer().send("plain text").unwrap();
    let got = next_event(&mut events, |e| match e {
        ProviderEvent::Message(_, m @ Message::Text(_)) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(got, Message::from("plain text"));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn typed_errors_panics_and_unknown_services() {
    let (hub, _) = hub_with_calc().await;
    let member = member_of(&hub).connect().await.unwrap();
    let calc: CalcClient = member.client().unwrap();
    assert_eq!(calc.div(10, 2).await.unwrap(), Ok(5));
    assert_eq!(calc.div(1, 0).await.unwrap(), Err(DivError::ByZero));
    let error = calc.boom().await.unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::Panicked);
    assert!(error.detail().contains("boom on purpose"), "{error}");
    // The connection survived the panic.
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
    // The hub serves no Whoami.
    let who: WhoamiClient = member.client().unwrap();
    let error = who.name().await.unwrap_err();
    assert_eq!(error, RpcError::new(RpcErrorKind::NoSuchService, "Whoami"));
    assert_eq!(error.to_string(), "no such service: Whoami");
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn deadlines_and_cancellation_reach_the_handler() {
    let (hub, probe) = hub_with_calc().await;
    let member = member_of(&hub).connect().await.unwrap();
    let calc: CalcClient = member.client().unwrap();

    // Deadline expiry: the caller gets Timeout, the handler is dropped on the hub.
    let slow = calc.clone().with_deadline(Duration::from_millis(50));
    assert_eq!(
        slow.sleep(10_000).await.unwrap_err().kind(),
        RpcErrorKind::Timeout
    );
    probe.dropped(1).await;

    // Dropping the call's future, once its handler runs, cancels it on the far side.
    let call = tokio::spawn({
        let calc = calc.clone();
        async move { calc.sleep(10_000).await }
    });
    probe.started(2).await;
    call.abort();
    probe.dropped(2).await;
    // A call within its deadline completes.
    assert_eq!(calc.sleep(5).await, Ok(5));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn call_in_flight_fails_at_once_when_the_connection_drops() {
    let (hub, probe) = hub_with_calc().await;
    let member = member_of(&hub).connect().await.unwrap();
    let calc: CalcClient = member.client().unwrap();
    let pending = tokio::spawn(async move { calc.sleep(60_000).await });
    probe.started(1).await;
    hub.provider().destroy();
    let outcome = within("disconnected", pending).await.unwrap();
    assert_eq!(outcome.unwrap_err().kind(), RpcErrorKind::Disconnected);
    member.shutdown().await;
}

#[tokio::test]
async fn overloaded_calls_never_start_their_handler() {
    let (hub, probe) = hub_with_calc_on(Hub::builder(local()).max_concurrent_calls(2)).await;
    let member = member_of(&hub).connect().await.unwrap();
    let calc: CalcClient = member.client().unwrap();
    let slow = |ms| {
        let calc = calc.clone();
        tokio::spawn(async move { calc.sleep(ms).await })
    };
    let first = slow(300);
    let second = slow(300);
    probe.started(2).await;
    // A third is refused at once, and its handler never ran: no side effect.
    let error = calc.sleep(1).await.unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::Overloaded);
    assert_eq!(probe.started.load(Ordering::SeqCst), 2);
    assert_eq!(within("first", first).await.unwrap(), Ok(300));
    assert_eq!(within("second", second).await.unwrap(), Ok(300));
    // Room again.
    assert_eq!(calc.add(1, 1).await, Ok(2));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn names_and_subjects_past_the_envelope_limits_are_refused_at_the_caller() {
    let (hub, _) = hub_with_calc().await;
    let member = member_of(&hub).connect().await.unwrap();
    let long: &'static str = Box::leak("m".repeat(300).into_boxed_str());
    let error = member
        .caller()
        .unwrap()
        .call::<_, ()>("Calc", long, &())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::InvalidName);
    assert!(error.detail().contains("300 bytes"), "{error}");
    let subject = "s".repeat(70_000);
    let error = member.publish(&subject, "x").unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::InvalidSubject);
    assert_eq!(
        hub.publish("a..b", "x").unwrap_err().kind(),
        RpcErrorKind::InvalidSubject
    );
    // Nothing was sent: the connection is fine.
    let calc: CalcClient = member.client().unwrap();
    assert_eq!(calc.add(1, 1).await, Ok(2));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn answers_too_large_for_a_limit_fail_the_caller_at_once() {
    // The hub takes frames up to 8 KiB; the member sends up to 4 KiB.
    let hub = Hub::builder(local().max_payload_length(8 * 1024))
        .serve(CalcServer::new(CalcImpl::default()))
        .start()
        .await
        .unwrap();
    let member = member_of(&hub)
        .serve(CalcServer::new(CalcImpl::default()))
        .connect()
        .await
        .unwrap();
    let member_limit = Member::builder(consumer_of(&hub).max_payload_length(4 * 1024))
        .serve(WhoamiServer::new(Named("x".repeat(6 * 1024))))
        .connect()
        .await
        .unwrap();
    // The member's reply is larger than its own limit: the hub's caller learns it at
    // once (the deadline is a minute away), with the size and the reason.
    let who: WhoamiClient = hub.any().unwrap();
    let who = who.with_deadline(Duration::from_secs(60));
    let error = within("the refused reply", who.name()).await.unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::TooLarge);
    assert!(error.detail().contains("bytes"), "{error}");
    // A member's request larger than the hub's limit is refused by the member itself,
    // and the connection stays up.
    let calc: CalcClient = member.client().unwrap();
    let big = member
        .caller()
        .unwrap()
        .call::<_, ByteBuf>("Calc", "blob", &ByteBuf::from(vec![0; 10 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(big.kind(), RpcErrorKind::TooLarge);
    assert!(big.detail().contains("hub's payload limit"), "{big}");
    assert_eq!(calc.add(2, 2).await, Ok(4));
    // A reply the member's hub-side service makes too large for the member's consumer
    // (its limit is the default 32 KiB) fails the member's call at once as well.
    let hub_calc: CalcClient = hub.any().unwrap();
    let error = within("the refused reply", hub_calc.blob(40_000))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::TooLarge);
    member.shutdown().await;
    member_limit.shutdown().await;
    hub.shutdown().await;
}

#[cfg(feature = "bincode")]
#[tokio::test]
async fn a_codec_the_hub_does_not_speak_is_refused_at_connect() {
    let (hub, _) = hub_with_calc().await;
    let error = member_of(&hub)
        .codec(CodecKind::Bincode)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Rejected);
    let message = error.to_string();
    assert!(
        message.contains("406") && message.contains("bincode") && message.contains("msgpack"),
        "{message}"
    );
    // A bincode hub and member work together.
    let bincode_hub = Hub::builder(local())
        .codec(CodecKind::Bincode)
        .serve(CalcServer::new(CalcImpl::default()))
        .start()
        .await
        .unwrap();
    let member = member_of(&bincode_hub)
        .codec(CodecKind::Bincode)
        .connect()
        .await
        .unwrap();
    let calc: CalcClient = member.client().unwrap();
    assert_eq!(calc.add(2, 3).await, Ok(5));
    member.shutdown().await;
    bincode_hub.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_codec_the_hub_does_not_know_is_refused_at_connect() {
    let (hub, _) = hub_with_calc().await;
    let error = consumer_of(&hub)
        .parameter("codec", "json")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Rejected);
    assert!(error.to_string().contains("406"), "{error}");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_members_garbage_envelope_closes_only_that_connection() {
    let (hub, _) = hub_with_calc().await;
    let good = member_of(&hub).connect().await.unwrap();
    let mut events = hub.provider().events();
    // A consumer that joined the typed layer (named its codec), then sends garbage.
    let bad = consumer_of(&hub)
        .parameter("codec", "msgpack")
        .max_attempts(1)
        .connect()
        .await
        .unwrap();
    bad.send(vec![9u8, 1, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let info = next_event(&mut events, |e| match e {
        ProviderEvent::Close(_, info) => Some(info),
        _ => None,
    })
    .await;
    assert_eq!(info.code, 1003);
    assert!(info.reason.contains("version 9"), "{}", info.reason);
    let calc: CalcClient = good.client().unwrap();
    assert_eq!(calc.add(1, 1).await, Ok(2));
    bad.destroy();
    good.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_plain_consumers_binary_messages_stay_raw() {
    let (hub, _) = hub_with_calc().await;
    let mut events = hub.provider().events();
    let plain = consumer_of(&hub).connect().await.unwrap();
    // Not an envelope, and not a member: the hub leaves it to the provider's callbacks.
    plain.send(vec![9u8, 1, 2, 3]).unwrap();
    plain.send("after").unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let event = next_event(&mut events, |e| match e {
            ProviderEvent::Message(_, m) => Some(Ok(m)),
            ProviderEvent::Close(_, info) => Some(Err(info)),
            _ => None,
        })
        .await;
        got.push(event.expect("the plain consumer was closed"));
    }
    assert_eq!(
        got,
        [Message::from(vec![9u8, 1, 2, 3]), Message::from("after")]
    );
    assert!(plain.is_connected());
    plain.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_plain_consumers_envelopes_are_not_the_hubs() {
    let (hub, _) = hub_with_calc().await;
    let mut orders = hub.subscribe::<String>("orders.*").unwrap();
    let mut events = hub.provider().events();
    let plain = consumer_of(&hub).connect().await.unwrap();
    let mut plain_events = plain.events();
    // Well-formed envelopes from a connection that is not a member: the hub neither
    // routes the publication nor answers the call; the provider's callbacks get them raw.
    let mut value = Vec::new();
    let text = "from a plain consumer".to_owned();
    network_cluster::rpc::Codec::encode(&network_cluster::rpc::MessagePack, &text, &mut value)
        .unwrap();
    let mut publish = Vec::new();
    let envelope = Envelope::Publish {
        subject: "orders.raw",
        payload: &value,
    };
    envelope.encode(&mut publish).unwrap();
    let mut request = Vec::new();
    let envelope = Envelope::Request {
        id: 1,
        deadline_ms: 1000,
        service: "Calc",
        method: "add",
        payload: &[],
    };
    envelope.encode(&mut request).unwrap();
    plain.send(publish.clone()).unwrap();
    plain.send(request.clone()).unwrap();
    plain.send("after").unwrap();
    let mut got = Vec::new();
    let mut from = None;
    while got.len() < 3 {
        let (conn, message) = next_event(&mut events, |e| match e {
            ProviderEvent::Message(conn, m) => Some((conn, m)),
            ProviderEvent::Close(_, info) => panic!("the plain consumer was closed: {info:?}"),
            _ => None,
        })
        .await;
        from = Some(conn);
        got.push(message);
    }
    let expected = [
        Message::from(publish),
        Message::from(request),
        Message::from("after"),
    ];
    assert_eq!(got, expected);
    // Had the hub routed the publication or answered the call, that would be first in
    // line: in the subscription, and on the plain consumer's connection.
    hub.publish("orders.hub", &"from the hub".to_owned())
        .unwrap();
    let first = within("a publication", orders.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.value, "from the hub");
    from.unwrap().send("done").unwrap();
    let first = within("a message", async {
        loop {
            match plain_events.recv().await {
                Some(ConsumerEvent::Message(m)) => return m,
                Some(_) => continue,
                None => panic!("stream ended"),
            }
        }
    })
    .await;
    assert_eq!(first, Message::from("done"));
    plain.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reports_every_member_including_one_killed_mid_call() {
    let (hub, _) = hub_with_calc().await;
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        let m = Member::builder(consumer_of(&hub).parameter("name", name))
            .serve(WhoamiServer::new(Named(name.into())))
            .connect()
            .await
            .unwrap();
        members.push(m);
    }
    // A member that serves nothing: a broadcast does not call it.
    let bystander = member_of(&hub).connect().await.unwrap();
    // A fourth Whoami in its own process, whose answer never comes; killed mid-broadcast.
    let mut child = spawn_peer("slow-member", hub.provider().port()).await;

    let mut outcomes = hub.broadcast(|who: WhoamiClient| async move { who.name().await });
    assert_eq!(outcomes.len(), 4);
    let mut names = Vec::new();
    while names.len() < 3 {
        let (_, outcome) = within("an answer", outcomes.next()).await.unwrap();
        names.push(outcome.unwrap());
    }
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    // The process dies while the broadcast waits on it: it reports Disconnected.
    child.kill().await.unwrap();
    let (_, last) = within("the killed member", outcomes.next()).await.unwrap();
    assert_eq!(last.unwrap_err().kind(), RpcErrorKind::Disconnected);
    assert!(within("the end", outcomes.next()).await.is_none());

    // The filter: only members whose connection passes it.
    let one = hub.broadcast_where(
        |conn| conn.parameters().get("name").map(String::as_str) == Some("a"),
        |who: WhoamiClient| async move { who.name().await },
    );
    let outcomes: Vec<_> = one.collect().await.into_values().collect();
    assert_eq!(outcomes, [Ok("a".to_owned())]);
    for m in members {
        m.shutdown().await;
    }
    bystander.shutdown().await;
    hub.shutdown().await;
}

async fn next_published(sub: &mut Subscription<String>) -> (String, String) {
    let p = within("publication", sub.recv()).await.unwrap().unwrap();
    (p.subject, p.value)
}

#[tokio::test]
async fn pubsub_wildcards_between_members_and_the_hub() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let a = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let b = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    // Subscribed means in place: a publication right after reaches it, no waiting.
    let mut a_orders: Subscription<String> = a.subscribe("orders.*.created").await.unwrap();
    let mut b_all: Subscription<String> = b.subscribe("orders.>").await.unwrap();
    let mut hub_sub: Subscription<String> = hub.subscribe("orders.eu.*").unwrap();
    assert_eq!(hub.subscription_count(), 3);

    a.publish("orders.eu.created", "o1").unwrap();
    for sub in [&mut a_orders, &mut b_all, &mut hub_sub] {
        assert_eq!(
            next_published(sub).await,
            ("orders.eu.created".into(), "o1".into())
        );
    }
    assert_eq!(hub.publish("orders.us.shipped.late", "o2").unwrap(), 1);
    assert_eq!(
        next_published(&mut b_all).await,
        ("orders.us.shipped.late".into(), "o2".into())
    );

    // Unsubscribe on drop (a later subscribe's answer comes after it is processed).
    drop(a_orders);
    let _sync: Subscription<String> = a.subscribe("sync").await.unwrap();
    assert_eq!(hub.subscription_count(), 3);
    assert_eq!(hub.publish("orders.eu.created", "o3").unwrap(), 2);
    // Reserved and invalid subjects are refused with a reason.
    let error = hub.publish("orders.*", "wildcard").unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::InvalidSubject);
    assert!(error.detail().contains("wildcard"), "{error}");
    for pattern in ["__jobs.>", "a.>.b", ""] {
        let error = a.subscribe::<String>(pattern).await.unwrap_err();
        assert_eq!(error.kind(), RpcErrorKind::InvalidSubject, "{pattern}");
    }
    a.shutdown().await;
    b.shutdown().await;
    hub.shutdown().await;
}

/// The next binary frame a raw client receives (skipping text and control frames).
async fn next_binary(socket: &mut RawSocket) -> Vec<u8> {
    loop {
        match within("a binary frame", socket.next()).await {
            Some(Ok(WsMessage::Binary(b))) => return b.to_vec(),
            Some(Ok(_)) => continue,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

/// A raw websocket client that joined the typed layer, once the hub confirmed it.
async fn raw_member(hub: &Hub) -> RawSocket {
    let url = format!(
        "ws://127.0.0.1:{}/connect?codec=msgpack",
        hub.provider().port()
    );
    let mut socket = raw_connect(&url).await;
    let ready = next_binary(&mut socket).await;
    assert!(matches!(
        Envelope::decode(&ready),
        Ok(Envelope::Ready { .. })
    ));
    socket
}

fn subscribe_frame(sid: u64, pattern: &str) -> WsMessage {
    let mut frame = Vec::new();
    Envelope::Subscribe { sid, pattern }
        .encode(&mut frame)
        .unwrap();
    WsMessage::binary(frame)
}

#[tokio::test]
async fn each_publication_reaches_each_subscription_once() {
    let hub = Hub::builder(local()).start().await.unwrap();
    // A member subscribing right after connect.
    let member = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let mut sub: Subscription<String> = member.subscribe("news.>").await.unwrap();
    // A raw member that sends the same subscribe twice: still one subscription.
    let mut raw = raw_member(&hub).await;
    for _ in 0..2 {
        raw.send(subscribe_frame(1, "news.>")).await.unwrap();
        let answer = next_binary(&mut raw).await;
        assert!(matches!(
            Envelope::decode(&answer),
            Ok(Envelope::Subscribed {
                sid: 1,
                code: 0,
                ..
            })
        ));
    }
    assert_eq!(hub.subscription_count(), 2);
    for i in 0..50 {
        assert_eq!(hub.publish("news.today", &format!("n{i}")).unwrap(), 2);
    }
    hub.publish("news.end", "end").unwrap();
    // Every one once, in order, and nothing after the last.
    for i in 0..50 {
        assert_eq!(next_published(&mut sub).await.1, format!("n{i}"));
        let frame = next_binary(&mut raw).await;
        let Ok(Envelope::Message { sid: 1, .. }) = Envelope::decode(&frame) else {
            panic!("not a message for subscription 1");
        };
    }
    assert_eq!(next_published(&mut sub).await.1, "end");
    let frame = next_binary(&mut raw).await;
    assert!(matches!(
        Envelope::decode(&frame),
        Ok(Envelope::Message {
            subject: "news.end",
            ..
        })
    ));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn subscription_patterns_per_member_are_capped() {
    let hub = Hub::builder(local())
        .max_subscriptions_per_member(3)
        .start()
        .await
        .unwrap();
    let member = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let mut kept = Vec::new();
    for i in 0..3 {
        kept.push(member.subscribe::<String>(&format!("t.{i}")).await.unwrap());
    }
    let error = member.subscribe::<String>("t.3").await.unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::TooManySubscriptions);
    assert!(error.detail().contains('3'), "{error}");
    // Another member has its own allowance.
    let other = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let _theirs: Subscription<String> = other.subscribe("t.0").await.unwrap();
    // A dropped subscription frees its place.
    kept.pop();
    let _again: Subscription<String> = member.subscribe("t.3").await.unwrap();
    assert_eq!(hub.subscription_count(), 4);
    member.shutdown().await;
    other.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn subscriptions_come_back_after_a_reconnect() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let port = hub.provider().port();
    let member = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let mut sub: Subscription<String> = member.subscribe("news.>").await.unwrap();
    hub.shutdown().await;
    // A new hub on the same port: the member reconnects and subscribes again by itself;
    // `ready` says when the hub has it back.
    let hub = Hub::builder(local().port(port)).start().await.unwrap();
    within("the member back", member.ready()).await.unwrap();
    assert_eq!(hub.subscription_count(), 1);
    assert_eq!(hub.publish("news.today", "back").unwrap(), 1);
    assert_eq!(
        next_published(&mut sub).await,
        ("news.today".into(), "back".into())
    );
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_never_stalls_the_others() {
    let hub = Hub::builder(local().max_backpressure(64 * 1024))
        .start()
        .await
        .unwrap();
    let mut events = hub.provider().events();
    // A raw member that subscribes to `load.>`, reads the hub's answer, and then never
    // reads again.
    let mut stalled = raw_member(&hub).await;
    let stalled_conn = next_open(&mut events).await;
    stalled.send(subscribe_frame(1, "load.>")).await.unwrap();
    next_binary(&mut stalled).await;
    let healthy = Member::builder(consumer_of(&hub)).connect().await.unwrap();
    let mut sub: Subscription<String> = healthy.subscribe("load.>").await.unwrap();
    // Publish 32 MB, well past what the kernel buffers and the stalled connection's
    // 64 KiB limit hold, in batches paced by the healthy subscriber (whose own queue stays
    // under the same limit).
    let payload = "x".repeat(16 * 1024);
    let mut received = 0;
    for _ in 0..1000 {
        for _ in 0..2 {
            hub.publish("load.test", &payload).unwrap();
        }
        for _ in 0..2 {
            within("healthy delivery", sub.recv())
                .await
                .unwrap()
                .unwrap();
            received += 1;
        }
    }
    assert_eq!(received, 2000);
    let info = next_close(&mut events, &stalled_conn).await;
    assert_eq!(info.code, 1008);
    assert_eq!(sub.dropped(), 0);
    drop(stalled);
    healthy.shutdown().await;
    hub.shutdown().await;
}

#[test]
fn the_envelope_version_is_the_one_documented() {
    assert_eq!(VERSION, 2);
}
