//! The Consumer: joins a provider, answers its heartbeat, reconnects on its own, and can
//! fail over between several providers (hubs).
//!
//! ```
//! use cluster_transport::{Consumer, Provider};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let provider = Provider::builder().host("127.0.0.1").port(0).auth_parameter("key", "SECRET_KEY").bind().await?;
//! # let port = provider.port();
//! let consumer = Consumer::builder()
//!     .host("127.0.0.1")
//!     .port(port)
//!     .parameter("key", "SECRET_KEY")
//!     .parameter("role", "worker") // metadata the provider sees
//!     .on_message(|message| println!("provider sent {message:?}"))
//!     .build();
//! consumer.connect().await?;
//! consumer.send("CONSUMER_READY")?;
//! consumer.shutdown().await;
//! # Ok(()) }
//! ```

mod buffer;
mod hosts;
mod session;
mod upgrade;

use buffer::ReconnectBuffer;

use crate::error::{ConnectError, ConnectErrorKind, SendError, SendErrorKind};
use crate::event::ConsumerEvent;
use crate::event::{fire, Callback, DebugFn, ErrorFn, EventStream, Events, ListenerSet};
use crate::message::{is_reserved, CloseInfo, Message, MessageRef};
use crate::options::{Backoff, ConsumerOptions};
use crate::protocol::{self, CloseMode, CloseRequest, Outbox, Overflow, Role};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a consumer is in its life: [`Consumer::state`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConsumerState {
    /// Built, `connect()` not called yet.
    Idle,
    /// Connecting for the first time, or again after a drop.
    Connecting,
    /// Connected to the provider.
    Connected,
    /// Closed for good, with the reason.
    Closed(ConnectError),
}

type OpenFn = dyn Fn() + Send + Sync;
type MessageFn = dyn for<'a> Fn(MessageRef<'a>) + Send + Sync;
type DisconnectFn = dyn Fn(&CloseInfo) + Send + Sync;

#[derive(Default, Clone)]
struct ConsumerListeners {
    open: Vec<Callback<OpenFn>>,
    message: Vec<Callback<MessageFn>>,
    disconnect: Vec<Callback<DisconnectFn>>,
    close: Vec<Callback<OpenFn>>,
    error: Option<Arc<ErrorFn>>,
    debug: Option<Arc<DebugFn>>,
}

struct ConsumerShared {
    options: ConsumerOptions,
    listeners: ListenerSet<ConsumerListeners>,
    events: Events<ConsumerEvent>,
    status: watch::Sender<Status>,
    /// What `send` queued for the current connection (between connections: closed, so
    /// sends go to `buffer`).
    outbox: Mutex<Outbox>,
    /// What `send` kept between connections; only ever locked under `outbox`.
    buffer: Mutex<ReconnectBuffer>,
    in_flight: AtomicBool,
    heartbeat_duration: AtomicU64,
    last_heartbeat: AtomicU64,
    started: AtomicBool,
    stop: CancellationToken,
    tracker: TaskTracker,
}

/// The state plus how many times the consumer has connected, so a waiter cannot miss a
/// connection that opened and dropped before it looked.
#[derive(Debug)]
struct Status {
    state: ConsumerState,
    opens: u64,
    /// The provider of the current (or last) connection, `host:port`.
    host: Option<String>,
}

impl ConsumerShared {
    fn debug(&self, message: impl FnOnce() -> String) {
        if let Some(log) = &self.listeners.get().debug {
            log(&message());
        }
    }

    fn error(&self, error: &(dyn std::error::Error + 'static)) {
        if let Some(handler) = &self.listeners.get().error {
            handler(error);
        }
    }

    /// Delivers an event to callbacks and streams; never waits (see [`EventStream`]).
    fn emit(&self, event: ConsumerEvent) {
        let listeners = self.listeners.get();
        let panicked = match &event {
            ConsumerEvent::Open => fire(&listeners.open, |f| f()),
            ConsumerEvent::Message(m) => fire(&listeners.message, |f| f(m.as_ref())),
            ConsumerEvent::Disconnect(info) => fire(&listeners.disconnect, |f| f(info)),
            ConsumerEvent::Close => fire(&listeners.close, |f| f()),
            ConsumerEvent::Lagged(_) => false,
        };
        if panicked {
            tracing::error!(event = %event, "consumer callback panicked");
        }
        self.events.emit(event);
    }

    /// Delivers a borrowed message, copying it only when a stream wants it.
    fn emit_message(&self, listeners: &ConsumerListeners, message: MessageRef<'_>) {
        if fire(&listeners.message, |f| f(message)) {
            tracing::error!("consumer message callback panicked");
        }
        if self.events.is_watched() {
            self.events
                .emit(ConsumerEvent::Message(message.to_owned_message()));
        }
    }

    /// Connected to `endpoint`.
    fn set_connected(&self, endpoint: &hosts::Endpoint) {
        self.status.send_modify(|status| {
            status.opens += 1;
            status.state = ConsumerState::Connected;
            status.host = Some(endpoint.to_string());
        });
    }

    fn set_state(&self, state: ConsumerState) {
        self.status.send_modify(|status| status.state = state);
    }

    /// The outbox of a connection that is not (or no longer) there: refuses every send.
    fn closed_outbox(&self) -> Outbox {
        let mut outbox = Outbox::new(
            Role::Client,
            Overflow::Refuse,
            self.options.max_backpressure,
            None,
        );
        outbox.set_closing();
        outbox
    }
}

/// Builds a [`Consumer`]: options, callbacks, then [`build`](Self::build) or
/// [`connect`](Self::connect).
#[must_use]
pub struct ConsumerBuilder {
    options: ConsumerOptions,
    listeners: ConsumerListeners,
}

impl fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    /// Starts from options loaded elsewhere (a config file).
    pub fn from_options(options: ConsumerOptions) -> Self {
        Self {
            options,
            listeners: ConsumerListeners::default(),
        }
    }

    /// Host or IP of the provider. Default: `127.0.0.1`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.options.host = host.into();
        self
    }

    /// Port of the provider, and of each [`hosts`](Self::hosts) entry that names none.
    /// Default: 8080.
    pub fn port(mut self, port: u16) -> Self {
        self.options.port = port;
        self
    }

    /// Several providers to fail over between, each `host`, `host:port`, `[v6]` or
    /// `[v6]:port`, tried in this order (see [Failover](Consumer#failover));
    /// replaces [`host`](Self::host). An entry that cannot be read fails the connect
    /// with [`InvalidOptions`](ConnectErrorKind::InvalidOptions).
    ///
    /// ```
    /// # use cluster_transport::Consumer;
    /// let builder = Consumer::builder().hosts(["hub-a:8080", "hub-b:8080", "[::1]:8081"]);
    /// ```
    pub fn hosts<I>(mut self, hosts: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.options.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps up to `messages` messages and `bytes` bytes sent while reconnecting (each
    /// message counts its payload plus 14 bytes; `bytes` is capped at
    /// `max_backpressure`) and sends them first, in order, on the next connection.
    /// Default: `(0, 0)`, nothing kept: such sends are refused with
    /// [`NotConnected`](SendErrorKind::NotConnected), as the seed does. See
    /// [Failover](Consumer#failover).
    pub fn reconnect_buffer(mut self, messages: usize, bytes: usize) -> Self {
        self.options.reconnect.buffer_messages = messages;
        self.options.reconnect.buffer_bytes = bytes;
        self
    }

    /// Path of the provider's websocket route. Default: `/connect`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.options.path = path.into();
        self
    }

    /// Adds a URL parameter (an auth value or metadata).
    pub fn parameter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.parameters.insert(key.into(), value.into());
        self
    }

    /// Connects with TLS (`wss://`), verifying the provider's certificate against the
    /// system's root certificates (or the [`ca_file`](Self::ca_file)). The seed's `ssl`.
    /// Default: false.
    ///
    /// A certificate that cannot be verified fails the connect with
    /// [`ConnectErrorKind::Tls`], which is never retried.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn ssl(mut self, ssl: bool) -> Self {
        self.options.ssl = ssl;
        self
    }

    /// Whether to offer permessage-deflate (default: true, as the original's consumer).
    /// Messages are compressed only when the provider's compressor accepts the offer.
    pub fn compression(mut self, offer: bool) -> Self {
        self.options.compression = offer;
        self
    }

    /// Trusts the CA certificates in this PEM file instead of the system's roots (a
    /// private CA, or a self-signed provider certificate), and turns [`ssl`](Self::ssl) on.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.options.ca = Some(path.into());
        self.options.ssl = true;
        self
    }

    /// Wait before each reconnect attempt with [`Backoff::Fixed`]; the first ceiling
    /// with [`Backoff::Exponential`]. Default: 1 s.
    pub fn reconnect_interval(mut self, interval: Duration) -> Self {
        self.options.reconnect.interval = interval;
        self
    }

    /// How the wait before each reconnect attempt grows. Default: [`Backoff::Fixed`], as
    /// the seed; [`Backoff::Exponential`] spreads a crowd of consumers out when their
    /// provider restarts.
    ///
    /// ```
    /// # use cluster_transport::{Backoff, Consumer};
    /// # use std::time::Duration;
    /// let builder = Consumer::builder()
    ///     .reconnect_backoff(Backoff::Exponential)
    ///     .reconnect_interval(Duration::from_millis(500))
    ///     .max_reconnect_interval(Duration::from_secs(30));
    /// ```
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.options.reconnect.backoff = backoff;
        self
    }

    /// The longest wait before a reconnect attempt with [`Backoff::Exponential`].
    /// Default: 30 s.
    pub fn max_reconnect_interval(mut self, max: Duration) -> Self {
        self.options.reconnect.max_interval = max;
        self
    }

    /// Failed attempts in a row before closing for good; with several
    /// [`hosts`](Self::hosts), failed rounds (each host tried once). Default: 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.reconnect.max_attempts = attempts;
        self
    }

    /// Time one connect attempt may take. Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Largest message, inclusive, either way: `send` refuses a larger one, and a larger
    /// one from the provider closes the connection with 1009. Default: 32768.
    pub fn max_payload_length(mut self, bytes: usize) -> Self {
        self.options.max_payload_length = bytes;
        self
    }

    /// Most bytes queued for sending. Default: 1 MiB.
    pub fn max_backpressure(mut self, bytes: usize) -> Self {
        self.options.max_backpressure = bytes;
        self
    }

    /// Events each [`Consumer::events`] receiver holds before it loses its oldest (see
    /// [`EventStream`]). Default: 1024.
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.options.event_capacity = events;
        self
    }

    /// Calls `f` on every (re)connect.
    pub fn on_open(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.listeners.open.push(Callback::on(Arc::new(f)));
        self
    }

    /// Calls `f` for every message from the provider.
    pub fn on_message(
        mut self,
        f: impl for<'a> Fn(MessageRef<'a>) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.message.push(Callback::on(Arc::new(f)));
        self
    }

    /// Calls `f` on every drop and every failed attempt.
    pub fn on_disconnect(mut self, f: impl Fn(&CloseInfo) + Send + Sync + 'static) -> Self {
        self.listeners.disconnect.push(Callback::on(Arc::new(f)));
        self
    }

    /// Calls `f` once the consumer closed for good.
    pub fn on_close(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.listeners.close.push(Callback::on(Arc::new(f)));
        self
    }

    /// The seed's `set_error_handler`.
    pub fn error_handler(
        mut self,
        f: impl Fn(&(dyn std::error::Error + 'static)) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.error = Some(Arc::new(f));
        self
    }

    /// The seed's `set_debug_logger`.
    pub fn debug_logger(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.listeners.debug = Some(Arc::new(f));
        self
    }

    /// Builds the consumer without connecting; call [`Consumer::connect`] next.
    pub fn build(self) -> Consumer {
        let (status, _) = watch::channel(Status {
            state: ConsumerState::Idle,
            opens: 0,
            host: None,
        });
        let buffer = Mutex::new(ReconnectBuffer::new(&self.options));
        let event_capacity = self.options.event_capacity;
        let shared = ConsumerShared {
            options: self.options,
            listeners: ListenerSet::new(self.listeners),
            events: Events::new(event_capacity, ConsumerEvent::Lagged),
            status,
            outbox: Mutex::new(Outbox::new(Role::Client, Overflow::Refuse, 0, None)),
            buffer,
            in_flight: AtomicBool::new(false),
            heartbeat_duration: AtomicU64::new(0),
            last_heartbeat: AtomicU64::new(0),
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        *protocol::lock(&shared.outbox) = shared.closed_outbox();
        Consumer {
            inner: Arc::new(ConsumerInner {
                shared: Arc::new(shared),
            }),
        }
    }

    /// Builds the consumer and connects; see [`Consumer::connect`].
    ///
    /// # Errors
    /// As [`Consumer::connect`].
    pub async fn connect(self) -> Result<Consumer, ConnectError> {
        let consumer = self.build();
        consumer.connect().await?;
        Ok(consumer)
    }
}

/// A consumer of a provider (or of one of several, see [Failover](#failover)). Cheap to
/// clone; destroyed when the last clone is dropped.
///
/// # Failover
///
/// With [`hosts`](ConsumerBuilder::hosts) the consumer knows several providers. It
/// connects to the first that answers, trying them in the order given, and when its
/// provider goes away it moves on to the next one in the list (wrapping around). The
/// reconnect policy's wait comes after a drop and after each round in which every host
/// failed, never between the hosts of one round; `max_attempts` counts failed rounds.
/// The order is the one you give, so a primary comes first; to spread a crowd of
/// consumers over the providers, give each one the list rotated.
///
/// Messages sent while the consumer reconnects are refused with
/// [`NotConnected`](SendErrorKind::NotConnected) by default, as the original does: the
/// caller learns at once that a message did not go, and nothing piles up unseen. With
/// [`reconnect_buffer`](ConsumerBuilder::reconnect_buffer) they are kept instead, bounded
/// in messages and bytes, and go out first on the next connection, in the order sent,
/// before anything sent after it (sends before the first connection are kept the same
/// way); past the bounds, `send` refuses with
/// [`BufferFull`](SendErrorKind::BufferFull). They are sent at most once: a message the
/// dying connection had queued but the provider never read is lost with it, as are the
/// buffered ones if the consumer closes for good.
///
/// ```
/// use cluster_transport::{Consumer, ConsumerEvent, Provider};
/// use std::time::Duration;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let first = Provider::builder().host("127.0.0.1").port(0).bind().await?;
/// let second = Provider::builder().host("127.0.0.1").port(0).bind().await?;
/// let consumer = Consumer::builder()
///     .hosts([format!("127.0.0.1:{}", first.port()), format!("127.0.0.1:{}", second.port())])
///     .reconnect_interval(Duration::from_millis(50))
///     .reconnect_buffer(1000, 256 * 1024)
///     .build();
/// consumer.connect().await?;
/// assert_eq!(consumer.connected_host(), Some(format!("127.0.0.1:{}", first.port())));
///
/// let mut events = consumer.events();
/// first.shutdown().await;
/// while !matches!(events.recv().await, Some(ConsumerEvent::Disconnect(_))) {}
/// consumer.send("kept while reconnecting, sent first on the next connection")?;
/// consumer.ready().await?;
/// assert_eq!(consumer.connected_host(), Some(format!("127.0.0.1:{}", second.port())));
/// # consumer.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<ConsumerInner>,
}

struct ConsumerInner {
    shared: Arc<ConsumerShared>,
}

impl Drop for ConsumerInner {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl Consumer {
    /// A builder with the seed's defaults.
    pub fn builder() -> ConsumerBuilder {
        ConsumerBuilder::from_options(ConsumerOptions::default())
    }

    fn shared(&self) -> &Arc<ConsumerShared> {
        &self.inner.shared
    }

    /// The options this consumer runs with.
    pub fn options(&self) -> &ConsumerOptions {
        &self.shared().options
    }

    /// Starts the connection cycle (once; later calls just wait) and resolves once
    /// connected. Failed attempts are retried per the reconnect policy.
    ///
    /// # Errors
    /// [`Rejected`](ConnectErrorKind::Rejected) at once on HTTP 401/403, never retried;
    /// [`Tls`](ConnectErrorKind::Tls) at once when the provider's certificate cannot be
    /// verified (or the provider does not speak TLS, or the CA file is unusable), never
    /// retried;
    /// [`MaxAttempts`](ConnectErrorKind::MaxAttempts) when every attempt failed;
    /// [`Destroyed`](ConnectErrorKind::Destroyed) if destroyed meanwhile.
    pub async fn connect(&self) -> Result<(), ConnectError> {
        let shared = self.shared();
        let opens_before = shared.status.borrow().opens;
        if !shared.started.swap(true, Ordering::AcqRel) {
            shared.set_state(ConsumerState::Connecting);
            tracing::debug!(server.host = %shared.options.host, server.port = shared.options.port, "consumer starting");
            shared.tracker.spawn(session::run(Arc::clone(shared)));
            shared.tracker.close();
        } else if self.is_connected() {
            return Ok(());
        }
        self.wait_for_open(opens_before).await
    }

    /// Resolves when connected (at once if connected now); fails if the consumer closed.
    ///
    /// # Errors
    /// The reason the consumer closed, as in [`connect`](Self::connect).
    pub async fn ready(&self) -> Result<(), ConnectError> {
        let opens = {
            let status = self.shared().status.borrow();
            if matches!(status.state, ConsumerState::Connected) {
                return Ok(());
            }
            status.opens
        };
        self.wait_for_open(opens).await
    }

    /// Waits until the consumer has connected more than `opens` times, or closed.
    async fn wait_for_open(&self, opens: u64) -> Result<(), ConnectError> {
        let mut status = self.shared().status.subscribe();
        loop {
            {
                let now = status.borrow_and_update();
                if now.opens > opens {
                    return Ok(());
                }
                if let ConsumerState::Closed(error) = &now.state {
                    return Err(error.clone());
                }
            }
            if status.changed().await.is_err() {
                return Err(ConnectError::new(ConnectErrorKind::Destroyed));
            }
        }
    }

    /// Queues a message for the provider; while reconnecting, keeps it for the next
    /// connection if a [`reconnect_buffer`](ConsumerBuilder::reconnect_buffer) is set.
    ///
    /// # Errors
    /// [`NotConnected`](SendErrorKind::NotConnected) while not connected and no reconnect
    /// buffer is set, or once closed for good; [`BufferFull`](SendErrorKind::BufferFull)
    /// while reconnecting with the reconnect buffer full; [`Reserved`](SendErrorKind::Reserved) for `PING`, `PONG` and
    /// `PROVIDER_HEARTBEAT|…`; [`PayloadTooLarge`](SendErrorKind::PayloadTooLarge) above
    /// `max_payload_length`; [`Backpressure`](SendErrorKind::Backpressure) when more than
    /// `max_backpressure` bytes are queued (the message is refused, the connection stays).
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let message = message.into();
        if let Some(text) = message.as_text() {
            if is_reserved(text) {
                return Err(SendError::new(SendErrorKind::Reserved));
            }
        }
        let shared = self.shared();
        if message.len() > shared.options.max_payload_length {
            return Err(SendError::new(SendErrorKind::PayloadTooLarge));
        }
        protocol::update(&shared.outbox, |outbox| {
            if !outbox.is_closing() {
                return outbox.push_message(message.as_ref());
            }
            // Between connections (or while this one closes): kept for the next one,
            // unless destroyed. Under the outbox lock, see `buffer`.
            if shared.stop.is_cancelled() {
                return Err(SendError::new(SendErrorKind::NotConnected));
            }
            buffer::lock(&shared.buffer).push(message.as_ref())
        })
    }

    /// The provider of the current connection, as `host:port` (`[v6]:port` for IPv6);
    /// `None` while not connected.
    pub fn connected_host(&self) -> Option<String> {
        let status = self.shared().status.borrow();
        match status.state {
            ConsumerState::Connected => status.host.clone(),
            _ => None,
        }
    }

    /// Whether a connect attempt is under way (the seed's `in_flight`).
    pub fn in_flight(&self) -> bool {
        self.shared().in_flight.load(Ordering::Relaxed)
    }

    /// Whether connected to the provider now (the seed's `connected`).
    pub fn is_connected(&self) -> bool {
        matches!(
            self.shared().status.borrow().state,
            ConsumerState::Connected
        )
    }

    /// The state now.
    pub fn state(&self) -> ConsumerState {
        self.shared().status.borrow().state.clone()
    }

    /// The heartbeat interval the provider announced (`PROVIDER_HEARTBEAT|ms`).
    pub fn heartbeat_duration(&self) -> Option<Duration> {
        match self.shared().heartbeat_duration.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Longest silence allowed between heartbeat `PING`s: twice the duration.
    pub fn heartbeat_cutoff(&self) -> Option<Duration> {
        // Saturating: the duration is whatever number the provider sent.
        self.heartbeat_duration().map(|d| d.saturating_mul(2))
    }

    /// When the last `PING` arrived, in ms since the Unix epoch (0: none yet).
    pub fn last_heartbeat(&self) -> u64 {
        self.shared().last_heartbeat.load(Ordering::Relaxed)
    }

    /// A bounded receiver of every event from now on. A receiver that falls behind never
    /// holds the connection up: it loses its oldest events and is told how many
    /// ([`ConsumerEvent::Lagged`]); see [`EventStream`].
    pub fn events(&self) -> EventStream<ConsumerEvent> {
        self.shared().events.subscribe()
    }

    /// Calls `f` on every (re)connect from now on.
    pub fn on_open(&self, f: impl Fn() + Send + Sync + 'static) {
        self.shared()
            .listeners
            .update(|l| l.open.push(Callback::on(Arc::new(f))));
    }

    /// Calls `f` on the next (re)connect only.
    pub fn once_open(&self, f: impl Fn() + Send + Sync + 'static) {
        self.shared()
            .listeners
            .update(|l| l.open.push(Callback::once(Arc::new(f))));
    }

    /// Calls `f` for every message from now on.
    pub fn on_message(&self, f: impl for<'a> Fn(MessageRef<'a>) + Send + Sync + 'static) {
        self.shared()
            .listeners
            .update(|l| l.message.push(Callback::on(Arc::new(f))));
    }

    /// Calls `f` for the next message only.
    pub fn once_message(&self, f: impl for<'a> Fn(MessageRef<'a>) + Send + Sync + 'static) {
        self.shared()
            .listeners
            .update(|l| l.message.push(Callback::once(Arc::new(f))));
    }

    /// Calls `f` on every drop and failed attempt from now on.
    pub fn on_disconnect(&self, f: impl Fn(&CloseInfo) + Send + Sync + 'static) {
        self.shared()
            .listeners
            .update(|l| l.disconnect.push(Callback::on(Arc::new(f))));
    }

    /// Calls `f` on the next drop or failed attempt only.
    pub fn once_disconnect(&self, f: impl Fn(&CloseInfo) + Send + Sync + 'static) {
        self.shared()
            .listeners
            .update(|l| l.disconnect.push(Callback::once(Arc::new(f))));
    }

    /// Calls `f` when the consumer closes for good.
    pub fn on_close(&self, f: impl Fn() + Send + Sync + 'static) {
        self.shared()
            .listeners
            .update(|l| l.close.push(Callback::on(Arc::new(f))));
    }

    /// The seed's `set_error_handler`.
    pub fn set_error_handler(
        &self,
        f: impl Fn(&(dyn std::error::Error + 'static)) + Send + Sync + 'static,
    ) {
        self.shared()
            .listeners
            .update(|l| l.error = Some(Arc::new(f)));
    }

    /// The seed's `set_debug_logger`.
    pub fn set_debug_logger(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        self.shared()
            .listeners
            .update(|l| l.debug = Some(Arc::new(f)));
    }

    /// Closes the current connection with `code` and `reason` (say, because the provider
    /// sent something unreadable) and lets the reconnect policy connect again. Does
    /// nothing while not connected.
    pub fn reconnect(&self, code: u16, reason: &str) {
        let request = CloseRequest::new(code, reason, CloseMode::Graceful);
        protocol::update(&self.shared().outbox, |outbox| {
            outbox.request_close(request)
        });
    }

    /// Closes for good: sends a close frame (1000) if connected and stops reconnecting.
    /// Returns at once; [`shutdown`](Self::shutdown) also waits.
    pub fn destroy(&self) {
        self.shared().stop.cancel();
    }

    /// Closes for good and waits until the close handshake is done and the task ended:
    /// at most a couple of seconds, whatever the provider does (and whoever does not read
    /// the consumer's events).
    pub async fn shutdown(&self) {
        let shared = self.shared();
        shared.stop.cancel();
        if !shared.started.swap(true, Ordering::AcqRel) {
            shared.set_state(ConsumerState::Closed(ConnectError::new(
                ConnectErrorKind::Destroyed,
            )));
        }
        shared.tracker.close();
        shared.tracker.wait().await;
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("options", &self.shared().options)
            .field("state", &self.shared().status.borrow().state)
            .finish()
    }
}
