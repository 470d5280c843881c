//! A fast hasher for integer handles.
//!
//! The std SipHash guards against hash flooding from untrusted keys; our keys are handles chosen
//! by the control plane itself, and hashing sits on the placement hot path, so a multiplicative
//! (Fibonacci) hash is the better trade.
//!
//! A single integer keeps its low bits: the table's bucket is the handle itself (modulo the
//! table size), so handles given out in sequence (tasks, workers) sit side by side and a queue
//! taken in arrival order reads its table front to back instead of one cache miss per task. The
//! top 7 bits, the tag the table compares before the key, are mixed. Keys of several integers
//! are mixed throughout.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;
/// The top 7 bits of a hash: the tag hashbrown keeps per bucket.
const TAG: u64 = 0x7F << 57;

#[derive(Default, Clone, Copy)]
pub struct IdHasher {
    /// Every integer written, mixed.
    mixed: u64,
    /// The first integer written, as it is.
    first: u64,
    words: u32,
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        if self.words == 1 {
            self.first ^ (self.mixed & TAG)
        } else {
            self.mixed
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only integers are hashed with this hasher; fold any other input byte by byte.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        if self.words == 0 {
            self.first = n;
        }
        self.words += 1;
        self.mixed = (self.mixed.rotate_left(5) ^ n).wrapping_mul(FIBONACCI);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub type IdHashMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub type IdHashSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn handles_keep_their_order_and_get_mixed_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (0..1000u64).map(|n| build.hash_one(n)).collect();
        for (n, h) in hashes.iter().enumerate() {
            assert_eq!(h & ((1 << 57) - 1), n as u64, "the bucket is the handle");
        }
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(
            tags.len() > 100,
            "tags spread over the 128 values: {}",
            tags.len()
        );
        let pairs: HashSet<u64> = (0..1000u64)
            .map(|n| build.hash_one((n, 7u32)) & 0xFFFF)
            .collect();
        assert!(pairs.len() > 950, "tuple keys are mixed: {}", pairs.len());
    }
}
