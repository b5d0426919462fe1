//! Plain HTTP routes on the provider's port: whole and streamed answers, bodies and their
//! limits, and that such requests are not consumers.

mod common;

use common::{consumer_for, local, raw_http, within};
use network_cluster::transport::{HttpResponse, MAX_HTTP_BODY_BYTES};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[tokio::test]
async fn routes_answer_beside_alive_and_upgrades() {
    let provider = local()
        .http_route("/status", |request| async move {
            let who = request.parameters().get("who").cloned().unwrap_or_default();
            HttpResponse::new(200, "application/json", format!(r#"{{"hello":"{who}"}}"#))
                .header("X-Path", request.path())
        })
        .http_route("/echo", |request| async move {
            HttpResponse::new(201, "application/octet-stream", request.body().to_vec())
        })
        .bind()
        .await
        .expect("bind");
    let addr = provider.local_addr();

    let status = raw_http(
        addr,
        b"GET /status/deep?who=ann HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200 OK\r\n"), "{status}");
    assert!(status.contains("Content-Type: application/json\r\n"));
    assert!(status.contains("X-Path: /status/deep\r\n"));
    assert!(status.ends_with(r#"{"hello":"ann"}"#), "{status}");

    let echo = raw_http(
        addr,
        b"POST /echo HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert!(echo.starts_with("HTTP/1.1 201 Created\r\n"), "{echo}");
    assert!(echo.ends_with("\r\n\r\nhello world"), "{echo}");

    // The provider's own answers are unchanged.
    let alive = raw_http(addr, b"GET /alive HTTP/1.1\r\n\r\n").await;
    assert!(alive.starts_with("HTTP/1.1 200 OK\r\n") && alive.contains("Hello World @"));
    let missing = raw_http(addr, b"GET /statusx HTTP/1.1\r\n\r\n").await;
    assert!(
        missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{missing}"
    );

    // Upgrades still work, and route requests were never consumers.
    let consumer = consumer_for(&provider).connect().await.expect("connect");
    assert_eq!(provider.connection_count(), 1);
    consumer.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn bodies_are_bounded() {
    let provider = local()
        .http_route("/echo", |request| async move {
            HttpResponse::new(200, "text/plain", request.body().to_vec())
        })
        .bind()
        .await
        .expect("bind");
    let addr = provider.local_addr();
    let too_large = format!(
        "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        MAX_HTTP_BODY_BYTES + 1
    );
    let answer = raw_http(addr, too_large.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let chunked =
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = raw_http(addr, chunked).await;
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    let bad = raw_http(addr, b"POST /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    // A body at the limit arrives whole, in however many reads it takes.
    let body = vec![b'a'; MAX_HTTP_BODY_BYTES];
    let mut at_limit = format!(
        "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    at_limit.extend_from_slice(&body);
    let answer = raw_http(addr, &at_limit).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(answer.ends_with(&"a".repeat(1000)));
    assert_eq!(
        answer.split("\r\n\r\n").nth(1).map(str::len),
        Some(body.len())
    );
    provider.shutdown().await;
}

/// A streamed answer is not cut by the upgrade's time limit: a silent socket opened
/// after the stream started is closed by that limit, and the stream still goes on. Then
/// a graceful shutdown ends the stream instead of waiting for it.
#[tokio::test]
async fn streams_outlive_the_handshake_limit_and_end_at_shutdown() {
    let (chunks_tx, chunks_rx) = mpsc::channel::<Vec<u8>>(4);
    let chunks_rx = std::sync::Mutex::new(Some(chunks_rx));
    let provider = local()
        .handshake_timeout(Duration::from_millis(300))
        .http_route("/feed", move |_| {
            let rx = chunks_rx.lock().unwrap().take();
            async move {
                let stream = futures_util::stream::unfold(rx, |rx| async move {
                    let mut rx = rx?;
                    let chunk = rx.recv().await?;
                    Some((chunk, Some(rx)))
                });
                HttpResponse::stream(200, "text/event-stream", stream)
            }
        })
        .bind()
        .await
        .expect("bind");
    let addr = provider.local_addr();
    let mut feed = TcpStream::connect(addr).await.expect("connect");
    feed.write_all(b"GET /feed HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    chunks_tx
        .send(b"data: one\n\n".to_vec())
        .await
        .expect("send");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).ends_with("data: one\n\n") {
        let mut buf = [0u8; 1024];
        let n = within("the first event", feed.read(&mut buf))
            .await
            .expect("read");
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/event-stream\r\n"));
    assert!(!head.contains("Content-Length"));

    // A silent socket, opened later, is closed by the time limit...
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = within("the handshake limit", silent.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the silent socket is closed without an answer");
    // ...while the stream, older than it, still delivers.
    chunks_tx
        .send(b"data: two\n\n".to_vec())
        .await
        .expect("send");
    let n = within("the second event", feed.read(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf[..n], b"data: two\n\n");
    assert_eq!(provider.connection_count(), 0);

    within("shutdown during a stream", provider.shutdown()).await;
    let n = within("the stream's end", feed.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "shutdown ends the stream");
}
