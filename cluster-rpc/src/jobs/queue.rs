//! The queue's state and its dispatcher: one std mutex, short critical sections, jobs
//! sent to workers in batches, attempt deadlines kept sorted in the queue.

use super::hashing::IdHash;
use super::wire::{self, Batch, Malformed, CANCEL_SUBJECT, RUN_SUBJECT};
use super::{JobError, JobId, JobOptions, Outcome, Progress};
use crate::codec::{Codec, CodecKind};
use crate::error::RpcError;
use crate::link::Link;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Limits and defaults of a hub's job queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Most jobs waiting or delayed at once; more are refused. Default: 1,000,000.
    pub capacity: usize,
    /// One attempt's time limit when the job sets none. Default: 30 s.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Attempts when the job sets none. Default: 3.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with ±50 % jitter. Default: 100 ms.
    #[serde(with = "millis")]
    pub backoff: Duration,
    /// Longest retry delay. Default: 10 s.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
    /// Dead jobs kept for inspection; older ones are forgotten. Default: 10,000.
    pub max_dead: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            capacity: 1_000_000,
            timeout: Duration::from_secs(30),
            max_attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_dead: 10_000,
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

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
    /// Jobs it runs at once at most.
    pub credits: usize,
    /// Jobs it runs now.
    pub active: usize,
    /// Jobs it finished.
    pub completed: u64,
    /// Jobs it finished per second since it joined.
    pub per_second: f64,
}

/// A job that failed every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadJob {
    /// Its id.
    pub id: JobId,
    /// Its job name.
    pub name: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: String,
    /// The encoded job, for inspection.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// One connected worker.
struct Worker {
    link: Arc<dyn Link>,
    name: Option<String>,
    /// The job names it runs, interned: compared by pointer first.
    jobs: Vec<Arc<str>>,
    credits: usize,
    active: usize,
    completed: u64,
    joined: Instant,
    /// The jobs given to it in the current dispatch round; sent when the round ends (or
    /// when the frame is full).
    batch: Batch,
}

impl Worker {
    fn runs(&self, name: &Arc<str>) -> bool {
        self.jobs
            .iter()
            .any(|j| Arc::ptr_eq(j, name) || **j == **name)
    }
}

/// Where a running attempt sits among the deadlines: its time, then a tie-breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct DeadlineKey {
    at: Instant,
    seq: u64,
}

enum Status {
    Waiting,
    Delayed,
    Running { worker: Uuid, deadline: DeadlineKey },
}

struct Entry {
    name: Arc<str>,
    /// The codec-encoded job, as submitted; copied into each batch it is sent in.
    payload: Vec<u8>,
    options: JobOptions,
    /// Attempts started; the running attempt's number.
    attempts: u32,
    status: Status,
    /// The submitter; taken when the job resolves, so it resolves once.
    waiter: Option<oneshot::Sender<Outcome>>,
    progress: ProgressGuard,
    /// Where to forward progress for a member submitter (a pub/sub subject).
    progress_subject: Option<String>,
}

impl Entry {
    /// A new waiting entry (its name is interned under the lock), and where its outcome
    /// and progress arrive.
    fn new(
        payload: Vec<u8>,
        options: JobOptions,
        progress_subject: Option<String>,
    ) -> (Box<Self>, Waiter) {
        let (tx, rx) = oneshot::channel();
        let progress = Arc::new(Progress::default());
        let entry = Box::new(Entry {
            name: Arc::from(""),
            payload,
            options,
            attempts: 0,
            status: Status::Waiting,
            waiter: Some(tx),
            progress: ProgressGuard(Arc::clone(&progress)),
            progress_subject,
        });
        (entry, (rx, progress))
    }
}

/// Closes a job's progress when its entry goes (the job resolved or the hub stopped).
struct ProgressGuard(Arc<Progress>);

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[derive(Default)]
struct State {
    seq: u64,
    /// Ready jobs by priority, highest first; first in first out within a priority. The
    /// queue owns waiting entries here: dispatching takes them in order without a lookup
    /// in `jobs`. A cancelled one stays until the front (or a compaction) drops it.
    ready: BTreeMap<Reverse<i32>, VecDeque<(JobId, Box<Entry>)>>,
    /// Cancelled entries still in `ready`.
    cancelled_waiting: usize,
    delayed: BinaryHeap<Reverse<(Instant, u64, JobId)>>,
    /// Running attempts by deadline, with their job and worker: what the dispatcher
    /// times out. As many entries as attempts running (at most the workers' credits).
    deadlines: BTreeMap<DeadlineKey, (JobId, Uuid)>,
    /// Delayed and running jobs (waiting ones are in `ready`): a map as small as the
    /// workers' credits under load, so its lookups stay in the cache. Boxed: an entry is
    /// made before taking the lock, and moves between here and `ready` as a pointer.
    jobs: HashMap<JobId, Box<Entry>, IdHash>,
    workers: HashMap<Uuid, Worker, IdHash>,
    /// Free credits over all workers: a submission skips the dispatch round when none.
    free: usize,
    /// Job names seen, shared by their entries.
    names: HashSet<Arc<str>, IdHash>,
    dead: VecDeque<DeadJob>,
    waiting: usize,
    delayed_count: usize,
    active: usize,
    completed: u64,
    failed: u64,
    /// The dispatcher has been woken and has not run yet.
    dispatch_requested: bool,
    /// When the dispatcher's timer fires, if it is set.
    timer: Option<Instant>,
}

/// Where a submitter learns its job's outcome and progress.
pub(crate) type Waiter = (oneshot::Receiver<Outcome>, Arc<Progress>);

/// Publishes progress for member submitters (set by the hub: its pub/sub router).
pub(crate) type ProgressSink = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// The hub's job queue.
///
/// One std mutex guards the state; nothing awaits while holding it. Jobs go out in
/// batches: a dispatch round gives every free credit a ready job and sends each worker
/// the jobs it got in one frame (frames are only queued on the connection, never
/// awaited). Rounds run in place on submission, and on the dispatcher task after answers,
/// cancellations and departures: a connection's burst of answer frames is taken whole
/// before the next round, so answers and jobs travel many to a frame under load. The same
/// task promotes delayed jobs and times out attempts, whose deadlines the queue keeps
/// sorted: no task or timer per attempt.
pub(crate) struct Queue {
    state: Mutex<State>,
    wake: Notify,
    options: QueueOptions,
    codec: CodecKind,
    stop: CancellationToken,
    progress_sink: ProgressSink,
}

impl Queue {
    /// A queue and its dispatcher task, which runs until `stop`.
    pub(crate) fn start(
        options: QueueOptions,
        codec: CodecKind,
        stop: CancellationToken,
        progress_sink: ProgressSink,
    ) -> Arc<Self> {
        let queue = Arc::new(Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            options,
            codec,
            stop,
            progress_sink,
        });
        tokio::spawn(Arc::clone(&queue).run_dispatcher());
        queue
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn codec(&self) -> CodecKind {
        self.codec
    }

    /// Wakes the dispatcher task for a round, once until it runs.
    fn request_dispatch(&self, st: &mut State) {
        if !st.dispatch_requested {
            st.dispatch_requested = true;
            self.wake.notify_one();
        }
    }

    /// Queues a job; returns where its outcome and progress arrive.
    pub(crate) fn submit(
        &self,
        id: JobId,
        name: &str,
        payload: Vec<u8>,
        options: JobOptions,
        progress_subject: Option<String>,
    ) -> Result<Waiter, JobError> {
        let delay = options.delay.filter(|d| !d.is_zero());
        // Made before taking the lock; the name is filled in under it.
        let (mut entry, waiter) = Entry::new(payload, options, progress_subject);
        {
            let mut st = self.state();
            if st.waiting + st.delayed_count >= self.options.capacity {
                return Err(JobError::QueueFull {
                    capacity: self.options.capacity,
                });
            }
            if st.jobs.contains_key(&id) {
                return Err(JobError::Duplicate);
            }
            entry.name = st.intern(name);
            let now = Instant::now();
            match delay {
                Some(d) => st.schedule(id, entry, now + d),
                None => st.make_ready(id, entry),
            }
            self.after_queueing(&mut st, delay.is_some(), now);
        }
        tracing::trace!(job.id = %Uuid::from_u128(id), job.name = name, "job queued");
        Ok(waiter)
    }

    /// What follows queueing jobs: a delayed job may be due before the dispatcher's timer;
    /// ready ones start at once where credits are free (and an attempt started here may
    /// be due before that timer too).
    fn after_queueing(&self, st: &mut State, delayed: bool, now: Instant) {
        if delayed {
            self.request_dispatch(st);
        } else if st.free > 0 {
            self.dispatch_in(st, now);
            if st
                .next_due()
                .is_some_and(|at| st.timer.is_none_or(|t| at < t))
            {
                self.request_dispatch(st);
            }
        }
    }

    /// Queues many jobs of one kind with the same options: all of them, or none (a full
    /// queue or a duplicate id refuses the whole batch). One lock and one dispatch round
    /// for the batch; the lock is held while it is queued, so a very large batch delays
    /// answers that much.
    pub(crate) fn submit_many(
        &self,
        name: &str,
        jobs: Vec<(JobId, Vec<u8>)>,
        options: &JobOptions,
    ) -> Result<Vec<Waiter>, JobError> {
        let mut waiters = Vec::with_capacity(jobs.len());
        let mut entries = Vec::with_capacity(jobs.len());
        for (id, payload) in jobs {
            let (entry, waiter) = Entry::new(payload, options.clone(), None);
            entries.push((id, entry));
            waiters.push(waiter);
        }
        let delay = options.delay.filter(|d| !d.is_zero());
        let mut st = self.state();
        if st.waiting + st.delayed_count + entries.len() > self.options.capacity {
            return Err(JobError::QueueFull {
                capacity: self.options.capacity,
            });
        }
        let mut ids = HashSet::with_capacity_and_hasher(entries.len(), IdHash::default());
        if entries
            .iter()
            .any(|(id, _)| st.jobs.contains_key(id) || !ids.insert(*id))
        {
            return Err(JobError::Duplicate);
        }
        let name = st.intern(name);
        let now = Instant::now();
        if delay.is_none() {
            st.ready
                .entry(Reverse(options.priority))
                .or_default()
                .reserve(entries.len());
        }
        for (id, mut entry) in entries {
            entry.name = Arc::clone(&name);
            match delay {
                Some(d) => st.schedule(id, entry, now + d),
                None => st.make_ready(id, entry),
            }
        }
        self.after_queueing(&mut st, delay.is_some(), now);
        Ok(waiters)
    }

    /// Cancels a job wherever it is; a running attempt is dropped on its worker. The
    /// job's `progress` (shared with its entry) marks a waiting one, which the dispatcher
    /// then drops; its handle resolves at once by the same mark.
    pub(crate) fn cancel(&self, id: JobId, progress: &Progress) {
        let mut st = self.state();
        // The entry under this id must be this job's (a member may reuse another's id).
        let held = st
            .jobs
            .get(&id)
            .is_some_and(|entry| std::ptr::eq(Arc::as_ptr(&entry.progress.0), progress));
        let Some(mut entry) = held.then(|| st.jobs.remove(&id)).flatten() else {
            if progress.is_queued() && !progress.is_cancelled() {
                progress.cancel();
                st.waiting -= 1;
                st.cancelled_waiting += 1;
                st.compact_ready();
            }
            return;
        };
        progress.cancel();
        match entry.status {
            Status::Waiting => st.waiting -= 1,
            Status::Delayed => st.delayed_count -= 1,
            Status::Running { worker, deadline } => {
                st.deadlines.remove(&deadline);
                st.active -= 1;
                if let Some(w) = st.release(worker) {
                    send_cancel(w, id, entry.attempts);
                }
                self.request_dispatch(&mut st);
            }
        }
        if let Some(waiter) = entry.waiter.take() {
            let _ = waiter.send(Err(JobError::Cancelled));
        }
    }

    /// Progress a worker reported for a job.
    pub(crate) fn progress(&self, id: JobId, value: f64) {
        let forward = {
            let st = self.state();
            let Some(entry) = st.jobs.get(&id) else {
                return;
            };
            entry.progress.0.set(value);
            entry.progress_subject.clone()
        };
        if let Some(subject) = forward {
            let mut payload = Vec::new();
            if self.codec.encode(&value, &mut payload).is_ok() {
                (self.progress_sink)(&subject, &payload);
            }
        }
    }

    /// A member joined; if it works jobs, it becomes a worker.
    pub(crate) fn worker_joined(
        &self,
        id: Uuid,
        link: Arc<dyn Link>,
        jobs: Vec<String>,
        credits: usize,
        name: Option<String>,
    ) {
        if jobs.is_empty() || credits == 0 {
            return;
        }
        let mut st = self.state();
        st.free += credits;
        let jobs = jobs.iter().map(|job| st.intern(job)).collect();
        st.workers.insert(
            id,
            Worker {
                link,
                name,
                jobs,
                credits,
                active: 0,
                completed: 0,
                joined: Instant::now(),
                batch: Batch::new(RUN_SUBJECT),
            },
        );
        self.request_dispatch(&mut st);
    }

    /// A member left: its running jobs are requeued at once (that attempt does not
    /// count).
    pub(crate) fn worker_left(&self, id: Uuid) {
        let mut st = self.state();
        if st.drop_worker(id) {
            self.request_dispatch(&mut st);
        }
    }

    /// A worker's answers: complete, retry or bury each attempt. Answers for attempts no
    /// longer running there (cancelled, timed out, requeued) are dropped.
    ///
    /// # Errors
    /// A malformed frame (the answers before the bad record count).
    pub(crate) fn answers(&self, worker_id: Uuid, payload: &[u8]) -> Result<(), Malformed> {
        let mut st = self.state();
        let mut result = Ok(());
        let mut freed = false;
        // Outputs are handed over, and finished entries dropped, after the lock is let go.
        let mut finished = Vec::new();
        for done in wire::dones(payload) {
            let done = match done {
                Ok(done) => done,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            let deadline = match st.jobs.get(&done.id).map(|e| &**e) {
                Some(Entry {
                    status: Status::Running { worker, deadline },
                    attempts,
                    ..
                }) if *worker == worker_id && *attempts == done.attempt => *deadline,
                _ => continue,
            };
            st.deadlines.remove(&deadline);
            st.active -= 1;
            freed = true;
            let worker = st.release(worker_id);
            match done.outcome {
                Ok(output) => {
                    if let Some(w) = worker {
                        w.completed += 1;
                    }
                    st.completed += 1;
                    if let Some(entry) = st.jobs.remove(&done.id) {
                        finished.push((entry, output));
                    }
                }
                Err(error) => self.retry_or_bury(&mut st, done.id, error.to_owned(), true),
            }
        }
        if freed {
            self.request_dispatch(&mut st);
        }
        drop(st);
        for (mut entry, output) in finished {
            if let Some(waiter) = entry.waiter.take() {
                let _ = waiter.send(Ok(output.to_vec()));
            }
        }
        result
    }

    pub(crate) fn stats(&self) -> JobStats {
        let st = self.state();
        let now = Instant::now();
        JobStats {
            waiting: st.waiting,
            delayed: st.delayed_count,
            active: st.active,
            completed: st.completed,
            failed: st.failed,
            dead: st.dead.len(),
            workers: st
                .workers
                .iter()
                .map(|(id, w)| WorkerStats {
                    id: *id,
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
        self.state().dead.iter().cloned().collect()
    }

    pub(crate) fn requeue_dead(&self, id: JobId) -> Result<Waiter, JobError> {
        let dead = {
            let mut st = self.state();
            let at = st
                .dead
                .iter()
                .position(|d| d.id == id)
                .ok_or_else(|| JobError::Decode("no dead job with this id".into()))?;
            st.dead.remove(at)
        };
        let Some(dead) = dead else {
            return Err(JobError::Decode("no dead job with this id".into()));
        };
        self.submit(
            dead.id,
            &dead.name,
            dead.payload,
            JobOptions::default(),
            None,
        )
    }

    /// The dispatcher task: a dispatch round whenever woken, delayed jobs when due,
    /// timeouts when due.
    async fn run_dispatcher(self: Arc<Self>) {
        // One timer, moved only when something is due earlier than it is set for; waking
        // early is harmless (the round finds nothing due and sets it again).
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut fired = true;
        loop {
            let armed = {
                let mut st = self.state();
                st.dispatch_requested = false;
                if fired {
                    st.timer = None;
                }
                let now = Instant::now();
                self.promote_delayed(&mut st, now);
                self.expire(&mut st, now);
                self.dispatch_in(&mut st, now);
                if let Some(at) = st.next_due() {
                    if st.timer.is_none_or(|t| at < t) {
                        sleep.as_mut().reset(at);
                        st.timer = Some(at);
                    }
                }
                st.timer.is_some()
            };
            fired = false;
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = &mut sleep, if armed => fired = true,
            }
        }
        // Hub stopped: everyone still waiting learns it.
        let mut st = self.state();
        let waiting: Vec<Box<Entry>> = std::mem::take(&mut st.ready)
            .into_values()
            .flatten()
            .map(|(_, entry)| entry)
            .collect();
        let held: Vec<Box<Entry>> = st.jobs.drain().map(|(_, entry)| entry).collect();
        for mut entry in waiting.into_iter().chain(held) {
            if let Some(waiter) = entry.waiter.take() {
                let _ = waiter.send(Err(JobError::Rpc(RpcError::Cancelled)));
            }
        }
    }

    /// Delayed jobs whose time has come become ready.
    fn promote_delayed(&self, st: &mut State, now: Instant) {
        while let Some(Reverse((at, _, id))) = st.delayed.peek().copied() {
            if at > now {
                break;
            }
            st.delayed.pop();
            if matches!(st.jobs.get(&id).map(|e| &e.status), Some(Status::Delayed)) {
                st.delayed_count -= 1;
                if let Some(entry) = st.jobs.remove(&id) {
                    st.make_ready(id, entry);
                }
            }
        }
    }

    /// Attempts past their deadline are dropped on their worker and requeued.
    fn expire(&self, st: &mut State, now: Instant) {
        while let Some((&key, &(id, worker_id))) = st.deadlines.first_key_value() {
            if key.at > now {
                break;
            }
            st.deadlines.remove(&key);
            let attempt = match st.jobs.get(&id).map(|e| &**e) {
                Some(Entry {
                    status: Status::Running { deadline, .. },
                    attempts,
                    ..
                }) if *deadline == key => *attempts,
                _ => continue,
            };
            st.active -= 1;
            if let Some(w) = st.release(worker_id) {
                send_cancel(w, id, attempt);
            }
            tracing::debug!(job.id = %Uuid::from_u128(id), job.attempt = attempt, "job timed out");
            self.retry_or_bury(st, id, "timed out".into(), false);
        }
    }

    /// A dispatch round: gives ready jobs to workers with free credits, in priority order,
    /// then sends each worker its batch.
    fn dispatch_in(&self, st: &mut State, now: Instant) {
        loop {
            self.assign(st, now);
            let failed = st.flush_batches();
            if failed.is_empty() {
                return;
            }
            // A worker that cannot take frames is gone: its jobs go to the others now.
            for id in failed {
                tracing::debug!(worker = %id, "worker refused a batch; requeueing its jobs");
                st.drop_worker(id);
            }
        }
    }

    fn assign(&self, st: &mut State, now: Instant) {
        loop {
            let Some(mut front) = st.ready.first_entry() else {
                return;
            };
            let Some((_, entry)) = front.get().front() else {
                front.remove();
                continue;
            };
            if entry.progress.0.is_cancelled() {
                front.get_mut().pop_front();
                st.cancelled_waiting -= 1;
                continue;
            }
            // The worker running this job with the most free credits.
            let pick = st
                .workers
                .iter()
                .filter(|(_, w)| w.active < w.credits && w.runs(&entry.name))
                .max_by_key(|(_, w)| w.credits - w.active)
                .map(|(id, _)| *id);
            let Some(worker_id) = pick else {
                // Strict priority order: the best job waits for a worker, the rest too.
                return;
            };
            let Some((id, mut entry)) = front.get_mut().pop_front() else {
                continue;
            };
            if front.get().is_empty() {
                front.remove();
            }
            entry.progress.0.set_queued(false);
            if st.jobs.contains_key(&id) {
                // A member reused the id of a job running or delayed: this one is refused.
                st.waiting -= 1;
                if let Some(waiter) = entry.waiter.take() {
                    let _ = waiter.send(Err(JobError::Duplicate));
                }
                continue;
            }
            st.jobs.insert(id, entry);
            self.start_attempt(st, id, worker_id, now);
        }
    }

    fn start_attempt(&self, st: &mut State, id: JobId, worker_id: Uuid, now: Instant) {
        st.seq += 1;
        let seq = st.seq;
        let (Some(worker), Some(entry)) = (st.workers.get_mut(&worker_id), st.jobs.get_mut(&id))
        else {
            return;
        };
        let entry = &mut **entry;
        let timeout = entry.options.timeout.unwrap_or(self.options.timeout);
        let deadline = DeadlineKey {
            at: now + timeout,
            seq,
        };
        entry.attempts += 1;
        entry.status = Status::Running {
            worker: worker_id,
            deadline,
        };
        worker.active += 1;
        st.free -= 1;
        if worker.batch.is_full() {
            // Rare (large jobs): this frame goes now, the round's next frame starts.
            let _ = worker.link.send_frame(worker.batch.frame());
            worker.batch.clear();
        }
        worker
            .batch
            .push_run(id, entry.attempts, &entry.name, &entry.payload);
        tracing::trace!(job.id = %Uuid::from_u128(id), job.attempt = entry.attempts, "job started");
        st.deadlines.insert(deadline, (id, worker_id));
        st.waiting -= 1;
        st.active += 1;
    }

    fn retry_or_bury(&self, st: &mut State, id: JobId, error: String, backoff: bool) {
        st.failed += 1;
        let Some(entry) = st.jobs.get(&id) else {
            return;
        };
        let max = entry
            .options
            .max_attempts
            .unwrap_or(self.options.max_attempts)
            .max(1);
        if entry.attempts >= max {
            let Some(mut entry) = st.jobs.remove(&id) else {
                return;
            };
            tracing::warn!(job.id = %Uuid::from_u128(id), attempts = entry.attempts, cause = %error, "job dead");
            if let Some(waiter) = entry.waiter.take() {
                let _ = waiter.send(Err(JobError::Dead {
                    attempts: entry.attempts,
                    last_error: error.clone(),
                }));
            }
            if st.dead.len() >= self.options.max_dead {
                st.dead.pop_front();
            }
            st.dead.push_back(DeadJob {
                id,
                name: entry.name.to_string(),
                attempts: entry.attempts,
                last_error: error,
                payload: std::mem::take(&mut entry.payload),
            });
            return;
        }
        let delay = backoff.then(|| backoff_delay(&self.options, entry.attempts));
        let Some(entry) = st.jobs.remove(&id) else {
            return;
        };
        match delay {
            Some(delay) => {
                st.schedule(id, entry, Instant::now() + delay);
                self.request_dispatch(st);
            }
            None => st.make_ready(id, entry),
        }
    }
}

/// Tells a worker to drop an attempt (cancelled or timed out). A refused frame means the
/// worker is leaving, which drops the attempt too.
fn send_cancel(worker: &Worker, id: JobId, attempt: u32) {
    let mut batch = Batch::new(CANCEL_SUBJECT);
    batch.push_cancel(id, attempt);
    let _ = worker.link.send_frame(batch.frame());
}

impl State {
    /// The shared copy of a job name.
    fn intern(&mut self, name: &str) -> Arc<str> {
        match self.names.get(name) {
            Some(name) => Arc::clone(name),
            None => {
                let interned: Arc<str> = Arc::from(name);
                self.names.insert(Arc::clone(&interned));
                interned
            }
        }
    }

    /// One of `worker`'s credits is free again; returns the worker if it is still here.
    fn release(&mut self, worker: Uuid) -> Option<&mut Worker> {
        let w = self.workers.get_mut(&worker)?;
        w.active -= 1;
        self.free += 1;
        Some(w)
    }

    /// Queues a waiting entry at the back of its priority.
    fn make_ready(&mut self, id: JobId, mut entry: Box<Entry>) {
        entry.status = Status::Waiting;
        entry.progress.0.set_queued(true);
        let priority = entry.options.priority;
        self.ready
            .entry(Reverse(priority))
            .or_default()
            .push_back((id, entry));
        self.waiting += 1;
    }

    /// Frees cancelled entries waiting in the ready queues once they outnumber the live
    /// ones (or are all there is), instead of when the dispatcher reaches them.
    fn compact_ready(&mut self) {
        if self.waiting > 0
            && (self.cancelled_waiting < 1024 || self.cancelled_waiting < self.waiting)
        {
            return;
        }
        for queue in self.ready.values_mut() {
            queue.retain(|(_, entry)| !entry.progress.0.is_cancelled());
        }
        self.ready.retain(|_, queue| !queue.is_empty());
        self.cancelled_waiting = 0;
    }

    /// Holds an entry until `at`.
    fn schedule(&mut self, id: JobId, mut entry: Box<Entry>, at: Instant) {
        entry.status = Status::Delayed;
        self.jobs.insert(id, entry);
        self.seq += 1;
        self.delayed.push(Reverse((at, self.seq, id)));
        self.delayed_count += 1;
    }

    /// When the dispatcher must look again without being woken: the next delayed job or
    /// attempt deadline.
    fn next_due(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse((at, _, _))| *at);
        let deadline = self.deadlines.first_key_value().map(|(key, _)| key.at);
        match (delayed, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends every worker the batch of this round; returns the workers that refused it.
    fn flush_batches(&mut self) -> Vec<Uuid> {
        let mut failed = Vec::new();
        for (id, worker) in &mut self.workers {
            if worker.batch.is_empty() {
                continue;
            }
            if worker.link.send_frame(worker.batch.frame()).is_err() {
                failed.push(*id);
            }
            worker.batch.clear();
        }
        failed
    }

    /// Forgets a worker and requeues its running jobs (that attempt does not count).
    /// Returns whether it was a worker.
    fn drop_worker(&mut self, id: Uuid) -> bool {
        let Some(worker) = self.workers.remove(&id) else {
            return false;
        };
        self.free -= worker.credits.saturating_sub(worker.active);
        let orphans: Vec<(DeadlineKey, JobId)> = self
            .deadlines
            .iter()
            .filter(|(_, (_, worker))| *worker == id)
            .map(|(key, (job, _))| (*key, *job))
            .collect();
        for (key, job) in orphans {
            self.deadlines.remove(&key);
            self.active -= 1;
            if let Some(mut entry) = self.jobs.remove(&job) {
                entry.attempts = entry.attempts.saturating_sub(1);
                self.make_ready(job, entry);
            }
        }
        true
    }
}

/// Exponential backoff with ±50 % jitter: `backoff * 2^(attempt-1)`, capped.
fn backoff_delay(options: &QueueOptions, attempt: u32) -> Duration {
    let exp = options
        .backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(options.max_backoff);
    let jitter: f64 = rand::random_range(0.5..1.5);
    exp.mul_f64(jitter).min(options.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_fifo() {
        let mut st = State::default();
        for (id, priority) in [(1, 0), (2, 5), (3, 0), (4, 5)] {
            let (waiter, _) = oneshot::channel();
            let progress = ProgressGuard(Arc::default());
            st.make_ready(
                id,
                Box::new(Entry {
                    name: Arc::from("x"),
                    payload: Vec::new(),
                    options: JobOptions::default().priority(priority),
                    attempts: 0,
                    status: Status::Waiting,
                    waiter: Some(waiter),
                    progress,
                    progress_subject: None,
                }),
            );
        }
        let order: Vec<JobId> = st.ready.values().flatten().map(|(id, _)| *id).collect();
        assert_eq!(order, [2, 4, 1, 3]);
        assert_eq!(st.waiting, 4);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let options = QueueOptions::default();
        for attempt in 1..10 {
            let d = backoff_delay(&options, attempt);
            let base = options.backoff * 2u32.pow(attempt - 1);
            assert!(d >= base.min(options.max_backoff) / 2, "{attempt}: {d:?}");
            assert!(d <= options.max_backoff);
        }
    }
}
