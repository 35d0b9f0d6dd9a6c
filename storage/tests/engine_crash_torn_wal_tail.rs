//! A power loss in the middle of a WAL group write: the write reaches the disk for only its
//! first 0 to 7 sectors. Recovery must keep every complete record before the tear, drop the torn
//! record, count exactly the damaged bytes in `RecoveryReport::torn_tail_bytes`, and keep doing
//! so on later opens until a flush retires the segment.

use crate::common;

use common::{reopen_and_check, Acknowledged, CrashPointDisk, Write};
use futures_executor::block_on;
use ringkv_storage::disk::memory::{CrashMode, SECTOR_BYTES};
use ringkv_storage::{Engine, EngineOptions};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// Bytes of a WAL record holding a put of a `value_len`-byte value under a 7-byte key:
/// record header 16, entry header 19, the key's token 8 and the key 7, value length 4, value.
fn record_bytes(value_len: usize) -> usize {
    16 + 19 + 8 + 7 + 4 + value_len
}

fn options() -> EngineOptions {
    // Memtables large enough that nothing is flushed: every write stays in the WAL.
    EngineOptions { memtable_bytes_max: 4 << 20, block_cache_bytes: 64 << 10, ..EngineOptions::default() }
}

fn tear_modes() -> Vec<CrashMode> {
    let mut modes = vec![CrashMode::DropUnsynced];
    modes.extend((0..8).map(|sectors_kept| CrashMode::TearLastWrite { sectors_kept }));
    modes
}

fn kept_bytes(mode: CrashMode) -> usize {
    match mode {
        CrashMode::DropUnsynced => 0,
        CrashMode::TearLastWrite { sectors_kept } => sectors_kept * SECTOR_BYTES,
    }
}

/// A predicate picking the moment right after the `nth` write to a WAL segment (counted from 1),
/// before its sync.
fn after_wal_write(nth: usize) -> impl Fn(&common::DiskOperation) -> bool {
    let seen = Cell::new(0);
    move |operation| {
        if operation.kind == "write" && operation.file.ends_with(".wal") {
            seen.set(seen.get() + 1);
            seen.get() == nth
        } else {
            false
        }
    }
}

#[test]
fn engine_torn_single_record_group_is_dropped_and_counted() {
    const VALUE_BYTES: usize = 3_000;
    let writes: Vec<Write> = (0..6).map(|index| Write::put(index, index, VALUE_BYTES)).collect();
    let acknowledged = Rc::new(Acknowledged::default());
    // One write at a time: each is its own group write, one record padded to 4 KiB. The crash
    // comes right after the sixth one reached the disk, before its sync.
    let disk = CrashPointDisk::new(tear_modes(), acknowledged.clone(), after_wal_write(6));
    block_on(async {
        let engine = Engine::open(disk.clone(), options()).await.unwrap();
        for (index, write) in writes.iter().enumerate() {
            write.issue(&engine, index).await.unwrap();
            acknowledged.record(index);
        }
    });
    let snapshots = disk.take_snapshots();
    assert_eq!(snapshots.len(), tear_modes().len());
    let record = record_bytes(VALUE_BYTES);
    for snapshot in snapshots {
        assert_eq!(snapshot.acknowledged, 5);
        let context = format!("{:?}", snapshot.mode);
        let recovered = block_on(reopen_and_check(&snapshot.disk, options(), &writes, 5, &context));
        let kept = kept_bytes(snapshot.mode);
        let (prefix, torn) = if kept == 0 {
            (5, 0)
        } else if kept < record {
            // The value bytes are never zero, so every kept byte counts as damage.
            (5, kept as u64)
        } else {
            (6, 0)
        };
        assert_eq!(recovered.prefix, prefix, "{context}");
        assert_eq!(recovered.report.torn_tail_bytes, torn, "{context}");
        assert_eq!(recovered.report.records_replayed, prefix as u64, "{context}");

        // The torn tail stays in its segment, so the next open finds it again; new writes go to
        // a new segment and survive too. A flush retires the damaged segment.
        block_on(async {
            let engine = recovered.engine;
            let extra = Write::put(99, 99, 10);
            extra.issue(&engine, 99).await.unwrap();
            engine.close().await.unwrap();
            drop(engine);
            let mut all = writes[..prefix].to_vec();
            all.push(extra);
            let reopened = reopen_and_check(&snapshot.disk, options(), &all, all.len(), &context).await;
            assert_eq!(reopened.report.torn_tail_bytes, torn, "{context}: second open");
            reopened.engine.flush().await.unwrap();
            reopened.engine.close().await.unwrap();
            drop(reopened);
            let flushed = reopen_and_check(&snapshot.disk, options(), &all, all.len(), &context).await;
            assert_eq!(flushed.report.torn_tail_bytes, 0, "{context}: after a flush");
            assert_eq!(flushed.report.records_replayed, 0, "{context}: after a flush");
        });
    }
}

#[test]
fn engine_torn_multi_record_group_keeps_the_complete_records() {
    const VALUE_BYTES: usize = 300;
    let writes: Vec<Write> = (0..10).map(|index| Write::put(index, index, VALUE_BYTES)).collect();
    let acknowledged = Rc::new(Acknowledged::default());
    // The commit leader yields before taking the buffer, so all ten writes go out as the first
    // group write: the one torn here, before its sync, so none is acknowledged.
    let disk = CrashPointDisk::yielding(tear_modes(), acknowledged.clone(), after_wal_write(1));
    let engine = block_on(Engine::open(disk.clone(), options())).unwrap();
    let futures: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = writes
        .iter()
        .enumerate()
        .map(|(index, write)| {
            let (engine, acknowledged) = (&engine, &acknowledged);
            Box::pin(async move {
                write.issue(engine, index).await.unwrap();
                acknowledged.record(index);
            }) as Pin<Box<dyn Future<Output = ()> + '_>>
        })
        .collect();
    common::drive_in_order(futures);
    let snapshots = disk.take_snapshots();
    assert_eq!(snapshots.len(), tear_modes().len());
    let record = record_bytes(VALUE_BYTES);
    for snapshot in snapshots {
        assert!(snapshot.acknowledged_writes.is_empty(), "the group was torn before its sync");
        let context = format!("{:?}", snapshot.mode);
        let recovered = block_on(reopen_and_check(&snapshot.disk, options(), &writes, 0, &context));
        let kept = kept_bytes(snapshot.mode);
        let complete = (kept / record).min(writes.len());
        assert_eq!(recovered.prefix, complete, "{context}");
        let partial = if complete == writes.len() { 0 } else { kept - complete * record };
        if partial == 0 {
            assert_eq!(recovered.report.torn_tail_bytes, 0, "{context}");
        } else {
            // Trailing zero bytes of a cut header are not counted as damage.
            let torn = recovered.report.torn_tail_bytes;
            assert!(torn > 0 && torn <= partial as u64, "{context}: {torn} torn bytes, {partial} kept");
        }
    }
}
