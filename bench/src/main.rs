//! # ringkv-bench
//!
//! ringkv's benchmark tool. Speed is measured here, never in timed tests; the figures go in
//! `docs/benchmarks.md` with the command, the machine and the date.
//!
//! ## Subcommands
//! - `engine`: the storage engine in-process on one shard, with db_bench's workloads
//!   (`fillrandom`, `readrandom`, `overwrite`, ...) so the figures sit beside RocksDB's
//!   (`bench/compare/engine-vs-rocksdb.sh` runs both).
//! - `load`: YCSB's load phase against a server: inserts keys `user000000000000` ... in order.
//! - `run`: a YCSB core workload (a to f) against a server for a fixed time, closed loop or
//!   open loop at a fixed rate (`--rate`, coordinated-omission correct); HDR latencies per
//!   operation, `--json` for scripts, `--hdr-dir` for `.hgrm` files and PNG charts of latency by
//!   percentile. Targets are `ringkv://host:port` and `redis://host:port`, so Redis can be
//!   measured by the same tool (`bench/compare/server-vs-redis.sh`).
//!   A node with users configured is authenticated with `RINGKV_PASSWORD` (and `RINGKV_USER`),
//!   as the `ringkv` command-line client reads them.
//! - `sweep`: open-loop runs at rates chosen by stepping up (`--search step`) or bisecting
//!   (`--search bisect`) to find the highest rate at which p99 meets an SLO; a CSV and a PNG chart
//!   of every run, `.hgrm` files and charts per run.
//! - `chaos`: real `ringkv serve` processes in network namespaces under real faults (partitions,
//!   loss, pauses, kill -9, clock offsets), a recorded history, and the simulator's checkers on
//!   it; `docs/reliability.md` has the scenarios and their figures.
//!
//! ## Layout
//! - [`engine`]: the `engine` subcommand: options, the benchmarks, the report.
//! - [`workload`]: what a benchmark writes: db_bench-format keys and cheap pseudo-random values.
//! - [`histogram`]: per-operation latency recording and its percentiles.
//! - [`key_set`]: which keys a run has written, to check reads and to count live keys.
//! - [`process_memory`]: this process's resident memory, from `/proc/self/status`.
//! - [`data_directory`]: preparing the benchmark's directory (empty, not on tmpfs).
//! - [`run`]: the `load` and `run` subcommands: threads, connections, closed and open loop.
//! - [`sweep`]: the `sweep` subcommand.
//! - [`rate_search`]: which rate a sweep offers next, from the outcomes so far (step or bisect).
//! - [`chart`]: PNG charts: latency by percentile, and a sweep's latency against throughput.
//! - [`ycsb`]: YCSB's core workloads: operation mixes and key names.
//! - [`distribution`]: YCSB's request distributions (uniform, scrambled zipfian, latest).
//! - [`target`]: the store measured (`ringkv://` or `redis://`) behind one interface.
//! - [`redis`]: a pipelined RESP2 `GET`/`SET` client on glommio.
//! - [`report`]: merged measurements, the terminal summary, the JSON line, `.hgrm` files and
//!   latency charts.
//! - [`cpu_usage`]: the load generator's own CPU time.
//! - [`progress`]: the live progress line on a terminal.
//! - [`chaos`]: the `chaos` subcommand: fault scenarios on real processes, checked like Jepsen.

mod chaos;
mod chart;
mod cpu_usage;
mod data_directory;
mod distribution;
mod engine;
mod histogram;
mod key_set;
mod process_memory;
mod progress;
mod rate_search;
mod redis;
mod report;
mod run;
mod sweep;
mod target;
mod timeline;
mod workload;
mod ycsb;

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
    /// Inserts the YCSB key space (`user` + zero-padded number) into a server.
    Load(run::LoadArgs),
    /// Runs a YCSB core workload against a server and reports throughput and latency.
    Run(run::RunArgs),
    /// Searches, in open loop, for the highest offered rate at which p99 meets the SLO (stepping
    /// up or bisecting); reports it, with a CSV and a chart of every run.
    Sweep(sweep::SweepArgs),
    /// Runs real nodes under a fault scenario (partitions, loss, pauses, kill -9, clock skew),
    /// checks the recorded history like Jepsen, and exits 0 only when every checker passes.
    Chaos(chaos::ChaosArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Engine(args) => engine::run(args),
        Command::Load(args) => run::load(args),
        Command::Run(args) => run::run(args),
        Command::Sweep(args) => sweep::sweep(args),
        Command::Chaos(args) => chaos::run(args),
    }
}
