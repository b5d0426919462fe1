//! A distributed job queue owned by the hub: jobs spread over the members that work them,
//! and none is lost while a worker is alive.
//!
//! - A job is a value of a type implementing [`Job`]; its `NAME` says which workers can
//!   run it. Workers are members that register a handler
//!   ([`MemberBuilder::worker`](crate::MemberBuilder::worker)) and declare how many jobs
//!   they run at once (their credits).
//! - The hub or any member submits ([`Jobs::submit`], [`MemberJobs::submit`]) and gets a
//!   [`JobHandle`]: a future of the typed result, with [`cancel`](JobHandle::cancel) and
//!   the progress the worker reports.
//! - Dispatch: the job goes to the worker with the most free credits, never beyond its
//!   credits; higher priority first, first in first out within a priority; a delayed job
//!   not before its time. With no worker, jobs wait; the queue is bounded and a full
//!   queue refuses new jobs ([`JobError::QueueFull`]).
//! - Delivery: at least once to workers, exactly once to the submitter (a job resolves
//!   once; later answers for it are dropped). A worker that disconnects or dies has its
//!   jobs requeued at once; a job over its timeout is requeued; a failed job is retried
//!   with exponential backoff and jitter up to its max attempts, then goes to the dead
//!   letters with its last error, where it can be inspected and requeued.
//!
//! Reserved names: the service `__jobs` (on the hub), the connect parameters `jobs` and
//! `job_credits`, and subjects starting `__jobs.`.
//!
//! # How jobs travel
//!
//! Between the hub and its workers jobs go in batches, several to a frame each way, as
//! [`Envelope::Publish`](crate::envelope::Envelope::Publish) frames on reserved subjects
//! that the hub and the worker take for themselves. A dispatch round gives every free credit a job and sends each worker the
//! jobs it got in one frame; a worker runs a batch as it arrives and answers the attempts
//! that finish without waiting in one frame (an attempt that waits answers alone when it
//! ends). Frames are closed at about 16 KiB. The hub keeps the running attempts' deadlines
//! sorted and times them out from its dispatcher task: no task or timer per attempt. All
//! integers little-endian; a frame's payload is its records back to back:
//!
//! | subject | direction | record |
//! |---|---|---|
//! | `__jobs.run` | hub → worker | u128 job id, u32 attempt, u8 length + job name, u32 length + codec-encoded job |
//! | `__jobs.done` | worker → hub | u128 job id, u32 attempt, u8 status (0 output, 1 error), u32 length + codec-encoded output or UTF-8 error |
//! | `__jobs.cancel` | hub → worker | u128 job id, u32 attempt (drop it: cancelled or timed out) |
//! | `__jobs.progress` | worker → hub | one codec-encoded `(u128 id, f64 value)` |
//!
//! The hub takes an answer only from the worker running that attempt, so a late answer
//! (after a timeout, a cancellation or a requeue) is dropped. A malformed batch closes the
//! connection with 1007 (invalid payload), like an undecodable envelope.

mod hashing;
pub(crate) mod queue;
mod remote;
mod wire;
mod worker;

pub(crate) use queue::Queue;
pub use queue::{DeadJob, JobStats, QueueOptions, WorkerStats};
pub(crate) use remote::JobsService;
pub(crate) use wire::{CANCEL_SUBJECT, DONE_SUBJECT, RUN_SUBJECT};
pub use worker::JobContext;
pub(crate) use worker::{WorkerService, JOBS_PARAMETER, JOB_CREDITS_PARAMETER, PROGRESS_SUBJECT};

use crate::codec::{Codec, CodecKind};
use crate::error::RpcError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// A kind of job: its payload type, the name workers register it under, and its output.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct Fnv { data: Vec<u8> }
/// impl cluster_rpc::Job for Fnv {
///     const NAME: &'static str = "fnv";
///     type Output = u64;
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The name workers register this job under.
    const NAME: &'static str;
    /// What a finished job returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

/// A job's id: unique per hub, chosen by the submitter.
pub type JobId = u128;

/// How one job is run. Defaults come from the queue's [`QueueOptions`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobOptions {
    /// Higher runs first. Default 0.
    pub priority: i32,
    /// Not run before this much time from submission.
    pub delay: Option<Duration>,
    /// One attempt's time limit; past it the job is requeued.
    pub timeout: Option<Duration>,
    /// Attempts before the job goes to the dead letters.
    pub max_attempts: Option<u32>,
}

impl JobOptions {
    /// Options with a priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Options with a delay before the first attempt.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Options with a per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Options with a number of attempts.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }
}

/// Why a job produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobError {
    /// Every attempt failed; the job is in the dead letters.
    #[error("job failed {attempts} times, last: {last_error}")]
    Dead {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
    /// The job was cancelled.
    #[error("job cancelled")]
    Cancelled,
    /// The queue is at its capacity.
    #[error("job queue is full ({capacity} jobs)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// A job with this id is already in the queue. Checked at submission against jobs
    /// delayed or running and within a batch, and again when a job would start (ids the
    /// hub makes never collide; a member could reuse one).
    #[error("a job with this id is already queued")]
    Duplicate,
    /// The output or payload did not decode.
    #[error("decode error: {0}")]
    Decode(String),
    /// Talking to the hub failed (member submissions).
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// What the queue answers a submitter: the encoded output, or why not.
pub(crate) type Outcome = Result<Vec<u8>, JobError>;

/// A job's progress, shared by whoever reports it and the job's handle: the last value,
/// and a watch channel made only when someone asks for updates (most never do, and a
/// channel per job is not free).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    bits: AtomicU64,
    updates: Mutex<Option<watch::Sender<f64>>>,
    /// Someone asked for updates: reports and the close go through the channel too.
    watched: std::sync::atomic::AtomicBool,
    closed: std::sync::atomic::AtomicBool,
    /// The job waits in a ready queue (changed under the queue's lock).
    queued: std::sync::atomic::AtomicBool,
    /// The job was cancelled: its handle resolves at once, and a queued entry is dropped
    /// when the dispatcher reaches it.
    cancelled: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn updates(&self) -> std::sync::MutexGuard<'_, Option<watch::Sender<f64>>> {
        self.updates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a report.
    pub(crate) fn set(&self, value: f64) {
        self.bits.store(value.to_bits(), Ordering::Relaxed);
        if self.watched.load(Ordering::SeqCst) {
            if let Some(tx) = &*self.updates() {
                tx.send_replace(value);
            }
        }
    }

    /// The last report (0.0 before the first).
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }

    /// A receiver of the reports; it sees the channel closed once the job resolved.
    pub(crate) fn subscribe(&self) -> watch::Receiver<f64> {
        let mut updates = self.updates();
        self.watched.store(true, Ordering::SeqCst);
        match &*updates {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(self.get());
                if !self.closed.load(Ordering::SeqCst) {
                    *updates = Some(tx);
                }
                rx
            }
        }
    }

    /// Marks the job as waiting in a ready queue, or not.
    pub(crate) fn set_queued(&self, queued: bool) {
        self.queued.store(queued, Ordering::Relaxed);
    }

    /// Whether the job waits in a ready queue.
    pub(crate) fn is_queued(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }

    /// Marks the job cancelled.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether the job was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The job resolved: no more reports, receivers see the channel closed.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if self.watched.load(Ordering::SeqCst) {
            self.updates().take();
        }
    }
}

/// A submitted job: await it for the typed output. Dropping the handle does not cancel
/// the job; [`cancel`](Self::cancel) does.
#[must_use = "a job handle resolves to the job's result"]
pub struct JobHandle<T> {
    id: JobId,
    outcome: oneshot::Receiver<Outcome>,
    progress: Arc<Progress>,
    cancel: Canceller,
    codec: CodecKind,
    _output: PhantomData<fn() -> T>,
}

/// How a handle cancels its job.
pub(crate) enum Canceller {
    /// In the hub's own queue.
    Queue(Arc<Queue>),
    /// A member's submission: stop the call that lasts as long as the job.
    Call(futures_util::future::AbortHandle),
}

impl<T> JobHandle<T> {
    pub(crate) fn new(
        id: JobId,
        outcome: oneshot::Receiver<Outcome>,
        progress: Arc<Progress>,
        cancel: Canceller,
        codec: CodecKind,
    ) -> Self {
        Self {
            id,
            outcome,
            progress,
            cancel,
            codec,
            _output: PhantomData,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Cancels the job: a queued job is removed, a running one is stopped on its worker.
    /// The handle then resolves to [`JobError::Cancelled`].
    pub fn cancel(&self) {
        match &self.cancel {
            Canceller::Queue(queue) => queue.cancel(self.id, &self.progress),
            Canceller::Call(abort) => abort.abort(),
        }
    }

    /// The last progress the worker reported (0.0 until it reports).
    pub fn progress(&self) -> f64 {
        self.progress.get()
    }

    /// A receiver that changes whenever the worker reports progress.
    pub fn progress_updates(&self) -> watch::Receiver<f64> {
        self.progress.subscribe()
    }
}

impl<T: DeserializeOwned> Future for JobHandle<T> {
    type Output = Result<T, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.progress.is_cancelled() && matches!(self.cancel, Canceller::Queue(_)) {
            return Poll::Ready(Err(JobError::Cancelled));
        }
        let outcome = match Pin::new(&mut self.outcome).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(outcome)) => outcome,
            Poll::Ready(Err(_)) => Err(JobError::Cancelled),
        };
        Poll::Ready(outcome.and_then(|bytes| {
            self.codec
                .decode(&bytes)
                .map_err(|e| JobError::Decode(e.to_string()))
        }))
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.id)
            .field("progress", &self.progress.get())
            .finish()
    }
}

/// A new job id: a v4 UUID whose random bits come from a SplitMix64 sequence per thread,
/// seeded once from the thread's random generator. Unique (a 122-bit space, different
/// seeds per thread and process), cheap (no ChaCha block per id); not meant to be
/// unguessable, and nothing uses it as a secret.
pub(crate) fn new_job_id() -> JobId {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
    }
    let next = || {
        STATE.with(|state| {
            let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let bytes = ((u128::from(next()) << 64) | u128::from(next())).to_le_bytes();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .as_u128()
}

/// The hub's job queue. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    queue: Arc<Queue>,
}

impl Jobs {
    pub(crate) fn new(queue: Arc<Queue>) -> Self {
        Self { queue }
    }

    /// Submits a job with default options.
    ///
    /// # Errors
    /// [`JobError::QueueFull`] when the queue is at capacity.
    pub fn submit<J: Job>(&self, job: &J) -> Result<JobHandle<J::Output>, JobError> {
        self.submit_with(job, JobOptions::default())
    }

    /// Submits a job with options (priority, delay, timeout, attempts).
    ///
    /// # Errors
    /// [`JobError::QueueFull`] when the queue is at capacity.
    pub fn submit_with<J: Job>(
        &self,
        job: &J,
        options: JobOptions,
    ) -> Result<JobHandle<J::Output>, JobError> {
        let mut payload = Vec::new();
        self.queue
            .codec()
            .encode(job, &mut payload)
            .map_err(|e| JobError::Decode(e.to_string()))?;
        let id = new_job_id();
        let waiter = self.queue.submit(id, J::NAME, payload, options, None)?;
        Ok(self.handle(id, waiter))
    }

    /// The handle of a job queued in the hub's own queue.
    fn handle<T>(&self, id: JobId, (outcome, progress): queue::Waiter) -> JobHandle<T> {
        JobHandle::new(
            id,
            outcome,
            progress,
            Canceller::Queue(Arc::clone(&self.queue)),
            self.queue.codec(),
        )
    }

    /// Submits many jobs of one kind with default options, all or none: one lock and one
    /// dispatch round for the batch, which is cheaper than a `submit` each. Handles come
    /// back in the order of `jobs`.
    ///
    /// ```no_run
    /// # use cluster_rpc::{Hub, Job};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Resize { image: u32 }
    /// # impl Job for Resize { const NAME: &'static str = "resize"; type Output = u64; }
    /// # async fn run(hub: Hub) -> Result<(), Box<dyn std::error::Error>> {
    /// let jobs: Vec<Resize> = (0..10_000).map(|image| Resize { image }).collect();
    /// let handles = hub.jobs().submit_many(&jobs)?;
    /// for handle in handles {
    ///     let bytes: u64 = handle.await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`JobError::QueueFull`] when the batch does not fit (nothing is queued then);
    /// [`JobError::Decode`] when a job does not encode.
    pub fn submit_many<'a, J: Job + 'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
    ) -> Result<Vec<JobHandle<J::Output>>, JobError> {
        self.submit_many_with(jobs, JobOptions::default())
    }

    /// [`submit_many`](Self::submit_many) with options for every job of the batch.
    ///
    /// # Errors
    /// As [`submit_many`](Self::submit_many).
    pub fn submit_many_with<'a, J: Job + 'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
        options: JobOptions,
    ) -> Result<Vec<JobHandle<J::Output>>, JobError> {
        let codec = self.queue.codec();
        let jobs = jobs.into_iter();
        let mut encoded = Vec::with_capacity(jobs.size_hint().0);
        for job in jobs {
            let mut payload = Vec::new();
            codec
                .encode(job, &mut payload)
                .map_err(|e| JobError::Decode(e.to_string()))?;
            encoded.push((new_job_id(), payload));
        }
        let ids: Vec<JobId> = encoded.iter().map(|(id, _)| *id).collect();
        let waiters = self.queue.submit_many(J::NAME, encoded, &options)?;
        Ok(ids
            .into_iter()
            .zip(waiters)
            .map(|(id, waiter)| self.handle(id, waiter))
            .collect())
    }

    /// Counts and per-worker load.
    pub fn stats(&self) -> JobStats {
        self.queue.stats()
    }

    /// Jobs that failed every attempt, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadJob> {
        self.queue.dead_letters()
    }

    /// Puts a dead job back in the queue with fresh attempts; its original submitter's
    /// handle has resolved already, so the result goes to the returned handle.
    ///
    /// # Errors
    /// [`JobError::QueueFull`], or [`JobError::Decode`] if no dead job has this id.
    pub fn requeue_dead<T>(&self, id: JobId) -> Result<JobHandle<T>, JobError> {
        let waiter = self.queue.requeue_dead(id)?;
        Ok(self.handle(id, waiter))
    }
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Submitting jobs from a member: the hub queues them, workers run them.
#[derive(Clone)]
pub struct MemberJobs {
    member: crate::Member,
}

impl MemberJobs {
    pub(crate) fn new(member: crate::Member) -> Self {
        Self { member }
    }

    /// Submits a job with default options.
    ///
    /// # Errors
    /// [`JobError::Decode`] if the job does not encode; queue errors arrive through the
    /// handle.
    pub fn submit<J: Job>(&self, job: &J) -> Result<JobHandle<J::Output>, JobError> {
        self.submit_with(job, JobOptions::default())
    }

    /// Submits a job with options.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub fn submit_with<J: Job>(
        &self,
        job: &J,
        options: JobOptions,
    ) -> Result<JobHandle<J::Output>, JobError> {
        remote::submit_from_member(&self.member, job, J::NAME, options)
    }

    /// The hub queue's counts and per-worker load.
    ///
    /// # Errors
    /// When the hub cannot be asked.
    pub async fn stats(&self) -> Result<JobStats, RpcError> {
        remote::stats(&self.member).await
    }
}

impl fmt::Debug for MemberJobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberJobs").finish_non_exhaustive()
    }
}
