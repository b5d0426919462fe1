//! Broadcast outcomes: every member's result, keyed by connection id, as they arrive or
//! collected.

use crate::error::RpcError;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use uuid::Uuid;

/// The calls of one broadcast, in flight. A [`Stream`] of `(connection id, outcome)` in the
/// order they finish; [`collect`](Self::collect) waits for all of them. Dropping it
/// cancels the calls still running.
#[must_use = "a broadcast does nothing unless polled"]
pub struct Broadcast<T> {
    calls: FuturesUnordered<BoxFuture<'static, (Uuid, Result<T, RpcError>)>>,
    total: usize,
}

impl<T: Send + 'static> Broadcast<T> {
    pub(crate) fn new<F>(calls: impl IntoIterator<Item = (Uuid, F)>) -> Self
    where
        F: Future<Output = Result<T, RpcError>> + Send + 'static,
    {
        let calls: FuturesUnordered<_> = calls
            .into_iter()
            .map(|(id, call)| call.map(move |outcome| (id, outcome)).boxed())
            .collect();
        let total = calls.len();
        Self { calls, total }
    }

    /// How many members were called.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether no member was called.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Waits for every outcome.
    pub async fn collect(self) -> HashMap<Uuid, Result<T, RpcError>> {
        StreamExt::collect(self).await
    }
}

impl<T> Stream for Broadcast<T> {
    type Item = (Uuid, Result<T, RpcError>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.calls.poll_next_unpin(cx)
    }
}

/// The outcome of a broadcast across a cluster ([`Hub::broadcast_cluster`]): every
/// member's outcome that arrived, and which hubs did not answer. A partial answer says
/// so: [`is_complete`](Self::is_complete) is false and [`missing`](Self::missing) names
/// the hubs whose members' outcomes are unknown.
///
/// [`Hub::broadcast_cluster`]: crate::Hub::broadcast_cluster
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
#[derive(Debug)]
#[non_exhaustive]
pub struct Gathered<T> {
    /// Each member's outcome by connection id, this hub's members and the other hubs'.
    pub outcomes: HashMap<Uuid, Result<T, RpcError>>,
    /// The hubs that answered, by name (this hub first).
    pub answered: Vec<String>,
    /// The hubs in the cluster that did not answer by the deadline, by name.
    pub missing: Vec<String>,
}

#[cfg(feature = "nats")]
impl<T> Gathered<T> {
    /// Whether every hub of the cluster answered.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

impl<T> fmt::Debug for Broadcast<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcast")
            .field("total", &self.total)
            .field("pending", &self.calls.len())
            .finish()
    }
}
