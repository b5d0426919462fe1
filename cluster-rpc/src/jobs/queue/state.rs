//! The queue's state under its lock: the jobs (ready, delayed, running), the workers, the
//! dead letters, and the transitions a job goes through.
//!
//! A job's life: queued ([`State::make_ready`] or [`State::schedule`]), started on a
//! worker ([`State::start`]), then completed, failed (retried or buried), cancelled, or
//! requeued when its worker leaves ([`State::drop_worker`]). These transitions are the
//! places a storage backend records; everything else here is scheduling.

use super::dead::DeadLetters;
use super::deadlines::{DeadlineKey, Deadlines};
use super::ready::{NameId, Ready};
use super::results::{Keys, Results};
use super::workers::{WorkerId, Workers};
use crate::codec::CodecKind;
use crate::jobs::handle::{Outcome, Progress, ProgressRef, WeakProgress};
use crate::jobs::id::IdMap;
use crate::jobs::store::{
    unix_millis, Attempt, Change, Commit, JobStore, MemoryStore, Owner, UnixMillis,
};
use crate::jobs::wire::{self, UPDATE_SUBJECT};
use crate::jobs::{JobError, JobId, JobOptions};
use crate::link::Link;
use bytes::Bytes;
use foldhash::fast::RandomState;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

pub(super) enum Status {
    Waiting,
    Delayed,
    Running {
        worker: WorkerId,
        deadline: DeadlineKey,
    },
}

/// Who waits for a job's outcome.
pub(crate) enum Submitter {
    /// The hub itself, whose handle reads the outcome in the job's progress
    /// ([`Delivery::Progress`](crate::jobs::handle::Delivery)): the job's first submitter.
    Handle,
    /// The hub itself: a handle's channel (handles attached later).
    Local(oneshot::Sender<Outcome>),
    /// A member: its connection, and the ticket it knows the job by.
    Member {
        conn: Uuid,
        link: Arc<dyn Link>,
        ticket: u64,
    },
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Submitter::Handle => f.write_str("Handle"),
            Submitter::Local(_) => f.write_str("Local"),
            Submitter::Member { conn, ticket, .. } => f
                .debug_struct("Member")
                .field("conn", conn)
                .field("ticket", ticket)
                .finish(),
        }
    }
}

impl Submitter {
    /// Hands the outcome over; a member gets it in a result frame. A member that left
    /// does not get it (the job ran anyway). A [`Handle`](Submitter::Handle) is resolved through its job's progress
    /// ([`Entry::resolve`]), not here.
    pub(super) fn resolve(self, outcome: Result<&Bytes, JobError>, codec: CodecKind) {
        match self {
            Submitter::Handle => {}
            Submitter::Local(tx) => {
                let _ = tx.send(outcome.cloned());
            }
            Submitter::Member { link, ticket, .. } => {
                let outcome = outcome.map(|bytes| &bytes[..]);
                let _ =
                    wire::with_result_frame(ticket, outcome, codec, |frame| link.send_frame(frame));
            }
        }
    }

    /// Forwards a progress report to a member submitter (the hub's own handles share the
    /// job's progress already).
    fn forward_progress(&self, value: f64) {
        if let Submitter::Member { link, ticket, .. } = self {
            let mut batch = wire::Batch::new(UPDATE_SUBJECT);
            batch.push_update(*ticket, value);
            let _ = link.send_frame(batch.frame());
        }
    }
}

/// One job in the queue.
pub(super) struct Entry {
    /// Its name's place in the ready table (set by [`named`](Self::named)).
    pub(super) name: NameId,
    /// Its name: keeps the name's place in the table while the job lives.
    shared_name: Option<Arc<str>>,
    /// The codec-encoded job, as submitted (a batch's jobs are slices of one buffer);
    /// copied into each batch it is sent in.
    pub(super) payload: Bytes,
    /// Its options when it set any ([`options`](Self::options)); most jobs use the
    /// defaults, which take no room here.
    custom: Option<Box<JobOptions>>,
    /// Attempts started; the running attempt's number.
    pub(super) attempts: u32,
    pub(super) status: Status,
    /// Taken when the job resolves, so it resolves once.
    pub(super) submitter: Option<Submitter>,
    /// Who may attach to its result.
    pub(super) owner: Owner,
    /// When it was accepted.
    pub(super) submitted_at: UnixMillis,
    /// The running (or last started) attempt's worker and start.
    pub(super) worker: Uuid,
    pub(super) started_at: UnixMillis,
    /// Attempts that ended without completing the job, oldest first (most jobs have none:
    /// no allocation).
    pub(super) past: Vec<Attempt>,
    progress: ProgressGuard,
}

impl Entry {
    /// A new entry, and the progress it shares with its submitter. Made before taking
    /// the lock; its name is set under it ([`named`](Self::named)).
    pub(super) fn new(
        payload: Bytes,
        options: JobOptions,
        submitter: Option<Submitter>,
    ) -> (Box<Self>, ProgressRef) {
        let progress = ProgressRef::new();
        let entry = Self::with_progress(payload, options, submitter, progress.clone());
        (entry, progress)
    }

    /// A new entry sharing `progress` with its submitter (a batch's jobs share one
    /// allocation of progress).
    pub(super) fn with_progress(
        payload: Bytes,
        options: JobOptions,
        submitter: Option<Submitter>,
        progress: ProgressRef,
    ) -> Box<Self> {
        Self::placed(None, payload, options, submitter, progress)
    }

    /// This entry in `spare` if given (no allocation), else in a new box.
    fn boxed_in(self, spare: Option<Box<Self>>) -> Box<Self> {
        match spare {
            Some(mut boxed) => {
                *boxed = self;
                boxed
            }
            None => Box::new(self),
        }
    }

    /// A new entry sharing `progress`, in `spare` if given (a [`vacate`](Self::vacate)d
    /// box of a finished entry: a job a shared store pulled takes no allocation for it).
    pub(super) fn placed(
        spare: Option<Box<Self>>,
        payload: Bytes,
        options: JobOptions,
        submitter: Option<Submitter>,
        progress: ProgressRef,
    ) -> Box<Self> {
        let custom = (options != JobOptions::default()).then(|| Box::new(options));
        let entry = Entry {
            name: NameId::MAX,
            shared_name: None,
            payload,
            custom,
            attempts: 0,
            status: Status::Waiting,
            submitter,
            owner: Owner::HUB,
            submitted_at: 0,
            worker: Uuid::nil(),
            started_at: 0,
            past: Vec::new(),
            progress: ProgressGuard(progress),
        };
        entry.boxed_in(spare)
    }

    /// The entry of a [fresh](super::ready::Fresh) job named `name`, made when it is
    /// dispatched: the default options, the hub's handle its submitter.
    /// It goes into `spare` if given (a box of a finished entry, [`vacate`](Self::vacate)d);
    /// a box whose last job had the same name keeps its copy of the name, so the name's
    /// count (which every job of the name shares, across the runtime's threads) is not
    /// touched.
    pub(super) fn fresh(
        mut spare: Option<Box<Self>>,
        payload: Bytes,
        progress: ProgressGuard,
        submitted_at: UnixMillis,
        (name, shared_name): (NameId, &Arc<str>),
    ) -> Box<Self> {
        let shared_name = match spare.as_mut().and_then(|boxed| boxed.shared_name.take()) {
            Some(kept) if Arc::ptr_eq(&kept, shared_name) => kept,
            _ => Arc::clone(shared_name),
        };
        let entry = Entry {
            name,
            shared_name: Some(shared_name),
            payload,
            custom: None,
            attempts: 0,
            status: Status::Waiting,
            submitter: Some(Submitter::Handle),
            owner: Owner::HUB,
            submitted_at,
            worker: Uuid::nil(),
            started_at: 0,
            past: Vec::new(),
            progress,
        };
        entry.boxed_in(spare)
    }

    /// Empties a resolved entry so that its box can hold another job
    /// ([`fresh`](Self::fresh)): its payload and history go now and its progress is
    /// closed, as if it were dropped. The closed progress and the name are let go when the
    /// box is reused (the name is kept if the next job has it too); a kept box holds its
    /// name's place in the table until then (at most [`SPARE_ENTRIES`] boxes are kept).
    pub(super) fn vacate(&mut self) {
        self.progress.0.close();
        self.payload = Bytes::new();
        self.custom = None;
        self.submitter = None;
        self.past = Vec::new();
    }

    /// Its options.
    pub(super) fn options(&self) -> &JobOptions {
        static DEFAULT: JobOptions = JobOptions {
            priority: 0,
            delay: None,
            timeout: None,
            max_attempts: None,
            key: None,
        };
        self.custom.as_deref().unwrap_or(&DEFAULT)
    }

    /// Its name, as the entry keeps it ("" before it is set).
    pub(super) fn name_arc(&self) -> Arc<str> {
        self.shared_name.clone().unwrap_or_else(|| Arc::from(""))
    }

    /// Sets the entry's name, as interned in the ready table.
    pub(super) fn named(&mut self, (name, shared): (NameId, Arc<str>)) {
        self.name = name;
        self.shared_name = Some(shared);
    }

    /// Its name, once set.
    pub(super) fn shared_name(&self) -> Option<&Arc<str>> {
        self.shared_name.as_ref()
    }

    /// The last progress its worker reported.
    pub(super) fn progress(&self) -> f64 {
        self.progress.0.get()
    }

    /// Whether `progress` is this job's (and not another job's under a reused id).
    pub(super) fn owns(&self, progress: &Progress) -> bool {
        std::ptr::eq(&*self.progress.0, progress)
    }

    /// Records a worker's progress report and forwards it to a member submitter.
    pub(super) fn report(&self, value: f64) {
        self.progress.0.set(value);
        if let Some(submitter) = &self.submitter {
            submitter.forward_progress(value);
        }
    }

    /// The attempt that ran last ended (failed, timed out, released): into the history.
    pub(super) fn end_attempt(&mut self, at: UnixMillis, error: &str) {
        let mut attempt = Attempt::started(self.attempts, self.worker, self.started_at);
        attempt.ended_at = Some(at);
        attempt.error = Some(error.to_owned());
        self.past.push(attempt);
    }

    /// Its attempts, oldest first: the past ones and the one running (or that completed
    /// it, ending at `completed`).
    pub(super) fn history(&self, running: bool, completed: Option<UnixMillis>) -> Vec<Attempt> {
        let mut history = self.past.clone();
        if running || completed.is_some() {
            let mut last = Attempt::started(self.attempts, self.worker, self.started_at);
            last.ended_at = completed;
            history.push(last);
        }
        history
    }

    /// The progress it shares with its submitters (and their cancels).
    pub(super) fn shared_progress(&self) -> &ProgressRef {
        &self.progress.0
    }

    /// Resolves the job with `outcome`, once, for every submitter attached.
    pub(super) fn resolve(&mut self, outcome: Result<&Bytes, JobError>, codec: CodecKind) {
        let submitter = self.submitter.take();
        let here = matches!(submitter, Some(Submitter::Handle));
        let waiters = self
            .progress
            .0
            .resolve(here.then(|| outcome.clone().cloned()));
        if let Some(submitter) = submitter {
            submitter.resolve(outcome.clone(), codec);
        }
        for waiter in waiters {
            waiter.resolve(outcome.clone(), codec);
        }
    }
}

/// Closes a job's progress when its entry goes (the job resolved or the hub stopped).
pub(super) struct ProgressGuard(pub(super) ProgressRef);

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Jobs members submitted, by id: which owner (the member's secret, the same across its
/// reconnects) a cancel or an attach must come from, and the progress it marks. Entries of
/// resolved jobs (whose progress is gone) are swept as the map grows.
#[derive(Default)]
pub(super) struct MemberJobs {
    by_id: IdMap<(Owner, WeakProgress)>,
    sweep_at: usize,
}

impl MemberJobs {
    pub(super) fn insert(&mut self, id: JobId, member: Owner, progress: &ProgressRef) {
        if self.by_id.len() >= self.sweep_at {
            self.by_id.retain(|_, (_, progress)| !progress.is_gone());
            self.sweep_at = (2 * self.by_id.len()).max(1024);
        }
        self.by_id.insert(id, (member, progress.downgrade()));
    }

    /// The progress of `member`'s job `id`, if it is still in the queue.
    pub(super) fn get(&self, id: JobId, member: Owner) -> Option<ProgressRef> {
        match self.by_id.get(&id) {
            Some((owner, progress)) if *owner == member => progress.upgrade(),
            _ => None,
        }
    }
}

/// The queue's store, under its lock: what every transition is recorded in.
pub(super) struct Store(pub(super) Arc<dyn JobStore>);

impl Default for Store {
    fn default() -> Self {
        Self(Arc::new(MemoryStore::new()))
    }
}

impl Store {
    pub(super) fn record(&self, change: Change<'_>) {
        self.0.record(&change);
    }

    /// Finishes `commit` once every change recorded so far is durable.
    pub(super) fn sync(&self, commit: Commit) {
        self.0.sync(commit);
    }
}

/// Why a released attempt ended, in a job's history.
pub(super) const RELEASED: &str = "its worker left (this attempt does not count)";

/// Wall-clock now, as stores keep times.
pub(super) fn wall_now() -> u64 {
    unix_millis(SystemTime::now())
}

/// Everything under the queue's lock.
#[derive(Default)]
pub(super) struct State {
    pub(super) store: Store,
    pub(super) seq: u64,
    pub(super) ready: Ready,
    pub(super) workers: Workers,
    pub(super) delayed: BinaryHeap<Reverse<(Instant, u64, JobId)>>,
    /// Running attempts' deadlines: what the dispatcher times out.
    pub(super) deadlines: Deadlines,
    /// Delayed and running jobs (waiting ones are in `ready`): a map as small as the
    /// workers' credits under load, so its lookups stay in the cache.
    pub(super) jobs: IdMap<Box<Entry>>,
    /// The store is shared by several hubs: it holds the waiting jobs, and pulls them.
    pub(super) shared: bool,
    /// On a shared store: the jobs submitted here, by id, until their outcome comes back
    /// from the hub that ran them (or they are cancelled).
    pub(super) awaiting: IdMap<Box<Entry>>,
    pub(super) dead: DeadLetters,
    pub(super) member_jobs: MemberJobs,
    /// The owner each member connection submitted or attached as.
    pub(super) owners: HashMap<Uuid, Owner, RandomState>,
    pub(super) results: Results,
    pub(super) keys: Keys,
    pub(super) delayed_count: usize,
    /// Room held for the jobs of batches not queued yet.
    pub(super) reserved: usize,
    pub(super) active: usize,
    pub(super) completed: u64,
    pub(super) failed: u64,
    /// The dispatcher has been woken and has not run yet.
    pub(super) dispatch_requested: bool,
    /// When the dispatcher's timer fires, if it is set.
    pub(super) timer: Option<Instant>,
    /// The wall clock when the current dispatch round began: its attempts' start.
    pub(super) round_wall: UnixMillis,
    /// Boxes of finished entries, for the next fresh jobs' entries.
    pub(super) spare: Spare,
}

/// Boxes of finished entries kept for reuse, at most.
const SPARE_ENTRIES: usize = 1024;

/// Boxes of finished entries, emptied ([`Entry::vacate`]), for the next fresh jobs'
/// entries ([`Entry::fresh`]): no malloc and free per job.
#[derive(Default)]
#[expect(
    clippy::vec_box,
    reason = "the boxes are what is reused: entries moved in and out by value cost more"
)]
pub(super) struct Spare(Vec<Box<Entry>>);

impl Spare {
    /// A box to reuse, if there is one.
    pub(super) fn take(&mut self) -> Option<Box<Entry>> {
        self.0.pop()
    }

    /// Keeps `boxes` (emptied) for reuse, up to [`SPARE_ENTRIES`]; the rest are freed.
    pub(super) fn give(&mut self, boxes: impl IntoIterator<Item = Box<Entry>>) {
        let room = SPARE_ENTRIES.saturating_sub(self.0.len());
        self.0.extend(boxes.into_iter().take(room));
    }

    /// Boxes kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

impl State {
    /// Jobs waiting or delayed, and the room held for batches being queued: what the
    /// capacity bounds.
    pub(super) fn queued(&self) -> usize {
        self.ready.waiting() + self.delayed_count + self.awaiting.len() + self.reserved
    }

    /// Queues a job to run as soon as a worker of its name is free.
    pub(super) fn make_ready(&mut self, id: JobId, mut entry: Box<Entry>) {
        entry.status = Status::Waiting;
        self.ready.push(id, entry);
    }

    /// Holds a job until `at`.
    pub(super) fn schedule(&mut self, id: JobId, mut entry: Box<Entry>, at: Instant) {
        entry.status = Status::Delayed;
        self.jobs.insert(id, entry);
        self.seq += 1;
        self.delayed.push(Reverse((at, self.seq, id)));
        self.delayed_count += 1;
    }

    /// Starts an attempt of a job on `worker`, due by `at` (`own` when its timeout is not
    /// the queue's): the job joins the worker's batch for this round.
    pub(super) fn start(
        &mut self,
        id: JobId,
        mut entry: Box<Entry>,
        worker: WorkerId,
        (at, own): (Instant, bool),
    ) {
        self.seq += 1;
        let deadline = self.deadlines.push(at, self.seq, id, own);
        entry.attempts = entry.attempts.saturating_add(1);
        entry.status = Status::Running { worker, deadline };
        let name = self.ready.name(entry.name);
        let conn = self
            .workers
            .give(worker, id, entry.attempts, name, &entry.payload);
        entry.worker = conn.unwrap_or_default();
        entry.started_at = self.round_wall;
        self.store.record(Change::Started {
            id,
            attempt: entry.attempts,
            worker: entry.worker,
            at: entry.started_at,
        });
        tracing::trace!(job.id = %Uuid::from_u128(id), job.attempt = entry.attempts, "job started");
        self.jobs.insert(id, entry);
        self.active += 1;
    }

    /// The running attempt of job `id` on `worker`, number `attempt`, ended: its deadline
    /// and the worker's credit are released. `None` if that attempt is not running there
    /// (it timed out, was cancelled or requeued): its answer is late and dropped.
    pub(super) fn end_attempt(
        &mut self,
        id: JobId,
        worker: WorkerId,
        attempt: u32,
    ) -> Option<Box<Entry>> {
        // Taken out first (one lookup); a late answer's entry goes back.
        let entry = self.jobs.remove(&id)?;
        let deadline = match entry.status {
            Status::Running {
                worker: w,
                deadline,
            } if w == worker && entry.attempts == attempt => deadline,
            _ => {
                self.jobs.insert(id, entry);
                return None;
            }
        };
        self.deadlines.remove(deadline);
        self.active -= 1;
        self.workers.release(worker);
        Some(entry)
    }

    /// The worker and attempt of the attempt of job `id` due at `key`, if it runs.
    pub(super) fn running(&self, id: JobId, key: DeadlineKey) -> Option<(WorkerId, u32)> {
        let entry = self.jobs.get(&id)?;
        match entry.status {
            Status::Running { worker, deadline } if deadline == key => {
                Some((worker, entry.attempts))
            }
            _ => None,
        }
    }

    /// A worker joined: its names get it as a worker.
    pub(super) fn add_worker(
        &mut self,
        conn: Uuid,
        link: Arc<dyn Link>,
        jobs: &[String],
        credits: usize,
        name: Option<String>,
    ) {
        let names: Vec<NameId> = jobs.iter().map(|job| self.ready.intern(job).0).collect();
        let worker = super::workers::Worker::new(conn, link, name, names.clone(), credits);
        let id = self.workers.insert(worker);
        for name in names {
            self.ready.add_worker(name, id);
        }
    }

    /// Forgets a worker and requeues its running jobs (that attempt does not count).
    /// Returns whether it was a worker.
    pub(super) fn drop_worker(&mut self, id: WorkerId) -> bool {
        let Some(worker) = self.workers.remove(id) else {
            return false;
        };
        for name in &worker.jobs {
            self.ready.remove_worker(*name, id);
        }
        // Its running jobs, by deadline.
        let mut orphans: Vec<(DeadlineKey, JobId)> = self
            .jobs
            .iter()
            .filter_map(|(job, e)| match e.status {
                Status::Running { worker, deadline } if worker == id => Some((deadline, *job)),
                _ => None,
            })
            .collect();
        orphans.sort_unstable();
        for (key, job) in orphans {
            self.deadlines.remove(key);
            self.active -= 1;
            if let Some(mut entry) = self.jobs.remove(&job) {
                self.store.record(Change::Released {
                    id: job,
                    attempt: entry.attempts,
                });
                if self.shared {
                    // The shared store gives it back to the engine, for any hub.
                    continue;
                }
                entry.end_attempt(wall_now(), RELEASED);
                entry.attempts = entry.attempts.saturating_sub(1);
                self.make_ready(job, entry);
            }
        }
        true
    }

    /// When the dispatcher must look again without being woken: the next delayed job or
    /// attempt deadline.
    pub(super) fn next_due(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse((at, _, _))| *at);
        let deadline = self.deadlines.first().map(|(key, _)| key.at);
        match (delayed, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
