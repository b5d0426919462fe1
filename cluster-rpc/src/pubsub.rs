//! Pub/sub on subjects with `*` and `>` wildcards, routed by the hub.
//!
//! Members subscribe and publish; the hub routes every publication to every matching
//! subscription (its own and its members'). A member's subscriptions are dropped when it
//! disconnects and restored when it reconnects. A subscriber that stops reading is
//! governed by `max_backpressure` on its connection and never stalls the others; a local
//! [`Subscription`] that is not read fills its bounded queue, after which messages for it
//! are dropped and counted ([`Subscription::dropped`]).

mod subject;
mod trie;

pub(crate) use subject::check;
pub use subject::{is_reserved, is_valid_pattern, is_valid_subject, matches, MAX_TOKENS};
pub(crate) use trie::SubjectTrie;

use crate::codec::{Codec, CodecKind};
use crate::error::{RpcError, RpcErrorKind};
use futures_util::Stream;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Capacity of a subscription's queue.
pub(crate) const SUBSCRIPTION_CAPACITY: usize = 4096;

/// One publication as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published<T> {
    /// The subject it was published on.
    pub subject: String,
    /// The value.
    pub value: T,
}

/// Where a subscription's raw messages go.
#[derive(Clone)]
pub(crate) struct LocalSink {
    tx: mpsc::Sender<(String, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
}

impl LocalSink {
    /// Queues a message without waiting; a full queue drops it and counts. False when
    /// it was dropped.
    pub(crate) fn deliver(&self, subject: &str, payload: &[u8]) -> bool {
        let taken = self
            .tx
            .try_send((subject.to_owned(), payload.to_vec()))
            .is_ok();
        if !taken {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }
}

/// A typed stream of publications on subjects matching a pattern. Dropping it
/// unsubscribes.
pub struct Subscription<T> {
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    codec: CodecKind,
    dropped: Arc<AtomicU64>,
    _unsubscribe: Unsubscribe,
    _type: PhantomData<fn() -> T>,
}

/// Runs the unsubscribe action when dropped.
pub(crate) struct Unsubscribe(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Unsubscribe {
    pub(crate) fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(f)))
    }
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl<T: DeserializeOwned> Subscription<T> {
    pub(crate) fn new(codec: CodecKind, unsubscribe: Unsubscribe) -> (Self, LocalSink) {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = LocalSink {
            tx,
            dropped: Arc::clone(&dropped),
        };
        let sub = Self {
            rx,
            codec,
            dropped,
            _unsubscribe: unsubscribe,
            _type: PhantomData,
        };
        (sub, sink)
    }

    /// The next publication; `None` once the node is gone.
    ///
    /// A value that does not decode as `T` arrives as an error of kind [`RpcErrorKind::Decode`].
    pub async fn recv(&mut self) -> Option<Result<Published<T>, RpcError>> {
        let (subject, payload) = self.rx.recv().await?;
        Some(self.decode(subject, &payload))
    }

    fn decode(&self, subject: String, payload: &[u8]) -> Result<Published<T>, RpcError> {
        let value = self
            .codec
            .decode(payload)
            .map_err(|e| RpcError::new(RpcErrorKind::Decode, e.to_string()))?;
        Ok(Published { subject, value })
    }

    /// Messages dropped because this subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<T: DeserializeOwned> Stream for Subscription<T> {
    type Item = Result<Published<T>, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((subject, payload))) => {
                Poll::Ready(Some(self.decode(subject, &payload)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
