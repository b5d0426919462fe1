//! Pub/sub through a hub: subjects with `*` and `>` wildcards, as NATS has them.
//!
//! Run: `cargo run --release --example pubsub`

use network_cluster::prelude::*;
use serde::{Deserialize, Serialize};

/// What we publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u32,
    region: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::builder(Provider::builder().host("127.0.0.1").port(0))
        .start()
        .await?;
    let port = hub.provider().port();
    let member = |name: &str| {
        Member::builder(
            Consumer::builder()
                .host("127.0.0.1")
                .port(port)
                .parameter("name", name),
        )
        .connect()
    };
    let shop = member("shop").await?;
    let europe = member("europe").await?;
    let audit = member("audit").await?;

    // A member's subscribe returns once the hub has it: publications from now on reach it.
    let mut created_in_eu = europe.subscribe::<Order>("orders.eu.*").await?;
    let mut everything = audit.subscribe::<Order>("orders.>").await?;
    let mut hub_view = hub.subscribe::<Order>("orders.*.shipped")?;

    shop.publish(
        "orders.eu.created",
        &Order {
            id: 1,
            region: "eu".into(),
        },
    )?;
    shop.publish(
        "orders.us.created",
        &Order {
            id: 2,
            region: "us".into(),
        },
    )?;
    hub.publish(
        "orders.eu.shipped",
        &Order {
            id: 1,
            region: "eu".into(),
        },
    )?;

    for _ in 0..2 {
        let p = created_in_eu.recv().await.ok_or("hub gone")??;
        println!("europe  got {} {:?}", p.subject, p.value);
    }
    for _ in 0..3 {
        let p = everything.recv().await.ok_or("hub gone")??;
        println!("audit   got {} {:?}", p.subject, p.value);
    }
    let p = hub_view.recv().await.ok_or("hub gone")??;
    println!("hub     got {} {:?}", p.subject, p.value);

    for m in [shop, europe, audit] {
        m.shutdown().await;
    }
    hub.shutdown().await;
    Ok(())
}
