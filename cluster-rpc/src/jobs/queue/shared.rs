//! The queue on a store several hubs share ([`Shared`](crate::jobs::store::Shared)): the
//! store pulls jobs for this hub's free credits and hands them in through the [`Feed`];
//! the jobs submitted here wait in `awaiting` until their outcome comes back from the hub
//! that ran them.

use super::state::{wall_now, Entry, State};
use super::Queue;
use super::{ProgressRef, Submitter};
use crate::jobs::store::{Change, Feed, Owner, PulledJob};
use crate::jobs::{JobError, JobId, JobOptions};
use bytes::Bytes;
use std::sync::{Arc, MutexGuard};
use tokio::time::Instant;

impl Feed {
    fn queue(&self) -> Option<Arc<Queue>> {
        self.0.upgrade()
    }

    /// Whether the queue is still there (false once the hub stopped).
    pub fn is_open(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// The job names this hub has workers for.
    pub fn names(&self) -> Vec<Arc<str>> {
        let Some(queue) = self.queue() else {
            return Vec::new();
        };
        let st = queue.state();
        st.ready
            .names_with_workers()
            .map(|(_, name)| Arc::clone(name))
            .collect()
    }

    /// How many jobs named `name` to pull now: the free credits of its workers here, less
    /// the jobs of that name already waiting for them. A worker serving several names
    /// counts for each; the store asks again before each pull, after the jobs it pulled
    /// took their credits.
    pub fn free(&self, name: &str) -> usize {
        let Some(queue) = self.queue() else {
            return 0;
        };
        let st = queue.state();
        let Some(id) = st.ready.lookup(name) else {
            return 0;
        };
        st.workers
            .free_of(st.ready.workers_of(id))
            .saturating_sub(st.ready.waiting_of(id))
    }

    /// Queues a pulled job to run here. False when the hub stopped, or when the job runs
    /// here already (the engine redelivered it while it runs): the store keeps its claim.
    pub fn pulled(&self, job: PulledJob) -> bool {
        let Some(queue) = self.queue() else {
            return false;
        };
        // Made before taking the lock; the entry's box is a spare one taken under it.
        let progress = ProgressRef::new();
        let mut st = queue.state();
        let queued = make_ready(&mut st, job, progress);
        if queued {
            queue.after_queueing(&mut st, false, Instant::now());
        }
        queued
    }

    /// Queues the jobs of a pull to run here, in one hold of the lock and one dispatch
    /// round ([`pulled`](Self::pulled) takes the lock per job, which a multi-thread
    /// runtime's other thread, answering jobs, then waits for). A job that runs here
    /// already is skipped (the store keeps its claim). Empties `jobs`; false, with `jobs`
    /// left as they are, when the hub stopped.
    pub fn pulled_many(&self, jobs: &mut Vec<PulledJob>) -> bool {
        let Some(queue) = self.queue() else {
            return false;
        };
        // One allocation for the pull's progress, made before taking the lock.
        let progress = ProgressRef::batch(jobs.len());
        let mut st = queue.state();
        for (job, progress) in jobs.drain(..).zip(progress) {
            make_ready(&mut st, job, progress);
        }
        queue.after_queueing(&mut st, false, Instant::now());
        true
    }

    /// The outcome of job `id`, submitted here (or watched here) and run on some hub:
    /// its submitter gets it (once: a second outcome for the same job is dropped), and an
    /// output is kept for the result retention. `owner` is the job's: a handle attached
    /// by another owner gets [`JobError::NotFound`] instead.
    pub fn resolved(&self, id: JobId, owner: Owner, outcome: Result<Bytes, JobError>) {
        let Some(queue) = self.queue() else {
            return;
        };
        let mut st = queue.state();
        let settled = queue.settle(&mut st, (id, owner, outcome), (Instant::now(), wall_now()));
        drop(st);
        if let Some((mut entry, outcome)) = settled {
            entry.resolve(outcome.as_ref().map_err(Clone::clone), queue.codec);
        }
    }

    /// The outcomes of many jobs, as [`resolved`](Self::resolved) takes one, in one hold of
    /// the lock (a round of outcomes comes in one message); the handles are resolved
    /// after it is released.
    pub fn resolved_many(
        &self,
        outcomes: impl IntoIterator<Item = (JobId, Owner, Result<Bytes, JobError>)>,
    ) {
        let Some(queue) = self.queue() else {
            return;
        };
        // One read of each clock per round.
        let now = (Instant::now(), wall_now());
        let mut st = queue.state();
        let settled: Vec<_> = outcomes
            .into_iter()
            .filter_map(|outcome| queue.settle(&mut st, outcome, now))
            .collect();
        drop(st);
        for (mut entry, outcome) in settled {
            entry.resolve(outcome.as_ref().map_err(Clone::clone), queue.codec);
        }
    }

    /// Job `id`, watched here, is not in the engine (`NotFound`), or could not be looked
    /// up (`Store`): its handles get `error`.
    pub fn missing(&self, id: JobId, error: JobError) {
        let Some(queue) = self.queue() else {
            return;
        };
        let mut st = queue.state();
        // Only a watch: a job submitted here waits for its outcome whatever a lookup says.
        if st
            .awaiting
            .get(&id)
            .is_some_and(|e| e.shared_name().is_none())
        {
            if let Some(mut entry) = st.awaiting.remove(&id) {
                drop(st);
                entry.resolve(Err(error), queue.codec);
            }
        }
    }

    /// Progress of job `id`, submitted here and running on some hub.
    pub fn progress(&self, id: JobId, value: f64) {
        let Some(queue) = self.queue() else {
            return;
        };
        let st = queue.state();
        if let Some(entry) = st.awaiting.get(&id) {
            if value.is_finite() {
                entry.report(value);
            }
        }
    }

    /// Job `id` was cancelled on the hub that took it: dropped here if it runs or waits
    /// here (its worker told to drop it).
    pub fn cancel(&self, id: JobId) {
        let Some(queue) = self.queue() else {
            return;
        };
        let progress = {
            let st = queue.state();
            let progress = st.jobs.get(&id).map(|e| e.shared_progress());
            progress
                .or_else(|| st.ready.find(id).map(|(job, _)| job.progress()))
                .cloned()
        };
        if let Some(progress) = progress {
            queue.cancel(id, &progress);
        }
    }
}

/// Makes pulled `job` ready, unless it runs or waits here already.
fn make_ready(st: &mut State, job: PulledJob, progress: ProgressRef) -> bool {
    if st.jobs.contains_key(&job.id) || st.ready.find(job.id).is_some() {
        return false;
    }
    let spare = st.spare.take();
    let mut entry = Entry::placed(spare, job.payload, job.options, None, progress);
    entry.attempts = job.attempts;
    entry.submitted_at = job.submitted_at;
    entry.named(st.ready.intern(&job.name));
    st.make_ready(job.id, entry);
    true
}

impl Queue {
    /// Takes the entry of a job awaiting its outcome out of `awaiting`, with what its
    /// handles get: the outcome, or [`JobError::NotFound`] for a handle of another owner
    /// than the job's. An output of a job submitted here is kept for the result
    /// retention, from `now` (monotonic and wall-clock: read once per round by the
    /// caller). `None` when no such job waits here (a second outcome of it).
    fn settle(
        &self,
        st: &mut State,
        (id, owner, outcome): (JobId, Owner, Result<Bytes, JobError>),
        (now, wall): (Instant, u64),
    ) -> Option<(Box<Entry>, Result<Bytes, JobError>)> {
        let mut entry = st.awaiting.remove(&id)?;
        if entry.owner != Owner::HUB && entry.owner != owner {
            return Some((entry, Err(JobError::NotFound)));
        }
        Self::release_key(st, id, &entry);
        let retention = self.options.result_retention;
        // Counted as completed by the hub that ran it. A watched job (no name here) is
        // kept by the engine, not here.
        if let Ok(output) = &outcome {
            let submitted_here = entry.shared_name().is_some();
            if submitted_here && !retention.is_zero() && self.options.max_results > 0 {
                let expires = super::dispatch::after(now, retention);
                self.keep_result(st, (id, &mut entry), output, (wall, expires));
            }
        }
        Some((entry, outcome))
    }

    /// Attaches `submitter` to job `id`, which this hub does not hold, on a shared store:
    /// it waits (as a job submitted here would) while the store looks it up.
    ///
    /// # Errors
    /// [`JobError::QueueFull`] when the queue holds its capacity already (each watch
    /// counts as a job).
    pub(super) fn watch(
        &self,
        mut st: MutexGuard<'_, State>,
        id: JobId,
        owner: Owner,
        submitter: Submitter,
    ) -> Result<Option<ProgressRef>, JobError> {
        if st.queued() >= self.options.capacity {
            return Err(JobError::QueueFull {
                capacity: self.options.capacity,
            });
        }
        let (mut entry, progress) =
            Entry::new(Bytes::new(), JobOptions::default(), Some(submitter));
        entry.owner = owner;
        st.awaiting.insert(id, entry);
        if owner != Owner::HUB {
            st.member_jobs.insert(id, owner, &progress);
        }
        let store = Arc::clone(&st.store.0);
        drop(st);
        if let Some(shared) = store.shared() {
            shared.watch(id);
        }
        Ok(Some(progress))
    }

    /// Cancels job `id`, submitted here and not yet resolved: the store takes it back from
    /// the engine and tells the hub running it.
    pub(super) fn cancel_awaiting(&self, mut st: MutexGuard<'_, State>, id: JobId) {
        let Some(mut entry) = st.awaiting.remove(&id) else {
            return;
        };
        entry.shared_progress().cancel();
        st.store.record(Change::Cancelled { id });
        Self::release_key(&mut st, id, &entry);
        drop(st);
        entry.resolve(Err(JobError::Cancelled), self.codec);
    }
}
