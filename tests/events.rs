//! Events never hold anything up: a receiver nobody reads loses its oldest events (and is
//! told how many) while every connection goes on, heartbeats included, and shutdown
//! returns at once; a panicking callback is caught and cleanup still runs.
//!
//! The clock is paused where heartbeats are the subject: several cycles pass in no time,
//! and a connection that stopped answering would be closed within them.

mod common;

use common::*;
use network_cluster::transport::{MessageRef, ProviderEvent};
use network_cluster::{ConsumerEvent, Message};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const HEARTBEAT: Duration = Duration::from_secs(1);

/// Waits until `count` reaches `n`.
async fn reaches(count: &mut watch::Receiver<usize>, n: usize) {
    within("a count", count.wait_for(|c| *c >= n))
        .await
        .expect("counter gone");
}

/// The next message on a consumer's stream.
async fn next_message(
    events: &mut network_cluster::transport::EventStream<ConsumerEvent>,
) -> Message {
    within("a message", async {
        loop {
            match events.recv().await {
                Some(ConsumerEvent::Message(m)) => return m,
                Some(_) => continue,
                None => panic!("stream ended"),
            }
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn an_unread_provider_receiver_holds_up_no_connection() {
    let closes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&closes);
    let provider = local()
        .heartbeat_interval(HEARTBEAT)
        .max_strikes(2)
        .event_capacity(4)
        .on_message(|conn, message| {
            let _ = conn.send(message);
        })
        .on_close(move |_, _| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .bind()
        .await
        .unwrap();
    let mut unread = provider.events();
    let flooder = consumer_for(&provider).build();
    let mut flooder_events = flooder.events();
    flooder.connect().await.unwrap();
    let other = consumer_for(&provider).build();
    let mut other_events = other.events();
    other.connect().await.unwrap();

    // One consumer sends far more than the receiver holds; the other keeps talking.
    for i in 0..100 {
        flooder.send(format!("flood {i}")).unwrap();
    }
    for i in 0..20 {
        other.send(format!("other {i}")).unwrap();
        assert_eq!(
            next_message(&mut other_events).await,
            Message::from(format!("other {i}"))
        );
    }
    for i in 0..100 {
        assert_eq!(
            next_message(&mut flooder_events).await,
            Message::from(format!("flood {i}"))
        );
    }

    // Five heartbeat cycles: both go on answering, nobody is closed.
    tokio::time::sleep(HEARTBEAT * 5).await;
    assert_eq!(provider.connection_count(), 2);
    assert_eq!(closes.load(Ordering::Relaxed), 0);
    assert!(flooder.is_connected() && other.is_connected());

    // The unread receiver kept the newest events and says how many it lost.
    match within("lagged", unread.recv()).await {
        Some(ProviderEvent::Lagged(lost)) => assert!(lost >= 100, "{lost}"),
        other => panic!("expected Lagged first, got {other:?}"),
    }

    let started = tokio::time::Instant::now();
    within("shutdown", provider.shutdown()).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    flooder.shutdown().await;
    other.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unread_consumer_receiver_holds_up_nothing() {
    let provider = local()
        .heartbeat_interval(HEARTBEAT)
        .max_strikes(2)
        .on_message(|conn, message| {
            let _ = conn.send(message);
        })
        .bind()
        .await
        .unwrap();
    let (count_tx, mut count) = watch::channel(0usize);
    let consumer = consumer_for(&provider)
        .event_capacity(4)
        .on_message(move |_| count_tx.send_modify(|c| *c += 1))
        .build();
    let mut unread = consumer.events();
    consumer.connect().await.unwrap();
    let conn = within("registered", async {
        loop {
            if let Some(conn) = provider.connections().into_values().next() {
                return conn;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;

    // Far more messages than the receiver holds all reach the callback...
    for i in 0..100 {
        conn.send(format!("to consumer {i}").as_str()).unwrap();
    }
    reaches(&mut count, 100).await;
    // ...and the consumer still sends, and still gets its echo.
    consumer.send("still here").unwrap();
    reaches(&mut count, 101).await;

    // Five heartbeat cycles: the consumer keeps answering PINGs.
    tokio::time::sleep(HEARTBEAT * 5).await;
    assert!(conn.strikes() <= 1, "strikes {}", conn.strikes());
    assert!(consumer.is_connected());
    assert_eq!(provider.connection_count(), 1);

    match within("lagged", unread.recv()).await {
        Some(ConsumerEvent::Lagged(lost)) => assert!(lost >= 97, "{lost}"),
        other => panic!("expected Lagged first, got {other:?}"),
    }
    let started = tokio::time::Instant::now();
    within("shutdown", consumer.shutdown()).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    provider.shutdown().await;
}

#[tokio::test]
async fn a_panicking_callback_leaves_no_connection_behind() {
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let provider = local()
        .on_open(|conn| {
            if conn.parameters().get("panic").map(String::as_str) == Some("open") {
                panic!("a bug in a user's open callback");
            }
        })
        .on_message(|conn, message| {
            let _ = conn.send(message);
        })
        .on_close(|_, _| panic!("a bug in a user's close callback"))
        .on_close(move |conn, info| {
            let _ = closed_tx.send((conn.id(), info.code));
        })
        .bind()
        .await
        .unwrap();
    let delivered = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&delivered);
    let consumer = consumer_for(&provider)
        .parameter("panic", "open")
        .on_message(|message| {
            if message == MessageRef::Text("boom") {
                panic!("a bug in a user's message callback");
            }
        })
        .on_message(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .build();
    let mut events = consumer.events();
    consumer.connect().await.unwrap();

    // The connection works although its open callback panicked, and the consumer's
    // panicking callback neither ends its session nor skips the next callback.
    consumer.send("boom").unwrap();
    consumer.send("after").unwrap();
    assert_eq!(next_message(&mut events).await, Message::from("boom"));
    assert_eq!(next_message(&mut events).await, Message::from("after"));
    assert_eq!(delivered.load(Ordering::Relaxed), 2);
    assert_eq!(provider.connection_count(), 1);

    consumer.shutdown().await;
    let (_, code) = within("close", closed.recv()).await.unwrap();
    assert_eq!(code, 1000);
    assert_eq!(
        provider.connection_count(),
        0,
        "the registry let the connection go"
    );
    provider.shutdown().await;
}
