//! The seed README's provider example, in Rust: a provider that authenticates consumers
//! with a URL parameter, prints what they send and answers some of it.
//!
//! Run: `cargo run --example raw_provider`, then `cargo run --example raw_consumer`.

use network_cluster::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = Provider::builder()
        .port(8080)
        .auth_parameter("key", "SECRET_KEY") // consumers must send key=SECRET_KEY
        .on_open(|consumer| {
            println!(
                "Consumer {} joined from {} with {:?}",
                consumer.id(),
                consumer.ip(),
                consumer.parameters().keys().collect::<Vec<_>>()
            );
        })
        .on_message(|consumer, message| {
            println!("Consumer {} Sent: {message:?}", consumer.id());
            // We can also send some message back.
            if message.as_text() == Some("CONSUMER_READY") {
                if let Err(error) = consumer.send("SOME_REPLY") {
                    eprintln!("reply not sent: {error}");
                }
            }
        })
        .on_close(|consumer, info| println!("Consumer {} left ({})", consumer.id(), info.code))
        .bind()
        .await?;
    println!(
        "Provider listening on ws://{}{}",
        provider.local_addr(),
        provider.path()
    );
    provider
        .run_until(async { tokio::signal::ctrl_c().await.unwrap_or(()) })
        .await;
    Ok(())
}
