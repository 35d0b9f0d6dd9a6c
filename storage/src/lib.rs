//! # ringkv-storage
//!
//! The per-shard LSM storage engine of ringkv. One instance per core; it is single-threaded and
//! owns no clock, no randomness and no runtime: files come through the [`disk::Disk`] trait,
//! times come in as arguments (`now_ms`), and versions are supplied by the caller.
//!
//! Keys are stored as `token ‖ key` ([`key`]), so storage order is token order, and every entry
//! carries a version: the highest version of a key wins everywhere, whatever the arrival order.
//!
//! ```text
//!  put/delete/cas ──▶ newer than what is stored? ──▶ WAL buffer ──group commit──▶ one fdatasync ──▶ futures resolve
//!        │
//!        └──▶ memtable ──(full)──▶ sealed ──flush──▶ SSTable ──compaction──▶ merged SSTable
//!  get ──▶ memtables ─▶ per table, newest first while it may hold a newer version:
//!          bloom filter ─▶ block index ─▶ block cache ─▶ disk
//!  scan ──▶ a range of (token, key) positions, merged from every memtable and table
//! ```
//!
//! ## Layout
//! - [`engine`]: the engine, one file per job: `engine/mod.rs` (types, state, open, installing
//!   tables), `write.rs` (write path, CAS, group-commit acknowledgement), `read.rs` (point reads,
//!   `read_now`), `scan.rs`, `flush.rs`, `compaction.rs` (running merges) and `recovery.rs` (WAL
//!   replay).
//! - [`memtable`]: recent writes in memory, newest per key.
//! - [`compaction`]: the compaction planner, a pure function of the table sizes.
//! - [`manifest`]: the durable list of tables.
//! - [`entry`]: the stored form of a key's state and its byte encoding.
//! - [`key`]: keys as stored, `token ‖ key`, so token order is storage order; positions in it.
//! - [`disk`]: the async disk trait; [`disk::memory`] is an in-memory disk with fault injection.
//! - [`options`]: tuning, including the sync mode.
//! - [`error`]: the crate's error type.
//! - [`sstable`]: the immutable sorted table files: format, writer, point reads and scans.
//! - [`block_cache`]: verified SSTable blocks kept in memory, weighted by bytes.
//! - [`wal`]: write-ahead log segments, records, recovery scan and the group-commit writer.
//! - [`hints`]: the durable hint log of one destination (hinted handoff), on the WAL's records.

pub mod block_cache;
pub mod compaction;
pub mod disk;
pub mod engine;
pub mod entry;
pub mod error;
pub mod hints;
pub mod key;
pub mod manifest;
pub mod memtable;
pub mod options;
mod prefetch;
pub mod row_cache;
pub mod sstable;
pub mod wal;

pub use disk::{Disk, DiskFile};
pub use engine::{
    is_engine_file, AtomicOutcome, CasOutcome, Engine, EngineStats, Expected, KeyHash, PendingWrite,
    RecoveryReport, ScanEntry, ScanPage, ScanRange, Unsettled, Versioned, WriteOutcome, REBUILDING_FILE,
};
pub use entry::{Entry, Value};
pub use error::{Result, StorageError};
pub use key::Position;
pub use memtable::Prefetch;
pub use options::{EngineOptions, SyncMode};

/// Longest key accepted, in bytes.
pub const KEY_BYTES_MAX: usize = 256;
/// Largest value accepted, in bytes: a client's largest value (1 MiB, which the wire enforces)
/// and a kibibyte of room for a record that wraps one, as the Paxos state of a
/// compare-and-swap across replicas holds the value it accepted.
pub const VALUE_BYTES_MAX: usize = (1 << 20) + 1024;
