//! Recovery: the WAL segments replayed into a memtable at open. A torn tail is dropped and
//! counted; damage followed by valid records, or a gap between the tables and the WAL, is an error.

use super::{io_error, Engine, RecoveryReport};
use crate::disk::{align_up, Disk, ALIGNMENT};
use crate::entry::Entry;
use crate::manifest::Manifest;
use crate::memtable::Memtable;
use crate::wal::reader::scan_segment;
use crate::wal::record::RECORD_HEADER_BYTES;
use crate::wal::writer::SegmentInfo;
use crate::wal::{parse_segment_file_name, segment_file_name};
use crate::{DiskFile, Result, StorageError};
use bytes::Bytes;

impl<D: Disk> Engine<D> {
    pub(super) async fn replay_wal(
        disk: &D,
        names: &[String],
        manifest: &Manifest,
        memtable_hash_seed: u64,
        memtable_bytes_max: usize,
        accept_rotten_tail: bool,
        recovery: &mut RecoveryReport,
    ) -> Result<(Memtable, Vec<SegmentInfo>, u64)> {
        let mut numbers: Vec<u64> = names.iter().filter_map(|name| parse_segment_file_name(name)).collect();
        numbers.sort_unstable();
        let mut active = Memtable::with_hash_seed(memtable_hash_seed).with_budget(memtable_bytes_max);
        let mut closed = Vec::new();
        let mut last_seq = manifest.flushed_seq;
        let mut expected_seq: Option<u64> = None;
        for number in numbers {
            let name = segment_file_name(number);
            let file = disk.open(&name).await.map_err(io_error("open", &name))?;
            let size = file.size().await.map_err(io_error("size", &name))?;
            let buffer = file.read_at(0, size as usize).await.map_err(io_error("read", &name))?;
            let scan = scan_segment(&name, &buffer, expected_seq, accept_rotten_tail)?;
            recovery.torn_tail_bytes += scan.torn_bytes;
            if let (None, Some(first)) = (expected_seq, scan.records.first()) {
                // Records at or below flushed_seq are in tables; anything missing above is a hole.
                if first.seq > manifest.flushed_seq + 1 {
                    return Err(StorageError::corruption(
                        &name,
                        0,
                        format!(
                            "WAL starts at sequence {} but tables end at {}",
                            first.seq, manifest.flushed_seq
                        ),
                    ));
                }
            }
            let mut segment_last = 0;
            // Where the replayed records of this segment start and end.
            let mut replayed_extent: Option<std::ops::Range<usize>> = None;
            for record in &scan.records {
                segment_last = record.seq;
                expected_seq = Some(record.seq + 1);
                if record.seq <= manifest.flushed_seq {
                    continue;
                }
                // One entry, or the several entries of an atomic write, back to back.
                let payload = Bytes::copy_from_slice(&buffer[record.payload.clone()]);
                let mut at = 0;
                while at < payload.len() {
                    let (key, entry, used) = Entry::decode(&payload, at).map_err(|reason| {
                        StorageError::corruption(&name, (record.payload.start + at) as u64, reason)
                    })?;
                    active.insert(&key, record.seq, entry);
                    at += used;
                }
                recovery.records_replayed += 1;
                replayed_extent.get_or_insert(record.payload.start - RECORD_HEADER_BYTES..0).end =
                    record.payload.end;
                last_seq = last_seq.max(record.seq);
            }
            if let Some(extent) = replayed_extent {
                // As the log counts its advance: whole blocks.
                let start = extent.start as u64 / ALIGNMENT as u64 * ALIGNMENT as u64;
                recovery.bytes_replayed += align_up(extent.end as u64) - start;
            }
            closed.push(SegmentInfo { number, last_seq: segment_last });
            if !scan.records.is_empty() && segment_last <= manifest.flushed_seq {
                // Wholly in the tables: a segment a flush removed that a crash brought back (its
                // removal not yet synced), possibly with a gap after it where later removals
                // did last. The next segment is judged against the tables, not against it; the
                // next flush removes it. (An empty segment says nothing either way.)
                expected_seq = None;
            }
        }
        Ok((active, closed, last_seq))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, small_options};
    use super::super::*;
    use crate::disk::memory::{CrashMode, MemDisk};
    use crate::disk::{Disk, DiskFile};
    use futures_executor::block_on;

    /// `is_engine_file` names every file an engine leaves, so removing them is a replaced disk:
    /// the directory then opens as a new, empty engine.
    #[test]
    fn without_its_engine_files_a_directory_opens_empty() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            for index in 0..50 {
                engine
                    .put(key(index), Bytes::from_static(b"value"), 1 + u64::from(index), None)
                    .await
                    .unwrap();
            }
            engine.flush().await.unwrap();
            engine.put(key(50), Bytes::from_static(b"value"), 51, None).await.unwrap();
            drop(engine);
            let names = disk.file_names();
            assert!(names.iter().any(|name| name.ends_with(".sst")), "a table was written: {names:?}");
            assert!(names.iter().any(|name| name.ends_with(".wal")), "a segment was written: {names:?}");
            for name in &names {
                assert!(is_engine_file(name), "{name} is the engine's");
                disk.remove(name).await.unwrap();
            }
            assert!(!is_engine_file("NODE") && !is_engine_file("00000000000000000001.sst.part"));
            let reopened = Engine::open(disk.clone(), small_options()).await.unwrap();
            assert!(reopened.recovery().fresh, "nothing of the old engine is left");
            assert_eq!(reopened.get(&key(0), 0).await.unwrap(), None);
        });
    }

    /// Segments a flush removed come back when the machine crashes before the directory is
    /// synced; whatever of them survives, the engine reopens with every acknowledged write.
    #[test]
    fn segments_a_crash_brought_back_after_a_flush_are_passed_over() {
        block_on(async {
            let options = EngineOptions { wal_segment_bytes_max: 8 << 10, ..small_options() };
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), options.clone()).await.unwrap();
            let value = Bytes::from(vec![b'v'; 200]);
            for index in 0..200 {
                engine.put(key(index), value.clone(), 1 + u64::from(index), None).await.unwrap();
            }
            let segments_before = disk.file_names().iter().filter(|name| name.ends_with(".wal")).count();
            assert!(segments_before > 2, "several segments: {segments_before}");
            engine.flush().await.unwrap();
            // The crash comes right after the flush removed the segments it covered.
            let crashed = disk.crash(CrashMode::DropUnsynced);
            drop(engine);
            let segments_after = crashed.file_names().iter().filter(|name| name.ends_with(".wal")).count();
            assert_eq!(segments_after, 1, "the removals were made durable: {:?}", crashed.file_names());
            let gentle = disk.gentle_removals().into_iter().filter(|name| name.ends_with(".wal")).count();
            assert!(gentle >= segments_before - 1, "obsolete segments go gently: {gentle}");
            let engine = Engine::open(crashed.clone(), options.clone()).await.unwrap();
            for index in 0..200 {
                assert!(engine.get(&key(index), 0).await.unwrap().is_some(), "key {index}");
            }
            drop(engine);

            // Stale segments a crash left behind (below what the tables hold, with a gap
            // before the live one) are passed over, and removed by the next flush.
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), options.clone()).await.unwrap();
            for index in 0..200 {
                engine.put(key(index), value.clone(), 1 + u64::from(index), None).await.unwrap();
            }
            let mut stale: Vec<(String, Vec<u8>)> = Vec::new();
            for name in disk.file_names().into_iter().filter(|name| name.ends_with(".wal")) {
                let file = disk.open(&name).await.unwrap();
                let size = file.size().await.unwrap();
                stale.push((name, file.read_at(0, size as usize).await.unwrap().to_vec()));
            }
            engine.flush().await.unwrap();
            for index in 200..260 {
                engine.put(key(index), value.clone(), 1 + u64::from(index), None).await.unwrap();
            }
            drop(engine);
            let disk = disk.crash(CrashMode::DropUnsynced);
            // The first stale segment alone comes back: a gap lies between it and the live one.
            let (name, bytes) = &stale[0];
            let file = disk.create(name).await.unwrap();
            file.write_at(0, bytes).await.unwrap();
            file.sync().await.unwrap();
            disk.sync_dir().await.unwrap();
            let engine = Engine::open(disk.clone(), options.clone()).await.unwrap();
            for index in 0..260 {
                assert!(engine.get(&key(index), 0).await.unwrap().is_some(), "key {index}");
            }
            engine.flush().await.unwrap();
            assert!(!disk.file_names().contains(name), "the stale segment is removed by the next flush");
        });
    }

    #[test]
    fn max_version_after_reopen_covers_the_tables_and_the_replayed_wal() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            assert_eq!(engine.max_version(), 0, "nothing written");
            // Versions far ahead of any wall clock: one in a table, a higher one only in the WAL.
            let (in_table, in_wal) = (5 << 50, 7 << 50);
            engine.put(key(1), Bytes::from_static(b"flushed"), in_table, None).await.unwrap();
            engine.flush().await.unwrap();
            engine.put(key(2), Bytes::from_static(b"logged"), in_wal, None).await.unwrap();
            engine.put(key(3), Bytes::from_static(b"older"), 3, None).await.unwrap();
            assert_eq!(engine.max_version(), in_wal);
            drop(engine);

            let disk = disk.crash(CrashMode::DropUnsynced);
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            assert!(engine.recovery().records_replayed >= 2 && engine.recovery().tables_opened == 1);
            assert_eq!(engine.max_version(), in_wal, "the replayed WAL holds the highest");
            engine.flush().await.unwrap();
            assert_eq!(engine.max_version(), in_wal, "the tables hold it now");
            drop(engine);
            let engine = Engine::open(disk.crash(CrashMode::DropUnsynced), small_options()).await.unwrap();
            assert_eq!(engine.recovery().records_replayed, 0);
            assert_eq!(engine.max_version(), in_wal, "from the tables' footers alone");
        });
    }
}
