//! [`Cluster`]: one simulated run. Every node, the network, the clients and the faults are
//! driven from one event heap by one seeded generator, in one thread.
//!
//! ```text
//!  warm-up ─▶ workload (clients + faults, hints, anti-entropy) ─▶ heal, restart, lossless links
//!          ─▶ membership settles ─▶ anti-entropy alone makes every replica agree (checked)
//!          ─▶ read every key at ALL (read repair converges) ─▶ background repairs delivered
//!          ─▶ checkers over the history and every engine's entries
//! ```
//!
//! Time is the simulation's, in ms; each node's wall clock is it plus the node's skew. The
//! coordinator's deadlines and foca's timers run on the simulation's time (they only measure
//! durations); the hybrid clock, TTL and tombstone times and the replicas' clock-skew check run
//! on the node's wall clock.
//!
//! Compare-and-swaps ([`swaps`]) run on their own keys (`cas-0`, ...): a client reads the key at
//! QUORUM, then swaps from what it read through the same node, whose [`PaxosCas`] sends its
//! steps with ids of their own ([`swaps::SWAP_REQUEST_BIT`]) and commits through the
//! coordinator.
//!
//! [`PaxosCas`]: ringkv_replication::paxos::PaxosCas

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringkv_replication::coordinator::Output;
use ringkv_replication::shard_ring::{self, ShardRing};
use ringkv_replication::tictac::TokenRange;
use ringkv_replication::{
    default_tokens, ClusterRing, CoordinatorError, CoordinatorReply, MembershipEvent, MembershipTiming,
    Target,
};
use ringkv_storage::disk::memory::CrashMode;
use ringkv_wire::peer::{PeerEntry, PeerEnvelope, PeerMessage, PeerValue, ReadAnswer};
use ringkv_wire::token::token;
use ringkv_wire::Consistency;

use crate::checker::{self, FinalState, SwapCounts};
use crate::client::{Client, Request};
use crate::config::{Sabotage, SimConfig, CLOCK_SKEW_MS_MAX, REPLICATION_FACTOR, START_MS};
use crate::healing::{self, Healing};
use crate::history::{History, Kind, Operation, Outcome, Swap, Swaps};
use crate::network::{LinkFaults, Message, Network, Payload};
use crate::node::{
    node_of, peer_address, Node, NodeSettings, PendingPromise, ReplicaBehaviour, Served, TOKENS_PER_NODE,
};
use crate::scheduler::Scheduler;

pub mod swaps;

/// Membership gets this long to form before clients start.
const WARM_UP_MS: u64 = 3_000;
/// The workload must end within this much simulated time.
const WORKLOAD_MS_MAX: u64 = 600_000;
/// After healing, membership gets at most this long to see every node up.
const CONVERGE_MS_MAX: u64 = 60_000;
/// After healing, the final reads wait this long, so that every version minted (at most twice the
/// skew ahead of any clock) is in the past of every node's clock.
const CLOCKS_PASS_MS: u64 = 1_000;
const _: () = assert!(CLOCKS_PASS_MS > 2 * CLOCK_SKEW_MS_MAX as u64);
/// Attempts at the final read of a key at ALL.
const FINAL_READ_ATTEMPTS: usize = 10;
/// Requests a node's coordinator keeps pending at once (and swaps it runs at once).
const PENDING_MAX: usize = 64;
/// Most events pending at once.
const EVENTS_PENDING_MAX: usize = 1 << 20;
/// Anti-entropy rounds start every this long on each node, give or take half.
const ANTI_ENTROPY_INTERVAL_MS: u64 = 4_000;
/// Hints are replayed this often.
const HINT_REPLAY_INTERVAL_MS: u64 = 1_000;
/// After healing, anti-entropy gets at most this many rounds to make every replica agree.
const ANTI_ENTROPY_ROUNDS_MAX: usize = 40;

enum Event {
    Deliver(Message),
    MembershipTick {
        node: u16,
        generation: u64,
    },
    CoordinatorTick {
        node: u16,
        generation: u64,
    },
    Maintenance {
        node: u16,
        generation: u64,
    },
    ClientNext {
        client: usize,
    },
    Fault,
    Heal {
        partition: u64,
    },
    Restart {
        node: u16,
    },
    /// The operator restarts a node whose disk failed.
    OperatorRestart {
        node: u16,
        generation: u64,
    },
    AntiEntropy {
        node: u16,
        generation: u64,
    },
    HintReplay {
        node: u16,
        generation: u64,
    },
    /// A contended swap's pause is over.
    SwapResume {
        node: u16,
        generation: u64,
        index: usize,
    },
    /// A swap's deadline.
    SwapDeadline {
        node: u16,
        generation: u64,
        index: usize,
    },
    /// A swap's step has waited a replica's timeout for its answers.
    SwapStepTimeout {
        node: u16,
        generation: u64,
        index: usize,
        request_id: u64,
    },
    /// A replica's prepare makes its second read and answers.
    Promise {
        node: u16,
        generation: u64,
        pending: Box<PendingPromise>,
        /// The shard that serves it, the node that asked and that node's incarnation.
        reply: (u32, u16, u64),
    },
}

/// What a run found.
pub struct Report {
    pub seed: u64,
    /// The run, one line per event of interest; the same seed gives the same bytes.
    pub trace: String,
    /// Violations of the checked properties (empty: the run passed).
    pub violations: Vec<String>,
    /// Client operations issued and events handled.
    pub operations: usize,
    pub events: u64,
    /// Acknowledged writes that lost to a write acknowledged before they began (see
    /// [`checker::real_time_inversions`]); allowed, and counted.
    pub inversions: usize,
    /// How the compare-and-swaps ended.
    pub swaps: SwapCounts,
    /// Simulated time from start to end.
    pub simulated_ms: u64,
    /// What the nodes sent each other.
    pub traffic: Traffic,
    /// Of that, what they sent until the clients' last operation ended, before the heal and the
    /// settling (in which anti-entropy rounds run until every replica agrees).
    pub traffic_under_load: Traffic,
    /// Each node's share of the ring's token space as a replica (sums to N).
    pub ownership: BTreeMap<u16, f64>,
    /// Entries (tombstones included) each node's engine holds at the end.
    pub stored_keys: BTreeMap<u16, usize>,
    /// Of those, the entries each shard's engine holds, by node, indexed by shard.
    pub stored_keys_per_shard: BTreeMap<u16, Vec<usize>>,
}

/// Messages between nodes, counted as they are sent (a duplicated delivery counts once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Replica requests and answers: messages and encoded bytes.
    pub peer_messages: u64,
    pub peer_bytes: u64,
    /// Writes sent to replicas for a client's write: messages and bytes.
    pub write_messages: u64,
    pub write_bytes: u64,
    /// Read repair: writes a read's coordinator sends to replicas it found behind, blocking or
    /// in the background.
    pub read_repair_messages: u64,
    pub read_repair_bytes: u64,
    /// Hinted handoff: hints replayed to the replica they were kept for.
    pub hint_messages: u64,
    pub hint_bytes: u64,
    /// Anti-entropy: tree comparisons (requests and answers), pulls of a peer's entry (requests
    /// and answers) and pushes of an entry to a peer that lacked it.
    pub anti_entropy_messages: u64,
    pub anti_entropy_bytes: u64,
    /// Membership datagrams and bytes.
    pub membership_messages: u64,
    pub membership_bytes: u64,
}

/// One run.
pub struct Cluster {
    seed: u64,
    config: SimConfig,
    now_ms: u64,
    /// Events handled so far: the logical time of the history.
    step: u64,
    rng: StdRng,
    scheduler: Scheduler<Event>,
    network: Network,
    nodes: BTreeMap<u16, Node>,
    ring: ClusterRing,
    /// Which shard of each node owns a token: what every node's identity announces, the same for
    /// every observer since shard counts never change within a run.
    shard_rings: BTreeMap<u16, ShardRing>,
    /// The clients' keys (`config.keys` of them), then the swaps' (`config.swap_keys`).
    keys: Vec<Bytes>,
    clients: Vec<Client>,
    history: History,
    /// What each swap asked, and every proposal sent.
    swaps: Swaps,
    trace: String,
    faults_on: bool,
    partition: u64,
    /// Problems found while running (an engine that would not reopen, an undecodable frame).
    violations: Vec<String>,
    traffic: Traffic,
    /// While the final reads run concurrently: the operations completed since last looked at.
    final_reads_done: Option<Vec<usize>>,
}

impl Cluster {
    /// The run of `seed`.
    pub fn new(seed: u64, sabotage: Option<Sabotage>) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = SimConfig { sabotage, ..SimConfig::draw(&mut rng) };
        Cluster::build(seed, rng, config)
    }

    /// The run of `seed` with nodes of `shards` shards each.
    pub fn with_shards(seed: u64, sabotage: Option<Sabotage>, shards: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = SimConfig { sabotage, shards_per_node: shards.max(1), ..SimConfig::draw(&mut rng) };
        Cluster::build(seed, rng, config)
    }

    /// A run of `config`, its schedule and faults drawn from `seed`.
    pub fn with_config(seed: u64, config: SimConfig) -> Self {
        Cluster::build(seed, StdRng::seed_from_u64(seed), config)
    }

    fn build(seed: u64, mut rng: StdRng, config: SimConfig) -> Self {
        let sabotage = config.sabotage;
        let settings = NodeSettings {
            replica_timeout_ms: config.replica_timeout_ms,
            pending_max: PENDING_MAX,
            max_clock_skew_ms: config.max_clock_skew_ms,
            timing: MembershipTiming::default(),
            memtable_bytes_max: config.memtable_bytes_max,
            memtable_hash_seed: seed,
            shards: config.shards_per_node,
        };
        let mut nodes = BTreeMap::new();
        let mut ring = ClusterRing::new();
        let mut shard_rings = BTreeMap::new();
        for node_id in 1..=config.nodes {
            let skew_ms = rng.random_range(-config.clock_skew_ms_max..=config.clock_skew_ms_max);
            let behaviour = match sabotage {
                Some(Sabotage::ReplicaAcksWithoutApplying) if node_id == 1 => {
                    ReplicaBehaviour::AcksWithoutApplying
                }
                Some(Sabotage::ServesWhileRebuilding) => ReplicaBehaviour::ServesWhileRebuilding,
                Some(Sabotage::AcceptorForgetsPromises) => ReplicaBehaviour::ForgetsPromises,
                Some(Sabotage::PromisesFromAStaleEntry) => ReplicaBehaviour::PromisesFromAStaleEntry,
                _ => ReplicaBehaviour::Correct,
            };
            let node = Node::new(node_id, skew_ms, settings, behaviour);
            shard_rings.insert(node_id, node.shard_ring.clone());
            nodes.insert(node_id, node);
            ring.insert(node_id, &default_tokens(node_id, TOKENS_PER_NODE));
        }
        let keys = (0..config.keys)
            .map(|index| Bytes::from(format!("k{index}")))
            .chain((0..config.swap_keys).map(|index| Bytes::from(format!("cas-{index}"))))
            .collect();
        let clients = (0..config.clients).map(|id| Client::new(id, config.operations_per_client)).collect();
        let mut trace = String::new();
        let _ = writeln!(trace, "seed {seed}: {config:?}");
        for node in nodes.values() {
            let _ = writeln!(trace, "n{} clock skew {}ms", node.node_id, node.skew_ms);
        }
        Cluster {
            seed,
            network: Network::new(config.link_faults),
            config,
            now_ms: START_MS,
            step: 0,
            rng,
            scheduler: Scheduler::new(EVENTS_PENDING_MAX),
            nodes,
            ring,
            shard_rings,
            keys,
            clients,
            history: History::default(),
            swaps: Swaps::default(),
            trace,
            faults_on: false,
            partition: 0,
            violations: Vec::new(),
            traffic: Traffic::default(),
            final_reads_done: None,
        }
    }

    /// Runs to the end and checks the result.
    pub fn run(mut self) -> Report {
        let node_ids: Vec<u16> = self.nodes.keys().copied().collect();
        for &node in &node_ids {
            self.start(node);
        }
        self.run_for(WARM_UP_MS);
        self.workload();
        let traffic_under_load = self.traffic;
        self.settle();
        let replicas: BTreeMap<Bytes, Vec<u16>> = self
            .keys
            .iter()
            .map(|key| (key.clone(), self.ring.preference_list(token(key), REPLICATION_FACTOR)))
            .collect();
        let mut stored = FinalState::new();
        let mut stored_keys_per_shard = BTreeMap::new();
        for (&node_id, node) in &self.nodes {
            match node.stored_all() {
                Ok((entries, per_shard)) => {
                    stored_keys_per_shard.insert(node_id, per_shard);
                    stored.insert(
                        node_id,
                        entries.into_iter().map(|(key, entry)| (key, Some(entry))).collect(),
                    );
                }
                Err(error) => self.violations.push(error),
            }
        }
        self.violations.extend(checker::check(&self.history, &replicas, &stored));
        self.violations.extend(checker::check_swaps(&self.history, &self.swaps));
        let swaps = checker::swap_counts(&self.history, &self.swaps);
        for violation in &self.violations {
            let _ = writeln!(self.trace, "VIOLATION {violation}");
        }
        let inversions = checker::real_time_inversions(&self.history);
        let _ = writeln!(
            self.trace,
            "end at {}ms after {} events: {} violations; {inversions} acknowledged writes versioned below \
             one acknowledged before they began (last-writer-wins under clock skew); swaps: {swaps}",
            self.now_ms - START_MS,
            self.step,
            self.violations.len()
        );
        Report {
            seed: self.seed,
            trace: self.trace,
            violations: self.violations,
            operations: self.history.operations.len(),
            inversions,
            swaps,
            events: self.step,
            simulated_ms: self.now_ms - START_MS,
            traffic: self.traffic,
            traffic_under_load,
            ownership: self.ring.ownership(REPLICATION_FACTOR),
            stored_keys: stored.iter().map(|(&node, entries)| (node, entries.len())).collect(),
            stored_keys_per_shard,
        }
    }

    fn log(&mut self, line: std::fmt::Arguments<'_>) {
        if !self.config.trace_events {
            return;
        }
        let _ = writeln!(self.trace, "{:>7} {line}", self.now_ms - START_MS);
    }

    /// Clients run until each has issued and finished all its operations, with faults on.
    fn workload(&mut self) {
        self.faults_on = self.config.fault_interval_ms > 0;
        if self.faults_on {
            let at = self.now_ms + self.rng.random_range(0..=self.config.fault_interval_ms);
            self.scheduler.schedule(at, Event::Fault);
        }
        for client in 0..self.clients.len() {
            let at = self.now_ms + self.rng.random_range(0..50);
            self.scheduler.schedule(at, Event::ClientNext { client });
        }
        let deadline = self.now_ms + WORKLOAD_MS_MAX;
        while !self.clients.iter().all(Client::is_done) {
            if self.now_ms > deadline || !self.step() {
                self.violations.push("the workload did not finish in time".to_string());
                return;
            }
        }
    }

    /// Heals everything, restarts crashed nodes, waits for membership, reads every key at ALL
    /// and lets the background repairs land.
    fn settle(&mut self) {
        self.faults_on = false;
        self.network.heal();
        self.network.set_faults(LinkFaults { loss: 0.0, duplication: 0.0, ..self.config.link_faults });
        self.log(format_args!("settle: links healed and lossless"));
        let node_ids: Vec<u16> = self.nodes.keys().copied().collect();
        for &node in &node_ids {
            // The operator replaces the failing disks first (a restart gets a fresh handle).
            if self.nodes[&node].running.is_some() && self.nodes[&node].disk_failing() {
                self.crash(node, CrashMode::DropUnsynced);
            }
            if self.nodes[&node].running.is_none() {
                self.start(node);
            }
        }
        let deadline = self.now_ms + CONVERGE_MS_MAX;
        while !self.membership_converged() {
            if self.now_ms > deadline {
                let views: Vec<String> = self
                    .nodes
                    .values()
                    .map(|node| match &node.running {
                        Some(running) => format!(
                            "n{} (generation {}) sees {:?}",
                            node.node_id,
                            running.membership.identity().generation.wrapping_sub(START_MS),
                            running
                                .membership
                                .up()
                                .values()
                                .map(|identity| (
                                    identity.node_id,
                                    identity.generation.wrapping_sub(START_MS)
                                ))
                                .collect::<Vec<_>>()
                        ),
                        None => format!("n{} is down", node.node_id),
                    })
                    .collect();
                self.violations
                    .push(format!("membership did not converge after healing: {}", views.join(", ")));
                break;
            }
            self.run_for(500);
        }
        if self.membership_converged() {
            self.log(format_args!("settle: every node sees every node up"));
        }
        // Versions carry the fastest clock of the cluster, so they may lead a slow node's clock by
        // twice the skew, past the replicas' bound: such a node refuses the read repair (and the
        // read at ALL still answers). Wait until every version written is in every clock's past.
        self.run_for(CLOCKS_PASS_MS);
        self.converge_by_anti_entropy();
        if self.config.final_reads_in_flight > 1 {
            self.read_all_concurrently(&node_ids, self.config.final_reads_in_flight);
            self.run_for(3_000);
            return;
        }
        for key in self.keys.clone() {
            for _ in 0..FINAL_READ_ATTEMPTS {
                let node = node_ids[self.rng.random_range(0..node_ids.len())];
                let request = Request {
                    node,
                    key: key.clone(),
                    kind: Kind::Get,
                    consistency: Consistency::All,
                    swap: None,
                };
                let index = self.issue(None, request);
                // The coordinator's deadline ends the read at the latest.
                while self.history.operations[index].outcome == Outcome::Pending && self.step() {}
                if matches!(self.history.operations[index].outcome, Outcome::Read(_)) {
                    break;
                }
                self.run_for(500);
            }
        }
        self.run_for(3_000);
    }

    /// The final reads at ALL, `window` keys at a time, each retried as in the one-at-a-time
    /// form (up to [`FINAL_READ_ATTEMPTS`], 500 ms apart).
    fn read_all_concurrently(&mut self, node_ids: &[u16], window: usize) {
        let mut waiting: VecDeque<(Bytes, usize)> = self.keys.iter().map(|key| (key.clone(), 0)).collect();
        let mut retries: VecDeque<(u64, Bytes, usize)> = VecDeque::new();
        let mut in_flight: BTreeMap<usize, (Bytes, usize)> = BTreeMap::new();
        self.final_reads_done = Some(Vec::new());
        loop {
            while retries.front().is_some_and(|(at, _, _)| *at <= self.now_ms) {
                let (_, key, attempts) = retries.pop_front().expect("checked");
                waiting.push_back((key, attempts));
            }
            while in_flight.len() < window {
                let Some((key, attempts)) = waiting.pop_front() else { break };
                let node = node_ids[self.rng.random_range(0..node_ids.len())];
                let request = Request {
                    node,
                    key: key.clone(),
                    kind: Kind::Get,
                    consistency: Consistency::All,
                    swap: None,
                };
                let index = self.issue(None, request);
                in_flight.insert(index, (key, attempts + 1));
            }
            if in_flight.is_empty() && retries.is_empty() && waiting.is_empty() {
                break;
            }
            if !self.step() {
                break;
            }
            for index in self.final_reads_done.as_mut().map(std::mem::take).unwrap_or_default() {
                let Some((key, attempts)) = in_flight.remove(&index) else { continue };
                let read = matches!(self.history.operations[index].outcome, Outcome::Read(_));
                if !read && attempts < FINAL_READ_ATTEMPTS {
                    retries.push_back((self.now_ms + 500, key, attempts));
                }
            }
        }
        self.final_reads_done = None;
    }

    fn membership_converged(&self) -> bool {
        self.nodes.values().all(|node| {
            node.running.as_ref().is_some_and(|running| running.membership.up().len() == self.nodes.len())
        })
    }

    /// Handles events up to `duration_ms` from now.
    fn run_for(&mut self, duration_ms: u64) {
        let end = self.now_ms + duration_ms;
        while self.scheduler.next_at().is_some_and(|at| at <= end) {
            self.step();
        }
        self.now_ms = end;
    }

    /// Handles the next event. Returns false when none is left.
    fn step(&mut self) -> bool {
        let Some((at, event)) = self.scheduler.pop() else { return false };
        debug_assert!(at >= self.now_ms, "time never goes back");
        self.now_ms = at;
        self.step += 1;
        match event {
            Event::Deliver(message) => self.deliver(message),
            Event::MembershipTick { node, generation } => {
                let now_ms = self.now_ms;
                let Some(running) = self.running_mut(node, generation) else { return true };
                if running.membership_tick_at == Some(at) {
                    running.membership_tick_at = None;
                    running.membership.tick(now_ms);
                    self.flush_membership(node);
                }
            }
            Event::CoordinatorTick { node, generation } => {
                let now_ms = self.now_ms;
                let Some(running) = self.running_mut(node, generation) else { return true };
                let mut outputs = Vec::new();
                running.coordinator.tick(now_ms, &mut outputs);
                self.dispatch(node, outputs);
            }
            Event::Maintenance { node, generation } => {
                if self.running_mut(node, generation).is_some() {
                    let node_state = &self.nodes[&node];
                    // A failing disk poisons the engine; maintenance then fails, as expected.
                    if let Err(error) = node_state.maintain(self.now_ms) {
                        if !node_state.disk_failing() {
                            self.violations.push(error);
                        }
                    }
                    let at = self.now_ms + self.rng.random_range(500..=1_500);
                    self.scheduler.schedule(at, Event::Maintenance { node, generation });
                }
            }
            Event::ClientNext { client } => {
                let node_ids: Vec<u16> = self.nodes.keys().copied().collect();
                let (keys, swap_keys) = self.keys.split_at(self.config.keys);
                let (history, nodes, now_ms) = (&self.history, &self.nodes, self.now_ms);
                let read = |index: usize| {
                    let op = &history.operations[index];
                    (op.outcome.clone(), nodes[&op.node].wall_ms(now_ms))
                };
                let next = self.clients[client].next(
                    &mut self.rng,
                    keys,
                    swap_keys,
                    self.config.swap_percent,
                    &node_ids,
                    read,
                );
                if let Some(request) = next {
                    let index = self.issue(Some(client), request);
                    self.clients[client].issued(index);
                    if self.history.operations[index].outcome == Outcome::Pending {
                        self.clients[client].in_flight = Some(index);
                    }
                }
            }
            Event::SwapResume { node, generation, index } => {
                if self.running_mut(node, generation).is_some() {
                    self.resume_swap(node, index);
                }
            }
            Event::SwapDeadline { node, generation, index } => {
                if self.running_mut(node, generation).is_some() {
                    self.swap_deadline(node, index);
                }
            }
            Event::SwapStepTimeout { node, generation, index, request_id } => {
                if self.running_mut(node, generation).is_some() {
                    self.swap_step_timeout(node, index, request_id);
                }
            }
            Event::Promise { node, generation, pending, reply: (shard, to, to_generation) } => {
                // A crash between the two reads: the promise is lost with the process.
                let answer = match self.running_mut(node, generation) {
                    Some(_) => self.nodes[&node].finish_promise(*pending, self.now_ms),
                    None => None,
                };
                if let Some(answer) = answer {
                    self.send_answer((node, shard), (to, to_generation), &answer);
                }
            }
            Event::Fault => self.fault(),
            Event::Heal { partition } => {
                if partition == self.partition && self.network.is_partitioned() {
                    self.network.heal();
                    self.log(format_args!("partition {partition} healed"));
                }
            }
            Event::OperatorRestart { node, generation } => {
                if self.faults_on && self.running_mut(node, generation).is_some() {
                    self.crash(node, CrashMode::DropUnsynced);
                    let at = self.now_ms + self.rng.random_range(100..=1_000);
                    self.scheduler.schedule(at, Event::Restart { node });
                }
            }
            Event::Restart { node } => {
                if self.faults_on && self.nodes[&node].running.is_none() {
                    self.start(node);
                }
            }
            Event::AntiEntropy { node, generation } => {
                if self.running_mut(node, generation).is_some() {
                    self.anti_entropy_round(node);
                    let at = self.now_ms
                        + self
                            .rng
                            .random_range(ANTI_ENTROPY_INTERVAL_MS / 2..=ANTI_ENTROPY_INTERVAL_MS * 3 / 2);
                    self.scheduler.schedule(at, Event::AntiEntropy { node, generation });
                }
            }
            Event::HintReplay { node, generation } => {
                if self.running_mut(node, generation).is_some() {
                    self.replay_hints(node);
                    self.scheduler.schedule(
                        self.now_ms + HINT_REPLAY_INTERVAL_MS,
                        Event::HintReplay { node, generation },
                    );
                }
            }
        }
        true
    }

    /// Starts an anti-entropy round on `node` with the replicas its membership sees up.
    fn anti_entropy_round(&mut self, node_id: u16) {
        if self.config.sabotage == Some(Sabotage::NoAntiEntropy) {
            return;
        }
        let now_ms = self.now_ms;
        let node = &self.nodes[&node_id];
        let Some(running) = node.running.as_ref() else { return };
        let up: Vec<u16> = running.membership.up().keys().copied().collect();
        let sends = match running.healing.borrow_mut().as_mut() {
            Some(healing) => healing.start_round(node_id, &up, now_ms),
            None => return,
        };
        self.send_healing(node_id, sends);
    }

    fn send_healing(&mut self, node_id: u16, sends: Vec<healing::Send>) {
        for healing::Send::Request { to, request_id, message } in sends {
            let envelope = PeerEnvelope { origin_node: node_id, origin_shard: 0, request_id, message };
            let frame = Message::encode_peer(&envelope);
            self.count_anti_entropy(frame.len());
            self.send(node_id, to, None, Payload::Peer(frame));
        }
    }

    /// Keeps a hint of `entry` for `destination` on `node`, unless the bounds or the window
    /// refuse it.
    fn store_hint(&mut self, node_id: u16, destination: u16, key: Bytes, entry: PeerEntry) {
        let now_ms = self.now_ms;
        let Some(running) = self.nodes[&node_id].running.as_ref() else { return };
        let mut healing = running.healing.borrow_mut();
        let Some(healing) = healing.as_mut() else { return };
        let bytes = (key.len() + 64) as u64;
        if healing.book.admit(destination, bytes, now_ms).is_ok() {
            healing.hints.entry(destination).or_default().push_back((key, entry, now_ms));
        }
    }

    /// Replays the hints of `node` to the destinations it sees up, within the replay budget.
    fn replay_hints(&mut self, node_id: u16) {
        let now_ms = self.now_ms;
        let Some(running) = self.nodes[&node_id].running.as_ref() else { return };
        let up: Vec<u16> = running.membership.up().keys().copied().collect();
        let mut sends = Vec::new();
        {
            let mut healing = running.healing.borrow_mut();
            let Some(healing) = healing.as_mut() else { return };
            let mut budget = healing.book.replay_budget(now_ms);
            for (&destination, queue) in healing.hints.iter_mut() {
                if !up.contains(&destination) {
                    continue;
                }
                while let Some((key, _, written_at_ms)) = queue.front() {
                    let bytes = (key.len() + 64) as u64;
                    if healing.book.expired(*written_at_ms, now_ms) {
                        queue.pop_front();
                        healing.book.released(destination, bytes, false);
                        continue;
                    }
                    if bytes > budget {
                        break;
                    }
                    budget -= bytes;
                    healing.book.spend(bytes);
                    let (key, entry, _) = queue.pop_front().expect("front exists");
                    healing.book.released(destination, bytes, true);
                    sends.push((destination, PeerMessage::Replicate { key, entry }));
                }
            }
        }
        if !sends.is_empty() {
            self.log(format_args!("n{node_id} replays {} hints", sends.len()));
        }
        for (destination, message) in sends {
            // Background: nobody waits for the answer (request id 0).
            let envelope = PeerEnvelope { origin_node: node_id, origin_shard: 0, request_id: 0, message };
            let frame = Message::encode_peer(&envelope);
            self.traffic.hint_messages += 1;
            self.traffic.hint_bytes += frame.len() as u64;
            self.send(node_id, destination, None, Payload::Peer(frame));
        }
    }

    /// Takes the answer to a healing request on `node_id`.
    fn on_healing_answer(&mut self, node_id: u16, from: u16, envelope: PeerEnvelope) {
        let now_ms = self.now_ms;
        let node = &self.nodes[&node_id];
        let Some(running) = node.running.as_ref() else { return };
        if envelope.request_id & healing::PULL_REQUEST_BIT != 0 {
            let key = running
                .healing
                .borrow_mut()
                .as_mut()
                .and_then(|healing| healing.pulls.remove(&envelope.request_id));
            if let (Some(key), PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(Some(entry))) }) =
                (key, envelope.message)
            {
                // Through the replica path: clock-skew check, tree update.
                let request = PeerEnvelope {
                    origin_node: from,
                    origin_shard: 0,
                    request_id: 0,
                    message: PeerMessage::Replicate { key, entry },
                };
                let _ = node.serve(&request, None, now_ms);
            }
            return;
        }
        let (sends, pushes) = match running.healing.borrow_mut().as_mut() {
            Some(healing) => healing.on_answer(envelope.request_id, from, envelope.message, &running.engines),
            None => return,
        };
        self.send_healing(node_id, sends);
        for (peer, key) in pushes {
            let Ok(Some(entry)) = self.nodes[&node_id].stored(&key) else { continue };
            let envelope = PeerEnvelope {
                origin_node: node_id,
                origin_shard: 0,
                request_id: 0,
                message: PeerMessage::Replicate { key, entry },
            };
            let frame = Message::encode_peer(&envelope);
            self.count_anti_entropy(frame.len());
            self.send(node_id, peer, None, Payload::Peer(frame));
        }
        match self.nodes.get_mut(&node_id).expect("a node of the run").end_rebuild_once_repaired() {
            Some(Ok(())) => {
                self.log(format_args!("n{node_id} restored the data it lost: serving replica reads again"))
            }
            Some(Err(error)) => self.violations.push(error),
            None => {}
        }
    }

    /// Whether every version `node_id` holds durably is durable on another running replica of
    /// its key too: then taking its disk away loses nothing that replication cannot restore.
    fn held_elsewhere(&self, node_id: u16) -> Result<bool, String> {
        // A poisoned engine refuses reads of what is durable: no disk is taken from such a
        // node, and its copies do not count.
        if self.nodes[&node_id].disk_failing() {
            return Ok(false);
        }
        for key in &self.keys {
            // Only a key's replicas hold it (a checker makes sure of that).
            let replicas = self.ring.preference_list(token(key), REPLICATION_FACTOR);
            if !replicas.contains(&node_id) {
                continue;
            }
            let Some(mine) = self.nodes[&node_id].durable(key)? else { continue };
            let mut held = false;
            for other in replicas
                .iter()
                .filter(|&&other| other != node_id)
                .map(|other| &self.nodes[other])
                .filter(|other| other.running.is_some() && !other.disk_failing())
            {
                if other.durable(key)?.is_some_and(|theirs| theirs.version >= mine.version) {
                    held = true;
                    break;
                }
            }
            if !held {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether every key's replicas hold the same version (or all nothing).
    fn replicas_agree(&self) -> Result<(), String> {
        for key in &self.keys {
            let replicas = self.ring.preference_list(token(key), REPLICATION_FACTOR);
            let mut versions = Vec::new();
            for replica in &replicas {
                let stored = self.nodes[replica].stored(key)?;
                versions.push((*replica, stored.map(|entry| entry.version)));
            }
            if versions.windows(2).any(|pair| pair[0].1 != pair[1].1) {
                return Err(format!("{key:?}: {versions:?}"));
            }
        }
        Ok(())
    }

    /// Runs anti-entropy rounds on every node until every key's replicas agree, before any read
    /// repairs them: a run passes only if anti-entropy alone converges the replicas.
    fn converge_by_anti_entropy(&mut self) {
        let node_ids: Vec<u16> = self.nodes.keys().copied().collect();
        let mut disagreement = String::new();
        for round in 0..ANTI_ENTROPY_ROUNDS_MAX {
            match self.replicas_agree() {
                // A node that lost data answers reads only once a round found its ranges equal
                // everywhere: the final reads at ALL need it.
                Ok(()) if self.nodes.values().any(Node::rebuilding) => {
                    disagreement = "replicas agree, but a node has not finished restoring lost data".into();
                }
                Ok(()) => {
                    self.log(format_args!("settle: replicas agree after {round} anti-entropy rounds"));
                    return;
                }
                Err(found) => disagreement = found,
            }
            for &node in &node_ids {
                self.anti_entropy_round(node);
            }
            self.run_for(2_000);
        }
        self.violations.push(format!(
            "replicas still disagree after {ANTI_ENTROPY_ROUNDS_MAX} anti-entropy rounds: {disagreement}"
        ));
    }

    fn running_mut(&mut self, node: u16, generation: u64) -> Option<&mut crate::node::Running> {
        let node = self.nodes.get_mut(&node)?;
        if node.generation != generation {
            return None;
        }
        node.running.as_mut()
    }

    /// The addresses a node announces itself to: every other member, as a restarted shard
    /// announces to its seeds and the members it remembers.
    fn seeds(&self, node_id: u16) -> Vec<SocketAddr> {
        self.nodes.keys().filter(|&&other| other != node_id).map(|&other| peer_address(other)).collect()
    }

    fn start(&mut self, node_id: u16) {
        let seeds = self.seeds(node_id);
        let membership_seed = self.rng.random();
        let now_ms = self.now_ms;
        let node = self.nodes.get_mut(&node_id).expect("a node of the run");
        if let Err(error) = node.start(now_ms, membership_seed, &seeds) {
            self.violations.push(error);
            return;
        }
        let generation = node.generation;
        let ranges: Vec<(TokenRange, Vec<u16>)> = self
            .ring
            .ranges(REPLICATION_FACTOR)
            .into_iter()
            .map(|range| (TokenRange { start: range.start, end: range.end }, range.replicas))
            .collect();
        let running = node.running.as_ref().expect("just started");
        match Healing::new(node_id, &ranges, &running.engines) {
            Ok(healing) => *running.healing.borrow_mut() = Some(healing),
            Err(error) => self.violations.push(format!("n{node_id} could not build its trees: {error}")),
        }
        if self.nodes[&node_id].rebuilding() {
            self.log(format_args!("n{node_id} started (start {generation}), restoring lost data"));
        } else {
            self.log(format_args!("n{node_id} started (start {generation})"));
        }
        let at = self.now_ms + self.rng.random_range(ANTI_ENTROPY_INTERVAL_MS / 2..=ANTI_ENTROPY_INTERVAL_MS);
        self.scheduler.schedule(at, Event::AntiEntropy { node: node_id, generation });
        self.scheduler
            .schedule(self.now_ms + HINT_REPLAY_INTERVAL_MS, Event::HintReplay { node: node_id, generation });
        let at = self.now_ms + self.rng.random_range(500..=1_500);
        self.scheduler.schedule(at, Event::Maintenance { node: node_id, generation });
        self.flush_membership(node_id);
    }

    /// Partitions, heals, crashes and restarts, one at a time at random intervals.
    fn fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let node_ids: Vec<u16> = self.nodes.keys().copied().collect();
        let running: Vec<u16> =
            node_ids.iter().copied().filter(|node| self.nodes[node].running.is_some()).collect();
        let crashed = node_ids.len() - running.len();
        match self.rng.random_range(0..100u32) {
            0..40 if !self.network.is_partitioned() => self.partition(&node_ids),
            40..70 if crashed < self.config.crashed_max => {
                let node = running[self.rng.random_range(0..running.len())];
                let mode = if self.rng.random_bool(0.7) {
                    CrashMode::DropUnsynced
                } else {
                    CrashMode::TearLastWrite { sectors_kept: self.rng.random_range(0..8) }
                };
                self.crash(node, mode);
                let at = self.now_ms + self.rng.random_range(300..=8_000);
                self.scheduler.schedule(at, Event::Restart { node });
            }
            // A disk whose syncs or writes start failing poisons the engine (writes refused,
            // reads go on) until the operator restarts the node; counted as a crash, since it
            // ends in one.
            70..80 if crashed < self.config.crashed_max => {
                let node = running[self.rng.random_range(0..running.len())];
                let writes = self.rng.random_bool(0.5);
                let left = self.rng.random_range(0..5);
                self.nodes.get_mut(&node).expect("a node of the run").fail_disk(writes, left);
                let generation = self.nodes[&node].generation;
                let what = if writes { "write" } else { "sync" };
                self.log(format_args!("n{node} disk fails every {what} after {left} more"));
                let at = self.now_ms + self.rng.random_range(200..=3_000);
                self.scheduler.schedule(at, Event::OperatorRestart { node, generation });
            }
            // A disk loses data while its node is stopped (a table, or every file of a shard: a
            // replaced disk) and the operator starts the node again, allowing the missing tables.
            // Only when every version the node holds durably is durable on another node too, and
            // no node is still restoring lost data: losing a write's only copy is a loss no
            // replication undoes, and the checkers would rightly call it one.
            90..100 if crashed < self.config.crashed_max && !self.nodes.values().any(Node::rebuilding) => {
                let node = running[self.rng.random_range(0..running.len())];
                match self.held_elsewhere(node) {
                    Ok(true) => {
                        self.crash(node, CrashMode::DropUnsynced);
                        let shard = self.rng.random_range(0..self.nodes[&node].disks.len());
                        let whole = self.rng.random_bool(0.5);
                        let pick = self.rng.random_range(0..1024usize);
                        let node_state = self.nodes.get_mut(&node).expect("a node of the run");
                        match node_state.lose_data(shard, whole, |tables| pick % tables) {
                            Ok(removed) => self.log(format_args!(
                                "n{node} stopped; shard {shard} lost {}",
                                removed.join(", ")
                            )),
                            Err(error) => self.violations.push(format!("n{node}: {error}")),
                        }
                        let at = self.now_ms + self.rng.random_range(300..=8_000);
                        self.scheduler.schedule(at, Event::Restart { node });
                    }
                    Ok(false) => {}
                    Err(error) => self.violations.push(error),
                }
            }
            // An NTP step: the node's clock moves, within the bound, either way.
            80..90 if !running.is_empty() => {
                let node = running[self.rng.random_range(0..running.len())];
                let bound = self.config.clock_skew_ms_max;
                let skew_ms = self.rng.random_range(-bound..=bound);
                let node_state = self.nodes.get_mut(&node).expect("a node of the run");
                let previous = std::mem::replace(&mut node_state.skew_ms, skew_ms);
                self.log(format_args!("n{node} clock stepped from {previous}ms to {skew_ms}ms"));
            }
            _ => {}
        }
        let interval = self.config.fault_interval_ms;
        let at = self.now_ms + self.rng.random_range(interval / 2..=interval * 3 / 2);
        self.scheduler.schedule(at, Event::Fault);
    }

    /// Kills `node` and cuts its power; the operations it coordinated end unknown.
    fn crash(&mut self, node: u16, mode: CrashMode) {
        self.log(format_args!("n{node} crashed ({mode:?})"));
        let abandoned = self.nodes.get_mut(&node).expect("a node of the run").crash(mode);
        for index in abandoned {
            self.complete(index, Outcome::Unknown(checker::COORDINATOR_CRASHED.to_string()));
        }
    }

    fn partition(&mut self, node_ids: &[u16]) {
        self.partition += 1;
        let partition = self.partition;
        let node = node_ids[self.rng.random_range(0..node_ids.len())];
        let others: Vec<u16> = node_ids.iter().copied().filter(|&other| other != node).collect();
        match self.rng.random_range(0..4u32) {
            0 => {
                self.network.cut(&[node], &others);
                self.network.cut(&others, &[node]);
                self.log(format_args!("partition {partition}: n{node} isolated"));
            }
            1 => {
                let mut side: Vec<u16> =
                    node_ids.iter().copied().filter(|_| self.rng.random_bool(0.5)).collect();
                if side.is_empty() || side.len() == node_ids.len() {
                    side = vec![node];
                }
                let rest: Vec<u16> = node_ids.iter().copied().filter(|other| !side.contains(other)).collect();
                self.network.cut(&side, &rest);
                self.network.cut(&rest, &side);
                self.log(format_args!("partition {partition}: {side:?} | {rest:?}"));
            }
            2 => {
                self.network.cut(&[node], &others);
                self.log(format_args!("partition {partition}: n{node} cannot send"));
            }
            _ => {
                self.network.cut(&others, &[node]);
                self.log(format_args!("partition {partition}: n{node} cannot receive"));
            }
        }
        let at = self.now_ms + self.rng.random_range(300..=8_000);
        self.scheduler.schedule(at, Event::Heal { partition });
    }

    /// Starts a client operation (or a final read, `client` `None`) on its node. Returns its
    /// history index; it may be complete already (refused at once).
    fn issue(&mut self, client: Option<usize>, request: Request) -> usize {
        let Request { node: node_id, key, kind, consistency, swap } = request;
        let key_token = token(&key);
        let preference = self.ring.preference_list(key_token, REPLICATION_FACTOR);
        let replicas = preference.len();
        // A swap's commit waits for the level's acknowledgements, and at least a majority's.
        let required = match swap {
            Some(_) => consistency.required(replicas).max(Consistency::Quorum.required(replicas)),
            None => consistency.required(replicas),
        };
        let now_ms = self.now_ms;
        let node = self.nodes.get_mut(&node_id).expect("a node of the run");
        let wall_ms = node.wall_ms(now_ms);
        let mut operation = Operation {
            client,
            node: node_id,
            key: key.clone(),
            kind: kind.clone(),
            consistency,
            replicas,
            required,
            version: None,
            invoked_step: self.step,
            completed_step: None,
            outcome: Outcome::Pending,
        };
        let Some(running) = node.running.as_mut() else {
            let index = self.history.invoke(operation);
            if let (Some(expected), Kind::Put { value, .. }) = (swap, &kind) {
                self.swaps.swaps.insert(index, Swap { index, expected, value: value.clone() });
            }
            self.complete(index, Outcome::Failed("the node is down".to_string()));
            return index;
        };
        // The key's replicas this node believes up, itself first (the shard's ClusterView::targets).
        let up = running.membership.up();
        let mut targets: Vec<Target> = preference
            .iter()
            .filter(|replica| up.contains_key(replica))
            .map(|&node_id| shard_ring::target(&self.shard_rings, node_id, key_token))
            .collect();
        targets.sort_by_key(|target| target.node_id != node_id);
        // Replicas down now get a hint of a write once it is answered, unless every replica
        // asked refused it, as in the shard.
        let down: Vec<Target> = preference
            .iter()
            .filter(|replica| !up.contains_key(replica))
            .map(|&node_id| shard_ring::target(&self.shard_rings, node_id, key_token))
            .collect();
        if let (Some(expected), Kind::Put { value, .. }) = (swap, &kind) {
            let value = value.clone();
            let index = self.history.invoke(operation);
            let record = Swap { index, expected, value: value.clone() };
            self.log(format_args!(
                "{record} of {} via n{node_id} at {} ({required}/{replicas})",
                String::from_utf8_lossy(&key),
                consistency.as_str()
            ));
            self.swaps.swaps.insert(index, record);
            self.start_swap(swaps::SwapStart {
                node: node_id,
                index,
                key,
                expected,
                value,
                targets,
                replicas,
                commit_required: required,
            });
            return index;
        }
        // The planted bug of a coordinator that answers a write one acknowledgement early.
        let write_required = match self.config.sabotage {
            Some(Sabotage::CoordinatorAcksEarly) => required.saturating_sub(1).max(1),
            _ => required,
        };
        let mut outputs = Vec::new();
        let started = match kind {
            Kind::Get => running.coordinator.read(now_ms, key, &targets, required, &mut outputs),
            Kind::Put { value, ttl_ms } => {
                let version = running.clock.next_version(wall_ms);
                operation.version = Some(version);
                // As the shard does: a TTL becomes an absolute expiry set by the coordinator.
                let expires_at_ms = ttl_ms.map(|ttl_ms| wall_ms.saturating_add(ttl_ms));
                let entry = PeerEntry { version, value: PeerValue::Live { data: value, expires_at_ms } };
                running.coordinator.write(now_ms, key, entry, &targets, write_required, &mut outputs)
            }
            Kind::Delete => {
                let version = running.clock.next_version(wall_ms);
                operation.version = Some(version);
                let entry = PeerEntry { version, value: PeerValue::Tombstone { deleted_at_ms: wall_ms } };
                running.coordinator.write(now_ms, key, entry, &targets, write_required, &mut outputs)
            }
        };
        if let Ok(request_id) = started {
            if operation.is_write() {
                running.coordinator.hint_down_replicas(request_id, down);
            }
        }
        let generation = node.generation;
        let line = operation.to_string();
        let index = self.history.invoke(operation);
        self.log(format_args!("#{index} {line}"));
        match started {
            Ok(request_id) => {
                self.nodes
                    .get_mut(&node_id)
                    .and_then(|node| node.running.as_mut())
                    .expect("running")
                    .requests
                    .insert(request_id, index);
                let at = now_ms + self.config.replica_timeout_ms;
                self.scheduler.schedule(at, Event::CoordinatorTick { node: node_id, generation });
                self.dispatch(node_id, outputs);
            }
            // Refused before anything was sent: certainly not applied.
            Err(error) => self.complete(index, Outcome::Failed(error.to_string())),
        }
        index
    }

    /// Records an operation's outcome and lets its client go on.
    fn complete(&mut self, index: usize, outcome: Outcome) {
        self.log(format_args!("#{index} {outcome}"));
        self.history.complete(index, self.step, outcome);
        if let Some(done) = self.final_reads_done.as_mut() {
            done.push(index);
        }
        if let Some(client) = self.history.operations[index].client {
            self.clients[client].in_flight = None;
            // A swap follows the read it swaps from at once.
            let at = if self.clients[client].swaps_next() {
                self.now_ms
            } else {
                self.now_ms + self.rng.random_range(0..=self.config.think_ms_max)
            };
            self.scheduler.schedule(at, Event::ClientNext { client });
        }
    }

    fn reply(&mut self, node_id: u16, request_id: u64, reply: CoordinatorReply) {
        if self.on_swap_commit_reply(node_id, request_id, &reply) {
            return;
        }
        let Some(wall_ms) = self.nodes.get(&node_id).map(|node| node.wall_ms(self.now_ms)) else { return };
        let max_skew_ms = self.config.max_clock_skew_ms;
        let Some(running) = self.nodes.get_mut(&node_id).and_then(|node| node.running.as_mut()) else {
            return;
        };
        let Some(index) = running.requests.remove(&request_id) else { return };
        let is_write = self.history.operations[index].is_write();
        let outcome = match reply {
            CoordinatorReply::Written { version } => {
                assert_eq!(
                    Some(version),
                    self.history.operations[index].version,
                    "a write answers its own version"
                );
                Outcome::Written
            }
            CoordinatorReply::Found(entry) => {
                // As the shard does: a read's coordinator observes the version it returns when
                // it lies within the skew bound.
                if let Some(entry) = &entry {
                    let _ = running.clock.observe_remote(entry.version, wall_ms, max_skew_ms);
                }
                Outcome::Read(entry)
            }
            // Refused before anything was sent, or by every replica before applying it.
            CoordinatorReply::Failed(
                error @ (CoordinatorError::Unavailable { .. }
                | CoordinatorError::Overloaded { .. }
                | CoordinatorError::ReplicasFailed { .. }),
            ) => Outcome::Failed(error.to_string()),
            CoordinatorReply::Failed(error) if is_write => Outcome::Unknown(error.to_string()),
            CoordinatorReply::Failed(error) => Outcome::Failed(error.to_string()),
        };
        self.complete(index, outcome);
    }

    /// Runs a coordinator's commands from `node_id`.
    fn dispatch(&mut self, node_id: u16, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, envelope } => {
                    let frame = Message::encode_peer(&envelope);
                    if matches!(
                        envelope.message,
                        PeerMessage::Replicate { .. } | PeerMessage::PaxosCommit { .. }
                    ) {
                        self.count_write(node_id, envelope.request_id, frame.len() as u64);
                    }
                    self.send_between_shards(
                        node_id,
                        0,
                        to.node_id,
                        Some(to.shard),
                        None,
                        Payload::Peer(frame),
                    );
                }
                Output::Reply { request_id, reply } => self.reply(node_id, request_id, reply),
                Output::Hint { to, key, entry } => self.store_hint(node_id, to.node_id, key, entry),
            }
        }
    }

    /// Counts a write sent to a replica by `node_id`'s coordinator: a repair when it belongs to
    /// a read (request id 0 is a background repair), a client's write otherwise.
    fn count_write(&mut self, node_id: u16, request_id: u64, bytes: u64) {
        let of_a_read = request_id == 0
            || self.nodes[&node_id]
                .running
                .as_ref()
                .and_then(|running| running.requests.get(&request_id))
                .is_some_and(|&index| !self.history.operations[index].is_write());
        if of_a_read {
            self.traffic.read_repair_messages += 1;
            self.traffic.read_repair_bytes += bytes;
        } else {
            self.traffic.write_messages += 1;
            self.traffic.write_bytes += bytes;
        }
    }

    /// Counts an anti-entropy message of `bytes`.
    fn count_anti_entropy(&mut self, bytes: usize) {
        self.traffic.anti_entropy_messages += 1;
        self.traffic.anti_entropy_bytes += bytes as u64;
    }

    fn send(&mut self, from: u16, to: u16, to_generation: Option<u64>, payload: Payload) {
        self.send_between_shards(from, 0, to, None, to_generation, payload);
    }

    /// Sends from shard `from_shard` of `from` to shard `to_shard` of `to` (`None`: the shard
    /// owning the key).
    fn send_between_shards(
        &mut self,
        from: u16,
        from_shard: u32,
        to: u16,
        to_shard: Option<u32>,
        to_generation: Option<u64>,
        payload: Payload,
    ) {
        match &payload {
            Payload::Membership(data) => {
                self.traffic.membership_messages += 1;
                self.traffic.membership_bytes += data.len() as u64;
            }
            Payload::Peer(frame) => {
                self.traffic.peer_messages += 1;
                self.traffic.peer_bytes += frame.len() as u64;
            }
        }
        let from_generation = self.nodes[&from].generation;
        let delays = self.network.plan(&mut self.rng, from, to);
        for delay in delays {
            let message = Message {
                from,
                to,
                from_generation,
                to_generation,
                to_shard,
                from_shard,
                payload: payload.clone(),
            };
            self.scheduler.schedule(self.now_ms + delay, Event::Deliver(message));
        }
    }

    fn deliver(&mut self, message: Message) {
        let Message { from, to, from_generation, to_generation, to_shard, from_shard, payload } = message;
        let node = &self.nodes[&to];
        if node.running.is_none() || !self.network.delivers(from, to) {
            return;
        }
        if to_generation.is_some_and(|generation| generation != node.generation) {
            return;
        }
        match payload {
            Payload::Membership(data) => {
                let now_ms = self.now_ms;
                let running =
                    self.nodes.get_mut(&to).and_then(|node| node.running.as_mut()).expect("running");
                running.membership.handle_data(&data, now_ms);
                self.flush_membership(to);
            }
            Payload::Peer(frame) => {
                let envelope = match ringkv_wire::peer_codec::parse_peer(&frame) {
                    Ok(envelope) => envelope,
                    Err(error) => {
                        self.violations.push(format!("n{to} could not parse a frame from n{from}: {error}"));
                        return;
                    }
                };
                match node.serve(&envelope, to_shard, self.now_ms) {
                    Served::Promise(pending) => {
                        let (at, generation) = (pending.due_ms, node.generation);
                        let reply = (to_shard.unwrap_or(0), from, from_generation);
                        let pending = Box::new(pending);
                        self.scheduler.schedule(at, Event::Promise { node: to, generation, pending, reply });
                    }
                    Served::Answer(answer) => {
                        let bytes =
                            self.send_answer((to, to_shard.unwrap_or(0)), (from, from_generation), &answer);
                        if envelope.request_id & healing::HEALING_REQUEST_BIT != 0 {
                            self.count_anti_entropy(bytes);
                        }
                    }
                    Served::NotARequest if envelope.request_id & healing::HEALING_REQUEST_BIT != 0 => {
                        self.on_healing_answer(to, from, envelope);
                    }
                    Served::NotARequest if envelope.request_id & swaps::SWAP_REQUEST_BIT != 0 => {
                        self.on_swap_answer(to, Target { node_id: from, shard: from_shard }, envelope);
                    }
                    Served::NotARequest => {
                        let running =
                            self.nodes.get_mut(&to).and_then(|node| node.running.as_mut()).expect("running");
                        let mut outputs = Vec::new();
                        running.coordinator.on_reply(
                            Target { node_id: from, shard: from_shard },
                            envelope,
                            &mut outputs,
                        );
                        self.dispatch(to, outputs);
                    }
                }
            }
        }
    }

    /// Sends `answer` from shard `shard` of `node` to the incarnation `to_generation` of node `to`
    /// that asked; returns the frame's bytes.
    fn send_answer(
        &mut self,
        (node, shard): (u16, u32),
        (to, to_generation): (u16, u64),
        answer: &PeerEnvelope,
    ) -> usize {
        let frame = Message::encode_peer(answer);
        let bytes = frame.len();
        self.send_between_shards(node, shard, to, None, Some(to_generation), Payload::Peer(frame));
        bytes
    }

    /// Sends a node's membership datagrams, logs its membership events and schedules its next
    /// membership timer.
    fn flush_membership(&mut self, node_id: u16) {
        let node = self.nodes.get_mut(&node_id).expect("a node of the run");
        let generation = node.generation;
        let running = node.running.as_mut().expect("running");
        let renewed = running.membership.identity().generation;
        if renewed != running.identity_generation {
            running.identity_generation = renewed;
            let _ = writeln!(
                self.trace,
                "{:>7} n{node_id} renewed its identity to generation {} (a peer declared it down)",
                self.now_ms - START_MS,
                renewed.wrapping_sub(START_MS)
            );
        }
        let datagrams: Vec<_> = running.membership.drain_outbox().collect();
        let events: Vec<_> = running.membership.drain_events().collect();
        let mut tick_at = None;
        if let Some(deadline) = running.membership.next_deadline().map(|deadline| deadline.max(self.now_ms)) {
            if running.membership_tick_at.is_none_or(|scheduled| deadline < scheduled) {
                running.membership_tick_at = Some(deadline);
                tick_at = Some(deadline);
            }
        }
        if let Some(at) = tick_at {
            self.scheduler.schedule(at, Event::MembershipTick { node: node_id, generation });
        }
        for event in events {
            match event {
                MembershipEvent::Up(identity) => self.log(format_args!(
                    "n{node_id} sees n{} up (generation {})",
                    identity.node_id,
                    identity.generation.wrapping_sub(START_MS)
                )),
                MembershipEvent::Down(identity) => {
                    self.log(format_args!("n{node_id} sees n{} down", identity.node_id))
                }
                MembershipEvent::Conflict { kept, refused } => self.log(format_args!(
                    "n{node_id} sees a node id conflict: kept {} refused {}",
                    kept.peer_address, refused.peer_address
                )),
                MembershipEvent::Refused { holder } => self
                    .violations
                    .push(format!("n{node_id} was refused its own id, held by {}", holder.peer_address)),
            }
        }
        for (address, data) in datagrams {
            match node_of(address).filter(|node| self.nodes.contains_key(node)) {
                Some(to) => self.send(node_id, to, None, Payload::Membership(data)),
                None => self
                    .violations
                    .push(format!("n{node_id} sent a datagram to an unknown address {address}")),
            }
        }
    }
}

/// The replicas of `key` that `membership` does not see up, as targets (the shard's
/// `ClusterView::down_replicas`).
fn down_replicas(
    ring: &ClusterRing,
    shard_rings: &BTreeMap<u16, ShardRing>,
    membership: &ringkv_replication::Membership<StdRng>,
    key: &[u8],
) -> Vec<Target> {
    let key_token = token(key);
    let up = membership.up();
    ring.preference_list(key_token, REPLICATION_FACTOR)
        .into_iter()
        .filter(|replica| !up.contains_key(replica))
        .map(|node_id| shard_ring::target(shard_rings, node_id, key_token))
        .collect()
}
