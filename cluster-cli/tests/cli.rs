//! The `cluster` binary as other tools drive it: JSON event lines, echo, stdin to
//! messages, 403 failing at once, and the benchmark's smoke run.

use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const WAIT: Duration = Duration::from_secs(20);

fn cluster() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cluster"));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>, event: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("process ended");
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["event"] == event {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {event} event"))
}

fn spawn(cmd: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd.spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[tokio::test]
async fn provider_and_consumer_talk_in_json() {
    let (mut provider, mut plines) = spawn(cluster().args([
        "provider",
        "--port",
        "0",
        "--auth",
        "key=SECRET",
        "--echo",
        "--json",
    ]));
    let port = next_json(&mut plines, "listening").await["port"]
        .as_u64()
        .unwrap();

    let (mut consumer, mut clines) = spawn(cluster().args([
        "consumer",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--param",
        "key=SECRET",
        "--param",
        "role=a b",
        "--json",
    ]));
    next_json(&mut clines, "open").await;
    let open = next_json(&mut plines, "open").await;
    assert_eq!(open["parameters"]["role"], "a b");
    assert_eq!(open["ip"], "127.0.0.1");
    let id = open["id"].as_str().unwrap().to_owned();

    let stdin = consumer.stdin.as_mut().unwrap();
    stdin.write_all(b"hello there\n").await.unwrap();
    let message = next_json(&mut plines, "message").await;
    assert_eq!(message["message"], "hello there");
    assert_eq!(message["id"], id.as_str());
    let echoed = next_json(&mut clines, "message").await;
    assert_eq!(echoed["message"], "hello there");

    // Closing stdin ends the consumer; the provider sees a normal close.
    drop(consumer.stdin.take());
    let close = next_json(&mut plines, "close").await;
    assert_eq!(close["id"], id.as_str());
    assert_eq!(close["code"], 1000);
    let status = tokio::time::timeout(WAIT, consumer.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // SIGTERM: graceful shutdown, exit 0.
    let pid = provider.id().unwrap();
    Command::new("kill")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, provider.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn rejected_consumer_exits_at_once_naming_the_403() {
    let (_provider, mut plines) =
        spawn(cluster().args(["provider", "--port", "0", "--auth", "key=SECRET", "--json"]));
    let port = next_json(&mut plines, "listening").await["port"]
        .as_u64()
        .unwrap();
    let output = tokio::time::timeout(
        WAIT,
        cluster()
            .args([
                "consumer",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--param",
                "key=WRONG",
                "--reconnect-interval-ms",
                "60000",
            ])
            .output(),
    )
    .await
    .expect("a rejected consumer exits at once, without retrying")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("403"), "{stderr}");
}

#[tokio::test]
async fn bench_quick_prints_json_for_every_workload() {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        cluster()
            .args(["bench", "--quick", "--json"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for workload in ["W1", "W2", "W3", "W6"] {
        for system in ["network-cluster", "baseline"] {
            let row = rows
                .iter()
                .find(|r| r["workload"] == workload && r["system"] == system)
                .unwrap_or_else(|| panic!("no {workload} row for {system}: {stdout}"));
            assert!(
                row["median_rate"].as_f64().unwrap_or(0.0) > 0.0
                    || row["kb_per_conn"].as_f64().unwrap_or(0.0) > 0.0,
                "{row}"
            );
        }
    }
}
