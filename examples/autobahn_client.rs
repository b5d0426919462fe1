//! Runs our Consumer against the Autobahn fuzzing server (kosoku in `fuzzingserver` mode):
//! every case connects to `/runCase?case=N&agent=…` and echoes what it receives.
//!
//! Run: `scripts/autobahn.sh client-server 9002 &` then
//! `cargo run --release --example autobahn_client -- 9002`.

use network_cluster::transport::{ConsumerBuilder, ConsumerEvent};
use network_cluster::{Consumer, Message};
use std::time::Duration;

const AGENT: &str = "network-cluster";

fn consumer(port: u16, path: &str) -> ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .path(path)
        .max_payload_length(64 * 1024 * 1024)
        .max_backpressure(256 * 1024 * 1024)
        // One connection per case: no reconnect before we destroy it.
        .reconnect_interval(Duration::from_secs(3600))
        .max_attempts(0)
}

/// Connects, runs `on_message` for each message, and returns once the server closed.
async fn run(builder: ConsumerBuilder, echo: bool) -> Vec<Message> {
    let consumer = builder.build();
    let mut events = consumer.events();
    let mut received = Vec::new();
    if consumer.connect().await.is_err() {
        return received;
    }
    let mut opened = false;
    while let Some(event) = events.recv().await {
        match event {
            // Failed attempts before the first open (the server still starting).
            ConsumerEvent::Disconnect(_) if !opened => {}
            ConsumerEvent::Message(message) => {
                if echo {
                    let _ = consumer.send(message.clone());
                }
                received.push(message);
            }
            ConsumerEvent::Disconnect(_) | ConsumerEvent::Close => break,
            ConsumerEvent::Open => opened = true,
            _ => {}
        }
    }
    consumer.shutdown().await;
    received
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(9002);
    // The fuzzing server may still be starting: retry this first connection for 20 s.
    let first = consumer(port, "/getCaseCount")
        .reconnect_interval(Duration::from_millis(200))
        .max_attempts(100);
    let count = run(first, false).await;
    let count: u32 = match count.first().and_then(Message::as_text) {
        Some(n) => n.trim().parse()?,
        None => return Err("no case count from the fuzzing server".into()),
    };
    println!("running {count} cases");
    for case in 1..=count {
        let builder = consumer(port, "/runCase")
            .parameter("case", case.to_string())
            .parameter("agent", AGENT);
        if tokio::time::timeout(Duration::from_secs(20), run(builder, true))
            .await
            .is_err()
        {
            eprintln!("case {case} did not finish in 20 s");
        }
    }
    run(
        consumer(port, "/updateReports").parameter("agent", AGENT),
        false,
    )
    .await;
    println!("reports updated");
    Ok(())
}
