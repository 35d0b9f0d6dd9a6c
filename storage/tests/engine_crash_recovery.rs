//! Crash recovery with writes acknowledged one at a time (`SyncMode::Always`): a power loss after
//! any disk operation — in the middle of a group commit, a WAL segment roll, a flush, a manifest
//! rewrite or a compaction — must leave a state that reopens, holds every acknowledged write, and
//! equals the first `k` writes of the history for some `k` (no holes: RocksDB's check). With one
//! write in flight at a time, `k` is the acknowledged count or one more.
//!
//! Both crash modes are covered: unsynced writes dropped, and unsynced writes kept with the last
//! one torn after 0 to 7 sectors.

use crate::common;

use common::{reopen_and_check, Acknowledged, CrashPointDisk, Snapshot, Write};
use futures_executor::block_on;
use proptest::prelude::*;
use ringkv_storage::disk::memory::CrashMode;
use ringkv_storage::{Engine, EngineOptions, SyncMode};
use std::rc::Rc;

const SLOTS: usize = 48;

fn options() -> EngineOptions {
    EngineOptions {
        sync: SyncMode::Always,
        memtable_bytes_max: 4 << 10,
        block_cache_bytes: 64 << 10,
        wal_segment_bytes_max: 8 << 10,
        // Tombstones may be purged by any compaction that includes the oldest table.
        tombstone_grace_ms: 0,
        compaction_width_min: 2,
        compaction_width_max: 4,
        ..EngineOptions::default()
    }
}

#[derive(Clone, Debug)]
enum Step {
    Put { slot: usize, len: usize },
    Delete { slot: usize },
    Flush,
    Compact,
    CompactAll,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => (0..SLOTS, 1usize..400).prop_map(|(slot, len)| Step::Put { slot, len }),
        4 => (0..SLOTS).prop_map(|slot| Step::Delete { slot }),
        1 => Just(Step::Flush),
        1 => Just(Step::Compact),
        1 => Just(Step::CompactAll),
    ]
}

fn crash_mode() -> impl Strategy<Value = CrashMode> {
    prop_oneof![
        Just(CrashMode::DropUnsynced),
        (0usize..8).prop_map(|sectors_kept| CrashMode::TearLastWrite { sectors_kept }),
    ]
}

/// The writes of a script, in order.
fn history(steps: &[Step]) -> Vec<Write> {
    let mut writes = Vec::new();
    for step in steps {
        match *step {
            Step::Put { slot, len } => writes.push(Write::put(writes.len(), slot, len)),
            Step::Delete { slot } => writes.push(Write::delete(slot)),
            _ => {}
        }
    }
    writes
}

/// Runs the script on `disk`, acknowledging each write as it resolves.
async fn run_script(disk: &CrashPointDisk, steps: &[Step], writes: &[Write], acknowledged: &Acknowledged) {
    let engine = Engine::open(disk.clone(), options()).await.unwrap();
    let mut next_write = 0;
    for step in steps {
        match step {
            Step::Put { .. } | Step::Delete { .. } => {
                writes[next_write].issue(&engine, next_write).await.unwrap();
                acknowledged.record(next_write);
                next_write += 1;
            }
            Step::Flush => engine.flush().await.unwrap(),
            Step::Compact => {
                engine.compact(1).await.unwrap();
            }
            Step::CompactAll => {
                engine.compact_all(1).await.unwrap();
            }
        }
    }
}

/// Checks one snapshot; returns what recovery reported.
async fn check_snapshot(snapshot: &Snapshot, writes: &[Write]) -> ringkv_storage::RecoveryReport {
    let context = format!("crash after {:?} in mode {:?}", snapshot.after, snapshot.mode);
    let recovered =
        reopen_and_check(&snapshot.disk, options(), writes, snapshot.acknowledged, &context).await;
    // One write is in flight at a time: at most it, unacknowledged, survives.
    assert!(
        recovered.prefix <= snapshot.acknowledged + 1,
        "{context}: {} writes survived, {} acknowledged",
        recovered.prefix,
        snapshot.acknowledged
    );
    if matches!(snapshot.mode, CrashMode::DropUnsynced | CrashMode::TearLastWrite { sectors_kept: 0 }) {
        assert_eq!(recovered.report.torn_tail_bytes, 0, "{context}: nothing unsynced survives");
    }
    // The recovered engine takes new writes, flushes them and reads them back.
    let engine = recovered.engine;
    let extra = common::key(9_999);
    engine.put(extra.clone(), common::value(9_999, 100), u64::MAX / 2, None).await.unwrap();
    engine.flush().await.unwrap();
    engine.compact_all(1).await.unwrap();
    assert_eq!(
        engine.get(&extra, 0).await.unwrap().map(|found| found.value),
        Some(common::value(9_999, 100))
    );
    recovered.report
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_crash_at_random_points_keeps_an_acknowledged_prefix(
        steps in proptest::collection::vec(step(), 1..160),
        crash_every in 3u64..30,
        crash_offset in 0u64..30,
        tear in crash_mode(),
    ) {
        let writes = history(&steps);
        let acknowledged = Rc::new(Acknowledged::default());
        let disk = CrashPointDisk::new(vec![CrashMode::DropUnsynced, tear], acknowledged.clone(), move |operation| {
            (operation.number + crash_offset) % crash_every == 0
        });
        block_on(async {
            run_script(&disk, &steps, &writes, &acknowledged).await;
            for snapshot in disk.take_snapshots() {
                check_snapshot(&snapshot, &writes).await;
            }
        });
    }
}

/// A fixed script crashed after every single disk operation, in both modes; also proves the
/// crash points reach the interesting recoveries (torn tails, orphan tables, replay over tables).
#[test]
fn engine_crash_after_every_disk_operation_keeps_an_acknowledged_prefix() {
    let mut steps = Vec::new();
    for index in 0..150usize {
        steps.push(Step::Put { slot: (index * 7) % SLOTS, len: 50 + (index * 37) % 700 });
        if index % 9 == 4 {
            steps.push(Step::Delete { slot: (index * 5) % SLOTS });
        }
        if index % 40 == 39 {
            steps.push(Step::Flush);
            steps.push(Step::Compact);
        }
    }
    steps.push(Step::CompactAll);
    let writes = history(&steps);
    let acknowledged = Rc::new(Acknowledged::default());
    let disk = CrashPointDisk::new(
        vec![CrashMode::DropUnsynced, CrashMode::TearLastWrite { sectors_kept: 1 }],
        acknowledged.clone(),
        |_| true,
    );
    block_on(async {
        run_script(&disk, &steps, &writes, &acknowledged).await;
        let snapshots = disk.take_snapshots();
        assert!(snapshots.len() > 500, "only {} crash points", snapshots.len());
        let (mut torn, mut orphans, mut replayed_over_tables) = (0, 0, 0);
        for snapshot in &snapshots {
            let report = check_snapshot(snapshot, &writes).await;
            torn += usize::from(report.torn_tail_bytes > 0);
            orphans += usize::from(report.orphans_removed > 0);
            replayed_over_tables += usize::from(report.records_replayed > 0 && report.tables_opened > 0);
        }
        assert!(torn > 0, "no crash point left a torn WAL tail");
        assert!(orphans > 0, "no crash point left an orphan table");
        assert!(replayed_over_tables > 0, "no crash point replayed the WAL over tables");
    });
}
