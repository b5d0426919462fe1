//! Limits: max_payload_length (inclusive, 1009 above), max_backpressure, bad frames. Each
//! closes only the offending connection.

mod common;

use common::*;
use futures_util::SinkExt;
use network_cluster::transport::{ProviderEvent, SendErrorKind};
use network_cluster::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

async fn open_conn(
    events: &mut network_cluster::transport::EventStream<ProviderEvent>,
) -> network_cluster::Connection {
    next_event(events, |e| match e {
        ProviderEvent::Open(c) => Some(c),
        _ => None,
    })
    .await
}

async fn close_code_of(
    events: &mut network_cluster::transport::EventStream<ProviderEvent>,
    id: uuid::Uuid,
) -> u16 {
    next_event(events, |e| match e {
        ProviderEvent::Close(c, info) if c.id() == id => Some(info.code),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn payload_limit_is_inclusive_and_closes_with_1009() {
    let provider = local().bind().await.unwrap();
    let mut events = provider.events();
    let url = format!("ws://{}/connect", provider.local_addr());
    let mut bystander = raw_connect(&url).await;
    let bystander_conn = open_conn(&mut events).await;
    let mut socket = raw_connect(&url).await;
    let conn = open_conn(&mut events).await;

    socket
        .send(WsMessage::text("a".repeat(32768)))
        .await
        .unwrap();
    let got = next_event(&mut events, |e| match e {
        ProviderEvent::Message(_, m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(got.len(), 32768);

    socket
        .send(WsMessage::text("a".repeat(32769)))
        .await
        .unwrap();
    assert_eq!(closed_with(&mut socket).await, 1009);
    assert_eq!(close_code_of(&mut events, conn.id()).await, 1009);

    // The other connection goes on.
    bystander_conn.send("still here").unwrap();
    assert_eq!(next_text(&mut bystander).await, "PROVIDER_HEARTBEAT|30000");
    assert_eq!(next_text(&mut bystander).await, "still here");
    provider.shutdown().await;
}

#[tokio::test]
async fn fragmented_message_over_the_limit_is_refused() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let provider = local().max_payload_length(100).bind().await.unwrap();
    let mut events = provider.events();
    let mut socket = raw_connect(&format!("ws://{}/connect", provider.local_addr())).await;
    let conn = open_conn(&mut events).await;
    let first = Frame::message(vec![b'a'; 60], OpCode::Data(Data::Text), false);
    let second = Frame::message(vec![b'a'; 60], OpCode::Data(Data::Continue), true);
    socket.send(WsMessage::Frame(first)).await.unwrap();
    let _ = socket.send(WsMessage::Frame(second)).await;
    assert_eq!(close_code_of(&mut events, conn.id()).await, 1009);
    provider.shutdown().await;
}

#[tokio::test]
async fn consumer_that_stops_reading_is_closed_for_backpressure() {
    let provider = local().max_backpressure(256 * 1024).bind().await.unwrap();
    let mut events = provider.events();
    // A raw TCP client that upgrades and then never reads again.
    let mut stalled = tokio::net::TcpStream::connect(provider.local_addr())
        .await
        .unwrap();
    stalled
        .write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let conn = open_conn(&mut events).await;
    let healthy = consumer_for(&provider).build();
    let mut healthy_events = healthy.events();
    healthy.connect().await.unwrap();
    open_conn(&mut events).await;

    let chunk = vec![7u8; 16 * 1024];
    let mut sent = 0usize;
    let error = loop {
        match conn.send(&chunk[..]) {
            Ok(()) => sent += chunk.len(),
            Err(e) => break e,
        }
        // Give the connection's task a chance to hand bytes to the kernel.
        tokio::task::yield_now().await;
        assert!(sent < 64 * 1024 * 1024, "backpressure never kicked in");
    };
    assert_eq!(error.kind(), SendErrorKind::Backpressure);
    assert_eq!(close_code_of(&mut events, conn.id()).await, 1008);
    assert_eq!(
        conn.send("late").unwrap_err().kind(),
        SendErrorKind::NotConnected
    );

    // The provider and the other consumer go on.
    assert_eq!(provider.send_to_all("after"), 1);
    loop {
        match within("healthy message", healthy_events.recv())
            .await
            .unwrap()
        {
            network_cluster::ConsumerEvent::Message(m) => {
                assert_eq!(m, Message::from("after"));
                break;
            }
            _ => continue,
        }
    }
    drop(stalled);
    healthy.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn protocol_errors_close_only_that_connection() {
    let provider = local().bind().await.unwrap();
    let mut events = provider.events();
    let url = format!("ws://{}/connect", provider.local_addr());
    let mut bystander = raw_connect(&url).await;
    let bystander_conn = open_conn(&mut events).await;
    // Each bad frame, raw over TCP after a valid upgrade: (bytes, expected close code).
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    let reserved_bits = vec![0xC1, 0x80, 0, 0, 0, 0];
    let unknown_opcode = vec![0x83, 0x80, 0, 0, 0, 0];
    let bad_utf8 = vec![0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28];
    let long_ping = {
        let mut f = vec![0x89, 0xFE, 0x00, 0x7E, 0, 0, 0, 0];
        f.extend(vec![0u8; 126]);
        f
    };
    for (bytes, code) in [
        (unmasked, 1002),
        (reserved_bits, 1002),
        (unknown_opcode, 1002),
        (bad_utf8, 1007),
        (long_ping, 1002),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(provider.local_addr())
            .await
            .unwrap();
        tcp.write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
        let conn = open_conn(&mut events).await;
        tcp.write_all(&bytes).await.unwrap();
        // The server sends a close frame with that code, then its FIN at once.
        let mut answer = Vec::new();
        let _ = within("server close", tcp.read_to_end(&mut answer)).await;
        let close_at = answer
            .windows(2)
            .position(|w| w[0] == 0x88)
            .expect("a close frame");
        let got = u16::from_be_bytes([answer[close_at + 2], answer[close_at + 3]]);
        assert_eq!(got, code);
        drop(tcp);
        assert_eq!(close_code_of(&mut events, conn.id()).await, code);
    }
    bystander_conn.send("fine").unwrap();
    assert_eq!(next_text(&mut bystander).await, "PROVIDER_HEARTBEAT|30000");
    assert_eq!(next_text(&mut bystander).await, "fine");
    assert_eq!(provider.connection_count(), 1);
    provider.shutdown().await;
}

#[tokio::test]
async fn control_ping_gets_a_pong_and_pipelined_frames_are_read() {
    let provider = local()
        .on_message(|c, m| {
            let _ = c.send(m);
        })
        .bind()
        .await
        .unwrap();
    let mut socket = raw_connect(&format!("ws://{}/connect", provider.local_addr())).await;
    socket
        .send(WsMessage::Ping(b"abc".to_vec().into()))
        .await
        .unwrap();
    socket.send(WsMessage::text("one")).await.unwrap();
    let mut got_pong = false;
    let mut texts = Vec::new();
    while texts.len() < 2 {
        match within("frames", futures_util::StreamExt::next(&mut socket)).await {
            Some(Ok(WsMessage::Pong(p))) => {
                assert_eq!(&p[..], b"abc");
                got_pong = true;
            }
            Some(Ok(WsMessage::Text(t))) => texts.push(t.to_string()),
            other => panic!("{other:?}"),
        }
    }
    assert!(got_pong);
    assert_eq!(texts, ["PROVIDER_HEARTBEAT|30000", "one"]);
    provider.shutdown().await;
}

/// The consumer applies `max_payload_length` to what it receives, as the provider does:
/// a message at the limit is delivered, one byte more closes the connection with 1009.
#[tokio::test]
async fn the_consumer_closes_a_message_over_its_limit_with_1009() {
    let provider = local().bind().await.unwrap();
    let mut events = provider.events();
    let consumer = consumer_for(&provider)
        .max_payload_length(1000)
        .max_attempts(0)
        .build();
    let mut consumer_events = consumer.events();
    consumer.connect().await.unwrap();
    let conn = open_conn(&mut events).await;

    conn.send("a".repeat(1000).as_str()).unwrap();
    conn.send("a".repeat(1001).as_str()).unwrap();
    let (mut delivered, mut disconnect) = (Vec::new(), None);
    while disconnect.is_none() {
        match within("consumer events", consumer_events.recv())
            .await
            .unwrap()
        {
            network_cluster::ConsumerEvent::Message(m) => delivered.push(m.len()),
            network_cluster::ConsumerEvent::Disconnect(info) => disconnect = Some(info),
            _ => {}
        }
    }
    assert_eq!(
        delivered,
        [1000],
        "the message at the limit, not the one over it"
    );
    assert_eq!(disconnect.map(|i| i.code), Some(1009));
    assert_eq!(close_code_of(&mut events, conn.id()).await, 1009);
    consumer.shutdown().await;
    provider.shutdown().await;
}
