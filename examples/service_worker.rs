//! Workers serve a `#[cluster_service]` trait; the hub calls them one by one and all at
//! once by broadcast.
//!
//! Run: `cargo run --release --example service_worker` (it starts the hub and three worker
//! processes of itself). A worker alone: `service_worker worker PORT NAME`.

use network_cluster::prelude::*;
use std::time::{Duration, Instant};

/// A worker that hashes bytes.
#[cluster_service]
pub trait Hasher {
    /// 64-bit FNV-1a of `data`.
    async fn fnv(&self, data: Vec<u8>) -> u64;
    /// The worker's name.
    async fn name(&self) -> String;
}

struct Worker(String);

impl Hasher for Worker {
    async fn fnv(&self, data: Vec<u8>) -> u64 {
        data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    async fn name(&self) -> String {
        self.0.clone()
    }
}

async fn run_worker(port: u16, name: String) -> Result<(), Box<dyn std::error::Error>> {
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("key", "SECRET_KEY")
        .parameter("name", name.clone())
        // Exit soon after the hub goes away for good.
        .reconnect_interval(Duration::from_millis(100))
        .max_attempts(0);
    let member = Member::builder(consumer)
        .serve(HasherServer::new(Worker(name)))
        .connect()
        .await?;
    // Serve until the hub goes away for good.
    while member.consumer().ready().await.is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        let port = args.get(2).ok_or("worker PORT NAME")?.parse()?;
        let name = args.get(3).cloned().unwrap_or_else(|| "worker".into());
        return run_worker(port, name).await;
    }

    let provider = Provider::builder()
        .host("127.0.0.1")
        .port(0)
        .auth_parameter("key", "SECRET_KEY");
    let hub = Hub::builder(provider).start().await?;
    let port = hub.provider().port();
    println!("hub on ws://{}/connect", hub.provider().local_addr());

    // A member is registered by the time its connection's open event is out.
    let mut events = hub.provider().events();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for name in ["ada", "grace", "linus"] {
        children.push(
            tokio::process::Command::new(&exe)
                .args(["worker", &port.to_string(), name])
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    let mut opened = 0;
    while opened < children.len() {
        match events.recv().await {
            Some(ProviderEvent::Open(_)) => opened += 1,
            Some(_) => {}
            None => return Err("hub stopped".into()),
        }
    }

    // One by one: each call goes to the next worker.
    for _ in 0..3 {
        let worker: HasherClient = hub.any()?;
        println!(
            "{} hashed 'hello' to {:#x}",
            worker.name().await?,
            worker.fnv(b"hello".to_vec()).await?
        );
    }

    // 30,000 calls spread over the workers, 64 in flight at a time.
    let started = Instant::now();
    let calls = (0..30_000u32).map(|i| {
        let worker: Result<HasherClient, _> = hub.any();
        async move { worker?.fnv(i.to_le_bytes().to_vec()).await }
    });
    let results: Vec<_> = futures_util::StreamExt::collect(
        futures_util::StreamExt::buffer_unordered(futures_util::stream::iter(calls), 64),
    )
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    println!("{ok} calls in {:.2?}", started.elapsed());

    // Broadcast: every worker at once, outcomes keyed by connection.
    let outcomes = hub
        .broadcast(|w: HasherClient| async move { w.name().await })
        .collect()
        .await;
    for (id, outcome) in &outcomes {
        println!("broadcast: {id} -> {outcome:?}");
    }
    hub.shutdown().await;
    for mut child in children {
        let _ = child.wait().await;
    }
    Ok(())
}
