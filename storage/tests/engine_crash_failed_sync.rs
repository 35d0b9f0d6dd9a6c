//! A failed fsync (or write) poisons the engine (fail-stop, the "fsyncgate" lesson): the write
//! that hit it fails, every later write, delete, CAS, flush, compaction and close is refused with
//! `StorageError::Poisoned`, reads of what is there go on, and after a power loss and a reopen
//! exactly the acknowledged writes are there — nothing unacknowledged is claimed durable.
//!
//! The failure is injected after every possible number of successful syncs (or writes) in turn,
//! so it lands in a group commit, a WAL segment roll, a flush forced by a write stall and the
//! manifest rewrite that follows it.

use crate::common;

use bytes::Bytes;
use common::{reopen_and_check, state_after, Write};
use futures_executor::block_on;
use ringkv_storage::disk::memory::{CrashMode, MemDisk};
use ringkv_storage::{Engine, EngineOptions, Expected, StorageError, SyncMode};
use std::collections::BTreeSet;

fn options() -> EngineOptions {
    EngineOptions {
        sync: SyncMode::Always,
        memtable_bytes_max: 4 << 10,
        block_cache_bytes: 64 << 10,
        wal_segment_bytes_max: 8 << 10,
        ..EngineOptions::default()
    }
}

fn history() -> Vec<Write> {
    (0..90)
        .map(|index| {
            if index % 11 == 10 {
                Write::delete((index * 3) % 30)
            } else {
                Write::put(index, (index * 7) % 30, 100 + (index * 53) % 400)
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Sync,
    Write,
}

fn assert_poisoned<T: std::fmt::Debug>(result: ringkv_storage::Result<T>, what: &str, context: &str) {
    assert!(matches!(result, Err(StorageError::Poisoned { .. })), "{context}: {what} gave {result:?}");
}

/// Runs the history with `fault` injected after `successes` successful operations of its kind.
/// Returns false if the history completed without hitting it.
fn run(fault: Fault, successes: u64) -> bool {
    let writes = history();
    let context = format!("{fault:?} fails after {successes} successes");
    let disk = MemDisk::new();
    let engine = block_on(Engine::open(disk.clone(), options())).unwrap();
    match fault {
        Fault::Sync => disk.fail_syncs_after(successes),
        Fault::Write => disk.fail_writes_after(successes),
    }
    let mut acknowledged = 0;
    for (index, write) in writes.iter().enumerate() {
        match block_on(write.issue(&engine, index)) {
            Ok(()) => acknowledged += 1,
            Err(error) => {
                assert!(error.is_fatal(), "{context}: write {index} failed with {error}");
                break;
            }
        }
    }
    if acknowledged == writes.len() {
        return false;
    }
    assert!(engine.failure().is_some(), "{context}: the engine says why it refuses writes");

    // Fail-stop: nothing is accepted any more.
    let key = Bytes::from_static(b"after-failure");
    let value = Bytes::from_static(b"v");
    block_on(async {
        assert_poisoned(engine.put(key.clone(), value.clone(), 1_000, None).await, "put", &context);
        assert_poisoned(engine.delete(key.clone(), 1_001, 0).await, "delete", &context);
        assert_poisoned(
            engine.compare_and_swap(key.clone(), Expected::Absent, value, 1_002, None, 0).await,
            "compare_and_swap",
            &context,
        );
        assert_poisoned(engine.flush().await, "flush", &context);
        assert_poisoned(engine.compact_all(0).await, "compact_all", &context);
        // Close may still sync the WAL (a failed flush leaves it intact); either way the engine
        // stays shut.
        let _ = engine.close().await;
        let after_close = engine.put(key.clone(), Bytes::from_static(b"v"), 1_003, None).await;
        assert!(
            matches!(after_close, Err(StorageError::Poisoned { .. } | StorageError::Closed)),
            "{context}: put after close gave {after_close:?}"
        );
        // Reads go on, and show only what is durable: every key reads as the acknowledged
        // writes left it, except that a read finding the failed write (applied in memory, never
        // made durable) fails rather than show it.
        let acknowledged_state = state_after(&writes, acknowledged);
        let keys: BTreeSet<&Bytes> = writes.iter().map(|write| &write.key).collect();
        let mut refused = 0;
        for key in keys {
            match engine.get(key, 0).await {
                Ok(found) => assert_eq!(
                    found.map(|found| found.value),
                    acknowledged_state.get(key).cloned(),
                    "{context}: {key:?} shows something not acknowledged"
                ),
                Err(error) => {
                    assert!(matches!(error, StorageError::Poisoned { .. }), "{context}: {error}");
                    refused += 1;
                }
            }
        }
        assert!(refused <= 1, "{context}: only the failed write's key cannot be read");
    });
    drop(engine);

    let dropped = disk.crash(CrashMode::DropUnsynced);
    let recovered = block_on(reopen_and_check(&dropped, options(), &writes, acknowledged, &context));
    assert_eq!(recovered.prefix, acknowledged, "{context}: a write whose sync failed is not durable");
    drop(recovered);
    let torn = disk.crash(CrashMode::TearLastWrite { sectors_kept: 8 });
    let recovered = block_on(reopen_and_check(&torn, options(), &writes, acknowledged, &context));
    assert!(recovered.prefix <= acknowledged + 1, "{context}: at most the failed write survives");
    true
}

fn run_every_failure_point(fault: Fault) {
    let mut failure_points = 0;
    for successes in 0.. {
        if !run(fault, successes) {
            break;
        }
        failure_points += 1;
    }
    // The history needs well over a hundred syncs (and writes), so it is hit in every phase.
    assert!(failure_points >= 60, "{fault:?}: only {failure_points} failure points");
}

#[test]
fn engine_failed_sync_poisons_and_keeps_exactly_the_acknowledged_writes() {
    run_every_failure_point(Fault::Sync);
}

#[test]
fn engine_failed_write_poisons_and_keeps_exactly_the_acknowledged_writes() {
    run_every_failure_point(Fault::Write);
}
