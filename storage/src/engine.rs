//! The engine: one shard's LSM tree, put together from the WAL, memtables, SSTables, the
//! manifest and the compaction planner.
//!
//! Writes are appended to the WAL buffer and applied to the active memtable in one synchronous
//! step (so a shard's writes are totally ordered and CAS is atomic), then wait for the group
//! commit that makes them durable. A write is visible to readers on this shard as soon as it is
//! applied, before its sync; it is acknowledged to its caller only after the sync. A full active
//! memtable is sealed and flushed to an SSTable by [`Engine::run_maintenance`] (or, if no
//! maintenance task keeps up, by the stalled writer itself).
//!
//! Failures split in two: a bad key or value is the caller's error and changes nothing; a failed
//! write, sync, flush or compaction poisons the engine, which then refuses every write and says
//! why, while reads of what is already there go on.

use crate::block_cache::BlockCache;
use crate::compaction::{self, Choice, CompactionLimits, TableSize};
use crate::disk::Disk;
use crate::entry::{Entry, Value};
use crate::manifest::{self, Manifest, TableRecord};
use crate::memtable::Memtable;
use crate::options::{EngineOptions, SyncMode};
use crate::sstable::{key_hash, Table, TableWriter};
use crate::wal::reader::scan_segment;
use crate::wal::writer::{SegmentInfo, WalWriter};
use crate::wal::{parse_segment_file_name, segment_file_name};
use crate::{DiskFile, Result, StorageError, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use bytes::Bytes;
use event_listener::Event;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;

/// Entries merged by compaction between two cooperative yields.
const COMPACTION_ENTRIES_PER_YIELD: usize = 256;

/// A live value and its version, as a read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The version the value was written with.
    pub version: u64,
}

/// What a compare-and-swap expects the key to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// The key must be absent (never written, deleted, or expired).
    Absent,
    /// The key's live value must carry exactly this version.
    Version(u64),
}

/// The result of a compare-and-swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The expectation held and the new value is written.
    Swapped,
    /// It did not; nothing was written. `current_version` is the live value's version, if any.
    Mismatch { current_version: Option<u64> },
}

/// One page of an ordered range scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Entries in ascending key order.
    pub entries: Vec<(Bytes, Entry)>,
    /// When set, more entries may follow: the next page starts at this key (inclusive).
    pub next_start: Option<Bytes>,
}

/// What recovery found when the engine opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// WAL records replayed into the memtable.
    pub records_replayed: u64,
    /// Bytes of torn WAL tails dropped (writes never acknowledged).
    pub torn_tail_bytes: u64,
    /// SSTables opened.
    pub tables_opened: usize,
    /// Files left over by an interrupted flush or compaction, removed.
    pub orphans_removed: usize,
}

/// Counters for write amplification and activity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Key and value bytes written by callers.
    pub user_bytes: u64,
    /// Bytes written to the WAL, padding included.
    pub wal_bytes: u64,
    /// Bytes written by flushes.
    pub flush_bytes: u64,
    /// Bytes written by compactions.
    pub compaction_bytes: u64,
    /// Flushes run.
    pub flushes: u64,
    /// Compactions run.
    pub compactions: u64,
    /// Tables now live.
    pub tables: usize,
    /// Bytes of live tables.
    pub table_bytes: u64,
    /// Bytes held by the memtables.
    pub memtable_bytes: usize,
    /// Bytes held by the block cache.
    pub block_cache_bytes: usize,
}

struct State<F: DiskFile> {
    next_seq: u64,
    active: Memtable,
    sealed: Option<Rc<Memtable>>,
    /// Tables, oldest first (the manifest's order).
    tables: Rc<Vec<Rc<Table<F>>>>,
    manifest: Manifest,
    flushing: bool,
    compacting: bool,
    /// Bumped whenever a memtable's entries move into a table, so a CAS that read from disk
    /// knows to look again.
    flush_generation: u64,
    failure: Option<String>,
    closed: bool,
}

/// A storage engine over one [`Disk`]. Single-threaded; share it with `Rc`.
pub struct Engine<D: Disk> {
    disk: Rc<D>,
    options: EngineOptions,
    wal: WalWriter<D>,
    cache: Rc<BlockCache>,
    next_file_number: Rc<Cell<u64>>,
    state: RefCell<State<D::File>>,
    /// Notified when a flush or compaction ends.
    structure_changed: Event,
    /// Wakes the maintenance task.
    work: Event,
    stopping: Cell<bool>,
    /// Serialises manifest rewrites between flushes and compactions.
    manifest_busy: Cell<bool>,
    stats: RefCell<EngineStats>,
    recovery: RecoveryReport,
}

fn io_error<'a>(op: &'static str, file: &'a str) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |error| StorageError::io(op, file, error)
}

/// True when no key lies between `start` and `end`.
/// What [`Engine::read_now`] lends for `entry` at `now_ms`: its live value and version.
fn lent(entry: &Entry, now_ms: u64) -> Option<(&[u8], u64)> {
    entry.data_at(now_ms).map(|data| (&data[..], entry.version))
}

fn range_is_empty(start: &Bound<Bytes>, end: &Bound<Bytes>) -> bool {
    match (start, end) {
        (Bound::Included(start), Bound::Included(end)) => start > end,
        (Bound::Included(start) | Bound::Excluded(start), Bound::Included(end) | Bound::Excluded(end)) => {
            start >= end
        }
        _ => false,
    }
}

fn validate(key: &[u8], value: Option<&Bytes>) -> Result<()> {
    if key.is_empty() {
        return Err(StorageError::KeyEmpty);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(StorageError::KeyTooLong { len: key.len() });
    }
    match value {
        Some(value) if value.len() > VALUE_BYTES_MAX => Err(StorageError::ValueTooLarge { len: value.len() }),
        _ => Ok(()),
    }
}

impl<D: Disk> Engine<D> {
    /// Opens the engine on `disk`, recovering what is there: tables from the manifest, then the
    /// WAL replayed into the memtable (a torn tail is dropped and counted; damage followed by
    /// valid records is an error).
    pub async fn open(disk: D, options: EngineOptions) -> Result<Self> {
        let disk = Rc::new(disk);
        let names = disk.list().await.map_err(io_error("list", "."))?;
        let mut manifest = Manifest::read(disk.as_ref()).await?.unwrap_or_default();
        let mut recovery = RecoveryReport::default();

        let highest_number = names
            .iter()
            .filter_map(|name| {
                manifest::parse_table_file_name(name).or_else(|| parse_segment_file_name(name))
            })
            .max()
            .unwrap_or(0);
        let next_file_number = Rc::new(Cell::new(manifest.next_file_number.max(highest_number + 1).max(1)));

        for name in &names {
            let orphan_table = manifest::parse_table_file_name(name)
                .is_some_and(|id| !manifest.tables.iter().any(|table| table.id == id));
            if orphan_table || name == manifest::MANIFEST_TEMPORARY_FILE {
                tracing::warn!(file = %name, "removing a file left by an interrupted flush or compaction");
                disk.remove(name).await.map_err(io_error("remove", name))?;
                recovery.orphans_removed += 1;
            }
        }

        let cache = Rc::new(BlockCache::new(options.block_cache_bytes));
        let mut tables = Vec::with_capacity(manifest.tables.len());
        for record in &manifest.tables {
            let name = manifest::table_file_name(record.id);
            let file = disk.open(&name).await.map_err(io_error("open", &name))?;
            tables.push(Rc::new(Table::open(file, name, record.id, cache.clone()).await?));
        }
        recovery.tables_opened = tables.len();

        let (active, closed, last_seq) =
            Self::replay_wal(disk.as_ref(), &names, &manifest, options.memtable_hash_seed, &mut recovery)
                .await?;
        let wal = WalWriter::create(
            disk.clone(),
            next_file_number.clone(),
            options.wal_segment_bytes_max,
            closed,
            last_seq,
        )
        .await?;
        manifest.next_file_number = next_file_number.get();
        manifest.write(disk.as_ref()).await?;
        if recovery.torn_tail_bytes > 0 {
            tracing::warn!(
                bytes = recovery.torn_tail_bytes,
                "dropped a torn WAL tail (writes never acknowledged)"
            );
        }
        tracing::info!(
            tables = recovery.tables_opened,
            records = recovery.records_replayed,
            last_seq,
            "storage engine opened"
        );
        let state = State {
            next_seq: last_seq + 1,
            active,
            sealed: None,
            tables: Rc::new(tables),
            manifest,
            flushing: false,
            compacting: false,
            flush_generation: 0,
            failure: None,
            closed: false,
        };
        let engine = Engine {
            disk,
            options,
            wal,
            cache,
            next_file_number,
            state: RefCell::new(state),
            structure_changed: Event::new(),
            work: Event::new(),
            stopping: Cell::new(false),
            manifest_busy: Cell::new(false),
            stats: RefCell::new(EngineStats::default()),
            recovery,
        };
        engine.seal_if_full(&mut engine.state.borrow_mut());
        Ok(engine)
    }

    async fn replay_wal(
        disk: &D,
        names: &[String],
        manifest: &Manifest,
        memtable_hash_seed: u64,
        recovery: &mut RecoveryReport,
    ) -> Result<(Memtable, Vec<SegmentInfo>, u64)> {
        let mut numbers: Vec<u64> = names.iter().filter_map(|name| parse_segment_file_name(name)).collect();
        numbers.sort_unstable();
        let mut active = Memtable::with_hash_seed(memtable_hash_seed);
        let mut closed = Vec::new();
        let mut last_seq = manifest.flushed_seq;
        let mut expected_seq: Option<u64> = None;
        for number in numbers {
            let name = segment_file_name(number);
            let file = disk.open(&name).await.map_err(io_error("open", &name))?;
            let size = file.size().await.map_err(io_error("size", &name))?;
            let buffer = file.read_at(0, size as usize).await.map_err(io_error("read", &name))?;
            let scan = scan_segment(&name, &buffer, expected_seq)?;
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
            for record in &scan.records {
                segment_last = record.seq;
                expected_seq = Some(record.seq + 1);
                if record.seq <= manifest.flushed_seq {
                    continue;
                }
                let payload = &buffer[record.payload.clone()];
                let (key, entry, used) = Entry::decode(&Bytes::copy_from_slice(payload), 0)
                    .map_err(|reason| StorageError::corruption(&name, record.payload.start as u64, reason))?;
                if used != payload.len() {
                    return Err(StorageError::corruption(
                        &name,
                        record.payload.start as u64,
                        "trailing record bytes",
                    ));
                }
                active.insert(&key, record.seq, entry);
                recovery.records_replayed += 1;
                last_seq = last_seq.max(record.seq);
            }
            closed.push(SegmentInfo { number, last_seq: segment_last });
        }
        Ok((active, closed, last_seq))
    }

    /// What recovery found when the engine was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The options the engine runs with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

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

    /// The live value of `key` at `now_ms`, if any.
    pub async fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Versioned>> {
        Ok(self.get_entry(key).await?.and_then(|entry| {
            entry.data_at(now_ms).map(|data| Versioned { value: data.clone(), version: entry.version })
        }))
    }

    /// [`Engine::get`] without waiting, when memory holds the answer (a memtable, or cached
    /// blocks of every table that may hold the key): the live value and its version are lent to
    /// `read`, whose result is returned; `None` when a block must be read from disk. A server
    /// answers hot reads this way in place, encoding the reply straight from the memtable, with
    /// no task started and no reference count touched.
    pub fn read_now<R>(
        &self,
        key: &[u8],
        now_ms: u64,
        read: impl FnOnce(Option<(&[u8], u64)>) -> R,
    ) -> Option<Result<R>> {
        let state = self.state.borrow();
        let in_memtable =
            state.active.get(key).or_else(|| state.sealed.as_ref().and_then(|sealed| sealed.get(key)));
        if let Some(found) = in_memtable {
            return Some(Ok(read(lent(&found.entry, now_ms))));
        }
        let hash = key_hash(key);
        for table in state.tables.iter().rev() {
            match table.get_cached(key, hash)? {
                Ok(None) => continue,
                Ok(Some(entry)) => return Some(Ok(read(lent(&entry, now_ms)))),
                Err(error) => return Some(Err(error)),
            }
        }
        Some(Ok(read(None)))
    }

    /// The newest stored entry for `key`, tombstones and expired values included.
    pub async fn get_entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        let tables = {
            let state = self.state.borrow();
            if let Some(found) = state.active.get(key) {
                return Ok(Some(found.entry.clone()));
            }
            if let Some(found) = state.sealed.as_ref().and_then(|sealed| sealed.get(key)) {
                return Ok(Some(found.entry.clone()));
            }
            state.tables.clone()
        };
        // Hash once for every table's filter.
        let hash = key_hash(key);
        for table in tables.iter().rev() {
            if let Some(entry) = table.get_with_hash(key, hash).await? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// One page of the entries with keys in `(start, end)`, ascending, at most `limit` of them.
    /// Dead entries (tombstones, expired values at `now_ms`) are skipped unless `include_dead`,
    /// which replication uses to stream deletes.
    pub async fn scan(
        &self,
        start: Bound<Bytes>,
        end: Bound<Bytes>,
        limit: usize,
        now_ms: u64,
        include_dead: bool,
    ) -> Result<ScanPage> {
        assert!(limit > 0, "a scan page holds at least one entry");
        if range_is_empty(&start, &end) {
            return Ok(ScanPage::default());
        }
        fn as_slice(bound: &Bound<Bytes>) -> Bound<&[u8]> {
            bound.as_ref().map(|key| &key[..])
        }
        let in_end = |key: &[u8]| match &end {
            Bound::Included(end) => key <= &end[..],
            Bound::Excluded(end) => key < &end[..],
            Bound::Unbounded => true,
        };
        // Every source contributes at most `limit` entries (dead ones included, since they hide
        // older values); the page is complete only up to the smallest last key of a source that
        // was cut short.
        let mut merged: BTreeMap<Bytes, Entry> = BTreeMap::new();
        let mut complete_through: Option<Bytes> = None;
        let cut_at = |key: &[u8], complete_through: &mut Option<Bytes>| {
            if complete_through.as_ref().is_none_or(|through| key < &through[..]) {
                *complete_through = Some(Bytes::copy_from_slice(key));
            }
        };
        let tables = {
            let state = self.state.borrow();
            let memtables = std::iter::once(&state.active).chain(state.sealed.as_deref());
            for memtable in memtables {
                for (taken, (key, mem_entry)) in memtable.range(as_slice(&start), as_slice(&end)).enumerate()
                {
                    if taken == limit {
                        cut_at(key, &mut complete_through);
                        break;
                    }
                    merged.entry(Bytes::copy_from_slice(key)).or_insert_with(|| mem_entry.entry.clone());
                }
            }
            state.tables.clone()
        };
        for table in tables.iter().rev() {
            let seek = match &start {
                Bound::Included(key) | Bound::Excluded(key) => Some(&key[..]),
                Bound::Unbounded => None,
            };
            let mut iter = table.iter(seek, true);
            let mut taken = 0;
            while let Some((key, entry)) = iter.next().await? {
                if matches!(&start, Bound::Excluded(excluded) if key == excluded) {
                    continue;
                }
                if !in_end(&key) {
                    break;
                }
                if taken == limit {
                    cut_at(&key, &mut complete_through);
                    break;
                }
                merged.entry(key).or_insert(entry);
                taken += 1;
            }
        }
        let mut page = ScanPage::default();
        for (key, entry) in merged {
            if complete_through.as_ref().is_some_and(|through| key >= *through) {
                break;
            }
            if !include_dead && entry.is_absent_at(now_ms) {
                continue;
            }
            if page.entries.len() == limit {
                break;
            }
            page.entries.push((key, entry));
        }
        page.next_start = match page.entries.last() {
            // A full page: continue just after its last key (`key ++ 0x00` is the next key in
            // byte order).
            Some((last, _)) if page.entries.len() == limit => {
                let mut next = Vec::with_capacity(last.len() + 1);
                next.extend_from_slice(last);
                next.push(0);
                Some(Bytes::from(next))
            }
            // A source was cut short: everything below its first unread key has been seen.
            _ => complete_through,
        }
        .filter(|next| !range_is_empty(&Bound::Included(next.clone()), &end));
        Ok(page)
    }

    /// Makes every write appended so far durable.
    pub async fn sync(&self) -> Result<()> {
        self.wal.sync().await
    }

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
                    let fresh = state.active.empty_like();
                    let active = std::mem::replace(&mut state.active, fresh);
                    state.sealed = Some(Rc::new(active));
                }
            }
            self.flush_sealed().await?;
        }
    }

    /// Runs one compaction if the planner asks for one. Returns whether it did.
    pub async fn compact(&self, now_ms: u64) -> Result<bool> {
        let limits = self.compaction_limits();
        self.run_compaction(|tables| compaction::choose(tables, &limits), now_ms).await
    }

    /// Merges every table into one, dropping dead entries past their grace period.
    pub async fn compact_all(&self, now_ms: u64) -> Result<bool> {
        self.run_compaction(compaction::choose_all, now_ms).await
    }

    /// Flushes sealed memtables and runs compactions as they become due, until
    /// [`Engine::stop_maintenance`]. Run it on a low-priority task queue; `now_ms` is the clock
    /// (the engine has none). Returns the error that poisoned the engine, if one did.
    ///
    /// Flushes and compactions are two loops that interleave at their awaits: a long compaction
    /// never holds up a flush (which would stall writers), and a steady stream of flushes never
    /// starves compaction (which would let the table count, and so read cost, grow without bound).
    pub async fn run_maintenance(&self, now_ms: impl Fn() -> u64) -> Result<()> {
        futures_util::future::try_join(self.run_flushes(), self.run_compactions(now_ms))
            .await
            .map(|((), ())| ())
    }

    /// The flush half of [`Engine::run_maintenance`]: flushes each sealed memtable, until stopped.
    /// Writers stall while a sealed memtable waits, so run it at normal priority.
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

    /// Asks [`Engine::run_maintenance`] to return after the step it is in.
    pub fn stop_maintenance(&self) {
        self.stopping.set(true);
        self.work.notify(usize::MAX);
    }

    /// Stops maintenance, makes every write durable and refuses further writes.
    pub async fn close(&self) -> Result<()> {
        self.stop_maintenance();
        let synced = self.wal.sync().await;
        self.state.borrow_mut().closed = true;
        synced
    }

    /// Counters since open.
    pub fn stats(&self) -> EngineStats {
        let state = self.state.borrow();
        let mut stats = self.stats.borrow().clone();
        stats.wal_bytes = self.wal.bytes_written();
        stats.tables = state.tables.len();
        stats.table_bytes = state.tables.iter().map(|table| table.file_bytes()).sum();
        stats.memtable_bytes = state.active.approximate_bytes()
            + state.sealed.as_ref().map_or(0, |sealed| sealed.approximate_bytes());
        stats.block_cache_bytes = self.cache.used_bytes();
        stats
    }

    /// The reason writes are refused, if they are.
    pub fn failure(&self) -> Option<String> {
        self.state.borrow().failure.clone().or_else(|| self.wal.failure())
    }

    fn check_writable(&self, state: &State<D::File>) -> Result<()> {
        if state.closed {
            return Err(StorageError::Closed);
        }
        match state.failure.clone().or_else(|| self.wal.failure()) {
            Some(reason) => Err(StorageError::Poisoned { reason }),
            None => Ok(()),
        }
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

    fn seal_if_full(&self, state: &mut State<D::File>) {
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

    /// Writes the sealed memtable to a new table and installs it.
    async fn flush_sealed(&self) -> Result<()> {
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
        let outcome = self.flush_memtable(&sealed).await;
        let mut state = self.state.borrow_mut();
        state.flushing = false;
        if let Err(error) = &outcome {
            self.poison(&mut state, "flush", error);
        }
        drop(state);
        self.structure_changed.notify(usize::MAX);
        outcome
    }

    async fn flush_memtable(&self, sealed: &Memtable) -> Result<()> {
        let table = if sealed.is_empty() {
            None
        } else {
            let id = self.allocate_file_number();
            let name = manifest::table_file_name(id);
            let file = self.disk.create(&name).await.map_err(io_error("create", &name))?;
            let mut writer =
                TableWriter::new(file, name.clone(), self.options.bloom_bits_per_key, sealed.len());
            for (index, (key, mem_entry)) in sealed.iter().enumerate() {
                writer.add(key, &mem_entry.entry).await?;
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
        for name in self.wal.take_obsolete(flushed_seq) {
            self.disk.remove(&name).await.map_err(io_error("remove", &name))?;
        }
        self.stats.borrow_mut().flushes += 1;
        tracing::debug!(flushed_seq, "memtable flushed");
        Ok(())
    }

    /// Applies a structural change to the table list: computes the new manifest from the current
    /// one, makes it durable, then swaps in the new list. Changes are serialised, so each one
    /// starts from the result of the previous.
    async fn install(&self, change: impl FnOnce(&mut Vec<Rc<Table<D::File>>>, &mut Manifest)) -> Result<()> {
        while self.manifest_busy.get() {
            let listener = self.structure_changed.listen();
            if !self.manifest_busy.get() {
                break;
            }
            listener.await;
        }
        self.manifest_busy.set(true);
        let (mut tables, mut manifest) = {
            let state = self.state.borrow();
            (state.tables.as_ref().clone(), state.manifest.clone())
        };
        manifest.next_file_number = self.next_file_number.get();
        change(&mut tables, &mut manifest);
        let written = manifest.write(self.disk.as_ref()).await;
        if written.is_ok() {
            let mut state = self.state.borrow_mut();
            state.tables = Rc::new(tables);
            state.manifest = manifest;
        }
        self.manifest_busy.set(false);
        self.structure_changed.notify(usize::MAX);
        written
    }

    /// Finishes a new table (its data synced), makes its name durable, and opens it for reads.
    /// Returns the table and its manifest record, ready to install.
    async fn seal_table(
        &self,
        writer: TableWriter<D::File>,
        name: String,
        id: u64,
    ) -> Result<(Rc<Table<D::File>>, TableRecord)> {
        let summary = writer.finish().await?;
        self.disk.sync_dir().await.map_err(io_error("fsync directory after creating", &name))?;
        let file = self.disk.open(&name).await.map_err(io_error("open", &name))?;
        let table = Rc::new(Table::open(file, name, id, self.cache.clone()).await?);
        let record = TableRecord {
            id,
            file_bytes: summary.file_bytes,
            entry_count: summary.entry_count,
            smallest_key: summary.smallest_key,
            largest_key: summary.largest_key,
        };
        Ok((table, record))
    }

    fn allocate_file_number(&self) -> u64 {
        let number = self.next_file_number.get();
        self.next_file_number.set(number + 1);
        number
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
        let outcome = self.merge_tables(&inputs, choice.purge_dead, now_ms).await;
        let mut state = self.state.borrow_mut();
        state.compacting = false;
        if let Err(error) = &outcome {
            self.poison(&mut state, "compaction", error);
        }
        drop(state);
        self.structure_changed.notify(usize::MAX);
        outcome.map(|()| true)
    }

    async fn merge_tables(&self, inputs: &[Rc<Table<D::File>>], purge_dead: bool, now_ms: u64) -> Result<()> {
        let id = self.allocate_file_number();
        let name = manifest::table_file_name(id);
        let file = self.disk.create(&name).await.map_err(io_error("create", &name))?;
        let expected_keys = inputs.iter().map(|table| table.entry_count() as usize).sum();
        let mut writer = TableWriter::new(file, name.clone(), self.options.bloom_bits_per_key, expected_keys);
        let mut iterators: Vec<_> = inputs.iter().map(|table| table.iter(None, false)).collect();
        let mut heads = Vec::with_capacity(iterators.len());
        for iterator in &mut iterators {
            heads.push(iterator.next().await?);
        }
        let grace = self.options.tombstone_grace_ms;
        let mut merged = 0usize;
        loop {
            // The smallest key among the heads; on ties the newest table (highest index) wins.
            let mut winner: Option<usize> = None;
            for (index, head) in heads.iter().enumerate() {
                if let Some((key, _)) = head {
                    match winner.and_then(|w| heads[w].as_ref()) {
                        Some((best, _)) if key > best => {}
                        _ => winner = Some(index),
                    }
                }
            }
            let Some(winner) = winner else { break };
            let (key, entry) = heads[winner].clone().expect("winner has a head");
            for index in 0..heads.len() {
                if heads[index].as_ref().is_some_and(|(other, _)| *other == key) {
                    heads[index] = iterators[index].next().await?;
                }
            }
            let entry = match entry.dead_since_ms(now_ms) {
                Some(since) if purge_dead && since.saturating_add(grace) <= now_ms => continue,
                // An expired value still hides older versions in tables outside this merge.
                Some(since) if !purge_dead && matches!(entry.value, Value::Live { .. }) => {
                    Entry::tombstone(entry.version, since)
                }
                _ => entry,
            };
            writer.add(&key, &entry).await?;
            merged += 1;
            if merged.is_multiple_of(COMPACTION_ENTRIES_PER_YIELD) {
                self.disk.yield_point().await;
            }
        }
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
        for table in inputs {
            self.disk.remove(table.file_name()).await.map_err(io_error("remove", table.file_name()))?;
        }
        self.stats.borrow_mut().compactions += 1;
        Ok(())
    }

    fn poison(&self, state: &mut State<D::File>, during: &str, error: &StorageError) {
        tracing::error!(%error, during, "storage engine poisoned; writes are refused from now on");
        state.failure.get_or_insert_with(|| format!("{during} failed: {error}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::{CrashMode, MemDisk};
    use crate::wal::writer::yield_once;
    use futures_executor::block_on;

    fn small_options() -> EngineOptions {
        EngineOptions { memtable_bytes_max: 16 << 10, block_cache_bytes: 1 << 20, ..EngineOptions::default() }
    }

    fn key(index: u32) -> Bytes {
        Bytes::from(format!("key{index:06}"))
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
        engine.read_now(key, now_ms, |found| {
            found.map(|(value, version)| Versioned { value: Bytes::copy_from_slice(value), version })
        })
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
    fn scan_pages_through_everything_in_order() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            for index in 0..500u32 {
                engine.put(key(index), Bytes::from_static(b"value"), 1, None).await.unwrap();
                if index % 7 == 0 {
                    engine.delete(key(index), 2, 0).await.unwrap();
                }
            }
            let mut seen = Vec::new();
            let mut start = Bound::Included(key(10));
            loop {
                let page = engine.scan(start, Bound::Excluded(key(400)), 13, 0, false).await.unwrap();
                seen.extend(page.entries.into_iter().map(|(k, _)| k));
                match page.next_start {
                    Some(next) => start = Bound::Included(next),
                    None => break,
                }
            }
            let expected: Vec<Bytes> = (10..400u32).filter(|i| i % 7 != 0).map(key).collect();
            assert_eq!(seen, expected);
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
