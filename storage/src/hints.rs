//! [`HintLog`]: the durable log of hints for one destination node (hinted handoff).
//!
//! A hint is a write a replica missed (it was down or did not answer in time), kept by the
//! coordinator's shard until the replica is back. The log is the WAL itself, in its own
//! directory: the same checksummed, sequence-numbered records, the same group commit and
//! fdatasync rules, the same recovery (a torn tail is truncated and counted; a bad record
//! followed by a valid one is corruption, never skipped).
//!
//! ```text
//!  record payload: written_at_ms u64 | down_since_ms u64 | entry (the WAL's entry encoding)
//! ```
//!
//! `down_since_ms` travels with every hint so that the hint window (no hints for a node down
//! longer than `max_hint_window`) survives a restart of the node holding the hints. Hints are
//! replayed in order and the whole log is dropped once every hint in it is delivered or
//! discarded ([`HintLog::clear`]); a node removed from the cluster has its log dropped the same
//! way. What to store, keep and replay is decided by `ringkv_replication::hints`; this module
//! only keeps the records.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::{BufMut, Bytes};

use crate::disk::{Disk, DiskFile};
use crate::engine::io_error;
use crate::entry::Entry;
use crate::wal::reader::scan_segment;
use crate::wal::writer::{SegmentInfo, WalWriter};
use crate::wal::{parse_segment_file_name, segment_file_name, PREALLOCATE_BYTES_DEFAULT};
use crate::{Result, StorageError};

/// Bytes of a hint record's payload before its entry.
const HINT_HEADER_BYTES: usize = 16;

/// One hint as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHint {
    /// The user key.
    pub key: Bytes,
    /// The write, with the version the coordinator stamped.
    pub entry: Entry,
    /// When the hint was stored (the holder's clock).
    pub written_at_ms: u64,
    /// Since when the destination was seen down (or not answering), by the holder's clock.
    pub down_since_ms: u64,
}

impl StoredHint {
    /// Bytes the hint takes in the log, record header included: what the hint bounds count.
    pub fn log_bytes(&self) -> usize {
        crate::wal::record::RECORD_HEADER_BYTES + HINT_HEADER_BYTES + self.entry.encoded_len(self.key.len())
    }
}

/// What opening a log found.
#[derive(Debug, Default)]
pub struct HintRecovery {
    /// The hints still in the log, oldest first.
    pub hints: Vec<StoredHint>,
    /// Bytes of a torn tail dropped (a write that never finished before a crash).
    pub torn_tail_bytes: u64,
}

/// The hint log of one destination, in a directory of its own.
pub struct HintLog<D: Disk> {
    disk: Rc<D>,
    next_file_number: Rc<Cell<u64>>,
    segment_bytes_max: u64,
    writer: RefCell<Rc<WalWriter<D>>>,
}

impl<D: Disk> HintLog<D> {
    /// Opens the log in `disk` (creating it when the directory is empty) and reads back every
    /// hint it holds. Segments roll at `segment_bytes_max`.
    pub async fn open(disk: D, segment_bytes_max: u64) -> Result<(Self, HintRecovery)> {
        let disk = Rc::new(disk);
        let names = disk.list().await.map_err(io_error("list", "hint directory"))?;
        let mut numbers: Vec<u64> = names.iter().filter_map(|name| parse_segment_file_name(name)).collect();
        numbers.sort_unstable();
        let mut recovery = HintRecovery::default();
        let mut closed = Vec::new();
        let mut last_seq = 0;
        let mut expected_seq: Option<u64> = None;
        for &number in &numbers {
            let name = segment_file_name(number);
            let file = disk.open(&name).await.map_err(io_error("open", &name))?;
            let size = file.size().await.map_err(io_error("size", &name))?;
            let buffer = file.read_at(0, size as usize).await.map_err(io_error("read", &name))?;
            // Hints are a shortcut anti-entropy repeats: a rotted last hint costs nothing lasting.
            let scan = scan_segment(&name, &buffer, expected_seq, true)?;
            recovery.torn_tail_bytes += scan.torn_bytes;
            let mut segment_last = 0;
            for record in &scan.records {
                segment_last = record.seq;
                expected_seq = Some(record.seq + 1);
                last_seq = record.seq;
                let payload = Bytes::copy_from_slice(&buffer[record.payload.clone()]);
                let hint = decode(&payload)
                    .map_err(|reason| StorageError::corruption(&name, record.payload.start as u64, reason))?;
                recovery.hints.push(hint);
            }
            closed.push(SegmentInfo { number, last_seq: segment_last });
        }
        let next_file_number = Rc::new(Cell::new(numbers.last().map_or(1, |last| last + 1)));
        let writer = WalWriter::create(
            disk.clone(),
            next_file_number.clone(),
            segment_bytes_max,
            PREALLOCATE_BYTES_DEFAULT,
            closed,
            last_seq,
        )
        .await?;
        disk.sync_dir().await.map_err(io_error("sync", "hint directory"))?;
        let log =
            HintLog { disk, next_file_number, segment_bytes_max, writer: RefCell::new(Rc::new(writer)) };
        Ok((log, recovery))
    }

    /// Appends a hint to the buffer and returns its sequence number; durable once
    /// [`HintLog::sync_through`] that number resolves.
    pub fn append(&self, hint: &StoredHint) -> Result<u64> {
        let writer = self.writer.borrow().clone();
        let seq = writer.appended_seq() + 1;
        let payload_len = HINT_HEADER_BYTES + hint.entry.encoded_len(hint.key.len());
        writer.append(seq, payload_len, |out| {
            out.put_u64_le(hint.written_at_ms);
            out.put_u64_le(hint.down_since_ms);
            hint.entry.encode(&hint.key, out);
        })?;
        Ok(seq)
    }

    /// Resolves once every hint up to `seq` is written and synced (group commit: one sync
    /// covers every hint appended meanwhile).
    pub async fn sync_through(&self, seq: u64) -> Result<()> {
        let writer = self.writer.borrow().clone();
        writer.commit_through(seq, true).await
    }

    /// Drops every hint: removes the log's segments and starts an empty one. Called once every
    /// hint is delivered or discarded, and when the destination left the cluster.
    pub async fn clear(&self) -> Result<()> {
        let fresh = WalWriter::create(
            self.disk.clone(),
            self.next_file_number.clone(),
            self.segment_bytes_max,
            PREALLOCATE_BYTES_DEFAULT,
            Vec::new(),
            0,
        )
        .await?;
        let current = segment_file_name(self.next_file_number.get() - 1);
        *self.writer.borrow_mut() = Rc::new(fresh);
        let names = self.disk.list().await.map_err(io_error("list", "hint directory"))?;
        for name in names {
            if parse_segment_file_name(&name).is_some() && name != current {
                self.disk.remove(&name).await.map_err(io_error("remove", &name))?;
            }
        }
        self.disk.sync_dir().await.map_err(io_error("sync", "hint directory"))?;
        Ok(())
    }
}

fn decode(payload: &Bytes) -> std::result::Result<StoredHint, &'static str> {
    if payload.len() < HINT_HEADER_BYTES {
        return Err("hint header truncated");
    }
    let written_at_ms = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
    let down_since_ms = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    let (key, entry, used) = Entry::decode(payload, HINT_HEADER_BYTES)?;
    if HINT_HEADER_BYTES + used != payload.len() {
        return Err("trailing hint bytes");
    }
    Ok(StoredHint { key, entry, written_at_ms, down_since_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::CrashMode;
    use crate::disk::memory::MemDisk;
    use futures_executor::block_on;

    fn hint(index: u64) -> StoredHint {
        let entry = if index.is_multiple_of(3) {
            Entry::tombstone(100 + index, 5_000)
        } else {
            Entry::live(
                100 + index,
                Bytes::from(format!("value-{index}")),
                index.is_multiple_of(2).then_some(9_000),
            )
        };
        StoredHint {
            key: Bytes::from(format!("key-{index}")),
            entry,
            written_at_ms: 1_000 + index,
            down_since_ms: 900,
        }
    }

    #[test]
    fn hints_survive_a_crash_once_synced_and_a_torn_tail_is_dropped() {
        block_on(async {
            let disk = MemDisk::new();
            let (log, recovery) = HintLog::open(disk.clone(), 64 << 10).await.unwrap();
            assert!(recovery.hints.is_empty());
            let mut last = 0;
            for index in 0..500 {
                last = log.append(&hint(index)).unwrap();
            }
            log.sync_through(last).await.unwrap();
            // One more, appended but never synced, is lost by the crash.
            let unsynced = log.append(&hint(500)).unwrap();
            drop(log);
            let disk = disk.crash(CrashMode::TearLastWrite { sectors_kept: 1 });
            let (log, recovery) = HintLog::open(disk.clone(), 64 << 10).await.unwrap();
            let expected: Vec<StoredHint> = (0..500).map(hint).collect();
            assert_eq!(recovery.hints, expected);
            assert!(unsynced > last);
            // The log goes on after what it recovered.
            let next = log.append(&hint(777)).unwrap();
            log.sync_through(next).await.unwrap();
            drop(log);
            let (_, recovery) = HintLog::open(disk, 64 << 10).await.unwrap();
            assert_eq!(recovery.hints.len(), 501);
            assert_eq!(recovery.hints.last(), Some(&hint(777)));
        });
    }

    #[test]
    fn a_cleared_log_is_empty_after_a_restart() {
        block_on(async {
            let disk = MemDisk::new();
            let (log, _) = HintLog::open(disk.clone(), 16 << 10).await.unwrap();
            let mut last = 0;
            for index in 0..300 {
                last = log.append(&hint(index)).unwrap();
            }
            log.sync_through(last).await.unwrap();
            log.clear().await.unwrap();
            let after = log.append(&hint(1)).unwrap();
            log.sync_through(after).await.unwrap();
            let segments = disk.file_names().into_iter().filter(|name| name.ends_with(".wal")).count();
            assert_eq!(segments, 1, "the segments of delivered hints are removed");
            drop(log);
            let (_, recovery) = HintLog::open(disk.clone(), 16 << 10).await.unwrap();
            assert_eq!(recovery.hints, vec![hint(1)]);
        });
    }

    #[test]
    fn a_flipped_bit_inside_the_log_is_corruption() {
        block_on(async {
            let disk = MemDisk::new();
            let (log, _) = HintLog::open(disk.clone(), 1 << 20).await.unwrap();
            for index in 0..50 {
                let seq = log.append(&hint(index)).unwrap();
                log.sync_through(seq).await.unwrap();
            }
            drop(log);
            let name = disk.file_names().into_iter().find(|name| name.ends_with(".wal")).unwrap();
            disk.flip_bit(&name, 20, 3).unwrap();
            assert!(matches!(HintLog::open(disk, 1 << 20).await, Err(StorageError::Corruption { .. })));
        });
    }
}
