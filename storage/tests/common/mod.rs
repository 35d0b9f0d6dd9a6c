//! Shared pieces of the crash tests: a disk that records what a power loss after any chosen
//! operation would leave, a history of writes with its "no holes" check, and a driver that keeps
//! many engine futures in flight at once.

use bytes::Bytes;
use futures_util::task::noop_waker;
use ringkv_storage::disk::memory::{CrashMode, MemDisk, MemFile};
use ringkv_storage::manifest::{self, Manifest};
use ringkv_storage::{Disk, DiskFile, Engine, EngineOptions, RecoveryReport, ScanRange};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// One operation on the disk, as the crash-point predicate sees it.
#[derive(Clone, Debug)]
pub struct DiskOperation {
    /// Operations counted from 0 since the disk was made.
    pub number: u64,
    pub kind: &'static str,
    pub file: String,
}

/// The writes acknowledged so far, kept current by the test as their futures resolve.
#[derive(Default)]
pub struct Acknowledged {
    through: Cell<usize>,
    writes: RefCell<BTreeSet<usize>>,
}

impl Acknowledged {
    /// Records that write `index` was acknowledged.
    pub fn record(&self, index: usize) {
        self.through.set(self.through.get().max(index + 1));
        self.writes.borrow_mut().insert(index);
    }

    /// One past the highest acknowledged index: every write before it must survive a crash,
    /// because the WAL keeps writes in sequence order.
    pub fn through(&self) -> usize {
        self.through.get()
    }

    pub fn writes(&self) -> Vec<usize> {
        self.writes.borrow().iter().copied().collect()
    }
}

/// What a power loss right after operation `after` would have left, and which writes had been
/// acknowledged by then.
pub struct Snapshot {
    pub after: DiskOperation,
    pub mode: CrashMode,
    pub disk: MemDisk,
    /// One past the highest acknowledged write index.
    pub acknowledged: usize,
    /// Every acknowledged write index.
    pub acknowledged_writes: Vec<usize>,
}

type CrashPredicate = Box<dyn Fn(&DiskOperation) -> bool>;

struct Recorder {
    inner: MemDisk,
    operations: Cell<u64>,
    crash_after: RefCell<CrashPredicate>,
    modes: Vec<CrashMode>,
    snapshots: RefCell<Vec<Snapshot>>,
    acknowledged: Rc<Acknowledged>,
    /// Make every operation return `Pending` once first, so concurrent callers interleave.
    yield_first: bool,
}

/// A [`MemDisk`] that counts operations and, after each one the predicate picks, takes one
/// [`Snapshot`] per crash mode.
#[derive(Clone)]
pub struct CrashPointDisk {
    recorder: Rc<Recorder>,
}

pub struct CrashPointFile {
    inner: MemFile,
    name: String,
    recorder: Rc<Recorder>,
}

/// Returns `Pending` once (waking itself), then `Ready`: a scheduling point.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            context.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Recorder {
    async fn before(&self) {
        if self.yield_first {
            YieldNow(false).await;
        }
    }

    fn after(&self, kind: &'static str, file: &str) {
        let number = self.operations.get();
        self.operations.set(number + 1);
        let operation = DiskOperation { number, kind, file: file.to_string() };
        if (self.crash_after.borrow())(&operation) {
            let mut snapshots = self.snapshots.borrow_mut();
            for &mode in &self.modes {
                snapshots.push(Snapshot {
                    after: operation.clone(),
                    mode,
                    disk: self.inner.crash(mode),
                    acknowledged: self.acknowledged.through(),
                    acknowledged_writes: self.acknowledged.writes(),
                });
            }
        }
    }
}

impl CrashPointDisk {
    /// A fresh disk taking a snapshot in each of `modes` after every operation `crash_after`
    /// picks. `acknowledged` is read at each snapshot.
    pub fn new(
        modes: Vec<CrashMode>,
        acknowledged: Rc<Acknowledged>,
        crash_after: impl Fn(&DiskOperation) -> bool + 'static,
    ) -> Self {
        let recorder = Recorder {
            inner: MemDisk::new(),
            operations: Cell::new(0),
            crash_after: RefCell::new(Box::new(crash_after)),
            modes,
            snapshots: RefCell::new(Vec::new()),
            acknowledged,
            yield_first: false,
        };
        CrashPointDisk { recorder: Rc::new(recorder) }
    }

    /// Like [`CrashPointDisk::new`], but every operation yields once before it runs.
    pub fn yielding(
        modes: Vec<CrashMode>,
        acknowledged: Rc<Acknowledged>,
        crash_after: impl Fn(&DiskOperation) -> bool + 'static,
    ) -> Self {
        let disk = Self::new(modes, acknowledged, crash_after);
        let mut recorder = Rc::try_unwrap(disk.recorder).ok().expect("not shared yet");
        recorder.yield_first = true;
        CrashPointDisk { recorder: Rc::new(recorder) }
    }

    /// The disk underneath, for fault injection and for crashing it by hand.
    pub fn inner(&self) -> &MemDisk {
        &self.recorder.inner
    }

    /// Operations so far.
    pub fn operations(&self) -> u64 {
        self.recorder.operations.get()
    }

    /// Replaces the predicate choosing crash points.
    pub fn crash_after(&self, crash_after: impl Fn(&DiskOperation) -> bool + 'static) {
        *self.recorder.crash_after.borrow_mut() = Box::new(crash_after);
    }

    pub fn take_snapshots(&self) -> Vec<Snapshot> {
        std::mem::take(&mut self.recorder.snapshots.borrow_mut())
    }
}

impl Disk for CrashPointDisk {
    type File = CrashPointFile;

    async fn create(&self, name: &str) -> io::Result<CrashPointFile> {
        self.recorder.before().await;
        let inner = self.recorder.inner.create(name).await?;
        self.recorder.after("create", name);
        Ok(CrashPointFile { inner, name: name.to_string(), recorder: self.recorder.clone() })
    }

    async fn open(&self, name: &str) -> io::Result<CrashPointFile> {
        self.recorder.before().await;
        let inner = self.recorder.inner.open(name).await?;
        Ok(CrashPointFile { inner, name: name.to_string(), recorder: self.recorder.clone() })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.recorder.before().await;
        self.recorder.inner.remove(name).await?;
        self.recorder.after("remove", name);
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.recorder.before().await;
        self.recorder.inner.rename(from, to).await?;
        self.recorder.after("rename", to);
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        self.recorder.inner.list().await
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.recorder.before().await;
        self.recorder.inner.sync_dir().await?;
        self.recorder.after("sync_dir", ".");
        Ok(())
    }

    async fn yield_point(&self, _pace: ringkv_storage::disk::Pace) {
        self.recorder.before().await;
    }

    fn available_bytes(&self) -> io::Result<Option<u64>> {
        self.recorder.inner.available_bytes()
    }
}

impl DiskFile for CrashPointFile {
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.recorder.before().await;
        self.inner.write_at(offset, data).await?;
        self.recorder.after("write", &self.name);
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        self.inner.read_at(offset, len).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.recorder.before().await;
        self.inner.sync().await?;
        self.recorder.after("sync", &self.name);
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        self.inner.size().await
    }
}

/// The key of slot `index`.
pub fn key(index: usize) -> Bytes {
    Bytes::from(format!("key{index:04}"))
}

/// The value of write number `write`, `len` bytes long, naming the write.
pub fn value(write: usize, len: usize) -> Bytes {
    let stamp = format!("w{write};");
    Bytes::from(stamp.bytes().cycle().take(len.max(stamp.len())).collect::<Vec<u8>>())
}

/// One write of a history: a put (`Some`) or a delete (`None`).
#[derive(Clone, Debug)]
pub struct Write {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

impl Write {
    pub fn put(write: usize, slot: usize, len: usize) -> Self {
        Write { key: key(slot), value: Some(value(write, len)) }
    }

    pub fn delete(slot: usize) -> Self {
        Write { key: key(slot), value: None }
    }

    /// Issues the write with version `write + 1`, so later writes outrank earlier ones.
    pub async fn issue<D: Disk>(&self, engine: &Engine<D>, write: usize) -> ringkv_storage::Result<()> {
        let version = write as u64 + 1;
        let outcome = match &self.value {
            Some(value) => engine.put(self.key.clone(), value.clone(), version, None).await?,
            None => engine.delete(self.key.clone(), version, 0).await?,
        };
        assert!(outcome.is_applied(), "write {write} is the newest of its key");
        Ok(())
    }
}

/// The live state of an engine: every live key and its value, read by paging through a scan and
/// cross-checked key by key with point reads.
pub async fn read_state<D: Disk>(engine: &Engine<D>) -> ringkv_storage::Result<BTreeMap<Bytes, Bytes>> {
    let mut state = BTreeMap::new();
    let mut range = ScanRange::all();
    loop {
        let page = engine.scan(&range, 64, 0, false).await?;
        for found in page.entries {
            let data = found.entry.data().expect("live entries have data").clone();
            assert!(state.insert(found.key, data).is_none(), "scan returned a key twice");
        }
        match page.next {
            Some(cursor) => range = ScanRange::all().after(cursor),
            None => break,
        }
    }
    for (key, data) in &state {
        let found = engine.get(key, 0).await?.expect("a scanned key is readable");
        assert_eq!(&found.value, data, "get and scan disagree on {key:?}");
    }
    Ok(state)
}

/// The live state after the first `count` writes.
pub fn state_after(writes: &[Write], count: usize) -> BTreeMap<Bytes, Bytes> {
    let mut state = BTreeMap::new();
    for write in &writes[..count] {
        match &write.value {
            Some(value) => state.insert(write.key.clone(), value.clone()),
            None => state.remove(&write.key),
        };
    }
    state
}

/// The "no holes" check: the smallest `k >= acknowledged` such that `state` is exactly the state
/// after the first `k` writes, or a description of why there is none.
pub fn prefix_length(
    writes: &[Write],
    state: &BTreeMap<Bytes, Bytes>,
    acknowledged: usize,
) -> Result<usize, String> {
    let mut expected = state_after(writes, acknowledged);
    let mut found = None;
    for count in acknowledged..=writes.len() {
        if count > acknowledged {
            let write = &writes[count - 1];
            match &write.value {
                Some(value) => expected.insert(write.key.clone(), value.clone()),
                None => expected.remove(&write.key),
            };
        }
        if &expected == state {
            found = Some(count);
            break;
        }
    }
    found.ok_or_else(|| {
        let acknowledged_state = state_after(writes, acknowledged);
        let missing: Vec<_> = acknowledged_state
            .iter()
            .filter(|(key, value)| state.get(*key) != Some(*value))
            .map(|(key, _)| key)
            .take(5)
            .collect();
        format!(
            "recovered {} keys; no prefix of at least {acknowledged} of the {} writes matches \
             (keys differing from the acknowledged state, first few: {missing:?})",
            state.len(),
            writes.len()
        )
    })
}

/// Table files of `disk` that its manifest does not list, plus a leftover temporary manifest:
/// what opening the engine must remove.
pub async fn expected_orphans(disk: &MemDisk) -> usize {
    let listed: Vec<u64> = Manifest::read(disk)
        .await
        .expect("manifest readable")
        .map(|manifest| manifest.tables.iter().map(|table| table.id).collect())
        .unwrap_or_default();
    disk.file_names()
        .iter()
        .filter(|name| {
            manifest::parse_table_file_name(name).is_some_and(|id| !listed.contains(&id))
                || name.as_str() == manifest::MANIFEST_TEMPORARY_FILE
        })
        .count()
}

/// What reopening after a crash gave.
pub struct Recovered {
    pub engine: Engine<MemDisk>,
    pub prefix: usize,
    pub report: RecoveryReport,
}

/// Opens the engine on `disk` (after a crash) and checks the recovery contract: it opens, every
/// acknowledged write is there, the state is a prefix of the history, and the files an
/// interrupted flush or compaction left behind are removed.
pub async fn reopen_and_check(
    disk: &MemDisk,
    options: EngineOptions,
    writes: &[Write],
    acknowledged: usize,
    context: &str,
) -> Recovered {
    let orphans = expected_orphans(disk).await;
    let engine = Engine::open(disk.clone(), options)
        .await
        .unwrap_or_else(|error| panic!("{context}: reopening failed: {error}"));
    let report = engine.recovery().clone();
    let state =
        read_state(&engine).await.unwrap_or_else(|error| panic!("{context}: reading failed: {error}"));
    let prefix = prefix_length(writes, &state, acknowledged).unwrap_or_else(|why| panic!("{context}: {why}"));
    assert_eq!(report.orphans_removed, orphans, "{context}: orphans removed ({report:?})");
    let leftovers = expected_orphans(disk).await;
    assert_eq!(leftovers, 0, "{context}: orphan files still there: {:?}", disk.file_names());
    Recovered { engine, prefix, report }
}

/// Like [`reopen_and_check`] for histories whose sequence order is not known (concurrent writers
/// behind write stalls): every acknowledged write is there, and every key holds exactly the value
/// of its write (each write has its own key). Returns the number of writes recovered.
pub async fn reopen_and_check_subset(
    disk: &MemDisk,
    options: EngineOptions,
    writes: &[Write],
    acknowledged: &[usize],
    context: &str,
) -> usize {
    let by_key: BTreeMap<&Bytes, &Write> = writes.iter().map(|write| (&write.key, write)).collect();
    assert_eq!(by_key.len(), writes.len(), "each write needs its own key");
    let orphans = expected_orphans(disk).await;
    let engine = Engine::open(disk.clone(), options)
        .await
        .unwrap_or_else(|error| panic!("{context}: reopening failed: {error}"));
    assert_eq!(engine.recovery().orphans_removed, orphans, "{context}: orphans removed");
    let state =
        read_state(&engine).await.unwrap_or_else(|error| panic!("{context}: reading failed: {error}"));
    for &index in acknowledged {
        let write = &writes[index];
        assert_eq!(state.get(&write.key), write.value.as_ref(), "{context}: acknowledged write {index}");
    }
    for (key, value) in &state {
        let write = by_key.get(key).unwrap_or_else(|| panic!("{context}: {key:?} was never written"));
        assert_eq!(Some(value), write.value.as_ref(), "{context}: {key:?} holds a value never written");
    }
    state.len()
}

/// Drives `futures` to completion on this thread, polling every pending one in index order on
/// each round (so the first poll of each happens in index order), and returns their outputs.
/// Panics if 100 000 rounds does not finish them: something waits forever.
pub fn drive_in_order<'a, T>(futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
    let waker = noop_waker();
    let mut context = Context::from_waker(&waker);
    let mut futures: Vec<_> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut pending = futures.len();
    for _round in 0..100_000 {
        if pending == 0 {
            return outputs.into_iter().map(|output| output.expect("finished")).collect();
        }
        for (index, slot) in futures.iter_mut().enumerate() {
            if let Some(future) = slot {
                if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                    outputs[index] = Some(output);
                    *slot = None;
                    pending -= 1;
                }
            }
        }
    }
    let stuck: Vec<usize> = (0..futures.len()).filter(|&index| futures[index].is_some()).collect();
    panic!(
        "futures {stuck:?} of {} still pending after 100 000 rounds: something waits forever",
        futures.len()
    );
}
