//! # ringkv-sim
//!
//! The deterministic cluster simulator: 3 to 7 ringkv nodes, each running the real
//! [`ringkv_replication::Coordinator`], replica logic, [`ringkv_replication::HybridClock`] and
//! [`ringkv_replication::Membership`] (foca), over the real storage engine on an in-memory disk,
//! all driven from one event heap by one seeded generator in one thread. The network delays,
//! reorders, loses, duplicates and partitions messages; nodes crash (losing unsynced writes) and
//! restart; clocks are skewed. Clients record a history, and checkers judge it once the cluster
//! is healed and settled (FoundationDB's simulation, TigerBeetle's VOPR, Jepsen's checkers).
//! Besides puts, deletes and gets, clients run compare-and-swaps on keys of their own: the real
//! Paxos proposer ([`ringkv_replication::paxos::PaxosCas`]) driven as the shard drives it, over
//! acceptors that keep their state in an engine per shard on a disk of its own.
//!
//! One seed decides everything: the cluster's shape, the schedule, every fault. The same seed
//! prints the same trace byte for byte, so a failure replays exactly with `--seed`.
//!
//! ```text
//!   seed ─▶ SimConfig ─▶ Cluster ─▶ Scheduler (time, sequence) ─┬─ Deliver ─▶ Node: replica / coordinator / foca
//!                                                             ├─ ticks: coordinator deadlines, foca timers
//!                                                             ├─ Client ops ─▶ History
//!                                                             └─ Faults: partitions, crashes, restarts
//!   settle (heal, restart, read all at ALL) ─▶ checker(History, engines) ─▶ Report
//! ```
//!
//! ## Layout
//! - [`cluster`]: [`Cluster`], one run: the event loop, its phases and the trace;
//!   [`cluster::swaps`], the compare-and-swaps a node coordinates.
//! - [`config`]: [`SimConfig`], the run's shape drawn from its seed.
//! - [`scheduler`]: [`scheduler::Scheduler`], the event heap.
//! - [`network`]: [`network::Network`], links with delay, loss, duplication and partitions.
//! - [`node`]: [`node::Node`], one node's process and disk, crash and restart.
//! - [`client`]: [`client::Client`], the workload of one client.
//! - [`history`]: [`history::History`], operations with their outcomes.
//! - [`checker`]: the properties checked at the end of a run.
//! - [`healing`]: [`healing::Healing`], a node's hints and anti-entropy over the real trees and
//!   exchange.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod healing;
pub mod history;
pub mod network;
pub mod node;
pub mod scheduler;

pub use cluster::{Cluster, Report, Traffic};
pub use config::{Sabotage, SimConfig};

/// Runs the simulation of `seed` and checks it.
pub fn run(seed: u64) -> Report {
    Cluster::new(seed, None).run()
}

/// Runs the simulation of `seed` with nodes of `shards` shards each (the schedule is the one
/// of `run(seed)`; the keys' owners within each node differ).
pub fn run_with_shards(seed: u64, shards: usize) -> Report {
    Cluster::with_shards(seed, None, shards).run()
}

/// Runs a capacity-planning cluster of `config` (see [`SimConfig::scale`]) under `seed`.
pub fn run_config(seed: u64, config: SimConfig) -> Report {
    Cluster::with_config(seed, config).run()
}

/// Runs `seed` with a bug planted on purpose; the checkers' own tests use it.
pub fn run_sabotaged(seed: u64, sabotage: Sabotage) -> Report {
    Cluster::new(seed, Some(sabotage)).run()
}
