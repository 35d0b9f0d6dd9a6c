//! Crash recovery with many writes in flight at once (`SyncMode::Always`, group commit): every
//! disk operation yields once, so hundreds of puts queue behind each WAL write and sync. A power
//! loss after any operation, or a sync or write failure part-way, must keep every acknowledged
//! write; with no write stall the recovered state is also a prefix of the writes in issue order.

use crate::common;

use common::{reopen_and_check, Acknowledged, CrashPointDisk, Write};
use futures_executor::block_on;
use ringkv_storage::disk::memory::CrashMode;
use ringkv_storage::{Engine, EngineOptions, StorageError, SyncMode};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

type Task<'a> = Pin<Box<dyn Future<Output = Option<ringkv_storage::Result<()>>> + 'a>>;

/// Options without write stalls: every put applies (takes its sequence number) on its first poll,
/// so sequence order is issue order.
fn roomy_options() -> EngineOptions {
    EngineOptions {
        sync: SyncMode::Always,
        memtable_bytes_max: 4 << 20,
        block_cache_bytes: 64 << 10,
        wal_segment_bytes_max: 16 << 10,
        ..EngineOptions::default()
    }
}

/// Options with tiny memtables: writers stall behind flushes, and a maintenance task flushes and
/// compacts while they run.
fn stalling_options() -> EngineOptions {
    EngineOptions {
        memtable_bytes_max: 4 << 10,
        compaction_width_min: 2,
        compaction_width_max: 4,
        tombstone_grace_ms: 0,
        ..roomy_options()
    }
}

/// `count` puts, each to its own key.
fn history(count: usize) -> Vec<Write> {
    (0..count).map(|index| Write::put(index, index, 40 + (index * 13) % 200)).collect()
}

/// Most writes issued and not yet acknowledged, as a server bounds requests in flight. Without a
/// bound, the second group commit would take every write at once.
const IN_FLIGHT_MAX: usize = 24;

/// Resolves once `condition` holds; the driver polls it every round.
struct WaitUntil<F: Fn() -> bool>(F);

impl<F: Fn() -> bool> Future for WaitUntil<F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if (self.0)() {
            Poll::Ready(())
        } else {
            context.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// State shared by the tasks of one run.
#[derive(Default)]
struct Progress {
    /// Writes issued (their futures first polled), in index order.
    issued: Cell<usize>,
    /// Writes whose futures resolved.
    finished: Cell<usize>,
}

/// One future per write (recording acknowledgements), plus maintenance and compaction tasks when
/// asked; the last writer to finish stops them. Write `i` is issued only after write `i - 1`, and
/// only while fewer than [`IN_FLIGHT_MAX`] writes are unacknowledged. Without a write stall a put
/// takes its sequence number on its first poll, so sequence order is then index order.
fn tasks<'a>(
    engine: &'a Engine<CrashPointDisk>,
    writes: &'a [Write],
    acknowledged: &'a Acknowledged,
    progress: &'a Progress,
    background: bool,
) -> Vec<Task<'a>> {
    let mut tasks: Vec<Task<'a>> = writes
        .iter()
        .enumerate()
        .map(|(index, write)| {
            Box::pin(async move {
                WaitUntil(|| {
                    progress.issued.get() == index
                        && index - progress.finished.get().min(index) < IN_FLIGHT_MAX
                })
                .await;
                progress.issued.set(index + 1);
                let result = write.issue(engine, index).await;
                if result.is_ok() {
                    acknowledged.record(index);
                }
                progress.finished.set(progress.finished.get() + 1);
                if progress.finished.get() == writes.len() {
                    engine.stop_maintenance();
                }
                Some(result)
            }) as Task<'a>
        })
        .collect();
    if background {
        tasks.push(Box::pin(async move {
            // Its error, if any, is the one that poisoned the engine; the writers report it too.
            let _ = engine.run_maintenance(|| 1).await;
            None
        }));
        // Maintenance flushes first and compacts only when no memtable waits, which a steady
        // stream of writes never allows; compactions run beside it here.
        tasks.push(Box::pin(async move {
            while progress.finished.get() < writes.len() {
                if engine.compact(1).await.is_err() {
                    break;
                }
                // Look again once another write has finished.
                let seen = progress.finished.get();
                WaitUntil(|| progress.finished.get() > seen || progress.finished.get() == writes.len()).await;
            }
            None
        }));
    }
    tasks
}

/// The indices of the writes that were acknowledged.
fn acknowledged_indices(outputs: &[Option<ringkv_storage::Result<()>>]) -> Vec<usize> {
    outputs
        .iter()
        .enumerate()
        .filter_map(|(index, output)| matches!(output, Some(Ok(()))).then_some(index))
        .collect()
}

#[test]
fn engine_concurrent_writes_crash_after_any_operation_keeps_an_acknowledged_prefix() {
    let writes = history(300);
    let acknowledged = Rc::new(Acknowledged::default());
    let disk = CrashPointDisk::yielding(
        vec![CrashMode::DropUnsynced, CrashMode::TearLastWrite { sectors_kept: 2 }],
        acknowledged.clone(),
        |_| true,
    );
    let engine = block_on(Engine::open(disk.clone(), roomy_options())).unwrap();
    let wal_syncs_before = disk.operations();
    let progress = Progress::default();
    let outputs = common::drive_in_order(tasks(&engine, &writes, &acknowledged, &progress, false));
    assert!(outputs.iter().all(|output| matches!(output, Some(Ok(())))), "every write succeeds");
    let snapshots = disk.take_snapshots();
    let wal_syncs = snapshots
        .iter()
        .filter(|snapshot| snapshot.after.kind == "sync" && snapshot.after.number >= wal_syncs_before);
    // Two snapshots (modes) per operation.
    let group_commits = wal_syncs.count() / 2;
    assert!(
        group_commits < writes.len() / 4,
        "{group_commits} syncs for {} writes: no group commit",
        writes.len()
    );
    block_on(async {
        for snapshot in &snapshots {
            let context = format!("crash after {:?} in mode {:?}", snapshot.after, snapshot.mode);
            reopen_and_check(&snapshot.disk, roomy_options(), &writes, snapshot.acknowledged, &context).await;
        }
    });
}

#[test]
fn engine_concurrent_writes_failed_sync_acknowledges_a_prefix_and_loses_none() {
    let writes = history(200);
    for syncs_allowed in [0u64, 1, 2, 3, 5, 8] {
        let acknowledged = Rc::new(Acknowledged::default());
        let disk = CrashPointDisk::yielding(vec![], acknowledged.clone(), |_| false);
        let engine = block_on(Engine::open(disk.clone(), roomy_options())).unwrap();
        disk.inner().fail_syncs_after(syncs_allowed);
        let progress = Progress::default();
        let outputs = common::drive_in_order(tasks(&engine, &writes, &acknowledged, &progress, false));
        let acked = acknowledged_indices(&outputs);
        // Sequence order is issue order and a failed sync fails its whole group and everything
        // after it, so the acknowledged writes are exactly a prefix.
        assert_eq!(acked, (0..acked.len()).collect::<Vec<_>>(), "syncs allowed {syncs_allowed}");
        assert!(acked.len() < writes.len(), "syncs allowed {syncs_allowed}: a sync must have failed");
        for output in &outputs[acked.len()..] {
            let error = output.as_ref().unwrap().as_ref().unwrap_err();
            assert!(error.is_fatal(), "syncs allowed {syncs_allowed}: {error}");
        }
        let later = block_on(writes[0].issue(&engine, writes.len()));
        assert!(matches!(later, Err(StorageError::Poisoned { .. })), "{later:?}");
        drop(engine);
        let crashed = disk.inner().crash(CrashMode::DropUnsynced);
        let context = format!("syncs allowed {syncs_allowed}");
        let recovered = block_on(reopen_and_check(&crashed, roomy_options(), &writes, acked.len(), &context));
        // The failed sync made nothing durable.
        assert_eq!(recovered.prefix, acked.len(), "{context}");
    }
}

#[test]
fn engine_concurrent_writes_with_stalls_and_maintenance_survive_crashes() {
    let writes = history(400);
    let acknowledged = Rc::new(Acknowledged::default());
    // A crash point every few operations, so the reopen checks stay quick.
    let disk = CrashPointDisk::yielding(
        vec![CrashMode::DropUnsynced, CrashMode::TearLastWrite { sectors_kept: 5 }],
        acknowledged.clone(),
        |operation| operation.number % 7 == 3,
    );
    let engine = block_on(Engine::open(disk.clone(), stalling_options())).unwrap();
    let progress = Progress::default();
    let outputs = common::drive_in_order(tasks(&engine, &writes, &acknowledged, &progress, true));
    assert!(outputs.iter().flatten().all(|output| output.is_ok()), "every write succeeds");
    let stats = engine.stats();
    assert!(stats.flushes >= 3 && stats.compactions >= 1, "maintenance ran: {stats:?}");
    check_subset_snapshots(&disk, &writes);
}

#[test]
fn engine_concurrent_writes_with_stalls_failed_write_loses_nothing_acknowledged() {
    let writes = history(300);
    for writes_allowed in [3u64, 11, 23, 41] {
        let acknowledged = Rc::new(Acknowledged::default());
        let disk = CrashPointDisk::yielding(vec![], acknowledged.clone(), |_| false);
        let engine = block_on(Engine::open(disk.clone(), stalling_options())).unwrap();
        disk.inner().fail_writes_after(writes_allowed);
        let progress = Progress::default();
        let outputs = common::drive_in_order(tasks(&engine, &writes, &acknowledged, &progress, true));
        let acked = acknowledged_indices(&outputs);
        assert!(acked.len() < writes.len(), "writes allowed {writes_allowed}: a write must have failed");
        assert!(engine.failure().is_some(), "writes allowed {writes_allowed}: engine poisoned");
        drop(engine);
        let crashed = disk.inner().crash(CrashMode::DropUnsynced);
        let context = format!("writes allowed {writes_allowed}");
        let recovered = block_on(common::reopen_and_check_subset(
            &crashed,
            stalling_options(),
            &writes,
            &acked,
            &context,
        ));
        assert!(recovered >= acked.len(), "{context}");
    }
}

/// With stalls, sequence order may differ from issue order, so each snapshot is checked for:
/// every acknowledged write present, nothing present that was not written.
fn check_subset_snapshots(disk: &CrashPointDisk, writes: &[Write]) {
    let snapshots = disk.take_snapshots();
    assert!(snapshots.len() > 50, "only {} crash points", snapshots.len());
    block_on(async {
        for snapshot in &snapshots {
            let context = format!("crash after {:?} in mode {:?}", snapshot.after, snapshot.mode);
            common::reopen_and_check_subset(
                &snapshot.disk,
                stalling_options(),
                writes,
                &snapshot.acknowledged_writes,
                &context,
            )
            .await;
        }
    });
}
