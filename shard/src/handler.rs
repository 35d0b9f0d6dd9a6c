//! [`Handler`]: carries out one [`Operation`] on this shard's storage engine.
//!
//! ```text
//!  Operation ─▶ Engine write_with/compare_and_swap_with/get ─▶ Outcome
//!                 └─ closure: stamp a version (HybridClock)  └─ StorageError ─▶ Failure (ErrorCode)
//!  put / delete ─▶ Engine write_now (applied in place) ─▶ PendingWrite ─▶ acknowledged ─▶ Outcome
//!  Scan ─▶ Engine::scan pages (token order) until the limit or the byte cap ─▶ this shard's ScanPage
//! ```
//!
//! Only the shard that owns a key's token runs its operations, so one clock versions every
//! write of a key and the engine's compare-and-swap is atomic for it. The version is stamped
//! inside the engine's write step (the closure), after any wait for memtable room, so writes
//! apply in the order of their versions; the clock first observes the newest version the engine
//! holds for the key, so a write always lands above it.

use std::ops::Bound;
use std::rc::Rc;

use bytes::Bytes;
use ringkv_storage::{
    AtomicOutcome, CasOutcome, Disk, Engine, Entry, KeyHash, PendingWrite, Position, Prefetch, ScanRange,
    StorageError, Unsettled, Value,
};
use ringkv_wire::scan::page_has_room;
use ringkv_wire::{
    ErrorCode, Expected, Failure, LentValue, Operation, OperationRef, Outcome, Scan, ScanEnd, ScanEntry,
    ScanPage, ScanStart,
};

use crate::clock::HybridClock;
use ringkv_io::TaskQueueHandle;

/// The value of `entry` a reader at `now_ms` sees, with its version and expiry: `None` for a
/// tombstone or an expired value.
pub fn live_at(entry: &Entry, now_ms: u64) -> Option<LentValue<'_>> {
    match &entry.value {
        Value::Live { data, expires_at_ms } if expires_at_ms.is_none_or(|at| at > now_ms) => {
            Some(LentValue { value: &data[..], version: entry.version, expires_at_ms: *expires_at_ms })
        }
        _ => None,
    }
}

/// Runs operations on one engine, versioning writes with one clock.
pub struct Handler<D: Disk> {
    engine: Rc<Engine<D>>,
    clock: HybridClock,
    /// The wall clock, in ms since the Unix epoch; passed in so tests can pin time.
    now_ms: fn() -> u64,
    /// Where [`Handler::scan_in_queue`] runs scans; `None` runs them in the caller's queue.
    scan_queue: Option<TaskQueueHandle>,
}

impl<D: Disk> Handler<D> {
    /// A handler for `engine`, versioning with `clock` and reading time from `now_ms`.
    pub fn new(engine: Rc<Engine<D>>, clock: HybridClock, now_ms: fn() -> u64) -> Self {
        Handler { engine, clock, now_ms, scan_queue: None }
    }

    /// The wall-clock time, in milliseconds since the Unix epoch, from the handler's clock.
    pub fn now_ms(&self) -> u64 {
        (self.now_ms)()
    }

    /// Runs scans in `queue` (see [`ringkv_io::scan_queue`]) when they go through
    /// [`Handler::scan_in_queue`].
    pub fn with_scan_queue(mut self, queue: TaskQueueHandle) -> Self {
        self.scan_queue = Some(queue);
        self
    }

    /// The queue scans run in, if the handler has one.
    pub fn scan_queue(&self) -> Option<TaskQueueHandle> {
        self.scan_queue
    }

    /// The engine.
    pub fn engine(&self) -> &Rc<Engine<D>> {
        &self.engine
    }

    /// The clock that versions this shard's writes (the cluster coordinator stamps with it too).
    pub fn clock(&self) -> &HybridClock {
        &self.clock
    }

    /// A read of `key` answered in place when memory holds it: `read` is lent the live value,
    /// its version and expiry (or `None`), or the failure, and its result returned. `None` when
    /// the read needs the disk (run it with [`Handler::execute`] then).
    pub fn read_now<R>(
        &self,
        key: &[u8],
        read: impl FnOnce(Result<Option<LentValue<'_>>, Failure>, Option<Unsettled>) -> R,
    ) -> Option<R> {
        self.read_now_at(key, None, (self.now_ms)(), read)
    }

    /// The engine's hash of `key`, whose token the caller computed, for a read ahead (see
    /// [`Engine::read_hash`]).
    pub fn read_hash(&self, key: &[u8], token: u64) -> Option<KeyHash> {
        self.engine.read_hash(key, token)
    }

    /// [`Handler::read_hash`] for a put or delete (see [`Engine::write_hash`]).
    pub fn write_hash(&self, key: &[u8], token: u64) -> Option<KeyHash> {
        self.engine.write_hash(key, token)
    }

    /// Prefetches what a read of the key of `hash` will touch at `stage` (see
    /// [`Engine::prefetch`]).
    pub fn prefetch(&self, hash: KeyHash, stage: Prefetch) {
        self.engine.prefetch(hash, stage);
    }

    /// [`Handler::read_now`] as a reader at `now_ms` (from [`Handler::now_ms`]) sees it: the
    /// requests of one batch can share one clock read.
    /// `hash` is the key's [`Handler::read_hash`], when the caller has it.
    pub fn read_now_at<R>(
        &self,
        key: &[u8],
        hash: Option<KeyHash>,
        now_ms: u64,
        read: impl FnOnce(Result<Option<LentValue<'_>>, Failure>, Option<Unsettled>) -> R,
    ) -> Option<R> {
        let mut read = Some(read);
        let mut lend = |found: Result<Option<LentValue<'_>>, Failure>, unsettled| {
            let read = read.take().expect("a read is answered once");
            read(found, unsettled)
        };
        let answered = self.engine.entry_now_hashed(key, hash, |entry, unsettled| {
            let found = entry.and_then(|entry| live_at(entry, now_ms));
            if let Some(found) = &found {
                self.clock.observe(found.version);
            }
            // A tombstone not durable yet hides the key only until a crash takes it back: a
            // read that finds nothing because of it waits for it too.
            lend(Ok(found), unsettled)
        })?;
        Some(match answered {
            Ok(result) => result,
            Err(error) => lend(Err(failure_of(&error)), None),
        })
    }

    /// Resolves once what a read answered in place found is durable (see [`Unsettled`]); a
    /// failure when the WAL failed first: the read must then be answered with it instead.
    pub async fn settled(&self, read: Unsettled) -> Result<(), Failure> {
        self.engine.settled(read).await.map_err(|error| failure_of(&error))
    }

    /// Carries out `operation`; resolves when a write is acknowledged by the engine (after its
    /// fdatasync in the default sync mode).
    pub async fn execute(&self, operation: Operation) -> Result<Outcome, Failure> {
        let now_ms = (self.now_ms)();
        let outcome = match operation {
            Operation::Get { key } => match self.engine.get_durable_entry(&key).await {
                Ok(Some(Entry { version, value: Value::Live { data, expires_at_ms } }))
                    if expires_at_ms.is_none_or(|at| at > now_ms) =>
                {
                    self.clock.observe(version);
                    Ok(Outcome::Value { value: data, version, expires_at_ms })
                }
                Ok(_) => Ok(Outcome::NotFound),
                Err(error) => Err(error),
            },
            Operation::Put { key, value, ttl_ms } => {
                let expires_at_ms = ttl_ms.map(|ttl_ms| now_ms.saturating_add(ttl_ms));
                let value = owned(&value);
                // The engine keeps a stored copy of the key, never this slice of the frame.
                self.engine
                    .write_with(key, |newest| Entry::live(self.stamp(newest, now_ms), value, expires_at_ms))
                    .await
                    // A put a newer entry superseded (one from another node's clock, say) was
                    // still written, then overwritten: last writer wins.
                    .map(|outcome| Outcome::Written { version: outcome.version() })
            }
            Operation::Delete { key } => self
                .engine
                .write_with(key, |newest| Entry::tombstone(self.stamp(newest, now_ms), now_ms))
                .await
                .map(|outcome| Outcome::Written { version: outcome.version() }),
            Operation::CompareAndSwap { key, expected, value, ttl_ms } => {
                let expires_at_ms = ttl_ms.map(|ttl_ms| now_ms.saturating_add(ttl_ms));
                let expected = match expected {
                    Expected::Absent => ringkv_storage::Expected::Absent,
                    Expected::Version(version) => ringkv_storage::Expected::Version(version),
                };
                let value = owned(&value);
                let make_entry = |stored| Entry::live(self.stamp(stored, now_ms), value, expires_at_ms);
                match self.engine.compare_and_swap_with(key, expected, now_ms, make_entry).await {
                    Ok(CasOutcome::Swapped { version }) => Ok(Outcome::Written { version }),
                    Ok(CasOutcome::Mismatch { current_version }) => {
                        if let Some(current) = current_version {
                            self.clock.observe(current);
                        }
                        Ok(Outcome::CasMismatch { current_version })
                    }
                    Ok(CasOutcome::Stale { current_version }) => {
                        // `stamp` versions above the stored entry, so this means a clock bug.
                        return Err(Failure::new(
                            ErrorCode::Internal,
                            format!("compare-and-swap versioned at or below the stored {current_version}"),
                        ));
                    }
                    Err(error) => Err(error),
                }
            }
        };
        outcome.map_err(|error| failure_of(&error))
    }

    /// Starts a put or delete in one synchronous step (see [`Engine::write_now`]): the write is
    /// applied, versioned by this handler's clock, and handed back to wait for with
    /// [`Handler::acknowledged`] before the client is answered. `None` when the operation is
    /// not a put or delete or cannot be decided without waiting: run it with
    /// [`Handler::execute`].
    pub fn write_now(&self, operation: &Operation) -> Option<Result<PendingWrite, Failure>> {
        self.write_now_at(operation.lent()?, None, (self.now_ms)())
    }

    /// [`Handler::write_now`] at `now_ms` (from [`Handler::now_ms`]): the requests of one batch
    /// can share one clock read. Versions still rise past every one handed out before.
    /// `hash` is the key's [`Handler::read_hash`], when the caller has it.
    pub fn write_now_at(
        &self,
        operation: OperationRef<'_>,
        hash: Option<KeyHash>,
        now_ms: u64,
    ) -> Option<Result<PendingWrite, Failure>> {
        let pending = match operation {
            OperationRef::Put { key, value, ttl_ms } => {
                let expires_at_ms = ttl_ms.map(|ttl_ms| now_ms.saturating_add(ttl_ms));
                // The memtable's own copy: the caller's bytes are a slice of a receive buffer.
                let value = Bytes::copy_from_slice(value);
                self.engine.write_now_hashed(key, hash, |newest| {
                    Entry::live(self.stamp(newest, now_ms), value, expires_at_ms)
                })
            }
            OperationRef::Delete { key } => self
                .engine
                .write_now_hashed(key, hash, |newest| Entry::tombstone(self.stamp(newest, now_ms), now_ms)),
            OperationRef::Get { .. } => None,
        }?;
        Some(pending.map_err(|error| failure_of(&error)))
    }

    /// Resolves once `write` (from [`Handler::write_now`]) is acknowledged by the engine (after
    /// its fdatasync in the default sync mode), with the outcome the client is told.
    pub async fn acknowledged(&self, write: PendingWrite) -> Result<Outcome, Failure> {
        match self.engine.acknowledged(write).await {
            // Superseded or not, the write is settled: last writer wins (see `execute`).
            Ok(outcome) => Ok(Outcome::Written { version: outcome.version() }),
            Err(error) => Err(failure_of(&error)),
        }
    }

    /// A new version for a write, above `stored` (the version the engine holds for the key, if
    /// any) and every version this shard's clock has handed out or seen.
    fn stamp(&self, stored: Option<u64>, now_ms: u64) -> u64 {
        if let Some(stored) = stored {
            self.clock.observe(stored);
        }
        self.clock.next_version(now_ms)
    }

    /// Writes every `(key, value)` of `pairs` (distinct keys, all owned by this shard), without
    /// expiry, as one atomic engine write (one WAL record): all or none after a crash, and no
    /// reader of this shard sees some without the others. With `only_if_absent`, only when none
    /// of the keys has a live value. Whether it wrote.
    pub async fn write_atomically(
        &self,
        pairs: Vec<(Bytes, Bytes)>,
        only_if_absent: bool,
    ) -> Result<bool, Failure> {
        let now_ms = (self.now_ms)();
        let (keys, values): (Vec<Bytes>, Vec<Bytes>) =
            pairs.into_iter().map(|(key, value)| (owned(&key), owned(&value))).unzip();
        let make_entries = |stored: &[Option<u64>]| {
            values
                .into_iter()
                .zip(stored)
                .map(|(value, &stored)| Entry::live(self.stamp(stored, now_ms), value, None))
                .collect()
        };
        let only_if_absent_at = only_if_absent.then_some(now_ms);
        match self.engine.write_atomically_with(&keys, only_if_absent_at, make_entries).await {
            Ok(AtomicOutcome::Applied { .. }) => Ok(true),
            Ok(AtomicOutcome::Present { .. }) => Ok(false),
            // `stamp` versions above the stored entries, so this means a clock bug.
            Ok(AtomicOutcome::Stale { current_version, .. }) => Err(Failure::new(
                ErrorCode::Internal,
                format!("an atomic write versioned at or below the stored {current_version}"),
            )),
            Err(error) => Err(failure_of(&error)),
        }
    }

    /// [`Handler::scan`], run in the handler's scan queue when it has one, so that a burst of
    /// scans does not hold back the point requests queued behind it.
    pub async fn scan_in_queue(self: &Rc<Self>, scan: Scan) -> Result<ScanPage, Failure>
    where
        D: 'static,
    {
        let queue = match self.scan_queue {
            Some(queue) if queue != glommio::executor().current_task_queue() => queue,
            _ => return self.scan(&scan).await,
        };
        let handler = self.clone();
        match glommio::spawn_local_into(async move { handler.scan(&scan).await }, queue) {
            Ok(task) => task.await,
            Err(error) => Err(Failure::new(ErrorCode::Internal, format!("starting a scan: {error}"))),
        }
    }

    /// One page of this shard's live keys in `scan`'s range, in token order: at most
    /// `scan.limit` entries, stopping before the page passes `SCAN_PAGE_BYTES_MAX` (but always
    /// taking the first entry). `next_start` is the page's last key when live keys were left
    /// out, so the page covers every live key of this shard up to it; `None` when the range is
    /// finished here.
    ///
    /// The router merges such pages from every shard (see [`crate::router::scan`]). Because
    /// `next_start` is always a stored key, it obeys the key limits and a client can send it back
    /// as the next scan's `after`.
    pub async fn scan(&self, scan: &Scan) -> Result<ScanPage, Failure> {
        let limit = scan.limit as usize;
        let now_ms = (self.now_ms)();
        let mut page = ScanPage::default();
        if scan.is_empty_range() {
            return Ok(page);
        }
        let range = scan_range(scan);
        let mut next = range.clone();
        let mut page_bytes = 0;
        let mut engine_pages = 0;
        loop {
            // One entry more than the page can take, so that whether live keys were left out is
            // known. An engine page may hold fewer live entries than asked (tombstones and
            // expired values count against its sources' limits), hence the loop.
            let wanted = limit - page.entries.len() + 1;
            let engine_page =
                self.engine.scan(&next, wanted, now_ms, false).await.map_err(|error| failure_of(&error))?;
            for found in engine_page.entries {
                let Value::Live { data, .. } = found.entry.value else {
                    // Dead entries are filtered by the engine; nothing to return for one anyway.
                    continue;
                };
                let entry = ScanEntry { key: found.key, value: data, version: found.entry.version };
                if !page_has_room(page.entries.len(), page_bytes, entry.page_bytes(), limit) {
                    // An empty page always has room, so there is a last entry to resume after.
                    page.next_start = page.entries.last().map(|last| last.key.clone());
                    return Ok(page);
                }
                self.clock.observe(entry.version);
                page_bytes += entry.page_bytes();
                page.entries.push(entry);
            }
            match engine_page.next {
                Some(cursor) => {
                    engine_pages += 1;
                    if engine_pages >= SCAN_ENGINE_PAGES_MAX {
                        // A long run of tombstones or expired values: stop the work here, at the
                        // last key looked at. Every live key up to it is in the page (the live
                        // ones past the page's last entry were dead), so the client resumes
                        // after it and pages on.
                        page.next_start = Some(cursor.key);
                        return Ok(page);
                    }
                    next = range.after(cursor);
                }
                None => return Ok(page),
            }
            // A range full of tombstones can take many engine pages.
            glommio::yield_if_needed().await;
        }
    }
}

/// Engine pages one scan request may read, at most: each looks at up to the page's limit (plus
/// one) entries of every memtable and table, dead ones included, so this bounds the work a scan
/// over a long run of tombstones costs before it answers.
pub const SCAN_ENGINE_PAGES_MAX: usize = 16;

/// The engine's range for a scan request.
fn scan_range(scan: &Scan) -> ScanRange {
    let start = match &scan.start {
        ScanStart::Token(token) => Bound::Included(Position::of_token(*token)),
        ScanStart::Key(key) => Bound::Included(Position::of_key(key.clone())),
        ScanStart::After(key) => Bound::Excluded(Position::of_key(key.clone())),
    };
    let end = match &scan.end {
        ScanEnd::Last => Bound::Unbounded,
        ScanEnd::Token(token) => Bound::Excluded(Position::of_token(*token)),
        ScanEnd::Key(key) => Bound::Excluded(Position::of_key(key.clone())),
    };
    ScanRange { start, end }
}

/// A copy of bytes parsed from a frame. Parsed keys and values are slices of the connection's
/// receive buffer; the memtable keeps what it is given for a long time, and a slice would pin
/// the whole buffer it came from.
fn owned(bytes: &Bytes) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

/// The failure a client sees for a storage error.
pub fn failure_of(error: &StorageError) -> Failure {
    let code = match error {
        StorageError::KeyEmpty => ErrorCode::KeyEmpty,
        StorageError::KeyTooLong { .. } => ErrorCode::KeyTooLong,
        StorageError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
        // Writes wait for space to be freed; reads go on.
        StorageError::DiskFull { .. } => ErrorCode::DiskFull,
        // The write's reads kept being overtaken by flushes: worth a retry.
        StorageError::Contended { .. } => ErrorCode::Overloaded,
        // A write or sync failed: the engine refuses writes (fail-stop) until the node is
        // restarted and its disk checked. Not "unavailable": no retry here will help.
        StorageError::Poisoned { .. } | StorageError::Io { .. } => ErrorCode::StorageFailed,
        // The shard is shutting down: the request may succeed elsewhere or later.
        StorageError::Closed => ErrorCode::Unavailable,
        StorageError::ChecksumMismatch { .. }
        | StorageError::Corruption { .. }
        | StorageError::UnsupportedFormat { .. } => ErrorCode::Internal,
    };
    Failure::new(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_storage::disk::memory::MemDisk;
    use ringkv_storage::{EngineOptions, SyncMode};

    fn fixed_now() -> u64 {
        1_000_000
    }

    fn handler() -> Handler<MemDisk> {
        let options = EngineOptions { sync: SyncMode::Always, ..EngineOptions::default() };
        let engine = ringkv_io::run_local("handler-open", Engine::open(MemDisk::new(), options)).unwrap();
        Handler::new(Rc::new(engine), HybridClock::new(3), fixed_now)
    }

    fn key(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn operations_round_trip_with_increasing_versions() {
        let handler = handler();
        ringkv_io::run_local("handler-test", async {
            let put = Operation::Put { key: key("a"), value: key("1"), ttl_ms: None };
            let Ok(Outcome::Written { version: first }) = handler.execute(put).await else { panic!() };
            assert_eq!(HybridClock::node_id(first), 3);
            let read = handler.execute(Operation::Get { key: key("a") }).await.unwrap();
            assert_eq!(read, Outcome::Value { value: key("1"), version: first, expires_at_ms: None });

            let stale = Operation::CompareAndSwap {
                key: key("a"),
                expected: Expected::Version(first + 1),
                value: key("2"),
                ttl_ms: None,
            };
            assert_eq!(
                handler.execute(stale).await.unwrap(),
                Outcome::CasMismatch { current_version: Some(first) }
            );
            let swap = Operation::CompareAndSwap {
                key: key("a"),
                expected: Expected::Version(first),
                value: key("2"),
                ttl_ms: None,
            };
            let Ok(Outcome::Written { version: second }) = handler.execute(swap).await else { panic!() };
            assert!(second > first);

            let Ok(Outcome::Written { version: third }) =
                handler.execute(Operation::Delete { key: key("a") }).await
            else {
                panic!()
            };
            assert!(third > second);
            assert_eq!(handler.execute(Operation::Get { key: key("a") }).await.unwrap(), Outcome::NotFound);
            let absent = Operation::CompareAndSwap {
                key: key("a"),
                expected: Expected::Absent,
                value: key("3"),
                ttl_ms: None,
            };
            assert!(matches!(handler.execute(absent).await.unwrap(), Outcome::Written { .. }));
        });
    }

    #[test]
    fn reads_carry_the_expiry_of_the_value_they_find() {
        let handler = handler();
        ringkv_io::run_local("handler-expiry", async {
            let put = Operation::Put { key: key("t"), value: key("v"), ttl_ms: Some(5_000) };
            let Ok(Outcome::Written { version }) = handler.execute(put).await else { panic!() };
            let expires_at_ms = Some(fixed_now() + 5_000);
            let read = handler.execute(Operation::Get { key: key("t") }).await.unwrap();
            assert_eq!(read, Outcome::Value { value: key("v"), version, expires_at_ms });
            let lent = handler
                .read_now(b"t", |found, _| found.unwrap().map(|found| (found.version, found.expires_at_ms)));
            assert_eq!(lent, Some(Some((version, expires_at_ms))));
            // A compare-and-swap without a TTL leaves a value that never expires.
            let swap = Operation::CompareAndSwap {
                key: key("t"),
                expected: Expected::Version(version),
                value: key("w"),
                ttl_ms: None,
            };
            let Ok(Outcome::Written { version }) = handler.execute(swap).await else { panic!() };
            let read = handler.execute(Operation::Get { key: key("t") }).await.unwrap();
            assert_eq!(read, Outcome::Value { value: key("w"), version, expires_at_ms: None });
        });
    }

    #[test]
    fn atomic_writes_write_every_key_or_none() {
        let handler = handler();
        ringkv_io::run_local("handler-atomic", async {
            let pairs =
                |values: [&'static str; 2]| vec![(key("x"), key(values[0])), (key("y"), key(values[1]))];
            assert_eq!(handler.write_atomically(pairs(["1", "2"]), true).await, Ok(true));
            assert_eq!(handler.write_atomically(pairs(["3", "4"]), true).await, Ok(false));
            let Ok(Outcome::Value { value, .. }) = handler.execute(Operation::Get { key: key("y") }).await
            else {
                panic!()
            };
            assert_eq!(value, key("2"));
            assert_eq!(handler.write_atomically(pairs(["5", "6"]), false).await, Ok(true));
            for (name, expected) in [("x", "5"), ("y", "6")] {
                let Ok(Outcome::Value { value, .. }) =
                    handler.execute(Operation::Get { key: key(name) }).await
                else {
                    panic!()
                };
                assert_eq!(value, key(expected));
            }
        });
    }

    #[test]
    fn writes_land_above_a_stored_version_from_a_clock_far_ahead() {
        let handler = handler();
        ringkv_io::run_local("handler-ahead", async {
            // Versions another node's clock stamped an hour ahead of this one's.
            let ahead = (fixed_now() + 3_600_000) << 22;
            for (name, version) in [("a", ahead), ("b", ahead + 1), ("c", ahead + 2)] {
                handler.engine().put(key(name), key("remote"), version, None).await.unwrap();
            }
            let put = Operation::Put { key: key("a"), value: key("local"), ttl_ms: None };
            let Ok(Outcome::Written { version }) = handler.execute(put).await else { panic!() };
            assert!(version > ahead, "{version} is not above {ahead}");
            let read = handler.execute(Operation::Get { key: key("a") }).await.unwrap();
            assert_eq!(read, Outcome::Value { value: key("local"), version, expires_at_ms: None });
            let Ok(Outcome::Written { version: deleted }) =
                handler.execute(Operation::Delete { key: key("b") }).await
            else {
                panic!()
            };
            assert!(deleted > ahead + 1);
            assert_eq!(handler.execute(Operation::Get { key: key("b") }).await.unwrap(), Outcome::NotFound);
            let swap = Operation::CompareAndSwap {
                key: key("c"),
                expected: Expected::Version(ahead + 2),
                value: key("swapped"),
                ttl_ms: None,
            };
            let Ok(Outcome::Written { version: swapped }) = handler.execute(swap).await else { panic!() };
            assert!(swapped > ahead + 2);
        });
    }

    #[test]
    fn a_clock_that_observes_the_engine_after_a_restart_versions_above_the_disk() {
        let disk = MemDisk::new();
        let ahead = (fixed_now() + 24 * 3_600_000) << 22;
        ringkv_io::run_local("handler-restart", async {
            let engine = Engine::open(disk.clone(), EngineOptions::default()).await.unwrap();
            engine.put(key("early"), key("from before"), ahead, None).await.unwrap();
            engine.flush().await.unwrap();
            engine.put(key("late"), key("from before"), ahead + 1, None).await.unwrap();
            engine.close().await.unwrap();
        });
        // What the shard does at start: open the engine, then the clock observes it.
        let engine =
            ringkv_io::run_local("handler-reopen", Engine::open(disk, EngineOptions::default())).unwrap();
        assert!(
            HybridClock::new(3).next_version(fixed_now()) < ahead,
            "a fresh clock alone would mint below"
        );
        let clock = HybridClock::new(3);
        clock.observe(engine.max_version());
        let handler = Handler::new(Rc::new(engine), clock, fixed_now);
        ringkv_io::run_local("handler-after-restart", async {
            // A key the engine holds nothing for: only the clock keeps the version above.
            let put = Operation::Put { key: key("new"), value: key("v"), ttl_ms: None };
            let Ok(Outcome::Written { version }) = handler.execute(put).await else { panic!() };
            assert!(version > ahead + 1, "{version} is not above {}", ahead + 1);
        });
    }

    #[test]
    fn expired_values_are_not_found() {
        let handler = handler();
        ringkv_io::run_local("handler-ttl", async {
            // The TTL is counted from the pinned "now"; a stored expiry in the past reads as absent.
            handler.engine().put(key("old"), key("v"), 1, Some(fixed_now() - 1)).await.unwrap();
            assert_eq!(handler.execute(Operation::Get { key: key("old") }).await.unwrap(), Outcome::NotFound);
            let put = Operation::Put { key: key("new"), value: key("v"), ttl_ms: Some(60_000) };
            handler.execute(put).await.unwrap();
            assert!(matches!(
                handler.execute(Operation::Get { key: key("new") }).await.unwrap(),
                Outcome::Value { .. }
            ));
        });
    }

    fn scan(start: ScanStart, end: Option<&'static str>, limit: u32) -> Scan {
        Scan { start, end: end.map_or(ScanEnd::Last, ScanEnd::key), limit }
    }

    fn keys_of(page: &ScanPage) -> Vec<Bytes> {
        page.entries.iter().map(|entry| entry.key.clone()).collect()
    }

    /// `names` in scan order: by token, then by bytes.
    fn in_scan_order(names: &[&'static str]) -> Vec<&'static str> {
        let mut names = names.to_vec();
        names.sort_by_key(|name| Position::of_key(key(name)));
        names
    }

    #[test]
    fn scans_run_in_the_scan_queue_and_answer_as_in_place() {
        let base = handler();
        ringkv_io::run_local("handler-scan-queue", async move {
            let queue = ringkv_io::scan_queue();
            let handler = Rc::new(base.with_scan_queue(queue));
            let order = in_scan_order(&["a", "b", "c"]);
            for name in &order {
                handler.engine().put(key(name), key("v"), 1, None).await.unwrap();
            }
            let whole = scan(ScanStart::Token(0), None, 10);
            // Reading the stats resets them.
            glommio::executor().task_queue_stats(queue).unwrap();
            let page = handler.scan_in_queue(whole.clone()).await.unwrap();
            assert_eq!(keys_of(&page), order.iter().map(|name| key(name)).collect::<Vec<_>>());
            assert!(glommio::executor().task_queue_stats(queue).unwrap().queue_selected() > 0);
            assert_eq!(page, handler.scan(&whole).await.unwrap());
            // From inside the queue it runs in place, with the same answer.
            let inner = handler.clone();
            let task =
                glommio::spawn_local_into(async move { inner.scan_in_queue(whole).await }, queue).unwrap();
            assert_eq!(task.await.unwrap(), page);
        });
    }

    #[test]
    fn scan_pages_skip_dead_keys_and_end_at_their_last_key() {
        let handler = handler();
        ringkv_io::run_local("handler-scan", async {
            let order = in_scan_order(&["a", "b", "c", "d", "e", "f", "g", "h"]);
            for name in &order {
                handler.engine().put(key(name), key("v"), 1, None).await.unwrap();
            }
            // A run of tombstones longer than an engine page, and a value already expired.
            for name in &order[1..5] {
                handler.engine().delete(key(name), 2, 0).await.unwrap();
            }
            handler.engine().put(key(order[6]), key("old"), 3, Some(fixed_now() - 1)).await.unwrap();
            let live = |index: usize| key(order[index]);

            let page = handler.scan(&scan(ScanStart::key(order[0]), None, 1)).await.unwrap();
            assert_eq!((keys_of(&page), page.next_start.clone()), (vec![live(0)], Some(live(0))));
            let page = handler.scan(&scan(ScanStart::after(order[0]), None, 2)).await.unwrap();
            assert_eq!((keys_of(&page), page.next_start.clone()), (vec![live(5), live(7)], None));
            let page = handler.scan(&scan(ScanStart::key(order[0]), Some(order[5]), 5)).await.unwrap();
            assert_eq!((keys_of(&page), page.next_start.clone()), (vec![live(0)], None));
            let empty = scan(ScanStart::key(order[5]), Some(order[5]), 5);
            assert_eq!(handler.scan(&empty).await.unwrap(), ScanPage::default());
            assert_eq!(page.entries[0].value, key("v"));
            assert_eq!(page.entries[0].version, 1);
            // By token: the whole ring, and a span holding only the first key's token.
            let page = handler.scan(&scan(ScanStart::Token(0), None, 10)).await.unwrap();
            assert_eq!(keys_of(&page), vec![live(0), live(5), live(7)]);
            let first = ringkv_wire::token::token(order[0].as_bytes());
            let only_first =
                Scan { start: ScanStart::Token(first), end: ScanEnd::Token(first + 1), limit: 10 };
            assert_eq!(keys_of(&handler.scan(&only_first).await.unwrap()), vec![live(0)]);
        });
    }

    #[test]
    fn a_scan_over_a_long_tombstone_run_stops_its_work_and_pages_on() {
        let handler = handler();
        ringkv_io::run_local("handler-scan-tombstones", async {
            let names: Vec<String> = (0..400).map(|index| format!("key-{index}")).collect();
            let mut order: Vec<Bytes> = names.iter().map(|name| Bytes::from(name.clone())).collect();
            order.sort_by_key(|name| Position::of_key(name.clone()));
            for name in &order {
                handler.engine().put(name.clone(), key("v"), 1, None).await.unwrap();
            }
            // Everything but the last key in scan order deleted: a run of 399 tombstones.
            for name in &order[..order.len() - 1] {
                handler.engine().delete(name.clone(), 2, 0).await.unwrap();
            }
            let last = order.last().unwrap().clone();
            let mut start = ScanStart::Token(0);
            let mut requests = 0;
            let found = loop {
                requests += 1;
                assert!(requests <= order.len(), "paging made no progress");
                let page =
                    handler.scan(&Scan { start: start.clone(), end: ScanEnd::Last, limit: 1 }).await.unwrap();
                if !page.entries.is_empty() {
                    break keys_of(&page);
                }
                let next = page.next_start.expect("an empty page cut short names where to resume");
                start = ScanStart::After(next);
            };
            assert_eq!(found, vec![last]);
            assert!(requests > 1, "one request went through the whole tombstone run");
        });
    }

    #[test]
    fn scan_pages_stop_at_the_byte_cap_but_always_take_one_entry() {
        use ringkv_wire::limits::VALUE_BYTES_MAX;
        let handler = handler();
        ringkv_io::run_local("handler-scan-bytes", async {
            let large = Bytes::from(vec![7u8; 400 * 1024]);
            let order = in_scan_order(&["a", "b", "c", "d"]);
            for name in &order {
                handler.engine().put(key(name), large.clone(), 1, None).await.unwrap();
            }
            let page = handler.scan(&scan(ScanStart::key(order[0]), None, 100)).await.unwrap();
            let first_two = vec![key(order[0]), key(order[1])];
            assert_eq!((keys_of(&page), page.next_start.clone()), (first_two, Some(key(order[1]))));
            let page = handler.scan(&scan(ScanStart::after(order[1]), None, 100)).await.unwrap();
            assert_eq!((keys_of(&page), page.next_start), (vec![key(order[2]), key(order[3])], None));
        });
        let handler = self::handler();
        ringkv_io::run_local("handler-scan-largest", async {
            let order = in_scan_order(&["x", "y"]);
            for name in &order {
                handler
                    .engine()
                    .put(key(name), Bytes::from(vec![8u8; VALUE_BYTES_MAX]), 1, None)
                    .await
                    .unwrap();
            }
            let page = handler.scan(&scan(ScanStart::Token(0), None, 100)).await.unwrap();
            assert_eq!((keys_of(&page), page.next_start), (vec![key(order[0])], Some(key(order[0]))));
            let page = handler.scan(&scan(ScanStart::after(order[0]), None, 100)).await.unwrap();
            assert_eq!((keys_of(&page), page.next_start), (vec![key(order[1])], None));
        });
    }

    #[test]
    fn storage_errors_map_to_codes() {
        assert_eq!(failure_of(&StorageError::Closed).code, ErrorCode::Unavailable);
        assert_eq!(failure_of(&StorageError::KeyTooLong { len: 300 }).code, ErrorCode::KeyTooLong);
        let full = StorageError::DiskFull { available_bytes: 10, reserve_bytes: 20 };
        assert_eq!(failure_of(&full).code, ErrorCode::DiskFull);
        let poisoned = StorageError::Poisoned { reason: "fdatasync failed".into() };
        assert_eq!(failure_of(&poisoned).code, ErrorCode::StorageFailed);
        let io = StorageError::io("sync", "wal-1", std::io::Error::other("EIO"));
        assert_eq!(failure_of(&io).code, ErrorCode::StorageFailed);
        let corrupt = StorageError::corruption("wal-1", 4096, "bad record");
        let failure = failure_of(&corrupt);
        assert_eq!(failure.code, ErrorCode::Internal);
        assert!(failure.message.contains("wal-1"));
    }
}

/// Every write's future is moved whole into its task (and every request future holding one
/// grows by it), so the rare paths inside (a stall's flush, a group commit's write and sync, a
/// table read before a write) are boxed. These bounds catch a large future creeping back.
#[cfg(test)]
mod future_sizes {
    use super::*;
    use ringkv_io::DmaDisk;
    use std::future::Future;

    fn of_operation<T: 'static, F: Future>(_: impl Fn(&'static T, Operation) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn of_write<F: Future>(_: impl Fn(&'static Engine<DmaDisk>, Bytes) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_write_and_a_request_stay_small() {
        let write = of_write(|engine, key| engine.write_with(key, |_| Entry::tombstone(1, 1)));
        assert!(write <= 1024, "an engine write's future takes {write} bytes");
        let request = of_operation(|handler: &Handler<DmaDisk>, operation| handler.execute(operation));
        assert!(request <= 2048, "a handler request's future takes {request} bytes");
    }
}
