//! # ringkv-io
//!
//! The only ringkv crate that touches glommio and io_uring. Everything above it (the storage
//! engine, the replication engine) is written against small traits and plain values; this crate
//! supplies the real thing on a thread-per-core glommio executor.
//!
//! ```text
//!  storage engine ──Disk / DiskFile calls──▶ DmaDisk / DmaDiskFile ──O_DIRECT via io_uring──▶ disk
//!  shard start-up ──ExecutorBuilder::run / spawn──▶ one glommio LocalExecutor per core
//!  compaction     ──spawn into low_priority_queue()──▶ runs only when foreground work leaves room
//!  flush          ──spawn into flush_queue()──▶ a quarter of serving's shares; both preempt often
//!  callers        ──clock::now_ms()──▶ wall-clock milliseconds, passed into the engines as data
//! ```
//!
//! ## Layout
//! - [`dma_disk`]: [`DmaDisk`] and [`DmaDiskFile`], the storage disk trait over glommio DMA
//!   files, including the work-around for glommio's iopoll probe bug (see `DmaDisk::open`).
//! - [`executor`]: starting a glommio executor (pinned or not, with a modest `io_memory`) and
//!   running a future on it; the flush and low-priority task queues for background work.
//! - [`engine_service`]: an engine on a DMA disk with its maintenance task in the low-priority
//!   queue and, in periodic sync mode, its sync timer; `stop()` ends both.
//! - [`blocking`]: blocking calls on glommio's helper threads, owned by tasks of their own, and
//!   the wait for them before an executor stops.
//! - [`clock`]: the wall clock, the only one the engine's callers use.
//! - [`nudge`]: [`Nudges`], the thread that wakes an executor which stopped waking up (glommio
//!   can sleep through its own timer), and the [`nudge::heartbeat`] an executor ticks with.
//! - [`schedstat`]: [`SchedStat`] and [`ThreadSchedStat`], the kernel's account of a thread's
//!   time on a CPU and time waiting for one.

pub mod blocking;
pub mod clock;
pub mod dma_disk;
pub mod engine_service;
pub mod executor;
pub mod nudge;
pub mod schedstat;

pub use clock::now_ms;
pub use dma_disk::{DmaDisk, DmaDiskFile, SyncObserver, PROBE_FILE_NAME};
pub use engine_service::EngineService;
pub use executor::{
    flush_queue, low_priority_queue, run_local, scan_queue, serving_queue, ExecutorBuilder, TaskQueueHandle,
};
pub use nudge::Nudges;
pub use schedstat::{SchedStat, ThreadSchedStat};
