//! The disk the engine runs on, as a small async trait.
//!
//! The engine never names a path or a runtime: it asks a [`Disk`] for files by name inside one
//! directory. `ringkv-io` implements it over glommio DMA files (O_DIRECT, io_uring);
//! [`memory::MemDisk`] implements it in memory with fault injection for tests and the simulator.
//!
//! Contracts every implementation keeps:
//! - `write_at` offsets and lengths are multiples of [`ALIGNMENT`] (O_DIRECT needs it); the
//!   engine pads. Reads may be of any offset and length.
//! - When `sync` resolves `Ok`, every `write_at` and `write_cached_at` that resolved before it
//!   was called is durable.
//! - When `sync_dir` resolves `Ok`, every create, rename and remove that resolved before it is
//!   durable.
//! - Futures need not be `Send`: glommio's are not.

pub mod memory;

use bytes::Bytes;
use std::io;

/// Write alignment for files: O_DIRECT writes must start and end on this boundary.
pub const ALIGNMENT: usize = 4096;

/// Rounds `n` up to the next multiple of [`ALIGNMENT`].
pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT as u64) * ALIGNMENT as u64
}

/// A directory of files the engine owns.
#[allow(async_fn_in_trait)] // Deliberate: glommio futures are !Send, so no Send bound is wanted.
pub trait Disk {
    /// A file opened for reading and writing.
    type File: DiskFile;

    /// Creates a new, empty file. Fails if it exists. The name is durable after `sync_dir`.
    async fn create(&self, name: &str) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Removes a file. Open handles stay readable until dropped.
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Removes a large file that nothing has open and nothing will read again (an obsolete WAL
    /// segment, a table no reader holds), gently: a disk may shrink it a step at a time first,
    /// so that the filesystem never discards all of its blocks in one go. On a filesystem
    /// mounted with `discard`, removing a 64 MiB file at once made concurrent WAL syncs take
    /// 10–58 ms instead of under 2. Until it returns, the file may be gone from
    /// [`Disk::list`] while its space is still in use. By default, [`Disk::remove`].
    async fn remove_gently(&self, name: &str) -> io::Result<()> {
        self.remove(name).await
    }
    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Lists the names of the files in the directory.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creates, renames and removes durable (fsync of the directory).
    async fn sync_dir(&self) -> io::Result<()>;
    /// A cooperative scheduling point: long loops (flush, compaction) call it between blocks so
    /// that foreground requests keep their latency. [`Pace::Deferrable`] work may also be held
    /// here for a while, to keep it to its share of the core. May return at once.
    async fn yield_point(&self, pace: Pace);
    /// Bytes still free for the directory's files on its filesystem (for an unprivileged
    /// writer); `None` when the disk cannot tell. Cheap enough to call every few writes.
    fn available_bytes(&self) -> io::Result<Option<u64>>;
}

/// Whether a background loop's work may be held back at a [`Disk::yield_point`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Nothing waits for it yet: the disk may hold it back, so that it keeps to its share of the
    /// core and writes at a bounded rate.
    Deferrable,
    /// Something waits for it (writers for a flush, reads for a backlog of tables): it only
    /// yields to other work.
    Urgent,
}

/// One open file.
#[allow(async_fn_in_trait)]
pub trait DiskFile {
    /// Writes all of `data` at `offset`. Both are multiples of [`ALIGNMENT`].
    /// Not durable until [`DiskFile::sync`] resolves.
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset` within bytes the file already holds, through the
    /// operating system's page cache where the disk has one: it returns once the bytes are
    /// copied, and they are durable, as with [`DiskFile::write_at`], only once
    /// [`DiskFile::sync`] resolves. Both are multiples of [`ALIGNMENT`]. For a log whose every
    /// small write a sync follows at once, this saves a trip to the device: the sync writes the
    /// bytes and flushes in one operation. The range must lie inside the file (so the write
    /// allocates nothing and cannot find the filesystem full later). The default is
    /// [`DiskFile::write_at`].
    async fn write_cached_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_at(offset, data).await
    }
    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes>;
    /// Makes every completed write durable (fdatasync). When this resolves `Ok`, the data is on
    /// stable storage; an `Err` means some of it may not be, and the caller must fail-stop.
    async fn sync(&self) -> io::Result<()>;
    /// The file's current size in bytes.
    async fn size(&self) -> io::Result<u64>;
}
