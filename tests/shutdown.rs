//! Ending connections: graceful shutdown (1001, waits, frees the port), destroy, and a
//! consumer's own close.

mod common;

use common::*;
use network_cluster::ConsumerEvent;

#[tokio::test]
async fn graceful_shutdown_sends_1001_waits_and_frees_the_port() {
    let provider = local().bind().await.unwrap();
    let port = provider.port();
    let mut provider_events = provider.events();
    let mut consumers = Vec::new();
    let mut consumer_events = Vec::new();
    for _ in 0..3 {
        let c = consumer_for(&provider).max_attempts(0).build();
        consumer_events.push(c.events());
        c.connect().await.unwrap();
        consumers.push(c);
    }
    let (closes_tx, closes) = std::sync::mpsc::channel();
    provider.on_close(move |_, info| {
        let _ = closes_tx.send(info.code);
    });
    within("shutdown", provider.shutdown()).await;
    // Every close handshake finished before shutdown returned.
    let codes: Vec<u16> = closes.try_iter().collect();
    assert_eq!(codes, [1001, 1001, 1001]);
    for events in &mut consumer_events {
        loop {
            match within("disconnect", events.recv()).await.unwrap() {
                ConsumerEvent::Disconnect(info) => {
                    assert_eq!(info.code, 1001);
                    assert_eq!(info.reason, "provider shutting down");
                    break;
                }
                _ => continue,
            }
        }
    }
    // The port is free again.
    let again = local().port(port).bind().await.unwrap();
    drop(provider_events.recv().await);
    again.shutdown().await;
    for c in consumers {
        c.shutdown().await;
    }
}

#[tokio::test]
async fn destroy_closes_everyone_at_once() {
    let provider = local().bind().await.unwrap();
    let mut socket = raw_connect(&format!("ws://{}/connect", provider.local_addr())).await;
    assert_eq!(next_text(&mut socket).await, "PROVIDER_HEARTBEAT|30000");
    provider.destroy();
    assert!(provider.is_stopped());
    assert_eq!(closed_with(&mut socket).await, 1001);
}

#[tokio::test]
async fn consumer_destroy_is_seen_as_a_normal_close() {
    let provider = local().bind().await.unwrap();
    let mut events = provider.events();
    let consumer = consumer_for(&provider).connect().await.unwrap();
    let conn = next_open(&mut events).await;
    consumer.shutdown().await;
    let info = next_close(&mut events, &conn).await;
    assert_eq!(info.code, 1000);
    assert_eq!(provider.connection_count(), 0);
    provider.shutdown().await;
}

#[tokio::test]
async fn tcp_drop_is_1006() {
    let provider = local().bind().await.unwrap();
    let mut events = provider.events();
    let socket = raw_connect(&format!("ws://{}/connect", provider.local_addr())).await;
    let conn = next_open(&mut events).await;
    drop(socket);
    let info = next_close(&mut events, &conn).await;
    assert_eq!(info.code, 1006);
    provider.shutdown().await;
}
