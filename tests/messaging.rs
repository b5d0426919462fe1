//! Messages both ways, text and binary on one connection, events as callbacks and streams.

mod common;

use common::*;
use network_cluster::transport::{ConsumerEvent, MessageRef, ProviderEvent, SendErrorKind};
use network_cluster::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test]
async fn text_and_binary_round_trip_with_parameters() {
    let provider = local()
        .on_message(|conn, msg| {
            let _ = conn.send(msg);
        })
        .bind()
        .await
        .unwrap();
    let mut provider_events = provider.events();
    let consumer = consumer_for(&provider)
        .parameter("role", "worker")
        .parameter("name", "a b&c/é")
        .build();
    let mut events = consumer.events();
    within("connect", consumer.connect()).await.unwrap();
    let conn = next_open(&mut provider_events).await;
    assert_eq!(conn.parameters()["role"], "worker");
    assert_eq!(conn.parameters()["name"], "a b&c/é");
    assert_eq!(conn.ip().to_string(), "127.0.0.1");
    assert_eq!(conn.id().get_version_num(), 4);

    consumer.send("hello").unwrap();
    consumer.send(vec![0u8, 1, 2, 255]).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match within("echo", events.recv()).await.unwrap() {
            ConsumerEvent::Message(m) => got.push(m),
            ConsumerEvent::Open => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got[0], Message::from("hello"));
    assert_eq!(got[1], Message::from(vec![0u8, 1, 2, 255]));
    assert_eq!(
        consumer.heartbeat_duration().map(|d| d.as_millis()),
        Some(30_000)
    );
    assert_eq!(
        consumer.heartbeat_cutoff().map(|d| d.as_millis()),
        Some(60_000)
    );
    consumer.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn first_frame_is_the_heartbeat_announcement() {
    let provider = local()
        .heartbeat_interval(std::time::Duration::from_millis(1234))
        .bind()
        .await
        .unwrap();
    let mut socket = raw_connect(&format!("ws://{}/connect", provider.local_addr())).await;
    assert_eq!(next_text(&mut socket).await, "PROVIDER_HEARTBEAT|1234");
    provider.shutdown().await;
}

#[tokio::test]
async fn reserved_messages_are_refused_by_send() {
    let provider = local().bind().await.unwrap();
    let mut provider_events = provider.events();
    let consumer = consumer_for(&provider).build();
    for reserved in ["PING", "PONG", "PROVIDER_HEARTBEAT|5"] {
        assert_eq!(
            consumer.send(reserved).unwrap_err().kind(),
            SendErrorKind::Reserved
        );
    }
    assert_eq!(
        consumer.send("early").unwrap_err().kind(),
        SendErrorKind::NotConnected
    );
    consumer.connect().await.unwrap();
    let conn = next_open(&mut provider_events).await;
    for reserved in ["PING", "PONG", "PROVIDER_HEARTBEAT|5"] {
        let err = conn.send(reserved).unwrap_err();
        assert_eq!(err.kind(), SendErrorKind::Reserved);
        assert!(err.to_string().contains("reserved"));
    }
    // Not reserved: only exact matches and the prefix.
    conn.send("PINGS").unwrap();
    let too_big = "x".repeat(40_000);
    assert_eq!(
        consumer.send(too_big.as_str()).unwrap_err().kind(),
        SendErrorKind::PayloadTooLarge
    );
    consumer.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn callbacks_and_once() {
    let opened = Arc::new(AtomicUsize::new(0));
    let once = Arc::new(AtomicUsize::new(0));
    let o = Arc::clone(&opened);
    let provider = local()
        .on_open(move |_| {
            o.fetch_add(1, Ordering::SeqCst);
        })
        .bind()
        .await
        .unwrap();
    let o = Arc::clone(&once);
    provider.once_message(move |_, m: MessageRef<'_>| {
        assert_eq!(m.as_text(), Some("first"));
        o.fetch_add(1, Ordering::SeqCst);
    });
    let mut events = provider.events();
    let consumer = consumer_for(&provider).connect().await.unwrap();
    consumer.send("first").unwrap();
    consumer.send("second").unwrap();
    next_event(&mut events, |e| match e {
        ProviderEvent::Message(_, m) if m == Message::from("second") => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    assert_eq!(once.load(Ordering::SeqCst), 1);
    assert_eq!(provider.connection_count(), 1);
    consumer.shutdown().await;
    provider.shutdown().await;
}
