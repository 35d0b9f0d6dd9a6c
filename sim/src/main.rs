//! `ringkv-sim`: runs the deterministic cluster simulation for one seed (printing its trace) or
//! for many (printing the seeds that fail).

use std::process::ExitCode;

use clap::Parser;
use ringkv_sim::Sabotage;

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
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlantedBug {
    /// Node 1's replica acknowledges writes without storing them.
    ReplicaAcksWithoutApplying,
    /// Coordinators answer a write one acknowledgement early.
    CoordinatorAcksEarly,
    /// No node runs anti-entropy exchanges.
    NoAntiEntropy,
}

fn run(seed: u64, planted: Option<PlantedBug>) -> ringkv_sim::Report {
    match planted {
        None => ringkv_sim::run(seed),
        Some(PlantedBug::ReplicaAcksWithoutApplying) => {
            ringkv_sim::run_sabotaged(seed, Sabotage::ReplicaAcksWithoutApplying)
        }
        Some(PlantedBug::CoordinatorAcksEarly) => {
            ringkv_sim::run_sabotaged(seed, Sabotage::CoordinatorAcksEarly)
        }
        Some(PlantedBug::NoAntiEntropy) => ringkv_sim::run_sabotaged(seed, Sabotage::NoAntiEntropy),
    }
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    if let Some(seed) = arguments.seed {
        let report = run(seed, arguments.sabotage);
        print!("{}", report.trace);
        return if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let count = arguments.seeds.unwrap_or(100);
    let mut failed = 0u64;
    let mut operations = 0usize;
    let mut inversions = 0usize;
    for seed in arguments.start..arguments.start + count {
        let report = run(seed, arguments.sabotage);
        operations += report.operations;
        inversions += report.inversions;
        if !report.violations.is_empty() {
            failed += 1;
            println!("seed {seed} FAILED (replay: ringkv-sim --seed {seed})");
            for violation in &report.violations {
                println!("  {violation}");
            }
        }
    }
    println!(
        "{count} seeds from {}: {failed} failed, {operations} operations, {inversions} acknowledged writes \
         lost to an earlier one under clock skew",
        arguments.start
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
