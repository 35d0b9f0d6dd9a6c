//! [`Router`]: which address a request goes to, from the node's published topology.
//!
//! ```text
//!  key ─token_of─▶ token ─segments (sorted, binary search)─▶ shard port ─▶ host:port
//!                                     └─ no topology, or a gap ─▶ shared client port
//! ```

use std::net::SocketAddr;

use ringkv_wire::Topology;

use crate::token::token_of;

/// Where one request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub address: SocketAddr,
    /// The owning shard, or `None` when the request goes to the shared port.
    pub shard_id: Option<u32>,
}

/// One contiguous, non-wrapping piece of a shard's token range: `[start, end]`, inclusive so
/// that the top of the ring fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: u64,
    end_inclusive: u64,
    shard_id: u32,
    port: u16,
}

/// Maps keys to the address of their owning shard. Sans-IO: the adapters feed it the topology
/// they fetched and ask it where to send.
#[derive(Debug, Clone)]
pub struct Router {
    shared: SocketAddr,
    topology: Option<Topology>,
    /// Every range of every shard, split where it wraps, sorted by start.
    segments: Vec<Segment>,
}

impl Router {
    /// A router that sends everything to `shared` until it learns a topology.
    pub fn new(shared: SocketAddr) -> Self {
        Router { shared, topology: None, segments: Vec::new() }
    }

    /// The shared client port every shard listens on.
    pub fn shared(&self) -> SocketAddr {
        self.shared
    }

    /// The topology routes follow, if one is known.
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// Routes by `topology` from now on. Shard ports are on the shared address's host: a node
    /// publishes ports, not hosts.
    pub fn set_topology(&mut self, topology: Topology) {
        let mut segments = Vec::new();
        for shard in &topology.shards {
            for range in &shard.token_ranges {
                let segment = |start, end_inclusive| Segment {
                    start,
                    end_inclusive,
                    shard_id: shard.shard_id,
                    port: shard.port,
                };
                if range.start < range.end {
                    segments.push(segment(range.start, range.end - 1));
                } else {
                    // A wrapping range, or the whole ring when start == end (see TokenRange).
                    segments.push(segment(range.start, u64::MAX));
                    if range.end > 0 && range.start != range.end {
                        segments.push(segment(0, range.end - 1));
                    } else if range.start == range.end && range.start > 0 {
                        segments.push(segment(0, range.start - 1));
                    }
                }
            }
        }
        segments.sort_by_key(|segment| segment.start);
        self.segments = segments;
        self.topology = Some(topology);
    }

    /// Forgets the topology, so that requests go to the shared port until it is fetched again.
    pub fn clear_topology(&mut self) {
        self.topology = None;
        self.segments.clear();
    }

    /// Where a request for `key` goes.
    pub fn route_key(&self, key: &[u8]) -> Route {
        self.route_token(token_of(key))
    }

    /// Where a request for a key with this token goes.
    pub fn route_token(&self, token: u64) -> Route {
        let index = self.segments.partition_point(|segment| segment.start <= token);
        match index.checked_sub(1).map(|index| self.segments[index]) {
            Some(segment) if token <= segment.end_inclusive => Route {
                address: SocketAddr::new(self.shared.ip(), segment.port),
                shard_id: Some(segment.shard_id),
            },
            // A topology with a gap is a server bug; the shared port still serves every key.
            _ => self.shared_route(),
        }
    }

    /// The route for requests that address no key (ping, topology) or many (a batch).
    pub fn shared_route(&self) -> Route {
        Route { address: self.shared, shard_id: None }
    }
}

#[cfg(test)]
mod tests {
    use ringkv_wire::{ShardPlacement, TokenRange};

    use super::*;

    fn router(shards: Vec<ShardPlacement>) -> Router {
        let mut router = Router::new("127.0.0.1:7379".parse().unwrap());
        router.set_topology(Topology { shards, ..Topology::default() });
        router
    }

    fn placement(shard_id: u32, ranges: &[(u64, u64)]) -> ShardPlacement {
        ShardPlacement {
            shard_id,
            port: 8000 + shard_id as u16,
            token_ranges: ranges.iter().map(|&(start, end)| TokenRange { start, end }).collect(),
        }
    }

    #[test]
    fn no_topology_routes_to_the_shared_port() {
        let router = Router::new("10.0.0.1:7379".parse().unwrap());
        assert_eq!(router.route_key(b"anything"), router.shared_route());
    }

    #[test]
    fn routes_agree_with_the_topologys_own_lookup() {
        let topology_shards =
            vec![placement(0, &[(0, 100), (1000, 5000)]), placement(1, &[(100, 1000), (5000, 0)])];
        let router = router(topology_shards.clone());
        let topology = Topology { shards: topology_shards, ..Topology::default() };
        for token in [0, 1, 99, 100, 999, 1000, 4999, 5000, u64::MAX - 1, u64::MAX] {
            let expected = topology.shard_for_token(token).map(|shard| shard.shard_id);
            assert_eq!(router.route_token(token).shard_id, expected, "token {token}");
        }
        let route = router.route_token(u64::MAX);
        assert_eq!(route.address, "127.0.0.1:8001".parse().unwrap());
    }

    #[test]
    fn whole_ring_range_owns_every_token() {
        for start in [0, 42] {
            let router = router(vec![placement(3, &[(start, start)])]);
            for token in [0, 41, 42, 43, u64::MAX] {
                assert_eq!(router.route_token(token).shard_id, Some(3), "start {start} token {token}");
            }
        }
    }

    #[test]
    fn a_gap_falls_back_to_the_shared_port() {
        let mut router = router(vec![placement(0, &[(10, 20)])]);
        assert_eq!(router.route_token(5), router.shared_route());
        assert_eq!(router.route_token(15).shard_id, Some(0));
        router.clear_topology();
        assert_eq!(router.route_token(15), router.shared_route());
    }
}
