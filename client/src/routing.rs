//! [`Router`]: where a request goes, from the topology a node publishes.
//!
//! ```text
//!  key ─token_of─▶ token ─ring (sorted ranges, binary search)─▶ replicas in preference order
//!      ─▶ each replica up: its owning shard ─▶ node host : shard port     (the candidates, in order:
//!      ─▶ the node the topology came from, if not a replica already        recently unreachable last)
//!  no ring (one node outside a cluster, an older server) ─▶ the home node's owning shard port
//!  no topology, a gap, a request for no single key ─▶ the home node's shared client port
//! ```
//!
//! A request's first route is read from a table of token ranges built with each topology
//! (`FirstRoutes`); the candidates are searched as above only while a node is held as
//! unreachable, and for the full list after a failed attempt.
//!
//! Token- and shard-aware like the ScyllaDB drivers: a request goes straight to a core that
//! holds a replica of its key, so that node coordinates it without a hop to another node or
//! core. Among a key's live replicas the client's *preferred node* goes first, then the others
//! in preference order. The later candidates are where an adapter goes when one cannot be
//! reached (see [`crate::failover`]).
//!
//! Each client prefers one node of the ring (its affinity, spread over the ring's nodes by a
//! per-process counter from a random start): whenever that node holds a replica of a key, it
//! coordinates. One client's requests then share one connection and one coordinator instead
//! of being split over every replica, so its pipeline stays deep and replies and replica
//! messages travel in fuller batches. Load still spreads: different clients prefer different
//! nodes, and keys the preferred node does not replicate go to their first live replica
//! (`docs/benchmarks.md` has the measurement).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ringkv_wire::{ShardPlacement, Topology};

use crate::token::token_of;
use crate::ReplicaChoice;

/// Most candidates one request is given: every replica (at most 7) and the home node.
pub const ROUTES_PER_REQUEST_MAX: usize = 8;

/// Up to [`ROUTES_PER_REQUEST_MAX`] items held inline, so that routing a request allocates
/// nothing. Read it as a slice.
#[derive(Clone, Copy)]
pub struct InlineList<T: Copy> {
    length: usize,
    items: [T; ROUTES_PER_REQUEST_MAX],
}

/// The places one request may go, best first. Read it as a slice of [`Route`].
pub type Routes = InlineList<Route>;

impl<T: Copy> InlineList<T> {
    /// An empty list; `filler` only stands in the unused places.
    fn empty(filler: T) -> Self {
        InlineList { length: 0, items: [filler; ROUTES_PER_REQUEST_MAX] }
    }

    /// Appends `item`; past [`ROUTES_PER_REQUEST_MAX`] it is left out (the list is truncated).
    pub fn push(&mut self, item: T) {
        if self.length < ROUTES_PER_REQUEST_MAX {
            self.items[self.length] = item;
            self.length += 1;
        }
    }
}

impl FromIterator<Route> for Routes {
    fn from_iter<I: IntoIterator<Item = Route>>(routes: I) -> Self {
        const NOWHERE: Route = Route {
            address: SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
            shard_id: None,
            node_id: None,
        };
        let mut collected = InlineList::empty(NOWHERE);
        for route in routes {
            collected.push(route);
        }
        collected
    }
}

impl<T: Copy> std::ops::Deref for InlineList<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items[..self.length]
    }
}

impl<T: Copy> std::ops::DerefMut for InlineList<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items[..self.length]
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for InlineList<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy + PartialEq> PartialEq for InlineList<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Copy + Eq> Eq for InlineList<T> {}

impl<T: Copy + PartialEq> PartialEq<Vec<T>> for InlineList<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == other[..]
    }
}

/// One place a request for a key may go, before its address is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    /// A replica that is up: its owning shard.
    Node(u16),
    /// The home node's owning shard (or its shared port).
    Home,
}

/// A request's candidates, best first.
type Candidates = InlineList<Candidate>;

/// Where one request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub address: SocketAddr,
    /// The owning shard on that node, or `None` when the request goes to a shared client port.
    pub shard_id: Option<u32>,
    /// The node, when the topology describes a cluster ring.
    pub node_id: Option<u16>,
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

/// Token → shard of one node: every range of every shard, split where it wraps, sorted by start.
#[derive(Debug, Clone, Default)]
struct ShardMap {
    segments: Vec<Segment>,
}

impl ShardMap {
    fn new(shards: &[ShardPlacement]) -> Self {
        let mut segments = Vec::new();
        for shard in shards {
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
        ShardMap { segments }
    }

    /// The shard owning `token`; `None` for a gap (a server bug: the shared port still serves).
    fn owner(&self, token: u64) -> Option<Segment> {
        let index = self.segments.partition_point(|segment| segment.start <= token);
        index
            .checked_sub(1)
            .map(|index| self.segments[index])
            .filter(|segment| token <= segment.end_inclusive)
    }

    fn has_port(&self, port: u16) -> bool {
        self.segments.iter().any(|segment| segment.port == port)
    }
}

/// The cluster ring: pieces `[start, end]` (inclusive, not wrapping, sorted by start) of the
/// topology's `(start, end]` ranges, each naming its replica list.
#[derive(Debug, Clone, Default)]
struct RingMap {
    pieces: Vec<(u64, u64, usize)>,
    replicas: Vec<Vec<u16>>,
}

impl RingMap {
    fn new(topology: &Topology) -> Self {
        let mut pieces = Vec::new();
        let mut replicas = Vec::with_capacity(topology.ring.len());
        for (index, range) in topology.ring.iter().enumerate() {
            replicas.push(range.replicas.clone());
            if range.start < range.end {
                pieces.push((range.start + 1, range.end, index));
            } else if range.start == range.end {
                // A ring of one token: the whole ring.
                pieces.push((0, u64::MAX, index));
            } else {
                if range.start < u64::MAX {
                    pieces.push((range.start + 1, u64::MAX, index));
                }
                pieces.push((0, range.end, index));
            }
        }
        pieces.sort_by_key(|&(start, _, _)| start);
        RingMap { pieces, replicas }
    }

    fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The replicas of `token` in preference order; `None` for a gap.
    fn replicas_of(&self, token: u64) -> Option<&[u16]> {
        let index = self.pieces.partition_point(|&(start, _, _)| start <= token);
        let (_, end_inclusive, range) = self.pieces[index.checked_sub(1)?];
        (token <= end_inclusive).then(|| self.replicas[range].as_slice())
    }
}

/// Every token's first route while no node is held as unreachable, as sorted ranges: built
/// whenever the topology or the preference changes, so that routing a request is one binary
/// search instead of a walk over its replicas and their shard maps.
///
/// Between two consecutive boundaries of the ring's pieces and of every shard map the routers
/// use, every token has the same replicas, the same candidates and the same owning shards, so
/// the first route of the range's first token is every token's. Neighbouring ranges with the
/// same route are merged: a node outside a cluster with one shard has one range.
#[derive(Debug, Clone, Default)]
struct FirstRoutes {
    /// Where each range starts, ascending; the first is 0.
    starts: Vec<u64>,
    /// Each range's first route, and whether it is the key's only one.
    routes: Vec<(Route, bool)>,
}

impl FirstRoutes {
    fn get(&self, token: u64) -> (Route, bool) {
        let index = self.starts.partition_point(|&start| start <= token);
        self.routes[index - 1]
    }
}

/// A node of the ring the client can reach: up, at an address it can connect to.
#[derive(Debug, Clone)]
struct Node {
    client_address: SocketAddr,
    up: bool,
    shards: ShardMap,
}

impl Node {
    fn route(&self, node_id: u16, token: u64) -> Route {
        match self.shards.owner(token) {
            Some(segment) => Route {
                address: SocketAddr::new(self.client_address.ip(), segment.port),
                shard_id: Some(segment.shard_id),
                node_id: Some(node_id),
            },
            None => Route { address: self.client_address, shard_id: None, node_id: Some(node_id) },
        }
    }
}

/// Maps keys to the addresses of their replicas' owning shards. Sans-IO: the adapters feed it
/// the topology they fetched and the nodes they could not reach, with the time, and ask it
/// where to send.
#[derive(Debug, Clone)]
pub struct Router {
    /// The address the client was given: the contact of last resort.
    seed: SocketAddr,
    /// The client address of the node the topology came from (the seed until then). Requests
    /// that address no single key go here first.
    home: SocketAddr,
    topology: Option<Topology>,
    /// The home node's id, when the topology has a ring.
    home_node: Option<u16>,
    /// The home node's shards, on the home address's host: a node publishes its own shard
    /// ports, and the client reaches it at `home` whatever address it advertises.
    home_shards: ShardMap,
    /// The ring's nodes the client can route to (a node advertising no usable address, such as
    /// 0.0.0.0, is left out unless it is home).
    nodes: BTreeMap<u16, Node>,
    ring: RingMap,
    unreachable_node_hold: Duration,
    /// Nodes that could not be reached, and when: they go last among candidates for the hold.
    unreachable_since: HashMap<u16, Instant>,
    /// Which node of the ring this client prefers: the node at this position (modulo the node
    /// count) in node id order; none, the first live replica in preference order.
    affinity: Option<usize>,
    /// The preferred node, once a topology is known.
    preferred_node: Option<u16>,
    /// The first route of every token while no node is held (see [`Router::first_route`]).
    first_routes: FirstRoutes,
}

/// The next client's affinity: a per-process counter from a random start, so clients of one
/// process prefer different nodes, and so do the first clients of different processes.
fn next_affinity() -> usize {
    static START: OnceLock<usize> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = *START.get_or_init(|| RandomState::new().hash_one(0x6166_6669_6e69_7479_u64) as usize);
    start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Router {
    /// A router that sends everything to `seed` until it learns a topology.
    pub fn new(seed: SocketAddr) -> Self {
        Router::with_unreachable_node_hold(seed, crate::ClientOptions::default().unreachable_node_hold)
    }

    /// [`Router::new`], routing around a node for `unreachable_node_hold` after it could not be
    /// reached.
    pub fn with_unreachable_node_hold(seed: SocketAddr, unreachable_node_hold: Duration) -> Self {
        let mut router = Router {
            seed,
            home: seed,
            topology: None,
            home_node: None,
            home_shards: ShardMap::default(),
            nodes: BTreeMap::new(),
            ring: RingMap::default(),
            unreachable_node_hold,
            unreachable_since: HashMap::new(),
            affinity: Some(next_affinity()),
            preferred_node: None,
            first_routes: FirstRoutes::default(),
        };
        router.first_routes = router.build_first_routes();
        router
    }

    /// Prefers the node at position `affinity` (modulo the node count, in node id order)
    /// whenever it replicates a key, instead of the node chosen for this client; `None` sends
    /// each key to its first live replica in preference order.
    pub fn with_affinity(mut self, affinity: Option<usize>) -> Self {
        self.affinity = affinity;
        self.preferred_node = self.pick_preferred_node();
        self.first_routes = self.build_first_routes();
        self
    }

    /// Follows `choice`: [`ReplicaChoice::FirstReplica`] drops the affinity.
    pub fn with_replica_choice(self, choice: ReplicaChoice) -> Self {
        match choice {
            ReplicaChoice::PreferredNode => self,
            ReplicaChoice::FirstReplica => self.with_affinity(None),
        }
    }

    /// The node this client prefers to coordinate its requests, once a topology is known.
    pub fn preferred_node(&self) -> Option<u16> {
        self.preferred_node
    }

    fn pick_preferred_node(&self) -> Option<u16> {
        let count = self.nodes.len();
        let affinity = self.affinity?;
        (count > 0).then(|| *self.nodes.keys().nth(affinity % count).expect("in range"))
    }

    /// The client address of the node the topology came from: the shared client port every
    /// shard of that node listens on.
    pub fn home(&self) -> SocketAddr {
        self.home
    }

    /// The address the client was given.
    pub fn seed(&self) -> SocketAddr {
        self.seed
    }

    /// The topology routes follow, if one is known.
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// Routes by `topology`, fetched from the node at `from`, from now on.
    ///
    /// With a ring, keys go to their replicas; each node is reached at the host of its
    /// advertised client address and its shards' ports (the home node at `from`'s host).
    /// Without one (a node outside a cluster, or a server from before clusters), keys go to the
    /// home node's owning shard.
    pub fn set_topology(&mut self, topology: Topology, from: SocketAddr) {
        if from == self.home && self.topology.as_ref() == Some(&topology) {
            // The periodic fetch found nothing new: the maps and the first-route table stand.
            return;
        }
        self.home = from;
        self.home_shards = ShardMap::new(&topology.shards);
        self.ring = RingMap::new(&topology);
        self.home_node = (!self.ring.is_empty()).then_some(topology.node_id);
        self.nodes = topology
            .nodes
            .iter()
            .filter_map(|node| {
                let advertised: Option<SocketAddr> = node.address.parse().ok();
                let client_address = if Some(node.node_id) == self.home_node {
                    from
                } else {
                    advertised.filter(|address| !address.ip().is_unspecified())?
                };
                let shards = ShardMap::new(&node.shards);
                Some((node.node_id, Node { client_address, up: node.up, shards }))
            })
            .collect();
        self.unreachable_since.retain(|node_id, _| topology.node(*node_id).is_some());
        self.preferred_node = self.pick_preferred_node();
        self.topology = Some(topology);
        self.first_routes = self.build_first_routes();
    }

    /// Forgets the topology, so that requests go to the home node's shared port until it is
    /// fetched again.
    pub fn clear_topology(&mut self) {
        self.topology = None;
        self.home_node = None;
        self.home_shards = ShardMap::default();
        self.nodes.clear();
        self.ring = RingMap::default();
        self.preferred_node = None;
        self.first_routes = self.build_first_routes();
    }

    /// Notes that `node_id` could not be reached at `now`: for the hold, it goes after every
    /// other candidate.
    pub fn mark_unreachable(&mut self, node_id: u16, now: Instant) {
        if self.nodes.contains_key(&node_id) {
            self.unreachable_since.insert(node_id, now);
        }
    }

    fn is_unreachable(&self, node_id: Option<u16>, now: Option<Instant>) -> bool {
        match (node_id.and_then(|node_id| self.unreachable_since.get(&node_id)), now) {
            (Some(since), Some(now)) => self.is_held(*since, now),
            _ => false,
        }
    }

    /// Whether a node found unreachable at `since` is still held at `now`.
    fn is_held(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) < self.unreachable_node_hold
    }

    /// Where a request for `key` goes first (not counting nodes found unreachable).
    pub fn route_key(&self, key: &[u8]) -> Route {
        self.route_token(token_of(key))
    }

    /// Where a request for a key with this token goes first (not counting nodes found
    /// unreachable).
    pub fn route_token(&self, token: u64) -> Route {
        self.first_routes.get(token).0
    }

    /// Every place a request may go, best first, at most [`ROUTES_PER_REQUEST_MAX`] and at
    /// least one: for a key, its replicas that are up, in preference order, then the home node;
    /// for no key (ping, topology, batch, scan), the home node's shared port, then the other
    /// nodes up. Nodes found unreachable less than the hold before `now` go last.
    pub fn routes(&self, key: Option<&[u8]>, now: Instant) -> Routes {
        match key {
            Some(key) => self.token_routes(token_of(key), Some(now)),
            None => self.shared_routes(Some(now)).into_iter().collect(),
        }
    }

    /// Where to fetch the topology from, best first: the home node's client port, the other
    /// nodes up, and the seed.
    pub fn contacts(&self, now: Instant) -> Vec<Route> {
        let mut contacts = self.shared_routes(Some(now));
        if !contacts.iter().any(|route| route.address == self.seed) {
            contacts.push(Route { address: self.seed, shard_id: None, node_id: None });
        }
        contacts
    }

    /// Whether some route may lead to `address`: connections elsewhere can be closed.
    pub fn routes_to(&self, address: SocketAddr) -> bool {
        let on_home = address.ip() == self.home.ip() && self.home_shards.has_port(address.port());
        address == self.home
            || address == self.seed
            || on_home
            || self.nodes.values().any(|node| {
                node.client_address == address
                    || (node.client_address.ip() == address.ip() && node.shards.has_port(address.port()))
            })
    }

    fn token_routes(&self, token: u64, now: Option<Instant>) -> Routes {
        let candidates = self.token_candidates(token, now);
        candidates.iter().map(|&candidate| self.candidate_route(candidate, token)).collect()
    }

    /// Where a request for `key` goes first, as [`Router::routes`] orders them, and whether it
    /// is the only place: what a request needs until its first attempt fails, without building
    /// the whole list.
    pub fn first_route(&self, key: Option<&[u8]>, now: Instant) -> (Route, bool) {
        let Some(key) = key else {
            let routes = self.shared_routes(Some(now));
            return (routes[0], routes.len() == 1);
        };
        let token = token_of(key);
        if !self.holds_any(now) {
            let first = self.first_routes.get(token);
            debug_assert_eq!(first, self.first_route_searched(token, Some(now)), "token {token}");
            return first;
        }
        self.first_route_searched(token, Some(now))
    }

    /// [`Router::first_route`] for `token`, from the replicas and shard maps (with no `now`, as
    /// if no node were held).
    fn first_route_searched(&self, token: u64, now: Option<Instant>) -> (Route, bool) {
        let candidates = self.token_candidates(token, now);
        (self.candidate_route(candidates[0], token), candidates.len() == 1)
    }

    /// Whether some node found unreachable is still held at `now` (and so goes last).
    fn holds_any(&self, now: Instant) -> bool {
        self.unreachable_since.values().any(|&since| self.is_held(since, now))
    }

    /// Every shard map routes may follow: the home node's, then each node's.
    fn shard_maps(&self) -> impl Iterator<Item = &ShardMap> {
        std::iter::once(&self.home_shards).chain(self.nodes.values().map(|node| &node.shards))
    }

    /// The table [`Router::first_route`] reads while no node is held: the first route of each
    /// range between consecutive boundaries of the ring's pieces and of every shard map.
    fn build_first_routes(&self) -> FirstRoutes {
        let mut boundaries = vec![0];
        let mut bound = |start: u64, end_inclusive: u64| {
            boundaries.push(start);
            boundaries.extend(end_inclusive.checked_add(1));
        };
        for &(start, end_inclusive, _) in &self.ring.pieces {
            bound(start, end_inclusive);
        }
        for segment in self.shard_maps().flat_map(|shards| &shards.segments) {
            bound(segment.start, segment.end_inclusive);
        }
        boundaries.sort_unstable();
        boundaries.dedup();
        let mut first_routes = FirstRoutes::default();
        for start in boundaries {
            let first = self.first_route_searched(start, None);
            if first_routes.routes.last() != Some(&first) {
                first_routes.starts.push(start);
                first_routes.routes.push(first);
            }
        }
        first_routes
    }

    /// [`Router::token_routes`] as candidates: the order is settled on node ids, and only the
    /// routes asked for are looked up.
    fn token_candidates(&self, token: u64, now: Option<Instant>) -> Candidates {
        let mut candidates = Candidates::empty(Candidate::Home);
        let Some(replicas) = self.ring.replicas_of(token) else {
            candidates.push(Candidate::Home);
            return candidates;
        };
        for &node_id in replicas {
            if self.nodes.get(&node_id).is_some_and(|node| node.up) {
                candidates.push(Candidate::Node(node_id));
            }
        }
        let preferred = self.preferred_node.map(Candidate::Node);
        if let Some(preferred) = candidates.iter().position(|candidate| Some(*candidate) == preferred) {
            candidates[..=preferred].rotate_right(1);
        }
        // A non-replica coordinates as well, one hop further: the last resort.
        let home = self.home_node.map(Candidate::Node);
        if !candidates.iter().any(|candidate| Some(*candidate) == home) {
            candidates.push(Candidate::Home);
        }
        // Stable: the preference order holds within each group.
        if !self.unreachable_since.is_empty() {
            candidates.sort_by_key(|candidate| self.is_unreachable(self.candidate_node(*candidate), now));
        }
        candidates
    }

    fn candidate_node(&self, candidate: Candidate) -> Option<u16> {
        match candidate {
            Candidate::Node(node_id) => Some(node_id),
            Candidate::Home => self.home_node,
        }
    }

    fn candidate_route(&self, candidate: Candidate, token: u64) -> Route {
        match candidate {
            Candidate::Node(node_id) => match self.nodes.get(&node_id) {
                Some(node) => node.route(node_id, token),
                None => self.home_route(token),
            },
            Candidate::Home => self.home_route(token),
        }
    }

    /// The home node's owning shard for `token`, or its shared port.
    fn home_route(&self, token: u64) -> Route {
        match self.home_shards.owner(token) {
            Some(segment) => Route {
                address: SocketAddr::new(self.home.ip(), segment.port),
                shard_id: Some(segment.shard_id),
                node_id: self.home_node,
            },
            None => self.shared_route(),
        }
    }

    fn shared_routes(&self, now: Option<Instant>) -> Vec<Route> {
        let mut routes = vec![self.shared_route()];
        routes.extend(
            self.nodes.iter().filter(|(node_id, node)| node.up && Some(**node_id) != self.home_node).map(
                |(node_id, node)| Route {
                    address: node.client_address,
                    shard_id: None,
                    node_id: Some(*node_id),
                },
            ),
        );
        routes.sort_by_key(|route| self.is_unreachable(route.node_id, now));
        routes.truncate(ROUTES_PER_REQUEST_MAX);
        routes
    }

    /// The route for requests that address no key (ping, topology) or many (a batch, a scan):
    /// the home node's shared client port.
    pub fn shared_route(&self) -> Route {
        Route { address: self.home, shard_id: None, node_id: self.home_node }
    }
}

#[cfg(test)]
mod tests {
    use ringkv_wire::{NodePlacement, ReplicaRange, ShardPlacement, TokenRange};

    use super::*;

    fn router(shards: Vec<ShardPlacement>) -> Router {
        let mut router = Router::new("127.0.0.1:7379".parse().unwrap());
        router.set_topology(Topology { shards, ..Topology::default() }, "127.0.0.1:7379".parse().unwrap());
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
        assert_eq!(router.routes(Some(b"anything"), Instant::now()), vec![router.shared_route()]);
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
        assert_eq!(route.node_id, None, "no ring, no node");
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

    const QUARTER: u64 = 1 << 62;

    /// Node `node_id` at 10.0.0.<node_id>, client port 7379, two shards (ports 7380 and 7381)
    /// splitting the ring in halves.
    fn node(node_id: u16, up: bool) -> NodePlacement {
        let shard = |shard_id: u32, start: u64, end: u64| ShardPlacement {
            shard_id,
            port: 7380 + shard_id as u16,
            token_ranges: vec![TokenRange { start, end }],
        };
        NodePlacement {
            node_id,
            address: format!("10.0.0.{node_id}:7379"),
            up,
            tokens: Vec::new(),
            shards: vec![shard(0, 0, 2 * QUARTER), shard(1, 2 * QUARTER, 0)],
        }
    }

    /// Three nodes, N = 3; the ring in four ranges, the last wrapping past 2^64 - 1.
    fn cluster(home: u16, up: [bool; 3]) -> Topology {
        let range = |start: u64, end: u64, replicas: [u16; 3]| ReplicaRange {
            start,
            end,
            replicas: replicas.to_vec(),
        };
        let nodes: Vec<NodePlacement> =
            (1..=3).map(|node_id| node(node_id, up[node_id as usize - 1])).collect();
        Topology {
            shards: nodes[home as usize - 1].shards.clone(),
            nodes,
            ring: vec![
                range(QUARTER, 2 * QUARTER, [2, 3, 1]),
                range(2 * QUARTER, 3 * QUARTER, [3, 1, 2]),
                range(3 * QUARTER, QUARTER - 1, [1, 2, 3]),
                range(QUARTER - 1, QUARTER, [2, 1, 3]),
            ],
            replicas: 3,
            node_id: home,
        }
    }

    fn cluster_router(home: u16, up: [bool; 3]) -> Router {
        let from: SocketAddr = format!("10.0.0.{home}:7379").parse().unwrap();
        let mut router = Router::with_unreachable_node_hold(from, Duration::from_secs(5)).with_affinity(None);
        router.set_topology(cluster(home, up), from);
        router
    }

    fn nodes_of(routes: &[Route]) -> Vec<Option<u16>> {
        routes.iter().map(|route| route.node_id).collect()
    }

    #[test]
    fn a_key_goes_to_its_first_replica_at_the_owning_shards_port() {
        let router = cluster_router(1, [true; 3]);
        let route = router.route_token(QUARTER + 1);
        assert_eq!(
            route,
            Route { address: "10.0.0.2:7380".parse().unwrap(), shard_id: Some(0), node_id: Some(2) }
        );
        let route = router.route_token(2 * QUARTER + 1);
        assert_eq!(
            route,
            Route { address: "10.0.0.3:7381".parse().unwrap(), shard_id: Some(1), node_id: Some(3) }
        );
        // (start, end]: the range's end belongs to it, its start to the range before.
        assert_eq!(router.route_token(2 * QUARTER).node_id, Some(2));
        assert_eq!(router.route_token(QUARTER).node_id, Some(2));
        assert_eq!(router.route_token(QUARTER - 1).node_id, Some(1));
        // The wrapping range covers the top and the bottom of the ring.
        for token in [3 * QUARTER + 1, u64::MAX, 0, QUARTER - 2] {
            assert_eq!(router.route_token(token).node_id, Some(1), "token {token}");
        }
        let now = Instant::now();
        assert_eq!(nodes_of(&router.routes(Some(b"k"), now)).len(), 3, "every replica, home among them");
    }

    #[test]
    fn routes_follow_the_topologys_replicas_for_every_token() {
        let topology = cluster(1, [true; 3]);
        let router = cluster_router(1, [true; 3]);
        let now = Instant::now();
        for index in 0..1000u64 {
            let key = format!("key-{index}");
            let token = token_of(key.as_bytes());
            let expected: Vec<Option<u16>> =
                topology.replicas_of_token(token).unwrap().iter().map(|&node_id| Some(node_id)).collect();
            assert_eq!(nodes_of(&router.routes(Some(key.as_bytes()), now)), expected, "{key}");
            let route = router.route_key(key.as_bytes());
            let node = topology.node(route.node_id.unwrap()).unwrap();
            let shard =
                node.shards.iter().find(|shard| shard.token_ranges.iter().any(|range| range.contains(token)));
            assert_eq!(route.shard_id, shard.map(|shard| shard.shard_id), "{key}");
        }
    }

    #[test]
    fn replicas_down_are_skipped_and_unreachable_ones_go_last_for_the_hold() {
        let router = cluster_router(1, [true, false, true]);
        let now = Instant::now();
        assert_eq!(nodes_of(&router.routes(None, now)), vec![Some(1), Some(3)]);
        let routes = router.token_routes(QUARTER + 1, Some(now));
        assert_eq!(nodes_of(&routes), vec![Some(3), Some(1)], "node 2 is down");

        let mut router = cluster_router(1, [true; 3]);
        router.mark_unreachable(2, now);
        let routes = router.token_routes(QUARTER + 1, Some(now));
        assert_eq!(nodes_of(&routes), vec![Some(3), Some(1), Some(2)]);
        assert_eq!(router.route_token(QUARTER + 1).node_id, Some(2), "marks are for requests, not the map");
        let later = now + Duration::from_secs(5);
        assert_eq!(nodes_of(&router.token_routes(QUARTER + 1, Some(later))), vec![Some(2), Some(3), Some(1)]);
        // A fresh topology keeps the marks: it may not have noticed the node down yet.
        router.set_topology(cluster(1, [true; 3]), "10.0.0.1:7379".parse().unwrap());
        assert_eq!(nodes_of(&router.token_routes(QUARTER + 1, Some(now))), vec![Some(3), Some(1), Some(2)]);
    }

    #[test]
    fn a_client_prefers_its_node_for_the_keys_it_replicates() {
        let from: SocketAddr = "10.0.0.1:7379".parse().unwrap();
        let now = Instant::now();
        // Affinities 0, 1, 2 prefer nodes 1, 2, 3 (node id order), and wrap.
        for (affinity, preferred) in [(0, 1), (1, 2), (2, 3), (4, 2)] {
            let mut router = Router::new(from).with_affinity(Some(affinity));
            router.set_topology(cluster(1, [true; 3]), from);
            assert_eq!(router.preferred_node(), Some(preferred));
            for token in [QUARTER + 1, 2 * QUARTER + 1, 3 * QUARTER + 1, QUARTER] {
                let nodes = nodes_of(&router.token_routes(token, Some(now)));
                assert_eq!(nodes[0], Some(preferred), "affinity {affinity}, token {token}");
                // The others keep their preference order.
                let mut expected: Vec<Option<u16>> = cluster(1, [true; 3])
                    .replicas_of_token(token)
                    .unwrap()
                    .iter()
                    .map(|&id| Some(id))
                    .collect();
                expected.retain(|&node| node != Some(preferred));
                assert_eq!(&nodes[1..], expected.as_slice(), "affinity {affinity}, token {token}");
            }
        }
        // A preferred node down, or holding no replica of the key: preference order.
        let mut router = Router::new(from).with_affinity(Some(1));
        router.set_topology(cluster(1, [true, false, true]), from);
        assert_eq!(nodes_of(&router.token_routes(QUARTER + 1, Some(now))), vec![Some(3), Some(1)]);
        let mut topology = cluster(1, [true; 3]);
        topology.ring = vec![ReplicaRange { start: 0, end: 0, replicas: vec![2, 3] }];
        let mut router = Router::new(from).with_affinity(Some(0));
        router.set_topology(topology, from);
        assert_eq!(nodes_of(&router.routes(Some(b"key"), now)), vec![Some(2), Some(3), Some(1)]);
    }

    #[test]
    fn the_first_route_is_the_head_of_the_routes() {
        let from: SocketAddr = "10.0.0.1:7379".parse().unwrap();
        let now = Instant::now();
        let mut routers = vec![Router::new(from), router(vec![placement(0, &[(0, 0)])])];
        for up in [[true; 3], [true, false, true], [false, true, false], [false; 3]] {
            for home in 1..=3 {
                for affinity in [None, Some(0), Some(1), Some(2)] {
                    let mut router = Router::new(from).with_affinity(affinity);
                    router.set_topology(cluster(home, up), from);
                    routers.push(router.clone());
                    router.mark_unreachable(2, now);
                    routers.push(router.clone());
                    router.mark_unreachable(home, now);
                    routers.push(router);
                }
            }
        }
        let mut no_replica_of_home = cluster(1, [true; 3]);
        no_replica_of_home.ring = vec![ReplicaRange { start: 0, end: 0, replicas: vec![2, 3] }];
        let mut router = Router::new(from).with_affinity(None);
        router.set_topology(no_replica_of_home, from);
        routers.push(router);
        for (index, router) in routers.iter().enumerate() {
            for key in (0..200).map(|key| format!("key-{key}")) {
                let routes = router.routes(Some(key.as_bytes()), now);
                let expected = (routes[0], routes.len() == 1);
                assert_eq!(router.first_route(Some(key.as_bytes()), now), expected, "router {index}, {key}");
            }
            let routes = router.routes(None, now);
            assert_eq!(router.first_route(None, now), (routes[0], routes.len() == 1), "router {index}");
        }
    }

    #[test]
    fn the_first_route_table_agrees_with_the_search_on_both_sides_of_every_boundary() {
        let from: SocketAddr = "10.0.0.1:7379".parse().unwrap();
        let now = Instant::now();
        let mut routers = vec![
            Router::new(from),
            router(vec![placement(0, &[(0, 0)])]),
            router(vec![placement(0, &[(10, 20)])]),
            router(vec![placement(0, &[(0, 100), (1000, 5000)]), placement(1, &[(100, 1000), (5000, 0)])]),
        ];
        for up in [[true; 3], [true, false, true], [false, true, false]] {
            for home in 1..=3 {
                for affinity in [None, Some(0), Some(2)] {
                    let mut router = Router::new(from).with_affinity(affinity);
                    router.set_topology(cluster(home, up), from);
                    routers.push(router);
                }
            }
        }
        for (index, router) in routers.iter().enumerate() {
            let mut boundaries: Vec<u64> =
                router.ring.pieces.iter().flat_map(|&(start, end, _)| [start, end]).collect();
            boundaries.extend(
                router
                    .shard_maps()
                    .flat_map(|shards| &shards.segments)
                    .flat_map(|segment| [segment.start, segment.end_inclusive]),
            );
            boundaries.extend([0, u64::MAX]);
            for boundary in boundaries {
                for token in [boundary.saturating_sub(1), boundary, boundary.saturating_add(1)] {
                    let expected = router.first_route_searched(token, Some(now));
                    assert_eq!(router.first_routes.get(token), expected, "router {index}, token {token}");
                }
            }
        }
        // One shard owning the whole ring, outside a cluster: one range for every token.
        assert_eq!(routers[1].first_routes.starts, vec![0]);
    }

    #[test]
    fn a_topology_fetched_again_unchanged_keeps_the_routes_and_a_changed_one_replaces_them() {
        let mut router = cluster_router(1, [true; 3]);
        let now = Instant::now();
        let from: SocketAddr = "10.0.0.1:7379".parse().unwrap();
        let keys: Vec<String> = (0..200).map(|key| format!("key-{key}")).collect();
        let first = |router: &Router| -> Vec<(Route, bool)> {
            keys.iter().map(|key| router.first_route(Some(key.as_bytes()), now)).collect()
        };
        let before = first(&router);
        assert!(before.iter().any(|(route, _)| route.node_id == Some(2)), "node 2 coordinates some keys");
        router.set_topology(cluster(1, [true; 3]), from);
        assert_eq!(first(&router), before);
        router.set_topology(cluster(1, [true, false, true]), from);
        assert!(first(&router).iter().all(|(route, _)| route.node_id != Some(2)), "node 2 is down");
    }

    #[test]
    fn a_held_node_goes_last_until_its_hold_ends_and_the_table_serves_again() {
        let mut router = cluster_router(1, [true; 3]);
        let now = Instant::now();
        router.mark_unreachable(2, now);
        let later = now + Duration::from_secs(6);
        assert!(router.holds_any(now) && !router.holds_any(later));
        for key in (0..200).map(|key| format!("key-{key}")) {
            let routes = router.routes(Some(key.as_bytes()), now);
            assert_eq!(
                router.first_route(Some(key.as_bytes()), now),
                (routes[0], routes.len() == 1),
                "{key}"
            );
            assert_ne!(routes[0].node_id, Some(2), "{key}: node 2 is held");
            let token = token_of(key.as_bytes());
            assert_eq!(
                router.first_route(Some(key.as_bytes()), later),
                router.first_routes.get(token),
                "{key}"
            );
        }
    }

    #[test]
    fn clients_of_one_process_prefer_different_nodes() {
        let from: SocketAddr = "10.0.0.1:7379".parse().unwrap();
        let preferred: std::collections::BTreeSet<u16> = (0..30)
            .map(|_| {
                let mut router = Router::new(from);
                router.set_topology(cluster(1, [true; 3]), from);
                router.preferred_node().unwrap()
            })
            .collect();
        // Other tests draw affinities concurrently, taking some of the counter's values; thirty
        // clients in a row still never all prefer one node.
        assert!(preferred.len() >= 2, "{preferred:?}");
    }

    #[test]
    fn the_home_node_is_the_last_resort_when_it_holds_no_replica() {
        let mut topology = cluster(1, [true; 3]);
        topology.ring = vec![ReplicaRange { start: 0, end: 0, replicas: vec![2, 3] }];
        let from: SocketAddr = "192.168.1.1:9000".parse().unwrap();
        let mut router = Router::new(from).with_affinity(None);
        router.set_topology(topology, from);
        let routes = router.routes(Some(b"key"), Instant::now());
        assert_eq!(nodes_of(&routes), vec![Some(2), Some(3), Some(1)]);
        // Home is reached at the address the client used, on its own shard ports.
        let home = routes[2];
        assert_eq!(home.address.ip(), from.ip());
        assert!([7380, 7381].contains(&home.address.port()), "{home:?}");
    }

    #[test]
    fn a_node_advertising_no_usable_address_is_left_out_unless_it_is_home() {
        let mut topology = cluster(1, [true; 3]);
        topology.nodes[0].address = "0.0.0.0:7379".into();
        topology.nodes[1].address = "0.0.0.0:7379".into();
        let from: SocketAddr = "10.0.0.1:7379".parse().unwrap();
        let mut router = Router::new(from).with_affinity(None);
        router.set_topology(topology, from);
        let routes = router.token_routes(QUARTER + 1, None);
        assert_eq!(nodes_of(&routes), vec![Some(3), Some(1)]);
        assert_eq!(routes[1].address.ip(), from.ip());
        assert!(!router.routes_to("0.0.0.0:7380".parse().unwrap()));
    }

    #[test]
    fn requests_for_no_key_go_home_first_and_contacts_end_with_the_seed() {
        let seed: SocketAddr = "10.0.0.9:7379".parse().unwrap();
        let mut router = Router::new(seed);
        let addresses =
            |routes: Vec<Route>| routes.into_iter().map(|route| route.address).collect::<Vec<_>>();
        assert_eq!(addresses(router.contacts(Instant::now())), vec![seed]);
        let home: SocketAddr = "10.0.0.2:7379".parse().unwrap();
        router.set_topology(cluster(2, [true, true, false]), home);
        let now = Instant::now();
        assert_eq!(
            addresses(router.routes(None, now).to_vec()),
            vec![home, "10.0.0.1:7379".parse().unwrap()]
        );
        router.mark_unreachable(2, now);
        assert_eq!(
            addresses(router.contacts(now)),
            vec!["10.0.0.1:7379".parse().unwrap(), home, seed],
            "home was unreachable: ask the others first"
        );
        assert!(router.routes_to("10.0.0.3:7381".parse().unwrap()), "a node down may come back");
        assert!(!router.routes_to("10.0.0.4:7381".parse().unwrap()));
    }
}
