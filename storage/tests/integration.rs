//! The storage engine's tests against its public interface, in one binary: each module is one
//! behaviour, named for what it checks. One binary links once, where a binary per file linked
//! the crate and its dependencies once per file.
//!
//! Cargo does not find the files under `tests/` by itself (`autotests = false`): a new one
//! needs its `mod` line below, and the workspace's `every_test_file_is_a_module` test fails
//! until it has one.

mod common;

mod engine_bit_flips;
mod engine_crash_concurrent_writes;
mod engine_crash_during_flush_and_compaction;
mod engine_crash_failed_sync;
mod engine_crash_recovery;
mod engine_crash_torn_wal_tail;
mod engine_highest_version_wins;
mod engine_maintenance_while_writer_flushes;
mod engine_model;
mod engine_purge_gate_and_missing_tables;
mod engine_scan_bounds;
