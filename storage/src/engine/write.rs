//! The write path: puts, deletes, raw entries and compare-and-swap, each decided and applied
//! (WAL buffer append and memtable insert) in one synchronous step, then acknowledged once the
//! group commit covers it; and the write stall that waits for memtable room.
//!
//! A write is applied only if it outranks every entry stored for its key
//! ([`Entry::supersedes`]). The memtables answer that at once; the tables too, unless one of
//! them may hold the key at this version or higher (by its key range, filter and highest
//! version), which takes a read first. A write that does not outrank what is stored is not
//! appended: it resolves once everything appended before it is durable, so its caller is never
//! told before the entry that superseded it is safe.

use super::{
    validate, validate_value, AtomicOutcome, CasOutcome, Engine, Expected, KeyHash, State, Tables,
    WriteOutcome,
};
use crate::disk::Disk;
use crate::entry::Entry;
use crate::key::{with_stored, StoredKey, TOKEN_BYTES};
use crate::options::SyncMode;
use crate::sstable::key_hash;
use crate::wal::record::RECORD_PAYLOAD_BYTES_MAX;
use crate::{DiskFile, Result, StorageError};
use bytes::Bytes;
use ringkv_wire::token::token;
use std::rc::Rc;

/// Whether some table may hold an entry for `key` (stored) of `version` or higher, so that a
/// write of `version` needs a read to know whether it outranks what is stored. Answered from
/// memory: each table's key range, filter and highest version.
fn tables_may_hold_at_or_above<F: DiskFile>(tables: &Tables<F>, key: &[u8], version: u64) -> bool {
    if tables.max_version() < version {
        return false;
    }
    let hash = key_hash(key);
    tables.iter().any(|table| table.max_version() >= version && table.may_contain_hash(key, hash))
}

/// What the synchronous step of a write decided.
enum Step {
    /// Applied as record `seq`.
    Applied { seq: u64, version: u64 },
    /// Outranked by a stored entry; `appended` is the last record appended before.
    Superseded { appended: u64, version: u64, current_version: u64 },
    /// A table may hold the key at this version or higher: read before deciding.
    ReadFirst(Entry),
}

/// A write applied but not yet acknowledged ([`Engine::write_now`]): nobody may be told of it
/// before [`Engine::acknowledged`] resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a write must be acknowledged before anyone is told of it"]
pub struct PendingWrite {
    /// The record whose acknowledgement acknowledges this write: the write's own, or, for a
    /// superseded one, the last appended before it.
    through_seq: u64,
    /// What became of the write, once acknowledged.
    outcome: WriteOutcome,
}

impl PendingWrite {
    /// The write a decided step stands for.
    fn of(step: Step) -> Self {
        match step {
            Step::Applied { seq, version } => {
                PendingWrite { through_seq: seq, outcome: WriteOutcome::Applied { version } }
            }
            Step::Superseded { appended, version, current_version } => PendingWrite {
                through_seq: appended,
                outcome: WriteOutcome::Superseded { version, current_version },
            },
            Step::ReadFirst(_) => unreachable!("a write that needs a read is not decided yet"),
        }
    }
}

/// The higher-ranking of two entries for one key.
fn newest(left: Option<Entry>, right: Option<&Entry>) -> Option<Entry> {
    match (left, right) {
        (Some(left), Some(right)) if right.supersedes(&left) => Some(right.clone()),
        (Some(left), _) => Some(left),
        (None, right) => right.cloned(),
    }
}

/// Reads of a key's stored state one write may make, at most, when flushes keep moving memtables
/// under it (each read must then be made again): the work bound of a compare-and-swap or a write
/// that must read first. Past it the write is refused as contended, to be retried.
pub const READ_RETRIES_MAX: u32 = 8;

/// Whether a memtable moved to a table since `generation` was read, so that the reads made
/// since may have missed a write and must be made again. Counts the attempt in `attempts` and
/// gives up with [`StorageError::Contended`] after [`READ_RETRIES_MAX`].
fn overtaken_by_flush<F: DiskFile>(state: &State<F>, generation: u64, attempts: &mut u32) -> Result<bool> {
    if state.flush_generation == generation {
        return Ok(false);
    }
    *attempts += 1;
    if *attempts >= READ_RETRIES_MAX {
        return Err(StorageError::Contended { attempts: *attempts });
    }
    Ok(true)
}

impl<D: Disk> Engine<D> {
    /// Writes `value` under `key` with `version`, expiring at `expires_at_ms` if given.
    /// Resolves when the write is acknowledged (see [`SyncMode`]); see [`Engine::write`].
    pub async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        version: u64,
        expires_at_ms: Option<u64>,
    ) -> Result<WriteOutcome> {
        validate(&key, Some(&value))?;
        self.write(key, Entry::live(version, value, expires_at_ms)).await
    }

    /// Deletes `key` by writing a tombstone with `version`, made at `now_ms`.
    pub async fn delete(&self, key: Bytes, version: u64, now_ms: u64) -> Result<WriteOutcome> {
        self.write(key, Entry::tombstone(version, now_ms)).await
    }

    /// Writes a raw entry whose version the caller chose (as replication streams them): applied
    /// if it outranks what the key holds, else [`WriteOutcome::Superseded`] and nothing changes.
    /// Resolves when acknowledged: for an applied entry once it is durable (in the default
    /// sync mode), for a superseded one once everything appended before it is.
    pub async fn write(&self, key: Bytes, entry: Entry) -> Result<WriteOutcome> {
        validate(&key, entry.data())?;
        self.write_with(key, |_| entry).await
    }

    /// Writes the entry `make_entry` returns, calling it in the same synchronous step that
    /// applies the entry (after any wait for memtable room), so no other write lands between the
    /// version being chosen and the write taking effect: a writer that stamps versions from a
    /// clock inside `make_entry` applies its writes in version order.
    ///
    /// `make_entry` is passed the version of the key's newest entry in memory, if any; an entry
    /// made with a higher version is applied without a read, unless some table may hold the key
    /// at that version or higher (then the tables are read first, and the entry is applied only
    /// if it still outranks everything). It must not call back into the engine. Resolves as
    /// [`Engine::write`] does.
    pub async fn write_with(
        &self,
        key: Bytes,
        make_entry: impl FnOnce(Option<u64>) -> Entry,
    ) -> Result<WriteOutcome> {
        validate(&key, None)?;
        let key = StoredKey::new(&key);
        self.make_room().await?;
        match self.decide(&key, None, make_entry)? {
            // Boxed: a table read is the exception, and its future is large.
            Step::ReadFirst(entry) => Box::pin(self.write_if_newest(&key, entry)).await,
            decided => self.resolve(decided).await,
        }
    }

    /// [`Engine::write_with`] without waiting: applies the entry `make_entry` returns in this
    /// synchronous step and hands back the write to wait for with [`Engine::acknowledged`]
    /// before anyone is told of it. `None` when the write cannot be decided without waiting
    /// (both memtables are full, or a table must be read first; `make_entry` may have been
    /// called then, its entry dropped): make it with [`Engine::write_with`] instead.
    ///
    /// A caller that makes many writes waits for their acknowledgements in one place instead
    /// of holding a future per write.
    pub fn write_now(
        &self,
        key: &[u8],
        make_entry: impl FnOnce(Option<u64>) -> Entry,
    ) -> Option<Result<PendingWrite>> {
        self.write_now_hashed(key, None, make_entry)
    }

    /// [`Engine::write_now`] with the key's [`Engine::read_hash`], when the caller has it (a
    /// write prefetched as a read is), so the key is not hashed again.
    pub fn write_now_hashed(
        &self,
        key: &[u8],
        hash: Option<KeyHash>,
        make_entry: impl FnOnce(Option<u64>) -> Entry,
    ) -> Option<Result<PendingWrite>> {
        if let Err(error) = validate(key, None) {
            return Some(Err(error));
        }
        if !self.has_room() {
            return None;
        }
        let key_token = hash.map_or_else(|| token(key), |hash| hash.token);
        match with_stored(key_token, key, |stored| {
            self.decide(stored, hash.map(|hash| hash.hash), make_entry)
        }) {
            Err(error) => Some(Err(error)),
            Ok(Step::ReadFirst(_)) => None,
            Ok(decided) => Some(Ok(PendingWrite::of(decided))),
        }
    }

    /// Resolves once `write` is acknowledged (see [`SyncMode`]: after the fdatasync covering it
    /// in the default mode), with what became of it.
    pub async fn acknowledged(&self, write: PendingWrite) -> Result<WriteOutcome> {
        self.acknowledge(write.through_seq).await?;
        Ok(write.outcome)
    }

    /// The synchronous step of [`Engine::write_with`] once the memtables have room: makes the
    /// entry and applies it when it outranks what memory holds and no table may hold more.
    ///
    /// `hash` is the memtable hash of `key` (a stored key), when the caller has it.
    fn decide(
        &self,
        key: &[u8],
        hash: Option<u64>,
        make_entry: impl FnOnce(Option<u64>) -> Entry,
    ) -> Result<Step> {
        let mut state = self.state.borrow_mut();
        self.check_accepts_writes(&state)?;
        // One hash for the read and the insert: the memtables share their hasher.
        let hash = hash.unwrap_or_else(|| state.active.hash(key));
        let in_memory = state.newest_in_memory_hashed(key, hash);
        let entry = make_entry(in_memory.map(|newest| newest.entry.version));
        validate_value(entry.data())?;
        Ok(match in_memory.filter(|newest| !entry.supersedes(&newest.entry)) {
            Some(newest) => Step::Superseded {
                appended: state.next_seq - 1,
                version: entry.version,
                current_version: newest.entry.version,
            },
            None if tables_may_hold_at_or_above(&state.tables, key, entry.version) => Step::ReadFirst(entry),
            None => {
                let version = entry.version;
                Step::Applied { seq: self.apply_hashed(&mut state, key, hash, entry)?, version }
            }
        })
    }

    /// The slow path of [`Engine::write_with`]: reads the key's newest stored entry, then, in one
    /// synchronous step with what the memtables hold by then, applies `entry` if it outranks it.
    async fn write_if_newest(&self, key: &[u8], entry: Entry) -> Result<WriteOutcome> {
        let mut attempts = 0;
        loop {
            let generation = self.state.borrow().flush_generation;
            let found = self.stored_entry(key).await?;
            let step = {
                let mut state = self.state.borrow_mut();
                self.check_accepts_writes(&state)?;
                if overtaken_by_flush(&state, generation, &mut attempts)? {
                    continue;
                }
                let current = newest(found, state.newest_in_memory(key).map(|newest| &newest.entry));
                let version = entry.version;
                match current.filter(|current| !entry.supersedes(current)) {
                    Some(current) => Step::Superseded {
                        appended: state.next_seq - 1,
                        version,
                        current_version: current.version,
                    },
                    None => Step::Applied { seq: self.apply(&mut state, key, entry)?, version },
                }
            };
            return self.resolve(step).await;
        }
    }

    /// Waits for what the synchronous step of a write decided to be acknowledged: an applied
    /// entry's own record, or, for a superseded one, every record appended before it (among
    /// them, or before them, the entry that superseded it).
    async fn resolve(&self, step: Step) -> Result<WriteOutcome> {
        self.acknowledged(PendingWrite::of(step)).await
    }

    /// Writes `value` with `version` only if the key's current state matches `expected`; see
    /// [`Engine::compare_and_swap_with`].
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
        self.compare_and_swap_with(key, expected, now_ms, |_| Entry::live(version, value, expires_at_ms))
            .await
    }

    /// Writes the entry `make_entry` returns only if the key's state at `now_ms` matches
    /// `expected` (its live value's version, or its absence). Atomic on this shard: the check,
    /// the call to `make_entry` and the write happen in one synchronous step, with no other
    /// write to the key in between. `make_entry` is passed the version of the key's stored
    /// entry, live or dead, if any: an entry made above it is written
    /// ([`CasOutcome::Swapped`]); one that is not changes nothing ([`CasOutcome::Stale`]). It
    /// must not call back into the engine.
    pub async fn compare_and_swap_with(
        &self,
        key: Bytes,
        expected: Expected,
        now_ms: u64,
        make_entry: impl FnOnce(Option<u64>) -> Entry,
    ) -> Result<CasOutcome> {
        validate(&key, None)?;
        let key = StoredKey::new(&key);
        self.make_room().await?;
        let mut make_entry = Some(make_entry);
        let mut attempts = 0;
        loop {
            let generation = self.state.borrow().flush_generation;
            let found = self.stored_entry(&key).await?;
            // What to tell, and the record it waits for: a swap its own; a refusal the last one
            // appended before it, as a superseded write does, since what it compared against may
            // not be durable yet and it must never tell of a state a crash can take back.
            let (through_seq, outcome) = {
                let mut state = self.state.borrow_mut();
                self.check_accepts_writes(&state)?;
                if overtaken_by_flush(&state, generation, &mut attempts)? {
                    continue;
                }
                // A write to the key since the read began is in a memtable; the newest of the two
                // is the key's state.
                let current = newest(found, state.newest_in_memory(&key).map(|newest| &newest.entry));
                let live_version =
                    current.as_ref().filter(|entry| !entry.is_absent_at(now_ms)).map(|entry| entry.version);
                let matches = match expected {
                    Expected::Absent => live_version.is_none(),
                    Expected::Version(version) => live_version == Some(version),
                };
                let appended = state.next_seq - 1;
                if !matches {
                    (appended, CasOutcome::Mismatch { current_version: live_version })
                } else {
                    let make_entry = make_entry.take().expect("the entry is made once");
                    let entry = make_entry(current.as_ref().map(|entry| entry.version));
                    validate_value(entry.data())?;
                    match current.filter(|current| !entry.supersedes(current)) {
                        Some(current) => (appended, CasOutcome::Stale { current_version: current.version }),
                        None => {
                            let version = entry.version;
                            (self.apply(&mut state, &key, entry)?, CasOutcome::Swapped { version })
                        }
                    }
                }
            };
            self.acknowledge(through_seq).await?;
            return Ok(outcome);
        }
    }

    /// Writes the entries `make_entries` returns for `keys` (distinct) as one WAL record, applied
    /// in one synchronous step: after a crash either all of them are there or none, and no reader
    /// of this engine sees some without the others. With `only_if_absent_at` set, the write
    /// happens only if none of the keys has a live value at that time
    /// ([`AtomicOutcome::Present`] otherwise).
    ///
    /// Every key's stored state is read first; `make_entries` is then passed each key's stored
    /// version (live or dead), in order, and must return one entry per key, each above it. The
    /// keys, values and entry headers together must fit in one WAL record (about one largest
    /// value), else [`StorageError::ValueTooLarge`] names their total. It must not call back into
    /// the engine.
    pub async fn write_atomically_with(
        &self,
        keys: &[Bytes],
        only_if_absent_at: Option<u64>,
        make_entries: impl FnOnce(&[Option<u64>]) -> Vec<Entry>,
    ) -> Result<AtomicOutcome> {
        for key in keys {
            validate(key, None)?;
        }
        let keys: Vec<StoredKey> = keys.iter().map(|key| StoredKey::new(key)).collect();
        self.make_room().await?;
        let mut make_entries = Some(make_entries);
        let mut attempts = 0;
        // What to tell, and the record it waits for (as for a compare-and-swap).
        let (through_seq, outcome) = 'attempt: loop {
            let generation = self.state.borrow().flush_generation;
            let mut found = Vec::with_capacity(keys.len());
            for key in &keys {
                found.push(self.stored_entry(key).await?);
            }
            let decided = {
                let mut state = self.state.borrow_mut();
                self.check_accepts_writes(&state)?;
                if overtaken_by_flush(&state, generation, &mut attempts)? {
                    continue;
                }
                let appended = state.next_seq - 1;
                let current: Vec<Option<Entry>> = found
                    .into_iter()
                    .zip(&keys)
                    .map(|(found, key)| {
                        newest(found, state.newest_in_memory(key).map(|newest| &newest.entry))
                    })
                    .collect();
                if let Some(now_ms) = only_if_absent_at {
                    let live = current
                        .iter()
                        .position(|entry| entry.as_ref().is_some_and(|entry| !entry.is_absent_at(now_ms)));
                    if let Some(index) = live {
                        break 'attempt (appended, AtomicOutcome::Present { index });
                    }
                }
                let versions: Vec<Option<u64>> =
                    current.iter().map(|entry| entry.as_ref().map(|entry| entry.version)).collect();
                let make_entries = make_entries.take().expect("the entries are made once");
                let entries = make_entries(&versions);
                assert_eq!(entries.len(), keys.len(), "one entry per key");
                for (index, (entry, current)) in entries.iter().zip(&current).enumerate() {
                    validate_value(entry.data())?;
                    if let Some(current) = current.as_ref().filter(|current| !entry.supersedes(current)) {
                        break 'attempt (
                            appended,
                            AtomicOutcome::Stale { index, current_version: current.version },
                        );
                    }
                }
                let versions = entries.iter().map(|entry| entry.version).collect();
                (self.apply_atomically(&mut state, &keys, entries)?, AtomicOutcome::Applied { versions })
            };
            break 'attempt decided;
        };
        self.acknowledge(through_seq).await?;
        Ok(outcome)
    }

    /// Makes every write appended so far durable.
    pub async fn sync(&self) -> Result<()> {
        self.wal.sync().await
    }

    /// Appends to the WAL buffer and the memtable in one step; returns the sequence number.
    /// `key` is the stored key.
    fn apply(&self, state: &mut State<D::File>, key: &[u8], entry: Entry) -> Result<u64> {
        let hash = state.active.hash(key);
        self.apply_hashed(state, key, hash, entry)
    }

    /// [`Engine::apply`] of a key whose memtable hash is `hash`.
    fn apply_hashed(&self, state: &mut State<D::File>, key: &[u8], hash: u64, entry: Entry) -> Result<u64> {
        self.check_accepts_writes(state)?;
        let seq = state.next_seq;
        self.wal.append(seq, entry.encoded_len(key.len()), |out| entry.encode(key, out))?;
        state.next_seq += 1;
        let user_bytes = key.len() - TOKEN_BYTES + entry.data().map_or(0, Bytes::len);
        self.stats.borrow_mut().user_bytes += user_bytes as u64;
        let inserted = state.active.insert_hashed(hash, key, seq, entry);
        debug_assert!(inserted, "only an entry that outranks the stored ones is applied");
        self.seal_if_full(state);
        Ok(seq)
    }

    /// [`Engine::apply`] of several entries (for distinct stored keys) as one WAL record, which
    /// every entry's memtable insert shares the sequence number of.
    fn apply_atomically(
        &self,
        state: &mut State<D::File>,
        keys: &[StoredKey],
        entries: Vec<Entry>,
    ) -> Result<u64> {
        self.check_accepts_writes(state)?;
        let payload_bytes: usize =
            keys.iter().zip(&entries).map(|(key, entry)| entry.encoded_len(key.len())).sum();
        if payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
            return Err(StorageError::ValueTooLarge { len: payload_bytes });
        }
        let seq = state.next_seq;
        self.wal.append(seq, payload_bytes, |out| {
            for (key, entry) in keys.iter().zip(&entries) {
                entry.encode(key, out);
            }
        })?;
        state.next_seq += 1;
        for (key, entry) in keys.iter().zip(entries) {
            let user_bytes = key.len() - TOKEN_BYTES + entry.data().map_or(0, Bytes::len);
            self.stats.borrow_mut().user_bytes += user_bytes as u64;
            let inserted = state.active.insert(key, seq, entry);
            debug_assert!(inserted, "only an entry that outranks the stored ones is applied");
        }
        self.seal_if_full(state);
        Ok(seq)
    }

    /// Seals the active memtable for the flush task once it is full, or once it stands for
    /// [`EngineOptions::wal_bytes_max`] of the log (see there), unless one is sealed already.
    pub(super) fn seal_if_full(&self, state: &mut State<D::File>) {
        if state.sealed.is_some() {
            return;
        }
        let full = state.active.approximate_bytes() >= self.options.memtable_bytes_max;
        let stands_for = self.wal.bytes_logged() - state.active_wal_start + state.active_wal_replayed;
        let log_long = stands_for >= self.options.wal_bytes_max;
        if full || (log_long && !state.active.is_empty()) {
            if !full {
                self.stats.borrow_mut().log_bound_seals += 1;
            }
            self.seal_active(state);
            self.work.notify(usize::MAX);
        }
    }

    /// Makes the active memtable the sealed one and starts an empty one. No memtable may be
    /// sealed already.
    pub(super) fn seal_active(&self, state: &mut State<D::File>) {
        debug_assert!(state.sealed.is_none(), "one sealed memtable at a time");
        let fresh = state.active.empty_like();
        let active = std::mem::replace(&mut state.active, fresh);
        state.sealed = Some(Rc::new(active));
        // A read that began before may insert into the row cache what the tables hold for a
        // key the flush is about to change, after the flush has forgotten it.
        self.rows.advance_epoch();
        state.active_wal_start = self.wal.bytes_logged();
        state.active_wal_replayed = 0;
    }

    pub(super) async fn acknowledge(&self, seq: u64) -> Result<()> {
        match self.options.sync {
            SyncMode::Always => self.wal.commit_through(seq, true).await,
            SyncMode::Periodic { .. } if self.wal.buffered_bytes() >= self.options.wal_buffer_bytes_max => {
                self.wal.commit_through(seq, false).await
            }
            SyncMode::Periodic { .. } => Ok(()),
        }
    }

    /// Whether a write can go ahead without a stall: a memtable has room (see
    /// [`Engine::make_room`]).
    fn has_room(&self) -> bool {
        self.room_in(&self.state.borrow())
    }

    /// Whether `state` lets a write go ahead without a stall: no sealed memtable waits for its
    /// flush, or the active one is not full yet.
    fn room_in(&self, state: &State<D::File>) -> bool {
        state.sealed.is_none() || state.active.approximate_bytes() < self.options.memtable_bytes_max
    }

    /// Waits while both memtables are full (write stall), flushing itself if nobody else is.
    async fn make_room(&self) -> Result<()> {
        {
            let state = self.state.borrow();
            self.check_accepts_writes(&state)?;
            if self.room_in(&state) {
                return Ok(());
            }
        }
        // Boxed: a stall is the exception, and the flush it may run would otherwise make every
        // write's future (and every future holding one) kilobytes larger.
        Box::pin(self.wait_for_room()).await
    }

    /// [`Engine::make_room`]'s wait.
    async fn wait_for_room(&self) -> Result<()> {
        loop {
            let listener = {
                let state = self.state.borrow();
                self.check_accepts_writes(&state)?;
                if self.room_in(&state) {
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
    use super::super::testing::{key, small_options, written_now};
    use super::super::*;
    use crate::disk::memory::{CrashMode, MemDisk};
    use crate::disk::ALIGNMENT;
    use crate::entry::Entry;
    use futures_executor::block_on;

    #[test]
    fn atomic_writes_apply_every_entry_or_none_and_survive_a_crash() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            engine.put(key(2), Bytes::from_static(b"old"), 5, None).await.unwrap();
            let keys = [key(1), key(2), key(3)];
            let entries = |stored: &[Option<u64>]| {
                assert_eq!(stored, [None, Some(5), None]);
                (0..3)
                    .map(|index| Entry::live(10 + index, Bytes::from(vec![b'a' + index as u8]), None))
                    .collect()
            };
            // Only if absent: key 2 is live, so nothing is written.
            let outcome = engine.write_atomically_with(&keys, Some(0), entries).await.unwrap();
            assert_eq!(outcome, AtomicOutcome::Present { index: 1 });
            assert_eq!(engine.get(&key(1), 0).await.unwrap(), None);
            let outcome = engine.write_atomically_with(&keys, None, entries).await.unwrap();
            assert_eq!(outcome, AtomicOutcome::Applied { versions: vec![10, 11, 12] });
            // An entry at or below a stored version refuses the whole write.
            let stale = |_: &[Option<u64>]| {
                vec![Entry::live(20, Bytes::new(), None), Entry::live(11, Bytes::new(), None)]
            };
            let outcome = engine.write_atomically_with(&[key(4), key(2)], None, stale).await.unwrap();
            assert_eq!(outcome, AtomicOutcome::Stale { index: 1, current_version: 11 });
            assert_eq!(engine.get(&key(4), 0).await.unwrap(), None);
            // Keys and values past one WAL record are refused, naming their total.
            let big = |_: &[Option<u64>]| {
                (0..2).map(|_| Entry::live(30, Bytes::from(vec![0; crate::VALUE_BYTES_MAX]), None)).collect()
            };
            let refused = engine.write_atomically_with(&[key(5), key(6)], None, big).await.unwrap_err();
            assert!(matches!(refused, StorageError::ValueTooLarge { .. }), "{refused:?}");
            engine.sync().await.unwrap();
            drop(engine);
            // The one record replays whole.
            let engine = Engine::open(disk.crash(CrashMode::DropUnsynced), small_options()).await.unwrap();
            for index in 0..3u32 {
                let found = engine.get(&key(index + 1), 0).await.unwrap().unwrap();
                assert_eq!(
                    (found.version, &found.value[..]),
                    (10 + u64::from(index), &[b'a' + index as u8][..])
                );
            }
            assert_eq!(engine.get(&key(5), 0).await.unwrap(), None);
        });
    }

    #[test]
    fn a_refused_compare_and_swap_resolves_only_once_what_it_found_is_durable() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            let value = || Bytes::from_static(b"v");
            let _pending = written_now(&engine, &key(1), |_| Entry::live(10, value(), None));
            assert!(engine.wal.durable_seq() < engine.wal.appended_seq());
            // Refused against a write not yet durable: told only once it is.
            let refused = engine
                .compare_and_swap_with(key(1), Expected::Absent, 0, |_| Entry::live(11, value(), None))
                .await;
            assert_eq!(refused.unwrap(), CasOutcome::Mismatch { current_version: Some(10) });
            assert_eq!(engine.wal.durable_seq(), engine.wal.appended_seq());

            let _pending = written_now(&engine, &key(2), |_| Entry::live(20, value(), None));
            let present = engine
                .write_atomically_with(&[key(3), key(2)], Some(0), |_| {
                    vec![Entry::live(21, value(), None); 2]
                })
                .await;
            assert_eq!(present.unwrap(), AtomicOutcome::Present { index: 1 });
            assert_eq!(engine.wal.durable_seq(), engine.wal.appended_seq());
        });
    }

    #[test]
    fn a_write_made_now_is_durable_only_once_acknowledged() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            let value = || Bytes::from_static(b"v");
            let first = written_now(&engine, &key(1), |newest| {
                assert_eq!(newest, None);
                Entry::live(10, value(), None)
            });
            // Applied at once: visible in memory before it is durable, as with write_with (a
            // read in place is told to wait for it).
            let seen = engine
                .read_now(&key(1), 0, |found, unsettled| (found.map(|(_, version)| version), unsettled));
            let (seen, unsettled) = seen.unwrap().unwrap();
            assert_eq!(seen, Some(10));
            assert!(unsettled.is_some());
            // Not acknowledged, not synced: a crash now loses it.
            let crashed = disk.crash(CrashMode::DropUnsynced);
            let recovered = Engine::open(crashed, small_options()).await.unwrap();
            assert_eq!(recovered.get(&key(1), 0).await.unwrap(), None);
            // An older version of the same key is superseded; it waits for the first write.
            let stale = written_now(&engine, &key(1), |newest| {
                assert_eq!(newest, Some(10));
                Entry::live(9, value(), None)
            });
            assert_eq!(
                engine.acknowledged(stale).await.unwrap(),
                WriteOutcome::Superseded { version: 9, current_version: 10 }
            );
            // Acknowledged: synced, so it survives a crash.
            assert_eq!(engine.acknowledged(first).await.unwrap(), WriteOutcome::Applied { version: 10 });
            let recovered = Engine::open(disk.crash(CrashMode::DropUnsynced), small_options()).await.unwrap();
            assert_eq!(recovered.get(&key(1), 0).await.unwrap().map(|found| found.version), Some(10));
            // A key the engine refuses is refused on the spot.
            let refused = engine.write_now(b"", |_| Entry::live(11, value(), None));
            assert!(matches!(refused, Some(Err(_))), "{refused:?}");
        });
    }

    /// A memtable that never fills under the log-bound tests' overwrites, 16 KiB segments and
    /// a 64 KiB bound.
    fn log_bound_options() -> EngineOptions {
        EngineOptions {
            memtable_bytes_max: 1 << 20,
            wal_segment_bytes_max: 16 << 10,
            wal_bytes_max: 64 << 10,
            wal_preallocate_bytes: 0,
            ..small_options()
        }
    }

    /// What [`log_bound_options`] let the log on disk reach: twice the bound plus a segment.
    const LOG_BYTES_ALLOWED: u64 = 2 * (64 << 10) + (16 << 10);

    /// Bytes of WAL segments on `disk`.
    fn log_bytes(disk: &MemDisk) -> u64 {
        let names = disk.file_names();
        names.iter().filter(|name| name.ends_with(".wal")).map(|name| disk.file_len(name).unwrap()).sum()
    }

    /// Writes `version` to one of ten keys, with a value naming the version.
    async fn overwrite(engine: &Engine<MemDisk>, version: u64) {
        let value = Bytes::from(format!("{version:0100}"));
        engine.put(key((version % 10) as u32), value, version, None).await.unwrap();
    }

    /// Overwrites of a few keys replace them in place and never fill the memtable: the log
    /// still stays bounded, because a memtable that stands for `wal_bytes_max` of it is
    /// flushed, and the segments before it go. Every write survives a crash all the same.
    #[test]
    fn overwrites_that_never_fill_the_memtable_keep_the_log_bounded() {
        block_on(async {
            let disk = MemDisk::new();
            let options = log_bound_options();
            let engine = Engine::open(disk.clone(), options.clone()).await.unwrap();
            let mut log_bytes_max = 0;
            let writer = async {
                for version in 1..=6000u64 {
                    overwrite(&engine, version).await;
                    log_bytes_max = log_bytes_max.max(log_bytes(&disk));
                    crate::wal::writer::yield_once().await;
                }
                engine.stop_maintenance();
                Ok(())
            };
            futures_util::future::try_join(writer, engine.run_maintenance(|| 0)).await.unwrap();
            // One writer: every write is a group of its own and takes a block of the log,
            // 6000 blocks in all.
            let logged = engine.wal.bytes_logged();
            assert_eq!(logged, 6000 * ALIGNMENT as u64);
            let seals = logged / (64 << 10);
            let stats = engine.stats();
            let flushes = stats.flushes;
            assert!(
                (seals / 2..=seals + 1).contains(&flushes),
                "{flushes} flushes for {seals} bounds' worth"
            );
            assert_eq!(stats.log_bound_seals, flushes, "no memtable was full");
            assert!(log_bytes_max <= LOG_BYTES_ALLOWED, "the log grew to {log_bytes_max} bytes");
            let recovered = Engine::open(disk.crash(CrashMode::DropUnsynced), options).await.unwrap();
            for index in 0..10u32 {
                let found = recovered.get(&key(index), 0).await.unwrap().expect("written");
                let version = 5990 + if index == 0 { 10 } else { u64::from(index) };
                assert_eq!(found.version, version);
                assert_eq!(found.value, Bytes::from(format!("{version:0100}")));
            }
        });
    }

    /// An engine reopened again and again, each time after less than `wal_bytes_max` of
    /// overwrites: the log recovery replays counts toward the bound, so it still flushes and
    /// the log stays bounded across the lives.
    #[test]
    fn the_log_stays_bounded_across_restarts() {
        block_on(async {
            let options = log_bound_options();
            let mut disk = MemDisk::new();
            let mut version = 0u64;
            let mut flushes = 0;
            for _life in 0..40 {
                let engine = Engine::open(disk.clone(), options.clone()).await.unwrap();
                let writer = async {
                    // Ten writes, a block of the log each: 40 KiB, under the bound.
                    for _ in 0..10 {
                        version += 1;
                        overwrite(&engine, version).await;
                        crate::wal::writer::yield_once().await;
                    }
                    engine.stop_maintenance();
                    Ok(())
                };
                futures_util::future::try_join(writer, engine.run_maintenance(|| 0)).await.unwrap();
                flushes += engine.stats().flushes;
                let log_bytes = log_bytes(&disk);
                assert!(log_bytes <= LOG_BYTES_ALLOWED, "the log grew to {log_bytes} bytes");
                drop(engine);
                disk = disk.crash(CrashMode::DropUnsynced);
            }
            // 400 blocks of log went by, 64 KiB worth at a time.
            assert!(flushes >= 10, "{flushes} flushes");
            let engine = Engine::open(disk, options).await.unwrap();
            let found = engine.get(&key(0), 0).await.unwrap().expect("written");
            assert_eq!(found.version, 400);
        });
    }

    /// A write given its key's read hash finds and replaces the same entry a write without it
    /// does.
    #[test]
    fn a_write_given_its_read_hash_decides_as_one_without() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            let hash = |key: &[u8]| engine.read_hash(key, ringkv_wire::token::token(key));
            let first = engine.write_now_hashed(&key(1), hash(&key(1)), |newest| {
                assert_eq!(newest, None);
                Entry::live(10, Bytes::from_static(b"first"), None)
            });
            let first = first.expect("decided now").unwrap();
            assert_eq!(engine.acknowledged(first).await.unwrap(), WriteOutcome::Applied { version: 10 });
            let second = engine.write_now_hashed(&key(1), hash(&key(1)), |newest| {
                assert_eq!(newest, Some(10), "the hashed lookup found the first write");
                Entry::live(12, Bytes::from_static(b"second"), None)
            });
            let second = second.expect("decided now").unwrap();
            assert_eq!(engine.acknowledged(second).await.unwrap(), WriteOutcome::Applied { version: 12 });
            let found = engine.get(&key(1), 0).await.unwrap().expect("written");
            assert_eq!((found.version, &found.value[..]), (12, &b"second"[..]));
            // The same without the hash sees the hashed write.
            let third = written_now(&engine, &key(1), |newest| {
                assert_eq!(newest, Some(12));
                Entry::live(13, Bytes::from_static(b"third"), None)
            });
            assert_eq!(engine.acknowledged(third).await.unwrap(), WriteOutcome::Applied { version: 13 });
        });
    }

    #[test]
    fn a_write_that_must_read_a_table_first_is_not_made_now() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            engine.put(key(1), Bytes::from_static(b"old"), 20, None).await.unwrap();
            engine.flush().await.unwrap();
            // A table may hold the key at version 20: an entry of version 15 needs a read first.
            assert!(engine.write_now(&key(1), |_| Entry::live(15, Bytes::new(), None)).is_none());
            assert_eq!(engine.get(&key(1), 0).await.unwrap().map(|found| found.version), Some(20));
            // A key the table's filter rules out does not.
            let other = written_now(&engine, &key(2), |_| Entry::live(15, Bytes::new(), None));
            assert_eq!(engine.acknowledged(other).await.unwrap(), WriteOutcome::Applied { version: 15 });
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
                CasOutcome::Swapped { version: 5 }
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
                CasOutcome::Swapped { version: 7 }
            );
            // Expired means absent.
            assert_eq!(
                engine.compare_and_swap(k.clone(), Expected::Absent, v.clone(), 8, None, 60).await.unwrap(),
                CasOutcome::Swapped { version: 8 }
            );
            // The expectation holds (the key is deleted), but a version below the tombstone's
            // would change nothing.
            engine.delete(k.clone(), 20, 60).await.unwrap();
            assert_eq!(
                engine.compare_and_swap(k.clone(), Expected::Absent, v.clone(), 19, None, 60).await.unwrap(),
                CasOutcome::Stale { current_version: 20 }
            );
            // With a closure, the version is made knowing the stored one: it always lands.
            let outcome = engine
                .compare_and_swap_with(k.clone(), Expected::Absent, 60, |stored| {
                    assert_eq!(stored, Some(20));
                    Entry::live(stored.unwrap() + 1, v.clone(), None)
                })
                .await
                .unwrap();
            assert_eq!(outcome, CasOutcome::Swapped { version: 21 });
            assert_eq!(engine.get(&k, 60).await.unwrap().unwrap().version, 21);
        });
    }

    #[test]
    fn lower_or_repeated_versions_change_nothing_and_append_nothing() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            let k = key(1);
            let value = |text: &'static str| Bytes::from_static(text.as_bytes());
            assert_eq!(
                engine.put(k.clone(), value("ten"), 10, None).await.unwrap(),
                WriteOutcome::Applied { version: 10 }
            );
            let appended = engine.wal.appended_seq();
            // Late and repeated writes, against the memtable.
            for (version, data) in [(9, "nine"), (10, "ten")] {
                assert_eq!(
                    engine.put(k.clone(), value(data), version, None).await.unwrap(),
                    WriteOutcome::Superseded { version, current_version: 10 }
                );
            }
            assert!(!engine.delete(k.clone(), 3, 0).await.unwrap().is_applied());
            // Against a table: the filter and the table's highest version send the write to a
            // read first, and it is refused just the same.
            engine.flush().await.unwrap();
            assert_eq!(
                engine.put(k.clone(), value("eight"), 8, None).await.unwrap(),
                WriteOutcome::Superseded { version: 8, current_version: 10 }
            );
            assert_eq!(engine.wal.appended_seq(), appended, "nothing superseded was appended");
            assert_eq!(engine.get(&k, 0).await.unwrap().unwrap().value, value("ten"));
            // A tie goes to the tombstone, and then a higher version wins again.
            assert!(engine.delete(k.clone(), 10, 0).await.unwrap().is_applied());
            assert_eq!(engine.get(&k, 0).await.unwrap(), None);
            assert!(engine.put(k.clone(), value("eleven"), 11, None).await.unwrap().is_applied());
            assert_eq!(engine.get(&k, 0).await.unwrap().unwrap().value, value("eleven"));
            // The closure sees the newest version in memory, so it can always stamp above it.
            let outcome = engine
                .write_with(k.clone(), |newest| {
                    assert_eq!(newest, Some(11));
                    Entry::live(newest.unwrap() + 1, value("twelve"), None)
                })
                .await
                .unwrap();
            assert_eq!(outcome, WriteOutcome::Applied { version: 12 });
        });
    }

    #[test]
    fn a_superseded_write_resolves_only_once_its_superseder_is_durable() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            let k = key(1);
            let newer = engine.put(k.clone(), Bytes::from_static(b"new"), 10, None);
            // Polled second, the older write finds the newer one applied but not yet synced.
            let older = async {
                let outcome = engine.put(k.clone(), Bytes::from_static(b"old"), 5, None).await;
                (outcome, engine.wal.durable_seq())
            };
            let (newer, (older, durable_when_older_resolved)) =
                futures_util::future::join(newer, older).await;
            assert!(newer.unwrap().is_applied());
            assert_eq!(older.unwrap(), WriteOutcome::Superseded { version: 5, current_version: 10 });
            assert!(durable_when_older_resolved >= 1, "resolved before the newer write was durable");
        });
    }

    #[test]
    fn a_full_disk_refuses_writes_keeps_reads_and_flushes_and_recovers_when_space_returns() {
        block_on(async {
            let disk = MemDisk::new();
            let options = EngineOptions { disk_reserve_bytes: 1 << 20, ..small_options() };
            let engine = Engine::open(disk.clone(), options).await.unwrap();
            engine.put(key(1), Bytes::from_static(b"a"), 1, None).await.unwrap();
            disk.set_available_bytes(Some(1 << 20));
            // Within a few writes the engine looks again, and refuses.
            let mut refused = None;
            for version in 2..(2 + u64::from(SPACE_CHECK_EVERY_WRITES) + 2) {
                match engine.put(key(2), Bytes::from_static(b"b"), version, None).await {
                    Ok(_) => continue,
                    Err(error) => {
                        refused = Some(error);
                        break;
                    }
                }
            }
            let error = refused.expect("writes went on with the disk full");
            assert!(matches!(error, StorageError::DiskFull { .. }), "{error}");
            assert!(!error.is_fatal(), "a full disk is not a failure of the engine");
            assert!(engine.failure().is_none());
            // Every write is refused while full, deletes too; reads and flushes go on.
            let error = engine.delete(key(1), 100, 0).await.unwrap_err();
            assert!(matches!(error, StorageError::DiskFull { .. }), "{error}");
            assert!(engine.get(&key(1), 0).await.unwrap().is_some());
            engine.flush().await.unwrap();
            // Space comes back: the next write is accepted, without reopening.
            disk.set_available_bytes(Some(64 << 20));
            engine.put(key(3), Bytes::from_static(b"c"), 200, None).await.unwrap();
            assert!(engine.get(&key(3), 0).await.unwrap().is_some());
        });
    }

    #[test]
    fn looks_at_the_free_space_less_often_the_more_room_there_is() {
        let reserve = 512 << 20;
        // Unknown, or little room above the reserve: every 64 writes.
        assert_eq!(writes_until_next_look(None, reserve), SPACE_CHECK_EVERY_WRITES);
        assert_eq!(writes_until_next_look(Some(reserve + (10 << 20)), reserve), SPACE_CHECK_EVERY_WRITES);
        assert_eq!(writes_until_next_look(Some(reserve / 2), reserve), SPACE_CHECK_EVERY_WRITES);
        // In between: half the room in writes of the largest size.
        let largest = (crate::VALUE_BYTES_MAX + crate::key::STORED_KEY_BYTES_MAX) as u64;
        assert_eq!(writes_until_next_look(Some(reserve + 2000 * largest), reserve), 1000);
        // A large disk: capped.
        assert_eq!(writes_until_next_look(Some(1 << 40), reserve), SPACE_CHECK_WRITES_MAX);
    }

    #[test]
    fn a_full_disk_is_seen_within_half_the_room_above_the_reserve() {
        block_on(async {
            let disk = MemDisk::new();
            let reserve = 1 << 20;
            let options = EngineOptions { disk_reserve_bytes: reserve, ..small_options() };
            let engine = Engine::open(disk.clone(), options).await.unwrap();
            // Plenty of room at the first look: the next one is far off.
            disk.set_available_bytes(Some(1 << 40));
            engine.put(key(1), Bytes::from_static(b"a"), 1, None).await.unwrap();
            disk.set_available_bytes(Some(reserve));
            let mut accepted = 0;
            for version in 2..(2 + u64::from(SPACE_CHECK_WRITES_MAX) + 2) {
                match engine.put(key(2), Bytes::from_static(b"b"), version, None).await {
                    Ok(_) => accepted += 1,
                    Err(error) => {
                        assert!(matches!(error, StorageError::DiskFull { .. }), "{error}");
                        break;
                    }
                }
            }
            // A write can look more than once (again after reading the tables), so the look
            // comes within the cap, and well past the 64 writes that little room would allow.
            assert!(
                accepted > 4 * SPACE_CHECK_EVERY_WRITES && accepted < SPACE_CHECK_WRITES_MAX,
                "the look came after {accepted} writes"
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
