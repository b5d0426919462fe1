//! A distributed job queue owned by the hub: jobs spread over the members that work them,
//! and none is lost while a worker is alive.
//!
//! - A job is a value of a type implementing [`Job`]; its `NAME` says which workers can
//!   run it. Workers are members that register a handler
//!   ([`MemberBuilder::worker`](crate::MemberBuilder::worker)) and declare how many jobs
//!   they run at once (their credits). A handler returns `Result<Output, E>` with any
//!   error type that converts into a boxed error (any `std::error::Error`, a `String`).
//! - The hub or any member submits ([`Jobs::submit`], [`MemberJobs::submit`]) and gets a
//!   [`JobHandle`]: a future of the typed result, with [`cancel`](JobHandle::cancel) and
//!   the progress the worker reports. The hub assigns every job's id.
//! - Dispatch: a job goes to the worker of its name with the most free credits, never
//!   beyond its credits. Within a name, higher priority first, first in first out within
//!   a priority; a delayed job not before its time. Names take turns, so a name without a
//!   free worker holds up no other name, and a worker serving several names serves each in
//!   turn. With no worker, jobs wait; the queue is bounded and a full queue refuses new
//!   jobs ([`JobError::QueueFull`]).
//! - Delivery: at least once to workers, exactly once to the submitter (a job resolves
//!   once; later answers for it are dropped). A worker that disconnects or dies has its
//!   jobs requeued at once; a job over its timeout is requeued; a failed job is retried
//!   with exponential backoff and jitter up to its max attempts, then goes to the dead
//!   letters with its last error, where it can be inspected and requeued.
//! - Members are untrusted: a submission's name and options are checked against the
//!   hub's limits ([`QueueOptions`]: longest timeout and delay, most attempts; refused
//!   with [`JobError::Invalid`]), a worker gets at most `worker_credits_limit` credits
//!   whatever it announces, a worker's answers and progress count only for attempts
//!   running on it, and a member cancels only jobs it submitted.
//!
//! - Durability ([`store`]): the queue keeps its state through a [`JobStore`]. Without a
//!   data directory it is a [`MemoryStore`] (nothing outlives the hub); with one
//!   ([`HubBuilder::jobs_storage`](crate::HubBuilder::jobs_storage)) a [`LogStore`]
//!   journals every change with group commit. A submission resolves once the job is
//!   durable; a result is delivered once its completion is durable. After a crash or
//!   `kill -9`, a hub started on the directory has its waiting, delayed and dead jobs and
//!   kept results back; jobs that were running wait again, that attempt counted.
//! - Results outlive connections: kept for [`QueueOptions::result_retention`];
//!   [`Jobs::result`] and [`MemberJobs::result`] attach new handles by id, and a member's
//!   handles re-attach after it reconnects. Each handle resolves once.
//! - Unique jobs: [`JobOptions::key`]; submitting a job whose name and key a waiting,
//!   running or kept job holds returns that job's handle.
//! - Operations: [`Jobs::job`] (where a job is and its history), [`Jobs::list`],
//!   [`Jobs::cancel`], [`Jobs::requeue_dead_any`], [`Jobs::delete_dead`]; members holding
//!   the hub's jobs admin token ([`JOBS_ADMIN_PARAMETER`]) the same through
//!   [`MemberJobs`].
//!
//! Reserved names: the service `__jobs` (on the hub), the connect parameters `jobs`,
//! `job_credits` and `jobs_admin`, and subjects whose first token starts with `__`
//! (members can neither publish nor subscribe on them).
//!
//! # How jobs travel
//!
//! Jobs go in batches, several to a frame each way, as
//! [`Envelope::Publish`](crate::envelope::Envelope::Publish) frames on reserved subjects
//! that the hub and its members take for themselves. A dispatch round gives every free
//! credit a job and sends each worker the jobs it got in one frame; a worker runs a batch
//! as it arrives and answers the attempts that finish without waiting in one frame (an
//! attempt that waits answers alone when it ends). Frames are closed at about 16 KiB. The
//! hub keeps the running attempts' deadlines sorted and times them out from its
//! dispatcher task: no task or timer per attempt. All integers little-endian; a frame's
//! payload is its records back to back:
//!
//! | subject | direction | record |
//! |---|---|---|
//! | `__jobs.run` | hub → worker | u128 job id, u32 attempt, u8 length + job name, u32 length + codec-encoded job |
//! | `__jobs.drop` | hub → worker | u128 job id, u32 attempt (drop it: cancelled or timed out) |
//! | `__jobs.done` | worker → hub | u128 job id, u32 attempt, u8 status (0 output, 1 error), u32 length + codec-encoded output or UTF-8 error |
//! | `__jobs.progress` | worker → hub | u128 job id, u32 attempt, f64 value |
//! | `__jobs.cancel` | submitter → hub | u128 job id |
//! | `__jobs.result` | hub → submitter | u64 ticket, u8 status (0 output, 1 error), u32 length + codec-encoded output or [`JobError`] |
//! | `__jobs.update` | hub → submitter | u64 ticket, f64 value |
//!
//! A member submits with a call to the hub's `__jobs` service (method `submit`, request
//! `{owner, ticket, name, payload, options}`, answer `Result<JobId, JobError>` once the
//! job is durable): the ticket is the member's own name for the job, under which the hub
//! sends its result and progress; the owner is a random secret the member keeps across
//! reconnects, which cancels and attaches must match. Method `attach` (`{owner, jobs:
//! [(ticket, id)]}`, answered with the tickets that could not be attached and why)
//! attaches handles to jobs by id: after a reconnect, and for [`MemberJobs::result`].
//! Methods `job`, `list`, `requeue`, `cancel` and `delete` (`{id, state, limit}`) are the
//! operator calls, refused with [`JobError::Forbidden`] without the admin token.
//! The hub takes an answer only from the worker running that attempt, so a late answer
//! (after a timeout, a cancellation or a requeue) is dropped. A malformed batch closes the
//! connection with 1007 (invalid payload), like an undecodable envelope.

mod error;
mod handle;
pub(crate) mod id;
mod options;
pub(crate) mod queue;
mod remote;
pub mod store;
mod wire;
mod worker;

pub use error::{InvalidJob, JobError};
pub use handle::JobHandle;
pub(crate) use options::check_name as check_job_name;
pub use options::{JobOptions, QueueOptions, MAX_JOB_KEY_LEN, MAX_JOB_NAME_LEN};
pub(crate) use queue::Queue;
pub use queue::{DeadJob, JobInfo, JobState, JobStats, WorkerStats};
pub use remote::JOBS_ADMIN_PARAMETER;
pub(crate) use remote::{serve as serve_member, Submissions, JOBS_SERVICE};
pub use store::{
    Feed, FsyncPolicy, JobStore, LogOptions, LogStore, MemoryStore, PulledJob, Shared, StoreError,
    StoreStats,
};
#[cfg(feature = "nats")]
pub use store::{JetStreamOptions, JetStreamStats, JetStreamStore};
pub(crate) use wire::{
    CANCEL_SUBJECT, DONE_SUBJECT, DROP_SUBJECT, PROGRESS_SUBJECT, RESULT_SUBJECT, RUN_SUBJECT,
    UPDATE_SUBJECT,
};
pub use worker::JobContext;
pub(crate) use worker::{BoxError, WorkerService, JOBS_PARAMETER, JOB_CREDITS_PARAMETER};

use crate::codec::Codec;
use crate::error::RpcError;
use bytes::Bytes;
use handle::Canceller;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// A kind of job: its payload type, the name workers register it under, and its output.
///
/// `NAME` is 1 to [`MAX_JOB_NAME_LEN`] bytes without a `,`; a job of another name is
/// refused at submission. For bytes, use [`ByteBuf`](crate::ByteBuf): codecs write a
/// plain `Vec<u8>` as a list of numbers.
///
/// ```
/// use cluster_rpc::ByteBuf;
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct Fnv { data: ByteBuf }
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

/// A job's id: unique per hub, assigned by the hub.
pub type JobId = u128;

/// Encodes a job for the queue.
fn encode_job<J: Job>(codec: impl Codec, job: &J) -> Result<Vec<u8>, JobError> {
    let mut payload = Vec::new();
    codec
        .encode(job, &mut payload)
        .map_err(|e| JobError::Encode(e.to_string()))?;
    Ok(payload)
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

    /// Submits a job with default options; resolves once the queue accepted it: once it
    /// is durable, with a durable store.
    ///
    /// # Errors
    /// [`JobError::QueueFull`] when the queue is at capacity, [`JobError::Invalid`] for a
    /// job name the queue cannot take, [`JobError::Encode`], [`JobError::Store`] when the
    /// store cannot keep it (the job is not queued then).
    pub async fn submit<J: Job>(&self, job: &J) -> Result<JobHandle<J::Output>, JobError> {
        self.submit_with(job, JobOptions::default()).await
    }

    /// Submits a job with options (priority, delay, timeout, attempts).
    ///
    /// # Errors
    /// As [`submit`](Self::submit), and [`JobError::Invalid`] for options over the
    /// queue's limits ([`QueueOptions`]).
    pub async fn submit_with<J: Job>(
        &self,
        job: &J,
        options: JobOptions,
    ) -> Result<JobHandle<J::Output>, JobError> {
        let payload = encode_job(self.queue.codec(), job)?;
        let queued = self.queue.submit_here(J::NAME, payload, options)?;
        self.queue.accepted([(queued.0, &*queued.2)]).await?;
        Ok(self.handle(queued))
    }

    /// The handle of a job queued in the hub's own queue.
    fn handle<T>(&self, (id, outcome, progress): queue::Queued) -> JobHandle<T> {
        JobHandle::new(
            id,
            outcome,
            progress,
            Canceller::Queue(Arc::clone(&self.queue)),
            self.queue.codec(),
        )
    }

    /// Submits many jobs of one kind with default options, all or none: the batch is
    /// encoded into one buffer, queued in chunks of 512 jobs (one lock and one dispatch
    /// round each, so the first jobs run while the rest are queued) and committed once,
    /// which is cheaper than a `submit` each. Handles come back in the order of `jobs`.
    /// The buffer is freed once every job of the batch is done (a dead letter keeps a
    /// copy of its own payload). The jobs' progress and outcome slots are one allocation
    /// per 512 jobs, freed once those jobs are done and their handles dropped.
    ///
    /// ```no_run
    /// # use cluster_rpc::{Hub, Job};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Resize { image: u32 }
    /// # impl Job for Resize { const NAME: &'static str = "resize"; type Output = u64; }
    /// # async fn run(hub: Hub) -> Result<(), Box<dyn std::error::Error>> {
    /// let jobs: Vec<Resize> = (0..10_000).map(|image| Resize { image }).collect();
    /// let handles = hub.jobs().submit_many(&jobs).await?;
    /// for handle in handles {
    ///     let bytes: u64 = handle.await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`JobError::QueueFull`] when the batch does not fit (nothing is queued then), and
    /// the errors of [`submit`](Self::submit).
    pub async fn submit_many<'a, J: Job + 'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
    ) -> Result<Vec<JobHandle<J::Output>>, JobError> {
        self.submit_many_with(jobs, JobOptions::default()).await
    }

    /// [`submit_many`](Self::submit_many) with options for every job of the batch.
    ///
    /// # Errors
    /// As [`submit_many`](Self::submit_many) and [`submit_with`](Self::submit_with).
    pub async fn submit_many_with<'a, J: Job + 'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
        options: JobOptions,
    ) -> Result<Vec<JobHandle<J::Output>>, JobError> {
        // Every payload is encoded into one buffer, each job's a slice of it: one
        // allocation for the batch, not one (and its regrowths) per job.
        let codec = self.queue.codec();
        let jobs = jobs.into_iter();
        // Where each payload ends in the buffer (it starts where the one before ended).
        let mut ends = Vec::with_capacity(jobs.size_hint().0);
        let mut buffer = Vec::new();
        for job in jobs {
            codec
                .encode(job, &mut buffer)
                .map_err(|e| JobError::Encode(e.to_string()))?;
            if ends.is_empty() {
                // Room for the rest, if they encode to about the first one's size.
                let rest = ends.capacity().saturating_sub(1);
                buffer.reserve(buffer.len().saturating_mul(rest));
            }
            ends.push(buffer.len());
        }
        let buffer = Bytes::from(buffer);
        let mut start = 0;
        let payloads = ends.iter().map(|&end| {
            let payload = buffer.slice(start..end);
            start = end;
            payload
        });
        // The handles are made as the jobs are queued: one vector for the batch.
        let handles = self
            .queue
            .submit_many(J::NAME, payloads, &options, |q| self.handle(q))?;
        let ids = handles.iter().map(|h| (h.id(), h.shared_progress()));
        self.queue.accepted(ids).await?;
        Ok(handles)
    }

    /// A new handle on job `id`, a job of kind `J`: it resolves with the job's outcome once
    /// the job resolves, or at once if the job completed within the result retention
    /// ([`QueueOptions::result_retention`]). For a submitter that lost its handle (its
    /// process restarted and kept the id).
    ///
    /// In a cluster with jobs on JetStream, a job another hub took is looked up there:
    /// the handle waits for it, and resolves with [`JobError::NotFound`] when JetStream
    /// holds neither the job nor its outcome (kept for the result retention).
    ///
    /// # Errors
    /// [`JobError::NotFound`] when no job with this id is waiting, delayed, running or
    /// kept (in a cluster: see above).
    pub fn result<J: Job>(&self, id: JobId) -> Result<JobHandle<J::Output>, JobError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let progress = self
            .queue
            .attach(id, store::Owner::HUB, queue::Submitter::Local(tx))?
            .unwrap_or_default();
        Ok(self.handle((id, handle::Delivery::Channel(rx), progress)))
    }

    /// Counts and per-worker load.
    pub fn stats(&self) -> JobStats {
        self.queue.stats()
    }

    /// The store's own counters (fsyncs, bytes written, size on disk).
    pub fn store_stats(&self) -> StoreStats {
        self.queue.store_stats()
    }

    /// Jobs that failed every attempt, oldest first. With jobs on JetStream (cluster
    /// mode) the dead letters are the cluster's, in its dead-letter stream: none here;
    /// [`cluster_dead_letters`](Self::cluster_dead_letters) and the operator calls of
    /// [`MemberJobs`] on any hub list, requeue and delete them.
    pub fn dead_letters(&self) -> Vec<DeadJob> {
        self.queue.dead_letters()
    }

    /// Up to `limit` dead letters, oldest first, wherever they are kept: this hub's
    /// ([`dead_letters`](Self::dead_letters)), or with jobs on JetStream (cluster mode)
    /// the cluster's, read from its dead-letter stream (without their history) on any
    /// hub.
    ///
    /// # Errors
    /// [`JobError::Store`] when JetStream cannot be read.
    pub async fn cluster_dead_letters(&self, limit: usize) -> Result<Vec<DeadJob>, JobError> {
        match self.queue.shared_dead(|store| store.dead_letters(limit)) {
            Some(listed) => listed.await,
            None => Ok(self.queue.dead_letters().into_iter().take(limit).collect()),
        }
    }

    /// Puts dead job `id` back to run, wherever it is kept: as
    /// [`requeue_dead_any`](Self::requeue_dead_any) on this hub, or with jobs on JetStream
    /// (cluster mode) any of the cluster's dead letters, from any hub, once however many
    /// hubs ask at the same time. Its outcome goes to its submitter.
    ///
    /// # Errors
    /// [`JobError::NotFound`] if no dead job has this id (another hub requeued it first),
    /// [`JobError::QueueFull`], [`JobError::Store`].
    pub async fn cluster_requeue_dead(&self, id: JobId) -> Result<(), JobError> {
        match self.queue.shared_dead(|store| store.requeue_dead(id)) {
            Some(requeued) => requeued.await,
            None => self.queue.requeue_dead_any(id),
        }
    }

    /// Forgets dead job `id`, wherever it is kept (as
    /// [`cluster_dead_letters`](Self::cluster_dead_letters)); false when there is none.
    ///
    /// # Errors
    /// [`JobError::Store`] when JetStream cannot be asked.
    pub async fn cluster_delete_dead(&self, id: JobId) -> Result<bool, JobError> {
        match self.queue.shared_dead(|store| store.delete_dead(id)) {
            Some(deleted) => deleted.await,
            None => Ok(self.queue.delete_dead(id)),
        }
    }

    /// Where job `id` is now (waiting, delayed, running, dead, or completed within the
    /// result retention) and its history: each attempt's worker, start, end and error.
    /// `None` if the queue holds no such job. Finding a waiting job scans its queue: an
    /// operator's lookup, not a hot path.
    pub fn job(&self, id: JobId) -> Option<JobInfo> {
        self.queue.find(id)
    }

    /// Up to `limit` jobs in `state`, with their histories (see
    /// [`job`](Self::job)): waiting ones in the order they run within their name, dead
    /// ones oldest first, completed ones newest first.
    pub fn list(&self, state: JobState, limit: usize) -> Vec<JobInfo> {
        self.queue.list(state, limit)
    }

    /// Cancels job `id` as its handle's [`JobHandle::cancel`] would (its handles resolve
    /// to [`JobError::Cancelled`]); false when no waiting, delayed or running job has it.
    pub fn cancel(&self, id: JobId) -> bool {
        self.queue.cancel_by_id(id)
    }

    /// Puts dead job `id` back in the queue whatever its kind, for tools that do not know
    /// its type: as [`requeue_dead`](Self::requeue_dead), but no handle awaits the result
    /// (it is kept for the retention: [`result`](Self::result)).
    ///
    /// # Errors
    /// [`JobError::NotFound`] if no dead job has this id, [`JobError::QueueFull`].
    pub fn requeue_dead_any(&self, id: JobId) -> Result<(), JobError> {
        self.queue.requeue_dead_any(id)
    }

    /// Forgets a dead job; false when the dead letters hold none with this id.
    pub fn delete_dead(&self, id: JobId) -> bool {
        self.queue.delete_dead(id)
    }

    /// Puts dead job `id`, a job of kind `J`, back in the queue with fresh attempts and
    /// default options; its original submitter's handle has resolved already, so the
    /// result goes to the returned handle.
    ///
    /// # Errors
    /// [`JobError::NotFound`] if no dead job has this id, [`JobError::WrongKind`] if it is
    /// not a `J` (it stays a dead letter then), [`JobError::QueueFull`].
    pub fn requeue_dead<J: Job>(&self, id: JobId) -> Result<JobHandle<J::Output>, JobError> {
        let queued = self.queue.requeue_dead(id, J::NAME)?;
        Ok(self.handle(queued))
    }
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Submitting jobs from a member: the hub checks and queues them, workers run them.
#[derive(Clone)]
pub struct MemberJobs {
    member: crate::Member,
}

impl MemberJobs {
    pub(crate) fn new(member: crate::Member) -> Self {
        Self { member }
    }

    /// Submits a job with default options; resolves once the hub accepted it (the job's
    /// id, assigned by the hub, is then known).
    ///
    /// # Errors
    /// The hub's refusals ([`JobError::QueueFull`], [`JobError::Invalid`]),
    /// [`JobError::Encode`], and [`JobError::Rpc`] when the hub cannot be reached.
    pub async fn submit<J: Job>(&self, job: &J) -> Result<JobHandle<J::Output>, JobError> {
        self.submit_with(job, JobOptions::default()).await
    }

    /// Submits a job with options.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub async fn submit_with<J: Job>(
        &self,
        job: &J,
        options: JobOptions,
    ) -> Result<JobHandle<J::Output>, JobError> {
        let core = self.member.core_handle()?;
        let codec = core.codec();
        let payload = encode_job(codec, job)?;
        let submissions = self.member.submissions();
        let accepted = remote::submit(core, submissions, J::NAME, payload, options).await?;
        Ok(remote::handle(accepted, codec))
    }

    /// A new handle on job `id`, a job of kind `J` that this member submitted (before a
    /// restart of its own process too, if it kept the id): it resolves with the job's
    /// outcome, at once if the job completed within the hub's result retention.
    ///
    /// In a cluster with jobs on JetStream, any hub finds the job (the member may have
    /// failed over from the hub it submitted to); the handle resolves with
    /// [`JobError::NotFound`] when JetStream holds neither the job nor its outcome.
    ///
    /// # Errors
    /// [`JobError::NotFound`] when the hub holds no such job of this member's (never was,
    /// or its result's retention ended); [`JobError::Rpc`] when the hub cannot be asked.
    pub async fn result<J: Job>(&self, id: JobId) -> Result<JobHandle<J::Output>, JobError> {
        let core = self.member.core_handle()?;
        let codec = core.codec();
        let attached = remote::attach(core, self.member.submissions(), id).await?;
        Ok(remote::handle(attached, codec))
    }

    /// Where job `id` is on the hub and its history ([`Jobs::job`]). An operator's call:
    /// the member must have connected with the hub's jobs admin token in the
    /// [`JOBS_ADMIN_PARAMETER`] connect parameter.
    ///
    /// # Errors
    /// [`JobError::Forbidden`] without the token, [`JobError::Rpc`].
    pub async fn job(&self, id: JobId) -> Result<Option<JobInfo>, JobError> {
        remote::admin(self.member.core_handle()?, "job", id, None, 0).await
    }

    /// Up to `limit` jobs in `state` on the hub ([`Jobs::list`]; at most 10,000). An
    /// operator's call, as [`job`](Self::job). With jobs on JetStream (cluster mode), the
    /// dead ones are the cluster's, read from its dead-letter stream (without history).
    ///
    /// # Errors
    /// As [`job`](Self::job).
    pub async fn list(&self, state: JobState, limit: usize) -> Result<Vec<JobInfo>, JobError> {
        remote::admin(self.member.core_handle()?, "list", 0, Some(state), limit).await
    }

    /// Puts dead job `id` back in the hub's queue ([`Jobs::requeue_dead_any`]). An
    /// operator's call, as [`job`](Self::job). With jobs on JetStream (cluster mode), any
    /// hub requeues any of the cluster's dead letters, once however many ask at once.
    ///
    /// # Errors
    /// As [`job`](Self::job), [`JobError::NotFound`], [`JobError::QueueFull`].
    pub async fn requeue_dead(&self, id: JobId) -> Result<(), JobError> {
        remote::admin(self.member.core_handle()?, "requeue", id, None, 0).await
    }

    /// Cancels any job by id ([`Jobs::cancel`]); false when no waiting, delayed or running
    /// job has it. An operator's call, as [`job`](Self::job).
    ///
    /// # Errors
    /// As [`job`](Self::job).
    pub async fn cancel(&self, id: JobId) -> Result<bool, JobError> {
        remote::admin(self.member.core_handle()?, "cancel", id, None, 0).await
    }

    /// Forgets dead job `id` ([`Jobs::delete_dead`]); false when there is none. An
    /// operator's call, as [`job`](Self::job). With jobs on JetStream (cluster mode), any
    /// hub deletes any of the cluster's dead letters.
    ///
    /// # Errors
    /// As [`job`](Self::job).
    pub async fn delete_dead(&self, id: JobId) -> Result<bool, JobError> {
        remote::admin(self.member.core_handle()?, "delete", id, None, 0).await
    }

    /// The hub queue's counts and per-worker load.
    ///
    /// # Errors
    /// When the hub cannot be asked.
    pub async fn stats(&self) -> Result<JobStats, RpcError> {
        remote::stats(self.member.core_handle()?).await
    }
}

impl fmt::Debug for MemberJobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberJobs").finish_non_exhaustive()
    }
}
