//! Job ids, and the hash tables keyed by them.
//!
//! A hub keeps its jobs in tables keyed by id: the jobs submitted here and not resolved,
//! the jobs running here, a shared store's own book of submissions. With a queue of
//! 100,000 jobs those tables are megabytes, and with random ids every insertion, lookup
//! and removal lands on a cold cache line and page (about a sixth of the submitting
//! hub's time in issue 13's W8, on three accesses per job). So ids are minted in runs: each thread
//! counts up from a random start under a random prefix, and [`IdMap`]'s hash keeps
//! that order in the bucket index. Jobs are submitted, started and resolved roughly in
//! submission order, so a table's accesses walk a window of neighbouring buckets.
//!
//! Only hubs mint ids, and only ids minted by a hub of the cluster (or read back from a
//! hub's own store) are inserted into these tables: a member can name an id to attach or
//! cancel, a lookup, but cannot choose the keys of a table, so the predictable bucket
//! index gives a peer nothing to flood.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::JobId;

/// The UUID variant bits (RFC 9562) in the low half of an id: the counter takes the 62
/// bits below them.
const VARIANT: u64 = 0x8000_0000_0000_0000;
const COUNTER: u64 = !(0b11 << 62);
/// The UUID version nibble of the high half (version 4: the id shows as a v4 UUID).
const VERSION_MASK: u64 = 0xF000;
const VERSION_4: u64 = 0x4000;

/// A new job id: a v4-format UUID whose 58 high random bits are drawn once per thread and
/// whose low 62 bits count up from a random start. Unique (two threads would need the same
/// prefix and overlapping counters: about 2^-58 per pair of threads, then the ranges), cheap
/// (no random generator per id), and minted in order, which keeps the id tables' accesses
/// near each other. Nothing uses an id as a secret.
pub(crate) fn new_job_id() -> JobId {
    thread_local! {
        static NEXT: std::cell::Cell<(u64, u64)> = std::cell::Cell::new((
            (rand::random::<u64>() & !VERSION_MASK) | VERSION_4,
            rand::random::<u64>(),
        ));
    }
    NEXT.with(|next| {
        let (high, count) = next.get();
        next.set((high, count.wrapping_add(1)));
        (u128::from(high) << 64) | u128::from(VARIANT | (count & COUNTER))
    })
}

/// A hash table keyed by job id, whose buckets follow the ids' order ([module docs](self)).
pub(crate) type IdMap<V> = HashMap<JobId, V, BuildHasherDefault<IdHasher>>;

/// An empty [`IdMap`] with room for `capacity` ids.
pub(crate) fn id_map<V>(capacity: usize) -> IdMap<V> {
    HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

/// Hashes a job id so that ids of one run land in neighbouring buckets: the low bits (the
/// bucket index of any table below 2^57 buckets) are the counter plus an offset from the
/// prefix; the top 7 bits (the table's tag of each bucket) are mixed from all of them, so
/// neighbours still have different tags.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

/// The bits of a hash a table does not use as its bucket index (hashbrown's tag).
const TAG: u64 = 0x7F << 57;

impl IdHasher {
    fn mix(word: u64) -> u64 {
        (word ^ (word >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
    }
}

impl Hasher for IdHasher {
    fn write_u128(&mut self, id: u128) {
        let (high, low) = ((id >> 64) as u64, id as u64);
        let at = low.wrapping_add(high.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.0 = (at & !TAG) | (Self::mix(at) & TAG);
    }

    /// Any other key: a plain mix of its bytes (the tables here are keyed by ids only).
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = Self::mix(self.0.rotate_left(5) ^ u64::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn ids_of_a_thread_are_v4_uuids_counting_up() {
        let ids: Vec<JobId> = (0..1000).map(|_| new_job_id()).collect();
        for pair in ids.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(a >> 64, b >> 64, "one prefix per thread");
            let (ca, cb) = (a as u64 & COUNTER, b as u64 & COUNTER);
            assert_eq!(cb, ca.wrapping_add(1) & COUNTER);
        }
        for id in &ids {
            let uuid = uuid::Uuid::from_u128(*id);
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        }
        let other = std::thread::spawn(new_job_id).join().expect("thread");
        assert_ne!(other >> 64, ids[0] >> 64, "another thread, another prefix");
    }

    #[test]
    fn neighbouring_ids_get_neighbouring_buckets_and_different_tags() {
        let hasher = BuildHasherDefault::<IdHasher>::default();
        let first = new_job_id();
        let hashes: Vec<u64> = (0..64u128).map(|i| hasher.hash_one(first + i)).collect();
        let mask = (1u64 << 20) - 1;
        for (i, hash) in hashes.iter().enumerate() {
            let expected = hashes[0].wrapping_add(i as u64) & mask;
            // Within a run that does not wrap the counter.
            if (first as u64 & COUNTER)
                .checked_add(63)
                .is_some_and(|end| end <= COUNTER)
            {
                assert_eq!(hash & mask, expected, "bucket of id {i}");
            }
        }
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tags.len() > 32, "tags spread: {}", tags.len());
    }

    #[test]
    fn an_id_map_finds_what_it_holds() {
        let mut map = id_map(0);
        let ids: Vec<JobId> = (0..10_000).map(|_| new_job_id()).collect();
        for (i, id) in ids.iter().enumerate() {
            map.insert(*id, i);
        }
        map.insert(u128::MAX, 7);
        map.insert(0, 8);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(map.get(id), Some(&i));
        }
        assert_eq!((map.get(&u128::MAX), map.get(&0)), (Some(&7), Some(&8)));
        assert_eq!(map.get(&(ids[0] ^ (1 << 100))), None);
    }
}
