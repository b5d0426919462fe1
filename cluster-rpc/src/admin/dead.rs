//! The dead letters the page shows. A hub keeps its own in memory and the page reads them
//! there. In cluster mode they are the cluster's, in its JetStream dead-letter stream,
//! where reading costs a request per letter: the page reads at most [`MAX_ROWS`] + 1 of
//! them, at most every [`REFRESH`], and only while someone looks (a snapshot starts a
//! read in the background and shows the last one read).

use super::view::MAX_ROWS;
use crate::hub::Hub;
use crate::jobs::{DeadJob, JobId};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How old the cluster's dead letters may be before a snapshot reads them again.
pub(super) const REFRESH: Duration = Duration::from_secs(5);
/// Longest wait for JetStream to list them.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the page shows of the dead letters: oldest first, and whether there are more.
#[derive(Debug, Clone, Default)]
pub(super) struct Shown {
    /// At most [`MAX_ROWS`], oldest first.
    pub(super) letters: Vec<DeadJob>,
    /// How many there are, as far as known.
    pub(super) count: usize,
    /// More than `letters` (cluster mode reads only the oldest [`MAX_ROWS`] + 1).
    pub(super) more: bool,
}

/// The cluster's dead letters as last read, for the page.
#[derive(Debug, Default)]
pub(super) struct DeadLetters {
    cached: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    shown: Shown,
    read_at: Option<Instant>,
    reading: bool,
}

impl DeadLetters {
    /// The dead letters to show now: the hub's own, or in cluster mode the last read of
    /// the cluster's, starting a new read when that one is older than [`REFRESH`].
    pub(super) fn shown(self: &Arc<Self>, hub: &Hub) -> Shown {
        if !clustered(hub) {
            let mut letters = hub.jobs().dead_letters();
            let count = letters.len();
            letters.drain(..count.saturating_sub(MAX_ROWS));
            return Shown {
                more: count > letters.len(),
                letters,
                count,
            };
        }
        let mut cached = self.cached();
        let stale = cached.read_at.is_none_or(|at| at.elapsed() >= REFRESH);
        if stale && !cached.reading {
            cached.reading = true;
            tokio::spawn(Arc::clone(self).read(hub.clone()));
        }
        cached.shown.clone()
    }

    /// Takes job `id` out of what is shown (an admin requeued or deleted it), and reads
    /// the cluster's again at the next snapshot.
    pub(super) fn forget(&self, id: JobId) {
        let mut cached = self.cached();
        let before = cached.shown.letters.len();
        cached.shown.letters.retain(|dead| dead.id != id);
        let removed = before - cached.shown.letters.len();
        cached.shown.count = cached.shown.count.saturating_sub(removed);
        cached.read_at = None;
    }

    async fn read(self: Arc<Self>, hub: Hub) {
        let stop = hub.stop_token();
        let jobs = hub.jobs();
        let listing = tokio::time::timeout(READ_TIMEOUT, jobs.cluster_dead_letters(MAX_ROWS + 1));
        let listed = tokio::select! {
            () = stop.cancelled() => return,
            listed = listing => listed,
        };
        let mut cached = self.cached();
        cached.reading = false;
        cached.read_at = Some(Instant::now());
        match listed {
            Ok(Ok(mut letters)) => {
                let more = letters.len() > MAX_ROWS;
                letters.truncate(MAX_ROWS);
                cached.shown = Shown {
                    count: letters.len(),
                    letters,
                    more,
                };
            }
            // The last read stays on the page; the next snapshot after REFRESH tries again.
            Ok(Err(error)) => {
                tracing::warn!(%error, "admin page: the cluster's dead letters could not be read");
            }
            Err(_) => tracing::warn!(
                timeout = ?READ_TIMEOUT,
                "admin page: the cluster's dead letters were not read in time"
            ),
        }
    }

    fn cached(&self) -> MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the hub is in a cluster, whose dead letters JetStream keeps.
#[cfg(feature = "nats")]
fn clustered(hub: &Hub) -> bool {
    hub.cluster().is_some()
}

/// Whether the hub is in a cluster: never without the `nats` feature.
#[cfg(not(feature = "nats"))]
fn clustered(_: &Hub) -> bool {
    false
}
