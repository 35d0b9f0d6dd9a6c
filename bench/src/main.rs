//! # ringkv-bench
//!
//! ringkv's benchmark tool. Speed is measured here, never in timed tests; the figures go in
//! `docs/benchmarks.md` with the command, the machine and the date.
//!
//! ## Subcommands
//! - `engine`: the storage engine in-process on one shard, with db_bench's workloads
//!   (`fillrandom`, `readrandom`, `overwrite`, ...) so the figures sit beside RocksDB's
//!   (`shared/bench/engine-vs-rocksdb.sh` runs both).
//!
//! ## Layout
//! - [`engine`]: the `engine` subcommand: options, the benchmarks, the report.
//! - [`workload`]: what a benchmark writes: db_bench-format keys and cheap pseudo-random values.
//! - [`histogram`]: per-operation latency recording and its percentiles.
//! - [`key_set`]: which keys a run has written, to check reads and to count live keys.
//! - [`process_memory`]: this process's resident memory, from `/proc/self/status`.
//! - [`data_directory`]: preparing the benchmark's directory (empty, not on tmpfs).

mod data_directory;
mod engine;
mod histogram;
mod key_set;
mod process_memory;
mod workload;

use clap::{Parser, Subcommand};

/// ringkv benchmarks.
#[derive(Parser, Debug)]
#[command(name = "ringkv-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the storage engine in-process on one shard with db_bench's workloads.
    Engine(engine::EngineArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Engine(args) => engine::run(args),
    }
}
