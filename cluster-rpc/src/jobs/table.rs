//! The queue's table of jobs: entries stored in place in a slab, found by id through an
//! index, or straight by [`Ticket`] where the queue kept one (the ready queue, deadlines).
//!
//! Why not one `HashMap<JobId, Entry>`: job ids are random, so with a large queue every
//! lookup misses the cache twice (the map's control bytes, then the entry). Dispatching
//! walks the ready queue in order, and slots are handed out in submission order, so a
//! ticket's slot is usually next to the previous one.

use super::hashing::IdHash;
use super::JobId;
use std::collections::HashMap;

/// Where a job sits in the table, with its id to tell a reused slot from the job's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ticket {
    pub(crate) slot: u32,
    pub(crate) id: JobId,
}

/// Entries in place, with their ids.
#[derive(Debug)]
pub(crate) struct Table<E> {
    slots: Vec<Option<(JobId, E)>>,
    free: Vec<u32>,
    index: HashMap<JobId, u32, IdHash>,
}

impl<E> Default for Table<E> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
        }
    }
}

impl<E> Table<E> {
    /// Whether a job with this id is in the table.
    pub(crate) fn contains(&self, id: JobId) -> bool {
        self.index.contains_key(&id)
    }

    /// Adds a job; the id must not be in the table (see [`contains`](Self::contains)).
    pub(crate) fn insert(&mut self, id: JobId, entry: E) -> Ticket {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some((id, entry));
                slot
            }
            None => {
                // More than u32::MAX jobs cannot be queued (the capacity is far lower).
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some((id, entry)));
                slot
            }
        };
        self.index.insert(id, slot);
        Ticket { slot, id }
    }

    /// The ticket of a job by its id.
    pub(crate) fn ticket(&self, id: JobId) -> Option<Ticket> {
        self.index.get(&id).map(|&slot| Ticket { slot, id })
    }

    /// A job by ticket, if it is still there.
    pub(crate) fn get(&self, ticket: Ticket) -> Option<&E> {
        match self.slots.get(ticket.slot as usize) {
            Some(Some((id, entry))) if *id == ticket.id => Some(entry),
            _ => None,
        }
    }

    /// A job by ticket, if it is still there.
    pub(crate) fn get_mut(&mut self, ticket: Ticket) -> Option<&mut E> {
        match self.slots.get_mut(ticket.slot as usize) {
            Some(Some((id, entry))) if *id == ticket.id => Some(entry),
            _ => None,
        }
    }

    /// Takes a job out by ticket.
    pub(crate) fn remove(&mut self, ticket: Ticket) -> Option<E> {
        let slot = self.slots.get_mut(ticket.slot as usize)?;
        if !matches!(slot, Some((id, _)) if *id == ticket.id) {
            return None;
        }
        let (id, entry) = slot.take()?;
        self.index.remove(&id);
        self.free.push(ticket.slot);
        if self.index.is_empty() {
            // Drained: start over from slot 0, and give a large burst's memory back.
            self.slots.clear();
            self.free.clear();
            if self.slots.capacity() > 1024 {
                self.slots = Vec::new();
                self.free = Vec::new();
            }
        }
        Some(entry)
    }

    /// Takes every job out.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (JobId, E)> + '_ {
        self.index.clear();
        self.free.clear();
        self.slots.drain(..).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_find_their_own_job_only() {
        let mut table = Table::default();
        let a = table.insert(1, "a");
        let b = table.insert(2, "b");
        assert_eq!(table.get(a), Some(&"a"));
        assert_eq!(table.ticket(2), Some(b));
        assert_eq!(table.remove(a), Some("a"));
        assert_eq!(table.get(a), None);
        assert!(!table.contains(1));
        // The slot is reused by another job; the old ticket does not reach it.
        let c = table.insert(3, "c");
        assert_eq!(c.slot, a.slot);
        assert_eq!(table.get(a), None);
        assert_eq!(table.remove(a), None);
        assert_eq!(table.get_mut(c), Some(&mut "c"));
        let mut rest: Vec<_> = table.drain().collect();
        rest.sort();
        assert_eq!(rest, [(2, "b"), (3, "c")]);
        assert!(!table.contains(2) && !table.contains(3));
    }
}
