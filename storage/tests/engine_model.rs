//! Model-based test of the engine: random sequences of puts (with and without expiry), deletes,
//! compare-and-swaps, point reads and paged scans (in token order) over a small key space, with
//! a logical clock
//! that moves forward, mixed with flushes, compactions and reopens (cleanly, after a simulated
//! power loss following `close`, and after a power loss with no `close` at all). Every read and
//! every CAS outcome is checked against a `BTreeMap` oracle.
//!
//! Options are tiny (8 KiB memtables, 16 KiB WAL segments, a 10 ms tombstone grace period) so
//! that a few hundred operations go through every part of the engine: memtable sealing and write
//! stalls, flushes, WAL segment rolls, size-tiered and full compactions that purge dead entries,
//! recovery with and without tables.

use bytes::Bytes;
use futures_executor::block_on;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use ringkv_storage::disk::memory::{CrashMode, MemDisk};
use ringkv_storage::{CasOutcome, Engine, EngineOptions, Expected, Position, ScanRange, SyncMode, Versioned};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Keys are `key00` to `key39`; scans return them in token order, not index order.
const KEY_COUNT: u8 = 40;
/// Longest run of operations in one case.
const OPERATIONS_MAX: usize = 300;
const TOMBSTONE_GRACE_MS: u64 = 10;

fn options() -> EngineOptions {
    EngineOptions {
        sync: SyncMode::Always,
        memtable_bytes_max: 8 << 10,
        block_cache_bytes: 32 << 10,
        // Small, so that rows are evicted as well as kept in step with flushes and purges.
        row_cache_bytes: 4 << 10,
        wal_segment_bytes_max: 16 << 10,
        tombstone_grace_ms: TOMBSTONE_GRACE_MS,
        compaction_width_min: 2,
        compaction_width_max: 4,
        ..EngineOptions::default()
    }
}

fn key(index: u8) -> Bytes {
    Bytes::from(format!("key{index:02}"))
}

/// The keys' indices in scan order (by token, then by key).
fn scan_order() -> Vec<u8> {
    let mut indices: Vec<u8> = (0..KEY_COUNT).collect();
    indices.sort_by_key(|&index| Position::of_key(key(index)));
    indices
}

/// The position of the key of rank `rank` in scan order; ranks past the last key are positions
/// past every key.
fn position_of_rank(rank: u8) -> Position {
    match scan_order().get(usize::from(rank)) {
        Some(&index) => Position::of_key(key(index)),
        None => Position { token: u64::MAX, key: Bytes::from(vec![0xff; usize::from(rank - KEY_COUNT) + 1]) },
    }
}

/// A value that names the version it was written with, so a value from the wrong write shows.
fn value(version: u64, len: usize) -> Bytes {
    let stamp = format!("v{version};");
    Bytes::from(stamp.bytes().cycle().take(len).collect::<Vec<u8>>())
}

#[derive(Clone, Copy, Debug)]
enum Reopen {
    /// `close`, then open again on the same disk.
    Clean,
    /// `close`, then a power loss that drops whatever was not synced, then open.
    CrashAfterClose,
    /// A power loss with no `close`: every write was acknowledged, so nothing may be lost.
    CrashWithoutClose,
}

#[derive(Clone, Debug)]
enum Operation {
    Put {
        key: u8,
        value_len: usize,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: u8,
    },
    Get {
        key: u8,
    },
    CasAbsent {
        key: u8,
        value_len: usize,
        ttl_ms: Option<u64>,
    },
    /// Expects the current version when `current` and the key is live, else `other`.
    CasVersion {
        key: u8,
        value_len: usize,
        current: bool,
        other: u64,
    },
    /// Bounds are ranks in scan order (see [`position_of_rank`]).
    Scan {
        start: Bound<u8>,
        end: Bound<u8>,
        limit: usize,
        include_dead: bool,
    },
    Advance {
        ms: u64,
    },
    Flush,
    Compact,
    CompactAll,
    Reopen(Reopen),
}

fn bound() -> impl Strategy<Value = Bound<u8>> {
    prop_oneof![
        1 => Just(Bound::Unbounded),
        2 => (0..KEY_COUNT + 2).prop_map(Bound::Included),
        2 => (0..KEY_COUNT + 2).prop_map(Bound::Excluded),
    ]
}

fn value_len() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0usize..200, 1 => 1_000usize..3_000]
}

fn ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 1 => (0u64..40).prop_map(Some)]
}

fn operation() -> impl Strategy<Value = Operation> {
    let key = || 0..KEY_COUNT;
    prop_oneof![
        30 => (key(), value_len(), ttl())
            .prop_map(|(key, value_len, ttl_ms)| Operation::Put { key, value_len, ttl_ms }),
        8 => key().prop_map(|key| Operation::Delete { key }),
        15 => key().prop_map(|key| Operation::Get { key }),
        5 => (key(), value_len(), ttl())
            .prop_map(|(key, value_len, ttl_ms)| Operation::CasAbsent { key, value_len, ttl_ms }),
        6 => (key(), value_len(), any::<bool>(), 0u64..400)
            .prop_map(|(key, value_len, current, other)| Operation::CasVersion { key, value_len, current, other }),
        6 => (bound(), bound(), 1usize..8, any::<bool>())
            .prop_map(|(start, end, limit, include_dead)| Operation::Scan { start, end, limit, include_dead }),
        8 => (1u64..25).prop_map(|ms| Operation::Advance { ms }),
        3 => Just(Operation::Flush),
        3 => Just(Operation::Compact),
        1 => Just(Operation::CompactAll),
        1 => Just(Operation::Reopen(Reopen::Clean)),
        1 => Just(Operation::Reopen(Reopen::CrashAfterClose)),
        1 => Just(Operation::Reopen(Reopen::CrashWithoutClose)),
    ]
}

/// What the oracle knows of a key: its last write.
#[derive(Clone, Debug)]
struct Written {
    /// `None` for a delete.
    value: Option<Bytes>,
    version: u64,
    expires_at_ms: Option<u64>,
}

impl Written {
    fn live_at(&self, now_ms: u64) -> Option<Versioned> {
        let value = self.value.clone()?;
        self.expires_at_ms.is_none_or(|at| at > now_ms).then_some(Versioned { value, version: self.version })
    }
}

struct Model {
    disk: MemDisk,
    engine: Option<Engine<MemDisk>>,
    oracle: BTreeMap<u8, Written>,
    now_ms: u64,
    next_version: u64,
}

fn check<T>(result: ringkv_storage::Result<T>, what: &str) -> Result<T, TestCaseError> {
    result.map_err(|error| TestCaseError::fail(format!("{what} failed: {error}")))
}

impl Model {
    async fn new() -> Result<Self, TestCaseError> {
        let disk = MemDisk::new();
        let engine = check(Engine::open(disk.clone(), options()).await, "open")?;
        Ok(Model { disk, engine: Some(engine), oracle: BTreeMap::new(), now_ms: 1_000, next_version: 1 })
    }

    fn engine(&self) -> &Engine<MemDisk> {
        self.engine.as_ref().expect("engine is open")
    }

    fn live(&self, key: u8) -> Option<Versioned> {
        self.oracle.get(&key).and_then(|written| written.live_at(self.now_ms))
    }

    fn take_version(&mut self) -> u64 {
        let version = self.next_version;
        self.next_version += 1;
        version
    }

    /// The live entries with keys in the range of ranks, in scan order, as the oracle sees them.
    fn live_range(&self, start: Bound<u8>, end: Bound<u8>) -> Vec<(Bytes, Versioned)> {
        let in_range = |rank: u8| {
            let after_start = match start {
                Bound::Included(start) => rank >= start,
                Bound::Excluded(start) => rank > start,
                Bound::Unbounded => true,
            };
            let before_end = match end {
                Bound::Included(end) => rank <= end,
                Bound::Excluded(end) => rank < end,
                Bound::Unbounded => true,
            };
            after_start && before_end
        };
        scan_order()
            .into_iter()
            .enumerate()
            .filter(|&(rank, _)| in_range(rank as u8))
            .filter_map(|(_, index)| self.live(index).map(|live| (key(index), live)))
            .collect()
    }

    async fn apply(&mut self, operation: &Operation) -> Result<(), TestCaseError> {
        let now_ms = self.now_ms;
        match operation {
            Operation::Put { key: index, value_len, ttl_ms } => {
                let version = self.take_version();
                let data = value(version, *value_len);
                let expires_at_ms = ttl_ms.map(|ttl| now_ms + ttl);
                check(self.engine().put(key(*index), data.clone(), version, expires_at_ms).await, "put")?;
                self.oracle.insert(*index, Written { value: Some(data), version, expires_at_ms });
            }
            Operation::Delete { key: index } => {
                let version = self.take_version();
                check(self.engine().delete(key(*index), version, now_ms).await, "delete")?;
                self.oracle.insert(*index, Written { value: None, version, expires_at_ms: None });
            }
            Operation::Get { key: index } => {
                let found = check(self.engine().get(&key(*index), now_ms).await, "get")?;
                prop_assert_eq!(found, self.live(*index), "get key{:02} at {}", index, now_ms);
                // The raw entry agrees: the live one exactly, or something dead (or nothing, once
                // compaction purged it).
                let entry = check(self.engine().get_entry(&key(*index)).await, "get_entry")?;
                match self.live(*index) {
                    Some(live) => {
                        let entry = entry.expect("a live key has an entry");
                        prop_assert_eq!(entry.version, live.version);
                        prop_assert_eq!(entry.data(), Some(&live.value));
                    }
                    None => prop_assert!(
                        entry.as_ref().is_none_or(|entry| entry.is_absent_at(now_ms)),
                        "dead key{:02} has a live entry {:?}",
                        index,
                        entry
                    ),
                }
            }
            Operation::CasAbsent { key: index, value_len, ttl_ms } => {
                let version = self.take_version();
                let data = value(version, *value_len);
                let expires_at_ms = ttl_ms.map(|ttl| now_ms + ttl);
                let outcome = check(
                    self.engine()
                        .compare_and_swap(
                            key(*index),
                            Expected::Absent,
                            data.clone(),
                            version,
                            expires_at_ms,
                            now_ms,
                        )
                        .await,
                    "compare_and_swap",
                )?;
                let expected = match self.live(*index) {
                    Some(live) => CasOutcome::Mismatch { current_version: Some(live.version) },
                    None => CasOutcome::Swapped { version },
                };
                prop_assert_eq!(outcome, expected, "CAS absent on key{:02}", index);
                if outcome == (CasOutcome::Swapped { version }) {
                    self.oracle.insert(*index, Written { value: Some(data), version, expires_at_ms });
                }
            }
            Operation::CasVersion { key: index, value_len, current, other } => {
                let live = self.live(*index);
                let wanted = match &live {
                    Some(live) if *current => live.version,
                    _ => *other,
                };
                let version = self.take_version();
                let data = value(version, *value_len);
                let outcome = check(
                    self.engine()
                        .compare_and_swap(
                            key(*index),
                            Expected::Version(wanted),
                            data.clone(),
                            version,
                            None,
                            now_ms,
                        )
                        .await,
                    "compare_and_swap",
                )?;
                let expected = match live {
                    Some(live) if live.version == wanted => CasOutcome::Swapped { version },
                    live => CasOutcome::Mismatch { current_version: live.map(|live| live.version) },
                };
                prop_assert_eq!(outcome, expected, "CAS version {} on key{:02}", wanted, index);
                if outcome == (CasOutcome::Swapped { version }) {
                    self.oracle.insert(*index, Written { value: Some(data), version, expires_at_ms: None });
                }
            }
            Operation::Scan { start, end, limit, include_dead } => {
                // Empty ranges make the engine panic; `engine_scan_bounds.rs` covers them.
                if !range_is_empty(*start, *end) {
                    self.check_scan(*start, *end, *limit, *include_dead).await?;
                }
            }
            Operation::Advance { ms } => self.now_ms += ms,
            Operation::Flush => check(self.engine().flush().await, "flush")?,
            Operation::Compact => {
                check(self.engine().compact(now_ms).await, "compact")?;
            }
            Operation::CompactAll => {
                check(self.engine().compact_all(now_ms).await, "compact_all")?;
            }
            Operation::Reopen(how) => {
                let engine = self.engine.take().expect("engine is open");
                match how {
                    Reopen::Clean | Reopen::CrashAfterClose => check(engine.close().await, "close")?,
                    Reopen::CrashWithoutClose => {}
                }
                drop(engine);
                if !matches!(how, Reopen::Clean) {
                    self.disk = self.disk.crash(CrashMode::DropUnsynced);
                }
                let engine = check(Engine::open(self.disk.clone(), options()).await, "reopen")?;
                prop_assert_eq!(engine.recovery().torn_tail_bytes, 0, "acknowledged writes only");
                self.engine = Some(engine);
                self.check_every_key().await?;
            }
        }
        Ok(())
    }

    /// Pages through the range and compares what comes back with the oracle.
    async fn check_scan(
        &self,
        start: Bound<u8>,
        end: Bound<u8>,
        limit: usize,
        include_dead: bool,
    ) -> Result<(), TestCaseError> {
        let now_ms = self.now_ms;
        let range = ScanRange { start: start.map(position_of_rank), end: end.map(position_of_rank) };
        let mut page_range = range.clone();
        let mut live = Vec::new();
        let mut previous: Option<Position> = None;
        // Every page but the last moves past at least one stored entry (live, dead or purged
        // later), so the number of pages is bounded by the writes made.
        let pages_max = self.next_version as usize + 2;
        for page_number in 0.. {
            prop_assert!(page_number <= pages_max, "scan does not advance: {} pages", page_number);
            let page = check(self.engine().scan(&page_range, limit, now_ms, include_dead).await, "scan")?;
            prop_assert!(
                page.entries.len() <= limit,
                "page of {} entries, limit {}",
                page.entries.len(),
                limit
            );
            for found in page.entries {
                let position = found.position();
                prop_assert!(
                    previous.as_ref().is_none_or(|previous| position > *previous),
                    "scan not in token order: {:?} after {:?}",
                    position,
                    previous
                );
                previous = Some(position);
                let (found_key, entry) = (found.key, found.entry);
                if entry.is_absent_at(now_ms) {
                    prop_assert!(include_dead, "dead entry {:?} in a live scan", found_key);
                    let index: u8 = std::str::from_utf8(&found_key[3..]).unwrap().parse().unwrap();
                    prop_assert!(self.live(index).is_none(), "scan says {:?} is dead; it is live", found_key);
                    let written = &self.oracle[&index];
                    prop_assert!(entry.version <= written.version, "dead entry from the future");
                } else {
                    let data = entry.data().expect("a live entry has data").clone();
                    live.push((found_key, Versioned { value: data, version: entry.version }));
                }
            }
            match page.next {
                Some(cursor) => {
                    prop_assert!(
                        previous.as_ref().is_none_or(|previous| cursor >= *previous),
                        "the cursor {:?} goes back before {:?}",
                        cursor,
                        previous
                    );
                    page_range = range.after(cursor);
                }
                None => break,
            }
        }
        let expected = self.live_range(start, end);
        prop_assert_eq!(live, expected, "scan {:?}..{:?} limit {} at {}", start, end, limit, now_ms);
        Ok(())
    }

    async fn check_every_key(&self) -> Result<(), TestCaseError> {
        for index in 0..KEY_COUNT {
            let found = check(self.engine().get(&key(index), self.now_ms).await, "get")?;
            prop_assert_eq!(found, self.live(index), "key{:02} at {}", index, self.now_ms);
        }
        self.check_scan(Bound::Unbounded, Bound::Unbounded, 7, false).await
    }
}

/// True when no rank lies in the range.
fn range_is_empty(start: Bound<u8>, end: Bound<u8>) -> bool {
    match (start, end) {
        (Bound::Excluded(start), Bound::Excluded(end)) => start >= end,
        (Bound::Included(start), Bound::Included(end)) => start > end,
        (Bound::Included(start) | Bound::Excluded(start), Bound::Included(end) | Bound::Excluded(end)) => {
            start >= end
        }
        _ => false,
    }
}

async fn run(operations: &[Operation]) -> Result<(), TestCaseError> {
    let mut model = Model::new().await?;
    for operation in operations {
        model.apply(operation).await?;
    }
    model.check_every_key().await?;
    // Whatever the history, a full compaction after every grace period has passed keeps the
    // same visible state.
    model.now_ms += 1_000;
    check(model.engine().flush().await, "flush")?;
    check(model.engine().compact_all(model.now_ms).await, "compact_all")?;
    model.check_every_key().await?;
    model.apply(&Operation::Reopen(Reopen::CrashWithoutClose)).await
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_a_btreemap_oracle(
        operations in proptest::collection::vec(operation(), 1..OPERATIONS_MAX),
    ) {
        block_on(run(&operations))?;
    }
}

/// A fixed history that reaches every structural path at least once, so a regression in one of
/// them fails here even if the random cases happen to miss it.
#[test]
fn engine_model_fixed_history_reaches_flush_compaction_and_reopen() {
    let mut operations = Vec::new();
    for round in 0..6u8 {
        for index in 0..KEY_COUNT {
            let ttl_ms = (index % 5 == 0).then_some(5);
            operations.push(Operation::Put { key: index, value_len: 150, ttl_ms });
            if index % 4 == round % 4 {
                operations.push(Operation::Delete { key: index });
            }
        }
        operations.push(Operation::Advance { ms: 7 });
        operations.push(Operation::Scan {
            start: Bound::Included(3),
            end: Bound::Excluded(31),
            limit: 3,
            include_dead: round % 2 == 0,
        });
        operations.push(Operation::Flush);
        operations.push(Operation::Compact);
        operations.push(Operation::CasAbsent { key: round, value_len: 10, ttl_ms: None });
        operations.push(Operation::CasVersion { key: round + 1, value_len: 10, current: true, other: 0 });
        operations.push(Operation::Reopen(match round % 3 {
            0 => Reopen::Clean,
            1 => Reopen::CrashAfterClose,
            _ => Reopen::CrashWithoutClose,
        }));
    }
    block_on(async {
        let mut model = Model::new().await.unwrap();
        for operation in &operations {
            model.apply(operation).await.unwrap();
        }
        // Tables persist across opens; one more flush adds a table to merge with them.
        assert!(model.engine().stats().tables >= 1, "history should leave tables");
        for index in 0..10 {
            model.apply(&Operation::Put { key: index, value_len: 20, ttl_ms: None }).await.unwrap();
        }
        model.now_ms += 100;
        model.engine().flush().await.unwrap();
        assert!(model.engine().compact_all(model.now_ms).await.unwrap(), "two or more tables to merge");
        assert_eq!(model.engine().stats().tables, 1);
        model.check_every_key().await.unwrap();
    });
}
