//! The Consumer: joins one provider, answers its heartbeat, reconnects on its own.
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

mod session;
mod socket;
mod upgrade;

use crate::deflate::MessageDeflater;
use crate::error::{ConnectError, ConnectErrorKind, SendError, SendErrorKind};
use crate::event::{Callback, ConsumerEvent, DebugFn, ErrorFn, EventStream};
use crate::frame::OpCode;
use crate::message::{is_reserved, CloseInfo, Message, MessageRef};
use crate::options::ConsumerOptions;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
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
    streams: Vec<mpsc::Sender<ConsumerEvent>>,
    error: Option<Arc<ErrorFn>>,
    debug: Option<Arc<DebugFn>>,
}

struct ConsumerShared {
    options: ConsumerOptions,
    listeners: RwLock<Arc<ConsumerListeners>>,
    /// Bumped on every listener change, so sessions can cache them.
    listeners_gen: AtomicU64,
    status: watch::Sender<Status>,
    outbox: Mutex<Outbox>,
    /// Wakes the session: something queued, or a reconnect asked for.
    outbox_ready: Notify,
    /// A close of the current connection someone asked for (then the policy reconnects).
    drop_request: Mutex<Option<CloseInfo>>,
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
}

/// What `send` queued for the session to write: frames already encoded (masked, and
/// compressed under this lock when permessage-deflate is on, so the compression context
/// follows the order frames go out in).
#[derive(Default)]
struct Outbox {
    frames: Vec<u8>,
    /// The current session's compressor, when negotiated.
    deflater: Option<MessageDeflater>,
    scratch: Vec<u8>,
}

impl ConsumerShared {
    fn listeners(&self) -> Arc<ConsumerListeners> {
        Arc::clone(&self.listeners.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The listeners and their generation, for a session to keep between messages.
    fn cached_listeners(&self) -> (Arc<ConsumerListeners>, u64) {
        let generation = self
            .listeners_gen
            .load(std::sync::atomic::Ordering::Acquire);
        (self.listeners(), generation)
    }

    /// Refreshes a session's cached listeners if they changed (no lock per message).
    fn refresh(&self, cached: &mut (Arc<ConsumerListeners>, u64)) {
        if self
            .listeners_gen
            .load(std::sync::atomic::Ordering::Acquire)
            != cached.1
        {
            *cached = self.cached_listeners();
        }
    }

    fn update_listeners(&self, change: impl FnOnce(&mut ConsumerListeners)) {
        let mut guard = self.listeners.write().unwrap_or_else(|p| p.into_inner());
        let mut next = ConsumerListeners::clone(&guard);
        next.streams.retain(|s| !s.is_closed());
        change(&mut next);
        *guard = Arc::new(next);
        self.listeners_gen
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn debug(&self, message: impl FnOnce() -> String) {
        if let Some(log) = &self.listeners().debug {
            log(&message());
        }
    }

    fn error(&self, error: &(dyn std::error::Error + 'static)) {
        if let Some(handler) = &self.listeners().error {
            handler(error);
        }
    }

    /// Delivers an event to callbacks and receivers; a full receiver makes this wait.
    async fn emit(&self, event: ConsumerEvent) {
        let listeners = self.listeners();
        match &event {
            ConsumerEvent::Open => fire(&listeners.open, |f| f()),
            ConsumerEvent::Message(m) => fire(&listeners.message, |f| f(m.as_ref())),
            ConsumerEvent::Disconnect(info) => fire(&listeners.disconnect, |f| f(info)),
            ConsumerEvent::Close => fire(&listeners.close, |f| f()),
        }
        for stream in &listeners.streams {
            let _ = stream.send(event.clone()).await;
        }
    }

    /// Delivers a borrowed message without copying it unless a receiver wants it.
    async fn emit_message(&self, listeners: &ConsumerListeners, message: MessageRef<'_>) {
        fire(&listeners.message, |f| f(message));
        if !listeners.streams.is_empty() {
            let event = ConsumerEvent::Message(message.to_owned_message());
            for stream in &listeners.streams {
                let _ = stream.send(event.clone()).await;
            }
        }
    }

    fn set_state(&self, state: ConsumerState) {
        self.status.send_modify(|status| {
            if matches!(state, ConsumerState::Connected) {
                status.opens += 1;
            }
            status.state = state;
        });
    }
}

fn fire<F: ?Sized>(callbacks: &[Callback<F>], call: impl Fn(&F)) {
    for callback in callbacks {
        if let Some(f) = callback.take() {
            call(f);
        }
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

    /// Host or IP of the provider.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.options.host = host.into();
        self
    }

    /// Port of the provider. Default: 8080.
    pub fn port(mut self, port: u16) -> Self {
        self.options.port = port;
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
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.ca = Some(path.into());
        self.options.ssl = true;
        self
    }

    /// Wait before each reconnect attempt. Default: 1 s.
    pub fn reconnect_interval(mut self, interval: Duration) -> Self {
        self.options.reconnect.interval = interval;
        self
    }

    /// Failed attempts in a row before closing for good. Default: 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.reconnect.max_attempts = attempts;
        self
    }

    /// Time one connect attempt may take. Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Largest message `send` accepts. Default: 32768.
    pub fn max_payload_length(mut self, bytes: usize) -> Self {
        self.options.max_payload_length = bytes;
        self
    }

    /// Most bytes queued for sending. Default: 1 MiB.
    pub fn max_backpressure(mut self, bytes: usize) -> Self {
        self.options.max_backpressure = bytes;
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
        });
        Consumer {
            inner: Arc::new(ConsumerInner {
                shared: Arc::new(ConsumerShared {
                    options: self.options,
                    listeners: RwLock::new(Arc::new(self.listeners)),
                    listeners_gen: AtomicU64::new(0),
                    status,
                    outbox: Mutex::new(Outbox::default()),
                    outbox_ready: Notify::new(),
                    drop_request: Mutex::new(None),
                    in_flight: AtomicBool::new(false),
                    heartbeat_duration: AtomicU64::new(0),
                    last_heartbeat: AtomicU64::new(0),
                    started: AtomicBool::new(false),
                    stop: CancellationToken::new(),
                    tracker: TaskTracker::new(),
                }),
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

/// A consumer of one provider. Cheap to clone; destroyed when the last clone is dropped.
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

    /// Queues a message for the provider.
    ///
    /// # Errors
    /// [`NotConnected`](SendErrorKind::NotConnected) while not connected (messages are not
    /// kept across reconnects); [`Reserved`](SendErrorKind::Reserved) for `PING`, `PONG` and
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
        if !self.is_connected() {
            return Err(SendError::new(SendErrorKind::NotConnected));
        }
        let mut outbox = shared.outbox();
        if outbox.frames.len() + message.len() > shared.options.max_backpressure {
            return Err(SendError::new(SendErrorKind::Backpressure));
        }
        let (opcode, payload) = match &message {
            Message::Text(t) => (OpCode::Text, t.as_bytes()),
            Message::Binary(b) => (OpCode::Binary, &b[..]),
        };
        let Outbox {
            frames,
            deflater,
            scratch,
        } = &mut *outbox;
        socket::encode_message(opcode, payload, deflater.as_mut(), scratch, frames);
        drop(outbox);
        shared.outbox_ready.notify_one();
        Ok(())
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

    /// A bounded receiver of every event from now on.
    pub fn events(&self) -> EventStream<ConsumerEvent> {
        let (tx, rx) = mpsc::channel(self.shared().options.event_capacity);
        self.shared().update_listeners(|l| l.streams.push(tx));
        EventStream::new(rx)
    }

    /// Calls `f` on every (re)connect from now on.
    pub fn on_open(&self, f: impl Fn() + Send + Sync + 'static) {
        self.shared()
            .update_listeners(|l| l.open.push(Callback::on(Arc::new(f))));
    }

    /// Calls `f` on the next (re)connect only.
    pub fn once_open(&self, f: impl Fn() + Send + Sync + 'static) {
        self.shared()
            .update_listeners(|l| l.open.push(Callback::once(Arc::new(f))));
    }

    /// Calls `f` for every message from now on.
    pub fn on_message(&self, f: impl for<'a> Fn(MessageRef<'a>) + Send + Sync + 'static) {
        self.shared()
            .update_listeners(|l| l.message.push(Callback::on(Arc::new(f))));
    }

    /// Calls `f` for the next message only.
    pub fn once_message(&self, f: impl for<'a> Fn(MessageRef<'a>) + Send + Sync + 'static) {
        self.shared()
            .update_listeners(|l| l.message.push(Callback::once(Arc::new(f))));
    }

    /// Calls `f` on every drop and failed attempt from now on.
    pub fn on_disconnect(&self, f: impl Fn(&CloseInfo) + Send + Sync + 'static) {
        self.shared()
            .update_listeners(|l| l.disconnect.push(Callback::on(Arc::new(f))));
    }

    /// Calls `f` on the next drop or failed attempt only.
    pub fn once_disconnect(&self, f: impl Fn(&CloseInfo) + Send + Sync + 'static) {
        self.shared()
            .update_listeners(|l| l.disconnect.push(Callback::once(Arc::new(f))));
    }

    /// Calls `f` when the consumer closes for good.
    pub fn on_close(&self, f: impl Fn() + Send + Sync + 'static) {
        self.shared()
            .update_listeners(|l| l.close.push(Callback::on(Arc::new(f))));
    }

    /// The seed's `set_error_handler`.
    pub fn set_error_handler(
        &self,
        f: impl Fn(&(dyn std::error::Error + 'static)) + Send + Sync + 'static,
    ) {
        self.shared()
            .update_listeners(|l| l.error = Some(Arc::new(f)));
    }

    /// The seed's `set_debug_logger`.
    pub fn set_debug_logger(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        self.shared()
            .update_listeners(|l| l.debug = Some(Arc::new(f)));
    }

    /// Closes the current connection with `code` and `reason` (say, because the provider
    /// sent something unreadable) and lets the reconnect policy connect again.
    pub fn reconnect(&self, code: u16, reason: &str) {
        let shared = self.shared();
        *shared
            .drop_request
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(CloseInfo::new(code, reason));
        shared.outbox_ready.notify_one();
    }

    /// Closes for good: sends a close frame (1000) if connected and stops reconnecting.
    /// Returns at once; [`shutdown`](Self::shutdown) also waits.
    pub fn destroy(&self) {
        self.shared().stop.cancel();
    }

    /// Closes for good and waits until the close handshake is done and the task ended.
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
