//! The tour: one provider and a few consumers on this machine. Consumers join with a
//! secret and metadata, work flows both ways, the provider restarts and every consumer
//! comes back on its own, a consumer with the wrong secret is refused for good.
//!
//! Run: `cargo run --release --example demo`

use network_cluster::prelude::*;
use network_cluster::transport::ConnectErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "SECRET_KEY";

/// A provider that squares every number it is sent and counts the answers.
async fn provider(
    port: u16,
    answered: Arc<AtomicUsize>,
) -> Result<Provider, Box<dyn std::error::Error>> {
    Ok(Provider::builder()
        .host("127.0.0.1")
        .port(port)
        .auth_parameter("key", SECRET)
        .heartbeat_interval(Duration::from_millis(500))
        .on_message(move |consumer, message| {
            if let Some(n) = message.as_text().and_then(|t| t.parse::<u64>().ok()) {
                if consumer.send((n * n).to_string().as_str()).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .bind()
        .await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let answered = Arc::new(AtomicUsize::new(0));
    let hub = provider(0, Arc::clone(&answered)).await?;
    let port = hub.port();
    println!(
        "provider listening on ws://{}{}",
        hub.local_addr(),
        hub.path()
    );

    let received = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let got = Arc::clone(&received);
        let worker = Consumer::builder()
            .host("127.0.0.1")
            .port(port)
            .parameter("key", SECRET)
            .parameter("name", name)
            .reconnect_interval(Duration::from_millis(100))
            .on_message(move |_| {
                got.fetch_add(1, Ordering::Relaxed);
            })
            .connect()
            .await?;
        workers.push(worker);
    }
    for conn in hub.connections().values() {
        println!(
            "  consumer {} joined as {:?}",
            conn.id(),
            conn.parameters()["name"]
        );
    }

    let started = Instant::now();
    let rounds = 10_000u64;
    for n in 0..rounds {
        for worker in &workers {
            while worker.send(n.to_string()).is_err() {
                tokio::task::yield_now().await; // backpressure: let the socket drain
            }
        }
    }
    let expected = rounds as usize * workers.len();
    while received.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    println!(
        "{} requests answered in {took:.2?} ({:.0} round trips/s)",
        expected,
        expected as f64 / took.as_secs_f64()
    );

    println!("restarting the provider on port {port} ...");
    hub.shutdown().await;
    let hub = provider(port, Arc::clone(&answered)).await?;
    // Each consumer notices the drop (a close frame 1001), waits its reconnect interval
    // and joins again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.connection_count() < workers.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "  all {} consumers reconnected by themselves",
        hub.connection_count()
    );

    let intruder = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("key", "GUESS")
        .connect()
        .await;
    match intruder {
        Err(e) if e.kind() == ConnectErrorKind::Rejected => println!("  wrong secret refused: {e}"),
        other => println!("  unexpected: {other:?}"),
    }

    for worker in workers {
        worker.shutdown().await;
    }
    hub.shutdown().await;
    println!(
        "done: {} answers sent, nothing left running",
        answered.load(Ordering::Relaxed)
    );
    Ok(())
}
