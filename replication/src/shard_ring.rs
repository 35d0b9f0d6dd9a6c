//! [`ShardRing`]: which shard of a node owns a key.
//!
//! A key's token is its xxh3-64 hash with a fixed seed ([`token`]). The 64-bit token space is
//! cut into `vnodes_per_shard × shards` equal ranges, dealt out to the shards round-robin, so
//! that neighbouring ranges belong to different shards and every shard holds a spread of the
//! ring. The same ranges are published to clients in the topology, so a shard-aware client
//! routes with exactly the mapping the server uses.
//!
//! The token must be stable across machines, processes and releases: it decides where data
//! lives on disk and clients compute it too. That is why it is xxh3 with a constant seed, and
//! never ahash (whose output changes between machines and versions; see DESIGN.md).
//!
//! The mapping lives here, free of glommio, so that every user computes it with the same code:
//! the shard routing its own requests, a coordinator choosing the shard of each replica
//! ([`target`]), and the simulator running nodes of several shards.

use std::collections::BTreeMap;

use ringkv_wire::{ShardPlacement, TokenRange, Topology};

use crate::coordinator::Target;

/// Most shards a node may run: shard ids travel as `u32` and the ring stays small.
pub const SHARDS_MAX: usize = 1024;

/// Most vnode ranges per shard.
pub const VNODES_PER_SHARD_MAX: usize = 1024;

pub use ringkv_wire::token::{token, TOKEN_SEED};

/// The node's token ranges and their owning shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRing {
    /// Start of each range, ascending; range `i` is `[starts[i], starts[i + 1])` and the last
    /// one runs to the top of the token space. `starts[0]` is 0.
    starts: Vec<u64>,
    /// Owning shard of each range.
    owners: Vec<u32>,
    shards: usize,
}

impl ShardRing {
    /// A ring of `shards` shards with `vnodes_per_shard` ranges each.
    ///
    /// # Panics
    ///
    /// If either count is zero or above its maximum ([`SHARDS_MAX`],
    /// [`VNODES_PER_SHARD_MAX`]); the configuration is checked before this is called.
    pub fn new(shards: usize, vnodes_per_shard: usize) -> Self {
        assert!((1..=SHARDS_MAX).contains(&shards), "shard count {shards} outside 1..={SHARDS_MAX}");
        assert!(
            (1..=VNODES_PER_SHARD_MAX).contains(&vnodes_per_shard),
            "vnodes per shard {vnodes_per_shard} outside 1..={VNODES_PER_SHARD_MAX}"
        );
        let ranges = shards * vnodes_per_shard;
        // Range i starts at ceil(i * 2^64 / ranges): equal widths to within one token.
        let starts: Vec<u64> = (0..ranges)
            .map(|index| {
                let scaled = (index as u128) << 64;
                scaled.div_ceil(ranges as u128) as u64
            })
            .collect();
        let owners = (0..ranges).map(|index| (index % shards) as u32).collect();
        ShardRing { starts, owners, shards }
    }

    /// The ring a member announces (`shards` shards of `vnodes_per_shard` ranges each), with
    /// the counts clamped to the ring's limits: a member's announcement is not trusted to be
    /// in range.
    pub fn announced(shards: u32, vnodes_per_shard: u32) -> Self {
        ShardRing::new(
            (shards as usize).clamp(1, SHARDS_MAX),
            (vnodes_per_shard as usize).clamp(1, VNODES_PER_SHARD_MAX),
        )
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard owning `token`.
    pub fn owner_of_token(&self, token: u64) -> u32 {
        self.owners[self.range_of(token)]
    }

    /// The index of the range holding `token`, computed rather than searched for: with `n`
    /// ranges, range `i` starts at `ceil(i * 2^64 / n)`, so `token` lies in range
    /// `floor(token * n / 2^64)`. (A binary search of the starts, a hard-to-predict branch per
    /// step, was over 2% of a node's CPU serving cached reads: every read routes twice.)
    #[inline]
    fn range_of(&self, token: u64) -> usize {
        let index = ((u128::from(token) * self.starts.len() as u128) >> 64) as usize;
        debug_assert_eq!(index, self.starts.partition_point(|&start| start <= token) - 1);
        index
    }

    /// The shard owning `key`.
    pub fn owner_of_key(&self, key: &[u8]) -> u32 {
        self.owner_of_token(token(key))
    }

    /// The ranges `shard` owns, in token order.
    pub fn ranges_of(&self, shard: u32) -> Vec<TokenRange> {
        (0..self.starts.len())
            .filter(|&index| self.owners[index] == shard)
            .map(|index| TokenRange {
                start: self.starts[index],
                // An end of 0 on the last range means "to the top of the token space": wire
                // ranges with end <= start wrap (see `TokenRange`).
                end: self.starts.get(index + 1).copied().unwrap_or(0),
            })
            .collect()
    }

    /// The topology clients route with: every shard, its port (`port_of(shard)`) and ranges.
    pub fn topology(&self, port_of: impl Fn(u32) -> u16) -> Topology {
        let shards = (0..self.shards as u32)
            .map(|shard_id| ShardPlacement {
                shard_id,
                port: port_of(shard_id),
                token_ranges: self.ranges_of(shard_id),
            })
            .collect();
        Topology { shards, ..Topology::default() }
    }
}

/// The replica `node_id` of a key with token `token`, as a target: the node and its shard that
/// owns the token, from the node's ring in `shard_rings` (shard 0 for a node without one).
pub fn target(shard_rings: &BTreeMap<u16, ShardRing>, node_id: u16, token: u64) -> Target {
    Target { node_id, shard: shard_rings.get(&node_id).map_or(0, |ring| ring.owner_of_token(token)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_stable() {
        // Pinned: a change here means every stored key moved shard.
        assert_eq!(token(b"hello"), xxhash_rust::xxh3::xxh3_64_with_seed(b"hello", TOKEN_SEED));
        assert_eq!(token(b"hello"), token(b"hello"));
        assert_ne!(token(b"hello"), token(b"hellp"));
    }

    #[test]
    fn single_shard_owns_everything() {
        let ring = ShardRing::new(1, 1);
        assert_eq!(ring.ranges_of(0), vec![TokenRange { start: 0, end: 0 }]);
        for token in [0, 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(ring.owner_of_token(token), 0);
        }
    }

    #[test]
    fn ranges_cover_the_ring_once_and_agree_with_lookup() {
        for (shards, vnodes) in [(1, 16), (2, 16), (3, 7), (5, 1)] {
            let ring = ShardRing::new(shards, vnodes);
            let topology = ring.topology(|shard| 9000 + shard as u16);
            let total: usize = topology.shards.iter().map(|shard| shard.token_ranges.len()).sum();
            assert_eq!(total, shards * vnodes);
            let probes = [0, 1, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1]
                .into_iter()
                .chain((0..2000u64).map(|index| token(&index.to_le_bytes())))
                .chain(ring.starts.iter().flat_map(|&start| [start, start.wrapping_sub(1)]));
            for probe in probes {
                let owner = ring.owner_of_token(probe);
                let holders: Vec<u32> = topology
                    .shards
                    .iter()
                    .filter(|shard| shard.token_ranges.iter().any(|range| range.contains(probe)))
                    .map(|shard| shard.shard_id)
                    .collect();
                assert_eq!(holders, vec![owner], "token {probe:#x} with {shards} shards");
            }
        }
    }

    /// The computed range is the one a search of the starts finds, at the edges of every
    /// range, for rings of every shape up to the largest.
    #[test]
    fn the_computed_range_is_the_searched_one() {
        for (shards, vnodes) in
            [(1, 1), (1, 256), (2, 256), (3, 7), (7, 1000), (SHARDS_MAX, VNODES_PER_SHARD_MAX)]
        {
            let ring = ShardRing::new(shards, vnodes);
            let searched = |token: u64| ring.starts.partition_point(|&start| start <= token) - 1;
            let step = (ring.starts.len() / 5000).max(1);
            let edges =
                ring.starts.iter().step_by(step).flat_map(|&start| [start, start.wrapping_sub(1), start + 1]);
            for probe in
                edges.chain([0, u64::MAX, 1 << 63]).chain((0..1000u64).map(|i| token(&i.to_le_bytes())))
            {
                assert_eq!(ring.range_of(probe), searched(probe), "token {probe:#x}, {shards} x {vnodes}");
            }
        }
    }

    #[test]
    fn keys_spread_over_shards() {
        let ring = ShardRing::new(2, 16);
        let mut counts = [0usize; 2];
        for index in 0..10_000u32 {
            counts[ring.owner_of_key(format!("key{index}").as_bytes()) as usize] += 1;
        }
        // Equal ranges and a good hash: each shard gets close to half.
        assert!(counts.iter().all(|&count| count > 4000), "{counts:?}");
    }

    #[test]
    fn announced_counts_are_clamped_and_targets_name_the_owning_shard() {
        assert_eq!(ShardRing::announced(0, 0), ShardRing::new(1, 1));
        assert_eq!(ShardRing::announced(u32::MAX, 16).shards(), SHARDS_MAX);
        let rings: BTreeMap<u16, ShardRing> = [(1, ShardRing::new(3, 4))].into_iter().collect();
        for index in 0..100u32 {
            let key_token = token(&index.to_le_bytes());
            assert_eq!(target(&rings, 1, key_token).shard, rings[&1].owner_of_token(key_token));
            assert_eq!(target(&rings, 2, key_token), Target { node_id: 2, shard: 0 });
        }
    }

    #[test]
    fn neighbouring_ranges_belong_to_different_shards() {
        let ring = ShardRing::new(4, 16);
        assert!(ring.owners.windows(2).all(|pair| pair[0] != pair[1]));
    }
}
