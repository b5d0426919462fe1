//! Reconnects: after the provider restarts on the same port, and giving up after
//! max_attempts with one disconnect per failed attempt and a single close.

mod common;

use common::*;
use network_cluster::transport::{ConnectErrorKind, ConsumerState};
use network_cluster::{Consumer, ConsumerEvent, Message};
use std::time::Duration;

#[tokio::test]
async fn consumer_reconnects_after_provider_restart_on_the_same_port() {
    let first = local()
        .on_message(|c, m| {
            let _ = c.send(m);
        })
        .bind()
        .await
        .unwrap();
    let port = first.port();
    let consumer = consumer_for(&first).max_attempts(100).build();
    let mut events = consumer.events();
    consumer.connect().await.unwrap();
    assert_eq!(
        within("open", events.recv()).await,
        Some(ConsumerEvent::Open)
    );

    first.shutdown().await;
    match within("disconnect", events.recv()).await.unwrap() {
        ConsumerEvent::Disconnect(info) => assert_eq!(info.code, 1001),
        other => panic!("{other:?}"),
    }
    assert!(!consumer.is_connected());

    let second = local()
        .port(port)
        .on_message(|c, m| {
            let _ = c.send(m);
        })
        .bind()
        .await
        .unwrap();
    loop {
        match within("reopen", events.recv()).await.unwrap() {
            ConsumerEvent::Open => break,
            ConsumerEvent::Disconnect(info) => assert_eq!(info.code, 1006),
            other => panic!("{other:?}"),
        }
    }
    consumer.ready().await.unwrap();
    consumer.send("again").unwrap();
    loop {
        if let ConsumerEvent::Message(m) = within("echo", events.recv()).await.unwrap() {
            assert_eq!(m, Message::from("again"));
            break;
        }
    }
    consumer.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    // A port nobody listens on: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .reconnect_interval(Duration::from_millis(5))
        .max_attempts(3)
        .build();
    let mut events = consumer.events();
    let error = within("give up", consumer.connect()).await.unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::MaxAttempts);
    let mut disconnects = 0;
    loop {
        match within("events", events.recv()).await.unwrap() {
            ConsumerEvent::Disconnect(info) => {
                assert_eq!(info.code, 1006);
                disconnects += 1;
            }
            ConsumerEvent::Close => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(disconnects, 4, "the first attempt and three retries");
    assert!(matches!(consumer.state(), ConsumerState::Closed(_)));
}
