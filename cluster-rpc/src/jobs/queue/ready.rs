//! Jobs ready to run: one queue per job name (highest priority first, first in first out
//! within a priority), and the turn order between names.
//!
//! Names take turns: a dispatch round serves the name at the front of the rotation one
//! job, then moves it to the back. A name whose workers are all busy (or that has none)
//! is skipped, so it blocks no other name, and keeps its place at the front for the next
//! round, so it is not starved by names whose workers are free more often. Only names
//! that have workers are in the rotation, so jobs nobody can run cost a round nothing.
//!
//! A job submitted by the hub with the default options waits as what it is so far (its
//! payload, its progress, when it was accepted): its [`Entry`] is made only when it is
//! dispatched. Under a large batch only the running jobs (about the workers' credits)
//! have an entry, not every waiting one, so the entries' memory is reused as jobs come
//! and go instead of growing with the batch.

use super::state::{Entry, ProgressGuard, Spare};
use super::workers::WorkerId;
use crate::jobs::handle::ProgressRef;
use crate::jobs::store::UnixMillis;
use crate::jobs::JobId;
use bytes::Bytes;
use foldhash::fast::RandomState;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{btree_map, BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// A job name's place in the table; valid while an entry or a worker refers to it.
pub(super) type NameId = usize;

/// Cancelled entries left in the queues before a compaction is considered.
const COMPACT_AFTER: usize = 1024;

/// A job just submitted from the hub, with the default options: waiting for its first
/// attempt, its first submitter the hub's handle, which shares its progress.
pub(super) struct Fresh {
    /// The codec-encoded job (a slice of its batch's buffer).
    pub(super) payload: Bytes,
    progress: ProgressGuard,
    /// When it was accepted.
    pub(super) submitted_at: UnixMillis,
}

impl Fresh {
    /// A fresh job, with the progress it shares with its handle.
    pub(super) fn new(payload: Bytes, progress: ProgressRef, submitted_at: UnixMillis) -> Self {
        Self {
            payload,
            progress: ProgressGuard(progress),
            submitted_at,
        }
    }
}

/// A waiting job: fresh, or an entry (it set options, ran before, or has another
/// submitter).
pub(super) enum Waiting {
    Fresh(Fresh),
    Entry(Box<Entry>),
}

impl Waiting {
    /// The progress it shares with its submitters (and their cancels).
    pub(super) fn progress(&self) -> &ProgressRef {
        match self {
            Waiting::Fresh(fresh) => &fresh.progress.0,
            Waiting::Entry(entry) => entry.shared_progress(),
        }
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.progress().is_cancelled()
    }

    /// Its entry, made now for a fresh job named `name` (in a box of `spare` if there is
    /// one).
    pub(super) fn into_entry(self, name: (NameId, &Arc<str>), spare: &mut Spare) -> Box<Entry> {
        match self {
            Waiting::Fresh(fresh) => Entry::fresh(
                spare.take(),
                fresh.payload,
                fresh.progress,
                fresh.submitted_at,
                name,
            ),
            Waiting::Entry(entry) => entry,
        }
    }
}

/// One job name: its waiting jobs and the workers that run it.
struct NameQueue {
    /// The name. Entries hold clones, so a name no one refers to is seen by its count.
    name: Arc<str>,
    jobs: BTreeMap<Reverse<i32>, VecDeque<(JobId, Waiting)>>,
    /// The buffer of the last priority level that emptied, for the next one made: a
    /// hub's ready queue empties between pulls and bursts (no allocation per job then).
    spare_level: VecDeque<(JobId, Waiting)>,
    workers: Vec<WorkerId>,
    /// Whether the name is in the rotation (or set aside in the current round).
    in_rotation: bool,
}

impl NameQueue {
    /// Drops cancelled entries at the front; whether a live one is left.
    fn has_live_front(&mut self, cancelled: &mut usize) -> bool {
        while let Some(mut first) = self.jobs.first_entry() {
            match first.get().front() {
                Some((_, job)) if job.is_cancelled() => {
                    first.get_mut().pop_front();
                    *cancelled = cancelled.saturating_sub(1);
                }
                Some(_) => return true,
                None => {
                    let emptied = first.remove();
                    self.keep_level(emptied);
                }
            }
        }
        false
    }

    /// Keeps the buffer of a priority level that emptied for the next one, unless it
    /// grew past [`SPARE_LEVEL`] (a burst's buffer is let go).
    fn keep_level(&mut self, emptied: VecDeque<(JobId, Waiting)>) {
        if emptied.capacity() <= SPARE_LEVEL && emptied.capacity() > self.spare_level.capacity() {
            self.spare_level = emptied;
        }
    }
}

/// The largest buffer a name keeps for its next priority level, in jobs.
const SPARE_LEVEL: usize = 1024;

/// The ready queues of every job name.
#[derive(Default)]
pub(super) struct Ready {
    names: Slab<NameQueue>,
    by_name: HashMap<Arc<str>, NameId, RandomState>,
    /// Names with waiting jobs and workers, in turn order.
    rotation: VecDeque<NameId>,
    /// Names passed over in the current round (no free worker): first in the next.
    blocked: Vec<NameId>,
    /// Live waiting entries.
    waiting: usize,
    /// Cancelled entries still in the queues.
    cancelled: usize,
    /// Names are swept for unused ones when there are this many.
    sweep_at: usize,
}

impl Ready {
    /// The id of `name`, and the shared copy an entry keeps.
    pub(super) fn intern(&mut self, name: &str) -> (NameId, Arc<str>) {
        if let Some(&id) = self.by_name.get(name) {
            if let Some(queue) = self.names.get(id) {
                return (id, Arc::clone(&queue.name));
            }
        }
        if self.names.len() >= self.sweep_at {
            self.sweep();
        }
        let name: Arc<str> = Arc::from(name);
        let id = self.names.insert(NameQueue {
            name: Arc::clone(&name),
            jobs: BTreeMap::new(),
            spare_level: VecDeque::new(),
            workers: Vec::new(),
            in_rotation: false,
        });
        self.by_name.insert(Arc::clone(&name), id);
        (id, name)
    }

    /// Frees the names nothing refers to (names come from peers: they must not pile up).
    /// Runs when the table has doubled since the last sweep, so it costs O(1) per name.
    fn sweep(&mut self) {
        let unused: Vec<NameId> = self
            .names
            .iter()
            .filter(|(_, q)| {
                q.workers.is_empty()
                    && q.jobs.is_empty()
                    && !q.in_rotation
                    // the table's two copies: the queue's and the index key
                    && Arc::strong_count(&q.name) == 2
            })
            .map(|(id, _)| id)
            .collect();
        for id in unused {
            if let Some(queue) = self.names.try_remove(id) {
                self.by_name.remove(&queue.name);
            }
        }
        self.sweep_at = (2 * self.names.len()).max(COMPACT_AFTER);
    }

    /// The waiting (not cancelled) job `id`, and its name, found by scanning: for
    /// lookups by id, not a hot path.
    pub(super) fn find(&self, id: JobId) -> Option<(&Waiting, &Arc<str>)> {
        self.iter()
            .find(|(queued, _, _)| *queued == id)
            .map(|(_, job, name)| (job, name))
    }

    /// The waiting (not cancelled) jobs and their names: name by name, each in the order
    /// it runs.
    pub(super) fn iter(&self) -> impl Iterator<Item = (JobId, &Waiting, &Arc<str>)> {
        self.names
            .iter()
            .flat_map(|(_, queue)| {
                let name = &queue.name;
                queue
                    .jobs
                    .values()
                    .flatten()
                    .map(move |(id, job)| (id, job, name))
            })
            .filter(|(_, job, _)| !job.is_cancelled())
            .map(|(id, job, name)| (*id, job, name))
    }

    /// Live waiting entries.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Makes room for `additional` entries of one name and priority.
    pub(super) fn reserve(&mut self, name: NameId, priority: i32, additional: usize) {
        if let Some(queue) = self.names.get_mut(name) {
            queue
                .jobs
                .entry(Reverse(priority))
                .or_default()
                .reserve(additional);
        }
    }

    /// Queues a waiting entry at the back of its name and priority.
    pub(super) fn push(&mut self, id: JobId, entry: Box<Entry>) {
        let (name, priority) = (entry.name, entry.options().priority);
        self.push_waiting(name, priority, id, Waiting::Entry(entry));
    }

    /// Queues a fresh job of `name` (its default priority) at the back; the caller holds
    /// the name's place in the table.
    pub(super) fn push_fresh(&mut self, name: NameId, id: JobId, fresh: Fresh) {
        self.push_waiting(name, 0, id, Waiting::Fresh(fresh));
    }

    fn push_waiting(&mut self, name: NameId, priority: i32, id: JobId, job: Waiting) {
        // The job (or its submitter) holds its name, so the name is there.
        let Some(queue) = self.names.get_mut(name) else {
            return;
        };
        job.progress().set_queued(true);
        let level = match queue.jobs.entry(Reverse(priority)) {
            btree_map::Entry::Occupied(level) => level.into_mut(),
            btree_map::Entry::Vacant(level) => level.insert(std::mem::take(&mut queue.spare_level)),
        };
        level.push_back((id, job));
        self.waiting += 1;
        if !queue.in_rotation && !queue.workers.is_empty() {
            queue.in_rotation = true;
            self.rotation.push_back(name);
        }
    }

    /// A worker runs jobs of `name` now.
    pub(super) fn add_worker(&mut self, name: NameId, worker: WorkerId) {
        let Some(queue) = self.names.get_mut(name) else {
            return;
        };
        queue.workers.push(worker);
        if !queue.in_rotation && !queue.jobs.is_empty() {
            queue.in_rotation = true;
            self.rotation.push_back(name);
        }
    }

    /// A worker of `name` left.
    pub(super) fn remove_worker(&mut self, name: NameId, worker: WorkerId) {
        if let Some(queue) = self.names.get_mut(name) {
            queue.workers.retain(|w| *w != worker);
        }
    }

    /// The names that have workers, with their shared copies.
    pub(super) fn names_with_workers(&self) -> impl Iterator<Item = (NameId, &Arc<str>)> {
        self.names
            .iter()
            .filter(|(_, q)| !q.workers.is_empty())
            .map(|(id, q)| (id, &q.name))
    }

    /// Entries waiting in `name`'s queue (cancelled ones not yet dropped included).
    pub(super) fn waiting_of(&self, name: NameId) -> usize {
        self.names
            .get(name)
            .map_or(0, |q| q.jobs.values().map(VecDeque::len).sum())
    }

    /// The id of `name` if the table has it.
    pub(super) fn lookup(&self, name: &str) -> Option<NameId> {
        self.by_name.get(name).copied()
    }

    /// The workers of `name`.
    pub(super) fn workers_of(&self, name: NameId) -> &[WorkerId] {
        self.names.get(name).map_or(&[], |q| &q.workers)
    }

    /// The name's text.
    pub(super) fn name(&self, name: NameId) -> &str {
        self.names.get(name).map_or("", |q| &q.name)
    }

    /// The name whose turn it is, with a live job waiting; `None` when no name has one.
    pub(super) fn next_turn(&mut self) -> Option<NameId> {
        while let Some(id) = self.rotation.pop_front() {
            let Some(queue) = self.names.get_mut(id) else {
                continue;
            };
            if !queue.workers.is_empty() && queue.has_live_front(&mut self.cancelled) {
                return Some(id);
            }
            queue.in_rotation = false;
        }
        None
    }

    /// Takes the best job of `name`, whose turn it is ([`next_turn`](Self::next_turn)
    /// returned it); the name goes to the back of the rotation if it has more. A fresh
    /// job's entry is made in a box of `spare` if there is one.
    pub(super) fn take(&mut self, name: NameId, spare: &mut Spare) -> Option<(JobId, Box<Entry>)> {
        let queue = self.names.get_mut(name)?;
        let mut first = queue.jobs.first_entry()?;
        let job = first.get_mut().pop_front();
        if first.get().is_empty() {
            let emptied = first.remove();
            queue.keep_level(emptied);
        }
        if queue.jobs.is_empty() {
            queue.in_rotation = false;
        } else {
            self.rotation.push_back(name);
        }
        let (id, job) = job?;
        job.progress().set_queued(false);
        self.waiting -= 1;
        Some((id, job.into_entry((name, &queue.name), spare)))
    }

    /// `name` has a job but no free worker this round: it goes first in the next.
    pub(super) fn pass_over(&mut self, name: NameId) {
        self.blocked.push(name);
    }

    /// The round is over: names passed over go back to the front, in their order.
    pub(super) fn end_round(&mut self) {
        for id in self.blocked.drain(..).rev() {
            self.rotation.push_front(id);
        }
    }

    /// A queued entry was marked cancelled: it no longer counts as waiting, and is dropped
    /// at the front of its queue, or by a compaction once cancelled entries outnumber the
    /// live ones.
    pub(super) fn cancelled_one(&mut self) {
        self.waiting -= 1;
        self.cancelled += 1;
        if self.waiting == 0 || (self.cancelled >= COMPACT_AFTER && self.cancelled >= self.waiting)
        {
            for (_, queue) in &mut self.names {
                for jobs in queue.jobs.values_mut() {
                    jobs.retain(|(_, job)| !job.is_cancelled());
                }
                queue.jobs.retain(|_, jobs| !jobs.is_empty());
            }
            self.cancelled = 0;
        }
    }

    /// Every queued entry, the queues left empty (the hub stops).
    pub(super) fn drain(&mut self) -> Vec<Entry> {
        self.waiting = 0;
        self.cancelled = 0;
        self.rotation.clear();
        let mut entries = Vec::new();
        let mut spare = Spare::default();
        for (id, queue) in &mut self.names {
            queue.in_rotation = false;
            for (_, jobs) in std::mem::take(&mut queue.jobs) {
                let named =
                    |(_, job): (JobId, Waiting)| *job.into_entry((id, &queue.name), &mut spare);
                entries.extend(jobs.into_iter().map(named));
            }
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Fresh {
        Fresh::new(Bytes::new(), ProgressRef::new(), 0)
    }

    #[test]
    fn a_level_that_empties_leaves_its_buffer_to_the_next_one() {
        let mut ready = Ready::default();
        let (name, _shared) = ready.intern("fnv");
        ready.push_fresh(name, 1, fresh());
        assert!(ready.take(name, &mut Spare::default()).is_some());
        let queue = ready.names.get(name).expect("the name");
        assert!(queue.jobs.is_empty());
        let kept = queue.spare_level.capacity();
        assert!(kept > 0, "the emptied level's buffer is kept");
        ready.push_fresh(name, 2, fresh());
        let queue = ready.names.get(name).expect("the name");
        assert_eq!(
            queue.spare_level.capacity(),
            0,
            "and taken by the next level"
        );
        assert_eq!(queue.jobs[&Reverse(0)].capacity(), kept);
    }

    #[test]
    fn a_burst_level_buffer_is_let_go() {
        let mut ready = Ready::default();
        let (name, _shared) = ready.intern("fnv");
        let burst = SPARE_LEVEL as u128 + 1;
        for id in 0..burst {
            ready.push_fresh(name, id, fresh());
        }
        let mut spare = Spare::default();
        for _ in 0..burst {
            assert!(ready.take(name, &mut spare).is_some());
        }
        let queue = ready.names.get(name).expect("the name");
        assert!(queue.jobs.is_empty());
        assert_eq!(queue.spare_level.capacity(), 0);
    }
}
