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
//! The highest version wins, whatever the arrival order ([`crate::Entry::cmp_precedence`]): a write is
//! applied only if it outranks every entry stored for its key, and a late, repeated or
//! reordered one changes nothing and appends nothing. Reads resolve by version too, not by
//! table age: a point read goes newest first and stops once every table left holds only lower
//! versions (each table records its highest, Cassandra's trick), so the usual read is still one
//! lookup. Because a write is stored only when it outranks what is there, a key's versions also
//! rise with table age, which keeps compaction's purge of old tombstones safe.
//!
//! Failures split in two: a bad key or value is the caller's error and changes nothing; a failed
//! write, sync, flush or compaction poisons the engine, which then refuses every write and says
//! why, while reads of what is already there go on.
//!
//! This file holds the engine's types, its state, opening, and the structural changes that
//! flushes and compactions share (installing tables in the manifest). Each job has its own file:
//! - `write`: puts, deletes, compare-and-swap, the write stall and the group-commit acknowledgement;
//! - `read`: point reads, awaiting the disk or answered from memory (`read_now`);
//! - `scan`: paged range scans;
//! - `flush`: sealed memtables to tables;
//! - `compaction`: running the merges the planner ([`crate::compaction`]) chooses;
//! - `recovery`: WAL replay at open.

mod compaction;
mod flush;
mod read;
pub use read::{KeyHash, Unsettled};
mod recovery;
mod scan;
mod write;

pub use scan::{ScanEntry, ScanPage, ScanRange};
pub use write::PendingWrite;

use crate::block_cache::BlockCache;
use crate::disk::Disk;
use crate::manifest::{self, Manifest, TableRecord};
use crate::memtable::{MemEntry, Memtable};
use crate::options::EngineOptions;
use crate::row_cache::RowCache;
use crate::sstable::{Table, TableWriter};
use crate::wal::parse_segment_file_name;
use crate::wal::writer::WalWriter;
use crate::{DiskFile, Result, StorageError, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use bytes::Bytes;
use event_listener::Event;
use std::cell::{Cell, RefCell};
use std::ops::Deref;
use std::rc::Rc;

/// Entries a flush or a compaction writes between two cooperative yields.
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
    /// The expectation held and the new entry, of `version`, is written.
    Swapped { version: u64 },
    /// It did not; nothing was written. `current_version` is the live value's version, if any.
    Mismatch { current_version: Option<u64> },
    /// The expectation held, but the key's stored entry (live or dead), of `current_version`,
    /// ranks at or above the new one, so writing it would change nothing: nothing was written.
    /// Only a caller choosing versions itself meets this; an entry made above the version
    /// [`Engine::compare_and_swap_with`] passes to its closure never does.
    Stale { current_version: u64 },
}

/// What became of an atomic write of several keys ([`Engine::write_atomically_with`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtomicOutcome {
    /// Every entry was applied, as one WAL record; their versions, in the keys' order.
    Applied { versions: Vec<u64> },
    /// Only-if-absent was asked and the key at this index has a live value: nothing was written.
    Present { index: usize },
    /// The entry made for the key at this index does not outrank the key's stored entry, of
    /// `current_version`: nothing was written. An entry made above the version passed to the
    /// closure never meets this.
    Stale { index: usize, current_version: u64 },
}

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The entry, of `version`, is the key's state now.
    Applied { version: u64 },
    /// An entry stored for the key, of `current_version`, ranks at or above this one (a higher
    /// version, or the same write seen again): nothing was written or appended.
    Superseded { version: u64, current_version: u64 },
}

impl WriteOutcome {
    /// The version of the entry written (or not).
    pub fn version(&self) -> u64 {
        match *self {
            WriteOutcome::Applied { version } | WriteOutcome::Superseded { version, .. } => version,
        }
    }

    /// Whether the entry became the key's state.
    pub fn is_applied(&self) -> bool {
        matches!(self, WriteOutcome::Applied { .. })
    }
}

/// What recovery found when the engine opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// WAL records replayed into the memtable.
    pub records_replayed: u64,
    /// The log they took, in whole blocks as the log advances: it counts toward the replayed
    /// memtable's share of the log ([`EngineOptions::wal_bytes_max`]), so that an engine
    /// reopened again and again still flushes.
    pub bytes_replayed: u64,
    /// Bytes of torn WAL tails dropped (writes never acknowledged).
    pub torn_tail_bytes: u64,
    /// SSTables opened.
    pub tables_opened: usize,
    /// Files left over by an interrupted flush or compaction, removed.
    pub orphans_removed: usize,
    /// Tables the manifest lists that were missing and left out
    /// ([`EngineOptions::missing_tables_allowed`]).
    pub tables_missing: usize,
    /// Whether the directory held no manifest: nothing was ever opened here, or everything was
    /// lost (see [`Engine::mark_rebuilding`]).
    pub fresh: bool,
    /// Whether the engine holds less than it acknowledged: tables went missing at this open or
    /// an earlier one, and [`Engine::rebuilt`] has not been called since ([`REBUILDING_FILE`]).
    pub rebuilding: bool,
}

/// The file whose presence says an engine lost tables and its data has not been restored since
/// (by replication: anti-entropy from the other replicas). It is made durable before the
/// manifest that forgets the missing tables, so a restart before the restore still knows.
pub const REBUILDING_FILE: &str = "REBUILDING";

/// Creates [`REBUILDING_FILE`] and syncs the directory, so the mark outlives a power loss.
async fn write_rebuilding_mark<D: Disk>(disk: &D) -> Result<()> {
    disk.create(REBUILDING_FILE).await.map_err(io_error("create", REBUILDING_FILE))?;
    disk.sync_dir().await.map_err(io_error("sync directory", "."))
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
    /// Memtables sealed before they were full because they stood for
    /// [`EngineOptions::wal_bytes_max`] of the log (each is flushed, and counted in `flushes`).
    pub log_bound_seals: u64,
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
    /// Bytes held by the row cache.
    pub row_cache_bytes: usize,
    /// Reads of keys no memtable held that the row cache answered.
    pub row_cache_hits: u64,
    /// Reads of keys no memtable held that the row cache did not answer.
    pub row_cache_misses: u64,
    /// Blocks reads found in the block cache.
    pub block_cache_hits: u64,
    /// Blocks reads did not find in the block cache and read from the disk.
    pub block_cache_misses: u64,
}

/// The live tables, oldest first (the manifest's order), with the running maximum of their
/// versions that lets a point read stop early.
struct Tables<F: DiskFile> {
    list: Vec<Rc<Table<F>>>,
    /// `max_version_through[i]`: the highest version in tables `0..=i`.
    max_version_through: Vec<u64>,
}

/// What a point read going newest first does at a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadStep {
    /// This table and every older one hold only versions below what was found.
    Stop,
    /// This table holds only lower versions; an older one may not.
    Skip,
    /// The table may hold an entry that ranks at or above what was found.
    Look,
}

impl<F: DiskFile> Tables<F> {
    fn new(list: Vec<Rc<Table<F>>>) -> Self {
        let max_version_through = list
            .iter()
            .scan(0, |max, table| {
                *max = table.max_version().max(*max);
                Some(*max)
            })
            .collect();
        Tables { list, max_version_through }
    }

    /// The highest version in any table (0 when there are none).
    fn max_version(&self) -> u64 {
        self.max_version_through.last().copied().unwrap_or(0)
    }

    /// What a read that has found an entry of `found_version` (or nothing) does at table `index`.
    /// An entry of an equal version may still win the tie-break, so only lower ones are passed.
    fn read_step(&self, index: usize, found_version: Option<u64>) -> ReadStep {
        match found_version {
            Some(found) if self.max_version_through[index] < found => ReadStep::Stop,
            Some(found) if self.list[index].max_version() < found => ReadStep::Skip,
            _ => ReadStep::Look,
        }
    }
}

impl<F: DiskFile> Deref for Tables<F> {
    type Target = [Rc<Table<F>>];

    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

struct State<F: DiskFile> {
    next_seq: u64,
    active: Memtable,
    sealed: Option<Rc<Memtable>>,
    /// How far the WAL had advanced when the active memtable began (see
    /// [`EngineOptions::wal_bytes_max`]).
    active_wal_start: u64,
    /// Log the active memtable stands for from before this start: the records recovery
    /// replayed into it (0 once it is sealed).
    active_wal_replayed: u64,
    tables: Rc<Tables<F>>,
    manifest: Manifest,
    flushing: bool,
    compacting: bool,
    /// Bumped whenever a memtable's entries move into a table, so a CAS that read from disk
    /// knows to look again.
    flush_generation: u64,
    failure: Option<String>,
    closed: bool,
}

impl<F: DiskFile> State<F> {
    /// The key's highest-ranking entry in the memtables.
    fn newest_in_memory(&self, key: &[u8]) -> Option<&MemEntry> {
        self.newest_in_memory_hashed(key, self.active.hash(key))
    }

    /// [`State::newest_in_memory`] for a key whose memtable hash is `hash`: the memtables of
    /// one engine share their hasher (each is made `empty_like` the one before).
    fn newest_in_memory_hashed(&self, key: &[u8], hash: u64) -> Option<&MemEntry> {
        let active = self.active.get_hashed(hash, key);
        let sealed = self.sealed.as_ref().and_then(|sealed| sealed.get_hashed(hash, key));
        match (active, sealed) {
            (Some(active), Some(sealed)) if sealed.entry.supersedes(&active.entry) => Some(sealed),
            (Some(active), _) => Some(active),
            (None, sealed) => sealed,
        }
    }
}

/// A storage engine over one [`Disk`]. Single-threaded; share it with `Rc`.
pub struct Engine<D: Disk> {
    disk: Rc<D>,
    options: EngineOptions,
    wal: WalWriter<D>,
    cache: Rc<BlockCache>,
    rows: RowCache,
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
    /// Decides, past the grace period, whether a dead entry may be purged (see
    /// [`Engine::set_purge_gate`]); every one may without it.
    purge_gate: RefCell<Option<PurgeGate>>,
    /// What the last look at the disk's free space found (see [`EngineOptions::disk_reserve_bytes`]).
    space: Cell<DiskSpace>,
    /// Whether tables were lost and not restored since (see [`Engine::rebuilding`]).
    rebuilding: Cell<bool>,
}

/// Writes accepted between two looks at the disk's free space while it has room, at least: with
/// values of at most 1 MiB, 64 MiB written unseen. More room above the reserve spaces the looks
/// further apart (see [`writes_until_next_look`]).
const SPACE_CHECK_EVERY_WRITES: u32 = 64;

/// The most writes accepted between two looks, however much room there is. A look is a statfs
/// call, about 15 µs on ext4 here: once per 64 writes it was 1.7% of a cluster node's CPU.
const SPACE_CHECK_WRITES_MAX: u32 = 4096;

/// Writes until the next look at the free space, after one that found `available` bytes: as many
/// writes of the largest size as fit in half the room above the reserve, so writes seen by no
/// look can fill at most half of it; between [`SPACE_CHECK_EVERY_WRITES`] and
/// [`SPACE_CHECK_WRITES_MAX`]. A disk that cannot tell its free space is asked every
/// [`SPACE_CHECK_EVERY_WRITES`] writes.
fn writes_until_next_look(available: Option<u64>, reserve_bytes: u64) -> u32 {
    let Some(available) = available else {
        return SPACE_CHECK_EVERY_WRITES;
    };
    let largest_write = (crate::VALUE_BYTES_MAX + crate::key::STORED_KEY_BYTES_MAX) as u64;
    let writes = available.saturating_sub(reserve_bytes) / 2 / largest_write;
    writes.clamp(u64::from(SPACE_CHECK_EVERY_WRITES), u64::from(SPACE_CHECK_WRITES_MAX)) as u32
}

/// The engine's view of the disk's free space.
#[derive(Clone, Copy, Debug, Default)]
struct DiskSpace {
    /// Writes left before the next look.
    writes_until_check: u32,
    /// Free bytes at the last look, when they were at or below the reserve (writes refused).
    full: Option<u64>,
}

/// Whether a dead entry whose key has `token`, dead since `dead_since_ms`, may be purged.
pub type PurgeGate = Box<dyn Fn(u64, u64) -> bool>;

pub(crate) fn io_error<'a>(
    op: &'static str,
    file: &'a str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |error| StorageError::io(op, file, error)
}

/// Checks a user key, and a value if given, against the limits.
fn validate(key: &[u8], value: Option<&Bytes>) -> Result<()> {
    if key.is_empty() {
        return Err(StorageError::KeyEmpty);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(StorageError::KeyTooLong { len: key.len() });
    }
    validate_value(value)
}

/// Checks a value, if any, against the limit.
fn validate_value(value: Option<&Bytes>) -> Result<()> {
    match value {
        Some(value) if value.len() > VALUE_BYTES_MAX => Err(StorageError::ValueTooLarge { len: value.len() }),
        _ => Ok(()),
    }
}

/// Whether `name` is one of the files an engine keeps in its directory: a WAL segment, a table,
/// the manifest or a manifest being replaced. A directory without them opens as a new, empty
/// engine (what a replaced disk looks like).
pub fn is_engine_file(name: &str) -> bool {
    manifest::parse_table_file_name(name).is_some()
        || parse_segment_file_name(name).is_some()
        || name == manifest::MANIFEST_FILE
        || name == manifest::MANIFEST_TEMPORARY_FILE
}

impl<D: Disk> Engine<D> {
    /// Opens the engine on `disk`, recovering what is there: tables from the manifest, then the
    /// WAL replayed into the memtable (a torn tail is dropped and counted; damage followed by
    /// valid records is an error).
    pub async fn open(disk: D, options: EngineOptions) -> Result<Self> {
        let disk = Rc::new(disk);
        let names = disk.list().await.map_err(io_error("list", "."))?;
        let found = Manifest::read(disk.as_ref()).await?;
        let mut recovery = RecoveryReport { fresh: found.is_none(), ..RecoveryReport::default() };
        let mut manifest = found.unwrap_or_default();

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
        let mut missing = Vec::new();
        for record in &manifest.tables {
            let name = manifest::table_file_name(record.id);
            let file = match disk.open(&name).await {
                Err(error)
                    if error.kind() == std::io::ErrorKind::NotFound && options.missing_tables_allowed =>
                {
                    tracing::error!(file = %name, "a table the manifest lists is missing; its data is lost here");
                    recovery.tables_missing += 1;
                    missing.push(record.id);
                    continue;
                }
                opened => opened.map_err(io_error("open", &name))?,
            };
            tables.push(Rc::new(Table::open(file, name, record.id, cache.clone()).await?));
        }
        // The next manifest written leaves the missing tables out; the mark that data was lost
        // is durable first.
        recovery.rebuilding = names.iter().any(|name| name == REBUILDING_FILE);
        if !missing.is_empty() && !recovery.rebuilding {
            write_rebuilding_mark(disk.as_ref()).await?;
            recovery.rebuilding = true;
        }
        manifest.tables.retain(|record| !missing.contains(&record.id));
        recovery.tables_opened = tables.len();

        let (active, closed, last_seq) = Self::replay_wal(
            disk.as_ref(),
            &names,
            &manifest,
            options.memtable_hash_seed,
            options.memtable_bytes_max,
            options.wal_rotten_tail_accepted,
            &mut recovery,
        )
        .await?;
        let wal = WalWriter::create(
            disk.clone(),
            next_file_number.clone(),
            options.wal_segment_bytes_max,
            options.wal_preallocate_bytes,
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
        let recovery_rebuilding = recovery.rebuilding;
        let state = State {
            next_seq: last_seq + 1,
            active,
            sealed: None,
            active_wal_start: 0,
            active_wal_replayed: recovery.bytes_replayed,
            tables: Rc::new(Tables::new(tables)),
            manifest,
            flushing: false,
            compacting: false,
            flush_generation: 0,
            failure: None,
            closed: false,
        };
        let engine = Engine {
            rows: RowCache::new(options.row_cache_bytes),
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
            purge_gate: RefCell::new(None),
            space: Cell::new(DiskSpace::default()),
            rebuilding: Cell::new(recovery_rebuilding),
        };
        engine.seal_if_full(&mut engine.state.borrow_mut());
        Ok(engine)
    }

    /// Sets the gate a dead entry past its grace period must also pass to be purged by
    /// compaction. Replication uses it so that a tombstone is purged only once its range was
    /// repaired after the delete: purging it earlier could let a replica that missed the delete
    /// bring the value back.
    pub fn set_purge_gate(&self, gate: PurgeGate) {
        *self.purge_gate.borrow_mut() = Some(gate);
    }

    /// Whether the dead entry of `stored_key` may be purged (the grace period is checked apart).
    pub(crate) fn may_purge(&self, stored_key: &[u8], dead_since_ms: u64) -> bool {
        let gate = self.purge_gate.borrow();
        let Some(gate) = gate.as_ref() else { return true };
        match crate::key::split(&Bytes::copy_from_slice(stored_key)) {
            Some((token, _)) => gate(token, dead_since_ms),
            None => false,
        }
    }

    /// What recovery found when the engine was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Whether this engine lost tables and its data has not been restored since: it may lack
    /// writes it acknowledged, so it must not answer reads as if it held them.
    pub fn rebuilding(&self) -> bool {
        self.rebuilding.get()
    }

    /// Records, durably, that this engine lost data its owner knows it had (a node that ran
    /// before finds its shard's files gone): [`Engine::rebuilding`] until [`Engine::rebuilt`].
    pub async fn mark_rebuilding(&self) -> Result<()> {
        if self.rebuilding.get() {
            return Ok(());
        }
        write_rebuilding_mark(self.disk.as_ref()).await?;
        self.rebuilding.set(true);
        Ok(())
    }

    /// Records that the data lost with missing tables has been restored (every range repaired
    /// from the other replicas since this open): [`REBUILDING_FILE`] is removed, durably.
    pub async fn rebuilt(&self) -> Result<()> {
        if !self.rebuilding.get() {
            return Ok(());
        }
        self.disk.remove(REBUILDING_FILE).await.map_err(io_error("remove", REBUILDING_FILE))?;
        self.disk.sync_dir().await.map_err(io_error("sync directory", "."))?;
        self.rebuilding.set(false);
        Ok(())
    }

    /// The highest version the engine holds: of every entry in its tables (their footers say)
    /// and memtables, the WAL replayed at open included. A clock stamping this engine's writes
    /// starts above it, so a write after a restart is never versioned below one from before,
    /// however far ahead of the wall clock that one was.
    pub fn max_version(&self) -> u64 {
        let state = self.state.borrow();
        let sealed = state.sealed.as_ref().map_or(0, |sealed| sealed.max_version());
        state.tables.max_version().max(state.active.max_version()).max(sealed)
    }

    /// The options the engine runs with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
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
        (stats.block_cache_hits, stats.block_cache_misses) = self.cache.hits_and_misses();
        stats.row_cache_bytes = self.rows.used_bytes();
        (stats.row_cache_hits, stats.row_cache_misses) = self.rows.hits_and_misses();
        stats
    }

    /// The reason writes are refused, if they are.
    pub fn failure(&self) -> Option<String> {
        self.state.borrow().failure.clone().or_else(|| self.wal.failure())
    }

    /// [`Engine::check_writable`] for a new write, which the disk must also have room for.
    fn check_accepts_writes(&self, state: &State<D::File>) -> Result<()> {
        self.check_writable(state)?;
        self.check_disk_space()
    }

    /// Refuses a write when the disk's free space is at or below the reserve, looking at it
    /// every few writes (see [`writes_until_next_look`]), and at every write while it is full
    /// (so writes resume as soon as space is freed). Flushes and compactions never look: the
    /// reserve is theirs.
    fn check_disk_space(&self) -> Result<()> {
        let reserve_bytes = self.options.disk_reserve_bytes;
        if reserve_bytes == 0 {
            return Ok(());
        }
        let mut space = self.space.get();
        if space.full.is_none() && space.writes_until_check > 0 {
            space.writes_until_check -= 1;
            self.space.set(space);
            return Ok(());
        }
        let available = match self.disk.available_bytes() {
            Ok(available) => available,
            Err(error) => {
                tracing::debug!(%error, "could not read the disk's free space");
                None
            }
        };
        space.writes_until_check = writes_until_next_look(available, reserve_bytes);
        let available_bytes = available.unwrap_or(u64::MAX);
        let full = available_bytes <= reserve_bytes;
        match (space.full, full) {
            (None, true) => tracing::warn!(
                available_bytes,
                reserve_bytes,
                "the disk is full: writes are refused until space is freed (reads go on)"
            ),
            (Some(_), false) => tracing::info!(available_bytes, "disk space was freed: writes resume"),
            _ => {}
        }
        space.full = full.then_some(available_bytes);
        self.space.set(space);
        if full {
            return Err(StorageError::DiskFull { available_bytes, reserve_bytes });
        }
        Ok(())
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
        let finished = Cell::new(false);
        let _release = OnDrop::new(|| {
            if !finished.get() {
                // Dropped between writing the manifest and adopting it: memory and disk may
                // disagree on the tables, so stop accepting writes (as a WAL commit does).
                let mut state = self.state.borrow_mut();
                state.failure.get_or_insert_with(|| "a manifest change was dropped midway".to_string());
            }
            self.manifest_busy.set(false);
            self.structure_changed.notify(usize::MAX);
        });
        let (mut tables, mut manifest) = {
            let state = self.state.borrow();
            (state.tables.list.clone(), state.manifest.clone())
        };
        manifest.next_file_number = self.next_file_number.get();
        change(&mut tables, &mut manifest);
        let written = manifest.write(self.disk.as_ref()).await;
        if written.is_ok() {
            let mut state = self.state.borrow_mut();
            state.tables = Rc::new(Tables::new(tables));
            state.manifest = manifest;
            // Reads that looked at the tables before this may not have seen their answer now.
            self.rows.advance_epoch();
        }
        finished.set(true);
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

    fn poison(&self, state: &mut State<D::File>, during: &str, error: &StorageError) {
        tracing::error!(%error, during, "storage engine poisoned; writes are refused from now on");
        state.failure.get_or_insert_with(|| format!("{during} failed: {error}"));
    }
}

/// Runs its closure when dropped: when the work it guards finishes and when its future is
/// dropped midway alike, so a busy flag never outlives the work it marks.
pub(super) struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub(super) fn new(on_drop: F) -> Self {
        OnDrop(Some(on_drop))
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(on_drop) = self.0.take() {
            on_drop();
        }
    }
}

/// Helpers the tests of every part of the engine share.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::entry::Entry;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Polls `future` once, with a waker that does nothing.
    pub fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let waker = futures_util::task::noop_waker();
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    /// Polls `future` until it is ready, at most `polls` times.
    pub fn poll_ready<F: Future + Unpin>(future: &mut F, polls: usize) -> Option<F::Output> {
        (0..polls).find_map(|_| match poll_once(future) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    }

    pub fn small_options() -> EngineOptions {
        EngineOptions { memtable_bytes_max: 16 << 10, block_cache_bytes: 1 << 20, ..EngineOptions::default() }
    }

    pub fn key(index: u32) -> Bytes {
        Bytes::from(format!("key{index:06}"))
    }

    /// [`Engine::write_now`] of a write the engine decides at once: applied in memory, its WAL
    /// record appended and not yet durable.
    pub fn written_now<D: Disk>(
        engine: &Engine<D>,
        key: &[u8],
        make_entry: impl FnOnce(Option<u64>) -> Entry,
    ) -> PendingWrite {
        engine.write_now(key, make_entry).expect("decided without waiting").expect("the write applies")
    }
}
