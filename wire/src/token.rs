//! Where a key sits on the token ring: xxh3-64 of the key with a fixed seed.
//!
//! Servers and clients must compute the same token for a key, on every machine and in every
//! release, or keys are routed to the wrong shard (and, across nodes, the wrong replicas). That is
//! why it lives here, in the crate both sides share, and why it is xxh3 with a pinned seed and never
//! ahash (whose output varies across machines and versions).

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the token hash. Changing it moves every key: it is part of the on-disk and on-wire format.
pub const TOKEN_SEED: u64 = 0x7269_6e67_6b76_0001;

/// The token of `key`.
pub fn token(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, TOKEN_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_pinned_across_releases() {
        // If this value changes, nodes and clients of different releases disagree on placement.
        assert_eq!(token(b"hello"), 0x5218_5139_33dc_c07d);
        assert_ne!(token(b"hello"), token(b"hellp"));
    }
}
