//! A fast deflate encoder for one small message without context takeover: greedy LZ77
//! over the message alone, with a small hash table, written as one block of fixed Huffman
//! codes (RFC 1951, 3.2.6), ending as a sync flush does (minus its `00 00 ff ff`).
//!
//! Why: zlib (and zlib-rs) forgets its history by clearing a 128 KiB hash table, which
//! costs microseconds per message, far more than compressing a 100-byte message. This
//! encoder needs no clearing: a stale hash entry from an earlier message points at a
//! position that is checked against this message's bytes before it is used.

use std::cell::RefCell;

/// Longest message this encoder takes; longer ones go to zlib, which compresses them
/// better and amortises its reset.
pub(crate) const MAX_INPUT: usize = 16 * 1024;

const HASH_BITS: u32 = 12;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;

thread_local! {
    /// Last position (+1) of each 3-byte hash, from whatever message was compressed last.
    static HASH: RefCell<[u32; 1 << HASH_BITS]> = const { RefCell::new([0; 1 << HASH_BITS]) };
}

/// Writes bits least significant first, as deflate packs them.
struct Bits<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    count: u32,
}

impl Bits<'_> {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= u64::from(value) << self.count;
        self.count += bits;
        while self.count >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.count -= 8;
        }
    }

    /// A Huffman code, which deflate writes most significant bit first.
    fn code(&mut self, code: u32, bits: u32) {
        self.put(code.reverse_bits() >> (32 - bits), bits);
    }

    /// Pads to a byte boundary with zero bits.
    fn finish(mut self) {
        if self.count > 0 {
            self.out.push(self.acc as u8);
        }
        self.count = 0;
    }
}

/// The fixed Huffman code of a literal/length symbol (0..=287): (code, bits).
fn lit_code(symbol: u32) -> (u32, u32) {
    match symbol {
        0..=143 => (0x30 + symbol, 8),
        144..=255 => (0x190 + symbol - 144, 9),
        256..=279 => (symbol - 256, 7),
        _ => (0xC0 + symbol - 280, 8),
    }
}

/// Length 3..=258 as (symbol, extra bits, extra value).
fn length_symbol(len: usize) -> (u32, u32, u32) {
    const BASE: [u16; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const EXTRA: [u8; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    let len = len as u16;
    let i = BASE.partition_point(|&b| b <= len) - 1;
    (
        257 + i as u32,
        u32::from(EXTRA[i]),
        u32::from(len - BASE[i]),
    )
}

/// Distance 1..=32768 as (symbol, extra bits, extra value).
fn distance_symbol(dist: usize) -> (u32, u32, u32) {
    const BASE: [u16; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
        2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
    ];
    let dist = dist as u16;
    let i = BASE.partition_point(|&b| b <= dist) - 1;
    let extra = if i < 4 { 0 } else { (i as u32 - 2) / 2 };
    (i as u32, extra, u32::from(dist - BASE[i]))
}

fn hash(bytes: &[u8]) -> usize {
    let v = u32::from(bytes[0]) | u32::from(bytes[1]) << 8 | u32::from(bytes[2]) << 16;
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// Appends `input` (at most [`MAX_INPUT`] bytes) compressed to `out`, with matches no
/// farther back than `1 << window_bits` (8 to 15: unlike zlib, a 256-byte window is kept
/// exactly). Returns `false`, with `out` as it was, as soon as the result would not be
/// smaller than `input`: fixed Huffman codes take 9 bits for bytes 144 to 255, so data
/// without repeats grows by up to an eighth.
pub(crate) fn compress(input: &[u8], window_bits: u8, out: &mut Vec<u8>) -> bool {
    let window = 1usize << window_bits.clamp(8, 15);
    let start = out.len();
    // Giving up at the input's length (minus the end of block, 2 bytes at most) keeps
    // the whole result smaller than the input.
    let give_up_at = (start + input.len()).saturating_sub(2);
    out.reserve(input.len() / 2 + 16);
    let mut bits = Bits {
        out,
        acc: 0,
        count: 0,
    };
    // BFINAL 0, BTYPE 01 (fixed Huffman).
    bits.put(0b010, 3);
    let fits = HASH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut table) => encode(input, window, &mut table, &mut bits, give_up_at),
        // Only when re-entered on this thread (never in practice): a table of its own.
        // Zeroing 16 KiB is what the shared table exists to avoid, so it is done only here.
        Err(_) => encode(
            input,
            window,
            &mut Box::new([0; 1 << HASH_BITS]),
            &mut bits,
            give_up_at,
        ),
    });
    if !fits {
        out.truncate(start);
        return false;
    }
    // End of block, then the header of the empty stored block a sync flush writes
    // (BFINAL 0, BTYPE 00), padded to a byte; its LEN/NLEN are the tail the receiver adds.
    let (code, n) = lit_code(256);
    bits.code(code, n);
    bits.put(0, 3);
    bits.finish();
    if out.len() - start >= input.len() {
        out.truncate(start);
        return false;
    }
    true
}

/// Greedy LZ77 over `input` alone, written as fixed Huffman codes to `bits`; `false` once
/// the output reaches `give_up_at` bytes.
fn encode(
    input: &[u8],
    window: usize,
    table: &mut [u32; 1 << HASH_BITS],
    bits: &mut Bits<'_>,
    give_up_at: usize,
) -> bool {
    let mut pos = 0;
    while pos < input.len() {
        if bits.out.len() >= give_up_at {
            return false;
        }
        let mut matched = 0;
        let mut distance = 0;
        if pos + MIN_MATCH <= input.len() {
            let h = hash(&input[pos..]);
            // A stale entry may point anywhere: only a position before this one, in
            // this message and in the window, whose bytes match, is used.
            let candidate = table[h] as usize;
            table[h] = pos as u32 + 1;
            if let Some(cand) = candidate.checked_sub(1) {
                if cand < pos && pos - cand <= window {
                    let limit = (input.len() - pos).min(MAX_MATCH);
                    let len = input[cand..]
                        .iter()
                        .zip(&input[pos..pos + limit])
                        .take_while(|(a, b)| a == b)
                        .count();
                    if len >= MIN_MATCH {
                        matched = len;
                        distance = pos - cand;
                    }
                }
            }
        }
        if matched == 0 {
            let (code, n) = lit_code(u32::from(input[pos]));
            bits.code(code, n);
            pos += 1;
            continue;
        }
        let (symbol, extra_bits, extra) = length_symbol(matched);
        let (code, n) = lit_code(symbol);
        bits.code(code, n);
        bits.put(extra, extra_bits);
        let (symbol, extra_bits, extra) = distance_symbol(distance);
        bits.code(symbol, 5);
        bits.put(extra, extra_bits);
        // Index the start of the match's tail too, cheaply: its next position.
        let next = pos + 1;
        if next + MIN_MATCH <= input.len() {
            table[hash(&input[next..])] = next as u32 + 1;
        }
        pos += matched;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};
    use proptest::prelude::*;

    fn inflate(data: &[u8], window_bits: u8) -> Vec<u8> {
        // zlib's raw inflater takes no 8-bit window: check the distances against 256 apart.
        let mut d = Decompress::new_with_window_bits(false, window_bits.max(9));
        let mut input = data.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(MAX_INPUT * 2 + 64);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(d.total_in() as usize, input.len(), "all input taken");
        out
    }

    /// The farthest match distance in a fixed-Huffman block written by `compress`.
    fn max_distance(data: &[u8]) -> usize {
        let bit = |pos: usize| (data[pos / 8] >> (pos % 8)) & 1;
        let read = |pos: &mut usize, n: u32| {
            let mut v = 0u32;
            for i in 0..n {
                v |= u32::from(bit(*pos)) << i;
                *pos += 1;
            }
            v
        };
        let huff = |pos: &mut usize, n: u32| {
            let mut v = 0u32;
            for _ in 0..n {
                v = (v << 1) | u32::from(bit(*pos));
                *pos += 1;
            }
            v
        };
        // Symbol -> (base, extra bits), from the encoder's own mappings.
        let mut lengths = [(0usize, 0u32); 286];
        for len in (MIN_MATCH..=MAX_MATCH).rev() {
            let (symbol, extra, _) = length_symbol(len);
            lengths[symbol as usize] = (len, extra);
        }
        let mut distances = [(0usize, 0u32); 30];
        for dist in (1..=32768).rev() {
            let (symbol, extra, _) = distance_symbol(dist);
            distances[symbol as usize] = (dist, extra);
        }
        let mut pos = 3;
        let mut max = 0;
        loop {
            // Literal/length symbol: 7, 8 or 9 bits (RFC 1951, 3.2.6).
            let mut code = huff(&mut pos, 7);
            let symbol = if code <= 0x17 {
                code + 256
            } else {
                code = (code << 1) | huff(&mut pos, 1);
                if (0x30..=0xBF).contains(&code) {
                    code - 0x30
                } else if (0xC0..=0xC7).contains(&code) {
                    code - 0xC0 + 280
                } else {
                    code = (code << 1) | huff(&mut pos, 1);
                    code - 0x190 + 144
                }
            };
            match symbol {
                256 => return max,
                0..=255 => {}
                _ => {
                    read(&mut pos, lengths[symbol as usize].1);
                    let (base, extra) = distances[huff(&mut pos, 5) as usize];
                    max = max.max(base + read(&mut pos, extra) as usize);
                }
            }
        }
    }

    #[test]
    fn symbols_follow_rfc_1951() {
        assert_eq!(length_symbol(3), (257, 0, 0));
        assert_eq!(length_symbol(11), (265, 1, 0));
        assert_eq!(length_symbol(12), (265, 1, 1));
        assert_eq!(length_symbol(257), (284, 5, 30));
        assert_eq!(length_symbol(258), (285, 0, 0));
        assert_eq!(distance_symbol(1), (0, 0, 0));
        assert_eq!(distance_symbol(5), (4, 1, 0));
        assert_eq!(distance_symbol(32768), (29, 13, 8191));
        assert_eq!(lit_code(0), (0x30, 8));
        assert_eq!(lit_code(255), (0x1FF, 9));
        assert_eq!(lit_code(256), (0, 7));
        assert_eq!(lit_code(287), (0xC7, 8));
    }

    #[test]
    fn small_repetitive_messages_shrink() {
        let msg = b"Mxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        let mut out = Vec::new();
        assert!(compress(msg, 15, &mut out));
        assert!(out.len() < 10, "{} bytes", out.len());
        assert_eq!(inflate(&out, 15), msg);
        let json = br#"{"type":"tick","symbol":"ABC","bid":101.25,"ask":101.27,"type":"tick"}"#;
        let mut out = Vec::new();
        assert!(compress(json, 15, &mut out));
        assert!(out.len() < json.len());
        assert_eq!(inflate(&out, 15), json);
    }

    /// The case that used to reach a receiver as a message over its limit: 1024 bytes
    /// without repeats, all with 9-bit codes, took about 1153 bytes.
    #[test]
    fn what_would_grow_is_refused_and_out_left_as_it_was() {
        let mut state = 0x2545_f491_u32;
        let noise: Vec<u8> = (0..1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                0x90 + (state % 0x70) as u8
            })
            .collect();
        let mut out = b"kept".to_vec();
        assert!(!compress(&noise, 15, &mut out));
        assert_eq!(out, b"kept");
        assert!(!compress(b"", 15, &mut out));
        assert!(!compress(b"abc", 15, &mut out));
        assert_eq!(out, b"kept");
    }

    proptest! {
        #[test]
        fn any_message_inflates_back(
            msg in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..MAX_INPUT),
            window_bits in 8u8..=15,
        ) {
            let mut out = Vec::new();
            if compress(&msg, window_bits, &mut out) {
                prop_assert!(out.len() < msg.len());
                prop_assert_eq!(inflate(&out, window_bits), msg);
                prop_assert!(max_distance(&out) <= 1 << window_bits);
            } else {
                prop_assert!(out.is_empty());
            }
        }
    }
}
