//! The typed layer end to end on loopback: calls both ways, deadlines, cancellation,
//! disconnects, typed errors, panics, codec refusal, broadcast (with a member process
//! killed mid-broadcast), pub/sub with wildcards and resubscription.

mod common;

use common::*;
use futures_util::StreamExt;
use network_cluster::prelude::*;
use network_cluster::rpc::{CodecKind, Subscription};
use network_cluster::transport::ConnectErrorKind;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

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
    /// Waits `ms` milliseconds, then answers.
    async fn sleep(&self, ms: u64) -> u64;
    /// Panics.
    async fn boom(&self);
}

/// The member side's own service.
#[cluster_service]
pub trait Whoami {
    /// The member's name.
    async fn name(&self) -> String;
}

#[derive(Default)]
struct CalcImpl {
    /// Handlers of `sleep` that were dropped before finishing (cancelled).
    dropped: Arc<AtomicUsize>,
    dropped_signal: Arc<Notify>,
}

struct DropProbe(Arc<AtomicUsize>, Arc<Notify>, bool);

impl Drop for DropProbe {
    fn drop(&mut self) {
        if !self.2 {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.notify_one();
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
        let mut probe = DropProbe(
            Arc::clone(&self.dropped),
            Arc::clone(&self.dropped_signal),
            false,
        );
        tokio::time::sleep(Duration::from_millis(ms)).await;
        probe.2 = true;
        ms
    }

    async fn boom(&self) {
        panic!("boom on purpose");
    }
}

struct Named(String);

impl Whoami for Named {
    async fn name(&self) -> String {
        self.0.clone()
    }
}

async fn hub_with_calc() -> (Hub, Arc<AtomicUsize>, Arc<Notify>) {
    let calc = CalcImpl::default();
    let (dropped, signal) = (Arc::clone(&calc.dropped), Arc::clone(&calc.dropped_signal));
    let hub = Hub::builder(local())
        .serve(CalcServer::new(calc))
        .start()
        .await
        .unwrap();
    (hub, dropped, signal)
}

fn member_of(hub: &Hub) -> network_cluster::rpc::MemberBuilder {
    Member::builder(
        Consumer::builder()
            .host("127.0.0.1")
            .port(hub.provider().port())
            .reconnect_interval(Duration::from_millis(20)),
    )
}

async fn wait_for_members(hub: &Hub, service: &str, n: usize) {
    within("members", async {
        while hub.members_serving(service).len() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_both_ways_with_many_in_flight() {
    let (hub, _, _) = hub_with_calc().await;
    let member = member_of(&hub)
        .serve(WhoamiServer::new(Named("m1".into())))
        .connect()
        .await
        .unwrap();
    let calc: CalcClient = member.client().unwrap();
    // 500 calls in flight over one connection, answers matched to their calls.
    let calls = (0..500).map(|i| {
        let calc = calc.clone();
        async move { (i, calc.add(i, 1000).await) }
    });
    for (i, sum) in futures_util::future::join_all(calls).await {
        assert_eq!(sum.unwrap(), i + 1000);
    }
    // And the other way: the hub calls the member's service.
    wait_for_members(&hub, "Whoami", 1).await;
    let who: WhoamiClient = hub.any().unwrap();
    let names = futures_util::future::join_all((0..100).map(|_| who.name())).await;
    assert!(names.into_iter().all(|n| n.unwrap() == "m1"));
    // Raw text keeps working on the same connection.
    let mut events = hub.provider().events();
    member.consumer().send("plain text").unwrap();
    let got = next_event(&mut events, |e| match e {
        ProviderEvent::Message(_, m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(got, Message::from("plain text"));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn typed_errors_panics_and_unknown_services() {
    let (hub, _, _) = hub_with_calc().await;
    let member = member_of(&hub).connect().await.unwrap();
    let calc: CalcClient = member.client().unwrap();
    assert_eq!(calc.div(10, 2).await.unwrap(), Ok(5));
    assert_eq!(calc.div(1, 0).await.unwrap(), Err(DivError::ByZero));
    match calc.boom().await {
        Err(RpcError::Panicked(message)) => assert!(message.contains("boom on purpose")),
        other => panic!("{other:?}"),
    }
    // The connection survived the panic.
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
    // The hub serves no Whoami.
    let who: WhoamiClient = member.client().unwrap();
    assert_eq!(
        who.name().await,
        Err(RpcError::NoSuchService("Whoami".into()))
    );
    let error = who.name().await.unwrap_err();
    assert_eq!(error.to_string(), "no such service: Whoami");
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn deadlines_and_cancellation_reach_the_handler() {
    let (hub, dropped, signal) = hub_with_calc().await;
    let member = member_of(&hub).connect().await.unwrap();
    let calc: CalcClient = member.client().unwrap();

    // Deadline expiry: the caller gets Timeout, the handler is dropped on the hub.
    let slow = calc.clone().with_deadline(Duration::from_millis(50));
    assert_eq!(slow.sleep(10_000).await, Err(RpcError::Timeout));
    within("handler dropped after timeout", async {
        while dropped.load(Ordering::SeqCst) < 1 {
            signal.notified().await;
        }
    })
    .await;

    // Dropping the call's future cancels the handler on the far side.
    let call = tokio::spawn({
        let calc = calc.clone();
        async move { calc.sleep(10_000).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.abort();
    within("handler dropped after cancel", async {
        while dropped.load(Ordering::SeqCst) < 2 {
            signal.notified().await;
        }
    })
    .await;
    // A call within its deadline completes.
    assert_eq!(calc.sleep(5).await, Ok(5));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn call_in_flight_fails_at_once_when_the_connection_drops() {
    let (hub, _, _) = hub_with_calc().await;
    let member = member_of(&hub)
        .serve(WhoamiServer::new(Named("x".into())))
        .connect()
        .await
        .unwrap();
    let calc: CalcClient = member.client().unwrap();
    let pending = tokio::spawn(async move { calc.sleep(60_000).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    hub.provider().destroy();
    let outcome = within("disconnected", pending).await.unwrap();
    assert_eq!(outcome, Err(RpcError::Disconnected));
    assert!(started.elapsed() < Duration::from_secs(5));
    member.shutdown().await;
}

#[tokio::test]
async fn a_codec_the_hub_does_not_speak_is_refused_at_connect() {
    let (hub, _, _) = hub_with_calc().await;
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
async fn garbage_envelope_closes_only_that_connection() {
    let (hub, _, _) = hub_with_calc().await;
    let good = member_of(&hub).connect().await.unwrap();
    let mut events = hub.provider().events();
    let bad = Consumer::builder()
        .host("127.0.0.1")
        .port(hub.provider().port())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reports_every_member_including_one_killed_mid_call() {
    let (hub, _, _) = hub_with_calc().await;
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        let consumer = Consumer::builder()
            .host("127.0.0.1")
            .port(hub.provider().port())
            .parameter("role", "worker");
        let m = Member::builder(consumer)
            .serve(WhoamiServer::new(Named(name.into())))
            .connect()
            .await
            .unwrap();
        members.push(m);
    }
    // A fourth member in its own process, killed while the broadcast waits on it.
    let mut child = spawn_member_process(hub.provider().port());
    wait_for_members(&hub, "Whoami", 4).await;

    let outcomes = hub.broadcast(
        |_| true,
        |who: WhoamiClient| async move { who.name().await },
    );
    assert_eq!(outcomes.len(), 4);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        child.kill().await.unwrap();
    };
    let (outcomes, ()) = tokio::join!(outcomes.collect(), killer);
    let mut names: Vec<String> = outcomes.values().filter_map(|o| o.clone().ok()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    let failures: Vec<_> = outcomes.values().filter_map(|o| o.clone().err()).collect();
    assert_eq!(failures, [RpcError::Disconnected]);

    // The filter: only members whose parameters match.
    let workers = hub.broadcast(
        |conn| conn.parameters().get("role").map(String::as_str) == Some("worker"),
        |who: WhoamiClient| async move { who.name().await },
    );
    let mut streamed = Vec::new();
    let mut workers = workers;
    while let Some((id, outcome)) = workers.next().await {
        assert!(hub.provider().connection(id).is_some());
        streamed.push(outcome.unwrap());
    }
    streamed.sort();
    assert_eq!(streamed, ["a", "b", "c"]);
    for m in members {
        m.shutdown().await;
    }
    hub.shutdown().await;
}

/// Starts this test binary again as a member process serving a slow `Whoami`.
fn spawn_member_process(port: u16) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "member_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("RPC_TEST_MEMBER_PORT", port.to_string())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Not a test of its own: the body of the member process above (does nothing otherwise).
#[tokio::test]
async fn member_process() {
    let Ok(port) = std::env::var("RPC_TEST_MEMBER_PORT") else {
        return;
    };
    struct Slow;
    impl Whoami for Slow {
        async fn name(&self) -> String {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "never".into()
        }
    }
    let member = Member::builder(
        Consumer::builder()
            .host("127.0.0.1")
            .port(port.parse().unwrap()),
    )
    .serve(WhoamiServer::new(Slow))
    .connect()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    member.shutdown().await;
}

async fn next_published(sub: &mut Subscription<String>) -> (String, String) {
    let p = within("publication", sub.recv()).await.unwrap().unwrap();
    (p.subject, p.value)
}

#[tokio::test]
async fn pubsub_wildcards_between_members_and_the_hub() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let a = member_of(&hub).connect().await.unwrap();
    let b = member_of(&hub).connect().await.unwrap();
    let mut a_orders: Subscription<String> = a.subscribe("orders.*.created").unwrap();
    let mut b_all: Subscription<String> = b.subscribe("orders.>").unwrap();
    let mut hub_sub: Subscription<String> = hub.subscribe("orders.eu.*").unwrap();
    within("subscriptions registered", async {
        while hub.subscription_count() < 3 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;

    a.publish("orders.eu.created", "o1").unwrap();
    assert_eq!(
        next_published(&mut a_orders).await,
        ("orders.eu.created".into(), "o1".into())
    );
    assert_eq!(
        next_published(&mut b_all).await,
        ("orders.eu.created".into(), "o1".into())
    );
    assert_eq!(
        next_published(&mut hub_sub).await,
        ("orders.eu.created".into(), "o1".into())
    );

    assert_eq!(hub.publish("orders.us.shipped.late", "o2").unwrap(), 1);
    assert_eq!(
        next_published(&mut b_all).await,
        ("orders.us.shipped.late".into(), "o2".into())
    );

    // Unsubscribe on drop.
    drop(a_orders);
    within("unsubscribed", async {
        while hub.subscription_count() > 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(hub.publish("orders.x", "bad subject ok").is_ok());
    assert!(hub.publish("orders.*", "wildcard").is_err());
    a.shutdown().await;
    b.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn subscriptions_come_back_after_a_reconnect() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let port = hub.provider().port();
    let member = member_of(&hub).connect().await.unwrap();
    let mut sub: Subscription<String> = member.subscribe("news.>").unwrap();
    within("subscribed", async {
        while hub.subscription_count() < 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    hub.shutdown().await;
    // A new hub on the same port: the member reconnects and subscribes again by itself.
    let hub = Hub::builder(local().port(port)).start().await.unwrap();
    within("resubscribed", async {
        while hub.subscription_count() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(hub.publish("news.today", "back").unwrap(), 1);
    assert_eq!(
        next_published(&mut sub).await,
        ("news.today".into(), "back".into())
    );
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_chatty_peer_is_limited_to_its_concurrent_calls() {
    let hub = Hub::builder(local())
        .serve(CalcServer::new(CalcImpl::default()))
        .max_concurrent_calls(2)
        .start()
        .await
        .unwrap();
    let member = member_of(&hub).connect().await.unwrap();
    let calc: CalcClient = member.client().unwrap();
    let slow = |ms| {
        let calc = calc.clone();
        tokio::spawn(async move { calc.sleep(ms).await })
    };
    let first = slow(300);
    let second = slow(300);
    // Wait until both run on the hub, then a third is refused at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(calc.sleep(1).await, Err(RpcError::Overloaded));
    assert_eq!(within("first", first).await.unwrap(), Ok(300));
    assert_eq!(within("second", second).await.unwrap(), Ok(300));
    // Room again.
    assert_eq!(calc.add(1, 1).await, Ok(2));
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_never_stalls_the_others() {
    use tokio::io::AsyncWriteExt;
    let hub = Hub::builder(local().max_backpressure(64 * 1024))
        .start()
        .await
        .unwrap();
    let mut events = hub.provider().events();
    // A raw client that subscribes to `load.>` and then never reads again.
    let mut stalled = tokio::net::TcpStream::connect(hub.provider().local_addr())
        .await
        .unwrap();
    stalled
        .write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut subscribe = vec![1u8, 5];
    subscribe.extend_from_slice(&1u64.to_le_bytes());
    subscribe.extend_from_slice(b"load.>");
    let mut frame = vec![0x82, 0x80 | subscribe.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(&subscribe);
    stalled.write_all(&frame).await.unwrap();
    let stalled_conn = next_event(&mut events, |e| match e {
        ProviderEvent::Open(c) => Some(c),
        _ => None,
    })
    .await;
    let healthy = member_of(&hub).connect().await.unwrap();
    let mut sub: Subscription<String> = healthy.subscribe("load.>").unwrap();
    within("both subscribed", async {
        while hub.subscription_count() < 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
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
    let info = next_event(&mut events, |e| match e {
        ProviderEvent::Close(c, info) if c.id() == stalled_conn.id() => Some(info),
        _ => None,
    })
    .await;
    assert_eq!(info.code, 1008);
    assert_eq!(sub.dropped(), 0);
    drop(stalled);
    healthy.shutdown().await;
    hub.shutdown().await;
}
