//! Quorum writes and reads across 3–5 nodes through an in-memory, seeded network in one thread:
//! the coordinator and replica logic exactly as the shard runs them, with messages delivered in
//! a random order, late, duplicated or lost, and nodes going down and coming back.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use rand_foca::rngs::StdRng;
use rand_foca::{RngExt, SeedableRng};
use ringkv_replication::coordinator::Output;
use ringkv_replication::{
    default_tokens, replica, ClusterRing, Coordinator, CoordinatorConfig, CoordinatorError, CoordinatorReply,
    HybridClock, Target,
};
use ringkv_wire::peer::{PeerEntry, PeerEnvelope, PeerValue};
use ringkv_wire::token::token;

const REPLICAS: usize = 3;
const TIMEOUT_MS: u64 = 1_000;
const MAX_SKEW_MS: u64 = 500;

struct Node {
    clock: HybridClock,
    coordinator: Coordinator,
    /// The replica's store: the highest version of every key, as the engine keeps it.
    store: BTreeMap<Bytes, PeerEntry>,
    up: bool,
    replies: HashMap<u64, CoordinatorReply>,
}

struct InFlight {
    deliver_at: u64,
    from: Target,
    to: Target,
    envelope: PeerEnvelope,
}

/// Network faults, as probabilities.
#[derive(Clone, Copy, Default)]
struct Faults {
    loss: f64,
    duplication: f64,
    delay_ms_max: u64,
}

struct Cluster {
    nodes: BTreeMap<u16, Node>,
    ring: ClusterRing,
    network: Vec<InFlight>,
    rng: StdRng,
    faults: Faults,
    now_ms: u64,
}

fn target(node_id: u16) -> Target {
    Target { node_id, shard: 0 }
}

impl Cluster {
    fn new(node_count: u16, seed: u64) -> Self {
        let mut nodes = BTreeMap::new();
        let mut ring = ClusterRing::new();
        for node_id in 1..=node_count {
            ring.insert(node_id, &default_tokens(node_id, 16));
            let config =
                CoordinatorConfig { node_id, shard: 0, replica_timeout_ms: TIMEOUT_MS, pending_max: 64 };
            nodes.insert(
                node_id,
                Node {
                    clock: HybridClock::new(node_id),
                    coordinator: Coordinator::new(config),
                    store: BTreeMap::new(),
                    up: true,
                    replies: HashMap::new(),
                },
            );
        }
        Cluster {
            nodes,
            ring,
            network: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            faults: Faults::default(),
            now_ms: 1_000_000,
        }
    }

    /// The key's live replicas, the coordinator's own copy first.
    fn targets(&self, coordinator: u16, key: &[u8]) -> Vec<Target> {
        let mut replicas: Vec<u16> = self
            .ring
            .preference_list(token(key), REPLICAS)
            .into_iter()
            .filter(|node| self.nodes[node].up)
            .collect();
        replicas.sort_by_key(|&node| node != coordinator);
        replicas.into_iter().map(target).collect()
    }

    fn send(&mut self, from: Target, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, envelope } => {
                    let copies = if self.rng.random_bool(self.faults.duplication) { 2 } else { 1 };
                    for _ in 0..copies {
                        if self.rng.random_bool(self.faults.loss) {
                            continue;
                        }
                        let delay = self.rng.random_range(0..=self.faults.delay_ms_max);
                        let deliver_at = self.now_ms + delay;
                        self.network.push(InFlight { deliver_at, from, to, envelope: envelope.clone() });
                    }
                }
                Output::Reply { request_id, reply } => {
                    self.nodes.get_mut(&from.node_id).unwrap().replies.insert(request_id, reply);
                }
                // Hints are the shard's business; this network checks quorums without them.
                Output::Hint { .. } => {}
            }
        }
    }

    /// Delivers one message, chosen at random among those due; advances time when none is.
    fn step(&mut self) -> bool {
        if self.network.is_empty() {
            return false;
        }
        let earliest = self.network.iter().map(|message| message.deliver_at).min().unwrap();
        self.now_ms = self.now_ms.max(earliest);
        let due: Vec<usize> =
            (0..self.network.len()).filter(|&i| self.network[i].deliver_at <= self.now_ms).collect();
        let index = due[self.rng.random_range(0..due.len())];
        let InFlight { from, to, envelope, .. } = self.network.swap_remove(index);
        let now_ms = self.now_ms;
        let Some(node) = self.nodes.get_mut(&to.node_id) else { return true };
        if !node.up {
            return true;
        }
        let mut outputs = Vec::new();
        match replica::accept(&envelope, &node.clock, now_ms, MAX_SKEW_MS) {
            Ok(Some(replica::Work::Apply { key, entry })) => {
                let stored = node.store.entry(key).or_insert_with(|| entry.clone());
                if entry.version > stored.version {
                    *stored = entry;
                }
                let answer = replica::applied(&envelope, Ok(()));
                outputs.push(Output::Send { to: from, envelope: answer });
            }
            Ok(Some(replica::Work::Read { key, digest_only })) => {
                let entry = node.store.get(&key).cloned();
                if let Some(entry) = &entry {
                    node.clock.observe(entry.version);
                }
                let answer = replica::read_answer(&envelope, digest_only, Ok(entry));
                outputs.push(Output::Send { to: from, envelope: answer });
            }
            Ok(Some(
                replica::Work::Prepare { .. } | replica::Work::Propose { .. } | replica::Work::Commit { .. },
            )) => {
                unreachable!("this network carries no compare-and-swap")
            }
            Ok(None) => node.coordinator.on_reply(from, envelope, &mut outputs),
            Err(failure) => {
                outputs.push(Output::Send { to: from, envelope: replica::refusal(&envelope, failure) })
            }
        }
        self.send(to, outputs);
        true
    }

    fn tick(&mut self) {
        let now_ms = self.now_ms;
        let ids: Vec<u16> = self.nodes.keys().copied().collect();
        for node_id in ids {
            let mut outputs = Vec::new();
            self.nodes.get_mut(&node_id).unwrap().coordinator.tick(now_ms, &mut outputs);
            self.send(target(node_id), outputs);
        }
    }

    /// Runs the network until `request_id` on `node_id` is answered, firing timeouts when the
    /// network runs dry.
    fn wait(&mut self, node_id: u16, request_id: u64) -> CoordinatorReply {
        loop {
            if let Some(reply) = self.nodes.get_mut(&node_id).unwrap().replies.remove(&request_id) {
                return reply;
            }
            if !self.step() {
                self.now_ms += TIMEOUT_MS;
                self.tick();
            }
        }
    }

    /// Delivers everything in flight (background repairs included).
    fn settle(&mut self) {
        while self.step() {}
        self.now_ms += TIMEOUT_MS;
        self.tick();
    }

    fn put(&mut self, through: u16, key: &str, value: &str, required: usize) -> CoordinatorReply {
        let key = Bytes::copy_from_slice(key.as_bytes());
        let targets = self.targets(through, &key);
        let now_ms = self.now_ms;
        let node = self.nodes.get_mut(&through).unwrap();
        let version = node.clock.next_version(now_ms);
        let entry = PeerEntry {
            version,
            value: PeerValue::Live { data: Bytes::copy_from_slice(value.as_bytes()), expires_at_ms: None },
        };
        let mut outputs = Vec::new();
        match node.coordinator.write(now_ms, key, entry, &targets, required, &mut outputs) {
            Ok(request_id) => {
                self.send(target(through), outputs);
                self.wait(through, request_id)
            }
            Err(error) => CoordinatorReply::Failed(error),
        }
    }

    fn get(&mut self, through: u16, key: &str, required: usize) -> CoordinatorReply {
        let key = Bytes::copy_from_slice(key.as_bytes());
        let targets = self.targets(through, &key);
        let now_ms = self.now_ms;
        let mut outputs = Vec::new();
        let node = self.nodes.get_mut(&through).unwrap();
        match node.coordinator.read(now_ms, key, &targets, required, &mut outputs) {
            Ok(request_id) => {
                self.send(target(through), outputs);
                self.wait(through, request_id)
            }
            Err(error) => CoordinatorReply::Failed(error),
        }
    }

    fn replicas_of(&self, key: &str) -> Vec<u16> {
        self.ring.preference_list(token(key.as_bytes()), REPLICAS)
    }
}

fn value_of(reply: &CoordinatorReply) -> Option<(Bytes, u64)> {
    match reply {
        CoordinatorReply::Found(Some(PeerEntry { version, value: PeerValue::Live { data, .. } })) => {
            Some((data.clone(), *version))
        }
        CoordinatorReply::Found(_) => None,
        other => panic!("expected a read result, got {other:?}"),
    }
}

fn written(reply: &CoordinatorReply) -> u64 {
    match reply {
        CoordinatorReply::Written { version } => *version,
        other => panic!("expected a write to succeed, got {other:?}"),
    }
}

#[test]
fn quorum_writes_are_read_at_quorum_through_every_node() {
    for seed in 0..20 {
        let mut cluster = Cluster::new(5, seed);
        cluster.faults = Faults { delay_ms_max: 50, ..Faults::default() };
        for index in 0..20 {
            let key = format!("key-{index}");
            let through = 1 + (index % 5) as u16;
            let version = written(&cluster.put(through, &key, &format!("value-{index}"), 2));
            for reader in 1..=5 {
                let found = value_of(&cluster.get(reader, &key, 2));
                assert_eq!(
                    found,
                    Some((Bytes::from(format!("value-{index}")), version)),
                    "seed {seed} key {key}"
                );
            }
        }
    }
}

#[test]
fn one_node_down_quorum_goes_on_and_all_is_unavailable() {
    let mut cluster = Cluster::new(3, 7);
    cluster.nodes.get_mut(&3).unwrap().up = false;
    let version = written(&cluster.put(1, "k", "v", 2));
    assert_eq!(value_of(&cluster.get(2, "k", 2)), Some((Bytes::from("v"), version)));
    assert_eq!(
        cluster.put(1, "k", "w", 3),
        CoordinatorReply::Failed(CoordinatorError::Unavailable { alive: 2, required: 3 })
    );
    assert_eq!(
        cluster.get(1, "k", 3),
        CoordinatorReply::Failed(CoordinatorError::Unavailable { alive: 2, required: 3 })
    );
}

#[test]
fn a_read_at_all_repairs_the_replica_that_missed_the_write() {
    let mut cluster = Cluster::new(3, 11);
    cluster.nodes.get_mut(&3).unwrap().up = false;
    let version = written(&cluster.put(1, "k", "v", 2));
    cluster.settle();
    assert!(!cluster.nodes[&3].store.contains_key(&Bytes::from("k")));
    cluster.nodes.get_mut(&3).unwrap().up = true;
    // Node 3 alone still has nothing: a read at ONE through it, served by its own copy, misses.
    assert_eq!(value_of(&cluster.get(3, "k", 1)), None);
    assert_eq!(cluster.nodes[&1].coordinator.counters().read_repairs, 0);
    assert_eq!(value_of(&cluster.get(1, "k", 3)), Some((Bytes::from("v"), version)));
    assert_eq!(cluster.nodes[&3].store[&Bytes::from("k")].version, version, "repaired before answering");
    let counters = cluster.nodes[&1].coordinator.counters();
    assert_eq!((counters.read_repairs, counters.read_repair_replicas, counters.timeouts), (1, 1, 0));
    assert_eq!(value_of(&cluster.get(3, "k", 1)), Some((Bytes::from("v"), version)));
}

#[test]
fn a_quorum_read_repairs_the_replica_not_read_in_the_background() {
    let mut cluster = Cluster::new(3, 12);
    let replicas = cluster.replicas_of("k");
    let (coordinator, stale) = (replicas[0], replicas[2]);
    cluster.nodes.get_mut(&stale).unwrap().up = false;
    written(&cluster.put(coordinator, "k", "v", 2));
    cluster.settle();
    cluster.nodes.get_mut(&stale).unwrap().up = true;
    // Make the read disagree: the second replica read lost its copy.
    let second = replicas[1];
    cluster.nodes.get_mut(&second).unwrap().store.clear();
    // Only the coordinator and the stale node's partner are read at quorum when the stale node
    // comes last in the target order, so repair the read ones and the spare in the background.
    let found = cluster.get(coordinator, "k", 2);
    assert!(value_of(&found).is_some());
    cluster.settle();
    for node in replicas {
        assert!(cluster.nodes[&node].store.contains_key(&Bytes::from("k")), "node {node} repaired");
    }
}

#[test]
fn lost_acks_time_out_with_the_count_of_replicas_that_answered() {
    let mut cluster = Cluster::new(3, 3);
    cluster.faults = Faults { loss: 1.0, ..Faults::default() };
    match cluster.put(1, "k", "v", 2) {
        CoordinatorReply::Failed(CoordinatorError::Timeout { acks, required: 2, .. }) => assert!(acks <= 1),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(cluster.nodes[&1].coordinator.pending(), 0, "a timed-out request leaves nothing pending");
    assert_eq!(cluster.nodes[&1].coordinator.counters().timeouts, 1);
}

#[test]
fn duplicated_acks_count_once() {
    for seed in 0..20 {
        let mut cluster = Cluster::new(3, seed);
        let replicas = cluster.replicas_of("k");
        cluster.faults = Faults { duplication: 1.0, ..Faults::default() };
        // One replica receives but never answers: ALL must not be reached by duplicates.
        let silent = replicas[2];
        let through = replicas[0];
        let key = Bytes::from("k");
        let targets = cluster.targets(through, &key);
        let version = cluster.nodes[&through].clock.next_version(cluster.now_ms);
        let entry = PeerEntry { version, value: PeerValue::Tombstone { deleted_at_ms: 1 } };
        let mut outputs = Vec::new();
        let now_ms = cluster.now_ms;
        let request_id = cluster
            .nodes
            .get_mut(&through)
            .unwrap()
            .coordinator
            .write(now_ms, key, entry, &targets, 3, &mut outputs)
            .unwrap();
        cluster.send(target(through), outputs);
        cluster.nodes.get_mut(&silent).unwrap().up = false;
        match cluster.wait(through, request_id) {
            CoordinatorReply::Failed(CoordinatorError::Timeout { acks: 2, required: 3, .. }) => {}
            other => panic!("seed {seed}: expected a timeout with 2 acks, got {other:?}"),
        }
    }
}

#[test]
fn concurrent_writes_through_different_nodes_converge() {
    for seed in 0..30 {
        let mut cluster = Cluster::new(4, seed);
        cluster.faults = Faults { delay_ms_max: 20, duplication: 0.2, ..Faults::default() };
        // Start three writes of one key at once, then let the network interleave them.
        let key = Bytes::from("contended");
        let mut started = Vec::new();
        for through in 1..=3u16 {
            let targets = cluster.targets(through, &key);
            let now_ms = cluster.now_ms;
            let node = cluster.nodes.get_mut(&through).unwrap();
            let version = node.clock.next_version(now_ms);
            let entry = PeerEntry {
                version,
                value: PeerValue::Live { data: Bytes::from(format!("from-{through}")), expires_at_ms: None },
            };
            let mut outputs = Vec::new();
            let request_id =
                node.coordinator.write(now_ms, key.clone(), entry, &targets, 2, &mut outputs).unwrap();
            cluster.send(target(through), outputs);
            started.push((through, request_id));
        }
        for (through, request_id) in started {
            written(&cluster.wait(through, request_id));
        }
        cluster.settle();
        let replicas = cluster.replicas_of("contended");
        let entries: Vec<PeerEntry> =
            replicas.iter().map(|node| cluster.nodes[node].store[&key].clone()).collect();
        assert!(
            entries.windows(2).all(|pair| pair[0] == pair[1]),
            "seed {seed}: replicas diverge: {entries:?}"
        );
        let read = value_of(&cluster.get(4, "contended", 3)).unwrap();
        assert_eq!(read.1, entries[0].version);
    }
}

#[test]
fn randomized_faults_never_lose_a_quorum_write_to_a_quorum_read() {
    for seed in 0..40 {
        let mut cluster = Cluster::new(5, seed);
        cluster.faults = Faults { loss: 0.05, duplication: 0.05, delay_ms_max: 100 };
        let mut acknowledged: HashMap<String, u64> = HashMap::new();
        for step in 0..60u32 {
            let key = format!("key-{}", step % 7);
            let through = 1 + (step % 5) as u16;
            // Take a random node down or up now and then, keeping a quorum of every key up.
            if step % 10 == 0 {
                let node = cluster.rng.random_range(1..=5u16);
                let down = cluster.nodes.values().filter(|node| !node.up).count();
                let node_state = cluster.nodes.get_mut(&node).unwrap();
                node_state.up = !node_state.up || down > 0;
            }
            if step % 3 == 0 {
                if let CoordinatorReply::Written { version } =
                    cluster.put(through, &key, &format!("v{step}"), 2)
                {
                    acknowledged.insert(key.clone(), version);
                }
            } else if let CoordinatorReply::Found(entry) = cluster.get(through, &key, 2) {
                if let Some(&version) = acknowledged.get(&key) {
                    let seen = entry.map(|entry| entry.version);
                    assert!(
                        seen >= Some(version),
                        "seed {seed} step {step}: {key} read {seen:?} after ack of {version}"
                    );
                }
            }
        }
    }
}
