//! # network-cluster
//!
//! Processes on many machines talking to each other through a hub. One **Provider** (a
//! websocket server) accepts many **Consumers** (websocket clients) that authenticate with
//! URL parameters, are kept alive with heartbeats and reconnect on their own. It speaks the
//! wire protocol of the Node package `network-cluster`, so Node consumers can join a Rust
//! provider and the other way round.
//!
//! This crate is the facade: it re-exports the transport ([`transport`]), the typed layer
//! ([`rpc`]: hubs, members, broadcast, pub/sub) and the [`cluster_service`] macro.
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
//!
//! # Features
//!
//! | feature | default | what it brings |
//! |---|---|---|
//! | `tls` | yes | `wss://` on both sides: rustls with its ring provider (see [`transport`]'s TLS section). Off, none of rustls, ring or the certificate loaders is built; options asking for TLS fail at `bind`/`connect` with a clear error. |
//! | `bincode` | yes | the typed layer's bincode codec (`rpc::CodecKind::Bincode`), forwarded to `cluster-rpc` |
//! | `nats` | no | several hubs as one cluster on NATS (`rpc::HubBuilder::cluster`, `rpc::cluster`), forwarded to `cluster-rpc`; brings async-nats |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub use cluster_rpc as rpc;
pub use cluster_transport as transport;

/// Turns a trait of `async fn` methods into a cluster service: a typed `{Trait}Client`, a
/// `{Trait}Server` to serve it with, and the `{Trait}Request`/`{Trait}Response` enums.
///
/// ```
/// use network_cluster::prelude::*;
///
/// /// Hashes data.
/// #[cluster_service]
/// pub trait Hasher {
///     /// 64-bit FNV-1a.
///     async fn fnv(&self, data: Vec<u8>) -> u64;
/// }
///
/// struct Fnv;
/// impl Hasher for Fnv {
///     async fn fnv(&self, data: Vec<u8>) -> u64 {
///         data.iter().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::builder(Provider::builder().host("127.0.0.1").port(0)).start().await?;
/// let worker = Member::builder(Consumer::builder().host("127.0.0.1").port(hub.provider().port()))
///     .serve(HasherServer::new(Fnv))
///     .connect()
///     .await?;
/// let hash = hub.any::<HasherClient>()?.fnv(b"hello".to_vec()).await?;
/// assert_eq!(hash, 0xa430d84680aabd0b);
/// # worker.shutdown().await; hub.shutdown().await;
/// # Ok(()) }
/// ```
pub use cluster_macros::cluster_service;

/// What generated code needs, so users of the macro need no dependencies of ours.
#[doc(hidden)]
pub mod __private {
    pub use cluster_rpc::__private::*;
}

#[doc(inline)]
pub use cluster_rpc::{
    Broadcast, ByteBuf, Caller, CodecKind, Hub, Member, Published, RpcError, RpcErrorKind,
    Subscription,
};
#[doc(inline)]
pub use cluster_transport::{
    CloseInfo, ConnectError, ConnectErrorKind, Connection, Consumer, ConsumerEvent,
    ConsumerOptions, Message, MessageRef, Provider, ProviderEvent, ProviderOptions, SendError,
    SendErrorKind,
};
/// The id type of connections ([`Connection::id`]) and worker statistics; a job id
/// (`u128`) reads as one with `Uuid::from_u128`.
pub use uuid::Uuid;

/// The handful of types most programs need: `use network_cluster::prelude::*;`.
pub mod prelude {
    pub use crate::cluster_service;
    pub use cluster_rpc::{Hub, Member, RpcError, RpcErrorKind, ServiceClient};
    pub use cluster_transport::{
        Connection, Consumer, ConsumerEvent, Message, MessageRef, Provider, ProviderEvent,
    };
}

/// The README's code blocks, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
