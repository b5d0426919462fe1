//! A bare websocket echo server on the provider's own connection core, for the Autobahn
//! conformance suite: no heartbeat protocol, any message echoed as it came, limits raised
//! to the suite's 16 MiB messages.
//!
//! Run: `cargo run --release --example echo_server -- 9001 [COMPRESSOR]` then
//! `scripts/autobahn.sh server 9001`. With a compressor (`shared`, `dedicated-4kb`, …)
//! permessage-deflate is on, for the suite's compression cases (12 and 13).

use network_cluster::transport::Compressor;
use network_cluster::Provider;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(9001);
    let compressor: Compressor = match std::env::args().nth(2) {
        Some(name) => name.parse()?,
        None => Compressor::Disabled,
    };
    let provider = Provider::builder()
        .compressor(compressor)
        .host("127.0.0.1")
        .port(port)
        .path("/")
        .without_heartbeat()
        .max_payload_length(64 * 1024 * 1024)
        .max_backpressure(256 * 1024 * 1024)
        .on_message(|conn, message| {
            let _ = conn.send(message);
        })
        .bind()
        .await?;
    println!("echo server on ws://{}/", provider.local_addr());
    provider
        .run_until(async { tokio::signal::ctrl_c().await.unwrap_or(()) })
        .await;
    Ok(())
}
