//! Pub/sub across hubs. Every publication at a hub goes to NATS once, on
//! `{prefix}.ps.{subject}`; a hub holds a NATS subscription for each distinct pattern its
//! members (or the hub itself) subscribe to ([`interest`](super::interest)), so it never
//! receives what nobody there wants.
//!
//! Exactly once per subscription: the publishing hub delivers to its own subscriptions
//! and NATS does not echo the publication back to it (`no_echo`); another hub receives
//! the publication once per matching pattern it holds, and delivers each copy only to the
//! subscriptions of exactly that pattern, so overlapping patterns (`a.*` and `a.>`) do
//! not double-deliver.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// One publication on its way to NATS.
struct Outgoing {
    subject: String,
    payload: Bytes,
}

/// The queue of publications from this hub to NATS, bounded in bytes.
pub(crate) struct Outbox {
    /// `{prefix}.ps.`
    subject_prefix: String,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Bytes queued, bounded by `max_pending`.
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    dropped: AtomicU64,
}

impl Outbox {
    /// The queue, and the task that empties it into `client` (to spawn).
    pub(crate) fn new(
        client: async_nats::Client,
        subject_prefix: String,
        max_pending: usize,
    ) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let task = publish(client, rx, Arc::clone(&pending));
        let outbox = Self {
            subject_prefix,
            tx,
            pending,
            max_pending,
            dropped: AtomicU64::new(0),
        };
        (outbox, task)
    }

    /// Queues a publication for the other hubs; dropped (and counted) when the queue
    /// holds `max_pending_bytes` already.
    pub(crate) fn publish(&self, subject: &str, payload: &[u8]) {
        let size = self.subject_prefix.len() + subject.len() + payload.len();
        let queued = self.pending.fetch_add(size, Ordering::Relaxed);
        if queued.saturating_add(size) > self.max_pending {
            self.pending.fetch_sub(size, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut full = String::with_capacity(self.subject_prefix.len() + subject.len());
        full.push_str(&self.subject_prefix);
        full.push_str(subject);
        let sent = self.tx.send(Outgoing {
            subject: full,
            payload: Bytes::copy_from_slice(payload),
        });
        if sent.is_err() {
            self.pending.fetch_sub(size, Ordering::Relaxed);
        }
    }

    /// Publications dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Hands queued publications to the NATS client, in order.
async fn publish(
    client: async_nats::Client,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    pending: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        for Outgoing { subject, payload } in batch.drain(..) {
            let size = subject.len() + payload.len();
            if let Err(error) = client.publish(subject, payload).await {
                tracing::warn!(cause = %error, "publication to NATS dropped");
            }
            pending.fetch_sub(size, Ordering::Relaxed);
        }
    }
}
