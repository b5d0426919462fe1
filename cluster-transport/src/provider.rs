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

use crate::auth::{auth_handler, AuthHandler, Refusal, UpgradeCheck, UpgradeRequest};
use crate::compressor::Compressor;
use crate::connection::{
    encode_frame, encode_shared_deflate_frame, CloseMode, CloseRequest, Connection, SendPath,
};
use crate::error::BindError;
use crate::event::{
    close_callback, message_callback, open_callback, EventStream, ProviderCallback, ProviderEvent,
    ProviderListeners,
};
use crate::message::{close_code, CloseInfo, MessageRef, PROVIDER_HEARTBEAT_PREFIX};
use crate::options::{ProviderOptions, SslOptions};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// State every connection task of one provider shares.
pub(crate) struct ProviderShared {
    pub(crate) options: ProviderOptions,
    pub(crate) auth_handler: Option<AuthHandler>,
    pub(crate) upgrade_check: Option<UpgradeCheck>,
    listeners: RwLock<Arc<ProviderListeners>>,
    listeners_gen: AtomicU64,
    registry: Mutex<HashMap<Uuid, Connection>>,
    /// `PROVIDER_HEARTBEAT|<ms>`, sent first on every connection.
    heartbeat_frame: String,
    /// Every task of this provider: accept loop, heartbeat, connections.
    pub(crate) tracker: TaskTracker,
    /// Cancelled to stop accepting and stop the heartbeat.
    pub(crate) stop: CancellationToken,
    /// Handshakes every connection with TLS when `ssl` is set.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ProviderShared {
    pub(crate) fn new(
        options: ProviderOptions,
        auth_handler: Option<AuthHandler>,
        upgrade_check: Option<UpgradeCheck>,
        listeners: ProviderListeners,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        Self {
            heartbeat_frame: format!(
                "{PROVIDER_HEARTBEAT_PREFIX}{}",
                options.heartbeat.interval.as_millis()
            ),
            options,
            auth_handler,
            upgrade_check,
            listeners: RwLock::new(Arc::new(listeners)),
            listeners_gen: AtomicU64::new(0),
            registry: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            tls,
        }
    }

    /// The current listeners and their generation.
    pub(crate) fn listeners(&self) -> (Arc<ProviderListeners>, u64) {
        let guard = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        (
            Arc::clone(&guard),
            self.listeners_gen.load(Ordering::Acquire),
        )
    }

    pub(crate) fn listeners_gen(&self) -> u64 {
        self.listeners_gen.load(Ordering::Acquire)
    }

    fn update_listeners(&self, change: impl FnOnce(&mut ProviderListeners)) {
        let mut guard = self.listeners.write().unwrap_or_else(|p| p.into_inner());
        let mut next = ProviderListeners::clone(&guard);
        next.streams.retain(|s| !s.is_closed());
        change(&mut next);
        *guard = Arc::new(next);
        self.listeners_gen.fetch_add(1, Ordering::Release);
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Connection>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every open connection, copied out so no lock is held while using them.
    pub(crate) fn snapshot(&self) -> Vec<Connection> {
        self.registry().values().cloned().collect()
    }

    /// Registers a new connection and queues its first frame.
    pub(crate) fn register(&self, conn: &Connection) {
        if self.options.heartbeat.enabled {
            // Cannot fail: the connection is fresh and the frame is tiny.
            let _ = conn.send_frame(MessageRef::Text(&self.heartbeat_frame));
        }
        self.registry().insert(conn.id(), conn.clone());
    }

    pub(crate) fn unregister(&self, conn: &Connection) {
        self.registry().remove(&conn.id());
    }

    pub(crate) async fn emit_open(&self, conn: &Connection) {
        let (listeners, _) = self.listeners();
        listeners.debug(|| format!("connection {} open from {}", conn.id(), conn.ip()));
        for callback in &listeners.open {
            if let Some(f) = callback.take() {
                f(conn);
            }
        }
        for stream in &listeners.streams {
            let _ = stream.send(ProviderEvent::Open(conn.clone())).await;
        }
    }

    pub(crate) async fn emit_close(&self, conn: &Connection, info: CloseInfo) {
        let (listeners, _) = self.listeners();
        listeners.debug(|| {
            format!(
                "connection {} closed: {} {}",
                conn.id(),
                info.code,
                info.reason
            )
        });
        for callback in &listeners.close {
            if let Some(f) = callback.take() {
                f(conn, &info);
            }
        }
        for stream in &listeners.streams {
            let _ = stream
                .send(ProviderEvent::Close(conn.clone(), info.clone()))
                .await;
        }
    }
}

/// Builds a [`Provider`]: options, then behaviour, then [`bind`](Self::bind).
#[must_use]
pub struct ProviderBuilder {
    options: ProviderOptions,
    auth_handler: Option<AuthHandler>,
    upgrade_check: Option<UpgradeCheck>,
    listeners: ProviderListeners,
}

impl fmt::Debug for ProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderBuilder")
            .field("options", &self.options)
            .field("auth_handler", &self.auth_handler.is_some())
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

    /// How long a graceful close waits for the consumer's close frame. Default: 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.options.close_timeout = timeout;
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
    pub fn tls(mut self, ssl: SslOptions) -> Self {
        self.options.ssl = Some(ssl);
        self
    }

    /// Serves TLS with a PEM certificate (chain) file and an unencrypted PEM key file; for
    /// an encrypted key use [`tls`](Self::tls) with a passphrase.
    pub fn tls_files(self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
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
    /// inconsistent options (a path not starting with `/`, zero limits), [`BindError::Tls`]
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
        // Reading files and decrypting a key (a slow KDF on purpose) is blocking work.
        let tls = match options.ssl.clone() {
            Some(ssl) => Some({
                crate::tls::log_ignored(&ssl);
                tokio::task::spawn_blocking(move || crate::tls::acceptor(&ssl))
                    .await
                    .map_err(|e| BindError::Tls {
                        reason: "loading the certificate and key failed".into(),
                        source: Some(Box::new(e)),
                    })??
            }),
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
        let shared = Arc::new(ProviderShared::new(
            options,
            self.auth_handler,
            self.upgrade_check,
            self.listeners,
            tls,
        ));
        tracing::info!(
            local.addr = %local_addr,
            path = %shared.options.path,
            tls = shared.tls.is_some(),
            "provider listening"
        );
        shared
            .tracker
            .spawn(accept::accept_loop(listener, Arc::clone(&shared)));
        if shared.options.heartbeat.enabled {
            shared
                .tracker
                .spawn(crate::heartbeat::run(Arc::clone(&shared)));
        }
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
        let mut compressed: Vec<(u8, Option<Vec<u8>>)> = Vec::new();
        conns
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
                            Some(frame) => frame,
                            None => &*plain.get_or_insert_with(|| encode_frame(message)),
                        }
                    }
                };
                c.send_encoded(frame).is_ok()
            })
            .count()
    }

    /// A bounded receiver of every event from now on. Each call makes a new receiver that
    /// gets every event; a full receiver pauses reading from the connection concerned.
    pub fn events(&self) -> EventStream<ProviderEvent> {
        let (tx, rx) = mpsc::channel(self.inner.shared.options.event_capacity);
        self.inner.shared.update_listeners(|l| l.streams.push(tx));
        EventStream::new(rx)
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
            conn.close(close_code::GOING_AWAY, "provider shutting down");
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

fn destroy(shared: &ProviderShared) {
    shared.stop.cancel();
    shared.tracker.close();
    for conn in shared.snapshot() {
        conn.request_close(CloseRequest::new(
            close_code::GOING_AWAY,
            "provider destroyed",
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
