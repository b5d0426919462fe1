//! Completed jobs' results, kept for their retention: for submitters that lost their
//! connection or their hub and attach again by job id, and for unique keys, which hold
//! while their job's result is kept.

use crate::jobs::handle::WeakProgress;
use crate::jobs::id::{id_map, IdMap};
use crate::jobs::store::{Attempt, Owner, UnixMillis};
use crate::jobs::JobId;
use bytes::Bytes;
use foldhash::fast::RandomState;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

/// A kept result.
pub(super) struct Retained {
    pub(super) output: Bytes,
    pub(super) owner: Owner,
    /// The job's unique key (name and key), released when the result goes.
    pub(super) key: Option<Box<str>>,
    pub(super) name: Arc<str>,
    pub(super) submitted_at: UnixMillis,
    /// The attempt that completed it (its end is the completion).
    pub(super) last: Attempt,
    /// The attempts before, that did not.
    pub(super) past: Vec<Attempt>,
    /// When its retention ends (set by [`Results::insert`]).
    expires: Option<Instant>,
}

impl Retained {
    /// A result to keep.
    pub(super) fn new(
        output: Bytes,
        owner: Owner,
        key: Option<Box<str>>,
        name: Arc<str>,
        submitted_at: UnixMillis,
        last: Attempt,
        past: Vec<Attempt>,
    ) -> Self {
        Self {
            output,
            owner,
            key,
            name,
            submitted_at,
            last,
            past,
            expires: None,
        }
    }
}

/// Places in one chunk of kept results (~55 KB: below the allocator's threshold for a
/// mapping of its own, so a chunk let go is reused for the next).
const CHUNK: usize = 256;

/// A kept result's place: its job, and the result (`None` once let go, or when the job
/// was kept again later).
type Place = (JobId, Option<Retained>);

/// What letting the oldest place go found.
enum Popped {
    /// No place left.
    Nothing,
    /// A place already let go.
    Empty,
    /// A job's result, now forgotten.
    Result(JobId),
}

/// The kept results, oldest first, bounded in time and count.
///
/// The results sit in the order they were kept, in fixed-size chunks (keeping one never
/// moves the others, and the oldest chunk goes whole once every place in it is let go).
/// The map from job id to a result's place is built on the first lookup by id (an
/// attach, a unique key, an operator's inspection) and kept up to date from then on;
/// until then keeping a result and letting the oldest go touch no hash table. With job
/// ids random and 100,000 results kept, every insertion and removal in that map was a
/// cache miss: about a tenth of the hub's time in W5, for lookups most queues never make.
/// (Ids are now minted in runs and the map keeps their order, [`crate::jobs::id`], but
/// results are kept in the order jobs finish, from every thread's runs.)
#[derive(Default)]
pub(super) struct Results {
    /// Job id to the sequence number of its place, once looked up by id.
    index: Option<IdMap<u64>>,
    /// Places holding a result (a job kept twice before the index is built counts
    /// twice until then).
    held: usize,
    /// The places, oldest first; every chunk but the last is full.
    chunks: VecDeque<Vec<Place>>,
    /// The sequence number of the first place of the first chunk.
    base: u64,
    /// Places at the front of the first chunk already let go.
    head: usize,
}

impl Results {
    /// Keeps `retained` until `expires`; with more than `max` kept, the oldest go: their
    /// keys (and jobs) go into `gone`, and each result let go for room (or `retained`
    /// itself, with `max` 0) is told to `forget`: a durable store forgets its job, which
    /// it would otherwise keep until the retention ends.
    pub(super) fn insert(
        &mut self,
        id: JobId,
        mut retained: Retained,
        expires: Instant,
        max: usize,
        gone: &mut Vec<(Box<str>, JobId)>,
        mut forget: impl FnMut(JobId),
    ) {
        if max == 0 {
            gone.extend(retained.key.map(|k| (k, id)));
            forget(id);
            return;
        }
        while self.held >= max {
            match self.pop_oldest(gone) {
                Popped::Nothing => break,
                Popped::Empty => {}
                Popped::Result(id) => forget(id),
            }
        }
        retained.expires = Some(expires);
        let seq = self.next_seq();
        if let Some(old) = self.index.as_mut().and_then(|index| index.insert(id, seq)) {
            // Kept again (a job run again after a restart): the older place goes empty.
            self.let_go(old);
        }
        if self.chunks.back().is_none_or(|chunk| chunk.len() == CHUNK) {
            self.chunks.push_back(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.push((id, Some(retained)));
            self.held += 1;
        }
    }

    /// Empties place `seq` (its result was kept again in a newer place).
    fn let_go(&mut self, seq: u64) {
        if self
            .place_mut(seq)
            .and_then(|place| place.1.take())
            .is_some()
        {
            self.held -= 1;
        }
    }

    /// The index from job id to place, built now if it was not: the places are indexed
    /// oldest first, so a job kept twice is found in its newer place, and the older one
    /// goes empty.
    fn index(&mut self) -> &IdMap<u64> {
        if self.index.is_none() {
            let mut index = id_map(self.held);
            let mut older = Vec::new();
            for (c, chunk) in self.chunks.iter().enumerate() {
                let first = self.base + (c * CHUNK) as u64;
                for (seq, (id, kept)) in (first..).zip(chunk) {
                    if kept.is_some() {
                        older.extend(index.insert(*id, seq));
                    }
                }
            }
            for seq in older {
                self.let_go(seq);
            }
            self.index = Some(index);
        }
        self.index.get_or_insert_default()
    }

    /// The sequence number the next place gets.
    fn next_seq(&self) -> u64 {
        let full = self.chunks.len().saturating_sub(1) * CHUNK;
        let last = self.chunks.back().map_or(0, Vec::len);
        self.base + (full + last) as u64
    }

    /// Where place `seq` is, if it is still held.
    fn locate(&self, seq: u64) -> Option<(usize, usize)> {
        let offset = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        (offset >= self.head).then_some((offset / CHUNK, offset % CHUNK))
    }

    fn place(&self, seq: u64) -> Option<&Place> {
        let (chunk, at) = self.locate(seq)?;
        self.chunks.get(chunk)?.get(at)
    }

    fn place_mut(&mut self, seq: u64) -> Option<&mut Place> {
        let (chunk, at) = self.locate(seq)?;
        self.chunks.get_mut(chunk)?.get_mut(at)
    }

    /// The oldest place still held.
    fn oldest(&self) -> Option<&Place> {
        self.chunks.front()?.get(self.head)
    }

    /// Lets the oldest place go; its key (if it held a result) goes into `gone`. Returns
    /// whether there was one.
    fn pop_oldest(&mut self, gone: &mut Vec<(Box<str>, JobId)>) -> Popped {
        let Some(chunk) = self.chunks.front_mut() else {
            return Popped::Nothing;
        };
        let Some((id, place)) = chunk.get_mut(self.head) else {
            return Popped::Nothing;
        };
        let (id, retained) = (*id, place.take());
        self.head += 1;
        if self.head == CHUNK {
            self.chunks.pop_front();
            self.base += CHUNK as u64;
            self.head = 0;
        }
        match retained {
            Some(kept) => {
                self.held -= 1;
                if let Some(index) = &mut self.index {
                    index.remove(&id);
                }
                gone.extend(kept.key.map(|k| (k, id)));
                Popped::Result(id)
            }
            None => Popped::Empty,
        }
    }

    /// Forgets the results whose retention ended by `now`; their keys go into `gone`.
    pub(super) fn expire(&mut self, now: Instant, gone: &mut Vec<(Box<str>, JobId)>) {
        while let Some((_, oldest)) = self.oldest() {
            if oldest
                .as_ref()
                .and_then(|kept| kept.expires)
                .is_some_and(|expires| expires > now)
            {
                break;
            }
            self.pop_oldest(gone);
        }
    }

    /// Kept result `id`, unless its retention ended (the dispatcher forgets it when it
    /// next runs).
    pub(super) fn get(&mut self, id: JobId) -> Option<&Retained> {
        let now = Instant::now();
        let seq = *self.index().get(&id)?;
        self.place(seq)?
            .1
            .as_ref()
            .filter(|kept| kept.expires.is_none_or(|at| at > now))
    }

    /// The kept results, newest first (each job once: the index is built for that).
    pub(super) fn newest(&mut self) -> impl Iterator<Item = (JobId, &Retained)> {
        self.index();
        let now = Instant::now();
        self.chunks
            .iter()
            .rev()
            .flat_map(|chunk| chunk.iter().rev())
            .filter_map(move |(id, kept)| {
                let kept = kept.as_ref()?;
                kept.expires
                    .is_none_or(|at| at > now)
                    .then_some((*id, kept))
            })
    }
}

/// Unique keys (`name` + NUL + key) of jobs waiting, delayed, running or kept: which job
/// holds each, and its progress while it is alive.
#[derive(Default)]
pub(super) struct Keys {
    map: HashMap<Box<str>, (JobId, WeakProgress), RandomState>,
}

impl Keys {
    /// The map key of a job name's unique key.
    pub(super) fn full(name: &str, key: &str) -> Box<str> {
        let mut full = String::with_capacity(name.len() + 1 + key.len());
        full.push_str(name);
        full.push('\0');
        full.push_str(key);
        full.into_boxed_str()
    }

    pub(super) fn get(&self, full: &str) -> Option<&(JobId, WeakProgress)> {
        self.map.get(full)
    }

    pub(super) fn insert(&mut self, full: Box<str>, id: JobId, progress: WeakProgress) {
        self.map.insert(full, (id, progress));
    }

    /// Releases `full` if job `id` holds it.
    pub(super) fn release(&mut self, full: &str, id: JobId) {
        if self.map.get(full).is_some_and(|(holder, _)| *holder == id) {
            self.map.remove(full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use uuid::Uuid;

    fn kept(key: Option<&str>) -> Retained {
        Retained::new(
            Bytes::from_static(b"out"),
            Owner::HUB,
            key.map(Box::from),
            Arc::from("job"),
            0,
            Attempt::started(1, Uuid::nil(), 0),
            Vec::new(),
        )
    }

    #[test]
    fn the_oldest_go_past_the_count_and_release_their_keys() {
        let mut results = Results::default();
        let (mut gone, later) = (Vec::new(), Instant::now() + Duration::from_secs(60));
        let mut forgotten = Vec::new();
        for (id, key) in [(1, Some("a")), (2, None), (3, Some("c"))] {
            results.insert(id, kept(key), later, 2, &mut gone, |id| forgotten.push(id));
        }
        assert_eq!(gone, vec![(Box::from("a"), 1)]);
        // Let go for room: a durable store is told to forget the job.
        assert_eq!(forgotten, vec![1]);
        results.insert(4, kept(None), later, 0, &mut gone, |id| forgotten.push(id));
        assert_eq!(forgotten, vec![1, 4]);
        assert!(results.get(1).is_none());
        assert!(results.get(2).is_some() && results.get(3).is_some());
        let newest: Vec<_> = results.newest().map(|(id, _)| id).collect();
        assert_eq!(newest, vec![3, 2]);
    }

    #[test]
    fn places_span_chunks_and_chunks_go_when_let_go() {
        let mut results = Results::default();
        let (mut gone, later) = (Vec::new(), Instant::now() + Duration::from_secs(60));
        let n = 2 * CHUNK as u128 + 3;
        for id in 0..n {
            results.insert(id, kept(None), later, CHUNK + 1, &mut gone, |_| {});
        }
        // The newest CHUNK + 1 are kept, the older let go; the first chunk is gone whole.
        assert!(results.chunks.len() <= 2);
        assert!(results.get(n - CHUNK as u128 - 2).is_none());
        for id in n - CHUNK as u128 - 1..n {
            assert!(results.get(id).is_some(), "job {id} kept");
        }
        assert_eq!(results.newest().count(), CHUNK + 1);
        assert_eq!(results.newest().next().map(|(id, _)| id), Some(n - 1));
    }

    #[test]
    fn no_index_until_a_lookup_then_a_job_kept_twice_is_found_once() {
        let mut results = Results::default();
        let (mut gone, later) = (Vec::new(), Instant::now() + Duration::from_secs(60));
        results.insert(1, kept(None), later, 10, &mut gone, |_| {});
        results.insert(1, kept(Some("k")), later, 10, &mut gone, |_| {});
        results.insert(2, kept(None), later, 10, &mut gone, |_| {});
        assert!(results.index.is_none());
        assert_eq!(results.held, 3);
        // The first lookup builds the index: the newer place of job 1 wins.
        assert_eq!(results.get(1).and_then(|r| r.key.as_deref()), Some("k"));
        assert_eq!(results.held, 2);
        let newest: Vec<_> = results.newest().map(|(id, _)| id).collect();
        assert_eq!(newest, vec![2, 1]);
        // From then on the index follows insertions and evictions.
        results.insert(3, kept(None), later, 2, &mut gone, |_| {});
        assert_eq!(gone, vec![(Box::from("k"), 1)]);
        assert!(results.get(1).is_none());
        assert!(results.get(2).is_some() && results.get(3).is_some());
        assert_eq!(results.held, 2);
    }

    #[test]
    fn a_result_kept_again_replaces_the_older_one_and_expiry_spares_it() {
        let mut results = Results::default();
        let mut gone = Vec::new();
        let now = Instant::now();
        results.insert(7, kept(None), now, 10, &mut gone, |_| {});
        results.insert(
            7,
            kept(Some("k")),
            now + Duration::from_secs(60),
            10,
            &mut gone,
            |_| {},
        );
        results.insert(8, kept(None), now, 10, &mut gone, |_| {});
        // The first place of 7 and job 8 expired; 7's later place stays.
        results.expire(now, &mut gone);
        assert!(gone.is_empty());
        assert_eq!(results.get(7).and_then(|r| r.key.as_deref()), Some("k"));
        assert_eq!(results.newest().count(), 1);
        results.expire(now + Duration::from_secs(61), &mut gone);
        assert_eq!(gone, vec![(Box::from("k"), 7)]);
        assert!(results.get(7).is_none());
    }
}
