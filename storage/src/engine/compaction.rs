//! Running compactions: the planner ([`crate::compaction::choose`]) picks adjacent tables, and
//! this merges them into one, dropping or converting dead entries as the choice allows.

use super::{io_error, Engine, OnDrop, COMPACTION_ENTRIES_PER_YIELD};
use crate::compaction::{self, Choice, CompactionLimits, TableSize};
use crate::disk::{Disk, Pace};
use crate::entry::{Entry, Value};
use crate::manifest;
use crate::sstable::{CacheFill, Table, TableWriter};
use crate::Result;
use std::rc::Rc;

/// Most keys a compaction notes for the row cache to forget; past it, the whole cache is cleared.
const CHANGED_ROWS_MAX: usize = 4096;

impl<D: Disk> Engine<D> {
    /// Runs one compaction if the planner asks for one. Returns whether it did.
    pub async fn compact(&self, now_ms: u64) -> Result<bool> {
        let limits = self.compaction_limits();
        self.run_compaction(|tables| compaction::choose(tables, &limits), now_ms).await
    }

    /// Merges every table into one, dropping dead entries past their grace period.
    pub async fn compact_all(&self, now_ms: u64) -> Result<bool> {
        self.run_compaction(compaction::choose_all, now_ms).await
    }

    /// The compaction half of [`Engine::run_maintenance`]: runs compactions as they become due,
    /// until stopped. Run it on a low-priority queue.
    pub async fn run_compactions(&self, now_ms: impl Fn() -> u64) -> Result<()> {
        while !self.stopping.get() {
            let listener = self.work.listen();
            if self.compact(now_ms()).await? {
                continue;
            }
            if self.stopping.get() {
                break;
            }
            listener.await;
        }
        Ok(())
    }

    /// How a compaction may be paced: urgent once the tables number as many as the widest
    /// compaction takes in (reads probe every table, so a backlog costs each of them), or when
    /// the engine stops; deferrable otherwise.
    pub(super) fn compaction_pace(&self) -> Pace {
        let backlog = self.state.borrow().tables.len() >= self.options.compaction_width_max;
        if backlog || self.stopping.get() {
            Pace::Urgent
        } else {
            Pace::Deferrable
        }
    }

    fn compaction_limits(&self) -> CompactionLimits {
        CompactionLimits {
            width_min: self.options.compaction_width_min,
            width_max: self.options.compaction_width_max,
            small_table_bytes: (self.options.memtable_bytes_max / 4) as u64,
            tables_max: self.options.compaction_width_max * 2,
        }
    }

    async fn run_compaction(
        &self,
        plan: impl FnOnce(&[TableSize]) -> Option<Choice>,
        now_ms: u64,
    ) -> Result<bool> {
        let (inputs, choice) = {
            let mut state = self.state.borrow_mut();
            self.check_writable(&state)?;
            if state.compacting {
                return Ok(false);
            }
            let sizes: Vec<TableSize> = state
                .tables
                .iter()
                .map(|table| TableSize { id: table.id(), file_bytes: table.file_bytes() })
                .collect();
            let Some(choice) = plan(&sizes) else { return Ok(false) };
            state.compacting = true;
            (state.tables[choice.first..=choice.last].to_vec(), choice)
        };
        // Cleared however the compaction ends, dropped midway included.
        let _release = OnDrop::new(|| {
            self.state.borrow_mut().compacting = false;
            self.structure_changed.notify(usize::MAX);
        });
        let outcome = self.merge_tables(&inputs, choice.purge_dead, now_ms).await;
        if let Err(error) = &outcome {
            self.poison(&mut self.state.borrow_mut(), "compaction", error);
        }
        tracing::debug!(tables = inputs.len(), ok = outcome.is_ok(), "compaction finished");
        outcome.map(|()| true)
    }

    async fn merge_tables(&self, inputs: &[Rc<Table<D::File>>], purge_dead: bool, now_ms: u64) -> Result<()> {
        let id = self.allocate_file_number();
        let name = manifest::table_file_name(id);
        let file = self.disk.create(&name).await.map_err(io_error("create", &name))?;
        let expected_keys = inputs.iter().map(|table| table.entry_count() as usize).sum();
        let mut writer = TableWriter::new(file, name.clone(), self.options.bloom_bits_per_key, expected_keys);
        // The output replaces tables whose blocks reads had cached: it takes their place in
        // the cache as it is written. A block holding an entry whose input block was cached and
        // used there by a read enters as if read, so the hot set stays in memory through the
        // merge; the rest enters as new blocks when the output is small next to the cache (half
        // of it at most), and not at all otherwise, so it does not push the hot set out.
        let input_bytes: u64 = inputs.iter().map(|table| table.file_bytes()).sum();
        tracing::debug!(tables = inputs.len(), input_bytes, "compaction started");
        let fill = if input_bytes <= self.cache.capacity_bytes() as u64 / 2 {
            CacheFill::All
        } else {
            CacheFill::Warm
        };
        writer = writer.filling_cache(self.cache.clone(), id, fill);
        let mut iterators: Vec<_> = inputs.iter().map(|table| table.iter(None, false)).collect();
        let mut heads = Vec::with_capacity(iterators.len());
        for iterator in &mut iterators {
            heads.push(iterator.next().await?);
        }
        let grace = self.options.tombstone_grace_ms;
        let mut examined = 0usize;
        // Keys whose entry the merge drops or turns into a tombstone: the row cache forgets
        // them once the output is installed. Past a bound it forgets every row instead. Nothing
        // is noted when the row cache is off.
        let rows_on = self.rows.is_enabled();
        let mut changed_rows: Vec<Vec<u8>> = Vec::new();
        let mut changed_rows_overflowed = false;
        let mut note_changed = |key: &[u8]| {
            if !rows_on {
                return;
            }
            if changed_rows.len() < CHANGED_ROWS_MAX {
                changed_rows.push(key.to_vec());
            } else {
                changed_rows_overflowed = true;
            }
        };
        loop {
            // The smallest key among the heads; among the heads holding it, the highest-ranking
            // entry (by version, not by table age).
            let mut winner: Option<usize> = None;
            for (index, head) in heads.iter().enumerate() {
                let Some((key, entry)) = head else { continue };
                let better = match winner.and_then(|winner| heads[winner].as_ref()) {
                    None => true,
                    Some((best_key, best_entry)) => {
                        key < best_key || (key == best_key && entry.supersedes(best_entry))
                    }
                };
                if better {
                    winner = Some(index);
                }
            }
            let Some(winner) = winner else { break };
            // Counted as examined, written or not: a long run of purged entries still reaches
            // the yield points.
            examined += 1;
            if examined.is_multiple_of(COMPACTION_ENTRIES_PER_YIELD) {
                self.disk.yield_point(self.compaction_pace()).await;
            }
            let (key, entry) = heads[winner].clone().expect("winner has a head");
            // Warm when any input's entry for the key came from a cached block a read had used:
            // a read of the key may have gone to any of them.
            let mut warm = false;
            for index in 0..heads.len() {
                if heads[index].as_ref().is_some_and(|(other, _)| *other == key) {
                    warm |= iterators[index].from_cache();
                    heads[index] = iterators[index].next().await?;
                }
            }
            let entry = match entry.dead_since_ms(now_ms) {
                // Safe although reads resolve by version: a write is stored only if it outranks
                // everything stored for its key, so no table newer than these holds a lower
                // version of the key that the dropped entry was hiding.
                Some(since)
                    if purge_dead && since.saturating_add(grace) <= now_ms && self.may_purge(&key, since) =>
                {
                    note_changed(&key);
                    continue;
                }
                // An expired value still hides older versions in tables outside this merge.
                Some(since) if !purge_dead && matches!(entry.value, Value::Live { .. }) => {
                    note_changed(&key);
                    Entry::tombstone(entry.version, since)
                }
                _ => entry,
            };
            writer.add(&key, &entry).await?;
            if warm {
                writer.mark_warm();
            }
        }
        // The iterators hold the inputs: let them go, so that once the output is installed the
        // inputs' only holders are this compaction and any reader still at work.
        drop(iterators);
        let output = if writer.entry_count() == 0 {
            drop(writer);
            self.disk.remove(&name).await.map_err(io_error("remove", &name))?;
            None
        } else {
            let (table, record) = self.seal_table(writer, name, id).await?;
            self.stats.borrow_mut().compaction_bytes += record.file_bytes;
            Some((table, record))
        };
        let input_ids: Vec<u64> = inputs.iter().map(|table| table.id()).collect();
        self.install(|tables, manifest| {
            // Flushes only append newer tables, so the inputs are still adjacent.
            let first =
                manifest.tables.iter().position(|table| table.id == input_ids[0]).expect("input in manifest");
            let range = first..first + input_ids.len();
            let (new_table, new_record) = output.unzip();
            manifest.tables.splice(range.clone(), new_record);
            tables.splice(range, new_table);
        })
        .await?;
        tracing::debug!(tables = input_ids.len(), "compaction installed");
        // In the same turn as the install: no read sees the new tables with the old rows.
        if changed_rows_overflowed {
            self.rows.clear();
        } else {
            for key in &changed_rows {
                self.rows.forget(key);
            }
        }
        for table in inputs {
            let blocks = table.block_count();
            for start in (0..blocks).step_by(COMPACTION_ENTRIES_PER_YIELD) {
                table.forget_cached_blocks(start..blocks.min(start + COMPACTION_ENTRIES_PER_YIELD));
                self.disk.yield_point(self.compaction_pace()).await;
            }
            // A table no reader holds (only `inputs` does) is never read again and may shrink
            // on its way out; one a read or a scan still holds must stay whole until dropped.
            let removed = if Rc::strong_count(table) == 1 {
                self.disk.remove_gently(table.file_name()).await
            } else {
                self.disk.remove(table.file_name()).await
            };
            removed.map_err(io_error("remove", table.file_name()))?;
        }
        self.stats.borrow_mut().compactions += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, small_options};
    use super::super::*;
    use crate::disk::memory::MemDisk;
    use crate::options::SyncMode;
    use crate::wal::writer::yield_once;
    use futures_executor::block_on;

    /// Writes keys `0..keys` once per round of `rounds`, at versions rising by round, and flushes
    /// after each round: a table per round, all holding the same keys.
    async fn flushed_rounds(engine: &Engine<MemDisk>, rounds: std::ops::Range<u64>, keys: u32) {
        for round in rounds {
            for index in 0..keys {
                let version = round * 1000 + u64::from(index) + 1;
                engine.put(key(index), Bytes::from(vec![round as u8; 48]), version, None).await.unwrap();
            }
            engine.flush().await.unwrap();
        }
    }

    /// Every key of `keys` read through `engine`, counting the disk reads that took.
    async fn disk_reads_for(engine: &Engine<MemDisk>, disk: &MemDisk, keys: std::ops::Range<u32>) -> u64 {
        let before = disk.reads();
        for index in keys {
            assert!(engine.get(&key(index), 0).await.unwrap().is_some(), "key {index}");
        }
        disk.reads() - before
    }

    #[test]
    fn a_compaction_is_deferrable_until_the_tables_pile_up() {
        block_on(async {
            let disk = MemDisk::new();
            let options =
                EngineOptions { compaction_width_max: 4, memtable_bytes_max: 1 << 20, ..small_options() };
            let engine = Engine::open(disk.clone(), options).await.unwrap();
            flushed_rounds(&engine, 0..3, 600).await;
            assert_eq!(engine.stats().tables, 3);
            let before = disk.yield_paces();
            assert!(engine.compact_all(0).await.unwrap());
            let after = disk.yield_paces();
            assert!(after.0 > before.0, "three tables: deferrable, {before:?} -> {after:?}");
            assert_eq!(after.1, before.1, "three tables: never urgent");

            flushed_rounds(&engine, 3..6, 600).await;
            assert_eq!(engine.stats().tables, 4);
            let before = disk.yield_paces();
            assert!(engine.compact_all(0).await.unwrap());
            let after = disk.yield_paces();
            // The merge ran urgent; once its output replaced the inputs, the clean-up after it
            // (forgetting their cached blocks) was deferrable again.
            assert!(
                after.1 > before.1,
                "as many tables as the widest compaction: urgent, {before:?} -> {after:?}"
            );
            assert!(
                after.0 > before.0,
                "the clean-up after the install: deferrable, {before:?} -> {after:?}"
            );
            assert_eq!(engine.stats().tables, 1);
            assert_eq!(disk_reads_for(&engine, &disk, 0..600).await, 0);
        });
    }

    #[test]
    fn flushed_and_compacted_tables_are_read_from_the_cache_their_writers_filled() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            for round in 0..4u64 {
                flushed_rounds(&engine, round..round + 1, 400).await;
                // Each flush's blocks were cached as they were written.
                assert_eq!(disk_reads_for(&engine, &disk, 0..400).await, 0, "after flush {round}");
            }
            let flushed = engine.stats();
            assert!(flushed.tables >= 4, "{flushed:?}");
            assert!(engine.compact_all(0).await.unwrap());
            let compacted = engine.stats();
            assert_eq!(compacted.tables, 1, "{compacted:?}");
            // The merged table's blocks were cached as it was written...
            assert_eq!(disk_reads_for(&engine, &disk, 0..400).await, 0, "after the compaction");
            // ...and the inputs' blocks left the cache with them: it holds about one table now.
            assert!(
                compacted.block_cache_bytes < flushed.block_cache_bytes / 2,
                "cache {} bytes after the compaction, {} before",
                compacted.block_cache_bytes,
                flushed.block_cache_bytes
            );
            // Reopened, the cache starts empty: the same reads go to the disk, which shows the
            // counts above measure the cache.
            drop(engine);
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            assert!(disk_reads_for(&engine, &disk, 0..400).await > 0);
        });
    }

    #[test]
    fn a_compaction_larger_than_the_cache_carries_over_only_the_blocks_reads_had_cached() {
        block_on(async {
            let disk = MemDisk::new();
            // Four rounds of 8,000 keys (a table of about 600 KiB each) against a 256 KiB cache:
            // the merge is too large to cache whole.
            let options = EngineOptions {
                memtable_bytes_max: 4 << 20,
                block_cache_bytes: 256 << 10,
                ..small_options()
            };
            let engine = Engine::open(disk.clone(), options.clone()).await.unwrap();
            flushed_rounds(&engine, 0..4, 8000).await;
            drop(engine);
            // Reopened with an empty cache, reads warm the blocks of ten keys alone.
            let engine = Engine::open(disk.clone(), options).await.unwrap();
            assert!(disk_reads_for(&engine, &disk, 0..10).await > 0);
            assert_eq!(disk_reads_for(&engine, &disk, 0..10).await, 0, "the hot keys are cached");
            let warmed = engine.stats().block_cache_bytes;
            assert!(engine.compact_all(0).await.unwrap());
            let compacted = engine.stats();
            assert_eq!(compacted.tables, 1, "{compacted:?}");
            // The hot keys' new blocks were cached as the merge wrote them...
            assert_eq!(disk_reads_for(&engine, &disk, 0..10).await, 0, "hot keys after the compaction");
            // ...and few others: an input block the reads cached spreads over one or two new
            // ones, and the inputs' own blocks left with them.
            let cached = engine.stats().block_cache_bytes;
            assert!(
                cached > 0 && cached <= warmed * 3 && cached < compacted.table_bytes as usize / 4,
                "{cached} bytes cached, {warmed} warmed, a table of {}",
                compacted.table_bytes
            );
            assert!(disk_reads_for(&engine, &disk, 4000..4100).await > 0, "cold keys stay on disk");
        });
    }

    #[test]
    fn blocks_a_flush_cached_that_no_read_used_are_not_carried_over_by_a_large_compaction() {
        block_on(async {
            let disk = MemDisk::new();
            // A cache that holds every table the flushes write (about 3 MB in all), yet less
            // than twice their total: the merge is a large one. Filters with next to no false
            // positives, so that no write's lookup of its new key reads (and uses) a block.
            let options = EngineOptions {
                memtable_bytes_max: 4 << 20,
                block_cache_bytes: 4 << 20,
                bloom_bits_per_key: 30,
                ..small_options()
            };
            let engine = Engine::open(disk.clone(), options).await.unwrap();
            // New keys each round: a write looks up its key's stored version, which would read
            // (and so use) the blocks of the keys it overwrites.
            for round in 0..4u32 {
                for index in round * 8000..(round + 1) * 8000 {
                    engine.put(key(index), Bytes::from(vec![round as u8; 48]), 1, None).await.unwrap();
                }
                engine.flush().await.unwrap();
            }
            let flushed = engine.stats();
            assert!(
                flushed.table_bytes > 2 << 20 && flushed.block_cache_bytes as u64 >= flushed.table_bytes / 2
            );
            // Ten keys are read, from the blocks the flushes cached.
            assert_eq!(disk_reads_for(&engine, &disk, 0..10).await, 0);
            assert!(engine.compact_all(0).await.unwrap());
            let compacted = engine.stats();
            assert_eq!(compacted.tables, 1, "{compacted:?}");
            assert_eq!(disk_reads_for(&engine, &disk, 0..10).await, 0, "the read keys after the compaction");
            // Of all the flushes cached, only the blocks reads used were carried over (each to
            // the few output blocks its key range spans): a fraction of what was cached.
            let cached = engine.stats().block_cache_bytes;
            assert!(
                cached > 0 && cached < flushed.block_cache_bytes / 3,
                "{cached} bytes cached of {} before the compaction",
                flushed.block_cache_bytes
            );
            assert!(disk_reads_for(&engine, &disk, 20_000..20_100).await > 0, "unread keys are on disk");
        });
    }

    #[test]
    fn compacted_inputs_no_reader_holds_are_removed_gently() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            flushed_rounds(&engine, 0..4, 200).await;
            let tables: Vec<String> =
                disk.file_names().into_iter().filter(|name| name.ends_with(".sst")).collect();
            assert!(tables.len() >= 4, "{tables:?}");
            assert!(engine.compact_all(0).await.unwrap());
            let gentle = disk.gentle_removals();
            for table in &tables {
                assert!(gentle.contains(table), "{table} removed gently: {gentle:?}");
                assert!(!disk.file_names().contains(table));
            }
        });
    }

    #[test]
    fn a_compaction_too_large_for_the_cache_does_not_fill_it() {
        block_on(async {
            let disk = MemDisk::new();
            // A cache of 64 KiB against about 100 KiB of tables.
            let options = EngineOptions { block_cache_bytes: 64 << 10, ..small_options() };
            let engine = Engine::open(disk.clone(), options.clone()).await.unwrap();
            flushed_rounds(&engine, 0..4, 200).await;
            drop(engine);
            let engine = Engine::open(disk.clone(), options).await.unwrap();
            assert_eq!(engine.stats().block_cache_bytes, 0, "reopened: nothing cached");
            assert!(engine.compact_all(0).await.unwrap());
            assert_eq!(engine.stats().block_cache_bytes, 0, "the output was not cached");
        });
    }

    #[test]
    fn compaction_keeps_up_while_writes_keep_flushes_coming() {
        block_on(async {
            let options = EngineOptions {
                sync: SyncMode::Periodic { interval_ms: 1000 },
                memtable_bytes_max: 4 << 10,
                ..small_options()
            };
            let engine = Engine::open(MemDisk::new(), options).await.unwrap();
            let writer = async {
                for index in 0..6000u32 {
                    engine
                        .put(key(index % 1500), Bytes::from(vec![1u8; 64]), index as u64, None)
                        .await
                        .unwrap();
                    // Requests arrive over time: let the maintenance loops run between them, as
                    // the executor would while the writer waits on its socket.
                    yield_once().await;
                }
                engine.stop_maintenance();
                Ok(())
            };
            futures_util::future::try_join(writer, engine.run_maintenance(|| 0)).await.unwrap();
            let stats = engine.stats();
            assert!(stats.flushes > 40, "{stats:?}");
            assert!(stats.compactions > 0, "compaction starved by flushes: {stats:?}");
            let limits = engine.compaction_limits();
            assert!(stats.tables <= limits.tables_max + limits.width_min, "{stats:?}");
        });
    }
}

#[cfg(test)]
mod dropped_midway {
    use super::super::testing::{key, poll_once, poll_ready, small_options};
    use super::super::*;
    use crate::disk::memory::MemDisk;
    use futures_executor::block_on;

    /// An engine holding two tables of 300 keys each, on a disk whose yield points pend once.
    fn two_tables() -> (MemDisk, Engine<MemDisk>) {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            for round in 0..2u64 {
                for index in 0..300 {
                    engine
                        .put(
                            key(index),
                            Bytes::from(vec![7u8; 32]),
                            1 + round * 1000 + u64::from(index),
                            None,
                        )
                        .await
                        .unwrap();
                }
                engine.flush().await.unwrap();
            }
            disk.yield_at_yield_points(true);
            (disk, engine)
        })
    }

    #[test]
    fn a_flush_dropped_midway_leaves_the_next_one_free_to_run() {
        let (disk, engine) = two_tables();
        block_on(engine.put(key(1), Bytes::from_static(b"newer"), 5_000, None)).unwrap();
        let mut flush = Box::pin(engine.flush());
        assert!(poll_once(&mut flush).is_pending(), "the flush pends at its first yield point");
        drop(flush);
        disk.yield_at_yield_points(false);
        let mut next = Box::pin(engine.flush());
        let done =
            poll_ready(&mut next, 1_000).expect("the next flush ran: the dropped one left no flag set");
        done.unwrap();
        drop(next);
        let mut write = Box::pin(engine.put(key(2), Bytes::from_static(b"after"), 5_001, None));
        poll_ready(&mut write, 1_000).expect("writes go on").unwrap();
    }

    #[test]
    fn a_compaction_dropped_midway_leaves_the_next_one_free_to_run() {
        let (disk, engine) = two_tables();
        let mut compaction = Box::pin(engine.compact_all(0));
        assert!(poll_once(&mut compaction).is_pending(), "the compaction pends at its first yield point");
        drop(compaction);
        disk.yield_at_yield_points(false);
        let mut next = Box::pin(engine.compact_all(0));
        let compacted = poll_ready(&mut next, 1_000).expect("the next compaction ran").unwrap();
        assert!(compacted, "the dropped compaction left the tables to compact");
        assert_eq!(engine.stats().tables, 1);
    }
}
