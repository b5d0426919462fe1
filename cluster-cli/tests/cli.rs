//! The `cluster` binary as other tools drive it: JSON event lines, echo, stdin to
//! messages, 403 failing at once, TLS, and the benchmark's smoke run.

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

/// A self-signed certificate for 127.0.0.1 and its key, encrypted with `passphrase`
/// (PKCS#8, PBES2), in a fresh directory.
fn tls_files(passphrase: &str) -> std::path::PathBuf {
    use pkcs8::der::pem::LineEnding;
    let dir = std::env::temp_dir().join(format!("cluster-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let der = cert.key_pair.serialize_der();
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"salt", &[1; 16]).unwrap();
    let encrypted = pkcs8::PrivateKeyInfo::try_from(der.as_slice())
        .unwrap()
        .encrypt_with_params(params, passphrase)
        .unwrap()
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), encrypted.as_bytes()).unwrap();
    dir
}

#[tokio::test]
async fn tls_provider_and_consumer_talk() {
    let dir = tls_files("cli passphrase");
    let cert = dir.join("cert.pem");
    let (mut provider, mut plines) = spawn(
        cluster()
            .args(["provider", "--port", "0", "--echo", "--json"])
            .args(["--compressor", "dedicated-4kb", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(dir.join("key.pem"))
            .env("CLUSTER_TLS_PASSPHRASE", "cli passphrase"),
    );
    let listening = next_json(&mut plines, "listening").await;
    assert_eq!(listening["tls"], true);
    assert_eq!(listening["compressor"], "dedicated-4kb");
    let port = listening["port"].as_u64().unwrap().to_string();

    let (mut consumer, mut clines) = spawn(
        cluster()
            .args([
                "consumer",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--json",
                "--ca",
            ])
            .arg(&cert),
    );
    next_json(&mut clines, "open").await;
    assert_eq!(next_json(&mut plines, "open").await["compressed"], true);
    let stdin = consumer.stdin.as_mut().unwrap();
    let text = "over tls, compressed, over tls, compressed";
    stdin
        .write_all(format!("{text}\n").as_bytes())
        .await
        .unwrap();
    let echoed = next_json(&mut clines, "message").await;
    assert_eq!(echoed["message"], text);
    drop(consumer.stdin.take());
    let status = tokio::time::timeout(WAIT, consumer.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");

    // Without the CA, the consumer refuses the self-signed certificate at once.
    let output = tokio::time::timeout(
        WAIT,
        cluster()
            .args(["consumer", "--host", "127.0.0.1", "--port", &port, "--ssl"])
            .output(),
    )
    .await
    .expect("a refused certificate is not retried")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls error"), "{stderr}");

    // A wrong passphrase: the provider does not start, and says why without the secret.
    let output = tokio::time::timeout(
        WAIT,
        cluster()
            .args(["provider", "--port", "0", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(dir.join("key.pem"))
            .args(["--tls-passphrase", "not it"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    assert!(!stderr.contains("not it"), "{stderr}");

    // An unknown compressor preset is refused with the list of presets.
    let output = tokio::time::timeout(
        WAIT,
        cluster()
            .args(["provider", "--port", "0", "--compressor", "zstd"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dedicated-4kb"), "{stderr}");

    provider.start_kill().unwrap();
    let _ = provider.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
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
    // W4, W5 and W7 run on our typed layer only: no baseline rows.
    for (workload, cases) in [
        ("W4", &["W4 rpc in-flight 1", "W4 rpc 64 in flight"][..]),
        ("W5", &["W5 jobs 8x16 credits"][..]),
        ("W7", &["W7 pub/sub"][..]),
    ] {
        for case in cases {
            let row = rows
                .iter()
                .find(|r| r["case"] == *case && r["system"] == "network-cluster")
                .unwrap_or_else(|| panic!("no {case} row: {stdout}"));
            assert_eq!(row["workload"], workload, "{row}");
            assert!(row["median_rate"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
            assert!(row.get("error").is_none(), "{row}");
        }
        assert!(
            !rows
                .iter()
                .any(|r| r["workload"] == workload && r["system"] == "baseline"),
            "{stdout}"
        );
    }
    let latency = rows
        .iter()
        .find(|r| r["case"] == "W4 rpc in-flight 1")
        .unwrap();
    assert!(latency["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{latency}");
    // W1 and W6 over TLS and with permessage-deflate: ours only, each a row of its own.
    for (case, tls, compressor) in [
        ("W1 ingest C=16 (our consumer)", false, None),
        ("W1 ingest C=16 tls", true, None),
        ("W1 ingest C=16 deflate", false, Some("shared")),
        ("W1 ingest C=16 tls+deflate", true, Some("shared")),
        ("W6 idle x500 tls", true, None),
        ("W6 idle x500 deflate", false, Some("shared")),
        (
            "W6 idle x500 deflate dedicated-4kb",
            false,
            Some("dedicated-4kb"),
        ),
    ] {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["case"] == case).collect();
        assert_eq!(mine.len(), 1, "{case}: {stdout}");
        let row = mine[0];
        assert_eq!(row["system"], "network-cluster", "{row}");
        assert!(row.get("error").is_none(), "{row}");
        assert_eq!(row["tls"].as_bool().unwrap_or(false), tls, "{row}");
        assert_eq!(row["compressor"].as_str(), compressor, "{row}");
        assert!(
            row["median_rate"].as_f64().unwrap_or(0.0) > 0.0
                || row["kb_per_conn"].as_f64().unwrap_or(0.0) > 0.0,
            "{row}"
        );
        if case.starts_with("W1") && compressor.is_some() {
            assert_eq!(row["payload_bytes"], 64, "{row}");
            let ratio = row["compression_ratio"].as_f64().unwrap_or(0.0);
            assert!(ratio > 0.0 && ratio < 1.0, "{row}");
        }
    }
    // The plain rows stay as they were: no TLS or compression fields.
    let plain = rows
        .iter()
        .find(|r| r["case"] == "W1 ingest C=16" && r["system"] == "network-cluster")
        .unwrap();
    assert!(
        plain.get("tls").is_none() && plain.get("compressor").is_none(),
        "{plain}"
    );
}

#[tokio::test]
async fn pub_sub_and_jobs_stats_against_a_running_provider() {
    let (_provider, mut plines) = spawn(cluster().args(["provider", "--port", "0", "--json"]));
    let port = next_json(&mut plines, "listening").await["port"]
        .as_u64()
        .unwrap()
        .to_string();
    let (_sub, mut slines) = spawn(cluster().args(["sub", "--port", &port, "orders.>", "--json"]));
    next_json(&mut slines, "subscribed").await;
    // The subscription travels to the hub asynchronously: publish until it arrives.
    let received = tokio::time::timeout(WAIT, async {
        loop {
            let status = cluster()
                .args(["pub", "--port", &port, "orders.eu.created", r#"{"id":1}"#])
                .status()
                .await
                .unwrap();
            assert!(status.success());
            let next = tokio::time::timeout(Duration::from_millis(500), slines.next_line()).await;
            if let Ok(Ok(Some(line))) = next {
                return serde_json::from_str::<Value>(&line).unwrap();
            }
        }
    })
    .await
    .expect("a publication reaches the subscriber");
    assert_eq!(received["subject"], "orders.eu.created");
    assert_eq!(received["message"]["id"], 1);

    let output = cluster()
        .args(["jobs", "stats", "--port", &port, "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats["completed"], 0);
    assert!(stats["workers"].as_array().unwrap().is_empty());
}
