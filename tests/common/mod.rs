//! Helpers shared by the end-to-end tests: providers on loopback port 0, raw websocket
//! clients for wire-level checks, and waiting on events with a deadline (never sleeping).

#![allow(dead_code, unreachable_pub)]

pub mod fnv;
pub mod gate;
pub mod http;
pub mod nats;
pub mod pki;

use futures_util::{SinkExt, StreamExt};
use network_cluster::transport::{ProviderBuilder, ProviderEvent};
use network_cluster::{Consumer, Provider};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for anything a test waits on; events normally arrive in milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// A raw websocket client socket.
pub type RawSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A provider on 127.0.0.1 with a free port. Raw test sockets often stop reading before
/// the provider shuts down, so graceful closes wait 1 s at most instead of 5.
pub fn local() -> ProviderBuilder {
    Provider::builder()
        .host("127.0.0.1")
        .port(0)
        .close_timeout(Duration::from_secs(1))
}

/// A consumer builder aimed at `provider`, with fast reconnects.
pub fn consumer_for(provider: &Provider) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(provider.port())
        .reconnect_interval(Duration::from_millis(50))
}

/// Connects a raw websocket client to `url`.
pub async fn raw_connect(url: &str) -> RawSocket {
    let (socket, _) = within("raw connect", tokio_tungstenite::connect_async(url))
        .await
        .expect("raw connect");
    socket
}

/// The next text frame a raw client receives (skipping control frames).
pub async fn next_text(socket: &mut RawSocket) -> String {
    loop {
        match within("a text frame", socket.next()).await {
            Some(Ok(WsMessage::Text(t))) => return t.to_string(),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code (1006 if it dropped without one).
pub async fn closed_with(socket: &mut RawSocket) -> u16 {
    loop {
        match within("close", socket.next()).await {
            Some(Ok(WsMessage::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(WsMessage::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return 1006,
        }
    }
}

/// Sends a text frame from a raw client.
pub async fn raw_send(socket: &mut RawSocket, text: &str) {
    socket.send(WsMessage::text(text)).await.expect("raw send");
}

/// Waits for the next provider event that `pick` accepts.
pub async fn next_event<T>(
    events: &mut network_cluster::transport::EventStream<ProviderEvent>,
    mut pick: impl FnMut(ProviderEvent) -> Option<T>,
) -> T {
    within("a provider event", async {
        loop {
            let event = events.recv().await.expect("event stream ended");
            if let Some(v) = pick(event) {
                return v;
            }
        }
    })
    .await
}

/// Waits for the next connection to open.
pub async fn next_open(
    events: &mut network_cluster::transport::EventStream<ProviderEvent>,
) -> network_cluster::transport::Connection {
    next_event(events, |e| match e {
        ProviderEvent::Open(c) => Some(c),
        _ => None,
    })
    .await
}

/// Waits for `conn` to close; how it closed.
pub async fn next_close(
    events: &mut network_cluster::transport::EventStream<ProviderEvent>,
    conn: &network_cluster::transport::Connection,
) -> network_cluster::transport::CloseInfo {
    next_event(events, |e| match e {
        ProviderEvent::Close(c, info) if c.id() == conn.id() => Some(info),
        _ => None,
    })
    .await
}

/// Starts the `test_peer` example (built with the tests) as a process in `role`,
/// connected to the hub on `port`, and waits until it says it is connected. The process
/// is killed when the handle is dropped.
pub async fn spawn_peer(role: &str, port: u16) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(test_peer())
        .args([role, &port.to_string()])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start test_peer");
    let stdout = child.stdout.take().expect("test_peer stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = within("test_peer to connect", lines.next_line()).await;
    assert_eq!(
        ready.ok().flatten().as_deref(),
        Some("READY"),
        "test_peer failed"
    );
    child
}

/// The `test_peer` example's executable.
pub fn test_peer() -> std::path::PathBuf {
    // Test binaries live in target/<profile>/deps, examples in target/<profile>/examples.
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("test_peer"))
        .filter(|path| path.exists())
        .expect("examples/test_peer is not built: `cargo build --example test_peer`")
}

/// Sends raw bytes over TCP and returns everything the server answers until it closes.
pub async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    within("http answer", stream.read_to_end(&mut out))
        .await
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// The provider's connection whose `name` parameter is `name`, once it is registered (a
/// consumer's connect resolves at the 101, a moment before the provider registers it).
pub async fn connection_named(
    provider: &Provider,
    name: &str,
) -> network_cluster::transport::Connection {
    within("the connection to register", async {
        loop {
            let found = provider
                .connections()
                .into_values()
                .find(|c| c.parameters().get("name").map(String::as_str) == Some(name));
            if let Some(conn) = found {
                return conn;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}
