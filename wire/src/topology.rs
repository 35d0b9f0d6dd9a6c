//! [`Topology`]: which shard of a node owns which token ranges, and on which port each shard
//! listens, so that a shard-aware client can send each key straight to its owning core.

/// A range of the 64-bit token ring, `[start, end)`.
///
/// Because `end` cannot express 2^64, a range that reaches the top of the ring wraps: when
/// `end <= start` the range is `[start, 2^64) ∪ [0, end)`, and `start == end` is the whole ring
/// (one shard owning everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenRange {
    pub start: u64,
    pub end: u64,
}

impl TokenRange {
    /// Whether `token` falls inside this range.
    pub fn contains(&self, token: u64) -> bool {
        if self.start < self.end {
            self.start <= token && token < self.end
        } else {
            // Wrapping range, or the whole ring when start == end.
            token >= self.start || token < self.end
        }
    }
}

/// One shard of a node: its id, the port it alone listens on, and the ranges it owns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardPlacement {
    pub shard_id: u32,
    pub port: u16,
    pub token_ranges: Vec<TokenRange>,
}

/// One node of the cluster: its id, client address, liveness, ring tokens and shards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodePlacement {
    pub node_id: u16,
    /// The client address, `host:port`.
    pub address: String,
    pub up: bool,
    pub tokens: Vec<u64>,
    pub shards: Vec<ShardPlacement>,
}

/// A range of the cluster ring, `(start, end]` (Cassandra's convention), and its replicas in
/// preference order. When `end <= start` the range wraps past 2^64 - 1; `start == end` (a ring of
/// one token) is the whole ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaRange {
    pub start: u64,
    pub end: u64,
    pub replicas: Vec<u16>,
}

impl ReplicaRange {
    /// Whether `token` falls inside this range.
    pub fn contains(&self, token: u64) -> bool {
        if self.start < self.end {
            self.start < token && token <= self.end
        } else {
            token > self.start || token <= self.end
        }
    }
}

/// The answer to a topology request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Topology {
    /// The answering node's shards.
    pub shards: Vec<ShardPlacement>,
    /// Every node the answering node knows, itself included; empty outside a cluster.
    pub nodes: Vec<NodePlacement>,
    /// The cluster ring's ranges and their replicas.
    pub ring: Vec<ReplicaRange>,
    /// Copies of each key.
    pub replicas: u8,
    /// The answering node's id.
    pub node_id: u16,
}

impl Topology {
    /// The replicas of `token`, in preference order, when the topology describes a ring.
    pub fn replicas_of_token(&self, token: u64) -> Option<&[u16]> {
        self.ring.iter().find(|range| range.contains(token)).map(|range| range.replicas.as_slice())
    }

    /// The node `node_id`, if the topology lists it.
    pub fn node(&self, node_id: u16) -> Option<&NodePlacement> {
        self.nodes.iter().find(|node| node.node_id == node_id)
    }

    /// The shard owning `token`, if any shard does. A linear scan: topologies are small and a
    /// client that routes often builds its own sorted index from this.
    pub fn shard_for_token(&self, token: u64) -> Option<&ShardPlacement> {
        self.shards.iter().find(|shard| shard.token_ranges.iter().any(|range| range.contains(token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_range_is_half_open() {
        let range = TokenRange { start: 10, end: 20 };
        assert!(!range.contains(9));
        assert!(range.contains(10));
        assert!(range.contains(19));
        assert!(!range.contains(20));
    }

    #[test]
    fn wrapping_range_covers_the_top_and_the_bottom_of_the_ring() {
        let range = TokenRange { start: u64::MAX - 1, end: 5 };
        assert!(range.contains(u64::MAX));
        assert!(range.contains(0));
        assert!(range.contains(4));
        assert!(!range.contains(5));
        assert!(!range.contains(u64::MAX - 2));
    }

    #[test]
    fn replica_ranges_are_open_at_the_start_and_closed_at_the_end() {
        let range = ReplicaRange { start: 10, end: 20, replicas: vec![1] };
        assert!(!range.contains(10));
        assert!(range.contains(11));
        assert!(range.contains(20));
        let wrapping = ReplicaRange { start: 20, end: 10, replicas: vec![1] };
        assert!(wrapping.contains(u64::MAX) && wrapping.contains(0) && wrapping.contains(10));
        assert!(!wrapping.contains(15) && !wrapping.contains(20));
        let whole = ReplicaRange { start: 7, end: 7, replicas: vec![1] };
        assert!([0, 6, 7, 8, u64::MAX].iter().all(|&token| whole.contains(token)));
    }

    #[test]
    fn equal_bounds_are_the_whole_ring() {
        let range = TokenRange { start: 7, end: 7 };
        assert!([0, 6, 7, 8, u64::MAX].iter().all(|&token| range.contains(token)));
    }

    #[test]
    fn token_routes_to_its_owning_shard() {
        let topology = Topology {
            nodes: Vec::new(),
            ring: Vec::new(),
            replicas: 1,
            node_id: 0,
            shards: vec![
                ShardPlacement {
                    shard_id: 0,
                    port: 9000,
                    token_ranges: vec![TokenRange { start: 0, end: 100 }],
                },
                ShardPlacement {
                    shard_id: 1,
                    port: 9001,
                    token_ranges: vec![TokenRange { start: 100, end: 0 }],
                },
            ],
        };
        assert_eq!(topology.shard_for_token(99).map(|shard| shard.port), Some(9000));
        assert_eq!(topology.shard_for_token(100).map(|shard| shard.port), Some(9001));
        assert_eq!(topology.shard_for_token(u64::MAX).map(|shard| shard.shard_id), Some(1));
    }
}
