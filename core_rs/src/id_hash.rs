//! A fast hasher for integer handles.
//!
//! The std SipHash guards against hash flooding from untrusted keys; our keys are handles chosen
//! by the control plane itself, and hashing sits on the placement hot path, so a multiplicative
//! (Fibonacci) hash is the better trade.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only integers are hashed with this hasher; fold any other input byte by byte.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
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
