//! `cluster provider --nats`: two provider processes as hubs of one cluster on a real
//! `nats-server` (skipped loudly without one, failed under `CI=true`).

#[path = "../../tests/common/nats.rs"]
#[allow(dead_code, unreachable_pub)]
mod nats;

mod common;

use cluster_rpc::{Job, JobContext, Member};
use common::{next_json, spawn, WAIT};
use nats::NatsServer;
use serde_json::Value;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::process::{Child, Command};

/// The `cluster` binary, its log not read (hubs log on their own).
fn cluster() -> Command {
    let mut cmd = common::cluster();
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// A provider process in the cluster on `nats`, with `more` arguments; its port.
async fn hub_with(nats: &NatsServer, name: &str, more: &[&str]) -> (Child, String) {
    let url = nats.url();
    let mut cmd = cluster();
    cmd.args(["provider", "--port", "0", "--json", "--nats", &url])
        .args(["--hub-name", name])
        .args(more);
    let (child, mut lines) = spawn(&mut cmd);
    let listening = next_json(&mut lines, "listening").await;
    assert_eq!(listening["hub"], name);
    assert_eq!(listening["nats"], url.as_str());
    let jobs = if more.contains(&"--local-jobs") {
        "local"
    } else {
        "jetstream"
    };
    assert_eq!(listening["jobs"], jobs);
    (child, listening["port"].as_u64().unwrap().to_string())
}

async fn hub(nats: &NatsServer, name: &str) -> (Child, String) {
    hub_with(nats, name, &[]).await
}

#[tokio::test]
async fn providers_with_nats_are_one_cluster() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (_a, port_a) = hub(&nats, "a").await;
    let (_b, port_b) = hub(&nats, "b").await;
    let (_sub, mut lines) = spawn(cluster().args(["sub", "--port", &port_a, "orders.>", "--json"]));
    // Subscribed means hub a has it, and NATS has hub a's interest.
    next_json(&mut lines, "subscribed").await;
    let status = cluster()
        .args(["pub", "--port", &port_b, "orders.eu.created", r#"{"id":7}"#])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the publication at hub b reaches the subscriber on hub a")
        .unwrap()
        .expect("sub ended");
    let received: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(received["subject"], "orders.eu.created");
    assert_eq!(received["message"]["id"], 7);
}

/// Runs a provider with `args` that must exit with an error; its stderr.
async fn refused(args: &[&std::ffi::OsStr]) -> String {
    let output = cluster()
        .args(["provider", "--port", "0"])
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_provider_that_cannot_reach_nats_exits_saying_so() {
    let stderr = refused(&["--nats".as_ref(), "nats://127.0.0.1:1".as_ref()]).await;
    assert!(stderr.contains("NATS"), "{stderr}");
}

/// Doubles a number (the job of the test below).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Double(u64);

impl Job for Double {
    const NAME: &'static str = "double";
    type Output = u64;
}

fn member_of(port: &str) -> cluster_rpc::MemberBuilder {
    let consumer = cluster_transport::Consumer::builder()
        .host("127.0.0.1")
        .port(port.parse().unwrap());
    Member::builder(consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_on_one_provider_run_on_a_worker_of_another() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (_a, port_a) = hub_with(&nats, "a", &["--jobs-ack-wait-ms", "2000"]).await;
    let (_b, port_b) = hub_with(&nats, "b", &["--jobs-replicas", "1"]).await;
    // The only worker is on hub b.
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    let _worker = member_of(&port_b)
        .worker(move |job: Double, _ctx: JobContext| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::convert::Infallible>(job.0 * 2) }
        })
        .connect()
        .await
        .unwrap();
    let submitter = member_of(&port_a).connect().await.unwrap();
    for i in 0..20u64 {
        let handle = submitter.jobs().submit(&Double(i)).await.unwrap();
        let result = tokio::time::timeout(WAIT, handle)
            .await
            .expect("a result in time");
        assert_eq!(result, Ok(i * 2));
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        20,
        "each job ran once, on hub b's worker"
    );
    submitter.shutdown().await;
}

#[tokio::test]
async fn a_provider_with_local_jobs_or_a_data_dir_says_so() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (_local, _) = hub_with(&nats, "local", &["--local-jobs"]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let stderr = refused(&[
        "--nats".as_ref(),
        url.as_ref(),
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
    ])
    .await;
    assert!(stderr.contains("--local-jobs"), "{stderr}");
}
