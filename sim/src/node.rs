//! [`Node`]: one simulated ringkv node with one or more shards: the real coordinator, replica
//! logic, hybrid clock, SWIM membership, and a storage engine per shard, each on an in-memory
//! disk of its own that survives crashes the way a real one does (synced data only).
//!
//! ```text
//!  start(now) ─▶ Engine::open(MemDisk) per shard ─▶ clock observes every max_version ─▶ Membership joins
//!  serve(request, shard) ─▶ shard owns the key? (ShardRing, as the shard checks) ─▶ replica::accept
//!      ─▶ that shard's engine write / read (block_on) ─▶ answer envelope
//!      ─▶ Paxos prepare / propose: that shard's Paxos engine, read-modify-write of the key's
//!         AcceptorState (synced) ─▶ PaxosPromise / PaxosAccept
//!      ─▶ Paxos commit: apply the entry (as a write), then record the ballot ─▶ ReplicateAck
//!  crash(mode) ─▶ process state gone; MemDisk::crash keeps what was synced; generation bumped
//! ```
//!
//! Each shard keeps its Paxos acceptor state as the shard does (`shard/src/cluster/paxos.rs`):
//! in an engine of its own, here on a disk of its own that crashes, fails and is replaced with
//! the shard's data disk, one record per key holding [`AcceptorState::encode`], expiring three
//! hours after its last change.
//!
//! Which shard owns a key is [`ShardRing`], the mapping the shard routes with: the node announces
//! its shard count and vnodes per shard in its identity, and coordinators pick each replica's
//! shard with [`ringkv_replication::shard_ring::target`]. What a node runs once, not per shard,
//! unlike the shard: one coordinator (as shard 0), one clock, one set of anti-entropy trees over
//! all its engines.
//!
//! Engine futures are driven to completion with `block_on` when the event that starts them
//! fires: on a MemDisk nothing ever waits, so a replica's write is applied and synced (or has
//! failed) before its answer is sent, as in the shard under `SyncMode::Always`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use futures_executor::block_on;
use rand::rngs::StdRng;
use rand::SeedableRng;
use ringkv_replication::paxos::AcceptorState;
use ringkv_replication::{
    default_tokens, replica, Coordinator, CoordinatorConfig, HybridClock, Membership, MembershipTiming,
    NodeIdentity, ShardRing,
};
use ringkv_storage::disk::memory::{CrashMode, MemDisk};
use ringkv_storage::{CasOutcome, Engine, EngineOptions, Entry, Expected as StoredExpected, ScanRange};
use ringkv_wire::peer::{
    Acceptance, Accepted, EntryHead, PeerEntry, PeerEnvelope, PeerErrorCode, PeerFailure, PeerMessage,
};
use ringkv_wire::token::token;

use crate::cluster::swaps::Swap;
use crate::healing::Healing;

/// How long a key's Paxos state is kept after its last change, as in the shard
/// (`ACCEPTOR_STATE_TTL_MS`).
pub const ACCEPTOR_STATE_TTL_MS: u64 = 3 * 60 * 60 * 1000;

/// Tokens per node on the ring.
pub const TOKENS_PER_NODE: usize = 16;
/// Token ranges per shard within a node, as the shard's default configuration has it.
pub const VNODES_PER_SHARD: usize = 16;
/// Port every simulated node's membership listens on.
const PEER_PORT: u16 = 7000;

/// The peer address of node `node_id` (10.0.0.id: the last octet is the id).
pub fn peer_address(node_id: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, (node_id >> 8) as u8, node_id as u8), PEER_PORT))
}

/// The node a peer address belongs to.
pub fn node_of(address: SocketAddr) -> Option<u16> {
    match address {
        SocketAddr::V4(v4) => {
            let [_, _, high, low] = v4.ip().octets();
            Some(u16::from(high) << 8 | u16::from(low))
        }
        SocketAddr::V6(_) => None,
    }
}

/// The settings every node of a run shares.
#[derive(Clone, Copy, Debug)]
pub struct NodeSettings {
    pub replica_timeout_ms: u64,
    pub pending_max: usize,
    pub max_clock_skew_ms: u64,
    pub timing: MembershipTiming,
    /// The engine's memtable size: small, so runs flush and compact.
    pub memtable_bytes_max: usize,
    pub memtable_hash_seed: u64,
    /// Shards each node runs, each with its own engine and disk.
    pub shards: usize,
}

/// How a node's replica treats writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaBehaviour {
    /// As the shard does.
    Correct,
    /// A planted bug: acknowledges writes without storing them.
    AcksWithoutApplying,
    /// A planted bug: answers reads while it has lost data and not restored it.
    ServesWhileRebuilding,
    /// A planted bug: the acceptor grants every prepare and accepts every proposal, whatever it
    /// promised before.
    ForgetsPromises,
    /// A planted bug: a prepare reads the key's entry before its Paxos state (the shard's order
    /// once), so a commit landing between the two is reported without its entry.
    PromisesFromAStaleEntry,
}

/// What serving a peer request gave.
pub enum Served {
    /// The answer, to send now.
    Answer(PeerEnvelope),
    /// A prepare half done: [`Node::finish_promise`] finishes it at [`PendingPromise::due_ms`],
    /// and other requests for the key may run before then, as on the shard, whose prepare
    /// awaits two reads.
    Promise(PendingPromise),
    /// Not a request: an answer for this node's coordinator.
    NotARequest,
}

/// A prepare between its two reads (the key's Paxos state, the key's newest entry).
pub struct PendingPromise {
    envelope: PeerEnvelope,
    key: Bytes,
    ballot: u64,
    first: FirstRead,
    /// Simulated time at which the second read is made and the promise sent.
    pub due_ms: u64,
}

/// The read a pending prepare made first.
enum FirstRead {
    /// The state, updated by the prepare (the shard's order).
    State(Result<(AcceptorState, bool), PeerFailure>),
    /// The entry's head (the planted bug's order).
    Entry(Result<Option<EntryHead>, PeerFailure>),
}

/// How long a prepare's two reads are apart: 0 to 3 ms, drawn from the ballot and the node so
/// that the run's generator is left alone (a seed's other draws stay as they were).
fn promise_gap_ms(ballot: u64, node_id: u16) -> u64 {
    let mixed = (ballot ^ u64::from(node_id).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 62) & 3
}

/// The state of a running process; gone at a crash.
pub struct Running {
    /// One engine per shard, indexed by shard id.
    pub engines: Vec<Engine<MemDisk>>,
    /// Each shard's Paxos acceptor state, an engine apart from the data's, indexed by shard id.
    pub paxos: Vec<Engine<MemDisk>>,
    pub clock: HybridClock,
    pub coordinator: Coordinator,
    pub membership: Membership<StdRng>,
    /// The generation of this node's membership identity, as last seen (foca renews it when the
    /// node learns it was declared down).
    pub identity_generation: u64,
    /// When a membership tick is scheduled, if one is.
    pub membership_tick_at: Option<u64>,
    /// Client operations this node coordinates: coordinator request id → history index.
    pub requests: BTreeMap<u64, usize>,
    /// Compare-and-swaps this node coordinates, by history index.
    pub swaps: BTreeMap<usize, Swap>,
    /// The Paxos requests of those swaps' current steps: request id → history index.
    pub swap_steps: BTreeMap<u64, usize>,
    /// The commits of those swaps, as the coordinator runs them: request id → history index.
    pub swap_commits: BTreeMap<u64, usize>,
    /// The last request id a swap's step used (ids carry [`crate::cluster::swaps::SWAP_REQUEST_BIT`]).
    pub swap_request_id: u64,
    /// Trees, hints and exchanges; set right after start.
    pub healing: RefCell<Option<Healing>>,
    /// When this incarnation started, if an engine lost data and it is not restored yet: as the
    /// shard does, the node answers no replica read of a range until anti-entropy found the
    /// range equal on every other replica after this.
    pub rebuilding_since_ms: std::cell::Cell<Option<u64>>,
    /// Until when this node refuses Paxos requests after starting with its disks lost, as the
    /// shard's `paxos_refusal` (0: it did not lose them).
    pub paxos_forgetful_until_ms: u64,
}

/// One node.
pub struct Node {
    pub node_id: u16,
    /// Bumped at every start: the process's incarnation, which answers are addressed to. (The
    /// membership identity's generation is the wall clock at start, as in the shard.)
    pub generation: u64,
    /// This node's wall clock minus the simulation's time.
    pub skew_ms: i64,
    /// One disk per shard.
    pub disks: Vec<MemDisk>,
    /// One disk per shard for its Paxos engine.
    pub paxos_disks: Vec<MemDisk>,
    /// Which shard owns a key.
    pub shard_ring: ShardRing,
    pub running: Option<Running>,
    settings: NodeSettings,
    behaviour: ReplicaBehaviour,
    disk_failing: bool,
    /// A disk of this node lost files and the data is not restored yet.
    data_lost: bool,
}

impl Node {
    /// A node that has never run, with an empty disk.
    pub fn new(node_id: u16, skew_ms: i64, settings: NodeSettings, behaviour: ReplicaBehaviour) -> Self {
        Node {
            node_id,
            generation: 0,
            skew_ms,
            disks: (0..settings.shards).map(|_| MemDisk::new()).collect(),
            paxos_disks: (0..settings.shards).map(|_| MemDisk::new()).collect(),
            shard_ring: ShardRing::new(settings.shards, VNODES_PER_SHARD),
            running: None,
            settings,
            behaviour,
            disk_failing: false,
            data_lost: false,
        }
    }

    /// The node's wall clock when the simulation's time is `now_ms`.
    pub fn wall_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.skew_ms)
    }

    /// Starts the process: opens the engine on what the disk holds, starts the clock above every
    /// version stored, and joins through `seeds`. `membership_seed` seeds foca's generator.
    pub fn start(&mut self, now_ms: u64, membership_seed: u64, seeds: &[SocketAddr]) -> Result<(), String> {
        assert!(self.running.is_none(), "node {} is already running", self.node_id);
        self.generation += 1;
        let options = EngineOptions {
            memtable_bytes_max: self.settings.memtable_bytes_max,
            block_cache_bytes: 256 << 10,
            // Small, so that rows are evicted as well as kept in step with flushes and
            // compactions.
            row_cache_bytes: 32 << 10,
            wal_segment_bytes_max: 16 << 10,
            // Small, so that runs which overwrite a few keys also seal memtables for the log's
            // length, across crashes and restarts.
            wal_bytes_max: 64 << 10,
            compaction_width_min: 2,
            compaction_width_max: 4,
            memtable_hash_seed: self.settings.memtable_hash_seed,
            // Tables go missing only when the run takes them away (the operator then restarts
            // the node with `--allow-missing-tables`).
            missing_tables_allowed: true,
            ..EngineOptions::default()
        };
        let engines = self
            .disks
            .iter()
            .enumerate()
            .map(|(shard, disk)| {
                block_on(Engine::open(disk.clone(), options.clone())).map_err(|error| {
                    format!("node {} could not reopen the engine of shard {shard}: {error}", self.node_id)
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Synced before every answer (`SyncMode::Always`, the default), as the shard's.
        let paxos = self
            .paxos_disks
            .iter()
            .enumerate()
            .map(|(shard, disk)| {
                block_on(Engine::open(disk.clone(), options.clone())).map_err(|error| {
                    format!(
                        "node {} could not reopen the Paxos engine of shard {shard}: {error}",
                        self.node_id
                    )
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        // As the shard does: a node that ran before and finds a shard's files gone lost data.
        let started_before = self.generation > 1;
        for (shard, engine) in engines.iter().enumerate() {
            if started_before && engine.recovery().fresh {
                block_on(engine.mark_rebuilding()).map_err(|error| {
                    format!("node {} could not mark shard {shard} as rebuilding: {error}", self.node_id)
                })?;
            }
        }
        let rebuilding = engines.iter().any(|engine| engine.rebuilding());
        // A file taken away that held nothing the manifest listed (an interrupted flush's) cost
        // no data.
        self.data_lost &= rebuilding;
        let clock = HybridClock::new(self.node_id);
        for engine in &engines {
            clock.observe(engine.max_version());
        }
        let coordinator = Coordinator::new(CoordinatorConfig {
            node_id: self.node_id,
            shard: 0,
            replica_timeout_ms: self.settings.replica_timeout_ms,
            pending_max: self.settings.pending_max,
        });
        let address = peer_address(self.node_id);
        let identity = NodeIdentity {
            node_id: self.node_id,
            // As the shard does: the wall clock at start, so a restart's identity outranks every
            // earlier one, renewed ones (generation + 1) included.
            generation: self.wall_ms(now_ms),
            peer_address: address,
            client_address: address,
            shard_port_base: PEER_PORT,
            shards: self.settings.shards as u32,
            vnodes_per_shard: VNODES_PER_SHARD as u32,
            tokens: default_tokens(self.node_id, TOKENS_PER_NODE),
        };
        let identity_generation = identity.generation;
        let rng = StdRng::seed_from_u64(membership_seed);
        let mut membership = Membership::new(identity, self.settings.timing, rng, now_ms);
        membership.join(seeds, now_ms);
        self.running = Some(Running {
            engines,
            paxos,
            clock,
            coordinator,
            membership,
            identity_generation,
            membership_tick_at: None,
            requests: BTreeMap::new(),
            swaps: BTreeMap::new(),
            swap_steps: BTreeMap::new(),
            swap_commits: BTreeMap::new(),
            swap_request_id: 0,
            healing: RefCell::new(None),
            rebuilding_since_ms: std::cell::Cell::new(rebuilding.then_some(now_ms)),
            paxos_forgetful_until_ms: if rebuilding {
                ringkv_replication::paxos::forgetful_until_ms(
                    now_ms,
                    self.settings.replica_timeout_ms,
                    self.settings.max_clock_skew_ms,
                )
            } else {
                0
            },
        });
        Ok(())
    }

    /// Kills the process and cuts the power: the disks keep what `mode` says survives. Returns
    /// the history indexes of the client operations it was coordinating (swaps included), in
    /// order.
    pub fn crash(&mut self, mode: CrashMode) -> Vec<usize> {
        let running = self.running.take().expect("only a running node crashes");
        self.disks = self.disks.iter().map(|disk| disk.crash(mode)).collect();
        self.paxos_disks = self.paxos_disks.iter().map(|disk| disk.crash(mode)).collect();
        self.disk_failing = false;
        let mut abandoned: Vec<usize> =
            running.requests.into_values().chain(running.swaps.into_keys()).collect();
        abandoned.sort_unstable();
        abandoned
    }

    /// Once every range this node replicates was found equal on every other replica after its
    /// start, records on each engine that the data it lost is restored: `Some` when it did (with
    /// the error of an engine that could not record it), `None` when there was nothing to do.
    pub fn end_rebuild_once_repaired(&mut self) -> Option<Result<(), String>> {
        let running = self.running.as_ref()?;
        let since = running.rebuilding_since_ms.get()?;
        if !running.healing.borrow().as_ref().is_some_and(|healing| healing.all_repaired_since(since)) {
            return None;
        }
        for (shard, engine) in running.engines.iter().enumerate() {
            if let Err(error) = block_on(engine.rebuilt()) {
                return Some(Err(format!(
                    "node {} could not mark shard {shard} rebuilt: {error}",
                    self.node_id
                )));
            }
        }
        running.rebuilding_since_ms.set(None);
        self.data_lost = false;
        Some(Ok(()))
    }

    /// Whether this node lost data that is not restored yet (running or not).
    pub fn rebuilding(&self) -> bool {
        self.data_lost
            || self.running.as_ref().is_some_and(|running| running.rebuilding_since_ms.get().is_some())
    }

    /// Takes files away from the disk of `shard` while the node is stopped: every file (a
    /// replaced disk) when `whole` or when it has no table, else the table `pick` chooses among
    /// its tables. Returns the names removed.
    pub fn lose_data(
        &mut self,
        shard: usize,
        whole: bool,
        pick: impl FnOnce(usize) -> usize,
    ) -> Result<Vec<String>, String> {
        assert!(self.running.is_none(), "data is taken from a stopped node");
        let disk = &self.disks[shard];
        let names = disk.file_names();
        let tables: Vec<&String> = names.iter().filter(|name| name.ends_with(".sst")).collect();
        let removed: Vec<String> =
            if whole || tables.is_empty() { names.clone() } else { vec![tables[pick(tables.len())].clone()] };
        for name in &removed {
            block_on(ringkv_storage::Disk::remove(disk, name))
                .map_err(|error| format!("removing {name}: {error}"))?;
        }
        block_on(ringkv_storage::Disk::sync_dir(disk))
            .map_err(|error| format!("syncing the directory: {error}"))?;
        let mut removed = removed;
        // A replaced disk takes the shard's Paxos state with it (`paxos/` is under the shard's
        // directory); a lost table is the data engine's.
        if whole {
            let paxos = &self.paxos_disks[shard];
            for name in paxos.file_names() {
                block_on(ringkv_storage::Disk::remove(paxos, &name))
                    .map_err(|error| format!("removing paxos/{name}: {error}"))?;
                removed.push(format!("paxos/{name}"));
            }
            block_on(ringkv_storage::Disk::sync_dir(paxos))
                .map_err(|error| format!("syncing the Paxos directory: {error}"))?;
        }
        self.data_lost = true;
        Ok(removed)
    }

    /// The entry of `key` durable on this running node, if any.
    pub fn durable(&self, key: &Bytes) -> Result<Option<PeerEntry>, String> {
        let running = self.running.as_ref().expect("only a running node is read");
        block_on(self.engine_of(running, key).get_durable_entry(key))
            .map(|entry| entry.map(PeerEntry::from))
            .map_err(|error| format!("node {} could not read its engine: {error}", self.node_id))
    }

    /// Whether this node's disk has been told to fail (until the next crash replaces it).
    pub fn disk_failing(&self) -> bool {
        self.disk_failing
    }

    /// Makes every sync (or, with `writes`, every write) of the disks fail after `successes`
    /// more, on each disk.
    pub fn fail_disk(&mut self, writes: bool, successes: u64) {
        for disk in self.disks.iter().chain(&self.paxos_disks) {
            if writes {
                disk.fail_writes_after(successes);
            } else {
                disk.fail_syncs_after(successes);
            }
        }
        self.disk_failing = true;
    }

    /// The engine of the shard owning `key`.
    fn engine_of<'a>(&self, running: &'a Running, key: &[u8]) -> &'a Engine<MemDisk> {
        &running.engines[self.shard_ring.owner_of_key(key) as usize]
    }

    /// The Paxos engine of the shard owning `key`.
    /// Why this node takes no part in a Paxos decision about `key`, as the shard's
    /// `paxos_refusal`: as for replica reads, and for a while after starting with its disks
    /// lost. `now_ms` is the simulation's time, on which swaps' deadlines run.
    fn paxos_refusal(&self, running: &Running, key: &[u8], now_ms: u64) -> Option<PeerFailure> {
        self.rebuilding_refusal(running, key).or_else(|| {
            (now_ms < running.paxos_forgetful_until_ms).then(|| {
                PeerFailure::new(
                    PeerErrorCode::Rebuilding,
                    format!("node {} lost its Paxos state with its disks", self.node_id),
                )
            })
        })
    }

    fn paxos_of<'a>(&self, running: &'a Running, key: &[u8]) -> &'a Engine<MemDisk> {
        &running.paxos[self.shard_ring.owner_of_key(key) as usize]
    }

    /// Why this node answers no replica read (nor Paxos prepare or proposal) of `key`, if it
    /// does not, as the shard's `rebuilding_refusal`: it lost data and anti-entropy has not
    /// found the key's range equal on every other replica since this node started.
    fn rebuilding_refusal(&self, running: &Running, key: &[u8]) -> Option<PeerFailure> {
        let since = running.rebuilding_since_ms.get()?;
        let repaired = running
            .healing
            .borrow()
            .as_ref()
            .is_some_and(|healing| healing.repaired_since(token(key), since));
        if repaired {
            return None;
        }
        Some(PeerFailure::new(
            PeerErrorCode::Rebuilding,
            format!("node {} lost data and has not restored this key's range yet", self.node_id),
        ))
    }

    /// Serves a replica request on this node, as the shard's `serve_replica` does, on shard
    /// `shard` (the coordinator's choice), or, with `None` (hint replays and anti-entropy
    /// pushes, which name no shard here), on the shard owning the key. A shard that does not own
    /// the key refuses it (`WrongShard`), as the shard does. `None` when the envelope is not a
    /// request (an answer, for the coordinator).
    pub fn serve(&self, envelope: &PeerEnvelope, shard: Option<u32>, now_ms: u64) -> Served {
        let running = self.running.as_ref().expect("only a running node serves");
        let wall_ms = self.wall_ms(now_ms);
        if let Some(answer) = running
            .healing
            .borrow()
            .as_ref()
            .and_then(|healing| healing.answer(&envelope.message, &running.engines))
        {
            return Served::Answer(PeerEnvelope { message: answer, ..envelope.clone() });
        }
        let key = match &envelope.message {
            PeerMessage::Replicate { key, .. }
            | PeerMessage::Read { key, .. }
            | PeerMessage::PaxosPrepare { key, .. }
            | PeerMessage::PaxosPropose { key, .. }
            | PeerMessage::PaxosCommit { key, .. } => Some(key),
            _ => None,
        };
        if let (Some(key), Some(shard)) = (key, shard) {
            if self.shard_ring.owner_of_key(key) != shard {
                let failure = PeerFailure::new(
                    PeerErrorCode::WrongShard,
                    format!("shard {shard} of node {} does not own this key", self.node_id),
                );
                return Served::Answer(replica::refusal(envelope, failure));
            }
        }
        match replica::accept(envelope, &running.clock, wall_ms, self.settings.max_clock_skew_ms) {
            Ok(Some(replica::Work::Apply { .. }))
                if self.behaviour == ReplicaBehaviour::AcksWithoutApplying =>
            {
                Served::Answer(replica::applied(envelope, Ok(())))
            }
            Ok(Some(replica::Work::Apply { key, entry })) => {
                // Applied, or superseded by a newer version already here: either way this
                // version or a newer one is durable, which is what the ack promises.
                let result = self.apply_tracked(running, key, Entry::from(entry)).map_err(storage_failure);
                Served::Answer(replica::applied(envelope, result))
            }
            Ok(Some(replica::Work::Read { key, digest_only })) => {
                let gated = self.behaviour != ReplicaBehaviour::ServesWhileRebuilding;
                if let Some(failure) = self.rebuilding_refusal(running, &key).filter(|_| gated) {
                    return Served::Answer(replica::refusal(envelope, failure));
                }
                // As the shard does: a replica tells a coordinator only what is durable here.
                let result = block_on(self.engine_of(running, &key).get_durable_entry(&key))
                    .map(|entry| entry.map(PeerEntry::from))
                    .map_err(storage_failure);
                Served::Answer(replica::read_answer(envelope, digest_only, result))
            }
            Ok(Some(replica::Work::Prepare { key, ballot })) => {
                // As the shard does: a copy that may lack acknowledged writes must not take part
                // in a decision about what the key holds (whatever the sabotage of reads).
                if let Some(failure) = self.paxos_refusal(running, &key, now_ms) {
                    return Served::Answer(replica::refusal(envelope, failure));
                }
                Served::Promise(self.begin_promise(running, envelope, key, ballot, now_ms))
            }
            Ok(Some(replica::Work::Propose { key, ballot, based_on, entry })) => {
                if let Some(failure) = self.paxos_refusal(running, &key, now_ms) {
                    return Served::Answer(replica::refusal(envelope, failure));
                }
                Served::Answer(replica::accepted(
                    envelope,
                    self.paxos_propose(running, key, (ballot, based_on), entry, wall_ms),
                ))
            }
            Ok(Some(replica::Work::Commit { .. }))
                if self.behaviour == ReplicaBehaviour::AcksWithoutApplying =>
            {
                Served::Answer(replica::applied(envelope, Ok(())))
            }
            Ok(Some(replica::Work::Commit { key, ballot, based_on, entry })) => {
                // As the shard does: the entry first, so that a crash before the ballot is
                // recorded leaves the proposal looking unfinished (finishing it writes the same
                // entry again).
                let version = entry.version;
                let applied =
                    self.apply_tracked(running, key.clone(), Entry::from(entry)).map_err(storage_failure);
                let result = match applied {
                    Ok(()) => self
                        .acceptor_update(running, key, wall_ms, |state| {
                            state.commit(ballot, version, based_on)
                        })
                        .map(drop),
                    Err(failure) => Err(failure),
                };
                Served::Answer(replica::applied(envelope, result))
            }
            Ok(None) => Served::NotARequest,
            Err(failure) => Served::Answer(replica::refusal(envelope, failure)),
        }
    }

    /// The first half of the acceptor's answer to a prepare of `key` at `ballot`, as the shard's
    /// `paxos_prepare`: the promise, durable when granted. The head of the newest durable entry
    /// here is read [`promise_gap_ms`] later ([`Node::finish_promise`]), so every commit the
    /// promise reports is in that entry; the planted bug reads in the other order.
    fn begin_promise(
        &self,
        running: &Running,
        envelope: &PeerEnvelope,
        key: Bytes,
        ballot: u64,
        now_ms: u64,
    ) -> PendingPromise {
        let first = if self.behaviour == ReplicaBehaviour::PromisesFromAStaleEntry {
            FirstRead::Entry(self.entry_head(running, &key))
        } else {
            FirstRead::State(self.promise_state(running, key.clone(), ballot, self.wall_ms(now_ms)))
        };
        PendingPromise {
            envelope: envelope.clone(),
            key,
            ballot,
            first,
            due_ms: now_ms + promise_gap_ms(ballot, self.node_id),
        }
    }

    /// The second half of a prepare's answer (see [`Node::begin_promise`]); `None` when the
    /// node is not running.
    pub fn finish_promise(&self, pending: PendingPromise, now_ms: u64) -> Option<PeerEnvelope> {
        let running = self.running.as_ref()?;
        let PendingPromise { envelope, key, ballot, first, .. } = pending;
        let result = match first {
            FirstRead::State(state) => {
                state.and_then(|(state, granted)| Ok(state.promise(granted, self.entry_head(running, &key)?)))
            }
            FirstRead::Entry(current) => current.and_then(|current| {
                let (state, granted) = self.promise_state(running, key, ballot, self.wall_ms(now_ms))?;
                Ok(state.promise(granted, current))
            }),
        };
        Some(replica::promised(&envelope, result))
    }

    /// The head of the newest durable entry of `key` here.
    fn entry_head(&self, running: &Running, key: &Bytes) -> Result<Option<EntryHead>, PeerFailure> {
        Ok(block_on(self.engine_of(running, key).get_durable_entry(key))
            .map_err(storage_failure)?
            .map(|entry| EntryHead::of(&PeerEntry::from(entry))))
    }

    /// Promises `ballot` for `key` when it is the highest yet, durably.
    fn promise_state(
        &self,
        running: &Running,
        key: Bytes,
        ballot: u64,
        wall_ms: u64,
    ) -> Result<(AcceptorState, bool), PeerFailure> {
        let forgets = self.behaviour == ReplicaBehaviour::ForgetsPromises;
        self.acceptor_update(running, key, wall_ms, |state| {
            if forgets {
                // The planted bug: granted whatever was promised before.
                state.promised = state.promised.max(ballot);
                return true;
            }
            state.prepare(ballot)
        })
    }

    /// The acceptor's answer to a proposal, as the shard's `paxos_propose`: accepted durably
    /// unless a higher ballot was promised.
    fn paxos_propose(
        &self,
        running: &Running,
        key: Bytes,
        (ballot, based_on): (u64, u64),
        entry: PeerEntry,
        wall_ms: u64,
    ) -> Result<Acceptance, PeerFailure> {
        let forgets = self.behaviour == ReplicaBehaviour::ForgetsPromises;
        let (state, accepted) = self.acceptor_update(running, key, wall_ms, |state| {
            if forgets {
                // The planted bug: accepted whatever was promised since.
                state.promised = state.promised.max(ballot);
                state.accepted = Some(Accepted { ballot, based_on, entry: entry.clone() });
                return true;
            }
            state.propose(ballot, based_on, entry.clone())
        })?;
        Ok(state.acceptance(accepted))
    }

    /// Reads `key`'s Paxos state, lets `change` change it, and when it did writes it back,
    /// synced, with a compare-and-swap on the state's record, as the shard's `acceptor_update`
    /// does (a write to the record between the read and the swap starts it again; on a MemDisk
    /// none comes).
    fn acceptor_update(
        &self,
        running: &Running,
        key: Bytes,
        wall_ms: u64,
        change: impl Fn(&mut AcceptorState) -> bool,
    ) -> Result<(AcceptorState, bool), PeerFailure> {
        let engine = self.paxos_of(running, &key);
        loop {
            let stored = block_on(engine.get(&key, wall_ms)).map_err(storage_failure)?;
            let (mut state, expected) = match stored {
                Some(stored) => {
                    let state = AcceptorState::decode(&stored.value)
                        .map_err(|error| PeerFailure::new(PeerErrorCode::StorageFailed, error.to_string()))?;
                    (state, StoredExpected::Version(stored.version))
                }
                None => (AcceptorState::default(), StoredExpected::Absent),
            };
            if !change(&mut state) {
                return Ok((state, false));
            }
            let record = Bytes::from(state.encode());
            let expires_at_ms = Some(wall_ms.saturating_add(ACCEPTOR_STATE_TTL_MS));
            let swapped = block_on(engine.compare_and_swap_with(key.clone(), expected, wall_ms, |stored| {
                Entry::live(stored.map_or(1, |version| version + 1), record, expires_at_ms)
            }))
            .map_err(storage_failure)?;
            match swapped {
                CasOutcome::Swapped { .. } => return Ok((state, true)),
                CasOutcome::Mismatch { .. } => continue,
                CasOutcome::Stale { current_version } => {
                    return Err(PeerFailure::new(
                        PeerErrorCode::Internal,
                        format!("a Paxos state versioned at or below the stored {current_version}"),
                    ))
                }
            }
        }
    }

    /// Applies a write and keeps its range's tree current, as the shard's `apply_tracked` does:
    /// the old version is the one memory held when the write applied, else the one read first.
    fn apply_tracked(
        &self,
        running: &Running,
        key: Bytes,
        entry: Entry,
    ) -> Result<(), ringkv_storage::StorageError> {
        let engine = self.engine_of(running, &key);
        let before = match engine.entry_now(&key, |held| held.map(|held| held.version)) {
            Some(result) => result?,
            None => block_on(engine.get_entry(&key))?.map(|held| held.version),
        };
        let in_memory = std::cell::Cell::new(None);
        let outcome = block_on(engine.write_with(key.clone(), |held| {
            in_memory.set(held);
            entry
        }))?;
        if let ringkv_storage::WriteOutcome::Applied { version } = outcome {
            if let Some(healing) = running.healing.borrow_mut().as_mut() {
                healing.update(&key, in_memory.get().or(before), version);
            }
        }
        Ok(())
    }

    /// The stored entry of `key` (tombstones included), for the checkers.
    pub fn stored(&self, key: &Bytes) -> Result<Option<PeerEntry>, String> {
        let running = self.running.as_ref().expect("checked nodes run");
        block_on(self.engine_of(running, key).get_entry(key))
            .map(|entry| entry.map(PeerEntry::from))
            .map_err(|error| format!("node {} could not read its engine: {error}", self.node_id))
    }

    /// Every entry the engines hold (tombstones and expired values included), for the
    /// checkers: one pass over each engine in token order, whatever the number of keys; and how
    /// many entries each shard's engine held.
    pub fn stored_all(&self) -> Result<(BTreeMap<Bytes, PeerEntry>, Vec<usize>), String> {
        const PAGE: usize = 1_024;
        let Some(running) = self.running.as_ref() else {
            return Err(format!("node {} is not running at the end of the run", self.node_id));
        };
        let failed = |error: ringkv_storage::StorageError| {
            format!("node {} could not scan its engine: {error}", self.node_id)
        };
        let mut entries = BTreeMap::new();
        let mut per_shard = vec![0; running.engines.len()];
        for (engine, count) in running.engines.iter().zip(&mut per_shard) {
            let mut range = ScanRange::all();
            loop {
                // Dead entries included, so `now` plays no part.
                let page = block_on(engine.scan(&range, PAGE, 0, true)).map_err(failed)?;
                *count += page.entries.len();
                for scanned in page.entries {
                    entries.insert(scanned.key, PeerEntry::from(scanned.entry));
                }
                match page.next {
                    Some(position) => range = range.after(position),
                    None => break,
                }
            }
        }
        Ok((entries, per_shard))
    }

    /// Runs each engine's background work once (the Paxos engines' too): flush the memtable,
    /// then one compaction if due.
    pub fn maintain(&self, now_ms: u64) -> Result<(), String> {
        let Some(running) = self.running.as_ref() else { return Ok(()) };
        for engine in running.engines.iter().chain(&running.paxos) {
            block_on(engine.flush())
                .and_then(|()| block_on(engine.compact(self.wall_ms(now_ms))).map(drop))
                .map_err(|error| format!("node {} maintenance failed: {error}", self.node_id))?;
        }
        Ok(())
    }
}

/// A storage error as a replica answers it.
fn storage_failure(error: ringkv_storage::StorageError) -> PeerFailure {
    PeerFailure::new(PeerErrorCode::StorageFailed, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `envelope` as [`Node::serve`] does, a prepare's two reads at once.
    fn serve_now(
        node: &Node,
        envelope: &PeerEnvelope,
        shard: Option<u32>,
        now_ms: u64,
    ) -> Option<PeerEnvelope> {
        match node.serve(envelope, shard, now_ms) {
            Served::Answer(answer) => Some(answer),
            Served::Promise(pending) => node.finish_promise(pending, now_ms),
            Served::NotARequest => None,
        }
    }

    #[test]
    fn a_shard_takes_only_the_keys_it_owns_and_stores_them_in_its_own_engine() {
        let settings = NodeSettings {
            replica_timeout_ms: 1_000,
            pending_max: 8,
            max_clock_skew_ms: 500,
            timing: MembershipTiming::default(),
            memtable_bytes_max: 64 << 10,
            memtable_hash_seed: 1,
            shards: 3,
        };
        let mut node = Node::new(1, 0, settings, ReplicaBehaviour::Correct);
        let now_ms = crate::config::START_MS;
        node.start(now_ms, 7, &[]).expect("starts");
        let key = Bytes::from_static(b"some key");
        let owner = node.shard_ring.owner_of_key(&key);
        let other = (owner + 1) % 3;
        let version = node.running.as_ref().expect("running").clock.next_version(now_ms);
        let request = PeerEnvelope {
            origin_node: 2,
            origin_shard: 0,
            request_id: 5,
            message: PeerMessage::Replicate {
                key: key.clone(),
                entry: PeerEntry {
                    version,
                    value: ringkv_wire::peer::PeerValue::Live {
                        data: Bytes::from_static(b"v"),
                        expires_at_ms: None,
                    },
                },
            },
        };
        let ack = |answer: Option<PeerEnvelope>| match answer.expect("a request is answered").message {
            PeerMessage::ReplicateAck { result } => result.map_err(|failure| failure.code),
            other => panic!("not an ack: {other:?}"),
        };
        assert_eq!(ack(serve_now(&node, &request, Some(other), now_ms)), Err(PeerErrorCode::WrongShard));
        assert_eq!(node.stored(&key).expect("readable"), None, "a refused write is not applied");
        assert_eq!(ack(serve_now(&node, &request, Some(owner), now_ms)), Ok(()));
        let (entries, per_shard) = node.stored_all().expect("scannable");
        assert_eq!(entries[&key].version, version);
        let mut expected = vec![0; 3];
        expected[owner as usize] = 1;
        assert_eq!(per_shard, expected, "the write is in its owning shard's engine only");
    }

    #[test]
    fn addresses_name_their_node() {
        for node_id in [1, 7, 300] {
            assert_eq!(node_of(peer_address(node_id)), Some(node_id));
        }
    }

    #[test]
    fn an_acceptor_keeps_its_promises_across_a_crash_and_a_commit_applies_then_records() {
        let settings = NodeSettings {
            replica_timeout_ms: 1_000,
            pending_max: 8,
            max_clock_skew_ms: 500,
            timing: MembershipTiming::default(),
            memtable_bytes_max: 2 << 10,
            memtable_hash_seed: 1,
            shards: 2,
        };
        let mut node = Node::new(1, 0, settings, ReplicaBehaviour::Correct);
        let now_ms = crate::config::START_MS;
        node.start(now_ms, 7, &[]).expect("starts");
        let key = Bytes::from_static(b"cas-0");
        let shard = Some(node.shard_ring.owner_of_key(&key));
        let ballot = |at: u64| HybridClock::new(2).next_version(at);
        let request = |message| PeerEnvelope { origin_node: 2, origin_shard: 0, request_id: 9, message };
        let prepare = |ballot| request(PeerMessage::PaxosPrepare { key: key.clone(), ballot });
        let promise = |answer: Option<PeerEnvelope>| match answer.expect("answered").message {
            PeerMessage::PaxosPromise { result } => result.expect("no failure"),
            other => panic!("not a promise: {other:?}"),
        };
        let (low, high) = (ballot(now_ms), ballot(now_ms + 10));
        assert!(promise(serve_now(&node, &prepare(high), shard, now_ms)).granted);
        // Synced before the answer: a crash dropping what was not synced keeps it.
        node.crash(CrashMode::DropUnsynced);
        node.start(now_ms + 100, 8, &[]).expect("restarts");
        let refused = promise(serve_now(&node, &prepare(low), shard, now_ms + 100));
        assert_eq!((refused.granted, refused.promised), (false, high));
        let entry = PeerEntry {
            version: high,
            value: ringkv_wire::peer::PeerValue::Live { data: Bytes::from_static(b"v"), expires_at_ms: None },
        };
        let proposal = request(PeerMessage::PaxosPropose {
            key: key.clone(),
            ballot: high,
            based_on: 0,
            entry: entry.clone(),
        });
        match serve_now(&node, &proposal, shard, now_ms + 100).expect("answered").message {
            PeerMessage::PaxosAccept { result } => assert!(result.expect("no failure").accepted),
            other => panic!("not an acceptance: {other:?}"),
        }
        let commit = request(PeerMessage::PaxosCommit {
            key: key.clone(),
            ballot: high,
            based_on: 0,
            entry: entry.clone(),
        });
        match serve_now(&node, &commit, shard, now_ms + 100).expect("answered").message {
            PeerMessage::ReplicateAck { result } => assert_eq!(result, Ok(())),
            other => panic!("not an ack: {other:?}"),
        }
        assert_eq!(node.stored(&key).expect("readable"), Some(entry.clone()));
        let after = promise(serve_now(&node, &prepare(ballot(now_ms + 20)), shard, now_ms + 100));
        assert_eq!(
            (after.committed, after.accepted, after.current),
            (high, None, Some(EntryHead::of(&entry)))
        );
        // The Paxos state is no key of the store: the data engines hold the entry alone.
        let (entries, _) = node.stored_all().expect("scannable");
        assert_eq!(entries.len(), 1);
    }
}
