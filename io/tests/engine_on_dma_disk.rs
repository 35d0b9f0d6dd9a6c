//! The engine end to end on the real disk: 20 000 keys through a `DmaDisk` (O_DIRECT through
//! io_uring) with small memtables, so the run flushes many tables and compacts them; then the
//! engine is closed, reopened, and every key is read back and a range scanned.
//!
//! The directory is made under Cargo's target directory, not a possibly-tmpfs `/tmp`, so the
//! reads and writes really go through O_DIRECT to a block device.

use bytes::Bytes;
use ringkv_io::{run_local, DmaDisk};
use ringkv_storage::{Engine, EngineOptions, Position, ScanRange, SyncMode};

const KEYS: u32 = 20_000;

fn options() -> EngineOptions {
    EngineOptions {
        // The test syncs once at the end instead of once per put.
        sync: SyncMode::Periodic { interval_ms: 1_000 },
        memtable_bytes_max: 128 << 10,
        block_cache_bytes: 512 << 10,
        wal_segment_bytes_max: 1 << 20,
        wal_buffer_bytes_max: 64 << 10,
        tombstone_grace_ms: 0,
        compaction_width_min: 2,
        compaction_width_max: 4,
        ..EngineOptions::default()
    }
}

fn key(index: u32) -> Bytes {
    Bytes::from(format!("key{index:06}"))
}

/// Version 1 of every key; keys divisible by 10 are rewritten with version 2.
fn value(index: u32, version: u64) -> Bytes {
    let stamp = format!("{index}:{version};");
    Bytes::from(stamp.bytes().cycle().take(60 + (index as usize * 7) % 100).collect::<Vec<u8>>())
}

/// What a key holds after the writes: absent if divisible by 7, else its newest version.
fn expected(index: u32) -> Option<(Bytes, u64)> {
    if index.is_multiple_of(7) {
        None
    } else if index.is_multiple_of(10) {
        Some((value(index, 2), 2))
    } else {
        Some((value(index, 1), 1))
    }
}

#[test]
fn engine_on_dma_disk_survives_flushes_compactions_and_reopen() {
    let temporary =
        tempfile::Builder::new().prefix("engine-on-dma-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().join("shard-0");
    run_local("engine-on-dma-disk", async move {
        let engine = Engine::open(DmaDisk::open(&directory).await.unwrap(), options()).await.unwrap();
        for index in 0..KEYS {
            engine.put(key(index), value(index, 1), 1, None).await.unwrap();
            if index % 2_000 == 1_999 {
                // Rewrites and deletes that land in later tables than the originals.
                for older in (index - 1_999..=index).filter(|older| older % 10 == 0) {
                    engine.put(key(older), value(older, 2), 2, None).await.unwrap();
                }
                for older in (index - 1_999..=index).filter(|older| older % 7 == 0) {
                    engine.delete(key(older), 3, 0).await.unwrap();
                }
                while engine.compact(1).await.unwrap() {}
            }
        }
        engine.flush().await.unwrap();
        let stats = engine.stats();
        assert!(stats.flushes >= 10, "{stats:?}");
        assert!(stats.compactions >= 3, "{stats:?}");
        engine.close().await.unwrap();
        drop(engine);

        let engine = Engine::open(DmaDisk::open(&directory).await.unwrap(), options()).await.unwrap();
        let report = engine.recovery().clone();
        assert!(report.tables_opened >= 1, "{report:?}");
        assert_eq!(report.torn_tail_bytes, 0, "{report:?}");
        for index in 0..KEYS {
            let found = engine.get(&key(index), 0).await.unwrap();
            let found = found.map(|found| (found.value, found.version));
            assert_eq!(found, expected(index), "key {index}");
        }

        // Scan an eighth of the token ring in pages of 128.
        let (first, last) = (u64::MAX / 8 * 3, u64::MAX / 8 * 4);
        let range = ScanRange::tokens(first, Some(last));
        let mut scanned = Vec::new();
        let mut next = range.clone();
        loop {
            let page = engine.scan(&next, 128, 0, false).await.unwrap();
            scanned.extend(page.entries);
            match page.next {
                Some(cursor) => next = range.after(cursor),
                None => break,
            }
        }
        let scanned: Vec<(Bytes, Option<(Bytes, u64)>)> = scanned
            .into_iter()
            .map(|found| (found.key, found.entry.data().cloned().map(|data| (data, found.entry.version))))
            .collect();
        let mut wanted: Vec<(Position, Option<(Bytes, u64)>)> = (0..KEYS)
            .filter_map(|index| expected(index).map(|found| (Position::of_key(key(index)), Some(found))))
            .filter(|(position, _)| (first..last).contains(&position.token))
            .collect();
        wanted.sort();
        let wanted: Vec<(Bytes, Option<(Bytes, u64)>)> =
            wanted.into_iter().map(|(position, found)| (position.key, found)).collect();
        assert!(wanted.len() > KEYS as usize / 16, "an eighth of the keys: {}", wanted.len());
        assert_eq!(scanned.len(), wanted.len());
        assert!(scanned == wanted, "the scan differs from the expected range");

        // A full compaction after reopening keeps everything and purges the tombstones.
        engine.compact_all(1).await.unwrap();
        assert_eq!(engine.stats().tables, 1);
        for index in (0..KEYS).step_by(13) {
            let found = engine.get_entry(&key(index)).await.unwrap();
            match expected(index) {
                Some((data, version)) => {
                    let found = found.unwrap_or_else(|| panic!("key {index} lost by the full compaction"));
                    assert_eq!((found.data().cloned(), found.version), (Some(data), version), "key {index}");
                }
                None => assert_eq!(found, None, "key {index}: the tombstone is purged"),
            }
        }
        engine.close().await.unwrap();
    });
}
