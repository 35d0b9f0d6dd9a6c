//! Flushes: the sealed memtable written to a new table, installed in the manifest, and the WAL
//! segments it covers removed.

use super::{io_error, Engine, OnDrop, COMPACTION_ENTRIES_PER_YIELD};
use crate::disk::{Disk, Pace};
use crate::manifest;
use crate::memtable::Memtable;
use crate::sstable::{CacheFill, TableWriter};
use crate::Result;
use std::rc::Rc;

/// Entries of a flushed memtable freed between two yield points.
const RELEASE_ENTRIES_PER_YIELD: usize = 1024;

impl<D: Disk> Engine<D> {
    /// Seals the active memtable (if it holds anything) and flushes every sealed memtable.
    pub async fn flush(&self) -> Result<()> {
        loop {
            {
                let mut state = self.state.borrow_mut();
                self.check_writable(&state)?;
                if state.sealed.is_none() {
                    if state.active.is_empty() {
                        return Ok(());
                    }
                    self.seal_active(&mut state);
                }
            }
            self.flush_sealed().await?;
        }
    }

    /// The flush half of [`Engine::run_maintenance`]: flushes each sealed memtable, until stopped.
    /// Writers stall while a sealed memtable waits, so run it above compactions' priority.
    pub async fn run_flushes(&self) -> Result<()> {
        while !self.stopping.get() {
            let listener = self.work.listen();
            let has_sealed = self.state.borrow().sealed.is_some();
            if has_sealed {
                self.flush_sealed().await?;
                continue;
            }
            if self.stopping.get() {
                break;
            }
            listener.await;
        }
        Ok(())
    }

    /// How a flush that has written `flushed` of its `total` entries may be paced. It is urgent
    /// once the memtable written meanwhile has filled half as far as the flush has come, by bytes
    /// or by its share of the log (a memtable is also sealed at `wal_bytes_max` of the log), or
    /// when the engine stops; deferrable otherwise. Held to that, a flush ends before the next
    /// memtable is half full whenever it can at full speed, so writers stall on a paced flush
    /// only where they would have stalled on an unpaced one.
    pub(super) fn flush_pace(&self, flushed: usize, total: usize) -> Pace {
        if self.stopping.get() {
            return Pace::Urgent;
        }
        let state = self.state.borrow();
        let filled = |used: u64, budget: u64| used as f64 / budget.max(1) as f64;
        let by_bytes =
            filled(state.active.approximate_bytes() as u64, self.options.memtable_bytes_max as u64);
        let logged = self.wal.bytes_logged() - state.active_wal_start + state.active_wal_replayed;
        let by_log = filled(logged, self.options.wal_bytes_max);
        let done = filled(flushed as u64, total as u64);
        if by_bytes.max(by_log) * 2.0 > done {
            Pace::Urgent
        } else {
            Pace::Deferrable
        }
    }

    /// Writes the sealed memtable to a new table and installs it.
    pub(super) async fn flush_sealed(&self) -> Result<()> {
        let sealed = {
            let mut state = self.state.borrow_mut();
            if state.flushing {
                Err(self.structure_changed.listen())
            } else {
                let Some(sealed) = state.sealed.clone() else { return Ok(()) };
                state.flushing = true;
                Ok(sealed)
            }
        };
        let sealed = match sealed {
            Ok(sealed) => sealed,
            Err(listener) => {
                // Someone else is flushing: wait for it rather than return at once, so a caller
                // looping on "is there a sealed memtable" awaits instead of spinning.
                listener.await;
                return Ok(());
            }
        };
        // Cleared however the flush ends, dropped midway included: writers wait on it.
        let _release = OnDrop::new(|| {
            self.state.borrow_mut().flushing = false;
            self.structure_changed.notify(usize::MAX);
        });
        tracing::debug!(entries = sealed.len(), bytes = sealed.approximate_bytes(), "memtable flush started");
        let outcome = self.flush_memtable(&sealed).await;
        if let Err(error) = &outcome {
            self.poison(&mut self.state.borrow_mut(), "flush", error);
        }
        // What is left is clean-up: the next flush need not wait for it.
        drop(_release);
        // The flushed memtable is freed a piece at a time (unless a reader still holds it, which
        // then frees it when done): at once, a large one would hold the shard for milliseconds.
        if let Ok(memtable) = Rc::try_unwrap(sealed) {
            let mut remains = memtable.into_remains();
            while remains.release(RELEASE_ENTRIES_PER_YIELD) {
                self.disk.yield_point(self.flush_pace(1, 1)).await;
            }
        }
        let (obsolete, flushed_seq) = outcome?;
        let removed = self.remove_segments(&obsolete).await;
        if let Err(error) = &removed {
            self.poison(&mut self.state.borrow_mut(), "flush", error);
        }
        removed?;
        self.stats.borrow_mut().flushes += 1;
        tracing::debug!(flushed_seq, "memtable flushed");
        Ok(())
    }

    /// Removes WAL segments whose records are all in tables. Nothing reads them any more, so
    /// they go gently ([`Disk::remove_gently`]): a segment is up to 128 MiB.
    async fn remove_segments(&self, obsolete: &[String]) -> Result<()> {
        for name in obsolete {
            self.disk.remove_gently(name).await.map_err(io_error("remove", name))?;
        }
        if let Some(name) = obsolete.last() {
            // Until the directory is synced a crash brings the segments back; recovery passes
            // over such leftovers, but the disk space and the open time are only saved here.
            self.disk.sync_dir().await.map_err(io_error("fsync directory after removing", name))?;
        }
        Ok(())
    }

    /// Writes `sealed` to a table and installs it; returns the WAL segments it made obsolete
    /// and the last sequence number flushed.
    async fn flush_memtable(&self, sealed: &Memtable) -> Result<(Vec<String>, u64)> {
        let table = if sealed.is_empty() {
            None
        } else {
            let id = self.allocate_file_number();
            let name = manifest::table_file_name(id);
            let file = self.disk.create(&name).await.map_err(io_error("create", &name))?;
            // The entries were in memory until now: their blocks go to the cache as they are
            // written, so reads of recent writes do not become disk reads after the flush.
            let mut writer =
                TableWriter::new(file, name.clone(), self.options.bloom_bits_per_key, sealed.len())
                    .filling_cache(self.cache.clone(), id, CacheFill::All);
            let total = sealed.len();
            for (index, (key, mem_entry)) in sealed.iter().enumerate() {
                writer.add(key, &mem_entry.entry).await?;
                // The sealed memtable answers for the key until the table is installed, so no
                // read sees the row's new answer early (see `crate::row_cache`).
                self.rows.refresh(key, &mem_entry.entry);
                if index % COMPACTION_ENTRIES_PER_YIELD == 0 {
                    self.disk.yield_point(self.flush_pace(index, total)).await;
                }
            }
            let (table, record) = self.seal_table(writer, name, id).await?;
            self.stats.borrow_mut().flush_bytes += record.file_bytes;
            Some((table, record))
        };
        let flushed_seq = sealed.last_seq();
        self.install(|tables, manifest| {
            if let Some((table, record)) = table {
                manifest.tables.push(record);
                tables.push(table);
            }
            manifest.flushed_seq = manifest.flushed_seq.max(flushed_seq);
        })
        .await?;
        {
            // No await since the tables changed: readers never miss the flushed entries.
            let mut state = self.state.borrow_mut();
            state.sealed = None;
            state.flush_generation += 1;
        }
        tracing::debug!(flushed_seq, "memtable flush installed");
        // A new table may make a compaction due.
        self.work.notify(usize::MAX);
        Ok((self.wal.take_obsolete(flushed_seq), flushed_seq))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, small_options};
    use super::super::*;
    use crate::disk::memory::MemDisk;
    use crate::disk::Pace;
    use futures_executor::block_on;

    /// Puts keys `range` with 200-byte values.
    async fn put_keys(engine: &Engine<MemDisk>, range: std::ops::Range<u32>) {
        for index in range {
            engine.put(key(index), Bytes::from(vec![7u8; 200]), u64::from(index) + 1, None).await.unwrap();
        }
    }

    #[test]
    fn a_flush_behind_the_writes_turns_urgent_by_bytes_or_by_log() {
        block_on(async {
            let options = EngineOptions { wal_bytes_max: 64 << 10, ..small_options() };
            let engine = Engine::open(MemDisk::new(), options).await.unwrap();
            // Nothing written since the seal: a flush at any point may wait.
            assert_eq!(engine.flush_pace(0, 100), Pace::Deferrable);
            assert_eq!(engine.flush_pace(99, 100), Pace::Deferrable);
            // One key overwritten again and again: the memtable stays small, the log grows.
            for version in 1..=200 {
                engine.put(key(0), Bytes::from(vec![1u8; 200]), version, None).await.unwrap();
            }
            // About 200 records of 200 bytes: over half of a 64 KiB log bound, though the memtable
            // holds one key.
            assert!(
                engine.state.borrow().active.approximate_bytes() * 8 < small_options().memtable_bytes_max
            );
            assert_eq!(engine.flush_pace(99, 100), Pace::Urgent, "the log share is past half");
            assert_eq!(engine.flush_pace(0, 100), Pace::Urgent);
        });
    }

    #[test]
    fn a_flush_nobody_waits_for_is_deferrable_and_one_writers_will_soon_wait_for_is_urgent() {
        block_on(async {
            let disk = MemDisk::new();
            let options = small_options();
            let half = options.memtable_bytes_max / 2;
            let engine = Engine::open(disk.clone(), options).await.unwrap();

            // The flushed memtable is the only one: nothing waits for it.
            put_keys(&engine, 0..20).await;
            let before = disk.yield_paces();
            engine.flush().await.unwrap();
            let after = disk.yield_paces();
            assert!(after.0 > before.0, "the flush yielded as deferrable work: {before:?} -> {after:?}");
            assert_eq!(after.1, before.1, "and never as urgent work");

            // Fill until a memtable is sealed, then the next one past half its budget: writers
            // will stall if the sealed one is not flushed before the active one fills.
            let mut next = 1000;
            while engine.state.borrow().sealed.is_none() {
                put_keys(&engine, next..next + 1).await;
                next += 1;
            }
            while engine.state.borrow().active.approximate_bytes() < half {
                put_keys(&engine, next..next + 1).await;
                next += 1;
            }
            let before = disk.yield_paces();
            engine.flush_sealed().await.unwrap();
            let after = disk.yield_paces();
            assert!(after.1 > before.1, "the flush yielded as urgent work: {before:?} -> {after:?}");
            assert_eq!(after.0, before.0, "and never as deferrable work");
            // Nothing was lost either way.
            for index in (0..20).chain(1000..next) {
                assert!(engine.get(&key(index), 0).await.unwrap().is_some(), "key {index}");
            }
            // Once the engine stops, nothing may wait.
            engine.stopping.set(true);
            assert_eq!(engine.flush_pace(1, 2), Pace::Urgent);
            assert_eq!(engine.compaction_pace(), Pace::Urgent);
        });
    }
}
