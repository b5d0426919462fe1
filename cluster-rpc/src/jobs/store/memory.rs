//! The store that keeps nothing: jobs live in the hub's memory only.

use super::{Change, Commit, JobStore, Recovery, StoreError, StoreStats};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Keeps nothing: every [`sync`](JobStore::sync) is complete at once, and a hub that stops
/// loses its jobs (its results' retention holds while it runs). The default store of a hub
/// without a data directory.
///
/// ```
/// use cluster_rpc::jobs::{JobStore, MemoryStore};
/// let store = MemoryStore::new();
/// assert!(store.recover().unwrap().jobs.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    commits: AtomicU64,
    closed: AtomicBool,
}

impl MemoryStore {
    /// A store that keeps nothing.
    pub fn new() -> Self {
        Self::default()
    }
}

impl JobStore for MemoryStore {
    fn recover(&self) -> Result<Recovery, StoreError> {
        Ok(Recovery::default())
    }

    fn record(&self, _change: &Change<'_>) {}

    fn sync(&self, commit: Commit) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        commit.finish(self.check());
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            kind: "memory".to_owned(),
            commits: self.commits.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}
