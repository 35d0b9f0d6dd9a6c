//! Flushes and compactions interrupted part-way, by an injected write or sync failure or by a
//! power loss after any of their disk operations: no acknowledged write is lost, reads keep
//! working on the poisoned engine, and reopening removes the tables (and temporary manifest) the
//! interrupted work left behind (`RecoveryReport::orphans_removed`).

use crate::common;

use common::{read_state, reopen_and_check, state_after, Acknowledged, CrashPointDisk, Write};
use futures_executor::block_on;
use ringkv_storage::disk::memory::{CrashMode, MemDisk};
use ringkv_storage::{Disk, Engine, EngineOptions, StorageError, SyncMode};
use std::rc::Rc;

const BATCH: usize = 60;

fn options() -> EngineOptions {
    EngineOptions {
        sync: SyncMode::Always,
        // Large enough that only explicit flushes write tables.
        memtable_bytes_max: 1 << 20,
        block_cache_bytes: 64 << 10,
        tombstone_grace_ms: 0,
        ..EngineOptions::default()
    }
}

/// Four batches over overlapping keys, with deletes, so a merge has versions and tombstones to
/// resolve.
fn history() -> Vec<Write> {
    let mut writes = Vec::new();
    for batch in 0..4 {
        for index in 0..BATCH {
            let slot = (index * 7 + batch * 13) % 100;
            if (index + batch) % 9 == 0 {
                writes.push(Write::delete(slot));
            } else {
                writes.push(Write::put(writes.len(), slot, 200 + (index * 31) % 900));
            }
        }
    }
    writes
}

/// Which piece of background work is interrupted.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// The fourth batch is in the memtable; flushing it is interrupted.
    Flush,
    /// Every batch is in its own table; merging them all is interrupted.
    Compaction,
}

/// Writes the history, flushing after each batch, up to the point where `work` starts.
async fn prepare<D: Disk>(engine: &Engine<D>, writes: &[Write], work: Work, acknowledged: &Acknowledged) {
    for (index, write) in writes.iter().enumerate() {
        write.issue(engine, index).await.unwrap();
        acknowledged.record(index);
        let batch_end = (index + 1) % BATCH == 0;
        let last = index + 1 == writes.len();
        if batch_end && !(last && matches!(work, Work::Flush)) {
            engine.flush().await.unwrap();
        }
    }
    assert_eq!(engine.stats().tables, if matches!(work, Work::Flush) { 3 } else { 4 });
}

async fn start<D: Disk>(engine: &Engine<D>, work: Work) -> ringkv_storage::Result<()> {
    match work {
        Work::Flush => engine.flush().await,
        Work::Compaction => {
            engine.compact_all(1).await.map(|merged| assert!(merged, "fewer than two tables to merge"))
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Sync,
    Write,
}

/// Interrupts `work` with `fault` after each possible number of successes in turn. Returns how
/// many interruptions left orphan files for recovery to remove.
fn interrupt_with_failures(work: Work, fault: Fault) -> usize {
    let writes = history();
    let mut runs_with_orphans = 0;
    for successes in 0.. {
        let context = format!("{work:?} interrupted: {fault:?} fails after {successes} successes");
        let disk = MemDisk::new();
        let engine = block_on(Engine::open(disk.clone(), options())).unwrap();
        block_on(prepare(&engine, &writes, work, &Acknowledged::default()));
        match fault {
            Fault::Sync => disk.fail_syncs_after(successes),
            Fault::Write => disk.fail_writes_after(successes),
        }
        let Err(error) = block_on(start(&engine, work)) else {
            assert!(successes >= 2, "{context}: the work needs more than {successes} operations");
            return runs_with_orphans;
        };
        assert!(error.is_fatal(), "{context}: {error}");
        assert!(engine.failure().is_some(), "{context}: the failure poisons the engine");
        let refused = block_on(writes[0].issue(&engine, writes.len()));
        assert!(matches!(refused, Err(StorageError::Poisoned { .. })), "{context}: {refused:?}");
        // Reads go on, and see everything.
        let state = block_on(read_state(&engine)).unwrap();
        assert_eq!(state, state_after(&writes, writes.len()), "{context}: reads on the poisoned engine");
        drop(engine);
        for mode in [CrashMode::DropUnsynced, CrashMode::TearLastWrite { sectors_kept: 3 }] {
            let context = format!("{context}, crash {mode:?}");
            let crashed = disk.crash(mode);
            let recovered = block_on(reopen_and_check(&crashed, options(), &writes, writes.len(), &context));
            runs_with_orphans += usize::from(recovered.report.orphans_removed > 0);
            // The reopened engine can do the interrupted work.
            block_on(async {
                start(&recovered.engine, work).await.unwrap_or_else(|error| panic!("{context}: {error}"));
                let state = read_state(&recovered.engine).await.unwrap();
                assert_eq!(state, state_after(&writes, writes.len()), "{context}: after redoing the work");
            });
        }
    }
    unreachable!("the loop returns once the work succeeds")
}

#[test]
fn engine_flush_interrupted_by_failures_loses_nothing_and_leaves_no_orphans() {
    let orphans = interrupt_with_failures(Work::Flush, Fault::Write)
        + interrupt_with_failures(Work::Flush, Fault::Sync);
    assert!(orphans > 0, "no interrupted flush left a table behind");
}

#[test]
fn engine_compaction_interrupted_by_failures_loses_nothing_and_leaves_no_orphans() {
    let orphans = interrupt_with_failures(Work::Compaction, Fault::Write)
        + interrupt_with_failures(Work::Compaction, Fault::Sync);
    assert!(orphans > 0, "no interrupted compaction left a table behind");
}

/// A power loss after every disk operation of the work, in both crash modes.
fn crash_during(work: Work) -> usize {
    let writes = history();
    let acknowledged = Rc::new(Acknowledged::default());
    let disk = CrashPointDisk::new(
        vec![CrashMode::DropUnsynced, CrashMode::TearLastWrite { sectors_kept: 2 }],
        acknowledged.clone(),
        |_| false,
    );
    let engine = block_on(Engine::open(disk.clone(), options())).unwrap();
    block_on(prepare(&engine, &writes, work, &acknowledged));
    disk.crash_after(|_| true);
    block_on(start(&engine, work)).unwrap();
    disk.crash_after(|_| false);
    let snapshots = disk.take_snapshots();
    assert!(snapshots.len() >= 16, "{work:?}: only {} crash points", snapshots.len());
    let mut with_orphans = 0;
    for snapshot in &snapshots {
        let context = format!("{work:?}: crash after {:?} in mode {:?}", snapshot.after, snapshot.mode);
        let recovered =
            block_on(reopen_and_check(&snapshot.disk, options(), &writes, writes.len(), &context));
        with_orphans += usize::from(recovered.report.orphans_removed > 0);
    }
    with_orphans
}

#[test]
fn engine_crash_during_flush_loses_nothing_and_leaves_no_orphans() {
    assert!(crash_during(Work::Flush) > 0, "no crash point left an orphan table");
}

#[test]
fn engine_crash_during_compaction_loses_nothing_and_leaves_no_orphans() {
    assert!(crash_during(Work::Compaction) > 0, "no crash point left an orphan table");
}
