//! `ringkv-sim`: runs the deterministic cluster simulation for one seed (printing its trace) or
//! for many (printing the seeds that fail).

use std::process::ExitCode;

use clap::Parser;

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
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    if let Some(seed) = arguments.seed {
        let report = ringkv_sim::run(seed);
        print!("{}", report.trace);
        return if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let count = arguments.seeds.unwrap_or(100);
    let mut failed = 0u64;
    let mut operations = 0usize;
    for seed in arguments.start..arguments.start + count {
        let report = ringkv_sim::run(seed);
        operations += report.operations;
        if !report.violations.is_empty() {
            failed += 1;
            println!("seed {seed} FAILED (replay: ringkv-sim --seed {seed})");
            for violation in &report.violations {
                println!("  {violation}");
            }
        }
    }
    println!("{count} seeds from {}: {failed} failed, {operations} operations", arguments.start);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
