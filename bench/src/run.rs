//! The `load` and `run` subcommands: YCSB's load and transaction phases against a server.
//!
//! ```text
//!  thread 0 (glommio executor) ── connection 0, 2, 4, ... ── `--pipeline` tasks each
//!  thread 1 (glommio executor) ── connection 1, 3, 5, ... ── `--pipeline` tasks each
//!  each task: next operation ─▶ Store::read/write ─▶ latency into its thread's Measurements
//!  main: join the threads ─▶ merge ─▶ summary, JSON line, .hgrm files and PNG charts
//! ```
//!
//! Closed loop (the default): each connection keeps `--pipeline` requests in flight; a task sends
//! its next request as soon as the last one is answered, and latency is measured from sending.
//!
//! Open loop (`--rate OPS`): each connection owns `OPS / connections` of the rate and numbers its
//! operations; operation `i` is due at `start + i * interval`. A task sleeps until its operation's
//! intended time and latency is measured from that time, not from when the request went out, so a
//! stalled server (or a saturated generator) shows up in the tail instead of silently delaying the
//! schedule. This is the coordinated-omission correction wrk2 makes (Gil Tene, "How NOT to Measure
//! Latency"). `--pipeline` then bounds the requests in flight per connection.
//!
//! `load` inserts keys `[0, records)` in order, each key once, with the same machinery in closed
//! loop. Workload D's inserts continue from `records`; its latest distribution reads among the
//! keys inserted so far, counting a key once its insert is acknowledged (an approximation of
//! YCSB's acknowledged-counter window: a key whose insert is acknowledged before an older one's
//! may be read before the older one is written).
//!
//! Workload E's scans start at a key chosen like a read, from the acknowledged keys, and read
//! `1..=100` keys on from its position in token order (one `scan` operation, however many pages
//! it takes).

use crate::cpu_usage::CpuTime;
use crate::distribution::KeyChooser;
use crate::progress::{Live, Progress};
use crate::report::{Measurements, RunDescription, RunReport};
use crate::target::{Store, StoreError, Target};
use crate::timeline::{INTERVAL_MIN, WINDOWS_MAX};
use crate::workload::ValuePool;
use crate::ycsb::{key_name, scan_length, Mix, OperationKind, RequestDistribution, Workload};
use anyhow::{ensure, Context, Result};
use clap::Args;
use glommio::LocalExecutorBuilder;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use ringkv_io::nudge::{self, Nudges};
use ringkv_io::{SchedStat, ThreadSchedStat};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most requests one connection keeps in flight.
const PIPELINE_MAX: usize = 4096;
/// Most connections one run opens.
const CONNECTIONS_MAX: usize = 4096;
/// Most executor threads one run starts.
const THREADS_MAX: usize = 256;
/// glommio's memory for its rings and I/O buffers per executor: the load generator does only
/// socket I/O, and every executor locks this much memory.
const IO_MEMORY_BYTES: usize = 1 << 20;

/// Options shared by `load` and `run`.
#[derive(Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// The store to measure: ringkv://host:port or redis://host:port.
    #[arg(long)]
    pub target: Target,
    /// Records in the key space: keys `user000000000000` .. `user` + (records - 1).
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Connections to open, spread over the threads. A ringkv connection is one client: one
    /// socket per shard, requests pipelined on each.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Requests each connection keeps in flight.
    #[arg(long, default_value_t = 64)]
    pub pipeline: usize,
    /// Executor threads (one glommio executor each). The default leaves the other core of a
    /// two-core machine to the server.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the key and operation choices, so runs can be repeated.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Speak TLS to a ringkv target, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE", env = "RINGKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The name to check in the nodes' certificates. [default: the IP address connected to]
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl ConnectionArgs {
    /// The TLS options `--tls-ca` and `--tls-server-name` ask for; `None` for plaintext.
    pub fn tls(&self) -> Result<Option<ringkv_client::TlsOptions>> {
        let Some(ca) = &self.tls_ca else { return Ok(None) };
        let options = ringkv_client::TlsOptions::from_ca_file(ca).context("--tls-ca")?;
        Ok(Some(match &self.tls_server_name {
            Some(name) => options.with_server_name(name).context("--tls-server-name")?,
            None => options,
        }))
    }
}

/// Where `load` and `run` put their report.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Write `<operation>.hgrm` files (HdrHistogram percentile distribution, milliseconds) here,
    /// with a PNG chart of each (`<operation>.png`) and of all together (`latency.png`).
    #[arg(long)]
    pub hdr_dir: Option<PathBuf>,
    /// Print the summary and then, as the last line, the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also report throughput and latency percentiles for each interval of this many seconds
    /// (at least 0.01), by when each operation finished: stalls show when they happened.
    #[arg(long, value_name = "SECONDS")]
    pub report_interval: Option<f64>,
}

impl OutputArgs {
    /// The interval `--report-interval` asks for, checked.
    pub fn report_interval(&self) -> Result<Option<Duration>> {
        let Some(seconds) = self.report_interval else { return Ok(None) };
        let interval = Duration::try_from_secs_f64(seconds).ok().filter(|interval| *interval >= INTERVAL_MIN);
        let interval = interval.with_context(|| {
            format!("--report-interval must be at least {} seconds", INTERVAL_MIN.as_secs_f64())
        })?;
        Ok(Some(interval))
    }
}

/// Options of the `load` subcommand.
#[derive(Args, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of the `run` subcommand.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub transactions: TransactionArgs,
    /// Open loop: offer this many operations per second in total, on a fixed schedule, and measure
    /// latency from each operation's intended time.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// What a run does: the workload and for how long.
#[derive(Args, Debug, Clone)]
pub struct TransactionArgs {
    /// YCSB core workload: a (50/50 read/update), b (95/5), c (read only), d (read latest, 5%
    /// inserts), e (95% scans of 1-100 keys from a zipfian start, 5% inserts; ringkv:// only),
    /// f (read-modify-write).
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Override the workload's request distribution (YCSB's `requestdistribution`): uniform,
    /// zipfian or latest. A, B, C, E and F use zipfian, D uses latest.
    #[arg(long, value_enum)]
    pub request_distribution: Option<RequestDistribution>,
    /// Seconds to run (for `sweep`, each step).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

/// What the operations of a phase are.
#[derive(Clone, Debug)]
enum Phase {
    /// Insert each key of `[0, records)` once.
    Load,
    /// A YCSB workload for a fixed time.
    Transactions { mix: Mix, chooser: KeyChooser, deadline_after: Duration },
}

/// Key counters every thread shares.
struct KeySpace {
    records: u64,
    /// The number of the next key to insert.
    insert_next: AtomicU64,
    /// One past the highest key whose insert was acknowledged: what reads may choose from.
    acknowledged: AtomicU64,
}

/// Everything a thread needs to run its share.
#[derive(Clone)]
struct Plan {
    target: Target,
    phase: Phase,
    value_size: usize,
    pipeline: usize,
    /// TLS to a ringkv target, when asked for.
    tls: Option<ringkv_client::TlsOptions>,
    /// Between one connection's consecutive intended start times, in open loop.
    interval: Option<Duration>,
    /// Where workers report for the progress line, when one is shown.
    live: Option<Arc<Live>>,
    /// The windows of the run's timeline, when one is kept.
    report_interval: Option<Duration>,
    seed: u64,
    key_space: Arc<KeySpace>,
}

fn check(connection: &ConnectionArgs) -> Result<()> {
    ensure!(
        (1..=CONNECTIONS_MAX).contains(&connection.connections),
        "--connections is 1..={CONNECTIONS_MAX}"
    );
    ensure!((1..=PIPELINE_MAX).contains(&connection.pipeline), "--pipeline is 1..={PIPELINE_MAX}");
    ensure!((1..=THREADS_MAX).contains(&connection.threads), "--threads is 1..={THREADS_MAX}");
    ensure!(connection.records > 0, "--records must be at least 1");
    Ok(())
}

/// The `load` subcommand.
pub fn load(args: LoadArgs) -> Result<()> {
    let connection = args.connection;
    check(&connection)?;
    let key_space = KeySpace {
        records: connection.records,
        insert_next: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
    };
    let report_interval = args.output.report_interval()?;
    let report = execute(&connection, "load", Phase::Load, None, report_interval, key_space)?;
    emit(&args.output, &report)
}

/// The `run` subcommand.
pub fn run(args: RunArgs) -> Result<()> {
    let report_interval = args.output.report_interval()?;
    if let Some(interval) = report_interval {
        let windows = args.transactions.duration / interval.as_secs_f64();
        ensure!(
            windows <= WINDOWS_MAX as f64,
            "--report-interval {} s over --duration {} s makes more than {WINDOWS_MAX} windows",
            interval.as_secs_f64(),
            args.transactions.duration
        );
    }
    let report = run_transactions(&args.connection, &args.transactions, args.rate, report_interval)?;
    emit(&args.output, &report)
}

/// Runs a workload once, in closed loop or at `rate` in open loop, and returns its report, with a
/// timeline of `report_interval`-long windows when one is given.
pub fn run_transactions(
    connection: &ConnectionArgs,
    transactions: &TransactionArgs,
    rate: Option<f64>,
    report_interval: Option<Duration>,
) -> Result<RunReport> {
    check(connection)?;
    let duration = transactions.duration;
    ensure!(duration > 0.0 && duration.is_finite(), "--duration must be a positive number of seconds");
    if let Some(rate) = rate {
        ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number of operations per second");
    }
    let workload = transactions.workload;
    ensure!(
        workload.mix().scan == 0 || connection.target.protocol.supports_scans(),
        "workload {} scans key ranges, which {} targets do not support (the Redis client speaks \
         only GET and SET); use a ringkv:// target",
        workload.name(),
        connection.target.protocol.name()
    );
    let phase = Phase::Transactions {
        mix: workload.mix(),
        chooser: transactions
            .request_distribution
            .unwrap_or(workload.request_distribution())
            .key_chooser(connection.records),
        deadline_after: Duration::from_secs_f64(duration),
    };
    let key_space = KeySpace {
        records: connection.records,
        insert_next: AtomicU64::new(connection.records),
        acknowledged: AtomicU64::new(connection.records),
    };
    execute(connection, workload.name(), phase, rate, report_interval, key_space)
}

/// Prints the summary (and the JSON line last) and writes the `.hgrm` files and their charts.
fn emit(output: &OutputArgs, report: &RunReport) -> Result<()> {
    print!("{}", report.summary_text());
    if let Some(directory) = &output.hdr_dir {
        report.write_hgrm_files(directory)?;
        report.write_latency_charts(directory)?;
    }
    if output.json {
        println!("{}", report.to_json());
    }
    Ok(())
}

/// Starts the threads, runs `phase` on every connection, and merges what they measured.
fn execute(
    connection: &ConnectionArgs,
    workload: &str,
    phase: Phase,
    rate: Option<f64>,
    report_interval: Option<Duration>,
    key_space: KeySpace,
) -> Result<RunReport> {
    let interval = rate.map(|rate| {
        Duration::from_secs_f64(connection.connections as f64 / rate).max(Duration::from_nanos(1))
    });
    let progress = Progress::start_on_terminal();
    let plan = Plan {
        target: connection.target.clone(),
        phase,
        value_size: connection.value_size,
        pipeline: connection.pipeline,
        tls: connection.tls()?,
        interval,
        seed: connection.seed,
        key_space: Arc::new(key_space),
        live: progress.as_ref().map(Progress::live),
        report_interval,
    };
    // glommio can sleep through its own timer (see `ringkv_io::nudge`): a worker waiting for its
    // next operation's time would then stall the open-loop schedule, and the stall would be
    // charged to the server as latency. Each executor's heartbeat lets this thread wake it.
    let nudges = Arc::new(Nudges::new(connection.threads));
    let nudger = nudges.spawn("bench-nudge").context("starting the thread that wakes stalled executors")?;
    let cpu_before = CpuTime::now().context("reading this process's CPU time")?;
    let started = Instant::now();
    let mut threads = Vec::new();
    for thread in 0..connection.threads {
        let connections: Vec<usize> = (thread..connection.connections).step_by(connection.threads).collect();
        if connections.is_empty() {
            continue;
        }
        let plan = plan.clone();
        let executor_nudges = nudges.clone();
        let spawned = LocalExecutorBuilder::default()
            .name(&format!("bench-{thread}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                // The heartbeat never ends: it stops when the workers are done.
                let measured = futures_lite::future::or(run_thread(plan, connections), async {
                    match nudge::heartbeat(&executor_nudges, thread).await {}
                })
                .await;
                // Read before the thread ends, which takes its figures with it.
                (measured, ThreadSchedStat::of_this_thread().and_then(|thread| thread.read()).ok())
            })
            .map_err(|error| anyhow::anyhow!("starting executor thread {thread}: {error}"));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(error) => {
                nudges.finish();
                return Err(error);
            }
        }
    }
    let mut measurements = Measurements::new(report_interval);
    let mut first_error = None;
    // The worker threads' scheduler figures, summed; `None` if any thread's are unknown.
    let mut scheduler = Some(SchedStat::default());
    for handle in threads {
        match handle.join() {
            Ok((measured, thread_scheduler)) => {
                scheduler = scheduler.zip(thread_scheduler).map(|(sum, thread)| sum.plus(&thread));
                match measured {
                    Ok(thread_measurements) => measurements.merge(&thread_measurements),
                    Err(error) => first_error = first_error.or(Some(error)),
                }
            }
            Err(error) => {
                first_error = first_error.or(Some(anyhow::anyhow!("executor thread failed: {error}")))
            }
        }
    }
    let wall = started.elapsed();
    nudges.finish();
    if nudger.join().is_err() {
        first_error =
            first_error.or(Some(anyhow::anyhow!("the thread that wakes stalled executors panicked")));
    }
    if let Some(progress) = progress {
        progress.stop();
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let cpu = CpuTime::now().context("reading this process's CPU time")?.since(&cpu_before);
    let description = RunDescription {
        target: connection.target.to_string(),
        workload: workload.to_string(),
        records: connection.records,
        value_size: connection.value_size,
        connections: connection.connections,
        pipeline: connection.pipeline,
        threads: connection.threads,
        rate,
    };
    Ok(RunReport { description, measurements, wall, cpu, scheduler, generator_nudges: nudges.nudged_total() })
}

/// Per-thread state the tasks share: the random source, the key chooser and the value pool. One
/// of each per thread, because building a latest distribution sums zeta over every key.
struct Generator {
    random: SmallRng,
    chooser: Option<KeyChooser>,
    values: ValuePool,
}

/// Connects this thread's connections, runs `pipeline` tasks on each, and returns what they
/// measured.
async fn run_thread(plan: Plan, connections: Vec<usize>) -> Result<Measurements> {
    let mut stores = Vec::new();
    for &connection in &connections {
        let store = Store::connect(&plan.target, plan.pipeline, plan.tls.clone())
            .await
            .with_context(|| format!("connection {connection} to {}", plan.target))?;
        stores.push(Rc::new(store));
    }
    let thread_seed = plan.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ connections[0] as u64;
    let chooser = match &plan.phase {
        Phase::Load => None,
        Phase::Transactions { chooser, .. } => Some(chooser.clone()),
    };
    let generator = Rc::new(RefCell::new(Generator {
        random: SmallRng::seed_from_u64(thread_seed),
        chooser,
        values: ValuePool::new(plan.value_size, thread_seed),
    }));
    let measurements = Rc::new(RefCell::new(Measurements::new(plan.report_interval)));
    let plan = Rc::new(plan);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for store in stores {
        // Numbers this connection's operations, for the open-loop schedule.
        let schedule = Rc::new(Cell::new(0u64));
        for _ in 0..plan.pipeline {
            let worker = Worker {
                plan: Rc::clone(&plan),
                store: Rc::clone(&store),
                generator: Rc::clone(&generator),
                measurements: Rc::clone(&measurements),
                schedule: Rc::clone(&schedule),
                start,
            };
            tasks.push(glommio::spawn_local(worker.run()));
        }
    }
    for task in tasks {
        task.await;
    }
    let measurements = Rc::try_unwrap(measurements)
        .map_err(|_| anyhow::anyhow!("every task has ended, so nothing else holds the measurements"))?;
    Ok(measurements.into_inner())
}

/// When a connection's operation number `index` is due in open loop, after the run's start. The
/// schedule is fixed in advance, so a slow answer delays no later operation's intended time.
fn scheduled_offset(interval: Duration, index: u64) -> Duration {
    Duration::from_nanos(u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX).saturating_mul(index))
}

/// One of a connection's `--pipeline` tasks: one request in flight at a time.
struct Worker {
    plan: Rc<Plan>,
    store: Rc<Store>,
    generator: Rc<RefCell<Generator>>,
    measurements: Rc<RefCell<Measurements>>,
    schedule: Rc<Cell<u64>>,
    start: Instant,
}

/// One operation to perform: its kind and key number (for a scan, the first key's).
struct Operation {
    kind: OperationKind,
    key_number: u64,
    /// Keys a scan reads; 0 for the other kinds.
    scan_length: u32,
}

impl Worker {
    async fn run(self) {
        let deadline = match &self.plan.phase {
            Phase::Transactions { deadline_after, .. } => Some(self.start + *deadline_after),
            Phase::Load => None,
        };
        // When the operation before finished, while nothing has run since: the clock is read
        // once per operation, where it finishes (at a million operations a second the clock
        // reads were 7% of the generator's CPU here, which the node under test shares the
        // machine with). After a yield to other tasks it is read again.
        let mut finished_just_now: Option<Instant> = None;
        loop {
            let now = finished_just_now.take().unwrap_or_else(Instant::now);
            // When this operation should start: now in closed loop, on the schedule in open loop.
            let intended = match self.plan.interval {
                Some(interval) => {
                    let index = self.schedule.get();
                    self.schedule.set(index + 1);
                    self.start + scheduled_offset(interval, index)
                }
                None => now,
            };
            if deadline.is_some_and(|deadline| intended.max(now) >= deadline) {
                break;
            }
            let Some(operation) = self.next_operation() else { break };
            if intended > now {
                glommio::timer::sleep(intended - now).await;
            }
            // Closed loop measures from sending; open loop from the intended time, which is
            // earlier than sending whenever the schedule has fallen behind.
            let outcome = self.perform(&operation).await;
            let finished = Instant::now();
            self.record(&operation, outcome, finished, finished.saturating_duration_since(intended));
            // A run against a store that answers instantly must still let the other tasks in.
            if glommio::executor().need_preempt() {
                glommio::yield_if_needed().await;
            } else {
                finished_just_now = Some(finished);
            }
        }
    }

    /// Records one operation that finished at `finished`.
    fn record(
        &self,
        operation: &Operation,
        outcome: Result<bool, StoreError>,
        finished: Instant,
        latency: Duration,
    ) {
        let mut measurements = self.measurements.borrow_mut();
        match outcome {
            Ok(found) => {
                // From when this thread's connections were up, as its deadline is.
                let since_start = finished.saturating_duration_since(self.start);
                measurements.record(operation.kind, latency, since_start);
                if let Some(live) = &self.plan.live {
                    live.record(latency);
                }
                if !found {
                    measurements.not_found += 1;
                }
                if operation.kind == OperationKind::Insert {
                    self.plan.key_space.acknowledged.fetch_max(operation.key_number + 1, Ordering::Relaxed);
                }
            }
            Err(error) => measurements.record_error(error.kind()),
        }
    }

    /// The next operation, or `None` when a load has handed out every key.
    fn next_operation(&self) -> Option<Operation> {
        let key_space = &self.plan.key_space;
        let mut generator = self.generator.borrow_mut();
        let Generator { random, chooser, .. } = &mut *generator;
        match &self.plan.phase {
            Phase::Load => {
                let key_number = key_space.insert_next.fetch_add(1, Ordering::Relaxed);
                (key_number < key_space.records).then_some(Operation {
                    kind: OperationKind::Insert,
                    key_number,
                    scan_length: 0,
                })
            }
            Phase::Transactions { mix, .. } => {
                let kind = mix.choose(random);
                let key_number = if kind == OperationKind::Insert {
                    key_space.insert_next.fetch_add(1, Ordering::Relaxed)
                } else {
                    let items = key_space.acknowledged.load(Ordering::Relaxed);
                    chooser.as_mut().expect("transactions have a key chooser").next(items, random)
                };
                let scan_length = if kind == OperationKind::Scan { scan_length(random) } else { 0 };
                Some(Operation { kind, key_number, scan_length })
            }
        }
    }

    /// Performs `operation`; for reads, whether the key had a value, for scans whether any key
    /// was found (writes count as found).
    async fn perform(&self, operation: &Operation) -> Result<bool, StoreError> {
        let key = key_name(operation.key_number);
        match operation.kind {
            OperationKind::Read => self.store.read(&key).await,
            OperationKind::Update | OperationKind::Insert => {
                let value = self.generator.borrow_mut().values.next_shared();
                self.store.write(&key, &value).await.map(|()| true)
            }
            OperationKind::ReadModifyWrite => {
                let found = self.store.read(&key).await?;
                let value = self.generator.borrow_mut().values.next_shared();
                self.store.write(&key, &value).await.map(|()| found)
            }
            OperationKind::Scan => self.store.scan(&key, operation.scan_length).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_operations_are_due_at_fixed_intervals() {
        // 100,000 ops/s over 8 connections: each connection's operations are 80 us apart.
        let interval = Duration::from_secs_f64(8.0 / 100_000.0);
        assert_eq!(scheduled_offset(interval, 0), Duration::ZERO);
        assert_eq!(scheduled_offset(interval, 1), Duration::from_micros(80));
        assert_eq!(scheduled_offset(interval, 12_500), Duration::from_secs(1));
        assert_eq!(scheduled_offset(Duration::from_secs(1), u64::MAX), Duration::from_nanos(u64::MAX));
    }
}
