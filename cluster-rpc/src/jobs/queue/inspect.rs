//! What operators ask of the queue (tools, `cluster jobs`): where a job is and its
//! history, lists of jobs by state, cancelling or requeueing by id without a handle or a
//! type, forgetting a dead letter. Not hot paths: finding or listing waiting jobs scans
//! their queues.

use super::ready::Waiting;
use super::state::{Entry, Status};
use super::DeadJob;
use super::Queue;
use crate::jobs::store::{Attempt, Change, Shared, StoreFuture, UnixMillis};
use crate::jobs::{JobError, JobId};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use uuid::Uuid;

/// Where a job is: [`Jobs::job`](crate::Jobs::job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Ready, waiting for a free worker.
    Waiting,
    /// Delayed, or backing off before a retry.
    Delayed,
    /// Running on a worker.
    Running,
    /// In the dead letters.
    Dead,
    /// Completed; its result is kept for the retention.
    Completed,
}

/// A job as the queue holds it now, with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// Its job name.
    pub name: String,
    /// Where it is.
    pub state: JobState,
    /// Attempts that count so far.
    pub attempts: u32,
    /// The connection of the worker running it, when running.
    pub worker: Option<Uuid>,
    /// The last progress its worker reported (live jobs).
    pub progress: f64,
    /// The last failed attempt's error, if any.
    pub last_error: Option<String>,
    /// When it was accepted (Unix milliseconds).
    pub submitted_at: UnixMillis,
    /// When it completed (Unix milliseconds).
    pub completed_at: Option<UnixMillis>,
    /// Its attempts, oldest first: worker, start, end, error.
    pub history: Vec<Attempt>,
}

impl JobInfo {
    /// A dead letter.
    pub(crate) fn dead(dead: &DeadJob) -> Self {
        Self {
            id: dead.id,
            name: dead.name.clone(),
            state: JobState::Dead,
            attempts: dead.attempts,
            worker: None,
            progress: 0.0,
            last_error: Some(dead.last_error.clone()),
            submitted_at: dead.history.first().map_or(0, |a| a.started_at),
            completed_at: None,
            history: dead.history.clone(),
        }
    }

    /// A waiting job named `name`.
    fn waiting(id: JobId, job: &Waiting, name: &str) -> Self {
        match job {
            Waiting::Entry(entry) => Self::of(id, entry, JobState::Waiting),
            Waiting::Fresh(fresh) => Self {
                id,
                name: name.to_owned(),
                state: JobState::Waiting,
                attempts: 0,
                worker: None,
                progress: job.progress().get(),
                last_error: None,
                submitted_at: fresh.submitted_at,
                completed_at: None,
                history: Vec::new(),
            },
        }
    }

    fn of(id: JobId, entry: &Entry, state: JobState) -> Self {
        let running = state == JobState::Running;
        let history = entry.history(running, None);
        Self {
            id,
            name: entry.name_arc().to_string(),
            state,
            attempts: entry.attempts,
            worker: running.then_some(entry.worker),
            progress: entry.progress(),
            last_error: history.iter().rev().find_map(|a| a.error.clone()),
            submitted_at: entry.submitted_at,
            completed_at: None,
            history,
        }
    }
}

impl Queue {
    /// Where job `id` is now and its history; `None` if the queue holds no such job (it
    /// never existed, was cancelled, or its result's retention ended).
    pub(crate) fn find(&self, id: JobId) -> Option<JobInfo> {
        let mut st = self.state();
        if let Some(entry) = st.jobs.get(&id) {
            let state = match entry.status {
                Status::Running { .. } => JobState::Running,
                Status::Delayed => JobState::Delayed,
                Status::Waiting => JobState::Waiting,
            };
            return Some(JobInfo::of(id, entry, state));
        }
        if let Some((job, name)) = st.ready.find(id) {
            return Some(JobInfo::waiting(id, job, name));
        }
        if let Some(kept) = st.results.get(id) {
            let mut history = kept.past.clone();
            history.push(kept.last.clone());
            return Some(JobInfo {
                id,
                name: kept.name.to_string(),
                state: JobState::Completed,
                attempts: kept.last.number,
                worker: None,
                progress: 1.0,
                last_error: kept.past.iter().rev().find_map(|a| a.error.clone()),
                submitted_at: kept.submitted_at,
                completed_at: kept.last.ended_at,
                history,
            });
        }
        st.dead.find(id).map(JobInfo::dead)
    }

    /// Up to `limit` jobs in `state`: waiting ones in the order they will run (per name),
    /// delayed and running ones in no order, dead ones oldest first, completed ones newest
    /// first.
    pub(crate) fn list(&self, state: JobState, limit: usize) -> Vec<JobInfo> {
        let mut st = self.state();
        match state {
            JobState::Waiting => st
                .ready
                .iter()
                .take(limit)
                .map(|(id, job, name)| JobInfo::waiting(id, job, name))
                .collect(),
            JobState::Delayed | JobState::Running => st
                .jobs
                .iter()
                .filter(|(_, entry)| match entry.status {
                    Status::Running { .. } => state == JobState::Running,
                    Status::Delayed => state == JobState::Delayed,
                    Status::Waiting => false,
                })
                .take(limit)
                .map(|(id, entry)| JobInfo::of(*id, entry, state))
                .collect(),
            JobState::Dead | JobState::Completed => {
                let ids: Vec<JobId> = if state == JobState::Dead {
                    st.dead.list().iter().take(limit).map(|d| d.id).collect()
                } else {
                    st.results.newest().take(limit).map(|(id, _)| id).collect()
                };
                drop(st);
                ids.into_iter().filter_map(|id| self.find(id)).collect()
            }
        }
    }

    /// Cancels job `id` as its handle would; false when no waiting, delayed or running
    /// job has it.
    pub(crate) fn cancel_by_id(&self, id: JobId) -> bool {
        let progress = {
            let st = self.state();
            let entry = st.awaiting.get(&id).or_else(|| st.jobs.get(&id));
            let progress = entry
                .map(|e| e.shared_progress())
                .or_else(|| st.ready.find(id).map(|(job, _)| job.progress()));
            match progress {
                Some(progress) => progress.clone(),
                None => return false,
            }
        };
        self.cancel(id, &progress);
        true
    }

    /// Puts dead job `id` back in the queue whatever its kind; its result goes to no
    /// handle (it is kept for the retention).
    ///
    /// # Errors
    /// As [`requeue_dead`](Self::requeue_dead).
    pub(crate) fn requeue_dead_any(&self, id: JobId) -> Result<(), JobError> {
        let name = self
            .state()
            .dead
            .find(id)
            .map(|dead| dead.name.clone())
            .ok_or(JobError::NotFound)?;
        self.requeue_dead(id, &name).map(drop)
    }

    /// On a store several hubs share (which keeps the dead letters): its answer to an
    /// operator's call on them, `op`. `None` when this hub keeps its dead letters itself.
    pub(crate) fn shared_dead<T>(
        &self,
        op: impl FnOnce(&dyn Shared) -> StoreFuture<T>,
    ) -> Option<StoreFuture<T>> {
        let store = Arc::clone(&self.state().store.0);
        store.shared().map(op)
    }

    /// Awaits `answer` in a task of its own, which ends with the queue (the hub), and
    /// hands its value to `respond`.
    pub(crate) fn answer_later<T: Send + 'static>(
        &self,
        answer: impl Future<Output = T> + Send + 'static,
        respond: impl FnOnce(T) + Send + 'static,
    ) {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                value = answer => respond(value),
            }
        });
    }

    /// Forgets dead job `id`; false when the dead letters hold none with it.
    pub(crate) fn delete_dead(&self, id: JobId) -> bool {
        let mut st = self.state();
        let removed = st.dead.remove(id);
        if removed {
            st.store.record(Change::Removed { id });
        }
        removed
    }
}
