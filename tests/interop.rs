//! Interop with Node peers on the npm `ws` package that behave as the original package
//! does on the wire (tests/node/*.js): a Node consumer against our provider, and our
//! consumer against a Node provider. Needs `npm ci --prefix tests/node` (done by .ci/run).

mod common;

use common::*;
use network_cluster::transport::{Compressor, ConnectErrorKind, ProviderEvent};
use network_cluster::{Consumer, ConsumerEvent, Message};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A Node peer driven over stdin/stdout JSON lines.
struct NodePeer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodePeer {
    fn spawn(script: &str, args: &[String]) -> Self {
        let path = format!("{}/tests/node/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("node")
            .arg(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed (see README)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next JSON line whose "event" is `name`, skipping others.
    async fn expect(&mut self, name: &str) -> Value {
        within(name, async {
            loop {
                let line = self.lines.next_line().await.unwrap().expect("node exited");
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["event"] == name {
                    return v;
                }
            }
        })
        .await
    }

    async fn command(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }
}

#[tokio::test]
async fn node_consumer_joins_our_provider() {
    let provider = local()
        .auth_parameter("key", "SECRET_KEY")
        .heartbeat_interval(Duration::from_millis(100))
        .bind()
        .await
        .unwrap();
    let mut events = provider.events();
    let url = format!("ws://127.0.0.1:{}/connect", provider.port());
    let mut node = NodePeer::spawn(
        "consumer.js",
        &[
            "--url".into(),
            url.clone(),
            "--param".into(),
            "key=SECRET_KEY".into(),
            "--param".into(),
            "name=a b&c/é".into(),
        ],
    );
    node.expect("open").await;
    // Node's ws offered permessage-deflate; with compression off nothing was negotiated.
    assert_eq!(node.expect("extensions").await["value"], "");
    assert_eq!(node.expect("heartbeat").await["interval"], 100);
    let conn = next_open(&mut events).await;
    assert_eq!(conn.parameters()["name"], "a b&c/é");

    // PING answered with PONG, several cycles, and the connection stays.
    for _ in 0..4 {
        node.expect("ping").await;
    }
    assert_eq!(conn.strikes(), 0);

    node.command(json!({"send": "CONSUMER_READY"})).await;
    let got = next_event(&mut events, |e| match e {
        ProviderEvent::Message(_, m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(got, Message::from("CONSUMER_READY"));
    node.command(json!({"send_binary_hex": "00ff10"})).await;
    let got = next_event(&mut events, |e| match e {
        ProviderEvent::Message(_, m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(got, Message::from(vec![0u8, 0xff, 0x10]));

    conn.send("SOME_REPLY").unwrap();
    assert_eq!(node.expect("message").await["message"], "SOME_REPLY");
    conn.send(&[1u8, 2][..]).unwrap();
    assert_eq!(node.expect("binary").await["hex"], "0102");

    // The original consumer's destroy: a close frame without a code.
    node.command(json!({"close": true})).await;
    let info = next_close(&mut events, &conn).await;
    assert_eq!(info.code, 1005);
    node.expect("close").await;

    // A wrong key: the Node consumer sees the original's 403 error.
    let mut rejected = NodePeer::spawn(
        "consumer.js",
        &["--url".into(), url, "--param".into(), "key=WRONG".into()],
    );
    let error = rejected.expect("error").await;
    assert_eq!(error["message"], "Unexpected server response: 403");
    let _ = rejected.child.kill().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn node_consumer_is_killed_when_it_stops_answering() {
    let provider = local()
        .heartbeat_interval(Duration::from_millis(100))
        .bind()
        .await
        .unwrap();
    let mut events = provider.events();
    let url = format!("ws://127.0.0.1:{}/connect", provider.port());
    let mut node = NodePeer::spawn("consumer.js", &["--url".into(), url]);
    node.expect("ping").await;
    node.command(json!({"stop_pong": true})).await;
    let close = node.expect("close").await;
    assert_eq!(close["code"], 1008);
    let info = next_event(&mut events, |e| match e {
        ProviderEvent::Close(_, info) => Some(info),
        _ => None,
    })
    .await;
    assert_eq!(info.code, 1008);
    provider.shutdown().await;
}

/// Starts the Node provider and returns it with its port.
async fn node_provider(args: &[&str]) -> (NodePeer, u16) {
    let mut all: Vec<String> = vec!["--port".into(), "0".into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let mut node = NodePeer::spawn("provider.js", &all);
    let listening = node.expect("listening").await;
    let port = listening["port"].as_u64().unwrap() as u16;
    (node, port)
}

#[tokio::test]
async fn our_consumer_joins_a_node_provider() {
    let (mut node, port) =
        node_provider(&["--auth", "key=SECRET_KEY", "--heartbeat-ms", "100"]).await;
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("key", "SECRET_KEY")
        .parameter("name", "a b&c/é")
        .reconnect_interval(Duration::from_millis(50))
        .max_attempts(2)
        .build();
    let mut events = consumer.events();
    consumer.connect().await.unwrap();
    let open = node.expect("open").await;
    assert_eq!(open["parameters"]["name"], "a b&c/é");
    let id = open["id"].as_str().unwrap().to_owned();

    consumer.send("hello").unwrap();
    assert_eq!(node.expect("message").await["message"], "hello");
    // Echo is switched on over stdin, which races with the socket: resend until it echoes.
    node.command(json!({"echo": true})).await;
    within("echo", async {
        loop {
            consumer.send("echo me").unwrap();
            let reply = tokio::time::timeout(Duration::from_millis(100), async {
                loop {
                    if let Some(ConsumerEvent::Message(m)) = events.recv().await {
                        return m;
                    }
                }
            });
            if let Ok(m) = reply.await {
                assert_eq!(m, Message::from("echo me"));
                break;
            }
        }
    })
    .await;
    node.command(json!({"echo": false})).await;
    consumer.send(vec![9u8, 8]).unwrap();
    assert_eq!(node.expect("binary").await["hex"], "0908");
    assert_eq!(
        consumer.heartbeat_duration(),
        Some(Duration::from_millis(100))
    );

    // Heartbeats answered across several cycles: no close for our connection.
    let mut last = consumer.last_heartbeat();
    for _ in 0..5 {
        within("heartbeat", async {
            while consumer.last_heartbeat() == last {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        last = consumer.last_heartbeat();
    }
    assert!(consumer.is_connected());

    node.command(json!({"send": "from node", "id": id})).await;
    loop {
        if let ConsumerEvent::Message(m) = within("node message", events.recv()).await.unwrap() {
            if m == Message::from("echo me") || m == Message::from(vec![9u8, 8]) {
                continue; // a late echo from above: echo is switched off over stdin, racing
            }
            assert_eq!(m, Message::from("from node"));
            break;
        }
    }

    // The original provider's destroy: an empty close frame, then FIN. Our consumer
    // reports 1005 and starts reconnecting, then gives up after max_attempts.
    node.command(json!({"destroy": true})).await;
    let mut disconnects = Vec::new();
    loop {
        match within("close", events.recv()).await.unwrap() {
            ConsumerEvent::Disconnect(info) => disconnects.push(info.code),
            ConsumerEvent::Close => break,
            _ => {}
        }
    }
    assert_eq!(disconnects, [1005, 1006, 1006, 1006]);
}

#[tokio::test]
async fn node_provider_rejection_is_fatal_for_our_consumer() {
    let (_node, port) = node_provider(&["--auth", "key=SECRET_KEY"]).await;
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("key", "WRONG")
        .reconnect_interval(Duration::from_millis(10))
        .build();
    let error = within("rejection", consumer.connect()).await.unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Rejected);
    assert!(error.to_string().contains("403"), "{error}");
}

/// A text of `len` bytes that deflate shrinks well, different for each `seed`.
fn compressible(len: usize, seed: usize) -> String {
    format!("{seed}:{}", "price=101.25;qty=7;side=buy;").repeat(len / 30 + 1)[..len].to_owned()
}

#[tokio::test]
async fn node_consumer_negotiates_deflate_and_messages_round_trip() {
    for compressor in [Compressor::Shared, Compressor::Dedicated4Kb] {
        let provider = local().compressor(compressor).bind().await.unwrap();
        let mut events = provider.events();
        let url = format!("ws://127.0.0.1:{}/connect", provider.port());
        let mut node = NodePeer::spawn("consumer.js", &["--url".into(), url]);
        node.expect("open").await;
        assert_eq!(
            node.expect("extensions").await["value"],
            "permessage-deflate",
            "{compressor}"
        );
        let conn = next_open(&mut events).await;
        assert!(conn.is_compressed());
        // Ours compresses everything from 16 bytes; Node's ws from 1024 bytes.
        for (i, len) in [20, 700, 5000, 30_000].into_iter().enumerate() {
            let text = compressible(len, i);
            conn.send(text.as_str()).unwrap();
            assert_eq!(node.expect("message").await["message"], text.as_str());
            node.command(json!({ "send": text })).await;
            let got = next_event(&mut events, |e| match e {
                ProviderEvent::Message(_, m) => Some(m),
                _ => None,
            })
            .await;
            assert_eq!(got, Message::from(text));
        }
        conn.send(&[7u8; 100][..]).unwrap();
        assert_eq!(node.expect("binary").await["hex"], "07".repeat(100));
        // A broadcast reaches the compressed connection too.
        assert_eq!(provider.send_to_all(compressible(300, 9).as_str()), 1);
        assert_eq!(
            node.expect("message").await["message"],
            compressible(300, 9).as_str()
        );
        node.command(json!({"close": true})).await;
        node.expect("close").await;
        provider.shutdown().await;
    }
}

#[tokio::test]
async fn our_consumer_inflates_what_a_compressing_node_provider_sends() {
    let (mut node, port) = node_provider(&["--compress", "1", "--heartbeat-ms", "100"]).await;
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .max_attempts(0)
        .build();
    let mut events = consumer.events();
    consumer.connect().await.unwrap();
    let open = node.expect("open").await;
    assert_eq!(open["extensions"], "permessage-deflate");
    let id = open["id"].as_str().unwrap().to_owned();
    // Node compresses every message (threshold 0), heartbeats included.
    for (i, len) in [1, 100, 5000, 30_000].into_iter().enumerate() {
        let text = compressible(len, i);
        node.command(json!({"send": text, "id": id})).await;
        let got = within("node message", async {
            loop {
                if let Some(ConsumerEvent::Message(m)) = events.recv().await {
                    return m;
                }
            }
        })
        .await;
        assert_eq!(got, Message::from(text.clone()));
        consumer.send(text.as_str()).unwrap();
        assert_eq!(node.expect("message").await["message"], text.as_str());
    }
    // Compressed PINGs answered: the heartbeat keeps the connection across cycles.
    let mut last = consumer.last_heartbeat();
    for _ in 0..3 {
        within("heartbeat", async {
            while consumer.last_heartbeat() == last {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        last = consumer.last_heartbeat();
    }
    assert!(consumer.is_connected());
    consumer.shutdown().await;
}
