//! Read-only views of a hub's state for operators (the admin page, `cluster top`): what
//! it serves, who is connected, what is subscribed. Each copies what it returns, so no
//! lock is held while the caller uses it.

use super::Hub;
#[cfg(feature = "admin")]
use super::HubInner;
use cluster_transport::Connection;
#[cfg(feature = "admin")]
use std::sync::{Arc, Weak};

impl Hub {
    /// The names of the services the hub serves itself, sorted.
    pub fn services(&self) -> Vec<&'static str> {
        let mut names = self.inner.state.services.names_list();
        names.sort_unstable();
        names
    }

    /// The connections of every member (consumers that joined the typed layer).
    pub fn members(&self) -> Vec<Connection> {
        self.inner
            .state
            .peers()
            .values()
            .map(|p| p.conn.clone())
            .collect()
    }

    /// Every subscription pattern in the routing table and how many subscriptions use it
    /// (members' and the hub's own), in no particular order.
    pub fn subjects(&self) -> Vec<(String, usize)> {
        self.inner.state.routes().pattern_counts()
    }

    /// Cancelled when the hub stops.
    #[cfg(feature = "admin")]
    pub(crate) fn stop_token(&self) -> tokio_util::sync::CancellationToken {
        self.inner.state.stop.clone()
    }

    /// A handle that does not keep the hub alive (for its own routes and tasks).
    #[cfg(feature = "admin")]
    pub(crate) fn downgrade(&self) -> WeakHub {
        WeakHub(Arc::downgrade(&self.inner))
    }
}

/// A hub that may have been dropped.
#[cfg(feature = "admin")]
#[derive(Clone)]
pub(crate) struct WeakHub(Weak<HubInner>);

#[cfg(feature = "admin")]
impl std::fmt::Debug for WeakHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakHub")
    }
}

#[cfg(feature = "admin")]
impl WeakHub {
    pub(crate) fn upgrade(&self) -> Option<Hub> {
        self.0.upgrade().map(|inner| Hub { inner })
    }
}
