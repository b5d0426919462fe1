//! The heartbeat: PING/PONG with strikes on the provider, the watchdog on the consumer.
//!
//! Time is the subject here, so the clock is paused: the heartbeat's seconds pass at once
//! and the times it acts at are asserted exactly, both ways (never too early, never late).

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use network_cluster::transport::ProviderEvent;
use network_cluster::ConsumerEvent;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Slack for the few milliseconds of virtual time a loopback exchange may be charged.
const SLACK: Duration = Duration::from_millis(100);

#[tokio::test(start_paused = true)]
async fn consumer_that_stops_answering_is_killed_after_max_strikes() {
    let interval = Duration::from_secs(1);
    let provider = local()
        .heartbeat_interval(interval)
        .max_strikes(2)
        .bind()
        .await
        .unwrap();
    let mut events = provider.events();
    let mut socket = raw_connect(&format!("ws://{}/connect", provider.local_addr())).await;
    let conn = next_open(&mut events).await;
    assert_eq!(next_text(&mut socket).await, "PROVIDER_HEARTBEAT|1000");
    // Answer five PINGs, one per interval: the connection stays, strikes stay at 0.
    let mut last = Instant::now();
    for _ in 0..5 {
        assert_eq!(next_text(&mut socket).await, "PING");
        let gap = last.elapsed();
        assert!(gap <= interval + SLACK, "a PING every interval: {gap:?}");
        last = Instant::now();
        assert!(conn.last_ping() > 0);
        assert_eq!(conn.strikes(), 0);
        socket.send(WsMessage::text("PONG")).await.unwrap();
    }
    assert_eq!(next_text(&mut socket).await, "PING");
    // Now stop answering: strike, strike, kill, at the next three cycles.
    let silent_since = Instant::now();
    assert_eq!(closed_with(&mut socket).await, 1008);
    let took = silent_since.elapsed();
    assert!(
        took >= interval * 3 && took <= interval * 3 + SLACK,
        "killed after {took:?}, not 3 intervals"
    );
    let info = next_close(&mut events, &conn).await;
    assert_eq!(info.code, 1008);
    assert_eq!(conn.strikes(), 2);
    // PONGs were never surfaced as messages.
    provider.shutdown().await;
}

/// A consumer that stopped reading altogether: the kernel's buffers are full and bytes
/// wait in its queue, so the heartbeat's close frame can never be written. The kill still
/// ends the connection within the close timeout (it used to wait for the socket forever,
/// and the heartbeat killed and logged it again every cycle).
#[tokio::test(start_paused = true)]
async fn killed_consumer_that_stopped_reading_ends_within_the_close_timeout() {
    let interval = Duration::from_secs(1);
    let close_timeout = Duration::from_secs(1);
    let provider = local()
        .heartbeat_interval(interval)
        .max_strikes(1)
        .close_timeout(close_timeout)
        .max_backpressure(64 << 20)
        .bind()
        .await
        .unwrap();
    let mut events = provider.events();
    let _socket = raw_connect(&format!("ws://{}/connect", provider.local_addr())).await;
    let conn = next_open(&mut events).await;
    // Never read: send until the kernel takes no more and bytes stay queued.
    let chunk = vec![7u8; 256 * 1024];
    while conn.backpressure() < 1 << 20 {
        conn.send(chunk.as_slice()).unwrap();
        tokio::task::yield_now().await;
    }
    let stuck_since = Instant::now();
    let info = next_close(&mut events, &conn).await;
    let took = stuck_since.elapsed();
    // Ping, strike, kill at the third cycle; then the close timeout.
    let bound = interval * 3 + close_timeout + SLACK;
    assert!(took <= bound, "ended after {took:?}, bound {bound:?}");
    assert_eq!(info.code, 1008);
    assert_eq!(provider.connection_count(), 0);
    provider.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn our_consumer_answers_pings_and_stays() {
    let interval = Duration::from_secs(1);
    let provider = local()
        .heartbeat_interval(interval)
        .max_strikes(2)
        .bind()
        .await
        .unwrap();
    let mut events = provider.events();
    let consumer = consumer_for(&provider).connect().await.unwrap();
    let conn = next_open(&mut events).await;
    // Ten cycles: a consumer that did not answer would be closed after three.
    tokio::time::sleep(interval * 10 + SLACK).await;
    assert!(consumer.last_heartbeat() > 0);
    assert!(consumer.is_connected());
    assert_eq!(provider.connection_count(), 1);
    assert!(conn.strikes() <= 1);
    // No PING/PONG ever surfaced as a provider message.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(1), events.recv()).await
    {
        assert!(!matches!(event, ProviderEvent::Message(..)), "{event:?}");
    }
    consumer.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn consumer_watchdog_reconnects_when_pings_stop() {
    // A server that announces a 1 s heartbeat and then never pings.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut sockets = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(WsMessage::text("PROVIDER_HEARTBEAT|1000"))
                .await
                .unwrap();
            sockets.push(ws);
        }
        // Keep them open (and silent) until the test ends.
        for ws in &mut sockets {
            while let Some(Ok(_)) = ws.next().await {}
        }
    });
    let reconnect = Duration::from_millis(500);
    let consumer = network_cluster::Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .reconnect_interval(reconnect)
        .build();
    let mut events = consumer.events();
    consumer.connect().await.unwrap();
    let started = Instant::now();
    let info = loop {
        match within("watchdog", events.recv()).await.unwrap() {
            ConsumerEvent::Disconnect(info) => break info,
            ConsumerEvent::Open => {}
            other => panic!("{other:?}"),
        }
    };
    // Twice the announced interval without a PING, and not a moment before.
    let dropped = started.elapsed();
    assert_eq!(info.reason, "heartbeat timeout");
    let cutoff = Duration::from_secs(2);
    assert!(
        dropped >= cutoff && dropped <= cutoff + SLACK,
        "dropped after {dropped:?}"
    );
    assert_eq!(consumer.heartbeat_cutoff(), Some(cutoff));
    // Then one reconnect interval later, connected again.
    assert_eq!(
        within("reopen", events.recv()).await,
        Some(ConsumerEvent::Open)
    );
    let reopened = started.elapsed() - dropped;
    assert!(
        reopened >= reconnect && reopened <= reconnect + SLACK,
        "reconnected after {reopened:?}"
    );
    consumer.destroy();
    server.abort();
}

/// The interval in `PROVIDER_HEARTBEAT|<ms>` comes from the network: the largest one a
/// provider can send leaves the consumer working (its watchdog deadline is computed with
/// checked arithmetic, found in the security review).
#[tokio::test]
async fn consumer_survives_an_absurd_heartbeat_interval() {
    // A plain websocket provider may send what it likes, reserved texts included.
    let provider = local()
        .without_heartbeat()
        .on_open(|conn| {
            let _ = conn.send("PROVIDER_HEARTBEAT|18446744073709551615");
            let _ = conn.send("after");
        })
        .bind()
        .await
        .unwrap();
    let consumer = consumer_for(&provider).build();
    let mut events = consumer.events();
    consumer.connect().await.unwrap();
    within("the message after the heartbeat frame", async {
        loop {
            if let Some(ConsumerEvent::Message(m)) = events.recv().await {
                assert_eq!(m.as_text(), Some("after"));
                return;
            }
        }
    })
    .await;
    assert!(consumer.heartbeat_cutoff().is_some());
    assert!(consumer.is_connected());
    consumer.shutdown().await;
    provider.shutdown().await;
}
