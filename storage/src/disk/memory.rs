//! An in-memory [`Disk`] with fault injection, for tests and the deterministic simulator.
//!
//! It tracks what is durable separately from what is merely written, so a test can "crash" the
//! disk and see exactly what a power loss could leave: [`MemDisk::crash`] keeps synced data and
//! the directory as of the last `sync_dir`, and, depending on [`CrashMode`], drops unsynced
//! writes or keeps them with the last one torn at sector granularity. Sync failures, write
//! failures and bit flips can be injected.

use super::{Disk, DiskFile, Pace, ALIGNMENT};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

/// Granularity at which a torn write is cut: a disk sector.
pub const SECTOR_BYTES: usize = 512;
const _: () = assert!(ALIGNMENT.is_multiple_of(SECTOR_BYTES));

/// What survives a simulated power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only synced data survives.
    DropUnsynced,
    /// Unsynced writes reach the disk in order, but the last one only for its first
    /// `sectors_kept` sectors (a torn write).
    TearLastWrite { sectors_kept: usize },
}

#[derive(Default)]
struct FileData {
    /// Contents as readers see them, including unsynced writes.
    current: Vec<u8>,
    /// Contents as of the last successful sync.
    durable: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes).
    unsynced: Vec<(u64, Vec<u8>)>,
}

#[derive(Default)]
struct Faults {
    /// Whether [`Disk::yield_point`] gives up the executor once (so a test can drop a flush or
    /// a compaction midway), instead of returning at once.
    yields: bool,
    /// Number of syncs that still succeed before every later sync fails.
    syncs_until_failure: Option<u64>,
    /// Number of writes that still succeed before every later write fails.
    writes_until_failure: Option<u64>,
    /// Writes that would take a file past this many bytes fail as a full filesystem does.
    file_bytes_max: Option<u64>,
    /// What [`Disk::available_bytes`] answers.
    available_bytes: Option<u64>,
}

#[derive(Default)]
struct Directory {
    /// Names as readers see them.
    current: BTreeMap<String, Rc<RefCell<FileData>>>,
    /// Names as of the last successful `sync_dir`.
    durable: BTreeMap<String, Rc<RefCell<FileData>>>,
    faults: Faults,
    /// `read_at` calls on any file, for tests that count disk reads.
    reads: u64,
    /// `write_cached_at` calls on any file.
    cached_writes: u64,
    /// Files removed through [`Disk::remove_gently`].
    gentle_removals: Vec<String>,
    /// [`Disk::yield_point`] calls by their pace: deferrable, urgent.
    yield_paces: [u64; 2],
}

/// An in-memory directory. Cloning gives another handle to the same directory.
#[derive(Clone, Default)]
pub struct MemDisk {
    dir: Rc<RefCell<Directory>>,
}

/// A file of a [`MemDisk`].
pub struct MemFile {
    name: String,
    data: Rc<RefCell<FileData>>,
    dir: Rc<RefCell<Directory>>,
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file named {name}"))
}

impl MemDisk {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss: returns a new disk holding what would survive it. Handles to the
    /// old disk keep working but are unrelated to the new one.
    pub fn crash(&self, mode: CrashMode) -> MemDisk {
        let dir = self.dir.borrow();
        let mut survivors = BTreeMap::new();
        for (name, data) in &dir.durable {
            let data = data.borrow();
            let mut contents = data.durable.clone();
            if let CrashMode::TearLastWrite { sectors_kept } = mode {
                let last = data.unsynced.len().saturating_sub(1);
                for (index, (offset, bytes)) in data.unsynced.iter().enumerate() {
                    let keep = if index == last {
                        (sectors_kept * SECTOR_BYTES).min(bytes.len())
                    } else {
                        bytes.len()
                    };
                    write_into(&mut contents, *offset, &bytes[..keep]);
                }
            }
            let file = FileData { current: contents.clone(), durable: contents, unsynced: Vec::new() };
            survivors.insert(name.clone(), Rc::new(RefCell::new(file)));
        }
        let dir = Directory { current: survivors.clone(), durable: survivors, ..Directory::default() };
        MemDisk { dir: Rc::new(RefCell::new(dir)) }
    }

    /// Makes every [`Disk::yield_point`] pend once, as a real executor's yield would, so that a
    /// test can stop polling a flush or a compaction midway and drop it.
    pub fn yield_at_yield_points(&self, yields: bool) {
        self.dir.borrow_mut().faults.yields = yields;
    }

    /// How many [`Disk::yield_point`] calls asked for each pace so far: (deferrable, urgent).
    pub fn yield_paces(&self) -> (u64, u64) {
        let [deferrable, urgent] = self.dir.borrow().yield_paces;
        (deferrable, urgent)
    }

    /// Sets what [`Disk::available_bytes`] answers: free bytes, or `None` for "cannot tell"
    /// (the default). Writes are not limited by it; it stands for a filesystem filling up.
    pub fn set_available_bytes(&self, available: Option<u64>) {
        self.dir.borrow_mut().faults.available_bytes = available;
    }

    /// After `successes` more successful syncs (file or directory), every sync fails.
    pub fn fail_syncs_after(&self, successes: u64) {
        self.dir.borrow_mut().faults.syncs_until_failure = Some(successes);
    }

    /// After `successes` more successful writes, every write fails.
    pub fn fail_writes_after(&self, successes: u64) {
        self.dir.borrow_mut().faults.writes_until_failure = Some(successes);
    }

    /// From now on a write that would take a file past `bytes` fails with
    /// [`io::ErrorKind::StorageFull`] and changes nothing, as on a filesystem with no room left.
    pub fn fail_writes_past(&self, bytes: u64) {
        self.dir.borrow_mut().faults.file_bytes_max = Some(bytes);
    }

    /// Flips one bit of a file, in both its current and durable contents (as bit rot would).
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> io::Result<()> {
        let dir = self.dir.borrow();
        let file = dir.current.get(name).ok_or_else(|| not_found(name))?;
        let mut file = file.borrow_mut();
        let offset = offset as usize;
        if offset >= file.current.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "offset past the end"));
        }
        file.current[offset] ^= 1 << (bit % 8);
        if offset < file.durable.len() {
            file.durable[offset] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Names of the files, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.dir.borrow().current.keys().cloned().collect()
    }

    /// The current length of a file.
    pub fn file_len(&self, name: &str) -> Option<u64> {
        self.dir.borrow().current.get(name).map(|file| file.borrow().current.len() as u64)
    }

    /// Files removed through [`Disk::remove_gently`] so far, in order.
    pub fn gentle_removals(&self) -> Vec<String> {
        self.dir.borrow().gentle_removals.clone()
    }

    /// Reads made from any file of this disk so far.
    pub fn reads(&self) -> u64 {
        self.dir.borrow().reads
    }

    /// [`DiskFile::write_cached_at`] calls on any file of this disk so far.
    pub fn cached_writes(&self) -> u64 {
        self.dir.borrow().cached_writes
    }

    /// Total bytes of all files, as readers see them.
    pub fn total_bytes(&self) -> u64 {
        self.dir.borrow().current.values().map(|file| file.borrow().current.len() as u64).sum()
    }

    fn take_sync(&self) -> io::Result<()> {
        take_budget(&mut self.dir.borrow_mut().faults.syncs_until_failure, "injected sync failure")
    }
}

fn take_budget(budget: &mut Option<u64>, what: &str) -> io::Result<()> {
    match budget {
        Some(0) => Err(io::Error::other(what.to_string())),
        Some(left) => {
            *left -= 1;
            Ok(())
        }
        None => Ok(()),
    }
}

fn write_into(contents: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if contents.len() < end {
        contents.resize(end, 0);
    }
    contents[offset as usize..end].copy_from_slice(bytes);
}

impl Disk for MemDisk {
    type File = MemFile;

    async fn create(&self, name: &str) -> io::Result<MemFile> {
        let mut dir = self.dir.borrow_mut();
        if dir.current.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{name} exists")));
        }
        let data = Rc::new(RefCell::new(FileData::default()));
        dir.current.insert(name.to_string(), data.clone());
        Ok(MemFile { name: name.to_string(), data, dir: self.dir.clone() })
    }

    async fn open(&self, name: &str) -> io::Result<MemFile> {
        let dir = self.dir.borrow();
        let data = dir.current.get(name).ok_or_else(|| not_found(name))?.clone();
        Ok(MemFile { name: name.to_string(), data, dir: self.dir.clone() })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.dir.borrow_mut().current.remove(name).map(drop).ok_or_else(|| not_found(name))
    }

    async fn remove_gently(&self, name: &str) -> io::Result<()> {
        self.remove(name).await?;
        self.dir.borrow_mut().gentle_removals.push(name.to_string());
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut dir = self.dir.borrow_mut();
        let data = dir.current.remove(from).ok_or_else(|| not_found(from))?;
        dir.current.insert(to.to_string(), data);
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.file_names())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.take_sync()?;
        let mut dir = self.dir.borrow_mut();
        dir.durable = dir.current.clone();
        Ok(())
    }

    async fn yield_point(&self, pace: Pace) {
        let yields = {
            let mut dir = self.dir.borrow_mut();
            dir.yield_paces[usize::from(pace == Pace::Urgent)] += 1;
            dir.faults.yields
        };
        if yields {
            crate::wal::writer::yield_once().await;
        }
    }

    fn available_bytes(&self) -> io::Result<Option<u64>> {
        Ok(self.dir.borrow().faults.available_bytes)
    }
}

impl MemFile {
    /// The file's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl DiskFile for MemFile {
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !offset.is_multiple_of(ALIGNMENT as u64) || !data.len().is_multiple_of(ALIGNMENT) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unaligned write to {} at {offset} of {} bytes", self.name, data.len()),
            ));
        }
        take_budget(&mut self.dir.borrow_mut().faults.writes_until_failure, "injected write failure")?;
        let end = offset + data.len() as u64;
        let mut file = self.data.borrow_mut();
        if let Some(max) = self.dir.borrow().faults.file_bytes_max {
            if end > max && end > file.current.len() as u64 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on the device"));
            }
        }
        write_into(&mut file.current, offset, data);
        file.unsynced.push((offset, data.to_vec()));
        Ok(())
    }

    /// As [`DiskFile::write_at`] (a memory disk has no cache to go through), counted, and
    /// refused past the end of the file, as the contract asks.
    async fn write_cached_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if end > self.data.borrow().current.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cached write to {} ends at {end}, past the end of the file", self.name),
            ));
        }
        self.dir.borrow_mut().cached_writes += 1;
        self.write_at(offset, data).await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        self.dir.borrow_mut().reads += 1;
        let file = self.data.borrow();
        let start = (offset as usize).min(file.current.len());
        let end = (start + len).min(file.current.len());
        Ok(Bytes::copy_from_slice(&file.current[start..end]))
    }

    async fn sync(&self) -> io::Result<()> {
        take_budget(&mut self.dir.borrow_mut().faults.syncs_until_failure, "injected sync failure")?;
        let mut file = self.data.borrow_mut();
        let file = &mut *file;
        for (offset, bytes) in file.unsynced.drain(..) {
            write_into(&mut file.durable, offset, &bytes);
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.data.borrow().current.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; ALIGNMENT]
    }

    #[test]
    fn crash_keeps_only_synced_data_and_names() {
        block_on(async {
            let disk = MemDisk::new();
            let file = disk.create("a").await.unwrap();
            file.write_at(0, &page(1)).await.unwrap();
            file.sync().await.unwrap();
            disk.sync_dir().await.unwrap();
            file.write_at(4096, &page(2)).await.unwrap();
            disk.create("b").await.unwrap();

            let after = disk.crash(CrashMode::DropUnsynced);
            assert_eq!(after.file_names(), vec!["a".to_string()]);
            assert_eq!(after.file_len("a"), Some(4096));

            let torn = disk.crash(CrashMode::TearLastWrite { sectors_kept: 3 });
            let file = torn.open("a").await.unwrap();
            let tail = file.read_at(4096, 4096).await.unwrap();
            assert_eq!(tail.len(), 3 * SECTOR_BYTES);
            assert!(tail.iter().all(|&b| b == 2));
        });
    }

    #[test]
    fn injected_failures_fire_after_budget() {
        block_on(async {
            let disk = MemDisk::new();
            let file = disk.create("a").await.unwrap();
            disk.fail_syncs_after(1);
            assert!(file.sync().await.is_ok());
            assert!(file.sync().await.is_err());
            disk.fail_writes_after(0);
            assert!(file.write_at(0, &page(0)).await.is_err());
            assert!(file.write_at(1, &page(0)).await.is_err());
        });
    }
}
