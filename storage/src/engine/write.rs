//! The write path: puts, deletes, raw entries and compare-and-swap, each applied (WAL buffer
//! append and memtable insert) in one synchronous step, then acknowledged once the group commit
//! covers it; and the write stall that waits for memtable room.

use super::{validate, CasOutcome, Engine, Expected, State};
use crate::disk::Disk;
use crate::entry::Entry;
use crate::options::SyncMode;
use crate::Result;
use bytes::Bytes;
use std::rc::Rc;

impl<D: Disk> Engine<D> {
    /// Writes `value` under `key` with `version`, expiring at `expires_at_ms` if given.
    /// Resolves when the write is acknowledged (see [`SyncMode`]).
    pub async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        version: u64,
        expires_at_ms: Option<u64>,
    ) -> Result<()> {
        validate(&key, Some(&value))?;
        self.write(key, Entry::live(version, value, expires_at_ms)).await
    }

    /// Deletes `key` by writing a tombstone with `version`, made at `now_ms`.
    pub async fn delete(&self, key: Bytes, version: u64, now_ms: u64) -> Result<()> {
        self.write(key, Entry::tombstone(version, now_ms)).await
    }

    /// Writes a raw entry (as replication streams them). Resolves when acknowledged.
    pub async fn write(&self, key: Bytes, entry: Entry) -> Result<()> {
        validate(&key, entry.data())?;
        self.make_room().await?;
        let seq = self.apply(&mut self.state.borrow_mut(), key, entry)?;
        self.acknowledge(seq).await
    }

    /// Writes `value` only if the key's current state matches `expected`. Atomic on this shard:
    /// the check and the write happen with no other write to the key in between.
    pub async fn compare_and_swap(
        &self,
        key: Bytes,
        expected: Expected,
        value: Bytes,
        version: u64,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<CasOutcome> {
        validate(&key, Some(&value))?;
        self.make_room().await?;
        loop {
            let (generation, start_seq) = {
                let state = self.state.borrow();
                (state.flush_generation, state.next_seq)
            };
            let found = self.get_entry(&key).await?;
            let decided = {
                let mut state = self.state.borrow_mut();
                if state.flush_generation != generation {
                    // A memtable moved to a table while we read; the read may have missed a write.
                    None
                } else {
                    // A write to the key after the read started is in a memtable; it decides.
                    let newer = state
                        .active
                        .get(&key)
                        .or_else(|| state.sealed.as_ref().and_then(|sealed| sealed.get(&key)))
                        .filter(|mem_entry| mem_entry.seq >= start_seq)
                        .map(|mem_entry| mem_entry.entry.clone());
                    let current = newer
                        .or(found)
                        .filter(|entry| !entry.is_absent_at(now_ms))
                        .map(|entry| entry.version);
                    let matches = match expected {
                        Expected::Absent => current.is_none(),
                        Expected::Version(version) => current == Some(version),
                    };
                    if matches {
                        let entry = Entry::live(version, value.clone(), expires_at_ms);
                        Some(Ok(self.apply(&mut state, key.clone(), entry)?))
                    } else {
                        Some(Err(current))
                    }
                }
            };
            match decided {
                None => continue,
                Some(Err(current_version)) => return Ok(CasOutcome::Mismatch { current_version }),
                Some(Ok(seq)) => {
                    self.acknowledge(seq).await?;
                    return Ok(CasOutcome::Swapped);
                }
            }
        }
    }

    /// Makes every write appended so far durable.
    pub async fn sync(&self) -> Result<()> {
        self.wal.sync().await
    }

    /// Appends to the WAL buffer and the memtable in one step; returns the sequence number.
    fn apply(&self, state: &mut State<D::File>, key: Bytes, entry: Entry) -> Result<u64> {
        self.check_writable(state)?;
        let seq = state.next_seq;
        self.wal.append(seq, entry.encoded_len(key.len()), |out| entry.encode(&key, out))?;
        state.next_seq += 1;
        self.stats.borrow_mut().user_bytes += (key.len() + entry.data().map_or(0, Bytes::len)) as u64;
        state.active.insert(&key, seq, entry);
        self.seal_if_full(state);
        Ok(seq)
    }

    pub(super) fn seal_if_full(&self, state: &mut State<D::File>) {
        if state.active.approximate_bytes() >= self.options.memtable_bytes_max && state.sealed.is_none() {
            let fresh = state.active.empty_like();
            let active = std::mem::replace(&mut state.active, fresh);
            state.sealed = Some(Rc::new(active));
            self.work.notify(usize::MAX);
        }
    }

    async fn acknowledge(&self, seq: u64) -> Result<()> {
        match self.options.sync {
            SyncMode::Always => self.wal.commit_through(seq, true).await,
            SyncMode::Periodic { .. } if self.wal.buffered_bytes() >= self.options.wal_buffer_bytes_max => {
                self.wal.commit_through(seq, false).await
            }
            SyncMode::Periodic { .. } => Ok(()),
        }
    }

    /// Waits while both memtables are full (write stall), flushing itself if nobody else is.
    async fn make_room(&self) -> Result<()> {
        loop {
            let listener = {
                let state = self.state.borrow();
                self.check_writable(&state)?;
                if state.sealed.is_none()
                    || state.active.approximate_bytes() < self.options.memtable_bytes_max
                {
                    return Ok(());
                }
                state.flushing.then(|| self.structure_changed.listen())
            };
            match listener {
                Some(listener) => listener.await,
                None => self.flush_sealed().await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, small_options};
    use super::super::*;
    use crate::disk::memory::MemDisk;
    use futures_executor::block_on;

    #[test]
    fn compare_and_swap_checks_versions_and_absence() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            let k = Bytes::from_static(b"k");
            let v = Bytes::from_static(b"v");
            assert_eq!(
                engine
                    .compare_and_swap(k.clone(), Expected::Version(1), v.clone(), 2, None, 0)
                    .await
                    .unwrap(),
                CasOutcome::Mismatch { current_version: None }
            );
            assert_eq!(
                engine.compare_and_swap(k.clone(), Expected::Absent, v.clone(), 5, None, 0).await.unwrap(),
                CasOutcome::Swapped
            );
            assert_eq!(
                engine.compare_and_swap(k.clone(), Expected::Absent, v.clone(), 6, None, 0).await.unwrap(),
                CasOutcome::Mismatch { current_version: Some(5) }
            );
            engine.flush().await.unwrap();
            assert_eq!(
                engine
                    .compare_and_swap(k.clone(), Expected::Version(5), v.clone(), 7, Some(50), 0)
                    .await
                    .unwrap(),
                CasOutcome::Swapped
            );
            // Expired means absent.
            assert_eq!(
                engine.compare_and_swap(k.clone(), Expected::Absent, v, 8, None, 60).await.unwrap(),
                CasOutcome::Swapped
            );
        });
    }

    #[test]
    fn failed_sync_poisons_and_refuses_writes() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            engine.put(key(1), Bytes::from_static(b"a"), 1, None).await.unwrap();
            disk.fail_syncs_after(0);
            let error = engine.put(key(2), Bytes::from_static(b"b"), 2, None).await.unwrap_err();
            assert!(error.is_fatal(), "{error}");
            let error = engine.put(key(3), Bytes::from_static(b"c"), 3, None).await.unwrap_err();
            assert!(matches!(error, StorageError::Poisoned { .. }), "{error}");
            assert!(engine.failure().is_some());
            // Reads of what is there still work.
            assert!(engine.get(&key(1), 0).await.unwrap().is_some());
        });
    }

    #[test]
    fn a_commit_dropped_mid_way_poisons_instead_of_leaving_a_hole() {
        use futures_util::FutureExt;
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            engine.put(key(1), Bytes::from_static(b"a"), 1, None).await.unwrap();
            // Polled once, the put leads a commit and yields inside it; dropping it cancels that.
            assert!(engine.put(key(2), Bytes::from_static(b"b"), 2, None).now_or_never().is_none());
            let error = engine.put(key(3), Bytes::from_static(b"c"), 3, None).await.unwrap_err();
            assert!(
                matches!(&error, StorageError::Poisoned { reason } if reason.contains("cancelled")),
                "{error}"
            );
        });
    }

    #[test]
    fn rejects_bad_keys_and_values_without_writing() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            let too_long = Bytes::from(vec![1u8; KEY_BYTES_MAX + 1]);
            let too_large = Bytes::from(vec![1u8; VALUE_BYTES_MAX + 1]);
            assert!(matches!(
                engine.put(Bytes::new(), Bytes::new(), 1, None).await,
                Err(StorageError::KeyEmpty)
            ));
            assert!(matches!(
                engine.put(too_long, Bytes::new(), 1, None).await,
                Err(StorageError::KeyTooLong { len }) if len == KEY_BYTES_MAX + 1
            ));
            assert!(matches!(
                engine.put(key(1), too_large, 1, None).await,
                Err(StorageError::ValueTooLarge { .. })
            ));
            assert_eq!(engine.stats().user_bytes, 0);
        });
    }
}
