//! What `cluster` writes to stderr, as an operator's log file sees it: a flood of refused
//! upgrades is one line (not one per refusal), without colour escapes when stderr is not
//! a terminal; and the consumer's reconnect flags.

// Only `cluster()` is used here.
#[allow(dead_code)]
mod common;

use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);
const REFUSALS: usize = 2_000;

/// The `cluster` binary with nothing on stdin.
fn cluster() -> Command {
    let mut cmd = common::cluster();
    cmd.stdin(Stdio::null());
    cmd
}

/// One upgrade with the wrong key; returns the status line of the answer.
async fn wrong_key(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET /connect?key=WRONG HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_flood_of_refused_upgrades_is_one_log_line_without_colour() {
    let mut provider = cluster()
        .args(["provider", "--port", "0", "--auth", "key=SECRET", "--json"])
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(provider.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(WAIT, async {
        loop {
            let line = stdout.next_line().await.unwrap().expect("provider ended");
            let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if event["event"] == "listening" {
                return event["port"].as_u64().unwrap() as u16;
            }
        }
    })
    .await
    .expect("listening");
    let mut stderr = provider.stderr.take().unwrap();

    // 2,000 wrong keys, 50 at a time: every one answered 403.
    for _ in 0..REFUSALS / 50 {
        let answers = futures_join(port, 50).await;
        assert!(
            answers.iter().all(|a| a.starts_with("HTTP/1.1 403")),
            "{answers:?}"
        );
    }

    // SIGTERM: the provider reports what it counted as it shuts down.
    let pid = provider.id().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, provider.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    stderr.read_to_string(&mut log).await.unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "colour escapes in a log file:\n{log}"
    );
    let refusal_lines: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(refusal_lines.len(), 1, "one line for the flood:\n{log}");
    assert!(
        refusal_lines[0].contains("2,000 upgrades refused in the last 10 s"),
        "{}",
        refusal_lines[0]
    );
    assert!(
        log.len() < 1_000,
        "{} bytes of log for the flood:\n{log}",
        log.len()
    );
}

/// `n` wrong-key upgrades at once.
async fn futures_join(port: u16, n: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(wrong_key(port))).collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(tokio::time::timeout(WAIT, task).await.unwrap().unwrap());
    }
    answers
}

/// A port nobody listens on: bind, note it, close.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn the_consumer_takes_a_backoff_policy() {
    // Exponential: 3 retries wait at most 100 + 200 + 400 ms, then the consumer gives up.
    let started = Instant::now();
    let output = tokio::time::timeout(
        WAIT,
        cluster()
            .args([
                "consumer",
                "--host",
                "127.0.0.1",
                "--port",
                &closed_port().to_string(),
                "--backoff",
                "exponential",
                "--reconnect-interval-ms",
                "100",
                "--max-reconnect-interval-ms",
                "1000",
                "--max-attempts",
                "3",
            ])
            .output(),
    )
    .await
    .expect("gave up")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("4 attempts"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let output = cluster()
        .args([
            "consumer",
            "--host",
            "h",
            "--port",
            "1",
            "--backoff",
            "random",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("fixed") && stderr.contains("exponential"),
        "{stderr}"
    );
}
