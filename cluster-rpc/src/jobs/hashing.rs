//! A fast keyed hash for the queue's maps, whose keys are 16-byte ids (job ids, worker
//! connection ids). SipHash costs more than the rest of a map lookup here, and these maps
//! are looked up several times per job.
//!
//! Each map gets random keys, and every 8 bytes go through a folded 64×64→128-bit
//! multiply with them (the mixing foldhash and wyhash use): ids a peer chooses cannot be
//! aimed at one bucket without knowing the keys.

use std::hash::{BuildHasher, Hasher};

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// Builds [`IdHasher`]s with this map's random keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHash {
    k0: u64,
    k1: u64,
}

impl Default for IdHash {
    fn default() -> Self {
        Self {
            k0: rand::random(),
            k1: rand::random(),
        }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            state: self.k0,
            key: self.k1 | 1,
        }
    }
}

/// The hasher of [`IdHash`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHasher {
    state: u64,
    key: u64,
}

fn fold(a: u64, b: u64) -> u64 {
    let wide = u128::from(a).wrapping_mul(u128::from(b));
    (wide as u64) ^ ((wide >> 64) as u64)
}

impl IdHasher {
    fn mix(&mut self, word: u64) {
        self.state = fold(self.state ^ word, self.key ^ MUL).rotate_left(23);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_u128(&mut self, n: u128) {
        self.mix(n as u64);
        self.mix((n >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        fold(self.state, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn spreads_sequential_ids_over_buckets() {
        let hash = IdHash::default();
        let buckets: HashSet<u64> = (0u128..4096).map(|id| hash.hash_one(id) & 4095).collect();
        // A uniform hash fills about 63 % of 4096 buckets with 4096 keys.
        assert!(buckets.len() > 2300, "{}", buckets.len());
        assert_ne!(hash.hash_one(1u128), hash.hash_one(1u128 << 64));
    }
}
