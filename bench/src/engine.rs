//! The `engine` subcommand: the storage engine in-process on one shard, driven with db_bench's
//! workloads so its figures can sit beside RocksDB's.
//!
//! Everything runs on one glommio executor. The engine is opened through
//! [`EngineService`], so flushes and compactions run in the low-priority task queue and the
//! periodic WAL sync on its timer, as on a production shard. The benchmarks listed run in order
//! on the same database, as db_bench's do: `readrandom` reads what `fillrandom` wrote.
//!
//! | benchmark    | what it does (num = `--num`, the key space `[0, num)`)                        |
//! |--------------|--------------------------------------------------------------------------------|
//! | `fillseq`    | `--writes` puts of keys 0, 1, 2, ...                                           |
//! | `fillrandom` | `--writes` puts of uniformly random keys (repeats included)                    |
//! | `overwrite`  | the same as `fillrandom`, meant for a full database                            |
//! | `readrandom` | `--reads` gets of uniformly random keys, each checked against what was written |
//! | `fillsync`   | `fillrandom` with every put acknowledged only after its fdatasync              |
//! | `compact`    | flush, then merge every table into one; reports the space before and after    |
//!
//! The fills acknowledge writes as db_bench's default (`sync=false`, WAL on) does: once in the
//! WAL buffer, written to the OS in 1 MiB groups and fsynced every `--sync-interval-ms`
//! (`SyncMode::Periodic`). `fillsync` reopens the engine in `SyncMode::Always` if needed.
//!
//! `--concurrency C` keeps C operations in flight (C tasks sharing the operations; db_bench's
//! `--threads`, except that here `--writes`/`--reads` count all the operations, not one
//! thread's). The default, 1, is db_bench's one operation at a time.
//!
//! `--shards S` runs S engines, one per executor thread, as a node's shards do: each has its own
//! directory (`DIR/shard-I`), 1/S of the key space and 1/S of the operations. The shards start
//! each benchmark together, and a benchmark's row counts them together: operations summed, time
//! the slowest shard's, latency percentiles the worst shard's.

use crate::data_directory;
use crate::histogram::{LatencyRecorder, LatencySummary};
use crate::key_set::KeySet;
use crate::process_memory::resident_memory;
use crate::workload::{KeyEncoder, ValuePool};
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringkv_io::{DmaDisk, EngineService, ExecutorBuilder, PROBE_FILE_NAME};
use ringkv_replication::tictac::{TictacTree, TokenRange};
use ringkv_storage::{
    Engine, EngineOptions, EngineStats, SyncMode, WriteOutcome, KEY_BYTES_MAX, VALUE_BYTES_MAX,
};
use ringkv_wire::token::token;
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most operations one benchmark keeps in flight.
const CONCURRENCY_MAX: usize = 4096;
/// Most shards `--shards` runs.
const SHARDS_MAX: usize = 64;
/// How often a shard that has reached a benchmark's start looks whether the others have.
const SHARD_GATE_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// The longest `compact` waits for a background compaction it cannot start beside.
const COMPACTION_WAIT_MAX: Duration = Duration::from_secs(3600);
/// How often `compact` looks whether a background compaction has ended.
const COMPACTION_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One of the workloads `--benchmarks` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Benchmark {
    Fillseq,
    Fillrandom,
    Overwrite,
    Readrandom,
    Fillsync,
    Compact,
}

impl Benchmark {
    fn name(self) -> &'static str {
        match self {
            Benchmark::Fillseq => "fillseq",
            Benchmark::Fillrandom => "fillrandom",
            Benchmark::Overwrite => "overwrite",
            Benchmark::Readrandom => "readrandom",
            Benchmark::Fillsync => "fillsync",
            Benchmark::Compact => "compact",
        }
    }
}

/// Options of the `engine` subcommand. Names follow db_bench's where there is one.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Benchmarks to run in order on one database: fillseq, fillrandom, overwrite, readrandom,
    /// fillsync, compact.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fillrandom,readrandom")]
    pub benchmarks: Vec<Benchmark>,
    /// Key space: keys are the numbers in [0, num). Also the default for --writes and --reads.
    #[arg(long, default_value_t = 1_000_000)]
    pub num: u64,
    /// Puts per fill benchmark, all workers together (default: --num).
    #[arg(long)]
    pub writes: Option<u64>,
    /// Gets per read benchmark, all workers together (default: --num).
    #[arg(long)]
    pub reads: Option<u64>,
    /// Key size in bytes (db_bench format: the number big-endian, padded with '0').
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Directory of the database. Created if missing; must be empty unless --use-existing.
    #[arg(long)]
    pub dir: PathBuf,
    /// Benchmark the database already in --dir (reads cannot then be checked).
    #[arg(long)]
    pub use_existing: bool,
    /// Also print one JSON line per benchmark.
    #[arg(long)]
    pub json: bool,
    /// Seed of the key and value generators: the same seed gives the same run.
    #[arg(long, default_value_t = 301)]
    pub seed: u64,
    /// Operations in flight (tasks issuing them). 1 is db_bench's --threads=1.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// WAL fsync interval of the fills (db_bench's sync=false: the WAL reaches the OS, and the
    /// disk at this interval).
    #[arg(long, default_value_t = 1000)]
    pub sync_interval_ms: u64,
    /// Memtable size in MiB.
    #[arg(long, default_value_t = 64)]
    pub memtable_mb: usize,
    /// Block cache size in MiB. ringkv reads with O_DIRECT, so this cache plays the part the OS
    /// page cache plays for RocksDB: make it hold the data set for a like-for-like comparison.
    #[arg(long, default_value_t = 1024)]
    pub block_cache_mb: usize,
    /// Pin the executor to this CPU (default: unpinned, as db_bench is). With --shards, shard I
    /// is pinned to CPU PIN + I.
    #[arg(long)]
    pub pin: Option<usize>,
    /// Engines, one per executor thread, each with 1/S of the key space and the operations in
    /// its own DIR/shard-I, as a node's shards split keys. A row counts the shards together.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Append a `compact` benchmark, to measure space amplification.
    #[arg(long)]
    pub compact_after: bool,
    /// Write as a replicated shard does, keeping anti-entropy trees current: read the key's
    /// version first unless memory holds it, then update the tictac tree of its range (48
    /// ranges, as one shard of a three-node ring of 16 tokens each tracks). Measures what tree
    /// maintenance costs the write path.
    #[arg(long)]
    pub tictac: bool,
}

impl EngineArgs {
    fn writes(&self) -> u64 {
        self.writes.unwrap_or(self.num)
    }

    fn reads(&self) -> u64 {
        self.reads.unwrap_or(self.num)
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.benchmarks.is_empty(), "--benchmarks lists nothing");
        ensure!(self.num > 0, "--num must be positive");
        ensure!(
            (1..=KEY_BYTES_MAX).contains(&self.key_size),
            "--key-size must be within 1..={KEY_BYTES_MAX}"
        );
        ensure!(self.value_size <= VALUE_BYTES_MAX, "--value-size must be at most {VALUE_BYTES_MAX}");
        ensure!(
            u128::from(self.num) <= KeyEncoder::new(self.key_size).distinct_keys(),
            "{}-byte keys cannot hold {} distinct numbers",
            self.key_size,
            self.num
        );
        ensure!(
            (1..=CONCURRENCY_MAX).contains(&self.concurrency),
            "--concurrency must be within 1..={CONCURRENCY_MAX}"
        );
        ensure!(self.memtable_mb > 0, "--memtable-mb must be positive");
        ensure!((1..=SHARDS_MAX).contains(&self.shards), "--shards must be within 1..={SHARDS_MAX}");
        ensure!(
            self.num >= self.shards as u64,
            "--num must give every shard at least one key ({} shards)",
            self.shards
        );
        ensure!(
            !(self.use_existing && self.shards > 1),
            "--use-existing benchmarks one engine's directory; it cannot be split into shards"
        );
        ensure!(self.sync_interval_ms > 0, "--sync-interval-ms must be positive");
        Ok(())
    }
}

/// Runs the `engine` subcommand.
pub fn run(mut args: EngineArgs) -> Result<()> {
    args.validate()?;
    if args.compact_after && args.benchmarks.last() != Some(&Benchmark::Compact) {
        args.benchmarks.push(Benchmark::Compact);
    }
    let directory = data_directory::prepare(&args.dir, args.use_existing, &[PROBE_FILE_NAME])?;
    let filesystem = directory.filesystem.as_deref().unwrap_or("unknown");
    if filesystem == "tmpfs" {
        eprintln!(
            "warning: {} is on tmpfs, where glommio cannot use O_DIRECT: the figures will not \
             reflect the disk path ringkv runs on",
            directory.path.display()
        );
    }
    eprintln!(
        "ringkv-bench engine: num {} writes {} reads {} key {} B value {} B concurrency {} \
         memtable {} MiB block cache {} MiB sync interval {} ms; {} ({} on {})",
        args.num,
        args.writes(),
        args.reads(),
        args.key_size,
        args.value_size,
        args.concurrency,
        args.memtable_mb,
        args.block_cache_mb,
        args.sync_interval_ms,
        directory.path.display(),
        filesystem,
        directory.device.as_deref().unwrap_or("unknown device"),
    );
    if args.shards > 1 {
        return run_shards(args, directory.path);
    }
    let mut executor = ExecutorBuilder::new("ringkv-bench");
    if let Some(core) = args.pin {
        executor = executor.pin_to_core(core);
    }
    let path = directory.path;
    executor.run(async move { Runner::new(args, path, None).run_all().await })?
}

/// Runs the benchmarks on `args.shards` engines at once, one executor thread each, then prints
/// one row per benchmark for all of them together.
fn run_shards(args: EngineArgs, path: PathBuf) -> Result<()> {
    let shards = args.shards;
    let gate = Arc::new(ShardGate { arrived: AtomicUsize::new(0), shards });
    let rows = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::with_capacity(shards);
    let (keys, writes, reads) =
        (split(args.num, shards), split(args.writes(), shards), split(args.reads(), shards));
    for shard in 0..shards {
        let shard_args = EngineArgs {
            num: keys[shard].ops,
            writes: Some(writes[shard].ops),
            reads: Some(reads[shard].ops),
            seed: args.seed.wrapping_add(shard as u64),
            json: false,
            ..args.clone()
        };
        let shard_path = path.join(format!("shard-{shard}"));
        std::fs::create_dir_all(&shard_path).with_context(|| format!("creating {}", shard_path.display()))?;
        let mut executor = ExecutorBuilder::new(&format!("ringkv-bench-{shard}"));
        if let Some(core) = args.pin {
            executor = executor.pin_to_core(core + shard);
        }
        let sharing = ShardSharing { shard, gate: gate.clone(), rows: rows.clone() };
        let thread = executor
            .spawn(move || async move {
                Runner::new(shard_args, shard_path, Some(sharing))
                    .run_all()
                    .await
                    .map_err(|error| format!("{error:#}"))
            })
            .with_context(|| format!("starting shard {shard}'s executor"))?;
        threads.push(thread);
    }
    for (shard, thread) in threads.into_iter().enumerate() {
        let outcome = thread.join().map_err(|_| anyhow::anyhow!("shard {shard}'s thread panicked"))?;
        outcome
            .with_context(|| format!("shard {shard}'s executor"))?
            .map_err(|error| anyhow::anyhow!("shard {shard}: {error}"))?;
    }
    let rows = std::mem::take(&mut *rows.lock().expect("no shard thread is left to poison it"));
    print_shard_rows(&args, &rows)
}

/// Lets the shards of `--shards` start each benchmark together.
struct ShardGate {
    arrived: AtomicUsize,
    shards: usize,
}

impl ShardGate {
    /// Waits (without blocking the executor, whose flushes and compactions go on) until every
    /// shard has reached the start of benchmark number `position`.
    async fn wait(&self, position: usize) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        while self.arrived.load(Ordering::SeqCst) < (position + 1) * self.shards {
            glommio::timer::sleep(SHARD_GATE_POLL_INTERVAL).await;
        }
    }
}

/// What a shard of `--shards` shares with the others: the gate, and where its rows go.
struct ShardSharing {
    shard: usize,
    gate: Arc<ShardGate>,
    rows: Arc<Mutex<Vec<ShardRow>>>,
}

/// One shard's figures for one benchmark.
#[derive(Clone, Debug)]
struct ShardRow {
    shard: usize,
    position: usize,
    benchmark: Benchmark,
    ops: u64,
    seconds: f64,
    latency: LatencySummary,
    tables: usize,
    table_bytes: u64,
}

/// Prints, per benchmark, the shards together: operations summed over the slowest shard's time,
/// each latency percentile the worst shard's; with `--json` also every shard's own line.
fn print_shard_rows(args: &EngineArgs, rows: &[ShardRow]) -> Result<()> {
    println!(
        "{:<11} {:>6} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>6} {:>9}",
        "benchmark",
        "shards",
        "ops",
        "seconds",
        "ops/s",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "tables",
        "space_MB"
    );
    for position in 0..args.benchmarks.len() {
        let of_benchmark: Vec<&ShardRow> = rows.iter().filter(|row| row.position == position).collect();
        let Some(first) = of_benchmark.first() else { continue };
        let ops: u64 = of_benchmark.iter().map(|row| row.ops).sum();
        let seconds = of_benchmark.iter().map(|row| row.seconds).fold(0.0, f64::max);
        let worst = |pick: fn(&LatencySummary) -> f64| {
            of_benchmark.iter().map(|row| pick(&row.latency)).fold(0.0, f64::max)
        };
        let tables: usize = of_benchmark.iter().map(|row| row.tables).sum();
        let table_bytes: u64 = of_benchmark.iter().map(|row| row.table_bytes).sum();
        let ops_per_sec = ops as f64 / seconds.max(f64::MIN_POSITIVE);
        println!(
            "{:<11} {:>6} {:>9} {:>8.2} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>6} {:>9.1}",
            first.benchmark.name(),
            of_benchmark.len(),
            ops,
            seconds,
            ops_per_sec,
            worst(|latency| latency.p50_us),
            worst(|latency| latency.p99_us),
            worst(|latency| latency.p999_us),
            worst(|latency| latency.max_us),
            tables,
            table_bytes as f64 / (1u64 << 20) as f64,
        );
        if args.json {
            for row in &of_benchmark {
                println!(
                    "{}",
                    json!({
                        "benchmark": row.benchmark.name(), "shard": row.shard, "ops": row.ops,
                        "seconds": row.seconds, "ops_per_sec": row.ops as f64 / row.seconds.max(f64::MIN_POSITIVE),
                        "p50_us": row.latency.p50_us, "p99_us": row.latency.p99_us,
                        "p999_us": row.latency.p999_us, "max_us": row.latency.max_us,
                        "tables": row.tables, "space_bytes": row.table_bytes,
                    })
                );
            }
            println!(
                "{}",
                json!({
                    "benchmark": first.benchmark.name(), "shards": of_benchmark.len(), "ops": ops,
                    "seconds": seconds, "ops_per_sec": ops_per_sec,
                    "p50_us": worst(|latency| latency.p50_us), "p99_us": worst(|latency| latency.p99_us),
                    "p999_us": worst(|latency| latency.p999_us), "max_us": worst(|latency| latency.max_us),
                    "tables": tables, "space_bytes": table_bytes,
                })
            );
        }
    }
    std::io::stdout().flush().context("writing the report")?;
    Ok(())
}

/// Engine counters of earlier opens in this run (stats restart at every open).
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    user_bytes: u64,
    wal_bytes: u64,
    flush_bytes: u64,
    compaction_bytes: u64,
    flushes: u64,
    compactions: u64,
}

impl Counters {
    fn add(&mut self, stats: &EngineStats) {
        self.user_bytes += stats.user_bytes;
        self.wal_bytes += stats.wal_bytes;
        self.flush_bytes += stats.flush_bytes;
        self.compaction_bytes += stats.compaction_bytes;
        self.flushes += stats.flushes;
        self.compactions += stats.compactions;
    }
}

/// What one benchmark measured, before the engine's figures are added.
struct Measurement {
    benchmark: Benchmark,
    ops: u64,
    elapsed: Duration,
    latency: LatencySummary,
    /// Fields particular to the benchmark.
    extra: Map<String, Value>,
}

/// Runs the benchmarks in order and prints their reports.
struct Runner {
    args: EngineArgs,
    path: PathBuf,
    service: Option<(EngineService, SyncMode)>,
    carried: Counters,
    /// Keys written in this run; `None` with `--use-existing`, where what is there is unknown.
    written: Option<Rc<RefCell<KeySet>>>,
    values: Rc<RefCell<ValuePool>>,
    next_version: Rc<Cell<u64>>,
    header_printed: bool,
    /// With `--shards`: the other shards to start each benchmark with, and where rows go.
    sharing: Option<ShardSharing>,
}

impl Runner {
    fn new(args: EngineArgs, path: PathBuf, sharing: Option<ShardSharing>) -> Self {
        let written = (!args.use_existing).then(|| Rc::new(RefCell::new(KeySet::new(args.num))));
        let values = Rc::new(RefCell::new(ValuePool::new(args.value_size, args.seed)));
        Runner {
            args,
            path,
            service: None,
            carried: Counters::default(),
            written,
            values,
            next_version: Rc::new(Cell::new(1)),
            header_printed: false,
            sharing,
        }
    }

    async fn run_all(mut self) -> Result<()> {
        let benchmarks = self.args.benchmarks.clone();
        for (position, benchmark) in benchmarks.into_iter().enumerate() {
            if let Some(gate) = self.sharing.as_ref().map(|sharing| sharing.gate.clone()) {
                // Open (or reopen) first, so that the shards start timing together.
                self.engine_for(benchmark).await?;
                gate.wait(position).await;
            }
            let seed = self.args.seed.wrapping_add(1000 * (position as u64 + 1));
            let measurement = match benchmark {
                Benchmark::Fillseq => self.run_operations(benchmark, Operation::SequentialPut, seed).await?,
                Benchmark::Fillrandom | Benchmark::Overwrite | Benchmark::Fillsync => {
                    self.run_operations(benchmark, Operation::RandomPut, seed).await?
                }
                Benchmark::Readrandom => self.run_operations(benchmark, Operation::RandomGet, seed).await?,
                Benchmark::Compact => self.run_compaction().await?,
            };
            if let Some(sharing) = &self.sharing {
                let stats = self.service.as_ref().map(|(service, _)| service.engine().stats());
                sharing.rows.lock().expect("no shard thread panics holding the rows").push(ShardRow {
                    shard: sharing.shard,
                    position,
                    benchmark,
                    ops: measurement.ops,
                    seconds: measurement.elapsed.as_secs_f64(),
                    latency: measurement.latency,
                    tables: stats.as_ref().map_or(0, |stats| stats.tables),
                    table_bytes: stats.as_ref().map_or(0, |stats| stats.table_bytes),
                });
                continue;
            }
            self.report(measurement)?;
        }
        if let Some((service, _)) = self.service.take() {
            stop(service).await.context("stopping the engine")?;
        }
        Ok(())
    }

    /// The sync mode a benchmark needs the engine opened with, if it cares.
    fn sync_mode_for(&self, benchmark: Benchmark) -> Option<SyncMode> {
        match benchmark {
            Benchmark::Fillsync => Some(SyncMode::Always),
            Benchmark::Fillseq | Benchmark::Fillrandom | Benchmark::Overwrite => {
                Some(SyncMode::Periodic { interval_ms: self.args.sync_interval_ms })
            }
            Benchmark::Readrandom | Benchmark::Compact => None,
        }
    }

    /// The engine, opened (or reopened) in the sync mode `benchmark` needs.
    async fn engine_for(&mut self, benchmark: Benchmark) -> Result<Rc<Engine<DmaDisk>>> {
        let wanted = self.sync_mode_for(benchmark);
        if let Some((service, mode)) = &self.service {
            if wanted.is_none_or(|wanted| wanted == *mode) {
                return Ok(service.engine().clone());
            }
        }
        if let Some((service, _)) = self.service.take() {
            eprintln!("reopening the engine in {wanted:?} for {}", benchmark.name());
            self.carried.add(&service.engine().stats());
            stop(service).await.context("stopping the engine to reopen it")?;
        }
        let mode = wanted.unwrap_or(SyncMode::Periodic { interval_ms: self.args.sync_interval_ms });
        let options = EngineOptions {
            sync: mode,
            memtable_bytes_max: self.args.memtable_mb << 20,
            block_cache_bytes: self.args.block_cache_mb << 20,
            ..EngineOptions::default()
        };
        let service = EngineService::open(&self.path, options)
            .await
            .with_context(|| format!("opening the engine in {}", self.path.display()))?;
        let engine = service.engine().clone();
        self.service = Some((service, mode));
        Ok(engine)
    }

    /// Runs one benchmark's operations with `--concurrency` workers and times them.
    async fn run_operations(
        &mut self,
        benchmark: Benchmark,
        operation: Operation,
        seed: u64,
    ) -> Result<Measurement> {
        let engine = self.engine_for(benchmark).await?;
        let ops = match operation {
            Operation::RandomGet => self.args.reads(),
            Operation::SequentialPut | Operation::RandomPut => self.args.writes(),
        };
        let context = Rc::new(WorkerContext {
            engine,
            operation,
            keys: KeyEncoder::new(self.args.key_size),
            num: self.args.num,
            value_size: self.args.value_size,
            values: self.values.clone(),
            written: self.written.clone(),
            next_version: self.next_version.clone(),
            now_ms: ringkv_io::now_ms(),
            trees: self.args.tictac.then(|| Rc::new(RefCell::new(Trees::new()))),
        });
        let workers = self.args.concurrency.min(ops.max(1) as usize);
        let shares = split(ops, workers);
        let started = Instant::now();
        let outcomes = if workers == 1 {
            vec![run_worker(context, shares[0], SmallRng::seed_from_u64(seed)).await]
        } else {
            let tasks: Vec<_> = shares
                .into_iter()
                .enumerate()
                .map(|(index, share)| {
                    let rng = SmallRng::seed_from_u64(seed.wrapping_add(index as u64));
                    glommio::spawn_local(run_worker(context.clone(), share, rng))
                })
                .collect();
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(task.await);
            }
            outcomes
        };
        let elapsed = started.elapsed();

        let mut latencies = LatencyRecorder::new();
        let (mut found, mut wrong) = (0, 0);
        for outcome in outcomes {
            let outcome = outcome.with_context(|| format!("{} failed", benchmark.name()))?;
            latencies.merge(&outcome.latencies);
            found += outcome.found;
            wrong += outcome.wrong;
        }
        let mut extra = Map::new();
        extra.insert("concurrency".into(), json!(workers));
        if operation == Operation::RandomGet {
            extra.insert("found".into(), json!(found));
            if wrong > 0 {
                bail!(
                    "readrandom: {wrong} of {ops} reads disagreed with what was written (a key \
                     found that was never written, one written and not found, or a value of \
                     the wrong size)"
                );
            }
        }
        Ok(Measurement { benchmark, ops, elapsed, latency: latencies.summary(), extra })
    }

    /// Flushes the memtable and merges every table into one, waiting out a background
    /// compaction if one is running.
    async fn run_compaction(&mut self) -> Result<Measurement> {
        let engine = self.engine_for(Benchmark::Compact).await?;
        let before = engine.stats();
        let started = Instant::now();
        engine.flush().await.context("flushing before compaction")?;
        let flushed = engine.stats();
        let mut waited = Duration::ZERO;
        // compact_all declines while a background compaction runs; it ends, then ours starts.
        while !engine.compact_all(ringkv_io::now_ms()).await.context("compacting")?
            && engine.stats().tables > 1
        {
            ensure!(waited < COMPACTION_WAIT_MAX, "a background compaction ran past {COMPACTION_WAIT_MAX:?}");
            glommio::timer::sleep(COMPACTION_POLL_INTERVAL).await;
            waited += COMPACTION_POLL_INTERVAL;
        }
        let elapsed = started.elapsed();
        let after = engine.stats();
        let mut latencies = LatencyRecorder::new();
        latencies.record(elapsed);
        let mut extra = Map::new();
        extra.insert("tables_before".into(), json!(before.tables));
        extra.insert("space_before_bytes".into(), json!(before.table_bytes));
        extra.insert("space_flushed_bytes".into(), json!(flushed.table_bytes));
        extra.insert("tables_after".into(), json!(after.tables));
        extra.insert("space_after_bytes".into(), json!(after.table_bytes));
        extra.insert("waited_for_background_seconds".into(), json!(waited.as_secs_f64()));
        Ok(Measurement {
            benchmark: Benchmark::Compact,
            ops: 1,
            elapsed,
            latency: latencies.summary(),
            extra,
        })
    }

    /// Prints a benchmark's row, and its JSON line with `--json`, with the engine's figures.
    fn report(&mut self, measurement: Measurement) -> Result<()> {
        let Some((service, mode)) = &self.service else { bail!("no engine open to report on") };
        let stats = service.engine().stats();
        let mut counters = self.carried;
        counters.add(&stats);
        let memory = resident_memory()?;
        let seconds = measurement.elapsed.as_secs_f64();
        let ops_per_sec = measurement.ops as f64 / seconds.max(f64::MIN_POSITIVE);
        let entry_bytes = (self.args.key_size + self.args.value_size) as u64;
        let written_out = counters.wal_bytes + counters.flush_bytes + counters.compaction_bytes;
        let write_amplification =
            (counters.user_bytes > 0).then(|| written_out as f64 / counters.user_bytes as f64);
        let live_keys = self.written.as_ref().map(|written| written.borrow().len());
        let live_data_bytes = live_keys.map(|keys| keys * entry_bytes);
        let space_amplification =
            live_data_bytes.filter(|&bytes| bytes > 0).map(|bytes| stats.table_bytes as f64 / bytes as f64);
        let rss_bytes_per_million_keys = live_keys
            .filter(|&keys| keys > 0)
            .map(|keys| (memory.peak_rss_bytes as f64 / (keys as f64 / 1e6)).round());
        let latency = measurement.latency;

        if !self.header_printed {
            println!(
                "{:<11} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>6} {:>6} {:>9} {:>9} {:>9}",
                "benchmark",
                "ops",
                "seconds",
                "ops/s",
                "p50_us",
                "p99_us",
                "p999_us",
                "max_us",
                "w_amp",
                "tables",
                "space_MB",
                "peakRSS_MB",
                "MB/Mkeys"
            );
            self.header_printed = true;
        }
        let megabytes = |bytes: f64| bytes / (1u64 << 20) as f64;
        println!(
            "{:<11} {:>9} {:>8.2} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>6} {:>6} {:>9.1} {:>10.1} {:>9}",
            measurement.benchmark.name(),
            measurement.ops,
            seconds,
            ops_per_sec,
            latency.p50_us,
            latency.p99_us,
            latency.p999_us,
            latency.max_us,
            write_amplification.map_or("-".to_string(), |amplification| format!("{amplification:.2}")),
            stats.tables,
            megabytes(stats.table_bytes as f64),
            megabytes(memory.peak_rss_bytes as f64),
            rss_bytes_per_million_keys.map_or("-".to_string(), |bytes| format!("{:.1}", megabytes(bytes))),
        );
        if self.args.json {
            let rounded = |value: f64, digits: i32| {
                let scale = 10f64.powi(digits);
                (value * scale).round() / scale
            };
            let mut line = Map::new();
            line.insert("benchmark".into(), json!(measurement.benchmark.name()));
            line.insert("tictac".into(), json!(self.args.tictac));
            line.insert("ops".into(), json!(measurement.ops));
            line.insert("seconds".into(), json!(rounded(seconds, 6)));
            line.insert("ops_per_sec".into(), json!(rounded(ops_per_sec, 1)));
            line.insert("mb_per_sec".into(), json!(rounded(ops_per_sec * entry_bytes as f64 / 1e6, 2)));
            line.insert("mean_us".into(), json!(rounded(latency.mean_us, 3)));
            line.insert("p50_us".into(), json!(latency.p50_us));
            line.insert("p99_us".into(), json!(latency.p99_us));
            line.insert("p999_us".into(), json!(latency.p999_us));
            line.insert("max_us".into(), json!(latency.max_us));
            line.append(&mut measurement.extra.clone());
            line.insert(
                "sync".into(),
                json!(match mode {
                    SyncMode::Always => "always".to_string(),
                    SyncMode::Periodic { interval_ms } => format!("periodic_{interval_ms}ms"),
                }),
            );
            line.insert("user_bytes".into(), json!(counters.user_bytes));
            line.insert("wal_bytes".into(), json!(counters.wal_bytes));
            line.insert("flush_bytes".into(), json!(counters.flush_bytes));
            line.insert("compaction_bytes".into(), json!(counters.compaction_bytes));
            line.insert("flushes".into(), json!(counters.flushes));
            line.insert("compactions".into(), json!(counters.compactions));
            line.insert(
                "write_amplification".into(),
                json!(write_amplification.map(|value| rounded(value, 3))),
            );
            line.insert("space_bytes".into(), json!(stats.table_bytes));
            line.insert("tables".into(), json!(stats.tables));
            line.insert("live_keys".into(), json!(live_keys));
            line.insert("live_data_bytes".into(), json!(live_data_bytes));
            line.insert(
                "space_amplification".into(),
                json!(space_amplification.map(|value| rounded(value, 3))),
            );
            line.insert("memtable_bytes".into(), json!(stats.memtable_bytes));
            line.insert("block_cache_bytes".into(), json!(stats.block_cache_bytes));
            line.insert("rss_bytes".into(), json!(memory.rss_bytes));
            line.insert("peak_rss_bytes".into(), json!(memory.peak_rss_bytes));
            line.insert("rss_bytes_per_million_keys".into(), json!(rss_bytes_per_million_keys));
            println!("{}", Value::Object(line));
        }
        std::io::stdout().flush().context("writing the report")?;
        Ok(())
    }
}

/// Stops an engine service, syncing first.
///
/// `EngineService::stop` cancels the periodic-sync task; if that task is in the middle of a WAL
/// commit, the commit never finishes, the WAL stays marked as committing, and the final sync in
/// `close` waits forever (reproduced: `--sync-interval-ms 1` hangs at exit every time). Syncing
/// here first leaves nothing dirty, so a sync the timer starts during `stop` completes without
/// suspending and cannot be cut in half.
async fn stop(service: EngineService) -> Result<()> {
    service.engine().sync().await.context("syncing the WAL")?;
    service.stop().await?;
    Ok(())
}

/// One worker's part of a benchmark's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Share {
    ops: u64,
    /// The first key of a sequential fill: workers write consecutive runs of keys.
    first_key: u64,
}

/// `total` operations split into `parts` shares that differ by at most one.
fn split(total: u64, parts: usize) -> Vec<Share> {
    let parts = parts as u64;
    let mut first_key = 0;
    (0..parts)
        .map(|index| {
            let ops = total / parts + u64::from(index < total % parts);
            let share = Share { ops, first_key };
            first_key += ops;
            share
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    /// Puts of keys 0, 1, 2, ... (each worker writes its own run), wrapping at `num`.
    SequentialPut,
    /// Puts of uniformly random keys in `[0, num)`.
    RandomPut,
    /// Gets of uniformly random keys in `[0, num)`.
    RandomGet,
}

/// What the workers of one benchmark share.
struct WorkerContext {
    engine: Rc<Engine<DmaDisk>>,
    operation: Operation,
    keys: KeyEncoder,
    num: u64,
    value_size: usize,
    values: Rc<RefCell<ValuePool>>,
    written: Option<Rc<RefCell<KeySet>>>,
    next_version: Rc<Cell<u64>>,
    now_ms: u64,
    /// Kept current on every write with `--tictac`.
    trees: Option<Rc<RefCell<Trees>>>,
}

/// Tictac trees of equal ring ranges, the way a shard keeps them.
struct Trees {
    trees: Vec<TictacTree>,
}

impl Trees {
    /// Ranges a shard of a three-node ring with 16 tokens per node replicates (N = 3).
    const RANGES: u64 = 48;

    fn new() -> Self {
        let width = u64::MAX / Self::RANGES;
        let trees = (0..Self::RANGES)
            .map(|index| {
                let end = if index + 1 == Self::RANGES { u64::MAX } else { (index + 1) * width };
                TictacTree::new(TokenRange { start: if index == 0 { u64::MAX } else { index * width }, end })
            })
            .collect();
        Trees { trees }
    }

    fn update(&mut self, key: &[u8], old: Option<u64>, new: u64) {
        let key_token = token(key);
        let index = self.trees.partition_point(|tree| tree.range().end < key_token).min(self.trees.len() - 1);
        self.trees[index].update(key_token, key, old, Some(new));
    }
}

/// A write as a replicated shard applies it with `--tictac`: the old version (memory, else a
/// read), the write, then the tree update.
async fn tracked_put(
    engine: &Engine<DmaDisk>,
    trees: &RefCell<Trees>,
    key: bytes::Bytes,
    value: bytes::Bytes,
    version: u64,
) -> Result<()> {
    let before = match engine.entry_now(&key, |held| held.map(|held| held.version)) {
        Some(result) => result?,
        None => engine.get_entry(&key).await?.map(|held| held.version),
    };
    let in_memory = Cell::new(None);
    let outcome = engine
        .write_with(key.clone(), |held| {
            in_memory.set(held);
            ringkv_storage::Entry::live(version, value, None)
        })
        .await?;
    if let WriteOutcome::Applied { version } = outcome {
        trees.borrow_mut().update(&key, in_memory.get().or(before), version);
    }
    Ok(())
}

/// What one worker measured.
struct WorkerOutcome {
    latencies: LatencyRecorder,
    found: u64,
    /// Reads that disagreed with what was written.
    wrong: u64,
}

/// Issues its share of the operations one after the other. Only the engine call is timed; between
/// operations the worker yields if the executor asks, so background flushes and compactions
/// get their share of the core as they would on a busy shard.
async fn run_worker(context: Rc<WorkerContext>, share: Share, mut rng: SmallRng) -> Result<WorkerOutcome> {
    let mut outcome = WorkerOutcome { latencies: LatencyRecorder::new(), found: 0, wrong: 0 };
    let mut key_buffer = [0u8; KEY_BYTES_MAX];
    let key_size = context.keys.key_size();
    for index in 0..share.ops {
        let number = match context.operation {
            Operation::SequentialPut => (share.first_key + index) % context.num,
            Operation::RandomPut | Operation::RandomGet => rng.gen_range(0..context.num),
        };
        match context.operation {
            Operation::SequentialPut | Operation::RandomPut => {
                let key = context.keys.encode(number);
                let value = context.values.borrow_mut().next_value();
                let version = context.next_version.get();
                context.next_version.set(version + 1);
                let started = Instant::now();
                match &context.trees {
                    Some(trees) => tracked_put(&context.engine, trees, key, value, version).await?,
                    None => {
                        context.engine.put(key, value, version, None).await?;
                    }
                }
                outcome.latencies.record(started.elapsed());
                if let Some(written) = &context.written {
                    written.borrow_mut().insert(number);
                }
            }
            Operation::RandomGet => {
                let key = &mut key_buffer[..key_size];
                context.keys.encode_into(number, key);
                let started = Instant::now();
                let found = context.engine.get(key, context.now_ms).await?;
                outcome.latencies.record(started.elapsed());
                let expected = context.written.as_ref().map(|written| written.borrow().contains(number));
                match found {
                    Some(found) => {
                        outcome.found += 1;
                        if found.value.len() != context.value_size || expected == Some(false) {
                            outcome.wrong += 1;
                        }
                    }
                    None if expected == Some(true) => outcome.wrong += 1,
                    None => {}
                }
            }
        }
        glommio::yield_if_needed().await;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_operation_once() {
        let shares = split(10, 3);
        assert_eq!(
            shares,
            vec![
                Share { ops: 4, first_key: 0 },
                Share { ops: 3, first_key: 4 },
                Share { ops: 3, first_key: 7 }
            ]
        );
        assert_eq!(split(2, 1), vec![Share { ops: 2, first_key: 0 }]);
    }
}
