//! Jobs ready to run: one queue per job name (highest priority first, first in first out
//! within a priority), and the turn order between names.
//!
//! Names take turns: a dispatch round serves the name at the front of the rotation one
//! job, then moves it to the back. A name whose workers are all busy (or that has none)
//! is skipped, so it blocks no other name, and keeps its place at the front for the next
//! round, so it is not starved by names whose workers are free more often. Only names
//! that have workers are in the rotation, so jobs nobody can run cost a round nothing.

use super::state::Entry;
use super::workers::WorkerId;
use crate::jobs::JobId;
use foldhash::fast::RandomState;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// A job name's place in the table; valid while an entry or a worker refers to it.
pub(super) type NameId = usize;

/// Cancelled entries left in the queues before a compaction is considered.
const COMPACT_AFTER: usize = 1024;

/// One job name: its waiting jobs and the workers that run it.
struct NameQueue {
    /// The name. Entries hold clones, so a name no one refers to is seen by its count.
    name: Arc<str>,
    jobs: BTreeMap<Reverse<i32>, VecDeque<(JobId, Box<Entry>)>>,
    workers: Vec<WorkerId>,
    /// Whether the name is in the rotation (or set aside in the current round).
    in_rotation: bool,
}

impl NameQueue {
    /// Drops cancelled entries at the front; whether a live one is left.
    fn has_live_front(&mut self, cancelled: &mut usize) -> bool {
        while let Some(mut first) = self.jobs.first_entry() {
            match first.get().front() {
                Some((_, entry)) if entry.is_cancelled() => {
                    first.get_mut().pop_front();
                    *cancelled = cancelled.saturating_sub(1);
                }
                Some(_) => return true,
                None => {
                    first.remove();
                }
            }
        }
        false
    }
}

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

    /// The waiting (not cancelled) job `id`, found by scanning: for lookups by id, not a
    /// hot path.
    pub(super) fn find(&self, id: JobId) -> Option<&Entry> {
        self.names
            .iter()
            .flat_map(|(_, queue)| queue.jobs.values().flatten())
            .find(|(queued, entry)| *queued == id && !entry.is_cancelled())
            .map(|(_, entry)| &**entry)
    }

    /// The waiting (not cancelled) entries: name by name, each in the order it runs.
    pub(super) fn iter(&self) -> impl Iterator<Item = (JobId, &Entry)> {
        self.names
            .iter()
            .flat_map(|(_, queue)| queue.jobs.values().flatten())
            .filter(|(_, entry)| !entry.is_cancelled())
            .map(|(id, entry)| (*id, &**entry))
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
        let name = entry.name;
        // The entry holds its name, so the name is there.
        let Some(queue) = self.names.get_mut(name) else {
            return;
        };
        entry.set_queued(true);
        queue
            .jobs
            .entry(Reverse(entry.options().priority))
            .or_default()
            .push_back((id, entry));
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
    /// returned it); the name goes to the back of the rotation if it has more.
    pub(super) fn take(&mut self, name: NameId) -> Option<(JobId, Box<Entry>)> {
        let queue = self.names.get_mut(name)?;
        let mut first = queue.jobs.first_entry()?;
        let job = first.get_mut().pop_front();
        if first.get().is_empty() {
            first.remove();
        }
        if queue.jobs.is_empty() {
            queue.in_rotation = false;
        } else {
            self.rotation.push_back(name);
        }
        let (id, entry) = job?;
        entry.set_queued(false);
        self.waiting -= 1;
        Some((id, entry))
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
                    jobs.retain(|(_, entry)| !entry.is_cancelled());
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
        for (_, queue) in &mut self.names {
            queue.in_rotation = false;
            for (_, jobs) in std::mem::take(&mut queue.jobs) {
                entries.extend(jobs.into_iter().map(|(_, entry)| *entry));
            }
        }
        entries
    }
}
