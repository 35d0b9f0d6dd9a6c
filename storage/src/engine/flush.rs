//! Flushes: the sealed memtable written to a new table, installed in the manifest, and the WAL
//! segments it covers removed.

use super::{io_error, Engine, OnDrop, COMPACTION_ENTRIES_PER_YIELD};
use crate::disk::Disk;
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
                self.disk.yield_point().await;
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
            for (index, (key, mem_entry)) in sealed.iter().enumerate() {
                writer.add(key, &mem_entry.entry).await?;
                // The sealed memtable answers for the key until the table is installed, so no
                // read sees the row's new answer early (see `crate::row_cache`).
                self.rows.refresh(key, &mem_entry.entry);
                if index % COMPACTION_ENTRIES_PER_YIELD == 0 {
                    self.disk.yield_point().await;
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
        // A new table may make a compaction due.
        self.work.notify(usize::MAX);
        Ok((self.wal.take_obsolete(flushed_seq), flushed_seq))
    }
}
