//! What one provider counts about its traffic, cheaply enough for the hot path.
//!
//! Message and byte counts are kept per thread shard (its own cache lines), so counting
//! never takes a lock or a map lookup. A thread that owns a shard (the first [`OWNED`]
//! threads to count at once) adds with a relaxed load and store, not a locked
//! read-modify-write: it is the shard's only writer, and such an add costs a few cycles
//! where a `lock xadd` costs tens (a `perf` profile of W7's hub put 15% of its samples
//! on the two per send). Other threads share the last shard, with atomic adds. Readers
//! add the shards up. Connects, disconnects and TLS handshakes happen once per
//! connection and use plain atomics.
//!
//! [`ProviderStats`] is the public snapshot ([`Provider::stats`](crate::Provider::stats));
//! the metrics publisher turns the same numbers into metrics (see `metrics.rs`).

use crate::message::MessageRef;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Shards a thread can own (it alone writes to its shard in every provider, and in
/// cluster-rpc's call counters, which shard the same way).
const OWNED: usize = 8;
/// The owned shards and the one the other threads share.
pub const SHARDS: usize = OWNED + 1;

/// The kind of a message: the seed's text messages, or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text = 0,
    Binary = 1,
}

impl Kind {
    pub(crate) fn of(message: MessageRef<'_>) -> Self {
        match message {
            MessageRef::Text(_) => Kind::Text,
            MessageRef::Binary(_) => Kind::Binary,
        }
    }
}

/// Messages and their payload bytes.
#[derive(Default)]
struct Tally {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Tally {
    fn add(&self, owned: bool, messages: u64, bytes: u64) {
        add(&self.messages, owned, messages);
        add(&self.bytes, owned, bytes);
    }
}

/// Adds `n` to a counter of a shard: with a load and a store when this thread owns the
/// shard (nobody else writes to it), else atomically. Inline: cluster-rpc's call counters
/// add through it.
#[inline]
pub fn add(counter: &AtomicU64, owned: bool, n: u64) {
    if owned {
        let sum = counter.load(Ordering::Relaxed).wrapping_add(n);
        counter.store(sum, Ordering::Relaxed);
    } else {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Payload bytes before and after permessage-deflate.
#[derive(Default)]
struct Sizes {
    raw: AtomicU64,
    compressed: AtomicU64,
}

impl Sizes {
    fn add(&self, owned: bool, raw: u64, compressed: u64) {
        add(&self.raw, owned, raw);
        add(&self.compressed, owned, compressed);
    }
}

/// One thread's share of the hot counters, alone on its cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    received: [Tally; 2],
    sent: [Tally; 2],
    deflate_sent: Sizes,
}

/// Why a connection attempt ended, as counted in [`ProviderStats::connects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectResult {
    Accepted = 0,
    Unauthorized = 1,
    BadRequest = 2,
    Refused = 3,
    TimedOut = 4,
}

/// Why a connection closed, as counted in [`ProviderStats::disconnects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisconnectReason {
    Heartbeat = 0,
    Backpressure = 1,
    Payload = 2,
    Protocol = 3,
    Client = 4,
    Server = 5,
    Shutdown = 6,
}

/// The counters of one provider.
#[derive(Default)]
pub(crate) struct TransportStats {
    shards: [Shard; SHARDS],
    open: AtomicUsize,
    connects: [AtomicU64; 5],
    disconnects: [AtomicU64; 7],
    tls: [AtomicU64; 2],
}

/// Which owned shards a thread holds.
static CLAIMED: [AtomicBool; OWNED] = [const { AtomicBool::new(false) }; OWNED];

/// A thread's shard: an owned one (below [`OWNED`]) until the thread ends, or the shared
/// one.
struct Claim(usize);

impl Claim {
    /// The first owned shard no live thread holds, else the shared one.
    fn take() -> Self {
        let free = CLAIMED.iter().position(|claimed| {
            claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        });
        Self(free.unwrap_or(OWNED))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Release: the next owner's Acquire sees every count this thread stored.
        if let Some(claimed) = CLAIMED.get(self.0) {
            claimed.store(false, Ordering::Release);
        }
    }
}

thread_local! {
    /// This thread's shard, claimed when it first counts.
    static SHARD: Claim = Claim::take();
    /// Messages and bytes received in the read being handled on this thread, by kind:
    /// counted without atomics, added to the provider's shard once the read is done.
    static RECEIVING: Cell<[u64; 4]> = const { Cell::new([0; 4]) };
}

/// One message received, `bytes` long, in the read being handled on this thread; see
/// [`TransportStats::add_received`].
pub(crate) fn count_received(kind: Kind, bytes: usize) {
    RECEIVING.with(|cell| {
        let mut tally = cell.get();
        let at = kind as usize * 2;
        if let Some([messages, total]) = tally.get_mut(at..at + 2) {
            *messages += 1;
            *total += bytes as u64;
        }
        cell.set(tally);
    });
}

/// This thread's shard index (the shared one while the thread is ending).
fn shard_index() -> usize {
    SHARD.try_with(|claim| claim.0).unwrap_or(OWNED).min(OWNED)
}

/// This thread's shard among [`SHARDS`] (below it), and whether the thread owns it: then
/// it may [`add`] to that shard's counters with a load and a store.
#[inline]
pub fn current() -> (usize, bool) {
    let index = shard_index();
    (index, index < OWNED)
}

impl TransportStats {
    /// This thread's shard, and whether the thread owns it.
    fn shard(&self) -> (&Shard, bool) {
        let (index, owned) = current();
        (&self.shards[index], owned)
    }

    /// Adds what this thread counted during the read it just handled (a read is handled
    /// whole on one thread, so it is all this provider's).
    pub(crate) fn add_received(&self) {
        let [text, text_bytes, binary, binary_bytes] = RECEIVING.with(|cell| cell.take());
        let (shard, owned) = self.shard();
        if text > 0 {
            shard.received[Kind::Text as usize].add(owned, text, text_bytes);
        }
        if binary > 0 {
            shard.received[Kind::Binary as usize].add(owned, binary, binary_bytes);
        }
    }

    /// One message queued for sending with `bytes` of payload (before compressing).
    pub(crate) fn sent(&self, kind: Kind, bytes: u64) {
        let (shard, owned) = self.shard();
        shard.sent[kind as usize].add(owned, 1, bytes);
    }

    /// One message sent to `connections` at once (a broadcast), `bytes` each.
    pub(crate) fn sent_to_many(&self, kind: Kind, connections: u64, bytes: u64) {
        let (shard, owned) = self.shard();
        shard.sent[kind as usize].add(owned, connections, bytes.saturating_mul(connections));
    }

    /// A message compressed from `raw` to `compressed` bytes for sending.
    pub(crate) fn deflated(&self, raw: u64, compressed: u64) {
        let (shard, owned) = self.shard();
        shard.deflate_sent.add(owned, raw, compressed);
    }

    /// A connection was registered.
    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A registered connection was removed.
    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connect(&self, result: ConnectResult) {
        self.connects[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn disconnect(&self, reason: DisconnectReason) {
        self.disconnects[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake that succeeded (`true`) or failed.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls_handshake(&self, ok: bool) {
        self.tls[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// The sums of every shard.
    pub(crate) fn snapshot(&self) -> ProviderStats {
        let mut stats = ProviderStats {
            connections: self.open.load(Ordering::Relaxed),
            ..ProviderStats::default()
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for shard in &self.shards {
            for (kind, tally) in shard.received.iter().enumerate() {
                stats.received[kind].messages += load(&tally.messages);
                stats.received[kind].bytes += load(&tally.bytes);
            }
            for (kind, tally) in shard.sent.iter().enumerate() {
                stats.sent[kind].messages += load(&tally.messages);
                stats.sent[kind].bytes += load(&tally.bytes);
            }
            stats.deflate_sent.raw += load(&shard.deflate_sent.raw);
            stats.deflate_sent.compressed += load(&shard.deflate_sent.compressed);
        }
        stats.connects = self.connects.each_ref().map(load);
        stats.disconnects = self.disconnects.each_ref().map(load);
        stats.tls_handshakes = self.tls.each_ref().map(load);
        stats
    }
}

/// Messages and their payload bytes, counted since the provider started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Messages.
    pub messages: u64,
    /// Their payload bytes (uncompressed; frame headers not counted).
    pub bytes: u64,
}

/// Bytes through permessage-deflate, since the provider started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compression {
    /// Payload bytes before compressing (or after inflating).
    pub raw: u64,
    /// The same payloads compressed, as on the wire.
    pub compressed: u64,
}

impl Compression {
    /// Compressed bytes per raw byte (below 1 when compression pays); `None` before any.
    pub fn ratio(&self) -> Option<f64> {
        (self.raw > 0).then(|| self.compressed as f64 / self.raw as f64)
    }
}

/// A snapshot of a provider's counters ([`Provider::stats`](crate::Provider::stats)).
///
/// Counts run from the provider's start; take two snapshots for a rate.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ProviderStats {
    /// Connections open now.
    pub connections: usize,
    /// Messages received, text (`[0]`) and binary (`[1]`).
    pub received: [Traffic; 2],
    /// Messages sent (queued for a connection), text (`[0]`) and binary (`[1]`).
    pub sent: [Traffic; 2],
    /// Upgrade attempts by result: accepted, unauthorized, bad request, refused (by an
    /// upgrade check), timed out. See [`CONNECT_RESULTS`].
    pub connects: [u64; 5],
    /// Closed connections by reason. See [`DISCONNECT_REASONS`].
    pub disconnects: [u64; 7],
    /// TLS handshakes that succeeded (`[0]`) and failed (`[1]`).
    pub tls_handshakes: [u64; 2],
    /// What permessage-deflate did to messages sent (to connections that negotiated it).
    pub deflate_sent: Compression,
}

impl ProviderStats {
    /// Messages received, text and binary together.
    pub fn messages_received(&self) -> u64 {
        self.received[0].messages + self.received[1].messages
    }

    /// Messages sent, text and binary together.
    pub fn messages_sent(&self) -> u64 {
        self.sent[0].messages + self.sent[1].messages
    }

    /// Payload bytes received, text and binary together.
    pub fn bytes_received(&self) -> u64 {
        self.received[0].bytes + self.received[1].bytes
    }

    /// Payload bytes sent, text and binary together.
    pub fn bytes_sent(&self) -> u64 {
        self.sent[0].bytes + self.sent[1].bytes
    }
}

/// The names of [`ProviderStats::connects`]' entries, in order (the metrics' labels).
pub const CONNECT_RESULTS: [&str; 5] = [
    "accepted",
    "unauthorized",
    "bad_request",
    "refused",
    "timed_out",
];

/// The names of [`ProviderStats::disconnects`]' entries, in order (the metrics' labels):
/// missed heartbeats, the backpressure limit, an oversized message, a protocol error, the
/// consumer's own close or departure, a close by the application (`Connection::close`),
/// the provider shutting down.
pub const DISCONNECT_REASONS: [&str; 7] = [
    "heartbeat",
    "backpressure",
    "payload",
    "protocol",
    "client",
    "server",
    "shutdown",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn shards_add_up_across_threads() {
        let stats = Arc::new(TransportStats::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let stats = Arc::clone(&stats);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        count_received(Kind::Text, 10);
                        stats.sent(Kind::Binary, 3);
                    }
                    stats.add_received();
                    stats.sent_to_many(Kind::Text, 5, 2);
                    stats.deflated(100, 10);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        stats.connect(ConnectResult::Unauthorized);
        stats.disconnect(DisconnectReason::Heartbeat);
        stats.tls_handshake(false);
        stats.opened();
        stats.opened();
        stats.closed();
        let snap = stats.snapshot();
        assert_eq!(snap.connections, 1);
        assert_eq!(
            snap.received[0],
            Traffic {
                messages: 12_000,
                bytes: 120_000
            }
        );
        assert_eq!(
            snap.sent[1],
            Traffic {
                messages: 12_000,
                bytes: 36_000
            }
        );
        assert_eq!(
            snap.sent[0],
            Traffic {
                messages: 60,
                bytes: 120
            }
        );
        assert_eq!(snap.messages_sent(), 12_060);
        assert_eq!(snap.deflate_sent.ratio(), Some(0.1));
        assert_eq!(Compression::default().ratio(), None);
        assert_eq!(snap.connects, [0, 1, 0, 0, 0]);
        assert_eq!(snap.disconnects, [1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(snap.tls_handshakes, [0, 1]);
    }

    #[test]
    fn more_threads_at_once_than_owned_shards_count_exactly() {
        let stats = Arc::new(TransportStats::default());
        let threads = 3 * OWNED;
        let all_counting = Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (stats, all_counting) = (Arc::clone(&stats), Arc::clone(&all_counting));
                std::thread::spawn(move || {
                    stats.sent(Kind::Binary, 1);
                    // Every thread holds its shard (owned or shared) from here on.
                    all_counting.wait();
                    for _ in 0..10_000 {
                        stats.sent(Kind::Binary, 2);
                    }
                    shard_index()
                })
            })
            .collect();
        let indexes: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(indexes.iter().filter(|&&i| i == OWNED).count() >= threads - OWNED);
        let snap = stats.snapshot();
        let n = threads as u64;
        assert_eq!(
            snap.sent[1],
            Traffic {
                messages: n * 10_001,
                bytes: n * 20_001
            }
        );
    }
}
