//! The Provider: a websocket server many consumers join.
//!
//! ```
//! use cluster_transport::{Provider, MessageRef};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Provider::builder()
//!     .host("127.0.0.1")
//!     .port(0) // any free port
//!     .auth_parameter("key", "SECRET_KEY")
//!     .on_message(|consumer, message| {
//!         if message.as_text() == Some("hello") {
//!             let _ = consumer.send("welcome");
//!         }
//!     })
//!     .bind()
//!     .await?;
//! println!("listening on {}", provider.local_addr());
//! provider.shutdown().await;
//! # Ok(()) }
//! ```

mod accept;
mod handler;
mod refusals;
pub(crate) mod shared;

use crate::auth::{auth_handler, AuthHandler, Refusal, UpgradeCheck, UpgradeRequest};
use crate::compressor::Compressor;
use crate::connection::{
    encode_frame, encode_shared_deflate_frame, Connection, SendPath, SharedFrame,
};
use crate::error::BindError;
use crate::event::{
    close_callback, message_callback, open_callback, EventStream, ProviderCallback, ProviderEvent,
    ProviderListeners,
};
use crate::http::{HttpRequest, HttpResponse, HttpRoutes};
use crate::message::{close_code, close_reason, CloseInfo, MessageRef};
#[cfg(feature = "prometheus")]
use crate::metrics::MetricsEndpoint;
use crate::metrics::Publisher;
use crate::options::{ProviderOptions, SslOptions};
use crate::protocol::{CloseMode, CloseRequest};
use crate::stats::{Kind, ProviderStats};
use shared::ProviderShared;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use uuid::Uuid;

/// Builds a [`Provider`]: options, then behaviour, then [`bind`](Self::bind).
#[must_use]
pub struct ProviderBuilder {
    options: ProviderOptions,
    auth_handler: Option<AuthHandler>,
    upgrade_check: Option<UpgradeCheck>,
    http: HttpRoutes,
    #[cfg(feature = "prometheus")]
    metrics: Option<MetricsEndpoint>,
    metrics_flushes: Vec<crate::metrics::MetricsFlush>,
    listeners: ProviderListeners,
}

impl fmt::Debug for ProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderBuilder")
            .field("options", &self.options)
            .field("auth_handler", &self.auth_handler.is_some())
            .field("http_routes", &self.http)
            .finish_non_exhaustive()
    }
}

impl ProviderBuilder {
    /// Starts from options loaded elsewhere (a config file).
    pub fn from_options(options: ProviderOptions) -> Self {
        Self {
            options,
            auth_handler: None,
            upgrade_check: None,
            http: HttpRoutes::default(),
            #[cfg(feature = "prometheus")]
            metrics: None,
            metrics_flushes: Vec::new(),
            listeners: ProviderListeners::default(),
        }
    }

    /// The options as they stand.
    pub fn options(&self) -> &ProviderOptions {
        &self.options
    }

    /// Address to listen on. Default: `0.0.0.0`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.options.host = host.into();
        self
    }

    /// Port to listen on; 0 picks a free one. Default: 8080.
    pub fn port(mut self, port: u16) -> Self {
        self.options.port = port;
        self
    }

    /// Path consumers connect to. Default: `/connect`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.options.path = path.into();
        self
    }

    /// Requires every consumer to send `key=value` in its URL parameters.
    pub fn auth_parameter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options
            .auth
            .parameters
            .insert(key.into(), value.into());
        self
    }

    /// An async auth handler that sees the request (ip, path, headers, parameters) after the
    /// parameter check passed, and accepts with `true`. Rejected consumers get 403.
    pub fn auth_handler<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(UpgradeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.auth_handler = Some(auth_handler(handler));
        self
    }

    /// A check of every upgrade request after auth passed, refusing with its own status
    /// and body (auth failures stay `403 Unauthorized`). Layers on top of the transport use
    /// it to refuse what they cannot speak at connect time, with a reason.
    pub fn upgrade_check(
        mut self,
        check: impl Fn(&UpgradeRequest) -> Result<(), Refusal> + Send + Sync + 'static,
    ) -> Self {
        self.upgrade_check = Some(Arc::new(check));
        self
    }

    /// Answers plain HTTP requests (not websocket upgrades) whose path is `prefix` or lies
    /// under it (`/admin` takes `/admin` and `/admin/api`, not `/administrator`), with
    /// any method. Routes are tried in the order they were added; `GET /alive` stays the
    /// provider's own. See [`HttpRequest`] for the limits and a streamed answer's life.
    ///
    /// ```
    /// # use cluster_transport::{HttpResponse, Provider};
    /// let builder = Provider::builder().http_route("/status", |_request| async {
    ///     HttpResponse::new(200, "application/json", r#"{"ok":true}"#)
    /// });
    /// ```
    pub fn http_route<F, Fut>(mut self, prefix: impl Into<String>, handler: F) -> Self
    where
        F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        self.http.add(prefix.into(), handler);
        self
    }

    /// Serves `GET /metrics` in the Prometheus text format (see [`MetricsEndpoint`]).
    /// Without it the provider still records its metrics through the `metrics` facade,
    /// for a recorder of your own.
    #[cfg(feature = "prometheus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    pub fn metrics(mut self, endpoint: MetricsEndpoint) -> Self {
        self.metrics = Some(endpoint);
        self
    }

    /// Runs `flush` each time the provider hands its own counters to the `metrics` facade:
    /// once a second, right before each `/metrics` scrape, and when it stops. A layer on
    /// top that counts in its own atomics (the typed layer counts its calls so) hands
    /// them to the facade there, so a scrape sees every call made before it.
    pub fn on_metrics_flush(mut self, flush: impl Fn() + Send + Sync + 'static) -> Self {
        self.metrics_flushes.push(Arc::new(flush));
        self
    }

    /// Time between heartbeat cycles. Default: 30 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.options.heartbeat.interval = interval;
        self
    }

    /// Cycles a consumer may miss before it is closed. Default: 2.
    pub fn max_strikes(mut self, strikes: u32) -> Self {
        self.options.heartbeat.max_strikes = strikes;
        self
    }

    /// Turns the heartbeat protocol off: a plain websocket server (see
    /// [`HeartbeatOptions::enabled`](crate::HeartbeatOptions::enabled)).
    pub fn without_heartbeat(mut self) -> Self {
        self.options.heartbeat.enabled = false;
        self
    }

    /// Largest incoming message in bytes, inclusive. Default: 32768.
    pub fn max_payload_length(mut self, bytes: usize) -> Self {
        self.options.ws.max_payload_length = bytes;
        self
    }

    /// Most bytes queued for one connection before it is closed. Default: 1 MiB.
    pub fn max_backpressure(mut self, bytes: usize) -> Self {
        self.options.ws.max_backpressure = bytes;
        self
    }

    /// permessage-deflate for consumers that offer it (the seed's `ws.compressor`).
    /// Default: [`Compressor::Disabled`].
    ///
    /// ```
    /// # use cluster_transport::{Compressor, Provider};
    /// let builder = Provider::builder().compressor(Compressor::Shared);
    /// ```
    pub fn compressor(mut self, compressor: Compressor) -> Self {
        self.options.ws.compressor = compressor;
        self
    }

    /// Time a client has to complete its HTTP upgrade. Default: 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.options.handshake.timeout = timeout;
        self
    }

    /// How long a graceful close waits for the consumer's close frame, and the longest any
    /// close (a heartbeat kill, a protocol error, the consumer's own close) may take to
    /// flush before the socket is dropped. Default: 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.options.close_timeout = timeout;
        self
    }

    /// Events each [`Provider::events`] receiver holds before it loses its oldest (see
    /// [`EventStream`]). Default: 1024.
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.options.event_capacity = events;
        self
    }

    /// Most connections at once. Default: 100,000.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.options.max_connections = max;
        self
    }

    /// Serves TLS (`wss://`) with this certificate and key; see [`SslOptions`] for the
    /// formats, the passphrase of an encrypted key, and the seed options rustls ignores.
    /// The files are loaded and checked by [`bind`](Self::bind).
    ///
    /// ```no_run
    /// use cluster_transport::{Provider, SslOptions};
    /// # async fn run() -> Result<(), cluster_transport::BindError> {
    /// let provider = Provider::builder()
    ///     .tls(SslOptions::new("cert.pem", "key.pem").passphrase("SOME_RANDOM_PASSPHRASE"))
    ///     .bind()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, ssl: SslOptions) -> Self {
        self.options.ssl = Some(ssl);
        self
    }

    /// Serves TLS with a PEM certificate (chain) file and an unencrypted PEM key file; for
    /// an encrypted key use [`tls`](Self::tls) with a passphrase.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_files(
        self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls(SslOptions::new(cert, key))
    }

    /// Calls `f` for every new connection.
    pub fn on_open(mut self, f: impl Fn(&Connection) + Send + Sync + 'static) -> Self {
        self.listeners.add(open_callback(f, false));
        self
    }

    /// Calls `f` for every message; the message is borrowed, so nothing is allocated for it.
    pub fn on_message(
        mut self,
        f: impl for<'a> Fn(&Connection, MessageRef<'a>) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.add(message_callback(f, false));
        self
    }

    /// Calls `f` for every connection that ends.
    pub fn on_close(mut self, f: impl Fn(&Connection, &CloseInfo) + Send + Sync + 'static) -> Self {
        self.listeners.add(close_callback(f, false));
        self
    }

    /// As the seed's `set_error_handler`: called with errors no caller can see.
    pub fn error_handler(
        mut self,
        f: impl Fn(&(dyn std::error::Error + 'static)) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.add(ProviderCallback::Error(Arc::new(f)));
        self
    }

    /// As the seed's `set_debug_logger`: called with a line for each lifecycle step.
    pub fn debug_logger(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.listeners.add(ProviderCallback::Debug(Arc::new(f)));
        self
    }

    /// Opens the listening socket and starts accepting and the heartbeat.
    ///
    /// # Errors
    /// [`BindError::Listen`] when the address cannot be bound, [`BindError::Options`] for
    /// inconsistent options (a path or HTTP route not starting with `/`, zero limits),
    /// [`BindError::Tls`]
    /// when `ssl` is set and its files cannot be used (unreadable, no certificate or key,
    /// wrong or missing passphrase, a key that does not match the certificate).
    pub async fn bind(self) -> Result<Provider, BindError> {
        let options = self.options;
        if !options.path.starts_with('/') {
            return Err(BindError::Options(format!(
                "path must start with '/': {:?}",
                options.path
            )));
        }
        if let Some(prefix) = self.http.invalid_prefix() {
            return Err(BindError::Options(format!(
                "http route must start with '/': {prefix:?}"
            )));
        }
        if options.max_connections == 0 || options.event_capacity == 0 {
            return Err(BindError::Options(
                "max_connections and event_capacity must be at least 1".into(),
            ));
        }
        if options.heartbeat.enabled && options.heartbeat.interval.is_zero() {
            return Err(BindError::Options(
                "heartbeat interval must not be zero".into(),
            ));
        }
        // Before the port is taken: a bad certificate must not leave a half-started provider.
        let tls = match options.ssl.clone() {
            Some(ssl) => Some(load_tls(ssl).await?),
            None => None,
        };
        let addr = format!("{}:{}", options.host, options.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| BindError::Listen { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| BindError::Listen {
            addr: format!("{}:{}", options.host, options.port),
            source,
        })?;
        let mut shared = ProviderShared::new(
            options,
            self.auth_handler,
            self.upgrade_check,
            self.listeners,
            tls,
        );
        let publisher = Arc::new(Mutex::new(Publisher::new(
            Arc::clone(&shared.context.stats),
            self.metrics_flushes,
            #[cfg(feature = "prometheus")]
            self.metrics.clone(),
        )));
        #[cfg(feature = "prometheus")]
        let http = match self.metrics {
            Some(endpoint) => endpoint.route(self.http, Arc::clone(&publisher)),
            None => self.http,
        };
        #[cfg(not(feature = "prometheus"))]
        let http = self.http;
        shared.http = http;
        let shared = Arc::new(shared);
        tracing::info!(
            local.addr = %local_addr,
            path = %shared.options.path,
            tls = shared.tls.is_some(),
            "provider listening"
        );
        shared
            .tracker
            .spawn(accept::accept_loop(listener, Arc::clone(&shared)));
        shared.tracker.spawn(refusals::run(
            Arc::clone(&shared.refusals),
            shared.stop.clone(),
        ));
        if shared.options.heartbeat.enabled {
            shared
                .tracker
                .spawn(crate::heartbeat::run(Arc::clone(&shared)));
        }
        shared
            .tracker
            .spawn(crate::metrics::run(publisher, shared.stop.clone()));
        Ok(Provider {
            inner: Arc::new(ProviderInner { shared, local_addr }),
        })
    }
}

/// A running provider. Cheap to clone; when the last clone is dropped the provider is
/// destroyed (see [`destroy`](Self::destroy)).
#[derive(Clone)]
pub struct Provider {
    inner: Arc<ProviderInner>,
}

struct ProviderInner {
    shared: Arc<ProviderShared>,
    local_addr: SocketAddr,
}

impl Drop for ProviderInner {
    fn drop(&mut self) {
        destroy(&self.shared);
    }
}

impl Provider {
    /// A builder with the seed's defaults.
    pub fn builder() -> ProviderBuilder {
        ProviderBuilder::from_options(ProviderOptions::default())
    }

    /// The options this provider runs with.
    pub fn options(&self) -> &ProviderOptions {
        &self.inner.shared.options
    }

    /// The address it listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.inner.local_addr.port()
    }

    /// The path consumers connect to.
    pub fn path(&self) -> &str {
        &self.inner.shared.options.path
    }

    /// Whether consumers connect with TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.inner.shared.tls.is_some()
    }

    /// Every open connection, by id (the seed's `connections`).
    pub fn connections(&self) -> HashMap<Uuid, Connection> {
        self.inner.shared.registry().clone()
    }

    /// The traffic counters since the provider started: connections, messages and bytes
    /// in and out, connects and disconnects by reason, TLS handshakes, compression. Take
    /// two snapshots for a rate.
    pub fn stats(&self) -> ProviderStats {
        self.inner.shared.context.stats.snapshot()
    }

    /// One connection by id.
    pub fn connection(&self, id: Uuid) -> Option<Connection> {
        self.inner.shared.registry().get(&id).cloned()
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.inner.shared.registry().len()
    }

    /// Sends a message to every open connection; returns how many took it. Never waits on a
    /// slow consumer: one over its backpressure limit is closed, the others go on.
    /// Reserved texts (`PING`, …) are refused by every connection, so none takes them.
    pub fn send_to_all<'a>(&self, message: impl Into<MessageRef<'a>>) -> usize {
        let message = message.into();
        let conns = self.inner.shared.snapshot();
        let Some(first) = conns.first() else {
            return 0;
        };
        if first.is_reserved(message) {
            return 0;
        }
        // Encoded once per way of sending (plain, or compressed on its own per window),
        // copied into each outbox; only a connection with its own compressor compresses
        // for itself.
        let mut plain = None;
        // Per window: the frame compressed once, and its compressed payload's size.
        let mut compressed: Vec<(u8, Option<SharedFrame>)> = Vec::new();
        let stats = first.stats();
        let raw = message.len() as u64;
        // Copies of a frame encoded here (a connection with its own compressor counts
        // its own sends).
        let mut copies = 0;
        let taken = conns
            .iter()
            .filter(|c| {
                let frame = match c.send_path() {
                    SendPath::Plain => &*plain.get_or_insert_with(|| encode_frame(message)),
                    SendPath::OwnDeflate => return c.send_frame(message).is_ok(),
                    SendPath::SharedDeflate(bits) => {
                        let i = match compressed.iter().position(|(b, _)| *b == bits) {
                            Some(i) => i,
                            None => {
                                compressed.push((bits, encode_shared_deflate_frame(message, bits)));
                                compressed.len() - 1
                            }
                        };
                        match &compressed[i].1 {
                            Some((frame, wire)) => {
                                if c.send_encoded(frame).is_err() {
                                    return false;
                                }
                                copies += 1;
                                stats.deflated(raw, *wire);
                                return true;
                            }
                            None => &*plain.get_or_insert_with(|| encode_frame(message)),
                        }
                    }
                };
                let sent = c.send_encoded(frame).is_ok();
                copies += u64::from(sent);
                sent
            })
            .count();
        stats.sent_to_many(Kind::of(message), copies, raw);
        taken
    }

    /// A bounded receiver of every event from now on. Each call makes a new receiver
    /// that gets every event. A receiver that falls behind never holds anything up: it
    /// loses its oldest events and is told how many ([`ProviderEvent::Lagged`]); see
    /// [`EventStream`].
    pub fn events(&self) -> EventStream<ProviderEvent> {
        self.inner.shared.context.events.subscribe()
    }

    /// Calls `f` for every new connection from now on.
    pub fn on_open(&self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        self.add(open_callback(f, false));
    }

    /// Calls `f` for the next new connection only.
    pub fn once_open(&self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        self.add(open_callback(f, true));
    }

    /// Calls `f` for every message from now on.
    pub fn on_message(
        &self,
        f: impl for<'a> Fn(&Connection, MessageRef<'a>) + Send + Sync + 'static,
    ) {
        self.add(message_callback(f, false));
    }

    /// Calls `f` for the next message only.
    pub fn once_message(
        &self,
        f: impl for<'a> Fn(&Connection, MessageRef<'a>) + Send + Sync + 'static,
    ) {
        self.add(message_callback(f, true));
    }

    /// Calls `f` for every connection that ends from now on.
    pub fn on_close(&self, f: impl Fn(&Connection, &CloseInfo) + Send + Sync + 'static) {
        self.add(close_callback(f, false));
    }

    /// Calls `f` for the next connection that ends only.
    pub fn once_close(&self, f: impl Fn(&Connection, &CloseInfo) + Send + Sync + 'static) {
        self.add(close_callback(f, true));
    }

    /// The seed's `set_error_handler`.
    pub fn set_error_handler(
        &self,
        f: impl Fn(&(dyn std::error::Error + 'static)) + Send + Sync + 'static,
    ) {
        self.add(ProviderCallback::Error(Arc::new(f)));
    }

    /// The seed's `set_debug_logger`. Not for production: one call per lifecycle step.
    pub fn set_debug_logger(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        self.add(ProviderCallback::Debug(Arc::new(f)));
    }

    fn add(&self, callback: ProviderCallback) {
        self.inner.shared.update_listeners(|l| l.add(callback));
    }

    /// Whether the provider was destroyed or shut down.
    pub fn is_stopped(&self) -> bool {
        self.inner.shared.stop.is_cancelled()
    }

    /// Stops at once: no new connections, every connection gets a close frame (1001) and
    /// its TCP connection is ended without waiting for the consumer's answer.
    pub fn destroy(&self) {
        destroy(&self.inner.shared);
    }

    /// Stops gracefully: stops accepting, sends every connection a close frame (1001),
    /// waits for the consumers' close frames (up to `close_timeout`), and returns once every
    /// task of the provider has ended and the port is free.
    pub async fn shutdown(&self) {
        let shared = &self.inner.shared;
        shared.stop.cancel();
        for conn in shared.snapshot() {
            conn.close(close_code::GOING_AWAY, close_reason::SHUTTING_DOWN);
        }
        shared.tracker.close();
        let grace = shared.options.close_timeout + Duration::from_secs(1);
        if tokio::time::timeout(grace, shared.tracker.wait())
            .await
            .is_err()
        {
            for conn in shared.snapshot() {
                conn.terminate();
            }
            shared.tracker.wait().await;
        }
        tracing::info!("provider shut down");
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(&self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

/// Loads the certificate and key of `ssl` (reading files and decrypting a key, a slow
/// KDF on purpose, is blocking work).
#[cfg(feature = "tls")]
async fn load_tls(ssl: SslOptions) -> Result<shared::TlsAcceptor, BindError> {
    crate::tls::log_ignored(&ssl);
    tokio::task::spawn_blocking(move || crate::tls::acceptor(&ssl))
        .await
        .map_err(|e| BindError::Tls {
            reason: "loading the certificate and key failed".into(),
            source: Some(Box::new(e)),
        })?
}

/// Without the `tls` feature, options asking for TLS are refused at bind.
#[cfg(not(feature = "tls"))]
async fn load_tls(_ssl: SslOptions) -> Result<shared::TlsAcceptor, BindError> {
    Err(BindError::Tls {
        reason: "ssl is set, but cluster-transport was built without its `tls` feature".into(),
        source: None,
    })
}

fn destroy(shared: &ProviderShared) {
    shared.stop.cancel();
    shared.tracker.close();
    for conn in shared.snapshot() {
        conn.request_close(CloseRequest::new(
            close_code::GOING_AWAY,
            close_reason::DESTROYED,
            CloseMode::Immediate,
        ));
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("local_addr", &self.inner.local_addr)
            .field("path", &self.path())
            .field("tls", &self.is_tls())
            .field("connections", &self.connection_count())
            .finish()
    }
}
