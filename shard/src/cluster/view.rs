//! [`ClusterView`]: one shard's picture of the cluster: every member known, which are up, the
//! token ring they form, and the shard on each node that owns a token.
//!
//! The membership task on shard 0 owns the truth; every other shard receives a
//! [`MembershipSnapshot`] by message when it changes and rebuilds its view from it, so no state
//! is shared between cores.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ringkv_replication::{ClusterRing, NodeIdentity, Target};
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
                let shards = (identity.shards as usize).clamp(1, crate::ring::SHARDS_MAX);
                let vnodes = (identity.vnodes_per_shard as usize).clamp(1, crate::ring::VNODES_PER_SHARD_MAX);
                (node_id, Ring::new(shards, vnodes))
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
    /// it is one, then in preference order; and the count of replicas, up or not.
    pub fn targets(&self, key: &[u8]) -> (Vec<Target>, usize) {
        let key_token = token(key);
        let replicas = self.ring.preference_list(key_token, self.replicas());
        let total = replicas.len();
        let mut live: Vec<Target> = replicas
            .into_iter()
            .filter(|node_id| self.snapshot.up.contains(node_id))
            .map(|node_id| Target { node_id, shard: self.shard_rings[&node_id].owner_of_token(key_token) })
            .collect();
        // A stable sort keeps the preference order behind this node.
        live.sort_by_key(|target| target.node_id != self.node_id);
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
            .map(|node_id| Target { node_id, shard: self.shard_rings[&node_id].owner_of_token(key_token) })
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
