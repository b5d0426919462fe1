//! The state every task of one provider shares: options, the registry of connections,
//! the listeners, and what stops and tracks the tasks. A leaf: it knows nothing of the
//! tasks that use it (accepting, the heartbeat, connections), which get narrow views of
//! it ([`ConnectionContext`] for a connection's messages, [`Gate`] for a handshake).

use super::refusals::Refusals;
use crate::auth::{AuthHandler, UpgradeCheck};
use crate::connection::Connection;
use crate::event::{fire, Events, ListenerSet, ProviderEvent, ProviderListeners};
use crate::handshake::Gate;
use crate::http::HttpRoutes;
use crate::message::{CloseInfo, MessageRef, PROVIDER_HEARTBEAT_PREFIX};
use crate::options::ProviderOptions;
use crate::stats::TransportStats;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// The registry's table is not shrunk below room for this many connections.
const MIN_REGISTRY_CAPACITY: usize = 1024;

/// What handshakes a connection with TLS: rustls' acceptor with the `tls` feature, and a
/// type with no values without it (so `Option<TlsAcceptor>` is always `None`).
#[cfg(feature = "tls")]
pub(crate) type TlsAcceptor = tokio_rustls::TlsAcceptor;
/// What handshakes a connection with TLS: nothing can, without the `tls` feature.
#[cfg(not(feature = "tls"))]
pub(crate) type TlsAcceptor = std::convert::Infallible;

/// What a connection's task needs of its provider: where its events go (callbacks and
/// event streams), what counts them (traffic counters, heartbeat round trips), and how
/// long its close handshake may take.
pub(crate) struct ConnectionContext {
    pub(crate) listeners: ListenerSet<ProviderListeners>,
    pub(crate) events: Events<ProviderEvent>,
    pub(crate) stats: Arc<TransportStats>,
    /// When the current heartbeat cycle sent its `PING`s.
    pub(crate) pinged: PingClock,
    /// Heartbeat round trips, resolved when the provider binds.
    pub(crate) heartbeat_rtt: metrics::Histogram,
    pub(crate) close_timeout: Duration,
}

impl ConnectionContext {
    fn new(listeners: ProviderListeners, options: &ProviderOptions) -> Self {
        Self {
            listeners: ListenerSet::new(listeners),
            events: Events::new(options.event_capacity, ProviderEvent::Lagged),
            stats: Arc::default(),
            pinged: PingClock::new(),
            heartbeat_rtt: crate::metrics::heartbeat_rtt(),
            close_timeout: options.close_timeout,
        }
    }
}

/// When the provider-wide heartbeat cycle last sent its `PING`s, for round trips finer
/// than the millisecond [`Connection::last_ping`] keeps.
pub(crate) struct PingClock {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last cycle's `PING`s (0: none yet).
    sent: AtomicU64,
}

impl PingClock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            sent: AtomicU64::new(0),
        }
    }

    /// A cycle sends its `PING`s now.
    pub(crate) fn pinging(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.sent.store(now.max(1), Ordering::Relaxed);
    }

    /// Time since the last cycle's `PING`s, if one was sent.
    pub(crate) fn since_ping(&self) -> Option<Duration> {
        let sent = self.sent.load(Ordering::Relaxed);
        (sent > 0).then(|| {
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_nanos(sent))
        })
    }
}

/// State every task of one provider shares.
pub(crate) struct ProviderShared {
    pub(crate) options: ProviderOptions,
    auth_handler: Option<AuthHandler>,
    upgrade_check: Option<UpgradeCheck>,
    /// Plain HTTP routes beside the upgrade.
    pub(crate) http: HttpRoutes,
    pub(crate) context: Arc<ConnectionContext>,
    registry: Mutex<HashMap<Uuid, Connection>>,
    /// `PROVIDER_HEARTBEAT|<ms>`, sent first on every connection.
    heartbeat_frame: String,
    /// Every task of this provider: accept loop, heartbeat, connections.
    pub(crate) tracker: TaskTracker,
    /// Cancelled to stop accepting and stop the heartbeat.
    pub(crate) stop: CancellationToken,
    /// Handshakes every connection with TLS when `ssl` is set.
    pub(crate) tls: Option<TlsAcceptor>,
    /// Refused upgrades, counted for the log.
    pub(crate) refusals: Arc<Refusals>,
}

impl ProviderShared {
    pub(crate) fn new(
        options: ProviderOptions,
        auth_handler: Option<AuthHandler>,
        upgrade_check: Option<UpgradeCheck>,
        listeners: ProviderListeners,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        Self {
            heartbeat_frame: format!(
                "{PROVIDER_HEARTBEAT_PREFIX}{}",
                options.heartbeat.interval.as_millis()
            ),
            context: Arc::new(ConnectionContext::new(listeners, &options)),
            options,
            auth_handler,
            upgrade_check,
            http: HttpRoutes::default(),
            registry: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            tls,
            refusals: Arc::default(),
        }
    }

    /// What a handshake checks requests against.
    pub(crate) fn gate(&self) -> Gate<'_> {
        Gate {
            options: &self.options,
            auth_handler: self.auth_handler.as_ref(),
            upgrade_check: self.upgrade_check.as_ref(),
            http: &self.http,
        }
    }

    /// The current listeners.
    pub(crate) fn listeners(&self) -> Arc<ProviderListeners> {
        self.context.listeners.get()
    }

    pub(crate) fn update_listeners(&self, change: impl FnOnce(&mut ProviderListeners)) {
        self.context.listeners.update(change);
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, HashMap<Uuid, Connection>> {
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
        self.context.stats.opened();
    }

    pub(crate) fn unregister(&self, conn: &Connection) {
        let removed = {
            let mut registry = self.registry();
            let removed = registry.remove(&conn.id()).is_some();
            give_back_room(&mut registry);
            removed
        };
        if removed {
            self.context.stats.closed();
        }
    }

    /// The open event: callbacks (a panic in one is caught) and streams.
    pub(crate) fn emit_open(&self, conn: &Connection) {
        let listeners = self.listeners();
        listeners.debug(|| format!("connection {} open from {}", conn.id(), conn.ip()));
        if fire(&listeners.open, |f| f(conn)) {
            tracing::error!(conn.id = %conn.id(), "open callback panicked");
        }
        if self.context.events.is_watched() {
            self.context.events.emit(ProviderEvent::Open(conn.clone()));
        }
    }

    /// The close event: callbacks (a panic in one is caught) and streams.
    pub(crate) fn emit_close(&self, conn: &Connection, info: CloseInfo) {
        let listeners = self.listeners();
        listeners.debug(|| {
            format!(
                "connection {} closed: {} {}",
                conn.id(),
                info.code,
                info.reason
            )
        });
        if fire(&listeners.close, |f| f(conn, &info)) {
            tracing::error!(conn.id = %conn.id(), "close callback panicked");
        }
        if self.context.events.is_watched() {
            self.context
                .events
                .emit(ProviderEvent::Close(conn.clone(), info));
        }
    }
}

/// A crowd that left gives its table back: a `HashMap` never shrinks by itself (10,000
/// connections held ~450 KiB of table after they had all closed). Shrinks to twice what is
/// left whenever three quarters are empty, which keeps removal amortized O(1), and never
/// below [`MIN_REGISTRY_CAPACITY`].
fn give_back_room<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > MIN_REGISTRY_CAPACITY && map.len() < map.capacity() / 4 {
        let keep = (map.len() * 2).max(MIN_REGISTRY_CAPACITY);
        map.shrink_to(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowd_that_left_gives_its_table_back() {
        let mut map = HashMap::new();
        for i in 0..10_000u32 {
            map.insert(i, ());
        }
        let crowd = map.capacity();
        assert!(crowd >= 10_000);
        for i in 0..9_990u32 {
            map.remove(&i);
            give_back_room(&mut map);
        }
        assert_eq!(map.len(), 10);
        assert!(
            map.capacity() < 4 * MIN_REGISTRY_CAPACITY,
            "kept room for {} after the crowd of {crowd} left",
            map.capacity()
        );
    }
}
