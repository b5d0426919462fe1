//! The `cluster` binary as other tools drive it: JSON event lines, echo, stdin to
//! messages, 403 failing at once, TLS, failover between providers killed -9, and the
//! benchmark's smoke run through the `cluster-bench` executable it forwards to.

mod common;

use common::{cluster, next_json, spawn, WAIT};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

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

/// A websocket upgrade request for `/connect`, with `padding` bytes in one extra header.
fn upgrade_request(padding: usize) -> String {
    format!(
        "GET /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(padding)
    )
}

/// Sends an upgrade request on a new connection; returns it once the whole response head
/// has been read, with that head.
async fn upgrade(port: &str, padding: usize) -> (tokio::net::TcpStream, String) {
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    stream
        .write_all(upgrade_request(padding).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads up to the end of an HTTP response head (or of the stream).
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn provider_limit_flags_reach_the_provider() {
    use tokio::io::AsyncReadExt;
    // Each limit set far below its default, so that the default would fail the test.
    let (mut provider, mut plines) = spawn(cluster().args([
        "provider",
        "--port",
        "0",
        "--json",
        "--handshake-timeout-ms",
        "200",
        "--max-handshake-bytes",
        "1024",
        "--max-connections",
        "2",
        "--close-timeout-ms",
        "300",
    ]));
    let port = next_json(&mut plines, "listening").await["port"]
        .as_u64()
        .unwrap()
        .to_string();

    // A slowloris client that never finishes its request is cut at 200 ms (default 10 s).
    let mut slow = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    slow.write_all(b"GET /connect HTTP/1.1\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest))
        .await
        .expect("the handshake time limit cuts a slow request")
        .ok();

    // A request over 1024 bytes gets 431 (default limit: 8192).
    let (_big, head) = upgrade(&port, 2000).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    // Two connections are open; a third waits until one of them closes.
    let (first, head) = upgrade(&port, 0).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_second, head) = upgrade(&port, 0).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut third = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    third
        .write_all(upgrade_request(0).as_bytes())
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte))
            .await
            .is_err(),
        "a third connection was served while two were open"
    );
    drop(first);
    let head = tokio::time::timeout(WAIT, read_head(&mut third))
        .await
        .expect("the third connection is served once the first closed");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // Shutdown waits 300 ms (default 5 s) for consumers that never answer the close.
    let pid = provider.id().unwrap();
    Command::new("kill")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(4), provider.wait())
        .await
        .expect("shutdown within the close timeout")
        .unwrap();
    assert!(status.success(), "{status:?}");
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

/// `cluster bench` runs the `cluster-bench` executable next to `cluster`. A workspace test
/// run (`cargo nextest run --workspace`) builds it there; alone, `cargo build -p
/// cluster-bench` does.
fn assert_bench_is_built() {
    let cluster = std::path::Path::new(env!("CARGO_BIN_EXE_cluster"));
    let bench = cluster.with_file_name(format!("cluster-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bench.is_file(),
        "{} is missing: run `cargo build -p cluster-bench` first",
        bench.display()
    );
}

#[tokio::test]
async fn bench_without_cluster_bench_says_how_to_build_it() {
    // A copy of `cluster` alone in a directory, with nothing on PATH.
    let dir = std::env::temp_dir().join(format!("cluster-cli-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("cluster");
    std::fs::copy(env!("CARGO_BIN_EXE_cluster"), &alone).unwrap();
    let output = tokio::time::timeout(
        WAIT,
        Command::new(&alone)
            .args(["bench", "--quick"])
            .env("PATH", &dir)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`cluster-bench` was not found")
            && stderr.contains("cargo build --release -p cluster-bench"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bench_help_is_the_bench_s_own() {
    assert_bench_is_built();
    let output = cluster()
        .args(["bench", "--help"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("--workloads") && stdout.contains("--quick"),
        "{stdout}"
    );
}

#[tokio::test]
async fn soak_phases_report_json_and_fail_by_criterion() {
    assert_bench_is_built();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        cluster()
            .args([
                "soak",
                "--quick",
                "--json",
                "--phases",
                "handshake-flood,garbage",
            ])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let phases: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let names: Vec<&str> = phases.iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(names, ["handshake-flood", "garbage"], "{stdout}\n{stderr}");
    for phase in &phases {
        let usage = &phase["usage"];
        for at in ["baseline", "before", "peak", "after"] {
            assert!(usage[at]["rss_kib"].as_u64().unwrap_or(0) > 0, "{phase}");
            assert!(usage[at]["fds"].as_u64().unwrap_or(0) > 0, "{phase}");
        }
        assert!(
            phase["healthy"]["round_trips"].as_u64().unwrap_or(0) > 0,
            "{phase}"
        );
        // The phase's own checks hold against our provider.
        let checks = phase["checks"].as_array().unwrap();
        assert!(!checks.is_empty(), "{phase}");
        for check in checks {
            assert_eq!(check["ok"], true, "{check}");
        }
    }
    // The exit status follows the criteria, and a failure names its phase and criterion.
    let failed: Vec<&Value> = phases
        .iter()
        .filter(|p| !p["failed"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(output.status.success(), failed.is_empty(), "{stderr}");
    for phase in failed {
        let name = phase["phase"].as_str().unwrap();
        let first = phase["failed"][0].as_str().unwrap();
        assert!(
            stderr.contains(&format!("{name} ({first}")),
            "{name}: {first}\n{stderr}"
        );
    }
    // The table for people goes to stderr with --json.
    assert!(stderr.contains("| handshake-flood"), "{stderr}");
}

#[tokio::test]
async fn bench_quick_prints_json_for_every_workload() {
    assert_bench_is_built();
    let output = tokio::time::timeout(
        Duration::from_secs(240),
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
    for workload in ["W1", "W2", "W3", "W6", "W6s"] {
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
            assert!(row["setup"].is_null(), "{row}");
        }
    }
    // W6s: memory per connection after the heartbeat cycles, both systems.
    let steady = rows
        .iter()
        .find(|r| r["case"] == "W6s idle x500 after 3 heartbeats" && r["system"] == "baseline")
        .unwrap_or_else(|| panic!("no W6s baseline row: {stdout}"));
    assert!(
        steady["kb_per_conn"].as_f64().unwrap_or(0.0) > 0.0,
        "{steady}"
    );
    // W5d: ours only, tuned, with what the durable store wrote.
    let durable = rows
        .iter()
        .find(|r| r["case"] == "W5d jobs 8x16 credits durable")
        .unwrap_or_else(|| panic!("no W5d row: {stdout}"));
    assert_eq!(durable["system"], "network-cluster", "{durable}");
    assert!(
        durable["bytes_per_job"].as_f64().unwrap_or(0.0) > 0.0,
        "{durable}"
    );
    // W4, W5 and W7 run on our typed layer in both setups; only W5 has a baseline, the
    // bare credit dispatcher.
    for (workload, cases) in [
        ("W4", &["W4 rpc in-flight 1", "W4 rpc 64 in flight"][..]),
        ("W5", &["W5 jobs 8x16 credits"][..]),
        ("W7", &["W7 pub/sub"][..]),
    ] {
        for (setup, suffix) in [("tuned", ""), ("default", " (default setup)")] {
            for case in cases {
                let case = format!("{case}{suffix}");
                let systems: &[&str] = if workload == "W5" {
                    &["network-cluster", "baseline"]
                } else {
                    &["network-cluster"]
                };
                for system in systems {
                    let row = rows
                        .iter()
                        .find(|r| r["case"] == case.as_str() && r["system"] == *system)
                        .unwrap_or_else(|| panic!("no {case} row for {system}: {stdout}"));
                    assert_eq!(row["workload"], workload, "{row}");
                    assert_eq!(row["setup"], setup, "{row}");
                    assert!(row["median_rate"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
                    assert!(row.get("error").is_none(), "{row}");
                }
            }
        }
        if workload != "W5" {
            assert!(
                !rows
                    .iter()
                    .any(|r| r["workload"] == workload && r["system"] == "baseline"),
                "{stdout}"
            );
        }
    }
    // W5d: the durable store's fsyncs and bytes written per job; W5 in memory has none.
    let durable = rows
        .iter()
        .find(|r| r["case"] == "W5d jobs 8x16 credits durable")
        .unwrap();
    assert!(
        durable["fsyncs_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{durable}"
    );
    assert!(
        durable["bytes_per_job"].as_f64().unwrap_or(0.0) > 50.0,
        "{durable}"
    );
    let memory = rows
        .iter()
        .find(|r| r["case"] == "W5 jobs 8x16 credits")
        .unwrap();
    assert!(memory["fsyncs_per_sec"].is_null(), "{memory}");
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
    // Subscribed means the hub has it: one publication is enough.
    next_json(&mut slines, "subscribed").await;
    let status = cluster()
        .args(["pub", "--port", &port, "orders.eu.created", r#"{"id":1}"#])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let line = tokio::time::timeout(WAIT, slines.next_line())
        .await
        .expect("a publication reaches the subscriber")
        .unwrap()
        .expect("sub ended");
    let received: Value = serde_json::from_str(&line).unwrap();
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

/// Raw `GET path` with an optional bearer token; the whole answer.
async fn http_get(port: u64, path: &str, token: Option<&str>) -> String {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
        .await
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer
}

/// `cluster provider --metrics --admin-token`: /metrics behind its token, and `cluster
/// top` reads the admin feed and renders a frame with the connection in it.
#[tokio::test]
async fn metrics_and_top_against_a_provider() {
    let (_provider, mut plines) = spawn(
        cluster()
            .args(["provider", "--port", "0", "--json", "--metrics"])
            .env("CLUSTER_METRICS_TOKEN", "scrape-me")
            .env("CLUSTER_ADMIN_TOKEN", "top-secret"),
    );
    let listening = next_json(&mut plines, "listening").await;
    assert_eq!(
        (listening["metrics"].as_bool(), listening["admin"].as_bool()),
        (Some(true), Some(true))
    );
    let port = listening["port"].as_u64().unwrap();

    let refused = http_get(port, "/metrics", None).await;
    assert!(refused.starts_with("HTTP/1.1 401 "), "{refused}");
    let metrics = http_get(port, "/metrics", Some("scrape-me")).await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains("# TYPE cluster_connections gauge"),
        "{metrics}"
    );

    let (_consumer, mut clines) = spawn(cluster().args([
        "consumer",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--param",
        "name=seen-by-top",
        "--json",
    ]));
    next_json(&mut clines, "open").await;
    next_json(&mut plines, "open").await;
    let output = tokio::time::timeout(
        WAIT,
        cluster()
            .args(["top", "--port", &port.to_string(), "--once", "120x24"])
            .env("CLUSTER_ADMIN_TOKEN", "top-secret")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{screen}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "1 connections",
        "name=seen-by-top",
        "jobs: waiting 0",
        "messages in",
    ] {
        assert!(
            screen.contains(expected),
            "{expected:?} missing from\n{screen}"
        );
    }
    let wrong = cluster()
        .args([
            "top",
            "--port",
            &port.to_string(),
            "--token",
            "nope",
            "--once",
            "120x24",
        ])
        .output()
        .await
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("refused the token"));
}

#[tokio::test]
async fn the_provider_echoes_a_plain_consumers_binary_and_closes_a_members_garbage() {
    use cluster_transport::{Consumer, ConsumerEvent, Message};
    let (_provider, mut plines) =
        spawn(cluster().args(["provider", "--port", "0", "--echo", "--json"]));
    let port = next_json(&mut plines, "listening").await["port"]
        .as_u64()
        .unwrap();
    let port = u16::try_from(port).unwrap();
    // A plain consumer: its binary message is printed and echoed, like text.
    let plain = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .connect()
        .await
        .unwrap();
    let mut events = plain.events();
    plain.send(vec![1u8, 2, 3]).unwrap();
    let printed = next_json(&mut plines, "message").await;
    assert_eq!(printed["binary"], "010203");
    let echoed = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("consumer events") {
                ConsumerEvent::Message(m @ Message::Binary(_)) => return m,
                ConsumerEvent::Disconnect(info) => panic!("closed: {info:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the echo");
    assert_eq!(echoed, Message::from(vec![1u8, 2, 3]));
    // A member (it named its codec at the upgrade) sending garbage is closed, 1003/1007.
    let member = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("codec", "msgpack")
        .max_attempts(1)
        .connect()
        .await
        .unwrap();
    let mut events = member.events();
    member.send(vec![9u8, 1, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            if let ConsumerEvent::Disconnect(info) = events.recv().await.expect("events") {
                return info.code;
            }
        }
    })
    .await
    .expect("the member closed");
    assert_eq!(code, 1003);
    plain.shutdown().await;
    member.destroy();
}
/// A job no worker runs: it waits.
#[derive(serde::Serialize, serde::Deserialize)]
struct Parked(u32);

impl cluster_rpc::Job for Parked {
    const NAME: &'static str = "parked";
    type Output = ();
}

/// A job whose worker always fails.
#[derive(serde::Serialize, serde::Deserialize)]
struct Doomed;

impl cluster_rpc::Job for Doomed {
    const NAME: &'static str = "doomed";
    type Output = ();
}

/// `cluster jobs ARGS --port PORT`: its stdout, or its stderr as the error.
async fn jobs(port: &str, args: &[&str]) -> Result<String, String> {
    let output = cluster()
        .arg("jobs")
        .args(args)
        .args(["--port", port])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The ids of the waiting jobs, in their order, as `cluster jobs list` shows them.
async fn waiting_ids(port: &str) -> Vec<String> {
    let listed = jobs(
        port,
        &["list", "--state", "waiting", "--token", "sesame", "--json"],
    )
    .await
    .unwrap();
    json_lines(&listed)
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Starts `cluster provider` keeping its jobs in `dir`, with a jobs admin token.
async fn durable_provider(dir: &std::path::Path, port: &str) -> (Child, String) {
    let (child, mut lines) = spawn(cluster().args([
        "provider",
        "--port",
        port,
        "--json",
        "--data-dir",
        &dir.display().to_string(),
        "--jobs-admin-token",
        "sesame",
    ]));
    let port = next_json(&mut lines, "listening").await["port"]
        .as_u64()
        .unwrap()
        .to_string();
    (child, port)
}

#[tokio::test]
async fn jobs_operations_against_a_running_provider_and_after_its_restart() {
    use cluster_rpc::{JobOptions, Member};
    use cluster_transport::Consumer;
    let dir = tempfile::tempdir().unwrap();
    let (mut provider, port) = durable_provider(dir.path(), "0").await;
    let consumer = || {
        Consumer::builder()
            .host("127.0.0.1")
            .port(port.parse().unwrap())
    };
    let worker = Member::builder(consumer())
        .worker(|_: Doomed, _| async { Err::<(), _>("the disk is on fire") })
        .connect()
        .await
        .unwrap();
    let submitter = Member::builder(consumer()).connect().await.unwrap();
    let doomed = submitter
        .jobs()
        .submit_with(&Doomed, JobOptions::default().max_attempts(1))
        .await
        .unwrap();
    let dead_id = uuid::Uuid::from_u128(doomed.id()).to_string();
    assert!(tokio::time::timeout(WAIT, doomed).await.unwrap().is_err());
    let mut parked = Vec::new();
    for i in 0..3 {
        let handle = submitter.jobs().submit(&Parked(i)).await.unwrap();
        parked.push(uuid::Uuid::from_u128(handle.id()).to_string());
    }
    let token = ["--token", "sesame", "--json"];

    // Operator calls need the token.
    let refused = jobs(&port, &["list"]).await.unwrap_err();
    assert!(
        refused.contains("forbidden") && refused.contains("jobs_admin"),
        "{refused}"
    );

    let dead = json_lines(
        &jobs(&port, &[&["dead"][..], &token].concat())
            .await
            .unwrap(),
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], dead_id.as_str());
    assert_eq!(dead[0]["state"], "dead");
    assert_eq!(dead[0]["last_error"], "the disk is on fire");

    let shown = json_lines(
        &jobs(&port, &[&["show", &dead_id][..], &token].concat())
            .await
            .unwrap(),
    );
    let history = shown[0]["history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["error"], "the disk is on fire");
    assert!(history[0]["ended_at"].as_u64().unwrap() >= history[0]["started_at"].as_u64().unwrap());
    let table = jobs(&port, &["show", &dead_id, "--token", "sesame"])
        .await
        .unwrap();
    assert!(
        table.contains("attempt 1 on") && table.contains("the disk is on fire"),
        "{table}"
    );

    assert_eq!(waiting_ids(&port).await, parked);

    jobs(&port, &["cancel", &parked[0], "--token", "sesame"])
        .await
        .unwrap();
    let again = jobs(&port, &["cancel", &parked[0], "--token", "sesame"])
        .await
        .unwrap_err();
    assert!(
        again.contains("no waiting, delayed or running job"),
        "{again}"
    );

    // Requeued, it fails again (the worker still does) and is dead again.
    jobs(&port, &["requeue", &dead_id, "--token", "sesame"])
        .await
        .unwrap();
    let died_again = tokio::time::timeout(WAIT, async {
        loop {
            let dead = jobs(&port, &[&["dead"][..], &token].concat())
                .await
                .unwrap();
            if let Some(job) = json_lines(&dead)
                .into_iter()
                .find(|j| j["history"].as_array().unwrap().len() >= 2)
            {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the requeued job ran and died again");
    // What the listing shows is the hub's memory; its journal keeps changes in order, so
    // a submission acknowledged (durable) after the second death makes that durable too,
    // and kill -9 may come at once.
    let last = submitter.jobs().submit(&Parked(3)).await.unwrap();
    parked.push(uuid::Uuid::from_u128(last.id()).to_string());
    worker.shutdown().await;
    submitter.shutdown().await;

    // kill -9, then a restart on the same directory: the jobs are still there.
    provider.kill().await.unwrap();
    let (_provider, port) = durable_provider(dir.path(), &port).await;
    assert_eq!(waiting_ids(&port).await, parked[1..]);
    let dead = json_lines(
        &jobs(&port, &[&["dead"][..], &token].concat())
            .await
            .unwrap(),
    );
    assert_eq!(dead[0]["id"], dead_id.as_str());
    let stats: Value =
        serde_json::from_str(&jobs(&port, &["stats", "--json"]).await.unwrap()).unwrap();
    assert_eq!(
        (stats["waiting"].as_u64(), stats["dead"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(dead[0]["history"], died_again["history"]);
}

/// A `cluster provider --json` on a free port, and its `host:port`.
async fn provider_at_free_port() -> (Child, Lines<BufReader<ChildStdout>>, String) {
    let (child, mut lines) = spawn(cluster().args(["provider", "--port", "0", "--json"]));
    let port = next_json(&mut lines, "listening").await["port"]
        .as_u64()
        .unwrap();
    (child, lines, format!("127.0.0.1:{port}"))
}

/// Failover with real processes: a `cluster consumer` given two `cluster provider`s moves
/// to the second when the first is killed with -9, and the lines it read meanwhile arrive
/// there once each, in order, none lost.
#[tokio::test]
async fn a_consumer_fails_over_when_its_provider_is_killed_9() {
    let (mut first, mut first_lines, first_addr) = provider_at_free_port().await;
    let (_second, mut second_lines, second_addr) = provider_at_free_port().await;
    let (mut consumer, mut consumer_lines) = spawn(cluster().args([
        "consumer",
        "--host",
        &first_addr,
        "--host",
        &second_addr,
        // Long enough that the lines below are read while the consumer waits to
        // reconnect: they go into the buffer.
        "--reconnect-interval-ms",
        "500",
        "--buffer-messages",
        "1000",
        "--buffer-bytes",
        "65536",
        "--json",
    ]));
    let open = next_json(&mut consumer_lines, "open").await;
    assert_eq!(open["host"], first_addr.as_str());
    let stdin = consumer.stdin.as_mut().unwrap();
    stdin.write_all(b"before\n").await.unwrap();
    assert_eq!(
        next_json(&mut first_lines, "message").await["message"],
        "before"
    );

    first.start_kill().unwrap();
    first.wait().await.unwrap();
    next_json(&mut consumer_lines, "disconnect").await;
    let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
    stdin
        .write_all(format!("{}\n", lines.join("\n")).as_bytes())
        .await
        .unwrap();

    let open = next_json(&mut consumer_lines, "open").await;
    assert_eq!(open["host"], second_addr.as_str());
    for line in &lines {
        assert_eq!(
            next_json(&mut second_lines, "message").await["message"],
            line.as_str()
        );
    }
    // The consumer goes on on the second provider.
    stdin.write_all(b"after\n").await.unwrap();
    assert_eq!(
        next_json(&mut second_lines, "message").await["message"],
        "after"
    );
}
