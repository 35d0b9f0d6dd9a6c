//! [`token_of`]: where a key sits on the token ring, computed exactly as the server does.
//!
//! The server's ring (`ringkv-shard`'s `ring::token`) hashes keys with xxh3-64 and a fixed seed.
//! This crate depends only on `ringkv-wire`, so it carries its own copy of the two constants;
//! the root test `client_routes_each_key_to_its_owning_shard.rs` checks that both sides agree.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the token hash; must equal the server's `TOKEN_SEED`, or every key is routed to the
/// wrong shard (and pays a cross-core hop there).
pub const TOKEN_SEED: u64 = 0x7269_6e67_6b76_0001;

/// The token of `key`: the position on the ring that decides which shard owns it.
pub fn token_of(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, TOKEN_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_stable_across_releases() {
        // Pinned value: if this changes, clients and servers of different releases disagree.
        assert_eq!(token_of(b"hello"), xxh3_64_with_seed(b"hello", 0x7269_6e67_6b76_0001));
        assert_ne!(token_of(b"hello"), token_of(b"hellp"));
    }
}
