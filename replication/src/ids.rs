//! [`IdMap`]: a hash map keyed by the ids this crate hands out itself (request ids, timer ids).
//!
//! The standard map seeds its hasher from the operating system's randomness and runs SipHash,
//! which resists keys chosen to collide. These keys are counters this process chooses, so that
//! protection buys nothing, and the seed would be randomness the crate promises not to draw. A
//! multiplicative (Fibonacci) hash spreads consecutive counters over the table in one multiply,
//! the same on every run.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from ids this process assigned to `V`.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// 2^64 divided by the golden ratio: multiplying by it spreads consecutive integers apart.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

/// Hashes a `u64` id with one multiplication. Not for keys that others choose.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(FIBONACCI);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_spread_over_the_top_bits_and_hash_the_same_every_time() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let tops: std::collections::BTreeSet<u64> = (0..128u64).map(|id| build.hash_one(id) >> 57).collect();
        // The map's control bytes use the top seven bits: 128 consecutive ids land on most of them.
        assert!(tops.len() > 64, "only {} distinct top bits", tops.len());
        assert_eq!(build.hash_one(42u64), BuildHasherDefault::<IdHasher>::default().hash_one(42u64));
    }

    #[test]
    fn a_map_keyed_by_ids_works_as_a_map() {
        let mut map: IdMap<&str> = IdMap::default();
        for id in 0..1000 {
            map.insert(id, "x");
        }
        assert_eq!(map.len(), 1000);
        assert!((0..1000).all(|id| map.contains_key(&id)));
        assert!(!map.contains_key(&1000));
    }
}
