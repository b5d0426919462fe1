//! The connected workers: their credits, the job names they run, and the batch of jobs
//! each is given in the current dispatch round.

use super::ready::NameId;
use crate::jobs::wire::{Batch, RUN_SUBJECT};
use crate::link::Link;
use foldhash::fast::RandomState;
use slab::Slab;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;
use uuid::Uuid;

/// A worker's place in the registry; valid until it leaves.
pub(super) type WorkerId = usize;

/// One connected worker.
pub(super) struct Worker {
    pub(super) conn: Uuid,
    pub(super) link: Arc<dyn Link>,
    pub(super) name: Option<String>,
    /// The job names it runs.
    pub(super) jobs: Vec<NameId>,
    pub(super) credits: usize,
    pub(super) active: usize,
    pub(super) completed: u64,
    pub(super) joined: Instant,
    /// The jobs given to it in the current dispatch round; sent when the round ends (or
    /// when the frame is full).
    pub(super) batch: Batch,
}

impl Worker {
    pub(super) fn new(
        conn: Uuid,
        link: Arc<dyn Link>,
        name: Option<String>,
        jobs: Vec<NameId>,
        credits: usize,
    ) -> Self {
        Self {
            conn,
            link,
            name,
            jobs,
            credits,
            active: 0,
            completed: 0,
            joined: Instant::now(),
            batch: Batch::new(RUN_SUBJECT),
        }
    }

    fn free(&self) -> usize {
        self.credits.saturating_sub(self.active)
    }
}

/// The workers, by a small id the queue's other parts refer to them with.
#[derive(Default)]
pub(super) struct Workers {
    slab: Slab<Worker>,
    by_conn: HashMap<Uuid, WorkerId, RandomState>,
    /// Free credits over all workers: no dispatch round is needed when none.
    free: usize,
    /// Workers given jobs in the current round: the batches to send.
    touched: Vec<WorkerId>,
}

impl Workers {
    pub(super) fn insert(&mut self, worker: Worker) -> WorkerId {
        self.free += worker.free();
        let conn = worker.conn;
        let id = self.slab.insert(worker);
        self.by_conn.insert(conn, id);
        id
    }

    /// Forgets a worker; its running jobs are the caller's to requeue.
    pub(super) fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let worker = self.slab.try_remove(id)?;
        self.by_conn.remove(&worker.conn);
        self.free -= worker.free();
        self.touched.retain(|t| *t != id);
        Some(worker)
    }

    pub(super) fn find(&self, conn: Uuid) -> Option<WorkerId> {
        self.by_conn.get(&conn).copied()
    }

    pub(super) fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.slab.get(id)
    }

    pub(super) fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.slab.get_mut(id)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.slab.iter().map(|(_, w)| w)
    }

    pub(super) fn free(&self) -> usize {
        self.free
    }

    /// The free credits of `candidates` together.
    pub(super) fn free_of(&self, candidates: &[WorkerId]) -> usize {
        candidates
            .iter()
            .filter_map(|id| self.slab.get(*id))
            .map(Worker::free)
            .sum()
    }

    /// Of `candidates`, the worker with the most free credits, if any has one.
    pub(super) fn freest(&self, candidates: &[WorkerId]) -> Option<WorkerId> {
        candidates
            .iter()
            .filter_map(|id| Some((*id, self.slab.get(*id)?.free())))
            .filter(|(_, free)| *free > 0)
            .max_by_key(|(_, free)| *free)
            .map(|(id, _)| id)
    }

    /// Gives worker `id` a job to run: takes a credit and adds the job to its batch.
    /// Returns the worker's connection id.
    pub(super) fn give(
        &mut self,
        id: WorkerId,
        job: u128,
        attempt: u32,
        name: &str,
        payload: &[u8],
    ) -> Option<Uuid> {
        let worker = self.slab.get_mut(id)?;
        worker.active += 1;
        self.free -= 1;
        if worker.batch.is_full() {
            // Rare (large jobs): this frame goes now, the round's next frame starts. A
            // refusal shows in the round's flush, which finds the connection gone.
            let _ = worker.link.send_frame(worker.batch.frame());
            worker.batch.clear();
        }
        if worker.batch.is_empty() {
            self.touched.push(id);
        }
        worker.batch.push_run(job, attempt, name, payload);
        Some(worker.conn)
    }

    /// One of worker `id`'s credits is free again; returns the worker if it is still
    /// here.
    pub(super) fn release(&mut self, id: WorkerId) -> Option<&mut Worker> {
        let worker = self.slab.get_mut(id)?;
        if worker.active > 0 {
            worker.active -= 1;
            self.free += 1;
        }
        Some(worker)
    }

    /// Sends every worker given jobs this round its batch; returns those that refused it.
    pub(super) fn flush_batches(&mut self) -> Vec<WorkerId> {
        let mut failed = Vec::new();
        for id in self.touched.drain(..) {
            let Some(worker) = self.slab.get_mut(id) else {
                continue;
            };
            if worker.batch.is_empty() {
                continue;
            }
            if worker.link.send_frame(worker.batch.frame()).is_err() {
                failed.push(id);
            }
            worker.batch.clear();
        }
        failed
    }
}
