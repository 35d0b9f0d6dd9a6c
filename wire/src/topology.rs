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

/// The answer to a topology request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Topology {
    pub shards: Vec<ShardPlacement>,
}

impl Topology {
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
    fn equal_bounds_are_the_whole_ring() {
        let range = TokenRange { start: 7, end: 7 };
        assert!([0, 6, 7, 8, u64::MAX].iter().all(|&token| range.contains(token)));
    }

    #[test]
    fn token_routes_to_its_owning_shard() {
        let topology = Topology {
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
