//! [`SimConfig`]: the shape of one run (cluster size, workload, fault rates), drawn from its
//! seed so that a seed names the whole run.

use rand::rngs::StdRng;
use rand::RngExt;

use crate::network::LinkFaults;

/// The simulation's clock at the start of a run (a plausible Unix time in ms).
pub const START_MS: u64 = 1_700_000_000_000;

/// The largest clock skew of any run, either way.
pub const CLOCK_SKEW_MS_MAX: i64 = 300;

/// Copies of each key.
pub const REPLICATION_FACTOR: usize = 3;

/// A bug planted on purpose, to show that the checkers catch what they claim to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// Node 1's replica acknowledges writes without storing them.
    ReplicaAcksWithoutApplying,
    /// Coordinators answer a write one acknowledgement early (QUORUM of 3 after one).
    CoordinatorAcksEarly,
    /// No node runs anti-entropy exchanges (hints still replay).
    NoAntiEntropy,
    /// A node that lost data answers reads before it has restored it.
    ServesWhileRebuilding,
    /// Every acceptor grants every Paxos prepare and accepts every proposal, whatever ballot it
    /// promised: two racing compare-and-swaps can then both be chosen from one state.
    AcceptorForgetsPromises,
    /// Every acceptor answers a prepare with the entry it read before recording the promise, so
    /// a commit landing between the two reads is reported without its entry.
    PromisesFromAStaleEntry,
}

/// Everything a run is made of besides its schedule.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes, 3 to 7.
    pub nodes: u16,
    /// Shards each node runs, each with its own engine, owning the token ranges the shard's
    /// own mapping gives it. Not drawn from the seed (1 unless asked for), so a seed's
    /// schedule is the same whatever the shard count.
    pub shards_per_node: usize,
    pub clients: usize,
    /// Operations per client.
    pub operations_per_client: usize,
    /// Distinct keys, few, so operations contend.
    pub keys: usize,
    /// Keys only compare-and-swaps touch (`cas-0`, ...): fewer still, so that swaps race. Puts
    /// and deletes never touch them (mixing plain writes with swaps is not linearizable).
    pub swap_keys: usize,
    /// Of a client's operations, the percentage that are swaps: a read at QUORUM, then a swap
    /// from what it read, through the same node. 0: none.
    pub swap_percent: u32,
    pub link_faults: LinkFaults,
    /// Each node's clock is off by up to this much, either way.
    pub clock_skew_ms_max: i64,
    /// A fault (partition, heal, crash, restart) happens every this many ms on average; 0: none.
    pub fault_interval_ms: u64,
    /// A client waits up to this long between operations.
    pub think_ms_max: u64,
    /// Nodes down at once, at most.
    pub crashed_max: usize,
    pub replica_timeout_ms: u64,
    pub max_clock_skew_ms: u64,
    /// A planted bug, for the checkers' own tests; `None` in every real run.
    pub sabotage: Option<Sabotage>,
    /// Each engine's memtable size: small in seeded runs, so they flush and compact often.
    pub memtable_bytes_max: usize,
    /// Whether every event goes into the trace (a scale run keeps only its summary).
    pub trace_events: bool,
    /// The final reads at ALL after settling, in flight at once: one in seeded runs (each key
    /// read in turn), many at scale.
    pub final_reads_in_flight: usize,
}

impl SimConfig {
    /// A run's configuration, drawn from the run's generator.
    pub fn draw(rng: &mut StdRng) -> Self {
        let nodes = rng.random_range(3..=7u16);
        // Calm runs check the happy path, harsh ones push every fault rate up.
        let (faulty, harsh) = match rng.random_range(0..100u32) {
            0..15 => (false, false),
            15..80 => (true, false),
            _ => (true, true),
        };
        let rate_max = if harsh { 0.4 } else { 0.1 };
        SimConfig {
            nodes,
            shards_per_node: 1,
            clients: rng.random_range(2..=4),
            operations_per_client: rng.random_range(30..=60),
            keys: rng.random_range(3..=10),
            link_faults: LinkFaults {
                loss: if faulty { rng.random_range(0.0..rate_max) } else { 0.0 },
                duplication: if faulty { rng.random_range(0.0..rate_max) } else { 0.0 },
                delay_ms_max: rng.random_range(1..=40),
            },
            // Up to 300 ms each way: versions may then lead a clock by up to 600 ms, past the
            // replicas' 500 ms bound, so some runs see writes refused for clock skew.
            clock_skew_ms_max: rng.random_range(0..=CLOCK_SKEW_MS_MAX),
            fault_interval_ms: match (faulty, harsh) {
                (false, _) => 0,
                (true, false) => rng.random_range(300..=3_000),
                (true, true) => rng.random_range(100..=1_000),
            },
            think_ms_max: rng.random_range(10..=300),
            // Harsh runs may take down all nodes but one.
            crashed_max: match (harsh, nodes >= 5) {
                (true, _) => usize::from(nodes) - 1,
                (false, true) => 2,
                (false, false) => 1,
            },
            replica_timeout_ms: 1_000,
            max_clock_skew_ms: 500,
            sabotage: None,
            memtable_bytes_max: 2 << 10,
            trace_events: true,
            final_reads_in_flight: 1,
            // Drawn last, so that the draws above are those of the runs before swaps existed.
            swap_keys: rng.random_range(1..=3),
            swap_percent: 20,
        }
    }

    /// A capacity-planning run: `nodes` nodes, `keys` keys, `clients` clients issuing
    /// `operations_per_client` operations each, under churn (crashes and restarts of up to two
    /// nodes at a time, partitions, lossy links) but calm clocks, and no event trace.
    pub fn scale(nodes: u16, keys: usize, clients: usize, operations_per_client: usize) -> Self {
        SimConfig {
            nodes,
            shards_per_node: 1,
            clients,
            operations_per_client,
            keys,
            link_faults: LinkFaults { loss: 0.01, duplication: 0.01, delay_ms_max: 20 },
            clock_skew_ms_max: 50,
            fault_interval_ms: 2_000,
            think_ms_max: 20,
            crashed_max: 2,
            replica_timeout_ms: 1_000,
            max_clock_skew_ms: 500,
            sabotage: None,
            memtable_bytes_max: 4 << 20,
            trace_events: false,
            final_reads_in_flight: 512,
            swap_keys: 0,
            swap_percent: 0,
        }
    }
}
