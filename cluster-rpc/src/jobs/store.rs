//! The storage seam: how the job queue keeps its state.
//!
//! The hub's in-memory scheduler (the queue) decides what runs where; a
//! [`JobStore`] makes its decisions outlive the process. The queue tells the store every
//! change of a job's life as a [`Change`] ([`record`](JobStore::record)) and asks to be
//! told when what it recorded is durable ([`sync`](JobStore::sync)): a submission is
//! acknowledged, and a result delivered, only after that. At start the store hands back
//! what it kept ([`recover`](JobStore::recover)).
//!
//! Two stores come with the crate (the queue takes any other through
//! [`HubBuilder::jobs_store`](crate::HubBuilder::jobs_store)):
//!
//! - [`MemoryStore`]: keeps nothing; every sync is complete at once. A hub that stops
//!   loses its jobs. The default without a data directory.
//! - [`LogStore`]: an append-only journal on the local disk with group commit, checksums
//!   and compaction; see its docs. The default once a data directory is given
//!   ([`HubBuilder::jobs_storage`](crate::HubBuilder::jobs_storage)).
//!
//! # Designed for a shared store too
//!
//! The changes are those a work-queue engine shared by several hubs (NATS JetStream, say)
//! speaks in: [`Submitted`](Change::Submitted) is a publish whose message id is the job
//! id (idempotent within the engine's dedup window); [`Started`](Change::Started) is a
//! claim that holds a lease on the job until its attempt's deadline;
//! [`Completed`](Change::Completed) is an ack; [`Failed`](Change::Failed) with a retry
//! time is a negative ack with that delay; [`Dead`](Change::Dead) terminates the job and
//! keeps it in a dead-letter stream; [`Released`](Change::Released) is a negative ack
//! without delay (redeliver now); [`Progress`](Change::Progress) extends the lease (an
//! in-progress ack). A store shared by several hubs also redelivers, on its own, the jobs
//! whose lease ran out because their hub died.
//!
//! # The contract
//!
//! - **Order.** Changes arrive in the order they happened to each job, and a job's
//!   `Submitted` comes first. Calls come from any thread, never concurrently for one job.
//! - **No blocking.** `record` and `sync` are called on the queue's hot path (under its
//!   lock, for `record`): they buffer and return. I/O happens elsewhere (a writer thread,
//!   a client task).
//! - **Durability.** [`sync`](JobStore::sync)`(commit)` finishes `commit` once every change
//!   recorded before the call is as durable as the store promises, or fails it with the
//!   reason. It finishes every commit exactly once, in any thread, possibly before `sync`
//!   returns. Commits finish in the order of their `sync` calls.
//! - **Recovery.** [`recover`](JobStore::recover) is called once, before any other call,
//!   and returns every job whose last durable change left it waiting, delayed, running,
//!   or dead, with its attempts and history, and the retained results of completed jobs.
//!   A job that was running when the hub stopped comes back waiting, that attempt counted.
//! - **Failure.** A store that cannot make changes durable (a full or read-only disk)
//!   fails the commits concerned with a [`StoreError`] saying why, and
//!   [`check`](JobStore::check) returns that error until it can again: the queue then
//!   refuses submissions instead of accepting jobs it could lose.
//!
//! # Shared stores
//!
//! A store several hubs share ([`JobStore::shared`] returns its [`Shared`] side) holds
//! the waiting jobs itself, not the hub: a submission is recorded (published) but not
//! queued locally, and each hub's queue only runs what its store pulls for it, at most its
//! workers' free credits ([`Feed::free`]), through the [`Feed`] the queue hands it at
//! start. On such a store the changes of a job pulled here mean: `Started` a claim already
//! held; `Progress` an in-progress ack; `Completed` an ack (the output goes to the hub that
//! took the submission, [`Feed::resolved`] there); `Failed` with a retry time a negative
//! ack with that delay (the queue always gives one: a retry at once is a delay of zero),
//! and the job leaves this hub; `Dead` a dead letter (the job is terminated in the engine);
//! `Released` a negative ack without delay; `Cancelled` stops the job everywhere
//! ([`Feed::cancel`] on the hub running it). Recovery is empty: the engine keeps the jobs.
//! A handle attached to a job this hub does not hold (a member that failed over from the
//! hub that took it, or [`Jobs::result`](crate::Jobs::result) for another hub's job)
//! waits while the store looks the job up ([`Shared::watch`]).

#[cfg(feature = "nats")]
pub mod jetstream;
pub mod log;
mod memory;

#[cfg(feature = "nats")]
pub use self::jetstream::{JetStreamOptions, JetStreamStats, JetStreamStore};
pub use self::log::{FsyncPolicy, LogOptions, LogStore};
pub use memory::MemoryStore;

use super::{DeadJob, JobError, JobId, JobOptions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// A wall-clock time in milliseconds since the Unix epoch: how stores keep times, so they
/// mean the same after a restart.
pub type UnixMillis = u64;

/// Now, in [`UnixMillis`].
pub fn unix_millis(at: SystemTime) -> UnixMillis {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Who may attach to a job's result: the hub itself, or the member that submitted it (by
/// the secret the member holds across reconnects). Never sent back to members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Owner(pub u128);

impl Owner {
    /// The hub itself (and its operators).
    pub const HUB: Owner = Owner(0);
}

/// One change in a job's life, as the queue tells it to its store.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Change<'a> {
    /// A job was accepted: all a store needs to run it again after a restart.
    Submitted {
        /// The job's id, assigned by the hub.
        id: JobId,
        /// Its job name.
        name: &'a str,
        /// The codec-encoded job.
        payload: &'a [u8],
        /// Its options (priority, delay, timeout, attempts, unique key).
        options: &'a JobOptions,
        /// Who may attach to its result.
        owner: Owner,
        /// When it was accepted.
        at: UnixMillis,
    },
    /// An attempt started on a worker: a claim, leased until the attempt's deadline.
    Started {
        /// The job.
        id: JobId,
        /// The attempt's number, from 1.
        attempt: u32,
        /// The worker's connection id.
        worker: Uuid,
        /// When it started.
        at: UnixMillis,
    },
    /// The running attempt's worker reported progress: the lease goes on.
    Progress {
        /// The job.
        id: JobId,
        /// The attempt.
        attempt: u32,
        /// The value reported (finite), for a shared store to forward to the submitter.
        value: f64,
    },
    /// The running attempt finished with an output: the job is done.
    Completed {
        /// The job.
        id: JobId,
        /// The attempt.
        attempt: u32,
        /// The codec-encoded output, kept for the result's retention.
        output: &'a [u8],
        /// When it finished.
        at: UnixMillis,
        /// Keep the result until then (the queue's retention); then forget the job.
        retain_until: UnixMillis,
    },
    /// The running attempt failed (an error, a panic, a timeout). With a `retry_at`, the job
    /// runs again then; without, [`Dead`](Change::Dead) or a retry at once follows.
    Failed {
        /// The job.
        id: JobId,
        /// The attempt.
        attempt: u32,
        /// Why, as text.
        error: &'a str,
        /// When to try again, if the job backs off.
        retry_at: Option<UnixMillis>,
        /// When it failed.
        at: UnixMillis,
    },
    /// The job used up its attempts and is a dead letter now.
    Dead {
        /// The job.
        id: JobId,
        /// When.
        at: UnixMillis,
    },
    /// The running attempt ended without counting (its worker left): run it again now.
    Released {
        /// The job.
        id: JobId,
        /// The attempt that no longer counts.
        attempt: u32,
    },
    /// The job was cancelled: forget it.
    Cancelled {
        /// The job.
        id: JobId,
    },
    /// A dead letter is queued again with fresh attempts and default options.
    Revived {
        /// The job.
        id: JobId,
        /// When.
        at: UnixMillis,
    },
    /// Forget the job: a dead letter deleted, or a completed job's retention over.
    Removed {
        /// The job.
        id: JobId,
    },
}

/// One attempt of a job, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Attempt {
    /// Its number, from 1.
    pub number: u32,
    /// The worker's connection id.
    pub worker: Uuid,
    /// When it started.
    pub started_at: UnixMillis,
    /// When it ended, if it has.
    pub ended_at: Option<UnixMillis>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

impl Attempt {
    /// A started attempt.
    pub fn started(number: u32, worker: Uuid, started_at: UnixMillis) -> Self {
        Self {
            number,
            worker,
            started_at,
            ended_at: None,
            error: None,
        }
    }
}

/// Where a recovered job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveredState {
    /// Ready to run (running ones come back so, their attempt counted).
    Waiting,
    /// Not before this time (a delay, or a backoff before a retry).
    Delayed(UnixMillis),
    /// A dead letter.
    Dead,
}

/// A job as a store gives it back at recovery.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecoveredJob {
    /// Its id.
    pub id: JobId,
    /// Its job name.
    pub name: String,
    /// The codec-encoded job.
    pub payload: Vec<u8>,
    /// Its options.
    pub options: JobOptions,
    /// Who may attach to its result.
    pub owner: Owner,
    /// When it was accepted.
    pub submitted_at: UnixMillis,
    /// Where it stands.
    pub state: RecoveredState,
    /// Attempts that count so far.
    pub attempts: u32,
    /// Its attempts so far, oldest first (an attempt cut short by the stop is ended).
    pub history: Vec<Attempt>,
}

impl RecoveredJob {
    /// A job just submitted, waiting.
    pub fn new(id: JobId, name: String, payload: Vec<u8>, options: JobOptions) -> Self {
        Self {
            id,
            name,
            payload,
            options,
            owner: Owner::HUB,
            submitted_at: 0,
            state: RecoveredState::Waiting,
            attempts: 0,
            history: Vec::new(),
        }
    }
}

/// A completed job's result, kept for its retention.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecoveredResult {
    /// The job's id.
    pub id: JobId,
    /// Its job name.
    pub name: String,
    /// Its unique key, if it had one.
    pub key: Option<String>,
    /// Who may attach to it.
    pub owner: Owner,
    /// The codec-encoded output.
    pub output: Vec<u8>,
    /// When it was accepted.
    pub submitted_at: UnixMillis,
    /// When it completed.
    pub completed_at: UnixMillis,
    /// Its attempts, oldest first.
    pub history: Vec<Attempt>,
}

impl RecoveredResult {
    /// A result completed at `completed_at`.
    pub fn new(id: JobId, name: String, output: Vec<u8>, completed_at: UnixMillis) -> Self {
        Self {
            id,
            name,
            key: None,
            owner: Owner::HUB,
            output,
            submitted_at: 0,
            completed_at,
            history: Vec::new(),
        }
    }
}

/// What a store kept, handed to the queue when the hub starts.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Recovery {
    /// Waiting, delayed and dead jobs, in the order they were submitted.
    pub jobs: Vec<RecoveredJob>,
    /// Retained results of completed jobs, oldest first.
    pub results: Vec<RecoveredResult>,
}

/// Why a store could not keep a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is full: the disk, or the size it may take.
    #[error("job store full: {0}")]
    Full(String),
    /// The store cannot be written (a read-only disk or directory).
    #[error("job store is read-only: {0}")]
    ReadOnly(String),
    /// The data directory was written by a newer version of this library.
    #[error("job store at {path} has format version {found}; this build reads up to {supported}: upgrade it, or use another directory")]
    NewerFormat {
        /// The data directory.
        path: String,
        /// The version found on disk.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// The data directory is in use by another hub.
    #[error("job store at {0} is in use by another process")]
    Locked(String),
    /// Any other I/O error.
    #[error("job store I/O error: {0}")]
    Io(String),
    /// The store is closed (the hub stopped).
    #[error("job store closed")]
    Closed,
}

/// What the queue does once changes are durable: acknowledge submissions, deliver
/// results. A store finishes each commit exactly once ([`finish`](Self::finish)).
#[must_use = "a commit must be finished"]
pub struct Commit(Box<dyn FnOnce(Result<(), StoreError>) + Send>);

impl Commit {
    /// A commit that runs `then` when finished.
    pub fn new(then: impl FnOnce(Result<(), StoreError>) + Send + 'static) -> Self {
        Self(Box::new(then))
    }

    /// Finishes the commit: `Ok` once the changes before it are durable, or why not.
    pub fn finish(self, result: Result<(), StoreError>) {
        (self.0)(result);
    }
}

impl fmt::Debug for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Commit")
    }
}

/// A store's own counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoreStats {
    /// The store's kind: `memory`, `log`.
    pub kind: String,
    /// Changes recorded.
    pub changes: u64,
    /// Commits finished.
    pub commits: u64,
    /// Writes to disk (each takes what was buffered).
    pub writes: u64,
    /// fsyncs (data syncs) made.
    pub fsyncs: u64,
    /// Bytes written to disk, compaction included.
    pub bytes_written: u64,
    /// Bytes the store takes on disk now.
    pub disk_bytes: u64,
    /// Compactions done.
    pub compactions: u64,
}

/// How the job queue keeps its state: see the [module docs](self) for the contract.
pub trait JobStore: Send + Sync + fmt::Debug + 'static {
    /// What the store kept: called once, when the hub starts, before any other call.
    ///
    /// # Errors
    /// A store that cannot be read or is of a newer format.
    fn recover(&self) -> Result<Recovery, StoreError>;

    /// Records one change. Buffers and returns; never blocks on I/O.
    fn record(&self, change: &Change<'_>);

    /// Finishes `commit` once every change recorded before this call is durable (or fails
    /// it). May finish it before returning. Never blocks on I/O.
    fn sync(&self, commit: Commit);

    /// Whether the store takes changes now: the error that stops it, if any.
    ///
    /// # Errors
    /// The store's standing failure (full, read-only, closed).
    fn check(&self) -> Result<(), StoreError>;

    /// The store's counters.
    fn stats(&self) -> StoreStats;

    /// The hub stops: write what is buffered, finish every commit, release the storage.
    /// Blocks until then. Nothing is recorded after.
    fn close(&self);

    /// The store's shared side, if several hubs share it (see [Shared stores](self#shared-stores)).
    /// `None` (the default): the hub's queue holds the waiting jobs itself.
    fn shared(&self) -> Option<&dyn Shared> {
        None
    }
}

/// The side of a store that several hubs share: it pulls jobs for this hub's workers.
pub trait Shared: Send + Sync {
    /// The queue is ready: from now on the store pulls jobs into it through `feed`, at most
    /// [`Feed::free`] of each name, and hands it outcomes, progress and cancels for the
    /// jobs submitted here. Called once, right after [`JobStore::recover`].
    fn start(&self, feed: Feed);

    /// Credits may be free (a job ended, a worker joined): pull again. Never blocks.
    fn wake(&self);

    /// A handle was attached here to job `id`, which this hub does not hold (another hub
    /// took it): find its outcome in the engine and hand it in through
    /// [`Feed::resolved`], or [`Feed::missing`] when the engine has no such job. Never
    /// blocks.
    fn watch(&self, id: JobId);

    /// Up to `limit` dead letters, oldest first, as the engine keeps them for every hub.
    /// The default: none (a store that keeps no dead letters).
    fn dead_letters(&self, limit: usize) -> StoreFuture<Vec<DeadJob>> {
        let _ = limit;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Runs dead letter `id` again, with fresh attempts and the default options, and
    /// forgets the dead letter: once, however many hubs ask at the same time (the others
    /// get [`JobError::NotFound`]). The default: [`JobError::NotFound`].
    fn requeue_dead(&self, id: JobId) -> StoreFuture<()> {
        let _ = id;
        Box::pin(async { Err(JobError::NotFound) })
    }

    /// Forgets dead letter `id`; false when there is none. The default: false.
    fn delete_dead(&self, id: JobId) -> StoreFuture<bool> {
        let _ = id;
        Box::pin(async { Ok(false) })
    }
}

/// The answer of a shared store to an operator's call ([`Shared::dead_letters`], ...):
/// awaited by the hub off its queue's lock.
pub type StoreFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, JobError>> + Send>>;

/// A job a shared store pulled for this hub.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PulledJob {
    /// Its id, as the submitting hub assigned it.
    pub id: JobId,
    /// Its job name.
    pub name: String,
    /// The codec-encoded job (it may be a slice of the message the store pulled).
    pub payload: Bytes,
    /// Its options.
    pub options: JobOptions,
    /// Attempts that counted before this one.
    pub attempts: u32,
    /// When it was accepted.
    pub submitted_at: UnixMillis,
}

impl PulledJob {
    /// A job pulled for its first attempt.
    pub fn new(id: JobId, name: String, payload: impl Into<Bytes>, options: JobOptions) -> Self {
        Self {
            id,
            name,
            payload: payload.into(),
            options,
            attempts: 0,
            submitted_at: 0,
        }
    }
}

/// How a shared store reaches its hub's queue: cheap to clone, and inert once the queue is
/// gone (the hub stopped).
#[derive(Clone)]
pub struct Feed(pub(crate) std::sync::Weak<super::Queue>);

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Feed")
    }
}

/// Shares a store between the queue and whoever else holds it (to read its counters).
impl<S: JobStore> JobStore for std::sync::Arc<S> {
    fn recover(&self) -> Result<Recovery, StoreError> {
        (**self).recover()
    }

    fn record(&self, change: &Change<'_>) {
        (**self).record(change);
    }

    fn sync(&self, commit: Commit) {
        (**self).sync(commit);
    }

    fn check(&self) -> Result<(), StoreError> {
        (**self).check()
    }

    fn stats(&self) -> StoreStats {
        (**self).stats()
    }

    fn close(&self) {
        (**self).close();
    }

    fn shared(&self) -> Option<&dyn Shared> {
        (**self).shared()
    }
}
