//! Events, both ways: callbacks (`on_*` / `once_*`, as the seed's EventEmitter) and
//! bounded async receivers ([`EventStream`]). Both are fed from the same place, and
//! neither can stall a connection: callbacks run inline (a panic in one is caught and
//! logged), and a receiver that falls behind loses its oldest events instead of making
//! anyone wait.

use crate::connection::Connection;
use crate::message::{CloseInfo, Message, MessageRef};
use futures_util::Stream;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{ready, Context, Poll};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::ReusableBoxFuture;

/// What happens on a [`Provider`](crate::Provider).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ProviderEvent {
    /// A consumer connected and passed auth.
    Open(Connection),
    /// A consumer sent a message.
    Message(Connection, Message),
    /// A consumer's connection ended.
    Close(Connection, CloseInfo),
    /// This receiver fell behind and lost this many of its oldest events (see
    /// [`EventStream`]). Callbacks are never skipped.
    Lagged(u64),
}

/// What happens on a [`Consumer`](crate::Consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerEvent {
    /// Connected to the provider.
    Open,
    /// The provider sent a message.
    Message(Message),
    /// The connection dropped, or one connect attempt failed.
    Disconnect(CloseInfo),
    /// The consumer closed for good (destroyed, rejected, or out of reconnect attempts).
    Close,
    /// This receiver fell behind and lost this many of its oldest events (see
    /// [`EventStream`]). Callbacks are never skipped.
    Lagged(u64),
}

impl fmt::Display for ConsumerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsumerEvent::Open => f.write_str("open"),
            ConsumerEvent::Message(m) => write!(f, "message ({} bytes)", m.len()),
            ConsumerEvent::Disconnect(c) => write!(f, "disconnect ({} {})", c.code, c.reason),
            ConsumerEvent::Close => f.write_str("close"),
            ConsumerEvent::Lagged(n) => write!(f, "lagged ({n} events lost)"),
        }
    }
}

type Next<E> = (Result<E, RecvError>, broadcast::Receiver<E>);

/// A bounded receiver of events. Use [`recv`](Self::recv), or use it as a [`Stream`].
///
/// Receiving never holds anything up: the provider or consumer goes on reading its
/// sockets and answering heartbeats whether or not a receiver keeps up. Each receiver
/// holds up to `event_capacity` events it has not taken yet (the option of
/// [`ProviderOptions`](crate::ProviderOptions) and
/// [`ConsumerOptions`](crate::ConsumerOptions), rounded up to a power of two); when a new
/// event finds it full, its oldest event is dropped, and the receiver is told how many it
/// lost with a `Lagged(n)` event ([`ProviderEvent::Lagged`], [`ConsumerEvent::Lagged`])
/// before the events it still has, as tokio's `broadcast` does. Callbacks
/// (`on_message`, …) are called for every event regardless.
///
/// Drop the receiver to stop receiving; a dropped receiver costs nothing.
pub struct EventStream<E> {
    next: ReusableBoxFuture<'static, Next<E>>,
    lagged: fn(u64) -> E,
}

async fn next_event<E: Clone>(mut rx: broadcast::Receiver<E>) -> Next<E> {
    let result = rx.recv().await;
    (result, rx)
}

impl<E: Clone + Send + 'static> EventStream<E> {
    pub(crate) fn new(rx: broadcast::Receiver<E>, lagged: fn(u64) -> E) -> Self {
        Self {
            next: ReusableBoxFuture::new(next_event(rx)),
            lagged,
        }
    }

    /// The next event; `None` once the provider or consumer is gone.
    pub async fn recv(&mut self) -> Option<E> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<E>> {
        let (result, rx) = ready!(self.next.poll(cx));
        self.next.set(next_event(rx));
        Poll::Ready(match result {
            Ok(event) => Some(event),
            Err(RecvError::Lagged(n)) => Some((self.lagged)(n)),
            Err(RecvError::Closed) => None,
        })
    }
}

impl<E: Clone + Send + 'static> Stream for EventStream<E> {
    type Item = E;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<E>> {
        self.poll_recv(cx)
    }
}

impl<E> fmt::Debug for EventStream<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

/// The sending side of every [`EventStream`] of one provider or consumer, made with the
/// first stream: nothing is allocated for those who only use callbacks.
pub(crate) struct Events<E> {
    tx: OnceLock<broadcast::Sender<E>>,
    capacity: usize,
    lagged: fn(u64) -> E,
}

impl<E: Clone + Send + 'static> Events<E> {
    /// Streams of `capacity` events each; `lagged` makes the event that says how many
    /// a stream lost.
    pub(crate) fn new(capacity: usize, lagged: fn(u64) -> E) -> Self {
        Self {
            tx: OnceLock::new(),
            capacity: capacity.max(1),
            lagged,
        }
    }

    /// A new stream of every event from now on.
    pub(crate) fn subscribe(&self) -> EventStream<E> {
        let tx = self.tx.get_or_init(|| broadcast::channel(self.capacity).0);
        EventStream::new(tx.subscribe(), self.lagged)
    }

    /// Whether any stream was ever made (so an event is worth building).
    pub(crate) fn is_watched(&self) -> bool {
        self.tx.get().is_some()
    }

    /// Hands `event` to every stream, never waiting.
    pub(crate) fn emit(&self, event: E) {
        if let Some(tx) = self.tx.get() {
            // No stream left: the event is dropped, which is what nobody listening means.
            let _ = tx.send(event);
        }
    }
}

/// A callback that may be kept (`on`) or fired once (`once`).
pub(crate) struct Callback<F: ?Sized> {
    f: Arc<F>,
    once: Option<Arc<Mutex<bool>>>,
}

impl<F: ?Sized> Clone for Callback<F> {
    fn clone(&self) -> Self {
        Self {
            f: Arc::clone(&self.f),
            once: self.once.clone(),
        }
    }
}

impl<F: ?Sized> Callback<F> {
    pub(crate) fn on(f: Arc<F>) -> Self {
        Self { f, once: None }
    }

    pub(crate) fn once(f: Arc<F>) -> Self {
        Self {
            f,
            once: Some(Arc::new(Mutex::new(false))),
        }
    }

    /// The function to call now, or `None` for a `once` callback that already fired.
    pub(crate) fn take(&self) -> Option<&F> {
        match &self.once {
            None => Some(&self.f),
            Some(fired) => {
                let mut fired = fired.lock().unwrap_or_else(|p| p.into_inner());
                if *fired {
                    None
                } else {
                    *fired = true;
                    Some(&self.f)
                }
            }
        }
    }
}

/// Calls every callback in `callbacks` with `call`. A panicking callback is caught (and
/// the next one still called), so it can neither kill the task that runs the connection
/// nor skip its cleanup. Returns whether one panicked, for the caller to log.
pub(crate) fn fire<F: ?Sized>(callbacks: &[Callback<F>], call: impl Fn(&F)) -> bool {
    let mut panicked = false;
    for callback in callbacks {
        if let Some(f) = callback.take() {
            panicked |= catch_unwind(AssertUnwindSafe(|| call(f))).is_err();
        }
    }
    panicked
}

/// A set of listeners replaced whole on change (copy on write), so the tasks that call
/// them keep a copy and check one atomic per message instead of taking a lock.
pub(crate) struct ListenerSet<L> {
    current: RwLock<Arc<L>>,
    generation: AtomicU64,
}

/// A task's copy of a [`ListenerSet`] and the generation it was taken at.
pub(crate) type Cached<L> = (Arc<L>, u64);

impl<L: Clone> ListenerSet<L> {
    pub(crate) fn new(listeners: L) -> Self {
        Self {
            current: RwLock::new(Arc::new(listeners)),
            generation: AtomicU64::new(0),
        }
    }

    /// The listeners now.
    pub(crate) fn get(&self) -> Arc<L> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The listeners now, to keep between messages.
    pub(crate) fn cached(&self) -> Cached<L> {
        let generation = self.generation.load(Ordering::Acquire);
        (self.get(), generation)
    }

    /// Refreshes a task's copy if the listeners changed since.
    pub(crate) fn refresh(&self, cached: &mut Cached<L>) {
        if self.generation.load(Ordering::Acquire) != cached.1 {
            *cached = self.cached();
        }
    }

    /// Changes the listeners.
    pub(crate) fn update(&self, change: impl FnOnce(&mut L)) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut next = L::clone(&guard);
        change(&mut next);
        *guard = Arc::new(next);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

type OpenFn = dyn Fn(&Connection) + Send + Sync;
type MessageFn = dyn for<'a> Fn(&Connection, MessageRef<'a>) + Send + Sync;
type CloseFn = dyn Fn(&Connection, &CloseInfo) + Send + Sync;
/// An error handler, as the seed's `set_error_handler`.
pub(crate) type ErrorFn = dyn Fn(&(dyn std::error::Error + 'static)) + Send + Sync;
/// A debug logger, as the seed's `set_debug_logger`.
pub(crate) type DebugFn = dyn Fn(&str) + Send + Sync;

/// Every callback of a provider.
#[derive(Default, Clone)]
pub(crate) struct ProviderListeners {
    pub(crate) open: Vec<Callback<OpenFn>>,
    pub(crate) message: Vec<Callback<MessageFn>>,
    pub(crate) close: Vec<Callback<CloseFn>>,
    pub(crate) error: Option<Arc<ErrorFn>>,
    pub(crate) debug: Option<Arc<DebugFn>>,
}

impl ProviderListeners {
    pub(crate) fn debug(&self, message: impl FnOnce() -> String) {
        if let Some(log) = &self.debug {
            log(&message());
        }
    }

    pub(crate) fn error(&self, error: &(dyn std::error::Error + 'static)) {
        if let Some(handler) = &self.error {
            handler(error);
        }
    }

    pub(crate) fn add(&mut self, callback: ProviderCallback) {
        match callback {
            ProviderCallback::Open(c) => self.open.push(c),
            ProviderCallback::Message(c) => self.message.push(c),
            ProviderCallback::Close(c) => self.close.push(c),
            ProviderCallback::Error(f) => self.error = Some(f),
            ProviderCallback::Debug(f) => self.debug = Some(f),
        }
    }
}

/// Registers a provider callback; shared by the builder and the bound provider.
pub(crate) enum ProviderCallback {
    Open(Callback<OpenFn>),
    Message(Callback<MessageFn>),
    Close(Callback<CloseFn>),
    Error(Arc<ErrorFn>),
    Debug(Arc<DebugFn>),
}

/// Callback constructors, so the builder and the provider share one spelling.
pub(crate) fn open_callback<F>(f: F, once: bool) -> ProviderCallback
where
    F: Fn(&Connection) + Send + Sync + 'static,
{
    let f: Arc<OpenFn> = Arc::new(f);
    ProviderCallback::Open(if once {
        Callback::once(f)
    } else {
        Callback::on(f)
    })
}

pub(crate) fn message_callback<F>(f: F, once: bool) -> ProviderCallback
where
    F: for<'a> Fn(&Connection, MessageRef<'a>) + Send + Sync + 'static,
{
    let f: Arc<MessageFn> = Arc::new(f);
    ProviderCallback::Message(if once {
        Callback::once(f)
    } else {
        Callback::on(f)
    })
}

pub(crate) fn close_callback<F>(f: F, once: bool) -> ProviderCallback
where
    F: Fn(&Connection, &CloseInfo) + Send + Sync + 'static,
{
    let f: Arc<CloseFn> = Arc::new(f);
    ProviderCallback::Close(if once {
        Callback::once(f)
    } else {
        Callback::on(f)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_fires_once() {
        let f: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
        let once = Callback::once(Arc::clone(&f));
        assert!(once.take().is_some());
        assert!(once.take().is_none());
        let on = Callback::on(f);
        assert!(on.take().is_some());
        assert!(on.take().is_some());
    }

    #[test]
    fn a_panicking_callback_is_caught_and_the_next_still_runs() {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let callbacks: Vec<Callback<dyn Fn() + Send + Sync>> = vec![
            Callback::on(Arc::new(|| panic!("a user's bug"))),
            Callback::on(Arc::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            })),
        ];
        assert!(fire(&callbacks, |f| f()));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_lagging_stream_loses_the_oldest_and_is_told_how_many() {
        let events = Events::new(4, ConsumerEvent::Lagged);
        assert!(!events.is_watched());
        events.emit(ConsumerEvent::Open); // nobody listens yet: dropped
        let mut slow = events.subscribe();
        let mut fast = events.subscribe();
        for i in 0..10 {
            events.emit(ConsumerEvent::Message(Message::from(i.to_string())));
            assert_eq!(
                fast.recv().await,
                Some(ConsumerEvent::Message(Message::from(i.to_string())))
            );
        }
        assert_eq!(slow.recv().await, Some(ConsumerEvent::Lagged(6)));
        for i in 6..10 {
            assert_eq!(
                slow.recv().await,
                Some(ConsumerEvent::Message(Message::from(i.to_string())))
            );
        }
        drop(events);
        assert_eq!(slow.recv().await, None);
    }
}
