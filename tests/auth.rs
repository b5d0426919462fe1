//! Auth: URL parameters (constant-time compare), the async handler, 403 and no retry.

mod common;

use common::*;
use network_cluster::transport::ConnectErrorKind;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test]
async fn matching_parameters_are_accepted_and_extras_kept() {
    let provider = local()
        .auth_parameter("key", "SECRET")
        .bind()
        .await
        .unwrap();
    let mut events = provider.events();
    let consumer = consumer_for(&provider)
        .parameter("key", "SECRET")
        .parameter("something1", "Some Value 1")
        .connect()
        .await
        .unwrap();
    let conn = next_open(&mut events).await;
    assert_eq!(conn.parameters()["something1"], "Some Value 1");
    assert_eq!(conn.parameters()["key"], "SECRET");
    consumer.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn parameters_are_decoded_before_auth() {
    let provider = local()
        .auth_parameter("key", "a b&c/é")
        .bind()
        .await
        .unwrap();
    let mut events = provider.events();
    let url = format!(
        "ws://{}/connect?key=a%20b%26c%2F%C3%A9&x=1",
        provider.local_addr()
    );
    let mut socket = raw_connect(&url).await;
    let conn = next_open(&mut events).await;
    assert_eq!(conn.parameters()["key"], "a b&c/é");
    assert_eq!(next_text(&mut socket).await, "PROVIDER_HEARTBEAT|30000");
    provider.shutdown().await;
}

#[tokio::test]
async fn wrong_or_missing_secret_gets_403_unauthorized() {
    let provider = local()
        .auth_parameter("key", "SECRET")
        .bind()
        .await
        .unwrap();
    for query in ["", "?key=SECRE", "?key=SECRETX", "?other=SECRET"] {
        let request = format!(
            "GET /connect{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let answer = raw_http(provider.local_addr(), request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{query}: {answer}"
        );
        assert!(answer.contains("Content-Length: 12\r\n"));
        assert!(answer.ends_with("\r\n\r\nUnauthorized"));
    }
    assert_eq!(provider.connection_count(), 0);
    provider.shutdown().await;
}

#[tokio::test]
async fn rejected_consumer_fails_at_once_and_never_retries() {
    let rejections = Arc::new(Mutex::new(0usize));
    let seen = Arc::clone(&rejections);
    let provider = local()
        .auth_parameter("key", "SECRET")
        .debug_logger(move |line| {
            if line.contains("unauthorized") {
                *seen.lock().unwrap() += 1;
            }
        })
        .bind()
        .await
        .unwrap();
    let consumer = consumer_for(&provider)
        .parameter("key", "WRONG")
        .reconnect_interval(Duration::from_millis(10))
        .max_attempts(10)
        .build();
    let mut events = consumer.events();
    let error = within("rejection", consumer.connect()).await.unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Rejected);
    assert!(error.is_fatal());
    assert!(error.to_string().contains("403"), "{error}");
    // The close event is the last thing a consumer says; no disconnect/retry before it.
    let event = within("close event", events.recv()).await.unwrap();
    assert_eq!(event, network_cluster::ConsumerEvent::Close);
    // A retry would have hit the provider again within a few 10 ms intervals; the closed
    // consumer has no task left that could.
    assert!(matches!(
        consumer.state(),
        network_cluster::transport::ConsumerState::Closed(_)
    ));
    provider.shutdown().await;
    assert_eq!(*rejections.lock().unwrap(), 1);
}

#[tokio::test]
async fn async_handler_sees_the_request() {
    let seen = Arc::new(Mutex::new(None));
    let store = Arc::clone(&seen);
    let provider = local()
        .auth_parameter("key", "SECRET")
        .auth_handler(move |request| {
            let store = Arc::clone(&store);
            async move {
                tokio::task::yield_now().await;
                let verdict = request.parameters().get("team").map(String::as_str) == Some("blue")
                    && request.header("x-token") == Some("t0k");
                *store.lock().unwrap() = Some((
                    request.ip().to_string(),
                    request.path().to_owned(),
                    request.headers().len(),
                ));
                verdict
            }
        })
        .bind()
        .await
        .unwrap();
    let addr = provider.local_addr();
    let upgrade = |query: &str, token: &str| {
        format!(
            "GET /connect?{query} HTTP/1.1\r\nHost: x\r\nX-Token: {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let ok = raw_http_first_line(addr, &upgrade("key=SECRET&team=blue", "t0k")).await;
    assert_eq!(ok, "HTTP/1.1 101 Switching Protocols");
    let (ip, path, headers) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        (ip.as_str(), path.as_str(), headers),
        ("127.0.0.1", "/connect", 6)
    );
    let wrong_team = raw_http(addr, upgrade("key=SECRET&team=red", "t0k").as_bytes()).await;
    assert!(wrong_team.starts_with("HTTP/1.1 403"));
    let wrong_header = raw_http(addr, upgrade("key=SECRET&team=blue", "nope").as_bytes()).await;
    assert!(wrong_header.starts_with("HTTP/1.1 403"));
    // The handler only runs once the parameters match.
    *seen.lock().unwrap() = None;
    let wrong_key = raw_http(addr, upgrade("key=NO&team=blue", "t0k").as_bytes()).await;
    assert!(wrong_key.starts_with("HTTP/1.1 403"));
    assert!(seen.lock().unwrap().is_none());
    provider.shutdown().await;
}

/// The status line of the answer to an upgrade request (the socket stays open after 101).
async fn raw_http_first_line(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    within("status line", BufReader::new(stream).read_line(&mut line))
        .await
        .unwrap();
    line.trim_end().to_owned()
}
