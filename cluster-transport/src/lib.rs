//! The network-cluster transport: a websocket **Provider** that many **Consumers** join,
//! wire-compatible with the Node package `network-cluster`.
//!
//! - Consumers authenticate with URL parameters (compared in constant time) and an optional
//!   async handler that sees the whole upgrade request; rejected ones get `403 Unauthorized`.
//! - The provider's first frame is `PROVIDER_HEARTBEAT|<ms>`; one provider-wide cycle sends
//!   text `PING`s and closes consumers that miss `max_strikes` cycles. Consumers answer
//!   `PONG`, watch for silence (2x the interval) and reconnect on their own.
//! - Text frames are the original's string messages; binary frames carry bytes, on the
//!   same connection.
//! - Every limit has a name and a default: `max_payload_length` (close 1009 above it),
//!   `max_backpressure` (a consumer that stops reading is closed, never buffered without
//!   bound; a ping flood holds one pending pong), handshake time and size limits,
//!   `max_connections`. The consumer applies `max_payload_length` to what it receives too.
//! - Events come as callbacks (`on_message`, …, as the seed's `on`/`once`) and as bounded
//!   async receivers ([`Provider::events`], [`Consumer::events`]). Neither ever stalls a
//!   connection: a receiver that falls behind loses its oldest events and is told how
//!   many ([`EventStream`]).
//! - Both roles run one RFC 6455 core, without I/O: decoding (fragments, UTF-8, control
//!   frames, limits), the close handshake, permessage-deflate and the outbox, where every
//!   queued byte counts against `max_backpressure`. The role decides masking.
//! - TLS (`wss://`) with rustls on both sides: the provider serves PEM certificate and key
//!   files (an encrypted key with the seed's `passphrase`), the consumer verifies against
//!   the system's roots or a CA file. See [TLS](#tls).
//!
//! # Example
//!
//! ```
//! use cluster_transport::{Consumer, ConsumerEvent, Message, Provider};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Provider::builder()
//!     .host("127.0.0.1")
//!     .port(0)
//!     .auth_parameter("key", "SECRET_KEY")
//!     .on_message(|consumer, message| {
//!         let _ = consumer.send(message); // echo
//!     })
//!     .bind()
//!     .await?;
//!
//! let consumer = Consumer::builder()
//!     .host("127.0.0.1")
//!     .port(provider.port())
//!     .parameter("key", "SECRET_KEY")
//!     .build();
//! let mut events = consumer.events();
//! consumer.connect().await?;
//! consumer.send("hello")?;
//! while let Some(event) = events.recv().await {
//!     if let ConsumerEvent::Message(message) = event {
//!         assert_eq!(message, Message::from("hello"));
//!         break;
//!     }
//! }
//! consumer.shutdown().await;
//! provider.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Seed API map
//!
//! | seed (Node) | here |
//! |---|---|
//! | `new Provider({...})` | [`Provider::builder`]`()…`[`bind`](ProviderBuilder::bind)`().await`, or [`ProviderBuilder::from_options`] |
//! | `Provider.on('open' / 'message' / 'close')` | [`Provider::on_open`], [`Provider::on_message`], [`Provider::on_close`], `once_*`, [`Provider::events`] |
//! | `Provider.connections`, `port`, `path` | [`Provider::connections`], [`Provider::port`], [`Provider::path`] |
//! | `set_error_handler`, `set_debug_logger` | [`Provider::set_error_handler`], [`Provider::set_debug_logger`] |
//! | `Provider.destroy()` | [`Provider::destroy`], and graceful [`Provider::shutdown`] |
//! | `new Consumer({...})`, `connect()`, `ready()` | [`Consumer::builder`], [`Consumer::connect`], [`Consumer::ready`] |
//! | `Consumer.on(...)`, `once(...)` | [`Consumer::on_message`], `on_open`, `on_disconnect`, `on_close`, `once_*`, [`Consumer::events`] |
//! | `send(message)` → boolean | [`Consumer::send`] / [`Connection::send`] → `Result<(), SendError>` |
//! | `in_flight`, `connected`, `heartbeat_duration`, `heartbeat_cutoff`, `last_heartbeat` | methods of the same names ([`Consumer::is_connected`]) |
//! | Connection `id`, `ip`, `parameters`, `last_ping`, `strikes` | methods of [`Connection`] |
//!
//! | Provider `ssl: { key, cert, passphrase, dh_params, prefer_low_memory_usage }` | [`ProviderOptions::ssl`] ([`SslOptions`]), [`ProviderBuilder::tls`] |
//! | Consumer `ssl: true` | [`ConsumerOptions::ssl`], [`ConsumerBuilder::ssl`], plus [`ConsumerBuilder::ca_file`] |
//! | Provider `ws.compressor` (`NetworkCluster.COMPRESSORS`) | [`WsOptions::compressor`] ([`Compressor`]), [`ProviderBuilder::compressor`]; the consumer offers it ([`ConsumerBuilder::compression`]) |
//!
//! Not carried over: the seed's `events` (an `EventEmitter`), `server` (a HyperExpress
//! server) and the consumer's `ws` are the Node objects underneath; here the callbacks,
//! [`EventStream`]s and [`Provider::local_addr`] play their parts.
//!
//! # TLS
//!
//! The provider serves `wss://` when given a certificate and key ([`SslOptions`], PEM
//! files, loaded and checked by [`bind`](ProviderBuilder::bind)); the consumer connects
//! with [`ssl(true)`](ConsumerBuilder::ssl), verifying the provider's certificate against
//! the system's root certificates or, with [`ca_file`](ConsumerBuilder::ca_file), a CA
//! of your own. rustls with its `ring` provider does the work on both sides (TLS 1.2 and
//! 1.3, ECDHE key exchange only).
//!
//! ```
//! # use cluster_transport::{Consumer, Provider, SslOptions};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("cluster-doc-tls-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
//! # std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
//! # std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem())?;
//! let provider = Provider::builder()
//!     .host("127.0.0.1")
//!     .port(0)
//!     .tls(SslOptions::new(dir.join("cert.pem"), dir.join("key.pem")))
//!     .bind()
//!     .await?;
//! let consumer = Consumer::builder()
//!     .host("localhost") // the name the certificate is for
//!     .port(provider.port())
//!     .ca_file(dir.join("cert.pem")) // a self-signed certificate is its own CA
//!     .connect()
//!     .await?;
//! consumer.send("over TLS")?;
//! # consumer.shutdown().await;
//! # provider.shutdown().await;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! A consumer that cannot verify the certificate (or finds no TLS on the port) fails with
//! [`ConnectErrorKind::Tls`] carrying rustls' reason, and does not retry. A plaintext
//! client on a TLS port, or a TLS client on a plain one, fails its own handshake; no other
//! connection notices.
//!
//! # Compression
//!
//! permessage-deflate (RFC 7692), off by default as in the seed. With a [`Compressor`] on,
//! the provider accepts the offer consumers make (ours and the original's alike), per
//! connection; see [`Compressor`] for what shared and dedicated cost and do.
//!
//! ```
//! # use cluster_transport::{Compressor, Consumer, Provider};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Provider::builder()
//!     .host("127.0.0.1")
//!     .port(0)
//!     .compressor(Compressor::Shared)
//!     .on_open(|conn| assert!(conn.is_compressed()))
//!     .bind()
//!     .await?;
//! let consumer = Consumer::builder()
//!     .port(provider.port())
//!     .connect() // offers permessage-deflate unless built with .compression(false)
//!     .await?;
//! consumer.send("a long, repetitive message, a long, repetitive message")?;
//! # consumer.shutdown().await;
//! # provider.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Metrics and plain HTTP
//!
//! The provider counts its traffic (connections, connects and disconnects by reason,
//! messages and bytes, heartbeat round trips, TLS handshakes, compression) cheaply on
//! every path, readable as [`Provider::stats`] and recorded through the `metrics` facade
//! for any recorder ([`metrics`](crate::MetricsEndpoint) explains when handles are
//! resolved). [`ProviderBuilder::metrics`] serves them at `GET /metrics` in the Prometheus
//! text format. Routes of your own answer other plain HTTP requests on the same port:
//! [`ProviderBuilder::http_route`].
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `prometheus` | on | [`MetricsEndpoint`] and [`ProviderBuilder::metrics`] (`metrics-exporter-prometheus`) |
//! | `tls` | on | `wss://` on both sides: rustls with its `ring` provider, tokio-rustls, the system's root certificates (rustls-native-certs) and encrypted PKCS#8 keys (pkcs8). Off, none of these is built: [`ProviderBuilder::tls`], [`ConsumerBuilder::ssl`] and [`ConsumerBuilder::ca_file`] are gone, and options that still ask for TLS ([`ProviderOptions::ssl`], [`ConsumerOptions::ssl`], say from a config file) fail [`bind`](ProviderBuilder::bind) with [`BindError::Tls`] and `connect` with [`ConnectErrorKind::Tls`], naming the feature. |
//!
#![doc = include_str!("../docs/security.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod auth;
mod compressor;
mod connection;
mod consumer;
mod deflate;
mod driver;
mod error;
mod event;
mod frame;
mod handshake;
mod heartbeat;
mod http;
mod message;
mod metrics;
mod options;
mod protocol;
mod provider;
mod query;
mod reconnect;
mod stats;
#[cfg(feature = "tls")]
mod tls;

/// Entry points for the cargo-fuzz targets in `fuzz/`. **Not a public API**: hidden, for
/// fuzzing only, and may change in any release.
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::fuzzing::{deflate_encoder, frames, frames_deflate, query, upgrade_request};
}
mod fuzzing;

/// What `cluster bench` reports about compression. **Not a public API**: hidden, and may
/// change in any release.
#[doc(hidden)]
pub mod __bench {
    /// The bytes a message of `payload` takes on the wire compressed without context
    /// takeover (a `Shared` provider, or any consumer it answers), before framing; the
    /// payload's own length when it would go uncompressed.
    pub fn deflated_len(payload: &[u8]) -> usize {
        let mut out = Vec::new();
        if crate::deflate::MessageDeflater::Shared(15).compress(payload, &mut out) {
            out.len()
        } else {
            payload.len()
        }
    }
}

/// Per-thread counter shards, shared with cluster-rpc's call counters. **Not a public
/// API**: hidden, and may change in any release.
#[doc(hidden)]
pub mod __shards {
    pub use crate::stats::{add, current, SHARDS};
}

/// When the connection's task began handling the read it is handling, for cluster-rpc's
/// call durations. **Not a public API**: hidden, and may change in any release.
#[doc(hidden)]
pub mod __clock {
    pub use crate::driver::read_started;
}

pub use auth::{Refusal, UpgradeRequest};
pub use compressor::{Compressor, UnknownCompressor};
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerBuilder, ConsumerState};
pub use error::{BindError, BoxError, ConnectError, ConnectErrorKind, SendError, SendErrorKind};
pub use event::{ConsumerEvent, EventStream, ProviderEvent};
pub use http::{HttpRequest, HttpResponse, MAX_HTTP_BODY_BYTES};
pub use message::{
    close_code, is_reserved, CloseInfo, Message, MessageRef, PING, PONG, PROVIDER_HEARTBEAT_PREFIX,
};
pub use metrics::SECONDS_BUCKETS;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub use metrics::{MetricsEndpoint, MetricsError};
pub use options::{
    AuthOptions, Backoff, ConsumerOptions, HandshakeOptions, HeartbeatOptions, ProviderOptions,
    ReconnectOptions, SslOptions, WsOptions, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BACKPRESSURE, DEFAULT_MAX_PAYLOAD_LENGTH, DEFAULT_MAX_RECONNECT_INTERVAL,
    DEFAULT_MAX_STRIKES, DEFAULT_PATH, DEFAULT_PORT, DEFAULT_RECONNECT_INTERVAL,
};
pub use provider::{Provider, ProviderBuilder};
pub use query::{decode_query, encode_uri_component, Parameters};
pub use stats::{Compression, ProviderStats, Traffic, CONNECT_RESULTS, DISCONNECT_REASONS};

#[cfg(test)]
mod assert_traits {
    fn send_sync_clone<T: Send + Sync + Clone>() {}

    #[test]
    fn handles_are_send_sync_clone() {
        send_sync_clone::<super::Provider>();
        send_sync_clone::<super::Consumer>();
        send_sync_clone::<super::Connection>();
        send_sync_clone::<super::ConnectError>();
    }
}

/// Built without the `tls` feature, options that ask for TLS fail clearly.
#[cfg(all(test, not(feature = "tls")))]
mod without_tls {
    use super::*;

    #[tokio::test]
    async fn options_asking_for_tls_fail_naming_the_feature() {
        let options = ProviderOptions {
            host: "127.0.0.1".into(),
            port: 0,
            ssl: Some(SslOptions::new("cert.pem", "key.pem")),
            ..ProviderOptions::default()
        };
        let error = ProviderBuilder::from_options(options)
            .bind()
            .await
            .unwrap_err();
        assert!(matches!(error, BindError::Tls { .. }), "{error}");
        assert!(error.to_string().contains("`tls` feature"), "{error}");

        let options = ConsumerOptions {
            ssl: true,
            ..ConsumerOptions::default()
        };
        let error = ConsumerBuilder::from_options(options)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ConnectErrorKind::Tls);
        assert!(error.to_string().contains("`tls` feature"), "{error}");
    }
}
