//! A ping flood from a peer that never reads: control pings are answered by at most one
//! pending pong once the socket is backed up, and every queued byte counts against
//! `max_backpressure`, so neither the provider nor the consumer grows.
//!
//! Memory is this process's resident set, read before and after the flood (one test,
//! so nothing else in this binary allocates meanwhile).

mod common;

use common::*;
use network_cluster::transport::ProviderEvent;
use network_cluster::Consumer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Pings sent in each flood: 300,000 of 125 bytes, about 40 MB on the wire.
const PINGS: usize = 300_000;
const LIMIT: usize = 1024 * 1024;

/// This process's resident memory in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// A frame with a 125-byte payload, masked when `masked` (a client's).
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let len = u8::try_from(payload.len()).expect("a short frame");
    if masked {
        out.push(0x80 | len);
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
    } else {
        out.push(len);
        out.extend_from_slice(payload);
    }
    out
}

/// Writes `PINGS` pings in batches, then a text frame "done"; stops early if the peer
/// closes (which it may do, with 1008, once over its limit).
async fn flood(stream: &mut TcpStream, masked: bool) {
    let ping = frame(0x9, &[b'p'; 125], masked);
    let batch: Vec<u8> = ping.repeat(1000);
    for _ in 0..PINGS / 1000 {
        if stream.write_all(&batch).await.is_err() {
            return;
        }
    }
    let _ = stream.write_all(&frame(0x1, b"done", masked)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_neither_grow_the_provider_nor_the_consumer() {
    // The provider, flooded by a raw client that upgrades and never reads again.
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let provider = local()
        .max_backpressure(LIMIT)
        .on_message(move |_, m| {
            let _ = done_tx.send(m.as_text().map(str::to_owned));
        })
        .bind()
        .await
        .unwrap();
    let mut events = provider.events();
    let mut client = TcpStream::connect(provider.local_addr()).await.unwrap();
    client
        .write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let conn = next_open(&mut events).await;
    let before = rss();
    flood(&mut client, true).await;
    // Either the flood was absorbed (the marker after it arrives) or the client was
    // closed over the limit with 1008; both keep the provider's memory bounded.
    let outcome = within("the flood to be read", async {
        tokio::select! {
            marker = done.recv() => Err(marker),
            code = async {
                loop {
                    if let Some(ProviderEvent::Close(c, info)) = events.recv().await {
                        if c.id() == conn.id() {
                            return info.code;
                        }
                    }
                }
            } => Ok(code),
        }
    })
    .await;
    match outcome {
        Err(marker) => {
            assert_eq!(marker, Some(Some("done".into())));
            assert!(
                conn.backpressure() <= LIMIT,
                "{} queued",
                conn.backpressure()
            );
        }
        Ok(code) => assert_eq!(code, 1008),
    }
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 2 * LIMIT,
        "the provider grew by {grown} bytes under a ping flood"
    );
    drop(client);
    provider.shutdown().await;

    // The consumer, flooded by a raw server that upgrades it and never reads again.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed during the upgrade");
            request.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&request);
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("a key")
            .trim()
            .to_owned();
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        stream.write_all(response.as_bytes()).await.unwrap();
        flood(&mut stream, false).await;
        stream
    });
    let (marker_tx, mut marker) = mpsc::unbounded_channel();
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .compression(false)
        .max_backpressure(LIMIT)
        .on_message(move |m| {
            let _ = marker_tx.send(m.as_text().map(str::to_owned));
        })
        .build();
    let before = rss();
    consumer.connect().await.unwrap();
    assert_eq!(
        within("the flood to be read", marker.recv()).await,
        Some(Some("done".into()))
    );
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 2 * LIMIT,
        "the consumer grew by {grown} bytes under a ping flood"
    );
    assert!(consumer.is_connected());
    consumer.destroy();
    drop(within("server", server).await);
}
