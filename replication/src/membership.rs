//! [`Membership`]: who is in the cluster and who is up, by SWIM (the `foca` crate), without I/O.
//!
//! ```text
//!  datagram in ──handle_data(now)──▶ foca ──▶ datagrams out (drain)
//!  tick(now) ──due timers──────────▶ foca ──▶ events: Up(identity) / Down(identity) / Conflict
//! ```
//!
//! foca is sans-IO: it asks for datagrams to be sent and for timers to fire after a delay. This
//! wrapper keeps those timers in one heap ordered by deadline and fires them from
//! [`Membership::tick`], so the driver is one task with one sleep (foca's own advice: timers run
//! from separate tasks fired out of order broke the probe cycle). Time comes in as `now_ms`;
//! the random number generator is the caller's, so a seeded one replays a run exactly.
//!
//! Each node gossips its [`NodeIdentity`]: node id, generation, addresses, shard count and
//! tokens, so every node computes the same ring and can address every remote shard directly.

use crate::ids::IdMap;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use bytes::Bytes;
use foca::{
    AccumulatingRuntime, Config, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer,
};
use rand_foca::RngExt;
use serde::{Deserialize, Serialize};

/// Largest membership datagram, in bytes. An identity with 256 tokens is about 2.5 KiB, and a
/// datagram carries a few identities.
pub const MEMBERSHIP_PACKET_BYTES_MAX: usize = 16 << 10;

/// What a node tells the cluster about itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Unique in the cluster (0..=1023; it is in the low bits of every version the node mints).
    pub node_id: u16,
    /// Bumped at every start (and when the node finds itself declared down), so a restarted
    /// node's identity replaces its previous one.
    pub generation: u64,
    /// Membership datagrams and shard 0's peer port; shard `i` listens for peers on this port + i.
    pub peer_address: SocketAddr,
    /// The client port every shard listens on.
    pub client_address: SocketAddr,
    /// Shard `i` listens alone for clients on this port + i.
    pub shard_port_base: u16,
    /// Shards of the node.
    pub shards: u32,
    /// Token ranges per shard inside the node (decides which shard owns a token).
    pub vnodes_per_shard: u32,
    /// The node's tokens on the cluster ring, ascending.
    pub tokens: Vec<u64>,
}

impl NodeIdentity {
    /// The peer address of shard `shard`.
    pub fn shard_peer_address(&self, shard: u32) -> SocketAddr {
        let mut address = self.peer_address;
        address.set_port(self.peer_address.port() + shard as u16);
        address
    }
}

impl Identity for NodeIdentity {
    /// Members are told apart by their peer address: a restart at the same address replaces the
    /// old identity (by generation), while another process claiming the same node id from
    /// another address is a distinct member that [`Membership`] reports as a conflict.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity { generation: self.generation + 1, ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.peer_address
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// A change in membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// The node is up (newly, or again, or with a new generation).
    Up(NodeIdentity),
    /// The node is declared down.
    Down(NodeIdentity),
    /// Two members claim one node id. `kept` is the one first known (or this node); `refused`
    /// is left out of the ring.
    Conflict { kept: NodeIdentity, refused: NodeIdentity },
    /// This node's own id is claimed by an earlier member at another address: this node must
    /// not serve.
    Refused { holder: NodeIdentity },
}

/// Failure-detection timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipTiming {
    /// A random member is probed this often.
    pub probe_period_ms: u64,
    /// A probe unanswered this long goes indirect.
    pub probe_rtt_ms: u64,
    /// A suspected member not refuting this long is declared down.
    pub suspect_to_down_ms: u64,
    /// Gossip to a few members this often.
    pub gossip_period_ms: u64,
}

impl Default for MembershipTiming {
    /// Tuned for a LAN: a killed node is declared down within a probe cycle plus the suspicion
    /// time, about 2 to 4 seconds in a small cluster.
    fn default() -> Self {
        MembershipTiming {
            probe_period_ms: 500,
            probe_rtt_ms: 200,
            suspect_to_down_ms: 1500,
            gossip_period_ms: 200,
        }
    }
}

fn foca_config(timing: MembershipTiming) -> Config {
    let mut config = Config::new_lan(NonZeroU32::new(8).expect("nonzero"));
    config.probe_period = Duration::from_millis(timing.probe_period_ms);
    config.probe_rtt = Duration::from_millis(timing.probe_rtt_ms);
    config.suspect_to_down_after = Duration::from_millis(timing.suspect_to_down_ms);
    config.max_packet_size = NonZeroUsize::new(MEMBERSHIP_PACKET_BYTES_MAX).expect("nonzero");
    if let Some(gossip) = config.periodic_gossip.as_mut() {
        gossip.frequency = Duration::from_millis(timing.gossip_period_ms);
    }
    // A restarted or partitioned node must find its way back quickly.
    if let Some(announce) = config.periodic_announce_to_down_members.as_mut() {
        announce.frequency = Duration::from_secs(2);
    }
    // A down identity is forgotten after a while so that a node replaced at the same address
    // with an old generation (a restored backup) can rejoin.
    config.remove_down_after = Some(Duration::from_secs(60));
    config
}

/// One node's view of the cluster.
pub struct Membership<R: RngExt> {
    foca: Foca<NodeIdentity, PostcardCodec, R, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<NodeIdentity>,
    /// `(deadline, timer id)`; the timers themselves are in `timers`.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    timers: IdMap<Timer<NodeIdentity>>,
    next_timer_id: u64,
    /// Members up, by node id; the first identity known for an id keeps it.
    up: BTreeMap<u16, NodeIdentity>,
    /// Every other member ever seen, by peer address, with its latest identity.
    known: BTreeMap<SocketAddr, NodeIdentity>,
    /// Every address [`Membership::join`] was given (not this node's own).
    seeds: BTreeSet<SocketAddr>,
    /// When this node last announced itself to the seeds and known members not up; the next
    /// announce is one `reannounce_period_ms` later.
    announced_at_ms: u64,
    /// Every datagram to send: (peer address, bytes).
    outbox: Vec<(SocketAddr, Bytes)>,
    events: Vec<MembershipEvent>,
    now_ms: u64,
}

/// How often a node announces itself to the members it knows but does not see up. foca's own
/// announces to down members go to identities that may have renewed meanwhile, and after a
/// healed partition both sides can renew at once and stay split (found by the simulator); an
/// announce to the address is answered with the member's current identity whatever it is.
///
/// The seeds are announced to as well, like the members seen: a node that (re)started while
/// partitioned from part of the cluster never saw those members up, and neither did they see
/// it; with two or more members on each side nobody is alone, so only the seeds still name the
/// other side, and without announcing to them the two halves stay two clusters after the
/// partition heals (found by the simulator). Cassandra's gossip talks to a seed now and then
/// for the same reason.
const REANNOUNCE_PERIOD_MS: u64 = 2_000;

/// How often a node that sees no other member up announces itself: a node alone serves nothing
/// replicated, so it looks for the cluster sooner. Becoming alone after a long time in the
/// cluster announces at once, the last announce being that long ago.
const ALONE_REANNOUNCE_PERIOD_MS: u64 = 1_000;

impl<R: RngExt> Membership<R> {
    /// This node's membership, alone until it joins.
    pub fn new(identity: NodeIdentity, timing: MembershipTiming, rng: R, now_ms: u64) -> Self {
        let mut up = BTreeMap::new();
        up.insert(identity.node_id, identity.clone());
        let foca = Foca::new(identity, foca_config(timing), rng, PostcardCodec);
        Membership {
            foca,
            runtime: AccumulatingRuntime::new(),
            deadlines: BinaryHeap::new(),
            timers: IdMap::default(),
            next_timer_id: 0,
            up,
            known: BTreeMap::new(),
            seeds: BTreeSet::new(),
            announced_at_ms: now_ms,
            outbox: Vec::new(),
            events: Vec::new(),
            now_ms,
        }
    }

    /// This node's identity.
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// Announces this node to the seeds (peer addresses); the first to answer brings it in. The
    /// seeds are remembered: any of them not seen up is announced to again every
    /// `ALONE_REANNOUNCE_PERIOD_MS` while this node sees no other member up, every
    /// `REANNOUNCE_PERIOD_MS` after.
    pub fn join(&mut self, seeds: &[SocketAddr], now_ms: u64) {
        self.now_ms = now_ms;
        let own = self.foca.identity().peer_address;
        self.seeds.extend(seeds.iter().copied().filter(|&address| address != own));
        self.announced_at_ms = now_ms;
        self.announce_to(seeds);
        self.collect();
    }

    /// The time between announces to the seeds and members not up: shorter while alone.
    fn reannounce_period_ms(&self) -> u64 {
        if self.up.len() == 1 {
            ALONE_REANNOUNCE_PERIOD_MS
        } else {
            REANNOUNCE_PERIOD_MS
        }
    }

    /// When the seeds and members not up are next announced to.
    fn reannounce_at_ms(&self) -> u64 {
        self.announced_at_ms.saturating_add(self.reannounce_period_ms())
    }

    /// Announces this node to each address (not its own). Only the address is known; foca
    /// answers with the member's real identity.
    fn announce_to(&mut self, addresses: &[SocketAddr]) {
        let own = self.foca.identity().peer_address;
        for &address in addresses.iter().filter(|&&address| address != own) {
            let placeholder = NodeIdentity {
                node_id: u16::MAX,
                generation: 0,
                peer_address: address,
                client_address: address,
                shard_port_base: 0,
                shards: 0,
                vnodes_per_shard: 0,
                tokens: Vec::new(),
            };
            if let Err(error) = self.foca.announce(placeholder, &mut self.runtime) {
                tracing::warn!(%address, %error, "announcing to a member failed");
            }
        }
    }

    /// The known members and seeds that are not up now, each address once.
    fn missing_members(&self) -> Vec<SocketAddr> {
        let up: BTreeSet<SocketAddr> = self.up.values().map(|member| member.peer_address).collect();
        let addresses: BTreeSet<SocketAddr> = self.known.keys().chain(&self.seeds).copied().collect();
        addresses.into_iter().filter(|address| !up.contains(address)).collect()
    }

    /// Takes a datagram received from another node.
    pub fn handle_data(&mut self, data: &[u8], now_ms: u64) {
        self.now_ms = now_ms;
        if let Err(error) = self.foca.handle_data(data, &mut self.runtime) {
            tracing::debug!(%error, "membership datagram refused");
        }
        self.collect();
    }

    /// Fires every timer due at `now_ms`. Returns the next deadline, if any.
    pub fn tick(&mut self, now_ms: u64) -> Option<u64> {
        self.now_ms = now_ms;
        while let Some(&Reverse((deadline, timer_id))) = self.deadlines.peek() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.pop();
            let timer = self.timers.remove(&timer_id).expect("every deadline has its timer");
            if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(%error, "membership timer failed");
            }
            self.collect();
        }
        if now_ms >= self.reannounce_at_ms() {
            self.announced_at_ms = now_ms;
            let missing = self.missing_members();
            if !missing.is_empty() {
                tracing::debug!(members = missing.len(), "announcing to members not seen up");
                self.announce_to(&missing);
                self.collect();
            }
        }
        self.next_deadline()
    }

    /// When [`Membership::tick`] must next be called.
    pub fn next_deadline(&self) -> Option<u64> {
        let timer = self.deadlines.peek().map(|Reverse((deadline, _))| *deadline);
        let reannounce = (!self.known.is_empty() || !self.seeds.is_empty()).then(|| self.reannounce_at_ms());
        timer.into_iter().chain(reannounce).min()
    }

    /// Tells the cluster this node leaves (on a clean stop).
    pub fn leave(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(%error, "leaving the cluster failed");
        }
        self.collect();
    }

    /// Datagrams to send, as (peer address, bytes); each is one whole membership payload.
    pub fn drain_outbox(&mut self) -> std::vec::Drain<'_, (SocketAddr, Bytes)> {
        self.outbox.drain(..)
    }

    /// Membership changes since the last call.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, MembershipEvent> {
        self.events.drain(..)
    }

    /// Members up now, this node included, by node id.
    pub fn up(&self) -> &BTreeMap<u16, NodeIdentity> {
        &self.up
    }

    fn collect(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.outbox.push((to.peer_address, data));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let timer_id = self.next_timer_id;
            self.next_timer_id += 1;
            let deadline = self.now_ms.saturating_add(after.as_millis() as u64);
            self.deadlines.push(Reverse((deadline, timer_id)));
            self.timers.insert(timer_id, timer);
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(identity) => self.member_up(identity),
                OwnedNotification::Rename(previous, identity) => {
                    self.member_down(&previous);
                    self.member_up(identity);
                }
                OwnedNotification::MemberDown(identity) => self.member_down(&identity),
                OwnedNotification::Rejoin(identity) => {
                    // This node renewed its identity after learning it was declared down: tell
                    // every member it knows, not only the ones foca sees up (they may have
                    // renewed too, and drop what is addressed to their old identity).
                    tracing::info!(
                        generation = identity.generation,
                        "rejoined the cluster with a renewed identity"
                    );
                    let everyone: Vec<SocketAddr> = self.known.keys().copied().collect();
                    self.announce_to(&everyone);
                    // The announces queued more to send.
                    while let Some((to, data)) = self.runtime.to_send() {
                        self.outbox.push((to.peer_address, data));
                    }
                }
                _ => {}
            }
        }
    }

    fn member_up(&mut self, identity: NodeIdentity) {
        let own = self.foca.identity().clone();
        if identity.peer_address != own.peer_address {
            self.known.insert(identity.peer_address, identity.clone());
        }
        match self.up.get(&identity.node_id) {
            Some(known) if known.peer_address != identity.peer_address => {
                if known.peer_address == own.peer_address && own.generation > identity.generation {
                    // An earlier member holds this node's id: this node is the newcomer.
                    tracing::error!(node_id = own.node_id, holder = %identity.peer_address,
                        "this node's id is already held by another member; refusing to serve");
                    self.events.push(MembershipEvent::Refused { holder: identity });
                    return;
                }
                tracing::error!(
                    node_id = identity.node_id,
                    kept = %known.peer_address,
                    refused = %identity.peer_address,
                    "two members claim one node id; the later one is left out of the ring"
                );
                self.events.push(MembershipEvent::Conflict { kept: known.clone(), refused: identity });
            }
            _ => {
                tracing::info!(node_id = identity.node_id, address = %identity.peer_address, generation = identity.generation, "node up");
                self.up.insert(identity.node_id, identity.clone());
                self.events.push(MembershipEvent::Up(identity));
            }
        }
    }

    fn member_down(&mut self, identity: &NodeIdentity) {
        if self.up.get(&identity.node_id).is_some_and(|known| known.peer_address == identity.peer_address)
            && identity.peer_address != self.foca.identity().peer_address
        {
            tracing::warn!(node_id = identity.node_id, address = %identity.peer_address, "node down");
            self.up.remove(&identity.node_id);
            self.events.push(MembershipEvent::Down(identity.clone()));
        }
    }
}
