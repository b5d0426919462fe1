//! Events, both ways: callbacks (`on_*` / `once_*`, as the seed's EventEmitter) and
//! bounded async receivers ([`EventStream`]). Both are fed from the same place.

use crate::connection::Connection;
use crate::message::{CloseInfo, Message, MessageRef};
use futures_util::Stream;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

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
}

impl fmt::Display for ConsumerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsumerEvent::Open => f.write_str("open"),
            ConsumerEvent::Message(m) => write!(f, "message ({} bytes)", m.len()),
            ConsumerEvent::Disconnect(c) => write!(f, "disconnect ({} {})", c.code, c.reason),
            ConsumerEvent::Close => f.write_str("close"),
        }
    }
}

/// A bounded receiver of events. Use [`recv`](Self::recv) or it as a [`Stream`].
///
/// A full receiver pauses whoever produces its events (reading from that connection) until
/// there is room again: events are never dropped. Drop the receiver to stop receiving.
pub struct EventStream<E> {
    rx: mpsc::Receiver<E>,
}

impl<E> EventStream<E> {
    pub(crate) fn new(rx: mpsc::Receiver<E>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the source is gone.
    pub async fn recv(&mut self) -> Option<E> {
        self.rx.recv().await
    }
}

impl<E> Stream for EventStream<E> {
    type Item = E;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<E>> {
        self.rx.poll_recv(cx)
    }
}

impl<E> fmt::Debug for EventStream<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
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

type OpenFn = dyn Fn(&Connection) + Send + Sync;
type MessageFn = dyn for<'a> Fn(&Connection, MessageRef<'a>) + Send + Sync;
type CloseFn = dyn Fn(&Connection, &CloseInfo) + Send + Sync;
/// An error handler, as the seed's `set_error_handler`.
pub(crate) type ErrorFn = dyn Fn(&(dyn std::error::Error + 'static)) + Send + Sync;
/// A debug logger, as the seed's `set_debug_logger`.
pub(crate) type DebugFn = dyn Fn(&str) + Send + Sync;

/// Everything listening to a provider. Replaced whole on change (copy on write), so
/// connection tasks read it without a lock per message.
#[derive(Default, Clone)]
pub(crate) struct ProviderListeners {
    pub(crate) open: Vec<Callback<OpenFn>>,
    pub(crate) message: Vec<Callback<MessageFn>>,
    pub(crate) close: Vec<Callback<CloseFn>>,
    pub(crate) streams: Vec<mpsc::Sender<ProviderEvent>>,
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
}

/// Registers a provider callback; shared by the builder and the bound provider.
pub(crate) enum ProviderCallback {
    Open(Callback<OpenFn>),
    Message(Callback<MessageFn>),
    Close(Callback<CloseFn>),
    Error(Arc<ErrorFn>),
    Debug(Arc<DebugFn>),
}

impl ProviderListeners {
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
}
