//! [`ClusterRing`]: the token ring across nodes and the preference list of every key.
//!
//! Each node owns a few tokens (`num_tokens`, 16 by default: Cassandra 4.0 moved from 256 to 16
//! because fewer tokens make repair and streaming cheaper at the same balance). The ring is the
//! sorted list of every member's tokens; a key's token falls in the range that ends at the next
//! token clockwise, and its preference list is the first N distinct nodes met walking clockwise
//! from there (Dynamo §4.3). The ring is a pure function of the members' tokens, so every node
//! that knows the same members computes the same preference lists.
//!
//! ```text
//!   token(key) ──▶ first ring token ≥ token(key) (wrapping) ──▶ walk clockwise,
//!                  skipping nodes already chosen ──▶ [node a, node b, node c]
//! ```

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the default token choice. Part of the on-disk format: a node records its tokens at
/// first start, so changing the seed only changes where new nodes land.
const TOKEN_CHOICE_SEED: u64 = 0x7269_6e67_6b76_7470;

/// Most tokens a node may own.
pub const TOKENS_PER_NODE_MAX: usize = 256;

/// The default tokens of node `node_id`: `count` points spread by a stable hash of the node id
/// and the token's index. Deterministic, so a node needs no randomness to choose them, and
/// distinct across nodes with overwhelming probability (a collision is resolved by node id in
/// the ring's order and costs only balance).
pub fn default_tokens(node_id: u16, count: usize) -> Vec<u64> {
    let mut tokens: Vec<u64> = (0..count as u64)
        .map(|index| {
            let mut seed_input = [0u8; 10];
            seed_input[..2].copy_from_slice(&node_id.to_be_bytes());
            seed_input[2..].copy_from_slice(&index.to_be_bytes());
            xxh3_64_with_seed(&seed_input, TOKEN_CHOICE_SEED)
        })
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

/// A range of the ring, `(start, end]` in Cassandra's convention, with its replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatedRange {
    /// Exclusive start: the previous token on the ring.
    pub start: u64,
    /// Inclusive end: the token that owns the range.
    pub end: u64,
    /// The preference list of every key in the range, primary first.
    pub replicas: Vec<u16>,
}

/// The tokens of every member and the preference lists they imply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterRing {
    /// Every token of every node, sorted by (token, node id).
    ring: Vec<(u64, u16)>,
    /// Each node's tokens.
    nodes: BTreeMap<u16, Vec<u64>>,
}

impl ClusterRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ring of the given nodes and their tokens.
    pub fn from_nodes<'a>(nodes: impl IntoIterator<Item = (u16, &'a [u64])>) -> Self {
        let mut ring = ClusterRing::new();
        for (node_id, tokens) in nodes {
            ring.nodes.insert(node_id, tokens.to_vec());
        }
        ring.rebuild();
        ring
    }

    /// Adds `node_id` with `tokens`, or replaces its tokens. Returns whether the ring changed.
    pub fn insert(&mut self, node_id: u16, tokens: &[u64]) -> bool {
        if self.nodes.get(&node_id).is_some_and(|known| known == tokens) {
            return false;
        }
        self.nodes.insert(node_id, tokens.to_vec());
        self.rebuild();
        true
    }

    fn rebuild(&mut self) {
        self.ring = self
            .nodes
            .iter()
            .flat_map(|(&node_id, tokens)| tokens.iter().map(move |&token| (token, node_id)))
            .collect();
        self.ring.sort_unstable();
    }

    /// Number of nodes on the ring.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Index in `ring` of the token owning `token`: the first ring token ≥ it, wrapping.
    fn owner_index(&self, token: u64) -> usize {
        let index = self.ring.partition_point(|&(ring_token, _)| ring_token < token);
        if index == self.ring.len() {
            0
        } else {
            index
        }
    }

    /// The first `replicas` distinct nodes clockwise from `token` (fewer when the ring has
    /// fewer nodes), primary first. Empty on an empty ring.
    pub fn preference_list(&self, token: u64, replicas: usize) -> Vec<u16> {
        let mut chosen = Vec::with_capacity(replicas);
        if self.ring.is_empty() {
            return chosen;
        }
        let wanted = replicas.min(self.nodes.len());
        let start = self.owner_index(token);
        for step in 0..self.ring.len() {
            if chosen.len() == wanted {
                break;
            }
            let (_, node_id) = self.ring[(start + step) % self.ring.len()];
            if !chosen.contains(&node_id) {
                chosen.push(node_id);
            }
        }
        chosen
    }

    /// Every range of the ring with its replicas, in token order. The first range wraps: it
    /// starts after the last token and ends at the first.
    pub fn ranges(&self, replicas: usize) -> Vec<ReplicatedRange> {
        let count = self.ring.len();
        (0..count)
            .map(|index| {
                let (end, _) = self.ring[index];
                let (start, _) = self.ring[(index + count - 1) % count];
                ReplicatedRange { start, end, replicas: self.preference_list(end, replicas) }
            })
            .collect()
    }

    /// The share of the token space each node holds a replica of, for `replicas` copies: the
    /// widths of the ranges it appears in, over the whole ring. Each share is in `0.0..=1.0` and
    /// the shares sum to `min(replicas, nodes)`.
    pub fn ownership(&self, replicas: usize) -> BTreeMap<u16, f64> {
        let mut owned: BTreeMap<u16, u128> = self.nodes.keys().map(|&node| (node, 0)).collect();
        for range in self.ranges(replicas) {
            // A ring of one token covers the whole space.
            let width = if self.ring.len() == 1 {
                1u128 << 64
            } else {
                u128::from(range.end.wrapping_sub(range.start))
            };
            for node in range.replicas {
                *owned.entry(node).or_default() += width;
            }
        }
        owned.into_iter().map(|(node, width)| (node, width as f64 / (1u128 << 64) as f64)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn three_nodes() -> ClusterRing {
        let tokens: Vec<(u16, Vec<u64>)> = (1..=3).map(|node| (node, default_tokens(node, 16))).collect();
        ClusterRing::from_nodes(tokens.iter().map(|(node, tokens)| (*node, tokens.as_slice())))
    }

    #[test]
    fn default_tokens_are_stable_and_distinct() {
        assert_eq!(default_tokens(1, 16), default_tokens(1, 16));
        assert_eq!(default_tokens(1, 16).len(), 16);
        assert_ne!(default_tokens(1, 16), default_tokens(2, 16));
        // Pinned: a change moves where new nodes land.
        assert_eq!(default_tokens(0, 1)[0], xxh3_64_with_seed(&[0u8; 10], TOKEN_CHOICE_SEED));
    }

    #[test]
    fn preference_list_walks_clockwise_over_distinct_nodes() {
        let ring = ClusterRing::from_nodes([(1, &[100u64, 400][..]), (2, &[200][..]), (3, &[300][..])]);
        assert_eq!(ring.preference_list(150, 2), vec![2, 3]);
        assert_eq!(ring.preference_list(200, 2), vec![2, 3]);
        assert_eq!(ring.preference_list(350, 3), vec![1, 2, 3]);
        // Past the last token the walk wraps to the first.
        assert_eq!(ring.preference_list(401, 2), vec![1, 2]);
        assert_eq!(ring.preference_list(50, 3), vec![1, 2, 3]);
        // Node 1 appears twice on the walk from 350 (at 400 and 100) but counts once.
        assert_eq!(ring.preference_list(350, 2), vec![1, 2]);
    }

    #[test]
    fn replicas_are_capped_by_the_node_count() {
        let ring = ClusterRing::from_nodes([(1, &[10u64][..]), (2, &[20][..])]);
        assert_eq!(ring.preference_list(5, 3), vec![1, 2]);
        assert!(ClusterRing::new().preference_list(5, 3).is_empty());
    }

    #[test]
    fn ownership_sums_to_the_replica_count() {
        let ring = three_nodes();
        let total: f64 = ring.ownership(3).values().sum();
        assert!((total - 3.0).abs() < 1e-9, "{total}");
        for share in ring.ownership(3).values() {
            assert!((share - 1.0).abs() < 1e-9, "with N = nodes every node holds everything");
        }
        let total: f64 = ring.ownership(2).values().sum();
        assert!((total - 2.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn single_token_owns_the_whole_space() {
        let ring = ClusterRing::from_nodes([(7, &[42u64][..])]);
        assert_eq!(ring.ownership(1)[&7], 1.0);
        assert_eq!(ring.ranges(1), vec![ReplicatedRange { start: 42, end: 42, replicas: vec![7] }]);
    }

    proptest! {
        #[test]
        fn every_node_computes_the_same_list(node_count in 1usize..7, token in any::<u64>(), replicas in 1usize..5) {
            let members: Vec<(u16, Vec<u64>)> =
                (0..node_count as u16).map(|node| (node, default_tokens(node, 8))).collect();
            let forward = ClusterRing::from_nodes(members.iter().map(|(n, t)| (*n, t.as_slice())));
            let backward = ClusterRing::from_nodes(members.iter().rev().map(|(n, t)| (*n, t.as_slice())));
            let list = forward.preference_list(token, replicas);
            prop_assert_eq!(&list, &backward.preference_list(token, replicas));
            prop_assert_eq!(list.len(), replicas.min(node_count));
            let mut distinct = list.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), list.len());
        }
    }
}
