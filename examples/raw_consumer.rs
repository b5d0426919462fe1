//! The seed README's consumer example, in Rust, done right: the reply goes through the
//! consumer (the seed calls `Provider.send` by mistake), and the first message is sent
//! after `connect()` resolved instead of racing it.
//!
//! Run `cargo run --example raw_provider` first, then `cargo run --example raw_consumer`.

use network_cluster::prelude::*;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let consumer = Consumer::builder()
        .host(host)
        .port(8080)
        .parameter("key", "SECRET_KEY") // the provider above expects this parameter
        .parameter("something1", "Some Value 1") // other parameters are metadata
        .parameter("something2", "Some Value 2")
        .build();
    let replies = consumer.clone();
    consumer.on_message(move |message| {
        println!("Provider Sent: {message:?}");
        if message.as_text() == Some("SOME_REPLY") {
            // We can also respond to the provider.
            let _ = replies.send("THANKS");
        }
    });
    match consumer.connect().await {
        Ok(()) => println!("Successfully Connected To Provider! Ready For Work!"),
        Err(error) => {
            eprintln!("Failed To Connect To Provider! Reason: {error}");
            return Err(error.into());
        }
    }
    // Let the provider know we are ready.
    consumer.send("CONSUMER_READY")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;
    Ok(())
}
