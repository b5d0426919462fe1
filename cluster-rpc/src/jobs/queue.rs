//! The hub's job queue: what submitters, workers and the hub ask of it.
//!
//! One std mutex guards the [state](state); nothing awaits while holding it. Jobs go out
//! in batches: a [dispatch](dispatch) round gives every free credit a ready job, job
//! names taking turns, and sends each worker the jobs it got in one frame (frames are
//! only queued on the connection, never awaited). Rounds run in place on submission and
//! on the answers that free credits (a worker's answer frame, up to its credits, brings
//! it its next batch in one frame, with no hop through another task), and on the
//! dispatcher task after cancellations and departures. The same task promotes delayed
//! jobs and times out attempts, whose deadlines the queue keeps sorted: no task or timer
//! per attempt. Failed jobs are retried, then kept in the [dead letters](dead).

mod dead;
mod deadlines;
mod dispatch;
mod inspect;
mod ready;
mod results;
mod shared;
mod state;
mod workers;

pub use dead::DeadJob;
pub use inspect::{JobInfo, JobState};
pub(crate) use state::Submitter;

use self::dispatch::{after, send_drop};
use self::ready::{Fresh, NameId, Waiting};
use self::results::{Keys, Retained};
use self::state::{wall_now, Entry, State, Status, Store};
use super::handle::{Delivery, Progress, ProgressRef, WeakProgress};
use super::id::new_job_id;
use super::options::check_name;
use super::store::{
    Attempt, Change, Commit, JobStore, Owner, RecoveredState, Recovery, StoreError, StoreStats,
};
use super::wire::{self, Malformed};
use super::{InvalidJob, JobError, JobId, JobOptions, QueueOptions};
use crate::codec::CodecKind;
use crate::link::Link;
use crate::metrics::{AttemptOutcome, AttemptTally, Durations, JobMetrics};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counts of the queue, and each worker's load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobStats {
    /// Ready to run, waiting for a free worker.
    pub waiting: usize,
    /// Not to run yet (delayed, or backing off before a retry).
    pub delayed: usize,
    /// Running on a worker now.
    pub active: usize,
    /// Finished with an output, since the hub started.
    pub completed: u64,
    /// Attempts that failed (errors, panics, timeouts), since the hub started.
    pub failed: u64,
    /// Jobs in the dead letters now.
    pub dead: usize,
    /// Per connected worker.
    pub workers: Vec<WorkerStats>,
}

/// One worker's load and throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Its connection id.
    pub id: Uuid,
    /// Its `name` connect parameter, if any.
    pub name: Option<String>,
    /// Jobs it runs at once at most (what it announced, capped by the hub).
    pub credits: usize,
    /// Jobs it runs now.
    pub active: usize,
    /// Jobs it finished.
    pub completed: u64,
    /// Jobs it finished per second since it joined.
    pub per_second: f64,
}

/// What a hub-side submitter holds: the job's id, where its outcome arrives, and its
/// progress.
pub(crate) type Queued = (JobId, Delivery, ProgressRef);

/// Jobs of a batch queued under one hold of the queue's lock
/// ([`Queue::submit_many`]).
const SUBMIT_CHUNK: usize = 512;

/// `d` in whole milliseconds.
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether queueing a job records its submission, or revives a dead letter the store
/// holds already.
enum Origin {
    Submitted,
    /// A dead letter, with its history so far.
    Revived(Vec<Attempt>),
}

/// The hub's job queue.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The store, also in the state: commits are asked for outside the lock.
    store: Arc<dyn JobStore>,
    wake: Arc<Notify>,
    options: QueueOptions,
    codec: CodecKind,
    /// Stops the dispatcher: fired by the hub's shutdown, or when the queue is dropped.
    stop: CancellationToken,
    metrics: JobMetrics,
}

impl Queue {
    /// A queue on `store`, holding what the store recovered, and its dispatcher task,
    /// which runs until `stop` or until the queue is dropped.
    ///
    /// # Errors
    /// The store's, when it cannot be read.
    pub(crate) fn start(
        options: QueueOptions,
        codec: CodecKind,
        stop: CancellationToken,
        store: Arc<dyn JobStore>,
    ) -> Result<Arc<Self>, StoreError> {
        let recovery = store.recover()?;
        let wake = Arc::new(Notify::new());
        let state = State {
            store: Store(Arc::clone(&store)),
            shared: store.shared().is_some(),
            ..State::default()
        };
        let queue = Arc::new(Self {
            state: Mutex::new(state),
            store,
            wake: Arc::clone(&wake),
            options: options.bounded(),
            codec,
            stop: stop.clone(),
            metrics: JobMetrics::new(),
        });
        let span = tracing::debug_span!("job dispatcher");
        queue.restore(recovery);
        if let Some(shared) = queue.store.shared() {
            shared.start(super::store::Feed(Arc::downgrade(&queue)));
        }
        tokio::spawn(tracing::Instrument::instrument(
            Self::run_dispatcher(Arc::downgrade(&queue), wake, stop),
            span,
        ));
        Ok(queue)
    }

    /// Puts back what the store recovered: waiting jobs in their order, delayed ones for
    /// their time, dead letters, kept results. No one waits for them until a submitter
    /// attaches.
    fn restore(&self, recovery: Recovery) {
        let mut st = self.state();
        let now = Instant::now();
        let wall = wall_now();
        let wait = |at: u64| std::time::Duration::from_millis(at.saturating_sub(wall));
        for mut job in recovery.jobs {
            let key = job.options.key.as_deref().map(|k| Keys::full(&job.name, k));
            let (mut entry, progress) = Entry::new(job.payload.into(), job.options, None);
            entry.attempts = job.attempts;
            entry.owner = job.owner;
            entry.submitted_at = job.submitted_at;
            if !matches!(job.state, RecoveredState::Dead) {
                entry.past = std::mem::take(&mut job.history);
            }
            entry.named(st.ready.intern(&job.name));
            match job.state {
                RecoveredState::Waiting => st.make_ready(job.id, entry),
                RecoveredState::Delayed(at) => st.schedule(job.id, entry, after(now, wait(at))),
                RecoveredState::Dead => {
                    let last_error = job
                        .history
                        .last()
                        .and_then(|a| a.error.clone())
                        .unwrap_or_default();
                    st.dead.bury(
                        DeadJob {
                            id: job.id,
                            name: job.name,
                            attempts: job.attempts,
                            last_error,
                            payload: Vec::from(std::mem::take(&mut entry.payload)),
                            history: job.history,
                        },
                        usize::MAX,
                    );
                    continue;
                }
            }
            if job.owner != Owner::HUB {
                st.member_jobs.insert(job.id, job.owner, &progress);
            }
            if let Some(key) = key {
                st.keys.insert(key, job.id, progress.downgrade());
            }
        }
        let retention = millis(self.options.result_retention);
        let mut gone = Vec::new();
        for mut result in recovery.results {
            let until = result.completed_at.saturating_add(retention);
            let key = result.key.as_deref().map(|k| Keys::full(&result.name, k));
            if let Some(key) = &key {
                st.keys
                    .insert(key.clone(), result.id, WeakProgress::default());
            }
            let last = result.history.pop().unwrap_or_else(|| {
                let mut last = Attempt::started(1, Uuid::nil(), result.completed_at);
                last.ended_at = Some(result.completed_at);
                last
            });
            let retained = Retained::new(
                Bytes::from(result.output),
                result.owner,
                key,
                Arc::from(result.name.as_str()),
                result.submitted_at,
                last,
                result.history,
            );
            let expires = after(now, wait(until));
            let st = &mut *st;
            let store = &st.store;
            st.results.insert(
                result.id,
                retained,
                expires,
                self.options.max_results,
                &mut gone,
                |id| store.record(Change::Removed { id }),
            );
        }
        for (key, id) in gone {
            st.keys.release(&key, id);
        }
        self.request_dispatch(&mut st);
    }

    /// Once every change recorded so far is durable, acknowledges the submissions of
    /// `jobs`; if it cannot be, withdraws them (they never run) and says why.
    ///
    /// # Errors
    /// [`JobError::Store`] when the store could not keep them.
    pub(crate) async fn accepted<'a>(
        &self,
        jobs: impl IntoIterator<Item = (JobId, &'a Progress)>,
    ) -> Result<(), JobError> {
        let (tx, rx) = oneshot::channel();
        self.store.sync(Commit::new(move |result| {
            let _ = tx.send(result);
        }));
        let result = rx.await.unwrap_or(Err(StoreError::Closed));
        if let Err(error) = result {
            self.withdraw(jobs);
            return Err(JobError::Store(error));
        }
        Ok(())
    }

    /// As [`accepted`](Self::accepted), for a member's submission: `respond` gets the
    /// outcome once it is known.
    pub(crate) fn accept_then(
        self: &Arc<Self>,
        job: (JobId, ProgressRef),
        respond: impl FnOnce(Result<JobId, JobError>) + Send + 'static,
    ) {
        let queue = Arc::downgrade(self);
        self.store.sync(Commit::new(move |result| match result {
            Ok(()) => respond(Ok(job.0)),
            Err(error) => {
                if let Some(queue) = queue.upgrade() {
                    queue.withdraw([(job.0, &*job.1)]);
                }
                respond(Err(JobError::Store(error)));
            }
        }));
    }

    /// Jobs whose submission the store could not keep: cancelled wherever they are.
    fn withdraw<'a>(&self, jobs: impl IntoIterator<Item = (JobId, &'a Progress)>) {
        for (id, progress) in jobs {
            self.cancel(id, progress);
        }
    }

    /// The store's counters.
    pub(crate) fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// Closes the store: what it buffered is written, the storage released. Blocks.
    pub(crate) fn close_store(&self) {
        self.store.close();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state if its lock is free now.
    fn try_state(&self) -> Option<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(st) => Some(st),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    pub(crate) fn codec(&self) -> CodecKind {
        self.codec
    }

    /// Queues a job; returns its id and its progress. A member's job is answered through
    /// its connection; the hub's own through the channel in `submitter`.
    ///
    /// # Errors
    /// [`JobError::Invalid`] for a name or options outside the queue's limits,
    /// [`JobError::QueueFull`] at capacity.
    pub(crate) fn submit(
        &self,
        name: &str,
        payload: Vec<u8>,
        options: JobOptions,
        submitter: Submitter,
        owner: Owner,
    ) -> Result<(JobId, ProgressRef), JobError> {
        check_name(name)?;
        options.check(&self.options)?;
        self.store.check().map_err(JobError::Store)?;
        if let Submitter::Member { conn, .. } = &submitter {
            self.state().owners.insert(*conn, owner);
        }
        self.queue(
            new_job_id(),
            name,
            payload.into(),
            options,
            (Some(submitter), owner),
            Origin::Submitted,
        )
    }

    /// A hub-side submission: [`submit`](Self::submit), the outcome delivered in the
    /// job's progress; a job with a unique key, which may join another job, gets a channel.
    pub(crate) fn submit_here(
        &self,
        name: &str,
        payload: Vec<u8>,
        options: JobOptions,
    ) -> Result<Queued, JobError> {
        if options.key.is_none() {
            let (id, progress) =
                self.submit(name, payload, options, Submitter::Handle, Owner::HUB)?;
            return Ok((id, Delivery::Progress, progress));
        }
        let (tx, rx) = oneshot::channel();
        let (id, progress) =
            self.submit(name, payload, options, Submitter::Local(tx), Owner::HUB)?;
        Ok((id, Delivery::Channel(rx), progress))
    }

    /// Queues job `id`, its options checked already, and records it. A job whose unique
    /// key another job holds is not queued: its submitter attaches to that job (the
    /// returned id and progress are that job's).
    fn queue(
        &self,
        id: JobId,
        name: &str,
        payload: Bytes,
        options: JobOptions,
        (submitter, owner): (Option<Submitter>, Owner),
        origin: Origin,
    ) -> Result<(JobId, ProgressRef), JobError> {
        let delay = options.delay.filter(|d| !d.is_zero());
        let key = options.key.as_deref().map(|key| Keys::full(name, key));
        // Made before taking the lock; the name is set under it.
        let (mut entry, progress) = Entry::new(payload, options, submitter);
        entry.owner = owner;
        let revived = match origin {
            Origin::Submitted => false,
            Origin::Revived(past) => {
                entry.past = past;
                true
            }
        };
        {
            let mut st = self.state();
            if let Some(key) = &key {
                if let Some(existing) = self.join_unique(&mut st, key, &mut entry) {
                    return Ok(existing);
                }
            }
            if st.queued() >= self.options.capacity {
                return Err(JobError::QueueFull {
                    capacity: self.options.capacity,
                });
            }
            entry.named(st.ready.intern(name));
            let at = wall_now();
            entry.submitted_at = at;
            st.store.record(if revived {
                Change::Revived { id, at }
            } else {
                Change::Submitted {
                    id,
                    name,
                    payload: &entry.payload,
                    options: entry.options(),
                    owner,
                    at,
                }
            });
            let now = Instant::now();
            let shared = st.shared;
            match delay {
                // A shared store holds the job (and its delay) until some hub pulls it.
                _ if shared => {
                    st.awaiting.insert(id, entry);
                }
                Some(d) => st.schedule(id, entry, after(now, d)),
                None => st.make_ready(id, entry),
            }
            if owner != Owner::HUB {
                st.member_jobs.insert(id, owner, &progress);
            }
            if let Some(key) = key {
                st.keys.insert(key, id, progress.downgrade());
            }
            if !shared {
                self.after_queueing(&mut st, delay.is_some(), now);
            }
        }
        tracing::trace!(job.id = %Uuid::from_u128(id), job.name = name, "job queued");
        Ok((id, progress))
    }

    /// If a live or kept job holds unique key `key`, attaches `entry`'s submitter to it
    /// and returns that job's id and progress.
    fn join_unique(
        &self,
        st: &mut State,
        key: &str,
        entry: &mut Entry,
    ) -> Option<(JobId, ProgressRef)> {
        let (id, weak) = st.keys.get(key)?.clone();
        let submitter = entry.submitter.take()?;
        let submitter = match weak.upgrade().filter(|p| !p.is_cancelled()) {
            Some(progress) => match progress.attach(submitter) {
                Ok(()) => return Some((id, progress)),
                Err(submitter) => submitter,
            },
            None => submitter,
        };
        match st.results.get(id) {
            Some(kept) => {
                submitter.resolve(Ok(&kept.output), self.codec);
                // The handle's own progress: resolved already.
                Some((id, entry.shared_progress().clone()))
            }
            None => {
                // A stale key (its job is gone): this submission takes it.
                entry.submitter = Some(submitter);
                None
            }
        }
    }

    /// Attaches `submitter` to job `id`, for `owner` (the hub may attach to any job): it
    /// gets the job's outcome when the job resolves, or at once if its result is kept.
    ///
    /// # Errors
    /// [`JobError::NotFound`] when no job with this id is alive or kept for this owner
    /// (it never was, its result's retention ended, or a memory store lost it).
    /// Returns the job's progress while it is alive.
    pub(crate) fn attach(
        &self,
        id: JobId,
        owner: Owner,
        submitter: Submitter,
    ) -> Result<Option<ProgressRef>, JobError> {
        let mut st = self.state();
        if let Submitter::Member { conn, .. } = &submitter {
            st.owners.insert(*conn, owner);
        }
        let progress = if owner == Owner::HUB {
            self.find_progress(&st, id)
        } else {
            st.member_jobs.get(id, owner)
        };
        let submitter = match progress {
            Some(progress) if progress.is_cancelled() => {
                submitter.resolve(Err(JobError::Cancelled), self.codec);
                return Ok(None);
            }
            Some(progress) => match progress.attach(submitter) {
                Ok(()) => return Ok(Some(progress)),
                Err(submitter) => submitter,
            },
            None => submitter,
        };
        let shared = st.shared;
        match st.results.get(id) {
            Some(kept) if owner == Owner::HUB || kept.owner == owner => {
                submitter.resolve(Ok(&kept.output), self.codec);
                Ok(None)
            }
            // Another hub may hold it: the shared store looks it up.
            None if shared => self.watch(st, id, owner, submitter),
            _ => Err(JobError::NotFound),
        }
    }

    /// The progress of live job `id`, wherever it is (waiting ones are found by a scan).
    fn find_progress(&self, st: &State, id: JobId) -> Option<ProgressRef> {
        let progress = st
            .awaiting
            .get(&id)
            .or_else(|| st.jobs.get(&id))
            .map(|e| e.shared_progress())
            .or_else(|| st.ready.find(id).map(|(job, _)| job.progress()))?;
        Some(progress.clone())
    }

    /// Keeps a completed job's result for the retention, releasing the keys of results
    /// that go.
    fn keep_result(
        &self,
        st: &mut State,
        (id, entry): (JobId, &mut Entry),
        output: &Bytes,
        (at, expires): (u64, Instant),
    ) {
        let name = entry.name_arc();
        let key = entry
            .options()
            .key
            .as_deref()
            .map(|key| Keys::full(&name, key));
        let mut gone = Vec::new();
        let mut last = Attempt::started(entry.attempts, entry.worker, entry.started_at);
        last.ended_at = Some(at);
        let retained = Retained::new(
            output.clone(),
            entry.owner,
            key,
            name,
            entry.submitted_at,
            last,
            std::mem::take(&mut entry.past),
        );
        // A result let go for room is forgotten by a durable store too (which otherwise
        // keeps it, and rewrites it at each compaction, until its retention ends); a
        // shared store keeps results its own way.
        let store = (!st.shared).then_some(&st.store);
        st.results.insert(
            id,
            retained,
            expires,
            self.options.max_results,
            &mut gone,
            |id| {
                if let Some(store) = store {
                    store.record(Change::Removed { id });
                }
            },
        );
        for (key, id) in gone {
            st.keys.release(&key, id);
        }
    }

    /// A job that ends without a kept result (cancelled, dead) releases its unique key.
    fn release_key(st: &mut State, id: JobId, entry: &Entry) {
        if let Some(key) = &entry.options().key {
            let full = Keys::full(st.ready.name(entry.name), key);
            st.keys.release(&full, id);
        }
    }

    /// What follows queueing jobs: a delayed job may be due before the dispatcher's timer;
    /// ready ones start at once where credits are free (and an attempt started here may
    /// be due before that timer too).
    fn after_queueing(&self, st: &mut State, delayed: bool, now: Instant) {
        if delayed {
            self.request_dispatch(st);
        } else if st.workers.free() > 0 {
            self.dispatch_in(st, now);
            if st
                .next_due()
                .is_some_and(|at| st.timer.is_none_or(|t| at < t))
            {
                self.request_dispatch(st);
            }
        }
    }

    /// Queues many hub-side jobs of one kind with the same options: all of them, or none
    /// (a full queue refuses the whole batch; its room is held from the start). The jobs
    /// are queued in chunks of [`SUBMIT_CHUNK`], one hold of the lock and one dispatch
    /// round each: the first jobs run while the rest are queued, and answers are taken
    /// between chunks (other submissions may queue jobs between them too). The payloads
    /// may be slices of one buffer (one allocation for the batch), and the progress of
    /// each chunk's jobs is one allocation ([`ProgressRef::batch`]). Each job's
    /// [`Queued`] goes through `make` (the submitter's handle, say) into the returned
    /// vector, in order: one vector for the batch, not one of `Queued` and another of
    /// what is made of them.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub(crate) fn submit_many<T>(
        &self,
        name: &str,
        payloads: impl ExactSizeIterator<Item = Bytes>,
        options: &JobOptions,
        mut make: impl FnMut(Queued) -> T,
    ) -> Result<Vec<T>, JobError> {
        check_name(name)?;
        options.check(&self.options)?;
        if options.key.is_some() {
            return Err(InvalidJob::KeyInBatch.into());
        }
        self.store.check().map_err(JobError::Store)?;
        let count = payloads.len();
        let delay = options.delay.filter(|d| !d.is_zero());
        let (name, fresh) = {
            let mut st = self.state();
            if st.queued().saturating_add(count) > self.options.capacity {
                return Err(JobError::QueueFull {
                    capacity: self.options.capacity,
                });
            }
            st.reserved += count;
            let name = st.ready.intern(name);
            if delay.is_none() && !st.shared {
                st.ready.reserve(name.0, options.priority, count);
            }
            // Jobs with the default options wait without an entry until dispatched.
            let fresh = !st.shared && *options == JobOptions::default();
            (name, fresh)
        };
        let mut queued = Vec::with_capacity(count);
        let mut chunk = Vec::with_capacity(SUBMIT_CHUNK.min(count));
        let mut payloads = payloads.fuse();
        let mut left = count;
        loop {
            // Built before taking the lock; the name holds its place in the table. The
            // chunk's progress is one allocation, made as the chunk is (so the first jobs
            // run while the rest are made, and a chunk's is freed once its jobs are done).
            chunk.extend(
                payloads
                    .by_ref()
                    .zip(ProgressRef::batch(SUBMIT_CHUNK.min(left)))
                    .map(|(payload, progress)| {
                        let job = if fresh {
                            Waiting::Fresh(Fresh::new(payload, progress.clone(), 0))
                        } else {
                            let mut entry = Entry::with_progress(
                                payload,
                                options.clone(),
                                Some(Submitter::Handle),
                                progress.clone(),
                            );
                            entry.named((name.0, Arc::clone(&name.1)));
                            Waiting::Entry(entry)
                        };
                        let id = new_job_id();
                        queued.push(make((id, Delivery::Progress, progress)));
                        (id, job)
                    }),
            );
            if chunk.is_empty() {
                break;
            }
            left = left.saturating_sub(chunk.len());
            self.queue_chunk(&mut chunk, (name.0, &name.1), delay);
        }
        if left > 0 {
            // Fewer payloads than announced: the rest of the room goes back.
            let mut st = self.state();
            st.reserved = st.reserved.saturating_sub(left);
        }
        Ok(queued)
    }

    /// Queues one chunk of a batch ([`submit_many`](Self::submit_many)), whose room is
    /// held already, and gives free credits its jobs.
    fn queue_chunk(
        &self,
        chunk: &mut Vec<(JobId, Waiting)>,
        (name_id, name): (NameId, &str),
        delay: Option<std::time::Duration>,
    ) {
        let mut st = self.state();
        st.reserved = st.reserved.saturating_sub(chunk.len());
        let now = Instant::now();
        let at = wall_now();
        let on_shared = st.shared;
        for (id, job) in chunk.drain(..) {
            let mut entry = match job {
                Waiting::Fresh(mut fresh) => {
                    fresh.submitted_at = at;
                    st.store.record(Change::Submitted {
                        id,
                        name,
                        payload: &fresh.payload,
                        options: &JobOptions::default(),
                        owner: Owner::HUB,
                        at,
                    });
                    st.ready.push_fresh(name_id, id, fresh);
                    continue;
                }
                Waiting::Entry(entry) => entry,
            };
            entry.submitted_at = at;
            st.store.record(Change::Submitted {
                id,
                name,
                payload: &entry.payload,
                options: entry.options(),
                owner: Owner::HUB,
                at,
            });
            match delay {
                _ if on_shared => {
                    st.awaiting.insert(id, entry);
                }
                Some(d) => st.schedule(id, entry, after(now, d)),
                None => st.make_ready(id, entry),
            }
        }
        if !on_shared {
            self.after_queueing(&mut st, delay.is_some(), now);
        }
    }

    /// Cancels a job wherever it is; a running attempt is dropped on its worker. The
    /// job's `progress` (shared with its entry) marks a waiting one, which the dispatcher
    /// then drops; its handle resolves at once by the same mark.
    pub(crate) fn cancel(&self, id: JobId, progress: &Progress) {
        let mut st = self.state();
        if st
            .awaiting
            .get(&id)
            .is_some_and(|entry| entry.owns(progress))
        {
            return self.cancel_awaiting(st, id);
        }
        let held = st.jobs.get(&id).is_some_and(|entry| entry.owns(progress));
        let Some(mut entry) = held.then(|| st.jobs.remove(&id)).flatten() else {
            if progress.is_queued() && !progress.is_cancelled() {
                progress.cancel();
                st.ready.cancelled_one();
                st.store.record(Change::Cancelled { id });
            }
            return;
        };
        progress.cancel();
        st.store.record(Change::Cancelled { id });
        Self::release_key(&mut st, id, &entry);
        match entry.status {
            Status::Waiting => {}
            Status::Delayed => st.delayed_count -= 1,
            Status::Running { worker, deadline } => {
                st.deadlines.remove(deadline);
                st.active -= 1;
                if let Some(w) = st.workers.release(worker) {
                    send_drop(&w.link, id, entry.attempts);
                }
                self.request_dispatch(&mut st);
                self.metrics.attempt(AttemptOutcome::Cancelled);
            }
        }
        entry.resolve(Err(JobError::Cancelled), self.codec);
    }

    /// Cancels the jobs of a `__jobs.cancel` frame from `member`: only jobs it submitted.
    ///
    /// # Errors
    /// A malformed frame (the jobs before the bad record are cancelled).
    pub(crate) fn cancel_for(&self, member: Uuid, payload: &[u8]) -> Result<(), Malformed> {
        for id in wire::job_ids(payload) {
            let id = id?;
            let progress = {
                let st = self.state();
                let owner = st.owners.get(&member).copied();
                owner.and_then(|owner| st.member_jobs.get(id, owner))
            };
            if let Some(progress) = progress {
                self.cancel(id, &progress);
            }
        }
        Ok(())
    }

    /// Progress reports from worker `conn`: kept only for attempts running there.
    ///
    /// # Errors
    /// A malformed frame (the reports before the bad record count).
    pub(crate) fn progress(&self, conn: Uuid, payload: &[u8]) -> Result<(), Malformed> {
        let st = self.state();
        let worker = st.workers.find(conn);
        for report in wire::progress_reports(payload) {
            let (id, attempt, value) = report?;
            let Some(entry) = st.jobs.get(&id) else {
                continue;
            };
            let running_here =
                matches!(entry.status, Status::Running { worker: w, .. } if Some(w) == worker);
            if running_here && entry.attempts == attempt && value.is_finite() {
                entry.report(value);
                st.store.record(Change::Progress { id, attempt, value });
            }
        }
        Ok(())
    }

    /// A member joined; if it works jobs, it becomes a worker with at most
    /// `worker_credits_limit` credits. Names the hub cannot take are left out.
    pub(crate) fn worker_joined(
        &self,
        conn: Uuid,
        link: Arc<dyn Link>,
        jobs: &[String],
        credits: usize,
        name: Option<String>,
    ) {
        let jobs: Vec<String> = jobs
            .iter()
            .filter(|job| check_name(job).is_ok())
            .cloned()
            .collect();
        let credits = credits.min(self.options.worker_credits_limit);
        if jobs.is_empty() || credits == 0 {
            return;
        }
        let mut st = self.state();
        st.add_worker(conn, link, &jobs, credits, name);
        self.request_dispatch(&mut st);
    }

    /// A member left: its running jobs are requeued at once (that attempt does not
    /// count).
    pub(crate) fn worker_left(&self, conn: Uuid) {
        let mut st = self.state();
        let running = st.active;
        st.owners.remove(&conn);
        if let Some(id) = st.workers.find(conn) {
            if st.drop_worker(id) {
                self.request_dispatch(&mut st);
            }
        }
        let mut requeued = AttemptTally::default();
        requeued.add_n(AttemptOutcome::Requeued, running.saturating_sub(st.active));
        self.metrics.attempts(&requeued);
    }

    /// Worker `conn`'s answers: complete, retry or bury each attempt. Answers for attempts
    /// no longer running there (cancelled, timed out, requeued) are dropped.
    ///
    /// # Errors
    /// A malformed frame (the answers before the bad record count).
    pub(crate) fn answers(self: &Arc<Self>, conn: Uuid, payload: &[u8]) -> Result<(), Malformed> {
        // Outputs outlive the frame (they are delivered once durable, and retained): one
        // copy of the frame, which each output is a slice of.
        let frame = Bytes::copy_from_slice(payload);
        let mut st = self.state();
        let shared = st.shared;
        let worker = st.workers.find(conn);
        let mut result = Ok(());
        let mut freed = false;
        // Outputs are handed over, and finished entries dropped, after the lock is let go.
        // At most the attempts running on the worker finish: one allocation per frame.
        let running = worker
            .and_then(|w| st.workers.get(w))
            .map_or(0, |w| w.active);
        let mut finished = Vec::with_capacity(running);
        let mut tally = AttemptTally::default();
        let mut durations = Durations::new(&self.metrics);
        let now = Instant::now();
        let at = wall_now();
        let retention = self.options.result_retention;
        // On a shared store, results are kept by the hub that took the submission.
        let keep = !retention.is_zero() && self.options.max_results > 0 && !shared;
        let retain_until = at.saturating_add(millis(retention));
        let expires = after(now, retention);
        for done in wire::dones(&frame) {
            let done = match done {
                Ok(done) => done,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            let Some(entry) = worker.and_then(|w| st.end_attempt(done.id, w, done.attempt)) else {
                continue;
            };
            freed = true;
            if let (Status::Running { deadline, .. }, Some(name)) =
                (&entry.status, entry.shared_name())
            {
                // The attempt started its time limit before its deadline.
                let timeout = entry.options().timeout.unwrap_or(self.options.timeout);
                if let Some(started) = deadline.at.checked_sub(timeout) {
                    durations.record(name, now.saturating_duration_since(started));
                }
            }
            match done.outcome {
                Ok(output) => {
                    tally.add(AttemptOutcome::Completed);
                    if let Some(w) = worker.and_then(|w| st.workers.get_mut(w)) {
                        w.completed += 1;
                    }
                    st.completed += 1;
                    // A local store records it here, in order with every transition; a
                    // shared one once the lock is let go (below).
                    if !shared {
                        st.store.record(Change::Completed {
                            id: done.id,
                            attempt: done.attempt,
                            output,
                            at,
                            retain_until,
                        });
                    }
                    let output = frame.slice_ref(output);
                    let mut entry = entry;
                    if keep {
                        self.keep_result(&mut st, (done.id, &mut entry), &output, (at, expires));
                    }
                    finished.push((done.id, entry, output));
                }
                Err(error) => {
                    tally.add(AttemptOutcome::Failed);
                    self.fail_attempt(&mut st, done.id, entry, error.to_owned(), true);
                }
            }
        }
        if freed {
            // The freed credits are given out here, on the connection task that freed
            // them: no wake-up of the dispatcher task and no hop to another thread.
            self.after_queueing(&mut st, false, now);
        }
        drop(st);
        self.metrics.attempts(&tally);
        if finished.is_empty() {
            return result;
        }
        if shared {
            // A shared store makes each outcome durable on its own (its job leaves the
            // engine once the outcome is stored), and its sync would only wait for this
            // hub's submissions: a hop through its tasks per frame for nothing (issue 13).
            // It is told of the completions here, not under the lock: its record encodes
            // each outcome and wakes its task, which under the lock kept the runtime's
            // other thread waiting for it. The jobs left the queue's state above: nothing
            // else records them.
            for (id, entry, output) in &finished {
                self.store.record(&Change::Completed {
                    id: *id,
                    attempt: entry.attempts,
                    output,
                    at,
                    retain_until,
                });
            }
            Self::deliver(Some(self), self.codec, finished);
        } else {
            // Delivered once the completions are durable, so a re-run after a crash cannot
            // answer a handle twice. If they cannot be made durable, they are delivered
            // all the same: the jobs did run.
            let codec = self.codec;
            let queue = Arc::downgrade(self);
            self.store.sync(Commit::new(move |_| {
                Self::deliver(queue.upgrade().as_deref(), codec, finished);
            }));
        }
        result
    }

    /// Resolves the handles of finished jobs with their outputs. Their boxes go back to
    /// the queue (if it is still there), emptied, for the next jobs' entries, if its lock
    /// is free: waiting for it (another connection's answers or round) would cost more
    /// than the allocations the boxes save.
    fn deliver(
        queue: Option<&Queue>,
        codec: CodecKind,
        mut finished: Vec<(JobId, Box<Entry>, Bytes)>,
    ) {
        for (_, entry, output) in &mut finished {
            entry.resolve(Ok(output), codec);
            entry.vacate();
            *output = Bytes::new();
        }
        if let Some(mut st) = queue.and_then(Queue::try_state) {
            st.spare
                .give(finished.into_iter().map(|(_, entry, _)| entry));
        }
    }

    pub(crate) fn stats(&self) -> JobStats {
        let st = self.state();
        let now = Instant::now();
        JobStats {
            waiting: st.ready.waiting(),
            delayed: st.delayed_count,
            active: st.active,
            completed: st.completed,
            failed: st.failed,
            dead: st.dead.len(),
            workers: st
                .workers
                .iter()
                .map(|w| WorkerStats {
                    id: w.conn,
                    name: w.name.clone(),
                    credits: w.credits,
                    active: w.active,
                    completed: w.completed,
                    per_second: w.completed as f64 / (now - w.joined).as_secs_f64().max(1e-3),
                })
                .collect(),
        }
    }

    pub(crate) fn dead_letters(&self) -> Vec<DeadJob> {
        self.state().dead.list()
    }

    /// Puts dead job `id`, a job named `name`, back in the queue with fresh attempts and
    /// the default options, under its id.
    ///
    /// # Errors
    /// [`JobError::NotFound`], [`JobError::WrongKind`], [`JobError::QueueFull`].
    pub(crate) fn requeue_dead(&self, id: JobId, name: &str) -> Result<Queued, JobError> {
        let dead = self.state().dead.take(id, name)?;
        let queued = self.queue(
            dead.id,
            &dead.name,
            Bytes::from(dead.payload.clone()),
            JobOptions::default(),
            (Some(Submitter::Handle), Owner::HUB),
            Origin::Revived(dead.history.clone()),
        );
        match queued {
            Ok((id, progress)) => Ok((id, Delivery::Progress, progress)),
            Err(error) => {
                // Not queued (full): it stays a dead letter, now the newest.
                let mut st = self.state();
                if let Some(evicted) = st.dead.restore(dead, self.options.max_dead) {
                    st.store.record(Change::Removed { id: evicted });
                }
                Err(error)
            }
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The dispatcher holds the queue only while it works: this wakes it to end.
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests;
