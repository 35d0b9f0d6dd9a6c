//! `ringkv-sim`: runs the deterministic cluster simulation for one seed (printing its trace) or
//! for many (printing the seeds that fail).

use std::process::ExitCode;

use std::time::Instant;

use clap::Parser;
use ringkv_sim::{Sabotage, SimConfig};

/// Deterministic simulation of a ringkv cluster under network and node faults.
#[derive(Parser)]
#[command(name = "ringkv-sim")]
struct Arguments {
    /// Runs this one seed and prints its trace.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Runs this many seeds, from --start, and prints those that fail.
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed of --seeds.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Plants a bug on purpose, to see the checkers catch it.
    #[arg(long, value_enum)]
    sabotage: Option<PlantedBug>,
    /// Runs one capacity-planning run instead: a large cluster under churn (crashes and
    /// restarts, partitions, lossy links), checked like every run, printing the ring's
    /// ownership balance, the keys each node stores and the repair traffic. `--seed` picks
    /// its schedule (default 1).
    #[arg(long, conflicts_with_all = ["seeds", "sabotage"])]
    scale: bool,
    /// Nodes of a --scale run.
    #[arg(long, default_value_t = 100, requires = "scale", value_parser = clap::value_parser!(u16).range(3..=1000))]
    nodes: u16,
    /// Distinct keys of a --scale run.
    #[arg(long, default_value_t = 1_000_000, requires = "scale")]
    keys: usize,
    /// Clients of a --scale run, each with one operation in flight.
    #[arg(long, default_value_t = 1_000, requires = "scale")]
    clients: usize,
    /// Operations per client of a --scale run.
    #[arg(long, default_value_t = 1_000, requires = "scale")]
    operations: usize,
    /// Shards per node, each with its own engine and its share of the node's token ranges
    /// (the shard's own mapping). A seed's schedule does not depend on it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlantedBug {
    /// Node 1's replica acknowledges writes without storing them.
    ReplicaAcksWithoutApplying,
    /// Coordinators answer a write one acknowledgement early.
    CoordinatorAcksEarly,
    /// No node runs anti-entropy exchanges.
    NoAntiEntropy,
    /// A node that lost data (a table, or a whole disk) answers reads before it has restored it.
    ServesWhileRebuilding,
    /// Every Paxos acceptor grants every prepare and accepts every proposal, whatever it
    /// promised.
    AcceptorForgetsPromises,
    /// Every Paxos acceptor reads the key's entry before recording its promise, so a commit
    /// landing between the two is reported without its entry.
    PromisesFromAStaleEntry,
}

fn run(seed: u64, planted: Option<PlantedBug>, shards: u16) -> ringkv_sim::Report {
    let sabotage = planted.map(|planted| match planted {
        PlantedBug::ReplicaAcksWithoutApplying => Sabotage::ReplicaAcksWithoutApplying,
        PlantedBug::CoordinatorAcksEarly => Sabotage::CoordinatorAcksEarly,
        PlantedBug::NoAntiEntropy => Sabotage::NoAntiEntropy,
        PlantedBug::ServesWhileRebuilding => Sabotage::ServesWhileRebuilding,
        PlantedBug::AcceptorForgetsPromises => Sabotage::AcceptorForgetsPromises,
        PlantedBug::PromisesFromAStaleEntry => Sabotage::PromisesFromAStaleEntry,
    });
    ringkv_sim::Cluster::with_shards(seed, sabotage, usize::from(shards)).run()
}

/// Runs and prints a capacity-planning run.
fn scale(arguments: &Arguments) -> ExitCode {
    let seed = arguments.seed.unwrap_or(1);
    let config = SimConfig {
        shards_per_node: usize::from(arguments.shards),
        ..SimConfig::scale(arguments.nodes, arguments.keys, arguments.clients, arguments.operations)
    };
    println!(
        "scale run, seed {seed}: {} nodes of {} shard(s), N = {}, {} keys, {} clients x {} operations, a fault every {} ms \
         (crashes and restarts of up to {} nodes at once, partitions), links losing and duplicating {}%",
        config.nodes,
        config.shards_per_node,
        ringkv_sim::config::REPLICATION_FACTOR,
        config.keys,
        config.clients,
        config.operations_per_client,
        config.fault_interval_ms,
        config.crashed_max,
        config.link_faults.loss * 100.0
    );
    let started = Instant::now();
    let report = ringkv_sim::run_config(seed, config);
    let wall = started.elapsed();
    print!("{}", report.trace);
    println!(
        "{} operations in {:.1} s simulated ({} events, {:.1} s of wall time)",
        report.operations,
        report.simulated_ms as f64 / 1000.0,
        report.events,
        wall.as_secs_f64()
    );
    let spread = |values: Vec<f64>| {
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        (min, mean, max)
    };
    let (min, mean, max) = spread(report.ownership.values().map(|share| share * 100.0).collect());
    println!(
        "ring ownership per node (share of the token space replicated): min {min:.2}% mean {mean:.2}% \
         max {max:.2}% (max/mean {:.2})",
        max / mean
    );
    let (min, mean, max) = spread(report.stored_keys.values().map(|&count| count as f64).collect());
    println!(
        "entries stored per node: min {min:.0} mean {mean:.0} max {max:.0} (max/mean {:.2})",
        max / mean
    );
    let traffic = report.traffic;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let share = |bytes: u64| 100.0 * bytes as f64 / traffic.write_bytes.max(1) as f64;
    println!(
        "traffic: {} replica messages ({:.1} MiB); writes to replicas {} ({:.1} MiB); membership {} datagrams \
         ({:.1} MiB)",
        traffic.peer_messages,
        mib(traffic.peer_bytes),
        traffic.write_messages,
        mib(traffic.write_bytes),
        traffic.membership_messages,
        mib(traffic.membership_bytes)
    );
    println!(
        "repair traffic: hints replayed {} ({:.1} MiB, {:.2}% of the write bytes); read repair {} ({:.1} MiB, \
         {:.2}%); anti-entropy {} messages ({:.1} MiB, {:.2}%)",
        traffic.hint_messages,
        mib(traffic.hint_bytes),
        share(traffic.hint_bytes),
        traffic.read_repair_messages,
        mib(traffic.read_repair_bytes),
        share(traffic.read_repair_bytes),
        traffic.anti_entropy_messages,
        mib(traffic.anti_entropy_bytes),
        share(traffic.anti_entropy_bytes)
    );
    let loaded = report.traffic_under_load;
    println!(
        "of which while the clients ran (before the heal and settling): hints {} ({:.1} MiB); read repair {} \
         ({:.1} MiB); anti-entropy {} messages ({:.1} MiB)",
        loaded.hint_messages,
        mib(loaded.hint_bytes),
        loaded.read_repair_messages,
        mib(loaded.read_repair_bytes),
        loaded.anti_entropy_messages,
        mib(loaded.anti_entropy_bytes)
    );
    for violation in &report.violations {
        println!("VIOLATION {violation}");
    }
    println!("{} violations", report.violations.len());
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    if arguments.scale {
        return scale(&arguments);
    }
    if let Some(seed) = arguments.seed {
        let report = run(seed, arguments.sabotage, arguments.shards);
        print!("{}", report.trace);
        return if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let count = arguments.seeds.unwrap_or(100);
    let mut failed = 0u64;
    let mut operations = 0usize;
    let mut inversions = 0usize;
    let mut swaps = ringkv_sim::checker::SwapCounts::default();
    for seed in arguments.start..arguments.start + count {
        let report = run(seed, arguments.sabotage, arguments.shards);
        operations += report.operations;
        inversions += report.inversions;
        swaps.add(&report.swaps);
        if !report.violations.is_empty() {
            failed += 1;
            let shards = match arguments.shards {
                1 => String::new(),
                shards => format!(" --shards {shards}"),
            };
            println!("seed {seed} FAILED (replay: ringkv-sim --seed {seed}{shards})");
            for violation in &report.violations {
                println!("  {violation}");
            }
        }
    }
    println!(
        "{count} seeds from {} ({} shard(s) a node): {failed} failed, {operations} operations, {inversions} \
         acknowledged writes lost to an earlier one under clock skew; {} swaps: {swaps}",
        arguments.start,
        arguments.shards,
        swaps.total()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
