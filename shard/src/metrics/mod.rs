//! Prometheus metrics: per-shard counters and histograms kept as relaxed atomics, the figures
//! the engine and the cluster keep themselves, asked of each shard at scrape time, and their
//! rendering in Prometheus's text format for `metrics_listen`.
//!
//! ```text
//!  shard thread ─▶ ShardMetrics (its own; counters, latency histograms) ◀─ read ─ scrape thread
//!  scrape thread ─ask every shard─▶ engine and cluster figures, as they are now ─▶ (or unavailable)
//!  GET /metrics ─▶ http::serve (one std thread per node) ─▶ render(every shard) ─▶ text
//! ```
//!
//! Every field of a [`ShardMetrics`] is written by its shard's thread only, so an update is a
//! relaxed load and store of a cache line no other core writes: no lock, no read-modify-write
//! instruction, no allocation on the request path. The scrape thread only reads, and may see a
//! histogram's buckets a few observations apart from its count; Prometheus tolerates that.
//!
//! Figures the engine and the cluster keep themselves (flushes, compactions, table and memtable
//! bytes, hints, anti-entropy) live in the shard's single-threaded state, so each scrape asks
//! every shard for them ([`figures`]) and shows what the shard read when the request reached it.
//! A shard that does not answer in time has those series left out of the scrape, and
//! `ringkv_shard_figures_available` says so, rather than the scrape waiting for it or showing
//! old figures.
//!
//! ## Layout
//! - [`figures`]: the bounded request channel from the scrape thread to each shard, and the
//!   figures a shard answers with.
//! - [`http`]: the `/metrics` endpoint: HTTP or HTTPS, with an optional bearer token.

pub mod figures;
pub mod http;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ringkv_io::{SchedStat, ThreadSchedStat};
use ringkv_wire::{ErrorCode, Failure, Operation, Outcome};

pub use figures::{ClusterFigures, FiguresUnavailable, ShardFigures};

/// Upper bounds of the latency histograms' buckets, in microseconds (then `+Inf`).
pub const LATENCY_BUCKETS_MICROS: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// A counter or gauge written by one thread and read by others.
#[derive(Debug, Default)]
pub struct Cell64(AtomicU64);

impl Cell64 {
    /// Adds `amount`. Only the owning shard's thread may call it: a load and a store, not an
    /// atomic read-modify-write, since no other thread writes.
    #[inline]
    pub fn add(&self, amount: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(amount), Ordering::Relaxed);
    }

    /// Subtracts `amount` (gauges), saturating at zero. Owning thread only.
    #[inline]
    pub fn sub(&self, amount: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).saturating_sub(amount), Ordering::Relaxed);
    }

    /// Sets the value. Owning thread only.
    #[inline]
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The value, from any thread.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram over [`LATENCY_BUCKETS_MICROS`]. Buckets are kept non-cumulative (one
/// store per observation) and summed when rendered.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Cell64; LATENCY_BUCKETS_MICROS.len() + 1],
    sum_micros: Cell64,
}

impl Histogram {
    /// Records one observation. Owning thread only.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        self.observe_many(elapsed, 1);
    }

    /// Records `count` observations of `elapsed` each.
    pub fn observe_many(&self, elapsed: Duration, count: u64) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].add(count);
        self.sum_micros.add(micros.saturating_mul(count));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(Cell64::get).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.get();
            let bound = match LATENCY_BUCKETS_MICROS.get(index) {
                Some(&micros) => format_seconds(micros),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", format_seconds(self.sum_micros.get()));
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Microseconds as seconds, exactly (`250` as `0.00025`).
fn format_seconds(micros: u64) -> String {
    let (whole, fraction) = (micros / 1_000_000, micros % 1_000_000);
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:06}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// A client operation, as the `operation` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    Get,
    Put,
    Delete,
    CompareAndSwap,
    Scan,
}

impl OperationKind {
    const ALL: [OperationKind; 5] = [Self::Get, Self::Put, Self::Delete, Self::CompareAndSwap, Self::Scan];

    /// The kind of `operation`.
    pub fn of(operation: &Operation) -> Self {
        match operation {
            Operation::Get { .. } => Self::Get,
            Operation::Put { .. } => Self::Put,
            Operation::Delete { .. } => Self::Delete,
            Operation::CompareAndSwap { .. } => Self::CompareAndSwap,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Put => "put",
            Self::Delete => "delete",
            Self::CompareAndSwap => "cas",
            Self::Scan => "scan",
        }
    }
}

/// How a request ended, as the `outcome` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A value was read, written, or a scan page returned.
    Ok,
    /// A get found no live value.
    NotFound,
    /// A compare-and-swap's expectation did not hold.
    CasMismatch,
    /// Refused for load (answered "overloaded").
    Overloaded,
    /// Replicas did not answer in time, or the write's fate is unknown.
    Timeout,
    /// Too few replicas were up.
    Unavailable,
    /// Refused for a limit, or failed in storage.
    Error,
}

impl RequestOutcome {
    const ALL: [RequestOutcome; 7] = [
        Self::Ok,
        Self::NotFound,
        Self::CasMismatch,
        Self::Overloaded,
        Self::Timeout,
        Self::Unavailable,
        Self::Error,
    ];

    /// The outcome of an operation's result.
    pub fn of(result: &Result<Outcome, Failure>) -> Self {
        match result {
            Ok(Outcome::Value { .. } | Outcome::Written { .. }) => Self::Ok,
            Ok(Outcome::NotFound) => Self::NotFound,
            Ok(Outcome::CasMismatch { .. }) => Self::CasMismatch,
            Err(failure) => Self::of_failure(failure),
        }
    }

    /// The outcome of a failure.
    pub fn of_failure(failure: &Failure) -> Self {
        match failure.code {
            ErrorCode::Overloaded => Self::Overloaded,
            ErrorCode::Timeout | ErrorCode::Indeterminate => Self::Timeout,
            ErrorCode::Unavailable => Self::Unavailable,
            _ => Self::Error,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotFound => "not_found",
            Self::CasMismatch => "cas_mismatch",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
        }
    }
}

/// A client protocol, as the `protocol` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// ringkv's own framed protocol (client and shard ports).
    Native,
    /// The Redis protocol (`resp_listen`).
    Resp,
}

impl Protocol {
    const ALL: [Protocol; 2] = [Self::Native, Self::Resp];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Resp => "resp",
        }
    }
}

/// Why a request or connection was answered "overloaded", as the `reason` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverloadReason {
    /// The connection had `in_flight_max` requests running.
    InFlight,
    /// The shard had `connections_max` connections open.
    Connections,
    /// The request itself failed "overloaded" (forwarding or replica windows full).
    Request,
}

impl OverloadReason {
    const ALL: [OverloadReason; 3] = [Self::InFlight, Self::Connections, Self::Request];

    fn label(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight_max",
            Self::Connections => "connections_max",
            Self::Request => "request",
        }
    }
}

/// Per protocol connection figures.
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    pub accepted: Cell64,
    pub refused: Cell64,
    pub open: Cell64,
    pub bytes_in: Cell64,
    pub bytes_out: Cell64,
    /// Authentication attempts refused (a wrong user or password).
    pub auth_failures: Cell64,
}

const OPERATIONS: usize = OperationKind::ALL.len();
const OUTCOMES: usize = RequestOutcome::ALL.len();

/// One shard's metrics. Written by the shard's thread only (see the module docs).
#[derive(Debug, Default)]
pub struct ShardMetrics {
    requests: [[Cell64; OUTCOMES]; OPERATIONS],
    latency: [Histogram; OPERATIONS],
    connections: [ConnectionMetrics; 2],
    overloaded: [Cell64; OverloadReason::ALL.len()],
    /// Reads answered from memory whose reply waited for the commit of the write they found.
    pub reads_held: Cell64,
    pub wal_syncs: Cell64,
    pub wal_sync_latency: Histogram,
    /// Times the node's nudge thread woke this shard after its watch stopped ticking. Written
    /// only by that thread.
    pub nudges: Cell64,
    /// The kernel's account of the shard's thread, once it has started (see
    /// [`ShardMetrics::record_thread`]).
    thread: OnceLock<ThreadSchedStat>,
}

impl ShardMetrics {
    /// Records a request that ended with `outcome` after `elapsed`.
    #[inline]
    pub fn request(&self, operation: OperationKind, outcome: RequestOutcome, elapsed: Duration) {
        self.count_request(operation, outcome);
        self.observe_latency(operation, elapsed, 1);
    }

    /// Counts a request that ended with `outcome`, its latency observed apart (see
    /// [`ShardMetrics::observe_latency`]).
    #[inline]
    pub fn count_request(&self, operation: OperationKind, outcome: RequestOutcome) {
        self.requests[operation as usize][outcome as usize].add(1);
        if outcome == RequestOutcome::Overloaded {
            self.overloaded(OverloadReason::Request);
        }
    }

    /// Observes the latency `elapsed` of `requests` requests of `operation` answered together.
    #[inline]
    pub fn observe_latency(&self, operation: OperationKind, elapsed: Duration, requests: u64) {
        self.latency[operation as usize].observe_many(elapsed, requests);
    }

    /// The latency histogram of `operation`.
    pub fn latency(&self, operation: OperationKind) -> &Histogram {
        &self.latency[operation as usize]
    }

    /// Requests of `operation` that ended with `outcome` so far.
    pub fn requests(&self, operation: OperationKind, outcome: RequestOutcome) -> u64 {
        self.requests[operation as usize][outcome as usize].get()
    }

    /// Records the calling thread as the shard's: its scheduler figures are rendered from now on,
    /// where the kernel keeps them. Once only; a later call changes nothing.
    pub fn record_thread(&self) {
        if let Ok(thread) = ThreadSchedStat::of_this_thread() {
            let _ = self.thread.set(thread);
        }
    }

    /// The kernel's account of the shard's thread (time on a CPU, time waiting for one), or
    /// `None` before the thread starts, after it ends, or where the kernel keeps no account.
    /// Read from `/proc` by any thread, so it answers even while the shard itself cannot.
    pub fn scheduler(&self) -> Option<SchedStat> {
        self.thread.get()?.read().ok()
    }

    /// Records an "overloaded" answer.
    #[inline]
    pub fn overloaded(&self, reason: OverloadReason) {
        self.overloaded[reason as usize].add(1);
    }

    /// The connection figures of `protocol`.
    #[inline]
    pub fn connections(&self, protocol: Protocol) -> &ConnectionMetrics {
        &self.connections[protocol as usize]
    }
}

impl ringkv_io::SyncObserver for ShardMetrics {
    fn synced(&self, file: &str, elapsed: Duration) {
        if ringkv_storage::wal::parse_segment_file_name(file).is_some() {
            self.wal_syncs.add(1);
            self.wal_sync_latency.observe(elapsed);
        }
    }
}

/// Renders every shard's metrics (`shards[i]` is shard i) with the figures each answered this
/// scrape with (`figures[i]`), in Prometheus's text format, 0.0.4. A shard whose figures are
/// unavailable has no sample in their families.
pub fn render(
    shards: &[std::sync::Arc<ShardMetrics>],
    figures: &[Result<ShardFigures, FiguresUnavailable>],
) -> String {
    assert_eq!(shards.len(), figures.len(), "one answer per shard");
    let mut out = String::with_capacity(64 << 10);
    let each =
        |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&ShardMetrics) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (shard, metrics) in shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(metrics));
            }
        };

    let name = "ringkv_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Client operations this shard received, by operation and outcome (a batch counts each \
         operation).\n# TYPE {name} counter"
    );
    for (shard, metrics) in shards.iter().enumerate() {
        for operation in OperationKind::ALL {
            for outcome in RequestOutcome::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{shard}\",operation=\"{}\",outcome=\"{}\"}} {}",
                    operation.label(),
                    outcome.label(),
                    metrics.requests(operation, outcome)
                );
            }
        }
    }
    let name = "ringkv_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from a client operation reaching the shard's router to its result.\n# TYPE {name} \
         histogram"
    );
    for (shard, metrics) in shards.iter().enumerate() {
        for operation in OperationKind::ALL {
            let labels = format!("shard=\"{shard}\",operation=\"{}\"", operation.label());
            metrics.latency[operation as usize].render(&mut out, name, &labels);
        }
    }
    let name = "ringkv_overloaded_total";
    let _ = writeln!(
        out,
        "# HELP {name} Answers \"overloaded\", by the bound that was full.\n# TYPE {name} counter"
    );
    for (shard, metrics) in shards.iter().enumerate() {
        for reason in OverloadReason::ALL {
            let value = metrics.overloaded[reason as usize].get();
            let _ = writeln!(out, "{name}{{shard=\"{shard}\",reason=\"{}\"}} {value}", reason.label());
        }
    }
    type ConnectionField = fn(&ConnectionMetrics) -> &Cell64;
    let connection_metrics: [(&str, &str, &str, ConnectionField); 6] = [
        ("ringkv_connections_accepted_total", "counter", "Client connections accepted.", |c| &c.accepted),
        (
            "ringkv_connections_refused_total",
            "counter",
            "Client connections refused because connections_max were open.",
            |c| &c.refused,
        ),
        ("ringkv_connections_open", "gauge", "Client connections open now.", |c| &c.open),
        ("ringkv_received_bytes_total", "counter", "Bytes read from client connections.", |c| &c.bytes_in),
        ("ringkv_sent_bytes_total", "counter", "Bytes written to client connections.", |c| &c.bytes_out),
        (
            "ringkv_auth_failures_total",
            "counter",
            "Client authentication attempts refused (wrong user or password).",
            |c| &c.auth_failures,
        ),
    ];
    for (name, kind, help, field) in connection_metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, metrics) in shards.iter().enumerate() {
            for protocol in Protocol::ALL {
                let value = field(metrics.connections(protocol)).get();
                let _ =
                    writeln!(out, "{name}{{shard=\"{shard}\",protocol=\"{}\"}} {value}", protocol.label());
            }
        }
    }

    each(
        &mut out,
        "ringkv_reads_held_total",
        "counter",
        "Reads whose reply waited for the group commit of the write they found (visible, not yet durable).",
        &|m| m.reads_held.get(),
    );
    each(&mut out, "ringkv_wal_syncs_total", "counter", "fdatasync calls on the write-ahead log.", &|m| {
        m.wal_syncs.get()
    });
    each(
        &mut out,
        "ringkv_shard_nudges_total",
        "counter",
        "Times the shard went a whole 100 ms without its 20 ms tick and was woken from outside: a starved \
         core, or an executor that slept through its timer.",
        &|m| m.nudges.get(),
    );
    let scheduler: Vec<Option<SchedStat>> = shards.iter().map(|metrics| metrics.scheduler()).collect();
    type SchedulerField = fn(&SchedStat) -> Duration;
    let scheduler_families: [(&str, &str, SchedulerField); 2] = [
        (
            "ringkv_shard_cpu_seconds_total",
            "Time the shard's thread ran on a CPU (the kernel's schedstat).",
            |s| s.on_cpu,
        ),
        (
            "ringkv_shard_cpu_wait_seconds_total",
            "Time the shard's thread was ready to run but waited for a CPU (the kernel's schedstat run \
             delay): its core is shared with other busy threads, and every request it holds waits too.",
            |s| s.waiting,
        ),
    ];
    for (name, help, field) in scheduler_families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (shard, figures) in scheduler.iter().enumerate() {
            if let Some(figures) = figures {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {:.6}", field(figures).as_secs_f64());
            }
        }
    }
    let name = "ringkv_wal_sync_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Time each write-ahead log fdatasync took.\n# TYPE {name} histogram");
    for (shard, metrics) in shards.iter().enumerate() {
        metrics.wal_sync_latency.render(&mut out, name, &format!("shard=\"{shard}\""));
    }

    let name = "ringkv_shard_figures_available";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when the shard answered this scrape with its storage and cluster figures, 0 when \
         it did not in time (those series then leave the shard out).\n# TYPE {name} gauge"
    );
    for (shard, answer) in figures.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", u8::from(answer.is_ok()));
    }
    type Field = fn(&ShardFigures) -> u64;
    let families: [(&str, &str, &str, Field); 37] = [
        ("ringkv_memtable_bytes", "gauge", "Bytes held by the memtables.", |m| {
            m.storage.memtable_bytes as u64
        }),
        ("ringkv_block_cache_bytes", "gauge", "Bytes held by the block cache.", |m| {
            m.storage.block_cache_bytes as u64
        }),
        (
            "ringkv_block_cache_hits_total",
            "counter",
            "Blocks that reads found in the block cache (compactions' and long scans' passes not counted).",
            |m| m.storage.block_cache_hits,
        ),
        (
            "ringkv_block_cache_misses_total",
            "counter",
            "Blocks that reads did not find in the block cache and read from the disk.",
            |m| m.storage.block_cache_misses,
        ),
        ("ringkv_row_cache_bytes", "gauge", "Bytes held by the row cache.", |m| m.storage.row_cache_bytes as u64),
        (
            "ringkv_row_cache_hits_total",
            "counter",
            "Reads of keys no memtable held that the row cache answered.",
            |m| m.storage.row_cache_hits,
        ),
        (
            "ringkv_row_cache_misses_total",
            "counter",
            "Reads of keys no memtable held that went to the tables.",
            |m| m.storage.row_cache_misses,
        ),
        ("ringkv_sstable_bytes", "gauge", "Bytes of live SSTables.", |m| m.storage.table_bytes),
        ("ringkv_sstables", "gauge", "Live SSTables.", |m| m.storage.tables as u64),
        ("ringkv_flushes_total", "counter", "Memtable flushes to SSTables.", |m| m.storage.flushes),
        (
            "ringkv_log_bound_seals_total",
            "counter",
            "Memtables flushed before they were full because they stood for wal_bytes_max of the write-ahead log.",
            |m| m.storage.log_bound_seals,
        ),
        ("ringkv_flush_bytes_total", "counter", "Bytes written by flushes.", |m| m.storage.flush_bytes),
        ("ringkv_compactions_total", "counter", "Compactions run.", |m| m.storage.compactions),
        (
            "ringkv_background_holds_total",
            "counter",
            "Times deferrable flushes and compactions slept to keep to background_share_percent.",
            |m| m.background.holds,
        ),
        ("ringkv_compaction_bytes_total", "counter", "Bytes written by compactions.", |m| {
            m.storage.compaction_bytes
        }),
        (
            "ringkv_wal_bytes_total",
            "counter",
            "Bytes written to the write-ahead log, padding included.",
            |m| m.storage.wal_bytes,
        ),
        ("ringkv_user_bytes_total", "counter", "Key and value bytes written to the storage engine.", |m| {
            m.storage.user_bytes
        }),
        (
            "ringkv_replica_timeouts_total",
            "counter",
            "Coordinated requests answered \"timeout\" because replicas did not answer in time.",
            |m| m.cluster.replica_timeouts,
        ),
        (
            "ringkv_read_repairs_total",
            "counter",
            "Coordinated reads that found stale replicas and repaired them.",
            |m| m.cluster.read_repairs,
        ),
        ("ringkv_read_repair_replicas_total", "counter", "Replicas sent a read repair.", |m| {
            m.cluster.read_repair_replicas
        }),
        ("ringkv_hints_stored_total", "counter", "Hints stored for replicas that missed a write.", |m| {
            m.cluster.hints_stored
        }),
        ("ringkv_hints_stored_bytes_total", "counter", "Bytes of hints stored.", |m| {
            m.cluster.hints_stored_bytes
        }),
        ("ringkv_hints_replayed_total", "counter", "Hints delivered to their replica.", |m| {
            m.cluster.hints_replayed
        }),
        ("ringkv_hints_replayed_bytes_total", "counter", "Bytes of hints delivered.", |m| {
            m.cluster.hints_replayed_bytes
        }),
        (
            "ringkv_hints_dropped_full_total",
            "counter",
            "Hints not kept because the hint bytes bounds were reached.",
            |m| m.cluster.hints_dropped_full,
        ),
        (
            "ringkv_hints_dropped_window_total",
            "counter",
            "Hints not kept because their replica was down longer than max_hint_window_ms.",
            |m| m.cluster.hints_dropped_window,
        ),
        (
            "ringkv_hints_dropped_grace_total",
            "counter",
            "Hints dropped undelivered after the tombstone grace period.",
            |m| m.cluster.hints_dropped_grace,
        ),
        (
            "ringkv_anti_entropy_exchanges_total",
            "counter",
            "Anti-entropy exchanges of a range with a replica.",
            |m| m.cluster.anti_entropy_exchanges,
        ),
        (
            "ringkv_anti_entropy_exchanges_failed_total",
            "counter",
            "Anti-entropy exchanges that failed.",
            |m| m.cluster.anti_entropy_exchanges_failed,
        ),
        (
            "ringkv_anti_entropy_keys_pushed_total",
            "counter",
            "Keys anti-entropy sent to a stale replica.",
            |m| m.cluster.anti_entropy_keys_pushed,
        ),
        (
            "ringkv_anti_entropy_keys_pulled_total",
            "counter",
            "Keys anti-entropy fetched from a newer replica.",
            |m| m.cluster.anti_entropy_keys_pulled,
        ),
        (
            "ringkv_anti_entropy_bytes_sent_total",
            "counter",
            "Bytes of anti-entropy repair traffic sent.",
            |m| m.cluster.anti_entropy_bytes_sent,
        ),
        (
            "ringkv_shard_rebuilding",
            "gauge",
            "1 while the shard has lost data (missing tables, or its files gone) and answers no replica read of a range anti-entropy has not restored yet.",
            |m| m.cluster.rebuilding,
        ),
        (
            "ringkv_socket_polls_total",
            "counter",
            "Times the shard asked its epoll set which sockets have data (while busy).",
            |m| m.sockets.asks,
        ),
        (
            "ringkv_socket_readers_woken_total",
            "counter",
            "Socket readers woken because the epoll set named their socket.",
            |m| m.sockets.woken,
        ),
        (
            "ringkv_socket_idle_spells_total",
            "counter",
            "Times the shard found itself idle and its socket readers moved to io_uring polls.",
            |m| m.sockets.idle_spells,
        ),
        (
            "ringkv_socket_reads_after_idle_total",
            "counter",
            "Socket reads made through glommio and its io_uring poll while the shard idled.",
            |m| m.sockets.reads_through_glommio,
        ),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, answer) in figures.iter().enumerate() {
            if let Ok(figures) = answer {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", field(figures));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn latencies_fall_in_the_first_bucket_at_or_above_them() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_micros(51));
        histogram.observe(Duration::from_secs(60));
        assert_eq!(histogram.buckets[0].get(), 1, "le=50us holds 50us");
        assert_eq!(histogram.buckets[1].get(), 1, "51us falls in le=100us");
        assert_eq!(histogram.buckets[LATENCY_BUCKETS_MICROS.len()].get(), 1, "a minute falls in +Inf");
        assert_eq!(histogram.count(), 3);
    }

    #[test]
    fn seconds_are_written_exactly() {
        assert_eq!(format_seconds(50), "0.00005");
        assert_eq!(format_seconds(2_500_000), "2.5");
        assert_eq!(format_seconds(1_000_000), "1");
        assert_eq!(format_seconds(0), "0");
    }

    #[test]
    fn rendering_names_every_shard_and_sums_buckets() {
        let shards = vec![Arc::new(ShardMetrics::default()), Arc::new(ShardMetrics::default())];
        shards[1].request(OperationKind::Put, RequestOutcome::Ok, Duration::from_micros(300));
        shards[1].request(OperationKind::Put, RequestOutcome::Overloaded, Duration::from_micros(10));
        shards[0].connections(Protocol::Resp).bytes_in.add(7);
        // Shard 0's thread is this one; shard 1's never started.
        shards[0].record_thread();
        let mut figures = ShardFigures::default();
        figures.cluster.hints_stored = 4;
        let text = render(&shards, &[Ok(figures), Err(FiguresUnavailable::Timeout)]);
        assert!(text.contains("ringkv_requests_total{shard=\"1\",operation=\"put\",outcome=\"ok\"} 1\n"));
        assert!(text.contains(
            "ringkv_request_duration_seconds_bucket{shard=\"1\",operation=\"put\",le=\"0.0005\"} 2\n"
        ));
        assert!(text.contains(
            "ringkv_request_duration_seconds_bucket{shard=\"1\",operation=\"put\",le=\"0.00025\"} 1\n"
        ));
        assert!(text.contains("ringkv_request_duration_seconds_count{shard=\"1\",operation=\"put\"} 2\n"));
        assert!(text.contains("ringkv_request_duration_seconds_sum{shard=\"1\",operation=\"put\"} 0.00031\n"));
        assert!(text.contains("ringkv_overloaded_total{shard=\"1\",reason=\"request\"} 1\n"));
        assert!(text.contains("ringkv_received_bytes_total{shard=\"0\",protocol=\"resp\"} 7\n"));
        assert!(text.contains("ringkv_hints_stored_total{shard=\"0\"} 4\n"));
        assert!(text.contains("ringkv_block_cache_misses_total{shard=\"0\"} 0\n"));
        // Shard 1 did not answer: its figures are left out, not shown as zero, and said so.
        assert!(!text.contains("ringkv_hints_stored_total{shard=\"1\"}"));
        assert!(text.contains("ringkv_shard_figures_available{shard=\"0\"} 1\n"));
        assert!(text.contains("ringkv_shard_figures_available{shard=\"1\"} 0\n"));
        // The scheduler's figures come from the kernel, for a shard whose thread has started.
        if shards[0].scheduler().is_some() {
            let on_cpu = text
                .lines()
                .find_map(|line| line.strip_prefix("ringkv_shard_cpu_seconds_total{shard=\"0\"} "))
                .map(|value| value.parse::<f64>().unwrap());
            // A thread's time is banked at ticks and switches, so a young one may still show 0.
            assert!(on_cpu.is_some_and(|seconds| seconds >= 0.0), "{on_cpu:?}");
            assert!(text.contains("ringkv_shard_cpu_wait_seconds_total{shard=\"0\"} "));
        }
        assert!(!text.contains("ringkv_shard_cpu_seconds_total{shard=\"1\"}"));
        assert!(!text.contains("ringkv_shard_cpu_wait_seconds_total{shard=\"1\"}"));
        // Every family is announced once, before its samples.
        let types = text.lines().filter(|line| line.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|line| line.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
        assert_eq!(types, 53);
    }

    #[test]
    fn only_wal_segments_count_as_wal_syncs() {
        use ringkv_io::SyncObserver;
        let metrics = ShardMetrics::default();
        metrics.synced(&ringkv_storage::wal::segment_file_name(3), Duration::from_micros(700));
        metrics.synced("000004.sst", Duration::from_micros(700));
        assert_eq!(metrics.wal_syncs.get(), 1);
        assert_eq!(metrics.wal_sync_latency.count(), 1);
    }
}
