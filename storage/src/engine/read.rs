//! Point reads: [`Engine::get`] and [`Engine::get_entry`], which may await the disk, and
//! [`Engine::read_now`], which answers from memory or says a disk read is needed.
//!
//! A read resolves by version: the key's entry is the highest-ranking one in the memtables and
//! the tables ([`Entry::cmp_precedence`]). It goes newest first and stops as soon as every table
//! left holds only lower versions than what it found (each table knows its highest version), so
//! a key in a memtable, or in a table newer than the rest of its history, costs one lookup.
//!
//! A read is told what it found only once that is durable: a write is visible in the memtable
//! from the moment it is applied, before its group commit, so an entry read from memory may not
//! be durable yet. [`Engine::get`] waits for it; a read answered in place is lent an
//! [`Unsettled`] with it, for its caller to wait on ([`Engine::settled`]) before it answers.
//! Otherwise a reader could be shown a value that a crash then takes back, one that no writer
//! was ever told had succeeded.

use super::{validate, Engine, ReadStep, Versioned};
use crate::disk::Disk;
use crate::entry::Entry;
use crate::key::{with_stored, StoredKey};
use crate::memtable::Prefetch;
use crate::options::SyncMode;
use crate::sstable::key_hash;
use crate::Result;
use ringkv_wire::token::token;
use std::borrow::Cow;

/// What a read found in memory is not durable yet: the write that made it waits for its group
/// commit. Nobody may be told what the read found before [`Engine::settled`] resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "what a read found must be durable before anyone is told of it"]
pub struct Unsettled {
    /// The record of the write the read found.
    seq: u64,
}

/// A key's token and hashes, computed once by [`Engine::read_hash`] for a read that
/// prefetches and then reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash {
    /// `ringkv_wire::token::token` of the key: what routes it, and its stored key's prefix.
    pub token: u64,
    /// The memtable's hash of the stored key.
    pub hash: u64,
    /// The tables' filter hash of the stored key ([`key_hash`]); `None` for a write's hash, or
    /// when the engine had no tables when it was computed (see [`Engine::read_hash`]). A read
    /// given one trusts it: it must be the hash of the key read.
    pub filter: Option<u64>,
}

/// The most tables [`Engine::prefetch`] asks a filter line of for one read: the newest, which
/// a read tests first; a read that gets past them has its misses to take.
const FILTER_PREFETCH_TABLES_MAX: usize = 8;

/// What [`Engine::read_now`] lends for `entry` at `now_ms`: its live value and version.
fn lent(entry: &Entry, now_ms: u64) -> Option<(&[u8], u64)> {
    entry.data_at(now_ms).map(|data| (&data[..], entry.version))
}

/// Keeps the higher-ranking of what was found and a table's entry.
fn keep_newest<'a>(found: &mut Option<Cow<'a, Entry>>, entry: Entry) {
    if found.as_deref().is_none_or(|found| entry.supersedes(found)) {
        *found = Some(Cow::Owned(entry));
    }
}

impl<D: Disk> Engine<D> {
    /// The live value of `key` at `now_ms`, if any, once it is durable. A key outside the limits
    /// is an error.
    pub async fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Versioned>> {
        Ok(self.get_durable_entry(key).await?.and_then(|entry| {
            entry.data_at(now_ms).map(|data| Versioned { value: data.clone(), version: entry.version })
        }))
    }

    /// [`Engine::get`] without waiting, when memory holds the answer (the memtables, and cached
    /// blocks of every table that may hold a newer entry of the key): the live value and its
    /// version are lent to `read`, whose result is returned; `None` when a block must be read
    /// from disk. A server answers hot reads this way in place, encoding the reply straight from
    /// the memtable, with no task started and no reference count touched.
    ///
    /// `read` is also lent whether what it found must be waited for (see [`Unsettled`]).
    pub fn read_now<R>(
        &self,
        key: &[u8],
        now_ms: u64,
        read: impl FnOnce(Option<(&[u8], u64)>, Option<Unsettled>) -> R,
    ) -> Option<Result<R>> {
        self.entry_now_hashed(key, None, |found, unsettled| {
            read(found.and_then(|found| lent(found, now_ms)), unsettled)
        })
    }

    /// [`Engine::get_entry`] without waiting, when memory holds the answer (as
    /// [`Engine::read_now`]): the key's stored entry, tombstones and expired values included, is
    /// lent to `read`, whose result is returned; `None` when a block must be read from disk.
    /// Replicas answer hot reads and digests this way, with no task started.
    ///
    /// The entry may not be durable yet (see [`Unsettled`]): for comparing versions, not for
    /// telling a client what the key holds.
    pub fn entry_now<R>(&self, key: &[u8], read: impl FnOnce(Option<&Entry>) -> R) -> Option<Result<R>> {
        self.entry_now_hashed(key, None, |found, _| read(found))
    }

    /// The memtable hash of `key`, whose token (`ringkv_wire::token::token(key)`) the caller
    /// has computed already, for [`Engine::prefetch`] and [`Engine::entry_now_hashed`]; `None`
    /// for a key outside the limits. Pipelined reads hash a batch of keys, prefetch what each
    /// will touch, stage by stage, then read them, so the cache misses of the batch overlap.
    /// With tables to read, also the stored key's filter hash, which [`Engine::prefetch`] needs
    /// first and a read the memtable cannot answer then uses.
    pub fn read_hash(&self, key: &[u8], token: u64) -> Option<KeyHash> {
        self.hash_ahead(key, token, true)
    }

    /// [`Engine::read_hash`] for a put or delete: the memtable hash alone. A write looks its key
    /// up in the memtable, and in the tables' filters only when it may not outrank what they
    /// hold (seldom: versions rise past everything stored), so nothing of the tables is
    /// prefetched for it.
    pub fn write_hash(&self, key: &[u8], token: u64) -> Option<KeyHash> {
        self.hash_ahead(key, token, false)
    }

    fn hash_ahead(&self, key: &[u8], token: u64, for_tables: bool) -> Option<KeyHash> {
        validate(key, None).ok()?;
        let state = self.state.borrow();
        let with_tables = for_tables && !state.tables.is_empty();
        let (hash, filter) = with_stored(token, key, |stored| {
            (state.active.hash(stored), with_tables.then(|| key_hash(stored)))
        });
        Some(KeyHash { token, hash, filter })
    }

    /// Asks the processor to bring into cache what a read of the key of `hash` (from
    /// [`Engine::read_hash`]) will touch at `stage`: in the active memtable, and for a key the
    /// memtable does not hold, in the tables ([`crate::sstable::Table::prefetch`]). The first
    /// stage asks for the filter lines (and radix buckets) of the newest tables, since a filter
    /// test is a miss per table and a key that lives in an old table is tested against every
    /// newer one first; the later stages follow the first table whose filter lets the key
    /// through, down its index to its block. A hint only.
    pub fn prefetch(&self, hash: KeyHash, stage: Prefetch) {
        let state = self.state.borrow();
        state.active.prefetch(hash.hash, stage);
        let Some(filter) = hash.filter else {
            return;
        };
        let mut newest_tables = state.tables.list.iter().rev().take(FILTER_PREFETCH_TABLES_MAX);
        match stage {
            Prefetch::Group => newest_tables.for_each(|table| table.prefetch(hash.token, filter, stage)),
            Prefetch::Slot | Prefetch::Value if !state.active.may_hold(hash.hash) => {
                if let Some(table) = newest_tables.find(|table| table.filter_passes(filter)) {
                    table.prefetch(hash.token, filter, stage);
                }
            }
            Prefetch::Slot | Prefetch::Value => {}
        }
    }

    /// [`Engine::entry_now`] with the key's memtable hash, when the caller has it, lending
    /// `read` whether the entry must be waited for before anyone is told of it (see
    /// [`Unsettled`]).
    pub fn entry_now_hashed<R>(
        &self,
        key: &[u8],
        hash: Option<KeyHash>,
        read: impl FnOnce(Option<&Entry>, Option<Unsettled>) -> R,
    ) -> Option<Result<R>> {
        if let Err(error) = validate(key, None) {
            return Some(Err(error));
        }
        let key_token = hash.map_or_else(|| token(key), |hash| hash.token);
        with_stored(key_token, key, |stored| self.stored_entry_now(stored, hash, read))
    }

    /// [`Engine::entry_now_hashed`] of the stored key `key`.
    fn stored_entry_now<R>(
        &self,
        key: &[u8],
        hash: Option<KeyHash>,
        read: impl FnOnce(Option<&Entry>, Option<Unsettled>) -> R,
    ) -> Option<Result<R>> {
        let state = self.state.borrow();
        let tables = &state.tables;
        let memtable_hash = hash.map_or_else(|| state.active.hash(key), |hash| hash.hash);
        let newest = state.newest_in_memory_hashed(key, memtable_hash);
        let in_memory = newest.map(|newest| &newest.entry);
        let unsettled = newest.and_then(|newest| self.unsettled(newest.seq));
        if let Some(entry) = in_memory.filter(|entry| tables.max_version() < entry.version) {
            // The usual case: no table holds anything as new.
            return Some(Ok(read(Some(entry), unsettled)));
        }
        if in_memory.is_none() && !tables.is_empty() {
            if let Some(row) = self.rows.get(key) {
                return Some(Ok(read(Some(&row), None)));
            }
        }
        let mut found = in_memory.map(Cow::Borrowed);
        let hash = hash.and_then(|hash| hash.filter).unwrap_or_else(|| key_hash(key));
        debug_assert_eq!(hash, key_hash(key), "a read given the filter hash of another key");
        for index in (0..tables.len()).rev() {
            match tables.read_step(index, found.as_deref().map(|found| found.version)) {
                ReadStep::Stop => break,
                ReadStep::Skip => continue,
                ReadStep::Look => match tables[index].get_cached(key, hash)? {
                    Ok(None) => {}
                    Ok(Some(entry)) => keep_newest(&mut found, entry),
                    Err(error) => return Some(Err(error)),
                },
            }
        }
        if let (None, Some(found)) = (in_memory, &found) {
            // The tables' answer (no memtable entry cut the look short), and nothing was
            // awaited since the tables were looked at: the epoch is current.
            self.rows.insert(key, found, self.rows.epoch());
        }
        // A table's entry is durable: its table was synced before it was installed.
        let unsettled = unsettled.filter(|_| matches!(found, Some(Cow::Borrowed(_))));
        Some(Ok(read(found.as_deref(), unsettled)))
    }

    /// What a read that found the memtable entry of record `seq` must wait for, if anything:
    /// the record is not durable yet, and in [`SyncMode::Always`] writes are acknowledged only
    /// once durable. (In [`SyncMode::Periodic`] an acknowledged write may be lost with the last
    /// interval, so a read does not wait either.)
    pub(super) fn unsettled(&self, seq: u64) -> Option<Unsettled> {
        (matches!(self.options.sync, SyncMode::Always) && seq > self.wal.durable_seq())
            .then_some(Unsettled { seq })
    }

    /// Resolves once what a read found (see [`Unsettled`]) is durable; an error when the WAL
    /// failed first, and then it may never be: the read must not be answered with it.
    pub async fn settled(&self, read: Unsettled) -> Result<()> {
        self.acknowledge(read.seq).await
    }

    /// The key's stored entry, the highest-ranking of every memtable's and table's
    /// (tombstones and expired values included). It may not be durable yet (see
    /// [`Unsettled`]): for comparing versions; [`Engine::get_durable_entry`] for answering.
    pub async fn get_entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        validate(key, None)?;
        Ok(self.stored_entry_with_seq(&StoredKey::new(key)).await?.0)
    }

    /// [`Engine::get_entry`], resolving once the entry is durable.
    pub async fn get_durable_entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        validate(key, None)?;
        let (found, unsettled) = self.stored_entry_with_seq(&StoredKey::new(key)).await?;
        if let Some(unsettled) = unsettled {
            self.settled(unsettled).await?;
        }
        Ok(found)
    }

    /// [`Engine::get_entry`] of a stored key.
    pub(super) async fn stored_entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        Ok(self.stored_entry_with_seq(key).await?.0)
    }

    /// [`Engine::stored_entry`], with what must be waited for before anyone is told of it.
    async fn stored_entry_with_seq(&self, key: &[u8]) -> Result<(Option<Entry>, Option<Unsettled>)> {
        let (in_memory, unsettled, tables, epoch) = {
            let state = self.state.borrow();
            let newest = state.newest_in_memory(key);
            let unsettled = newest.and_then(|newest| self.unsettled(newest.seq));
            (newest.map(|newest| newest.entry.clone()), unsettled, state.tables.clone(), self.rows.epoch())
        };
        if in_memory.is_none() && !tables.is_empty() {
            if let Some(row) = self.rows.get(key) {
                return Ok((Some(row.clone()), None));
            }
        }
        let from_memory = in_memory.as_ref().map(|entry| entry.version);
        let mut found: Option<Cow<Entry>> = in_memory.map(Cow::Owned);
        // Hash once for every table's filter.
        let hash = key_hash(key);
        for index in (0..tables.len()).rev() {
            match tables.read_step(index, found.as_deref().map(|found| found.version)) {
                ReadStep::Stop => break,
                ReadStep::Skip => continue,
                ReadStep::Look => {
                    if let Some(entry) = tables[index].get_with_hash(key, hash).await? {
                        keep_newest(&mut found, entry);
                    }
                }
            }
        }
        // The memory's entry stands unless a table's outranked it (versions are unique per
        // key, so the version tells which).
        let stands = from_memory.is_some() && found.as_deref().map(|found| found.version) == from_memory;
        if let (None, Some(found)) = (from_memory, &found) {
            // With no memtable entry, every table that could hold a newer one was looked at:
            // what was found is the tables' answer, unless they changed meanwhile (the epoch).
            self.rows.insert(key, found, epoch);
        }
        Ok((found.map(Cow::into_owned), unsettled.filter(|_| stands)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, small_options, written_now};
    use super::super::*;
    use crate::disk::memory::{CrashMode, MemDisk};
    use crate::entry::Entry;
    use crate::key::StoredKey;
    use crate::memtable::Prefetch;
    use crate::options::SyncMode;
    use futures_executor::block_on;

    /// With tables, a read's hash carries the stored key's filter hash, and a read given it,
    /// prefetched at every stage first, finds what one without it finds, in the memtable, in
    /// any table, or nowhere.
    #[test]
    fn a_read_given_its_read_hash_finds_in_the_tables_what_one_without_finds() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            let hash = |key: &[u8]| engine.read_hash(key, ringkv_wire::token::token(key)).unwrap();
            let taken_before_any_table = hash(&key(1));
            assert_eq!(taken_before_any_table.filter, None, "no tables, no filter hash");
            for round in 0..3u32 {
                for index in round * 100..round * 100 + 150 {
                    engine
                        .put(key(index), Bytes::from(format!("{round}")), u64::from(round + 1), None)
                        .await
                        .unwrap();
                }
                engine.flush().await.unwrap();
            }
            engine.put(key(1_000), Bytes::from_static(b"memtable"), 9, None).await.unwrap();
            // A hash taken before the tables came still reads them (the read takes the filter
            // hash itself).
            let found = engine.entry_now_hashed(&key(1), Some(taken_before_any_table), |found, _| {
                found.map(|entry| entry.version)
            });
            assert_eq!(found.expect("cached").unwrap(), Some(1));
            let write = engine.write_hash(&key(1), ringkv_wire::token::token(&key(1))).unwrap();
            assert_eq!(
                (write.hash, write.filter),
                (hash(&key(1)).hash, None),
                "a write's hash is the memtable's alone"
            );
            // Twice: the first pass's reads note where their blocks are cached, and the second
            // pass's prefetches go there.
            for index in (0..360u32).chain([1_000]).chain(0..360) {
                let read = hash(&key(index));
                let token = ringkv_wire::token::token(&key(index));
                let expected_filter = crate::key::with_stored(token, &key(index), crate::sstable::key_hash);
                assert_eq!(read.filter, Some(expected_filter), "key {index}");
                for stage in [Prefetch::Group, Prefetch::Slot, Prefetch::Value] {
                    engine.prefetch(read, stage);
                }
                let found = |hash: Option<KeyHash>| {
                    engine
                        .entry_now_hashed(&key(index), hash, |found, _| found.map(|entry| entry.version))
                        .expect("every table's blocks are cached")
                        .unwrap()
                };
                let without = found(None);
                assert_eq!(found(Some(read)), without, "key {index}");
                // Round r wrote keys r * 100 .. r * 100 + 150 at version r + 1; the newest wins.
                let newest_round =
                    (0..3u32).rev().find(|round| (round * 100..round * 100 + 150).contains(&index));
                let expected =
                    if index == 1_000 { Some(9) } else { newest_round.map(|round| u64::from(round) + 1) };
                assert_eq!(without, expected, "key {index}");
            }
        });
    }

    #[test]
    fn the_row_cache_answers_reads_of_tables_and_stays_true_through_flushes_and_compactions() {
        block_on(async {
            let disk = MemDisk::new();
            let options =
                EngineOptions { tombstone_grace_ms: 0, row_cache_bytes: 1 << 20, ..small_options() };
            let engine = Engine::open(disk.clone(), options).await.unwrap();
            let value = |index: u32, round: u8| Bytes::from(vec![round; 20 + index as usize % 7]);
            for index in 0..300u32 {
                engine.put(key(index), value(index, 1), 1, None).await.unwrap();
            }
            engine.put(key(1000), Bytes::from_static(b"short-lived"), 1, Some(50)).await.unwrap();
            engine.flush().await.unwrap();
            async fn versions(engine: &Engine<MemDisk>, now_ms: u64) -> Vec<Option<u64>> {
                let mut found = Vec::new();
                for index in (0..300u32).chain([1000]) {
                    found.push(engine.get(&key(index), now_ms).await.unwrap().map(|found| found.version));
                }
                found
            }
            let first = versions(&engine, 0).await;
            let before = (disk.reads(), engine.stats().row_cache_hits);
            assert_eq!(versions(&engine, 0).await, first);
            assert_eq!(disk.reads(), before.0, "the second pass read nothing from the disk");
            assert!(engine.stats().row_cache_hits >= before.1 + 301, "{:?}", engine.stats());
            // In place too, with nothing awaited.
            let now =
                engine.read_now(&key(5), 0, |found, _| found.map(|(data, version)| (data.to_vec(), version)));
            assert_eq!(now.unwrap().unwrap(), Some((value(5, 1).to_vec(), 1)));

            // Overwrites and deletes reach the tables through flushes: never the rows' old answers.
            for index in 0..100u32 {
                engine.put(key(index), value(index, 2), 2, None).await.unwrap();
            }
            for index in 100..150u32 {
                engine.delete(key(index), 3, 10).await.unwrap();
            }
            engine.flush().await.unwrap();
            let expected: Vec<Option<u64>> = (0..300u32)
                .map(|index| match index {
                    0..100 => Some(2),
                    100..150 => None,
                    _ => Some(1),
                })
                .chain([Some(1)])
                .collect();
            assert_eq!(versions(&engine, 0).await, expected);
            assert_eq!(versions(&engine, 0).await, expected, "and again, from the rows");
            let entry = engine.get_entry(&key(120)).await.unwrap().expect("a tombstone");
            assert!(entry.data().is_none());

            // A compaction that purges the tombstones and the expired value changes those keys'
            // stored entries: the rows forget them.
            assert!(engine.get_entry(&key(1000)).await.unwrap().is_some());
            assert!(engine.compact_all(1_000).await.unwrap());
            assert_eq!(engine.get_entry(&key(120)).await.unwrap(), None, "the purged tombstone");
            assert_eq!(engine.get_entry(&key(1000)).await.unwrap(), None, "the purged expired value");
            let mut expected = expected;
            *expected.last_mut().unwrap() = None;
            assert_eq!(versions(&engine, 1_000).await, expected);
        });
    }

    #[test]
    fn a_read_that_began_before_a_seal_or_an_install_cannot_put_back_an_old_answer() {
        block_on(async {
            let options = EngineOptions { row_cache_bytes: 1 << 20, ..small_options() };
            let engine = Engine::open(MemDisk::new(), options).await.unwrap();
            let stored = StoredKey::new(&key(1));
            engine.put(key(1), Bytes::from_static(b"one"), 1, None).await.unwrap();
            engine.flush().await.unwrap();
            // What a read found before the key's new version was flushed...
            let began = engine.rows.epoch();
            let old = engine.get_entry(&key(1)).await.unwrap().unwrap();
            engine.rows.forget(&stored);
            engine.put(key(1), Bytes::from_static(b"two"), 2, None).await.unwrap();
            engine.flush().await.unwrap();
            // ...is refused once it comes back.
            engine.rows.insert(&stored, &old, began);
            assert_eq!(engine.get(&key(1), 0).await.unwrap().unwrap().version, 2);

            // An insert before the seal is taken back by the flush that writes the key.
            let began = engine.rows.epoch();
            engine.put(key(1), Bytes::from_static(b"three"), 3, None).await.unwrap();
            engine.rows.insert(&stored, &old, began);
            engine.flush().await.unwrap();
            assert_eq!(engine.get(&key(1), 0).await.unwrap().unwrap().version, 3);
            assert_eq!(engine.get_entry(&key(1)).await.unwrap().unwrap().version, 3);
        });
    }

    #[test]
    fn reads_its_writes_across_flush_compaction_and_reopen() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            for index in 0..2000u32 {
                let value = Bytes::from(vec![index as u8; 40]);
                engine.put(key(index), value, index as u64 + 1, None).await.unwrap();
            }
            for index in (0..2000u32).step_by(3) {
                engine.delete(key(index), 10_000 + index as u64, 5).await.unwrap();
            }
            engine.flush().await.unwrap();
            while engine.compact(100).await.unwrap() {}
            assert!(engine.stats().tables >= 1);
            let check = |engine: Engine<MemDisk>| async move {
                for index in 0..2000u32 {
                    let found = engine.get(&key(index), 0).await.unwrap();
                    if index % 3 == 0 {
                        assert_eq!(found, None, "key {index} was deleted");
                    } else {
                        let found = found.unwrap_or_else(|| panic!("key {index} missing"));
                        assert_eq!(found.version, index as u64 + 1);
                        assert_eq!(found.value, Bytes::from(vec![index as u8; 40]));
                    }
                }
                engine
            };
            let engine = check(engine).await;
            drop(engine);
            let engine = Engine::open(disk.crash(CrashMode::DropUnsynced), small_options()).await.unwrap();
            let engine = check(engine).await;
            engine.compact_all(u64::MAX / 2).await.unwrap();
            check(engine).await;
        });
    }

    /// [`Engine::read_now`], copying out what it lends, to compare with [`Engine::get`].
    fn get_now(engine: &Engine<MemDisk>, key: &[u8], now_ms: u64) -> Option<Result<Option<Versioned>>> {
        engine.read_now(key, now_ms, |found, _| {
            found.map(|(value, version)| Versioned { value: Bytes::copy_from_slice(value), version })
        })
    }

    /// The version [`Engine::read_now`] finds for `key`, and whether it must be waited for.
    fn version_now(engine: &Engine<MemDisk>, key: &[u8]) -> (Option<u64>, Option<Unsettled>) {
        engine
            .read_now(key, 0, |found, unsettled| (found.map(|(_, version)| version), unsettled))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_read_is_told_only_what_is_durable() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            engine.put(key(1), Bytes::from_static(b"one"), 1, None).await.unwrap();
            assert_eq!(version_now(&engine, &key(1)), (Some(1), None), "acknowledged, so durable");
            let pending = written_now(&engine, &key(1), |_| Entry::live(2, Bytes::from_static(b"two"), None));
            // Visible in memory at once, but not durable: a read in place must wait for it.
            let (version, unsettled) = version_now(&engine, &key(1));
            assert_eq!(version, Some(2));
            let unsettled = unsettled.expect("the write is not durable yet");
            assert!(engine.wal.durable_seq() < engine.wal.appended_seq());
            // A crash now would take it back: that is what the read must not show.
            let crashed = Engine::open(disk.crash(CrashMode::DropUnsynced), small_options()).await.unwrap();
            assert_eq!(crashed.get(&key(1), 0).await.unwrap().map(|found| found.version), Some(1));
            // Waiting makes it durable (the waiting read leads the group commit if nobody does).
            engine.settled(unsettled).await.unwrap();
            assert_eq!(engine.wal.durable_seq(), engine.wal.appended_seq());
            assert_eq!(version_now(&engine, &key(1)), (Some(2), None));
            assert_eq!(engine.acknowledged(pending).await.unwrap(), WriteOutcome::Applied { version: 2 });

            // `get` waits by itself: what it returns survives a crash straight after.
            let _pending =
                written_now(&engine, &key(2), |_| Entry::live(3, Bytes::from_static(b"three"), None));
            assert!(version_now(&engine, &key(2)).1.is_some());
            assert_eq!(engine.get(&key(2), 0).await.unwrap().map(|found| found.version), Some(3));
            let crashed = Engine::open(disk.crash(CrashMode::DropUnsynced), small_options()).await.unwrap();
            assert_eq!(crashed.get(&key(2), 0).await.unwrap().map(|found| found.version), Some(3));
            // A key read from a table is durable; so is a key nobody wrote.
            engine.flush().await.unwrap();
            assert_eq!(version_now(&engine, &key(2)), (Some(3), None));
            assert_eq!(version_now(&engine, b"absent"), (None, None));
        });
    }

    #[test]
    fn with_periodic_sync_a_read_does_not_wait() {
        block_on(async {
            let options = EngineOptions { sync: SyncMode::Periodic { interval_ms: 1000 }, ..small_options() };
            let engine = Engine::open(MemDisk::new(), options).await.unwrap();
            let _pending =
                written_now(&engine, &key(1), |_| Entry::live(1, Bytes::from_static(b"one"), None));
            // Acknowledged writes may be lost with the last interval in this mode, so a read
            // of an unsynced one is answered as its write is: at once.
            assert_eq!(version_now(&engine, &key(1)), (Some(1), None));
        });
    }

    #[test]
    fn read_now_answers_from_memory_and_defers_disk_reads() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            for index in 0..500u32 {
                engine
                    .put(key(index), Bytes::from(vec![index as u8; 40]), u64::from(index) + 1, None)
                    .await
                    .unwrap();
            }
            engine.put(key(1000), Bytes::from_static(b"short-lived"), 2000, Some(50)).await.unwrap();
            engine.delete(key(7), 3000, 0).await.unwrap();
            engine.flush().await.unwrap();
            assert!(engine.stats().tables >= 1);
            // Reopened, nothing is cached: a key some table may hold needs a disk read.
            drop(engine);
            let engine = Engine::open(disk, small_options()).await.unwrap();
            assert!(get_now(&engine, &key(3), 0).is_none(), "the block is not cached yet");
            // Keys outside every table's range are answered without a read.
            assert_eq!(get_now(&engine, b"zzz", 0).unwrap().unwrap(), None);
            for index in 0..500u32 {
                let read = engine.get(&key(index), 0).await.unwrap();
                let now =
                    get_now(&engine, &key(index), 0).expect("the block was just read and cached").unwrap();
                assert_eq!(read, now, "key {index}");
            }
            assert_eq!(get_now(&engine, &key(7), 0).unwrap().unwrap(), None, "deleted");
            engine.get(&key(1000), 0).await.unwrap();
            assert!(get_now(&engine, &key(1000), 10).unwrap().unwrap().is_some());
            assert_eq!(get_now(&engine, &key(1000), 50).unwrap().unwrap(), None, "expired");
            // A write lands in the memtable, which answers before any table.
            engine.put(key(3), Bytes::from_static(b"new"), 5000, None).await.unwrap();
            let found = get_now(&engine, &key(3), 0).unwrap().unwrap().unwrap();
            assert_eq!((found.value, found.version), (Bytes::from_static(b"new"), 5000));
        });
    }

    /// A table of `entries` written as file `id`, and its manifest record.
    async fn write_table(disk: &MemDisk, id: u64, entries: &[(Bytes, Entry)]) -> TableRecord {
        let name = manifest::table_file_name(id);
        let file = disk.create(&name).await.unwrap();
        let mut writer = TableWriter::new(file, name, 10, entries.len());
        let mut stored: Vec<_> =
            entries.iter().map(|(key, entry)| (StoredKey::new(key).to_vec(), entry)).collect();
        stored.sort_by(|left, right| left.0.cmp(&right.0));
        for (key, entry) in stored {
            writer.add(&key, entry).await.unwrap();
        }
        let summary = writer.finish().await.unwrap();
        TableRecord {
            id,
            file_bytes: summary.file_bytes,
            entry_count: summary.entry_count,
            smallest_key: summary.smallest_key,
            largest_key: summary.largest_key,
        }
    }

    #[test]
    fn reads_stop_once_every_older_table_holds_only_lower_versions() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            // Three tables: the key at version 1 in the oldest, at 5 in the middle one, and a
            // newest table of other keys with versions up to 9.
            engine.put(key(1), Bytes::from_static(b"one"), 1, None).await.unwrap();
            engine.put(key(2), Bytes::from_static(b"other"), 1, None).await.unwrap();
            engine.flush().await.unwrap();
            engine.put(key(1), Bytes::from_static(b"five"), 5, None).await.unwrap();
            engine.flush().await.unwrap();
            engine.put(key(0), Bytes::from_static(b"low"), 8, None).await.unwrap();
            engine.put(key(3), Bytes::from_static(b"high"), 9, None).await.unwrap();
            engine.flush().await.unwrap();
            drop(engine);
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            assert_eq!(engine.stats().tables, 3);

            // Cold: the newest table is passed over by its filter or read for nothing; the
            // middle one answers with 5, and the oldest (highest version 1) is never read.
            let before = disk.reads();
            assert_eq!(engine.get(&key(1), 0).await.unwrap().unwrap().version, 5);
            let reads = disk.reads() - before;
            assert!((1..=2).contains(&reads), "{reads} reads");
            // Warm: read_now answers although the oldest table's block is not cached.
            assert_eq!(get_now(&engine, &key(1), 0).unwrap().unwrap().unwrap().version, 5);

            // A key in the memtable above every table's versions: no disk read at all.
            engine.put(key(1), Bytes::from_static(b"ten"), 10, None).await.unwrap();
            let before = disk.reads();
            assert_eq!(engine.get(&key(1), 0).await.unwrap().unwrap().version, 10);
            assert_eq!(disk.reads(), before);
        });
    }

    #[test]
    fn a_higher_version_in_an_older_table_wins_everywhere() {
        block_on(async {
            // Written by hand, since the write path never stores a lower version above a higher
            // one: the oldest table holds the key at version 9, the newest at version 3.
            let disk = MemDisk::new();
            let k = key(1);
            let old =
                write_table(&disk, 1, &[(k.clone(), Entry::live(9, Bytes::from_static(b"nine"), None))])
                    .await;
            let new = write_table(
                &disk,
                2,
                &[
                    (k.clone(), Entry::live(3, Bytes::from_static(b"three"), None)),
                    (key(2), Entry::live(4, Bytes::from_static(b"four"), None)),
                ],
            )
            .await;
            let manifest = Manifest { flushed_seq: 0, next_file_number: 3, tables: vec![old, new] };
            manifest.write(&disk).await.unwrap();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();

            let nine = Versioned { value: Bytes::from_static(b"nine"), version: 9 };
            assert_eq!(engine.get(&k, 0).await.unwrap(), Some(nine.clone()));
            assert_eq!(get_now(&engine, &k, 0).unwrap().unwrap(), Some(nine.clone()));
            let page = engine.scan(&ScanRange::all(), 10, 0, false).await.unwrap();
            let scanned = page.entries.iter().find(|entry| entry.key == k).unwrap();
            assert_eq!(scanned.entry, Entry::live(9, Bytes::from_static(b"nine"), None));
            // A write below the stored version is refused, though only a table holds it.
            let outcome = engine.put(k.clone(), Bytes::from_static(b"five"), 5, None).await.unwrap();
            assert_eq!(outcome, WriteOutcome::Superseded { version: 5, current_version: 9 });
            // Compaction keeps the highest version too.
            assert!(engine.compact_all(0).await.unwrap());
            assert_eq!(engine.get(&k, 0).await.unwrap(), Some(nine));
        });
    }
}
