//! The group-commit WAL writer.
//!
//! Writers append records to an in-memory buffer synchronously (so the order of records is the
//! order of sequence numbers), then wait for a commit covering their record. One waiter at a time
//! becomes the leader: it takes the whole buffer, writes it as one padded, aligned write and, for
//! durable commits, one fdatasync. Everything appended while that ran is taken by the next leader,
//! so under load one sync covers many writes (group commit).
//!
//! A failed write or sync poisons the writer for good: the records may or may not be on disk, and
//! retrying the sync could report success for pages the kernel already dropped (the "fsyncgate"
//! lesson), so nothing is acknowledged after it.

use super::record;
use super::segment_file_name;
use crate::disk::{align_up, Disk, DiskFile};
use crate::{Result, StorageError};
use event_listener::Event;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A closed or current segment and the last sequence number written to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's file number.
    pub number: u64,
    /// The highest sequence number it holds (0 if none).
    pub last_seq: u64,
}

struct State<F> {
    file: Rc<F>,
    number: u64,
    /// Where the next group write goes: always a multiple of the alignment.
    offset: u64,
    /// The file's size: zeros written past `offset` ahead of the records (see
    /// [`WalWriter::create`]), or `offset` itself when nothing is preallocated.
    allocated_end: u64,
    /// Written to `file` since its last sync.
    dirty: bool,
    buffer: Vec<u8>,
    /// The buffer the last group was written from, emptied, kept for the next swap: writers
    /// that append while a group is being written append to it, so no group allocates a buffer.
    spare: Vec<u8>,
    /// Highest sequence number appended (to the buffer or earlier).
    appended_seq: u64,
    /// Highest sequence number written to a file.
    written_seq: u64,
    /// Highest sequence number made durable by a sync.
    durable_seq: u64,
    committing: bool,
    failure: Option<String>,
    /// Closed segments still needed for recovery, oldest first.
    closed: Vec<SegmentInfo>,
}

/// The write-ahead log of one engine.
pub struct WalWriter<D: Disk> {
    disk: Rc<D>,
    next_file_number: Rc<Cell<u64>>,
    segment_bytes_max: u64,
    preallocate_bytes: u64,
    state: RefCell<State<D::File>>,
    committed: Event,
    /// Bytes handed to the disk, padding included (for write amplification figures).
    bytes_written: Cell<u64>,
    /// How far the log has advanced since the writer was created: each group's records,
    /// padded to the alignment (not the zeros written ahead).
    bytes_logged: Cell<u64>,
}

impl<D: Disk> WalWriter<D> {
    /// Starts a new, empty segment. `closed` lists older segments that recovery replayed and that
    /// stay until a flush makes them obsolete; `last_seq` is the highest sequence number in use.
    ///
    /// `preallocate_bytes` (0 for none): a group write that would grow the segment also writes
    /// that many zeros past its end, so the next groups land inside the file. An fdatasync after
    /// a write that grows a file must commit the new size through the filesystem's journal; one
    /// after a write inside it only flushes the device, which is about half the time per commit
    /// on ext4. Recovery reads a zero header on a block boundary as the end of the log, so the
    /// zeros are never mistaken for records.
    pub async fn create(
        disk: Rc<D>,
        next_file_number: Rc<Cell<u64>>,
        segment_bytes_max: u64,
        preallocate_bytes: u64,
        closed: Vec<SegmentInfo>,
        last_seq: u64,
    ) -> Result<Self> {
        let (file, number) = create_segment(disk.as_ref(), &next_file_number).await?;
        let state = State {
            file: Rc::new(file),
            number,
            offset: 0,
            allocated_end: 0,
            dirty: false,
            buffer: Vec::with_capacity(64 << 10),
            spare: Vec::with_capacity(64 << 10),
            appended_seq: last_seq,
            written_seq: last_seq,
            durable_seq: last_seq,
            committing: false,
            failure: None,
            closed,
        };
        Ok(WalWriter {
            disk,
            next_file_number,
            segment_bytes_max,
            preallocate_bytes: align_up(preallocate_bytes),
            state: RefCell::new(state),
            committed: Event::new(),
            bytes_written: Cell::new(0),
            bytes_logged: Cell::new(0),
        })
    }

    /// Appends one record to the buffer. `seq` must be the next sequence number.
    pub fn append(
        &self,
        seq: u64,
        payload_len: usize,
        write_payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        let mut state = self.state.borrow_mut();
        if let Some(reason) = &state.failure {
            return Err(StorageError::Poisoned { reason: reason.clone() });
        }
        assert_eq!(seq, state.appended_seq + 1, "WAL sequence numbers must be contiguous");
        record::encode(&mut state.buffer, seq, payload_len, write_payload);
        state.appended_seq = seq;
        Ok(())
    }

    /// Bytes appended but not yet handed to the disk.
    pub fn buffered_bytes(&self) -> usize {
        self.state.borrow().buffer.len()
    }

    /// Highest sequence number appended.
    pub fn appended_seq(&self) -> u64 {
        self.state.borrow().appended_seq
    }

    /// Highest sequence number known durable.
    pub fn durable_seq(&self) -> u64 {
        self.state.borrow().durable_seq
    }

    /// The reason the writer failed, if it has.
    pub fn failure(&self) -> Option<String> {
        self.state.borrow().failure.clone()
    }

    /// Bytes written to segment files so far, padding included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.get()
    }

    /// How far the log has advanced since the writer was created: each group's records padded
    /// to the alignment, as they take room in the segments.
    pub fn bytes_logged(&self) -> u64 {
        self.bytes_logged.get()
    }

    /// Resolves once every record up to `seq` is written to its segment and, if `durable`, synced.
    /// When this resolves `Ok` with `durable`, those records survive power loss.
    pub async fn commit_through(&self, seq: u64, durable: bool) -> Result<()> {
        loop {
            let committing = {
                let state = self.state.borrow();
                if let Some(reason) = &state.failure {
                    return Err(StorageError::Poisoned { reason: reason.clone() });
                }
                let done = if durable { state.durable_seq } else { state.written_seq };
                if done >= seq {
                    return Ok(());
                }
                state.committing
            };
            if committing {
                // Another caller is the leader; its commit (or the next) covers this record.
                // The listener lives on this future's stack, not the heap (one allocation less
                // per write), and is registered before any await, so on this single thread no
                // notification can slip between the check above and the registration.
                event_listener::listener!(self.committed => listener);
                listener.await;
            } else {
                // Boxed: one caller per group leads, and the write and sync it awaits would
                // otherwise make every waiting writer's future (and all that hold one) larger.
                Box::pin(self.lead_commit(durable)).await;
            }
        }
    }

    /// Makes everything appended so far durable.
    pub async fn sync(&self) -> Result<()> {
        let seq = self.appended_seq();
        self.commit_through(seq, true).await
    }

    /// Removes closed segments whose records are all at or below `flushed_seq` from the list and
    /// returns their file names for deletion.
    pub fn take_obsolete(&self, flushed_seq: u64) -> Vec<String> {
        let mut state = self.state.borrow_mut();
        let (obsolete, kept): (Vec<_>, Vec<_>) =
            state.closed.iter().partition(|segment| segment.last_seq <= flushed_seq);
        state.closed = kept;
        obsolete.into_iter().map(|segment| segment_file_name(segment.number)).collect()
    }

    async fn lead_commit(&self, durable: bool) {
        self.state.borrow_mut().committing = true;
        let mut guard = CommitGuard { writer: self, finished: false };
        if durable {
            // The writers woken by the previous commit are about to append their next records:
            // let them, so this group carries them instead of leaving them a group of their own
            // (without this, groups alternate between one record and all the rest).
            yield_once().await;
        }
        let outcome = self.write_buffer(durable).await;
        guard.finished = true;
        let mut state = self.state.borrow_mut();
        state.committing = false;
        if let Err(error) = outcome {
            tracing::error!(%error, "WAL write failed; the engine refuses writes from now on");
            state.failure.get_or_insert_with(|| error.to_string());
        }
        drop(state);
        self.committed.notify(usize::MAX);
    }

    async fn write_buffer(&self, durable: bool) -> Result<()> {
        let (mut data, last_seq, roll) = {
            let mut state = self.state.borrow_mut();
            state.committing = true;
            let spare = std::mem::take(&mut state.spare);
            let data = std::mem::replace(&mut state.buffer, spare);
            let roll = !data.is_empty()
                && state.offset > 0
                && state.offset + data.len() as u64 > self.segment_bytes_max;
            (data, state.appended_seq, roll)
        };
        if roll {
            self.roll_segment().await?;
        }
        let (file, offset, allocated_end, number) = {
            let state = self.state.borrow();
            (state.file.clone(), state.offset, state.allocated_end, state.number)
        };
        let name = || segment_file_name(number);
        if !data.is_empty() {
            let group_bytes = align_up(data.len() as u64);
            let end = offset + group_bytes;
            let write_end = if end > allocated_end && self.preallocate_bytes > 0 {
                // Growing the file: grow it well past this group, in the same write.
                let limit = self.segment_bytes_max.max(end);
                (end + self.preallocate_bytes).min(align_up(limit))
            } else {
                end
            };
            data.resize((write_end - offset) as usize, 0);
            let mut written = if write_end == end && end <= allocated_end {
                // Inside the zeros written ahead: through the page cache, so that the sync
                // after it is the commit's only trip to the device (see
                // `DiskFile::write_cached_at`). Growing the file stays a direct write, whose
                // errors (a full filesystem) come back here, not from a later sync.
                file.write_cached_at(offset, &data).await
            } else {
                file.write_at(offset, &data).await
            };
            if write_end > end
                && matches!(&written, Err(error) if error.kind() == std::io::ErrorKind::StorageFull)
            {
                // No room for the zeros ahead: the group alone may still fit, as it would have
                // without them. Nothing the failed write touched holds acknowledged records.
                data.truncate(group_bytes as usize);
                written = file.write_at(offset, &data).await;
            }
            written.map_err(|error| StorageError::io("write", name(), error))?;
            self.bytes_written.set(self.bytes_written.get() + data.len() as u64);
            self.bytes_logged.set(self.bytes_logged.get() + group_bytes);
            let mut state = self.state.borrow_mut();
            state.offset = end;
            state.allocated_end = state.allocated_end.max(offset + data.len() as u64);
            state.dirty = true;
            state.written_seq = last_seq;
        }
        // Keep the allocation for the next group.
        data.clear();
        self.state.borrow_mut().spare = data;
        let dirty = self.state.borrow().dirty;
        if durable && dirty {
            file.sync().await.map_err(|error| StorageError::io("fdatasync", name(), error))?;
            let mut state = self.state.borrow_mut();
            state.dirty = false;
            state.durable_seq = state.durable_seq.max(last_seq);
        } else if durable {
            let mut state = self.state.borrow_mut();
            state.durable_seq = state.durable_seq.max(last_seq);
        }
        Ok(())
    }

    /// Closes the current segment (syncing it) and starts the next one.
    async fn roll_segment(&self) -> Result<()> {
        let (old_file, old_number, dirty) = {
            let state = self.state.borrow();
            (state.file.clone(), state.number, state.dirty)
        };
        if dirty {
            old_file
                .sync()
                .await
                .map_err(|error| StorageError::io("fdatasync", segment_file_name(old_number), error))?;
        }
        let (file, number) = create_segment(self.disk.as_ref(), &self.next_file_number).await?;
        tracing::debug!(closed = old_number, opened = number, "write-ahead log segment rolled");
        let mut state = self.state.borrow_mut();
        let closed = SegmentInfo { number: old_number, last_seq: state.written_seq };
        state.closed.push(closed);
        state.durable_seq = state.durable_seq.max(state.written_seq);
        state.file = Rc::new(file);
        state.number = number;
        state.offset = 0;
        state.allocated_end = 0;
        state.dirty = false;
        Ok(())
    }
}

/// Fail-stop if a commit future is dropped before it finishes: the records it took from the
/// buffer may never reach the disk, and later records must not be acknowledged past that hole.
struct CommitGuard<'a, D: Disk> {
    writer: &'a WalWriter<D>,
    finished: bool,
}

impl<D: Disk> Drop for CommitGuard<'_, D> {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.writer.state.borrow_mut();
            state.committing = false;
            state.failure.get_or_insert_with(|| "a WAL commit was cancelled before it finished".to_string());
            drop(state);
            self.writer.committed.notify(usize::MAX);
        }
    }
}

/// Returns `Pending` once, waking itself: every other ready task runs before this one resumes.
/// Runtime-agnostic, so the engine stays free of glommio.
pub(crate) async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|context| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            context.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Creates the next segment file and makes its name durable before any record goes into it.
async fn create_segment<D: Disk>(disk: &D, next_file_number: &Cell<u64>) -> Result<(D::File, u64)> {
    let number = next_file_number.get();
    next_file_number.set(number + 1);
    let name = segment_file_name(number);
    let file = disk.create(&name).await.map_err(|error| StorageError::io("create", name.clone(), error))?;
    disk.sync_dir().await.map_err(|error| StorageError::io("fsync directory after creating", name, error))?;
    Ok((file, number))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::{CrashMode, MemDisk};
    use crate::disk::ALIGNMENT;
    use crate::wal::reader::{scan_segment, SegmentScan};
    use bytes::Bytes;
    use futures_executor::block_on;

    const PREALLOCATE: u64 = 16 << 10;

    async fn writer(disk: &MemDisk, preallocate_bytes: u64) -> WalWriter<MemDisk> {
        let next = Rc::new(Cell::new(1));
        WalWriter::create(Rc::new(disk.clone()), next, 1 << 20, preallocate_bytes, Vec::new(), 0)
            .await
            .unwrap()
    }

    /// The first segment's bytes after a power loss of `mode`, and what recovery reads in them.
    async fn first_segment_after_crash(disk: &MemDisk, mode: CrashMode) -> (Bytes, SegmentScan) {
        let crashed = disk.crash(mode);
        let name = segment_file_name(1);
        let file = crashed.open(&name).await.unwrap();
        let bytes = file.read_at(0, file.size().await.unwrap() as usize).await.unwrap();
        let scan = scan_segment(&name, &bytes, Some(1), false).unwrap();
        (bytes, scan)
    }

    async fn commit_one(wal: &WalWriter<MemDisk>, seq: u64, payload: &[u8]) {
        wal.append(seq, payload.len(), |out| out.extend_from_slice(payload)).unwrap();
        wal.commit_through(seq, true).await.unwrap();
    }

    #[test]
    fn segments_grow_by_the_preallocation_not_by_each_group() {
        block_on(async {
            let disk = MemDisk::new();
            let wal = writer(&disk, PREALLOCATE).await;
            let name = segment_file_name(1);
            let mut sizes = Vec::new();
            for seq in 1..=12 {
                commit_one(&wal, seq, &[seq as u8; 100]).await;
                sizes.push(disk.file_len(&name).unwrap());
            }
            // Each group takes one 4 KiB block. The first grows the file to its own block plus
            // 16 KiB of zeros, room for four more groups; the sixth grows it again, and so on.
            let grown = ALIGNMENT as u64 + PREALLOCATE;
            let expected: Vec<u64> = (0..12u64).map(|group| (group / 5 + 1) * grown).collect();
            assert_eq!(sizes, expected);
        });
    }

    #[test]
    fn groups_inside_the_zeros_ahead_are_written_through_the_cache() {
        block_on(async {
            let disk = MemDisk::new();
            let wal = writer(&disk, PREALLOCATE).await;
            for seq in 1..=12 {
                commit_one(&wal, seq, &[seq as u8; 100]).await;
            }
            // Groups 1, 6 and 11 grow the file (direct writes, zeros ahead); the other nine
            // land inside the zeros.
            assert_eq!(disk.cached_writes(), 9);
            // A crash keeps every committed group, whichever way it was written.
            let (_, scan) = first_segment_after_crash(&disk, CrashMode::DropUnsynced).await;
            assert_eq!(
                scan.records.iter().map(|record| record.seq).collect::<Vec<_>>(),
                (1..=12).collect::<Vec<_>>()
            );

            let plain = MemDisk::new();
            let wal = writer(&plain, 0).await;
            for seq in 1..=3 {
                commit_one(&wal, seq, b"x").await;
            }
            assert_eq!(plain.cached_writes(), 0, "without zeros ahead every group grows the file");
        });
    }

    #[test]
    fn the_zeros_ahead_read_back_as_the_end_of_the_log_after_a_crash() {
        block_on(async {
            let disk = MemDisk::new();
            let wal = writer(&disk, PREALLOCATE).await;
            for seq in 1..=6 {
                commit_one(&wal, seq, &[7u8; 300]).await;
            }
            // A seventh group is written into the zeros ahead but never synced, and the power
            // loss keeps none of its sectors.
            wal.append(7, 3, |out| out.extend_from_slice(b"new")).unwrap();
            wal.commit_through(7, false).await.unwrap();
            let (bytes, scan) =
                first_segment_after_crash(&disk, CrashMode::TearLastWrite { sectors_kept: 0 }).await;
            assert!(bytes.len() as u64 > 6 * ALIGNMENT as u64, "the zeros ahead survive the sync");
            assert_eq!(
                scan.records.iter().map(|record| record.seq).collect::<Vec<_>>(),
                (1..=6).collect::<Vec<_>>()
            );
            assert_eq!(scan.torn_bytes, 0);
        });
    }

    #[test]
    fn a_full_disk_takes_the_group_without_the_zeros_ahead() {
        block_on(async {
            let disk = MemDisk::new();
            let wal = writer(&disk, PREALLOCATE).await;
            // Room for two blocks: the first group cannot bring its 16 KiB of zeros.
            disk.fail_writes_past(2 * ALIGNMENT as u64);
            commit_one(&wal, 1, b"fits").await;
            commit_one(&wal, 2, b"fits too").await;
            assert_eq!(disk.file_len(&segment_file_name(1)), Some(2 * ALIGNMENT as u64));
            // The disk is full now: the write fails, as it would have without preallocation.
            wal.append(3, 4, |out| out.extend_from_slice(b"full")).unwrap();
            assert!(wal.commit_through(3, true).await.is_err());
            assert!(wal.failure().is_some_and(|reason| reason.contains("no space left")));
        });
    }

    #[test]
    fn without_preallocation_the_file_ends_at_the_last_group() {
        block_on(async {
            let disk = MemDisk::new();
            let wal = writer(&disk, 0).await;
            for seq in 1..=3 {
                commit_one(&wal, seq, b"x").await;
            }
            assert_eq!(disk.file_len(&segment_file_name(1)), Some(3 * ALIGNMENT as u64));
        });
    }
}
