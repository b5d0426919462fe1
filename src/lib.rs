//! # network-cluster
//!
//! Processes on many machines talking to each other through a hub. One **Provider** (a
//! websocket server) accepts many **Consumers** (websocket clients) that authenticate with
//! URL parameters, are kept alive with heartbeats and reconnect on their own. It speaks the
//! wire protocol of the Node package `network-cluster`, so Node consumers can join a Rust
//! provider and the other way round.
//!
//! This crate is the facade: it re-exports the transport ([`transport`]).
//!
//! ```
//! use network_cluster::prelude::*;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Provider::builder()
//!     .host("127.0.0.1")
//!     .port(0)
//!     .auth_parameter("key", "SECRET_KEY")
//!     .on_message(|consumer, message| println!("{} sent {message:?}", consumer.id()))
//!     .bind()
//!     .await?;
//! let consumer = Consumer::builder()
//!     .host("127.0.0.1")
//!     .port(provider.port())
//!     .parameter("key", "SECRET_KEY")
//!     .connect()
//!     .await?;
//! consumer.send("CONSUMER_READY")?;
//! consumer.shutdown().await;
//! provider.shutdown().await;
//! # Ok(()) }
//! ```

#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub use cluster_transport as transport;

#[doc(inline)]
pub use cluster_transport::{
    CloseInfo, ConnectError, ConnectErrorKind, Connection, Consumer, ConsumerEvent,
    ConsumerOptions, Message, MessageRef, Provider, ProviderEvent, ProviderOptions, SendError,
    SendErrorKind,
};

/// The handful of types most programs need: `use network_cluster::prelude::*;`.
pub mod prelude {
    pub use cluster_transport::{
        Connection, Consumer, ConsumerEvent, Message, MessageRef, Provider, ProviderEvent,
    };
}

/// The README's code blocks, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
