//! Two hooks replication needs from compaction and recovery: a tombstone past its grace period
//! is purged only when the purge gate allows it (replication allows it once the key's range was
//! repaired after the delete), and an engine opened with `missing_tables_allowed` leaves out a
//! table that disappeared instead of refusing to open, and remembers that it lost data until
//! told the data was restored.

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use futures_executor::block_on;
use ringkv_storage::disk::memory::{CrashMode, MemDisk};
use ringkv_storage::{Engine, EngineOptions, StorageError};

const GRACE_MS: u64 = 1_000;

fn options() -> EngineOptions {
    EngineOptions { tombstone_grace_ms: GRACE_MS, memtable_bytes_max: 64 << 10, ..EngineOptions::default() }
}

fn key(index: u32) -> Bytes {
    Bytes::from(format!("key-{index}"))
}

#[test]
fn a_tombstone_past_its_grace_stays_until_the_gate_allows_its_purge() {
    block_on(async {
        let engine = Engine::open(MemDisk::new(), options()).await.unwrap();
        for index in 0..100 {
            engine.put(key(index), Bytes::from_static(b"value"), 10, None).await.unwrap();
            engine.delete(key(index), 20, 5_000).await.unwrap();
        }
        let allowed = Rc::new(Cell::new(false));
        let gate = allowed.clone();
        engine.set_purge_gate(Box::new(move |_token, dead_since_ms| {
            assert_eq!(dead_since_ms, 5_000);
            gate.get()
        }));
        engine.flush().await.unwrap();
        // Long past the grace period, but the gate says no: every tombstone stays.
        engine.compact_all(1_000_000).await.unwrap();
        for index in 0..100 {
            let entry = engine.get_entry(&key(index)).await.unwrap().expect("the tombstone stays");
            assert_eq!(entry.version, 20);
        }
        allowed.set(true);
        engine.put(key(1_000), Bytes::from_static(b"other"), 30, None).await.unwrap();
        engine.flush().await.unwrap();
        engine.compact_all(1_000_000).await.unwrap();
        for index in 0..100 {
            assert_eq!(engine.get_entry(&key(index)).await.unwrap(), None, "purged once allowed");
        }
        assert!(engine.get_entry(&key(1_000)).await.unwrap().is_some());
    });
}

#[test]
fn a_missing_table_is_refused_unless_allowed_then_left_out() {
    block_on(async {
        let disk = MemDisk::new();
        let engine = Engine::open(disk.clone(), options()).await.unwrap();
        for index in 0..50 {
            engine.put(key(index), Bytes::from_static(b"first"), 10, None).await.unwrap();
        }
        engine.flush().await.unwrap();
        for index in 50..100 {
            engine.put(key(index), Bytes::from_static(b"second"), 10, None).await.unwrap();
        }
        engine.flush().await.unwrap();
        engine.close().await.unwrap();
        drop(engine);
        let mut tables: Vec<String> =
            disk.file_names().into_iter().filter(|name| name.ends_with(".sst")).collect();
        tables.sort();
        assert_eq!(tables.len(), 2);
        use ringkv_storage::Disk;
        disk.remove(&tables[0]).await.unwrap();

        assert!(matches!(Engine::open(disk.clone(), options()).await, Err(StorageError::Io { .. })));
        let allowing = EngineOptions { missing_tables_allowed: true, ..options() };
        let engine = Engine::open(disk.clone(), allowing.clone()).await.unwrap();
        assert_eq!(engine.recovery().tables_missing, 1);
        assert!(engine.rebuilding(), "it may lack writes it acknowledged");
        assert_eq!(engine.get_entry(&key(0)).await.unwrap(), None, "the lost table's keys are gone");
        assert!(engine.get_entry(&key(99)).await.unwrap().is_some(), "the other table's keys stay");
        // Written again (as anti-entropy would), the keys are back; the engine goes on.
        engine.put(key(0), Bytes::from_static(b"repaired"), 11, None).await.unwrap();
        engine.flush().await.unwrap();
        engine.close().await.unwrap();
        drop(engine);
        let engine = Engine::open(disk.clone(), allowing.clone()).await.unwrap();
        assert!(engine.get_entry(&key(0)).await.unwrap().is_some());
        // The manifest no longer lists the lost table, yet the engine still knows it lost data,
        // even after a power loss.
        assert_eq!(engine.recovery().tables_missing, 0);
        assert!(engine.rebuilding());
        drop(engine);
        let disk = disk.crash(CrashMode::DropUnsynced);
        let engine = Engine::open(disk.clone(), allowing.clone()).await.unwrap();
        assert!(engine.rebuilding());
        // Once the data is restored, the mark goes, durably.
        engine.rebuilt().await.unwrap();
        assert!(!engine.rebuilding());
        engine.close().await.unwrap();
        drop(engine);
        let disk = disk.crash(CrashMode::DropUnsynced);
        let engine = Engine::open(disk, allowing).await.unwrap();
        assert!(!engine.rebuilding() && !engine.recovery().rebuilding);
        assert!(!engine.recovery().fresh);
    });
}

#[test]
fn an_engine_whose_files_are_gone_opens_fresh_and_can_be_marked_as_rebuilding() {
    block_on(async {
        let disk = MemDisk::new();
        let engine = Engine::open(disk.clone(), options()).await.unwrap();
        assert!(engine.recovery().fresh && !engine.rebuilding());
        // Its owner knows it had data (a node that ran before): it marks the loss, durably.
        engine.mark_rebuilding().await.unwrap();
        assert!(engine.rebuilding());
        drop(engine);
        let disk = disk.crash(CrashMode::DropUnsynced);
        let engine = Engine::open(disk.clone(), options()).await.unwrap();
        assert!(!engine.recovery().fresh && engine.recovery().rebuilding && engine.rebuilding());
        engine.rebuilt().await.unwrap();
        drop(engine);
        let engine = Engine::open(disk.crash(CrashMode::DropUnsynced), options()).await.unwrap();
        assert!(!engine.rebuilding());
    });
}
