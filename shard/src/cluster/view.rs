//! [`ClusterView`]: one shard's picture of the cluster: every member known, which are up, the
//! token ring they form, and the shard on each node that owns a token.
//!
//! The membership task on shard 0 owns the truth; every other shard receives a
//! [`MembershipSnapshot`] by message when it changes and rebuilds its view from it, so no state
//! is shared between cores.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ringkv_replication::{shard_ring, ClusterRing, NodeIdentity, Target};
use ringkv_wire::token::token;
use ringkv_wire::{NodePlacement, ReplicaRange, ShardPlacement, Topology};

use crate::ring::Ring;

/// What the membership task tells every shard: each member known (up or down) and the ids up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipSnapshot {
    pub members: BTreeMap<u16, NodeIdentity>,
    pub up: BTreeSet<u16>,
    /// Set while the node must not serve: it is still joining through its seeds, or another
    /// member holds its node id.
    pub refused: Option<String>,
}

/// A shard's view of the cluster.
pub struct ClusterView {
    node_id: u16,
    replication_factor: usize,
    snapshot: Arc<MembershipSnapshot>,
    ring: ClusterRing,
    /// Each member's token-to-shard mapping.
    shard_rings: BTreeMap<u16, Ring>,
}

impl ClusterView {
    /// A view of this node up and the members known from before (down until membership says
    /// otherwise).
    ///
    /// `joining` is why the node must not serve yet, if it must not: a new node that has seeds
    /// and knows no member serves nothing until it has joined, or it would take writes alone as
    /// a cluster of one.
    pub fn new(
        identity: &NodeIdentity,
        replication_factor: usize,
        known: &BTreeMap<u16, NodeIdentity>,
        joining: Option<String>,
    ) -> Self {
        let mut snapshot =
            MembershipSnapshot { members: known.clone(), refused: joining, ..MembershipSnapshot::default() };
        snapshot.members.insert(identity.node_id, identity.clone());
        snapshot.up.insert(identity.node_id);
        let mut view = ClusterView {
            node_id: identity.node_id,
            replication_factor,
            snapshot: Arc::new(MembershipSnapshot::default()),
            ring: ClusterRing::new(),
            shard_rings: BTreeMap::new(),
        };
        view.apply(Arc::new(snapshot));
        view
    }

    /// Takes a new snapshot from the membership task.
    pub fn apply(&mut self, snapshot: Arc<MembershipSnapshot>) {
        if snapshot == self.snapshot {
            return;
        }
        self.ring = ClusterRing::from_nodes(
            snapshot.members.iter().map(|(&node_id, identity)| (node_id, identity.tokens.as_slice())),
        );
        self.shard_rings = snapshot
            .members
            .iter()
            .map(|(&node_id, identity)| {
                (node_id, Ring::announced(identity.shards, identity.vnodes_per_shard))
            })
            .collect();
        self.snapshot = snapshot;
    }

    /// The ring.
    pub fn ring(&self) -> &ClusterRing {
        &self.ring
    }

    /// Copies of each key: the configured replication factor, capped by the nodes in the ring.
    pub fn replicas(&self) -> usize {
        self.replication_factor.min(self.ring.node_count()).max(1)
    }

    /// The configured replication factor.
    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    /// Whether requests go through replication: more than one copy of each key, or a node that
    /// must not serve (so that no shortcut answers for it).
    pub fn is_replicated(&self) -> bool {
        self.replicas() > 1 || self.snapshot.refused.is_some()
    }

    /// Why this node must not serve, if it must not.
    pub fn refused(&self) -> Option<&str> {
        self.snapshot.refused.as_deref()
    }

    /// The key's replicas that are up, as targets (node and owning shard), this node first when
    /// it is one, then the others in node id order starting after this node (wrapping); and the
    /// count of replicas, up or not.
    ///
    /// A read asks the first R targets. Taking the other replicas in an order fixed per
    /// coordinator rather than per key means that, wherever the replica sets overlap, one
    /// coordinator's reads go to the same peer over the same link and travel in fuller
    /// batches: with three nodes each holding every key, each node's reads would otherwise
    /// split over both of its links, measured as one more system call per five reads. The
    /// order still spreads the load, each node reading from its successor.
    pub fn targets(&self, key: &[u8]) -> (Vec<Target>, usize) {
        let key_token = token(key);
        let replicas = self.ring.preference_list(key_token, self.replicas());
        let total = replicas.len();
        let mut live: Vec<Target> = replicas
            .into_iter()
            .filter(|node_id| self.snapshot.up.contains(node_id))
            .map(|node_id| shard_ring::target(&self.shard_rings, node_id, key_token))
            .collect();
        live.sort_by_key(|target| target.node_id.wrapping_sub(self.node_id));
        (live, total)
    }

    /// Whether membership sees `node_id` up.
    pub fn is_up(&self, node_id: u16) -> bool {
        self.snapshot.up.contains(&node_id)
    }

    /// The members known and the ones up.
    pub fn snapshot(&self) -> &MembershipSnapshot {
        &self.snapshot
    }

    /// The key's replicas that are down (they get hints), as targets.
    pub fn down_replicas(&self, key: &[u8]) -> Vec<Target> {
        let key_token = token(key);
        self.ring
            .preference_list(key_token, self.replicas())
            .into_iter()
            .filter(|node_id| !self.snapshot.up.contains(node_id))
            .map(|node_id| shard_ring::target(&self.shard_rings, node_id, key_token))
            .collect()
    }

    /// Whether `shard` of this node owns `key`'s token (a replica refuses keys it does not own:
    /// a coordinator with a stale picture of this node would otherwise read the wrong shard).
    pub fn owns(&self, key: &[u8], shard: u32) -> bool {
        self.shard_rings.get(&self.node_id).is_some_and(|ring| ring.owner_of_key(key) == shard)
    }

    /// The topology clients route with: this node's shards (`local_shards`), every member with
    /// its liveness, tokens and shards, and the ring's ranges with their replicas.
    pub fn topology(&self, local_shards: Vec<ShardPlacement>) -> Topology {
        let nodes = self
            .snapshot
            .members
            .iter()
            .map(|(&node_id, identity)| NodePlacement {
                node_id,
                address: identity.client_address.to_string(),
                up: self.snapshot.up.contains(&node_id),
                tokens: identity.tokens.clone(),
                shards: self.shard_rings[&node_id]
                    .topology(|shard| identity.shard_port_base.saturating_add(shard as u16))
                    .shards,
            })
            .collect();
        let ring = self
            .ring
            .ranges(self.replicas())
            .into_iter()
            .map(|range| ReplicaRange { start: range.start, end: range.end, replicas: range.replicas })
            .collect();
        Topology { shards: local_shards, nodes, ring, replicas: self.replicas() as u8, node_id: self.node_id }
    }

    /// The identity of a member.
    pub fn member(&self, node_id: u16) -> Option<&NodeIdentity> {
        self.snapshot.members.get(&node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use ringkv_replication::ring::default_tokens;

    fn identity(node_id: u16) -> NodeIdentity {
        let port = 7000 + 10 * node_id;
        NodeIdentity {
            node_id,
            generation: 1,
            peer_address: SocketAddr::from(([127, 0, 0, 1], port + 1000)),
            client_address: SocketAddr::from(([127, 0, 0, 1], port)),
            shard_port_base: port + 1,
            shards: 2,
            vnodes_per_shard: 8,
            tokens: default_tokens(node_id, 16),
        }
    }

    /// The view of node `node_id` in a cluster of nodes 1..=count, all up, N = 3.
    fn view(node_id: u16, count: u16) -> ClusterView {
        let members: BTreeMap<u16, NodeIdentity> = (1..=count).map(|id| (id, identity(id))).collect();
        let mut view = ClusterView::new(&identity(node_id), 3, &members, None);
        let up = members.keys().copied().collect();
        view.apply(Arc::new(MembershipSnapshot { members, up, refused: None }));
        view
    }

    #[test]
    fn targets_are_the_replicas_this_node_first_then_its_successors_in_node_id_order() {
        for (node_id, count) in [(1, 3), (2, 3), (3, 3), (4, 6), (6, 6)] {
            let view = view(node_id, count);
            for index in 0..500 {
                let key = format!("key-{index}");
                let (targets, total) = view.targets(key.as_bytes());
                assert_eq!((targets.len(), total), (3, 3), "{key}");
                let mut replicas = view.ring().preference_list(token(key.as_bytes()), 3);
                replicas.sort_unstable();
                let mut nodes: Vec<u16> = targets.iter().map(|target| target.node_id).collect();
                let distance = |id: u16| id.wrapping_sub(node_id);
                assert!(nodes.windows(2).all(|pair| distance(pair[0]) < distance(pair[1])), "{nodes:?}");
                nodes.sort_unstable();
                assert_eq!(nodes, replicas, "{key}");
                for target in &targets {
                    let owner = view.shard_rings[&target.node_id].owner_of_token(token(key.as_bytes()));
                    assert_eq!(target.shard, owner, "{key}");
                }
            }
        }
        // With every node holding every key, a node reads from its successor, wrapping.
        for (node_id, successor) in [(1, 2), (2, 3), (3, 1)] {
            let (targets, _) = view(node_id, 3).targets(b"any key");
            assert_eq!((targets[0].node_id, targets[1].node_id), (node_id, successor));
        }
    }
}
