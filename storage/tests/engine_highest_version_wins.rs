//! Model-based test of version resolution: puts and deletes with random versions, in random
//! order and with duplicates (the same write again, or another write with the same version),
//! some issued concurrently, mixed with flushes, compactions and reopens (cleanly and after a
//! power loss). The oracle keeps, per key, the highest-ranking entry ever written
//! (`Entry::cmp_precedence`: the highest version, ties broken by content); whatever the arrival
//! order, the engine must agree with it through every read path.
//!
//! Small memtables and WAL segments make a few hundred writes cross every structure; the
//! tombstone grace period is longer than any test, so no delete is ever purged (a purged delete
//! would rightly let an older write back in, which the oracle does not model).

use bytes::Bytes;
use futures_executor::block_on;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use ringkv_storage::disk::memory::{CrashMode, MemDisk};
use ringkv_storage::{Engine, EngineOptions, Entry, ScanRange, SyncMode, Versioned, WriteOutcome};
use std::collections::BTreeMap;

const KEY_COUNT: u8 = 12;
const VERSION_MAX: u64 = 40;
const NOW_MS: u64 = 1_000;

fn options() -> EngineOptions {
    EngineOptions {
        sync: SyncMode::Always,
        memtable_bytes_max: 4 << 10,
        block_cache_bytes: 16 << 10,
        row_cache_bytes: 4 << 10,
        wal_segment_bytes_max: 8 << 10,
        compaction_width_min: 2,
        compaction_width_max: 3,
        ..EngineOptions::default()
    }
}

fn key(index: u8) -> Bytes {
    Bytes::from(format!("key{index:02}"))
}

#[derive(Clone, Debug)]
struct Write {
    key: u8,
    version: u64,
    /// `None` for a delete; else one of a few values, so equal versions with different
    /// contents occur and the tie-break shows.
    value: Option<u8>,
}

impl Write {
    fn entry(&self) -> Entry {
        match self.value {
            Some(value) => {
                let data = Bytes::from(format!("v{value}-").repeat(1 + usize::from(value) * 20));
                Entry::live(self.version, data, None)
            }
            None => Entry::tombstone(self.version, NOW_MS),
        }
    }
}

#[derive(Clone, Debug)]
enum Reopen {
    Clean,
    CrashAfterClose,
    CrashWithoutClose,
}

#[derive(Clone, Debug)]
enum Operation {
    Write(Write),
    /// Writes in flight at once, resolving in whatever order the engine lets them.
    Concurrent(Vec<Write>),
    Get(u8),
    Flush,
    Compact,
    CompactAll,
    Reopen(Reopen),
}

fn write() -> impl Strategy<Value = Write> {
    (0..KEY_COUNT, 1..=VERSION_MAX, proptest::option::weighted(0.8, 0u8..3))
        .prop_map(|(key, version, value)| Write { key, version, value })
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        40 => write().prop_map(Operation::Write),
        6 => proptest::collection::vec(write(), 2..8).prop_map(Operation::Concurrent),
        10 => (0..KEY_COUNT).prop_map(Operation::Get),
        4 => Just(Operation::Flush),
        3 => Just(Operation::Compact),
        1 => Just(Operation::CompactAll),
        1 => Just(Operation::Reopen(Reopen::Clean)),
        1 => Just(Operation::Reopen(Reopen::CrashAfterClose)),
        1 => Just(Operation::Reopen(Reopen::CrashWithoutClose)),
    ]
}

fn check<T>(result: ringkv_storage::Result<T>, what: &str) -> Result<T, TestCaseError> {
    result.map_err(|error| TestCaseError::fail(format!("{what} failed: {error}")))
}

struct Model {
    disk: MemDisk,
    engine: Option<Engine<MemDisk>>,
    /// The highest-ranking entry written to each key.
    oracle: BTreeMap<u8, Entry>,
}

impl Model {
    fn engine(&self) -> &Engine<MemDisk> {
        self.engine.as_ref().expect("engine is open")
    }

    /// Records `write` in the oracle; whether it outranks what the key held.
    fn record(&mut self, write: &Write) -> bool {
        let entry = write.entry();
        match self.oracle.get(&write.key) {
            Some(stored) if !entry.supersedes(stored) => false,
            _ => {
                self.oracle.insert(write.key, entry);
                true
            }
        }
    }

    fn live(&self, index: u8) -> Option<Versioned> {
        let entry = self.oracle.get(&index)?;
        entry.data().map(|data| Versioned { value: data.clone(), version: entry.version })
    }

    async fn apply(&mut self, operation: &Operation) -> Result<(), TestCaseError> {
        match operation {
            Operation::Write(write) => {
                let current = self.oracle.get(&write.key).map(|entry| entry.version);
                let outcome = check(self.engine().write(key(write.key), write.entry()).await, "write")?;
                let expected = if self.record(write) {
                    WriteOutcome::Applied { version: write.version }
                } else {
                    WriteOutcome::Superseded {
                        version: write.version,
                        current_version: current.expect("superseded by something"),
                    }
                };
                prop_assert_eq!(outcome, expected, "{:?}", write);
            }
            Operation::Concurrent(writes) => {
                let engine = self.engine();
                let futures = writes.iter().map(|write| engine.write(key(write.key), write.entry()));
                for outcome in futures_util::future::join_all(futures).await {
                    check(outcome, "concurrent write")?;
                }
                for write in writes {
                    self.record(write);
                }
            }
            Operation::Get(index) => self.check_key(*index).await?,
            Operation::Flush => check(self.engine().flush().await, "flush")?,
            Operation::Compact => {
                check(self.engine().compact(NOW_MS).await, "compact")?;
            }
            Operation::CompactAll => {
                check(self.engine().compact_all(NOW_MS).await, "compact_all")?;
            }
            Operation::Reopen(how) => {
                let engine = self.engine.take().expect("engine is open");
                if !matches!(how, Reopen::CrashWithoutClose) {
                    check(engine.close().await, "close")?;
                }
                drop(engine);
                if !matches!(how, Reopen::Clean) {
                    // Every write was acknowledged after its sync: a power loss loses none.
                    self.disk = self.disk.crash(CrashMode::DropUnsynced);
                }
                self.engine = Some(check(Engine::open(self.disk.clone(), options()).await, "reopen")?);
                self.check_everything().await?;
            }
        }
        Ok(())
    }

    /// Every read path agrees with the oracle on one key.
    async fn check_key(&self, index: u8) -> Result<(), TestCaseError> {
        let engine = self.engine();
        let entry = check(engine.get_entry(&key(index)).await, "get_entry")?;
        prop_assert_eq!(entry.as_ref(), self.oracle.get(&index), "get_entry key{:02}", index);
        let found = check(engine.get(&key(index), NOW_MS).await, "get")?;
        prop_assert_eq!(&found, &self.live(index), "get key{:02}", index);
        // The read above cached every block it needed, so memory answers now; and it waited
        // for what it found to be durable, so nothing is left to wait for.
        let now = engine.read_now(&key(index), NOW_MS, |found, unsettled| {
            assert!(unsettled.is_none(), "get resolved before what it found was durable");
            found.map(|(value, version)| Versioned { value: Bytes::copy_from_slice(value), version })
        });
        let now = check(now.expect("the blocks were just read"), "read_now")?;
        prop_assert_eq!(now, found, "read_now key{:02}", index);
        Ok(())
    }

    async fn check_everything(&self) -> Result<(), TestCaseError> {
        for index in 0..KEY_COUNT {
            self.check_key(index).await?;
        }
        // A scan, dead entries included, pages through exactly the oracle.
        let mut scanned = BTreeMap::new();
        let mut range = ScanRange::all();
        loop {
            let page = check(self.engine().scan(&range, 5, NOW_MS, true).await, "scan")?;
            for found in page.entries {
                prop_assert!(scanned.insert(found.key, found.entry).is_none(), "a key scanned twice");
            }
            match page.next {
                Some(cursor) => range = ScanRange::all().after(cursor),
                None => break,
            }
        }
        let expected: BTreeMap<Bytes, Entry> =
            self.oracle.iter().map(|(index, entry)| (key(*index), entry.clone())).collect();
        prop_assert_eq!(scanned, expected, "scan");
        // Nothing is ever purged here, so the highest version held is the oracle's.
        let max_version = self.oracle.values().map(|entry| entry.version).max().unwrap_or(0);
        prop_assert_eq!(self.engine().max_version(), max_version, "max_version");
        Ok(())
    }
}

async fn run(operations: &[Operation]) -> Result<(), TestCaseError> {
    let disk = MemDisk::new();
    let engine = check(Engine::open(disk.clone(), options()).await, "open")?;
    let mut model = Model { disk, engine: Some(engine), oracle: BTreeMap::new() };
    for operation in operations {
        model.apply(operation).await?;
    }
    model.check_everything().await?;
    model.apply(&Operation::CompactAll).await?;
    model.check_everything().await?;
    model.apply(&Operation::Reopen(Reopen::CrashWithoutClose)).await
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_keeps_the_highest_version_whatever_the_arrival_order(
        operations in proptest::collection::vec(operation(), 1..250),
    ) {
        block_on(run(&operations))?;
    }
}

/// The same writes in two opposite orders, each spread over tables and memtables, end in the
/// same state.
#[test]
fn engine_state_does_not_depend_on_the_order_of_writes() {
    let writes: Vec<Write> = (0..120u64)
        .map(|index| Write {
            key: (index * 7 % u64::from(KEY_COUNT)) as u8,
            version: index * 13 % VERSION_MAX + 1,
            value: (index % 5 != 0).then_some((index % 3) as u8),
        })
        .collect();
    let final_state = |writes: Vec<Write>| {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), options()).await.unwrap();
            for (index, write) in writes.iter().enumerate() {
                engine.write(key(write.key), write.entry()).await.unwrap();
                if index % 25 == 24 {
                    engine.flush().await.unwrap();
                }
            }
            let mut state = Vec::new();
            for index in 0..KEY_COUNT {
                state.push(engine.get_entry(&key(index)).await.unwrap());
            }
            state
        })
    };
    let reversed: Vec<Write> = writes.iter().rev().cloned().collect();
    let forward = final_state(writes);
    assert!(forward.iter().all(Option::is_some));
    assert_eq!(forward, final_state(reversed));
}
