//! The HTTP side: GET /alive, 404, 400 for garbage, size limits, and a time limit that a
//! stalled or byte-at-a-time client cannot get around.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn alive_answers_hello_world_with_the_time() {
    let provider = local().bind().await.unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let answer = raw_http(
        provider.local_addr(),
        b"GET /alive HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let millis: u128 = body
        .strip_prefix("Hello World @ ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(millis >= before && millis < before + 60_000);
    provider.shutdown().await;
}

#[tokio::test]
async fn plain_requests_and_bad_upgrades_get_clear_answers() {
    let provider = local().bind().await.unwrap();
    let addr = provider.local_addr();
    let upgrade = |path: &str, version: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n")
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "HTTP/1.1 404 Not Found"),
        (b"POST /alive HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "HTTP/1.1 404 Not Found"),
        (upgrade("/elsewhere", "13").into_bytes(), "HTTP/1.1 404 Not Found"),
        (upgrade("/connect", "8").into_bytes(), "HTTP/1.1 426 Upgrade Required"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), "HTTP/1.1 400 Bad Request"),
        (b"GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), "HTTP/1.1 400 Bad Request"),
        (format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000)).into_bytes(), "HTTP/1.1 414 URI Too Long"),
        (format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(100)).into_bytes(), "HTTP/1.1 431 Request Header Fields Too Large"),
        (format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(10_000)).into_bytes(), "HTTP/1.1 431 Request Header Fields Too Large"),
    ];
    for (request, status) in cases {
        let answer = raw_http(addr, &request).await;
        assert!(
            answer.starts_with(status),
            "wanted {status}, got {answer:?}"
        );
    }
    assert_eq!(provider.connection_count(), 0);
    provider.shutdown().await;
}

#[tokio::test]
async fn stalled_and_trickling_clients_are_cut_off_and_others_go_on() {
    let limit = Duration::from_millis(300);
    let provider = local().handshake_timeout(limit).bind().await.unwrap();
    let addr = provider.local_addr();

    // One client sends half a request and stalls.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Another sends one byte every 50 ms, forever.
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let trickler = tokio::spawn(async move {
        let request = b"GET /connect HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'));
        for byte in request.take(400) {
            if trickle.write_all(&[*byte]).await.is_err() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the trickling client was never cut off");
    });

    // Meanwhile a normal consumer connects and works.
    let consumer = consumer_for(&provider).connect().await.unwrap();
    consumer.send("hi").unwrap();

    let mut buf = [0u8; 64];
    let n = within("stalled cut off", stalled.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the server closes without an answer");
    let cut_at = within("trickler cut off", trickler).await.unwrap();
    let took = cut_at - started;
    assert!(took >= limit && took < limit * 10, "cut off after {took:?}");
    assert_eq!(provider.connection_count(), 1);
    consumer.shutdown().await;
    provider.shutdown().await;
}
