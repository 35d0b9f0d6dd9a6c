//! The storage engine's [`Disk`] over glommio DMA files: O_DIRECT reads and writes through
//! io_uring, one directory per shard.
//!
//! ## The iopoll probe bug in glommio
//!
//! Opening a `DmaFile` makes glommio probe, once per block device and thread, whether the device
//! supports polled I/O, by reading the first block of the file being opened through the poll
//! ring. On an empty file that read returns 0 bytes without reaching the driver, so the device
//! is marked pollable; from then on every read of a DMA file on that device, on that thread,
//! fails with EOPNOTSUPP (os error 95). [`DmaDisk::open`] therefore opens a non-empty marker
//! file, [`PROBE_FILE_NAME`], before any data file, so the probe sees a real read and caches
//! the true answer; it then checks that a read of the marker succeeds, which catches a cache
//! already poisoned by someone else's earlier open on this thread.
//!
//! Data files are always opened read-write: a write-only open makes the probe read fail with
//! EBADF, which glommio takes as "no polling" for the whole device.
//!
//! ## Closing
//!
//! glommio closes a dropped `DmaFile` by queueing a close on its io_uring ring (and logging that
//! at `debug` level through the `log` crate); nothing blocks and nothing needs awaiting. The
//! queued close reaches the kernel on the executor's next reactor cycle, which is why
//! [`crate::ExecutorBuilder::run`] runs one more cycle after its future completes. Callers that
//! want to see a close error call [`DmaDiskFile::close`] instead of dropping.

use crate::blocking::run_blocking;
use bytes::{Bytes, BytesMut};
use glommio::io::{DmaFile, OpenOptions};
use glommio::GlommioError;
use ringkv_storage::disk::{Pace, ALIGNMENT};
use ringkv_storage::{Disk, DiskFile};
use std::cell::OnceCell;
use std::ffi::CString;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;
use tracing::{debug, warn};

/// Name of the marker file [`DmaDisk::open`] writes for glommio's iopoll probe. [`Disk::list`]
/// leaves it out, and the engine cannot create, open or remove a file of this name.
pub const PROBE_FILE_NAME: &str = ".iopoll-probe";

/// Size of the marker file: one [`ALIGNMENT`] block, so the probe's first-block read is real.
const PROBE_FILE_BYTES: usize = ALIGNMENT;

/// A directory of DMA files; the [`Disk`] a shard's storage engine runs on.
///
/// Cloning gives another handle to the same directory. Must stay on the thread (executor) that
/// opened it: glommio's per-device probe answer, which [`DmaDisk::open`] fixes, is per thread.
#[derive(Clone)]
pub struct DmaDisk {
    directory: Rc<PathBuf>,
    /// `directory` as the C string statvfs takes, made once: the engine asks for the free space
    /// every few dozen writes, and a fresh string each time was a heap allocation per ask.
    directory_c: Rc<CString>,
    /// Told of every file sync and how long it took (see [`DmaDisk::observe_syncs`]).
    sync_observer: Option<Rc<dyn SyncObserver>>,
}

/// Told of every fdatasync a [`DmaDisk`]'s files complete, on the disk's own thread: for
/// metrics (WAL sync counts and latency) without the storage engine reading a clock.
pub trait SyncObserver {
    /// `file` (its name in the disk's directory) was synced in `elapsed`.
    fn synced(&self, file: &str, elapsed: std::time::Duration);
}

/// A file of a [`DmaDisk`], opened read-write with O_DIRECT.
///
/// Dropping it is fine: glommio queues the close on the ring (see the module docs). Use
/// [`DmaDiskFile::close`] to close it and see any error.
pub struct DmaDiskFile {
    file: DmaFile,
    path: PathBuf,
    sync_observer: Option<Rc<dyn SyncObserver>>,
    /// A second descriptor without O_DIRECT, for [`DiskFile::write_cached_at`]; opened at its
    /// first use (only WAL segments use it).
    cached: OnceCell<std::fs::File>,
}

/// An I/O error with the operation and path that produced it; keeps the original as its source.
#[derive(Debug)]
struct ContextError {
    context: String,
    source: io::Error,
}

impl fmt::Display for ContextError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for ContextError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `source` with what was being done to which path, keeping its kind.
fn with_context(source: io::Error, operation: &str, path: &Path) -> io::Error {
    let context = format!("{operation} {}", path.display());
    io::Error::new(source.kind(), ContextError { context, source })
}

/// Converts a glommio error into an `io::Error` with context. glommio's own "enhanced" errors
/// carry the operation and path too, but in glommio's words; the OS error underneath is kept.
fn glommio_error(error: GlommioError<()>, operation: &str, path: &Path) -> io::Error {
    let source = match error {
        GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::from(other),
    };
    with_context(source, operation, path)
}

/// The engine writes in multiples of [`ALIGNMENT`]; that only works where the device's O_DIRECT
/// alignment (its logical block size, at least 512) divides it.
fn check_alignment(device_alignment: u64, path: &Path) -> io::Result<()> {
    if (ALIGNMENT as u64).is_multiple_of(device_alignment) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{}: O_DIRECT alignment {device_alignment} does not divide {ALIGNMENT}", path.display()),
        ))
    }
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// What [`DmaDisk::remove_gently`] renames a file to while it shrinks: `NAME.removing`.
pub const REMOVING_SUFFIX: &str = ".removing";

/// How much [`DmaDisk::remove_gently`] truncates at a time. On this project's test machine
/// (ext4 mounted with `discard`), 64 MiB files removed in 8 MiB steps 10 ms apart left every
/// concurrent WAL sync under 5 ms; removed at once, 29 in 10 s took over 10 ms (up to 58).
pub const REMOVAL_STEP_BYTES: u64 = 8 << 20;

/// The pause between two truncation steps of [`DmaDisk::remove_gently`].
pub const REMOVAL_STEP_PAUSE: Duration = Duration::from_millis(10);

/// Engine file names are single path components; anything else would escape the directory.
fn check_name(name: &str) -> io::Result<()> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && name != PROBE_FILE_NAME
        && !name.contains('/')
        && !name.contains('\0');
    if valid {
        Ok(())
    } else {
        Err(invalid_input(format!("invalid file name {name:?}")))
    }
}

/// Writes the probe marker with std (a DMA open of an empty file is exactly what must not happen
/// first) and makes it durable. A marker of the right size from an earlier run is kept as it is:
/// rewriting would leave it empty for a moment, and a crash then would leave it empty.
fn write_probe_file(directory: &Path, probe_path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(directory)
        .map_err(|error| with_context(error, "creating directory", directory))?;
    if std::fs::metadata(probe_path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.len() == PROBE_FILE_BYTES as u64)
    {
        return Ok(());
    }
    let write = || -> io::Result<()> {
        let mut file = std::fs::File::create(probe_path)?;
        file.write_all(&[0x5a; PROBE_FILE_BYTES])?;
        file.sync_all()
    };
    write().map_err(|error| with_context(error, "writing probe file", probe_path))
}

impl DmaDisk {
    /// Opens (creating it if missing) the directory `directory` as a disk, after applying the
    /// iopoll work-around (see the module docs): call it before opening any other DMA file on
    /// this thread.
    ///
    /// Fails if the probe marker cannot be written or read back, or if the device's O_DIRECT
    /// alignment does not divide [`ALIGNMENT`].
    ///
    /// # Panics
    ///
    /// If called outside a glommio executor.
    pub async fn open(directory: impl AsRef<Path>) -> io::Result<DmaDisk> {
        let directory = directory.as_ref().to_path_buf();
        let probe_path = directory.join(PROBE_FILE_NAME);

        // Directory creation and the marker's write and fsync are blocking calls: run them on
        // glommio's blocking thread pool rather than stall the reactor.
        let (task_directory, task_probe_path) = (directory.clone(), probe_path.clone());
        run_blocking(move || {
            write_probe_file(&task_directory, &task_probe_path)?;
            remove_leftover_removals(&task_directory)
        })
        .await?;

        // This open runs glommio's probe on a non-empty file and caches the device's answer.
        let probe = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&probe_path)
            .await
            .map_err(|error| glommio_error(error, "opening probe file", &probe_path))?;
        let device_alignment = probe.alignment();
        let verified = if (ALIGNMENT as u64).is_multiple_of(device_alignment) {
            probe.read_at_aligned(0, PROBE_FILE_BYTES).await
        } else {
            // The probe's own read happened at the device's alignment; ours would be refused.
            Ok(Default::default())
        };
        if let Err(error) = probe.close().await {
            warn!(path = %probe_path.display(), %error, "closing probe file failed");
        }
        check_alignment(device_alignment, &directory)?;
        match verified {
            Ok(read) if read.len() == PROBE_FILE_BYTES => {}
            Ok(read) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "reading probe file {}: {} of {PROBE_FILE_BYTES} bytes",
                        probe_path.display(),
                        read.len()
                    ),
                ));
            }
            Err(error) => {
                let error = glommio_error(error, "reading probe file", &probe_path);
                if error.kind() == io::ErrorKind::Unsupported {
                    // The cached answer was already wrong: a DMA file was opened empty on this
                    // thread before this call. Every later read would fail the same way.
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "{error} (glommio's iopoll probe was poisoned on this thread before \
                             DmaDisk::open; open the disk before any other DMA file)"
                        ),
                    ));
                }
                return Err(error);
            }
        }
        debug!(directory = %directory.display(), device_alignment, "opened DMA disk");
        let directory_c = CString::new(directory.as_os_str().as_encoded_bytes())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        Ok(DmaDisk { directory: Rc::new(directory), directory_c: Rc::new(directory_c), sync_observer: None })
    }

    /// This disk, with `observer` told of every sync of the files it opens from now on.
    pub fn observe_syncs(mut self, observer: Rc<dyn SyncObserver>) -> Self {
        self.sync_observer = Some(observer);
        self
    }

    /// The directory this disk lives in.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn path_of(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.directory.join(name))
    }

    async fn open_file(&self, name: &str, create: bool) -> io::Result<DmaDiskFile> {
        let path = self.path_of(name)?;
        let mut options = OpenOptions::new();
        // Read-write always, even for a file only ever written: see the module docs.
        options.read(true).write(true);
        if create {
            options.create_new(true);
        }
        let operation = if create { "creating" } else { "opening" };
        let file = options.dma_open(&path).await.map_err(|error| glommio_error(error, operation, &path))?;
        // Normally the same device as the probe marker, but a file can be a mount point.
        check_alignment(file.alignment(), &path)?;
        Ok(DmaDiskFile { file, path, sync_observer: self.sync_observer.clone(), cached: OnceCell::new() })
    }
}

impl Disk for DmaDisk {
    type File = DmaDiskFile;

    async fn create(&self, name: &str) -> io::Result<DmaDiskFile> {
        self.open_file(name, true).await
    }

    async fn open(&self, name: &str) -> io::Result<DmaDiskFile> {
        self.open_file(name, false).await
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let path = self.path_of(name)?;
        run_blocking(move || {
            std::fs::remove_file(&path).map_err(|error| with_context(error, "removing", &path))
        })
        .await
    }

    /// Renames the file out of the engine's sight (to `NAME.removing`), truncates it by
    /// [`REMOVAL_STEP_BYTES`] at a time with [`REMOVAL_STEP_PAUSE`] between steps, and removes
    /// what is left. A crash midway leaves a `.removing` file, which [`DmaDisk::open`] removes
    /// and [`Disk::list`] never shows.
    async fn remove_gently(&self, name: &str) -> io::Result<()> {
        let removing_name = format!("{name}{REMOVING_SUFFIX}");
        self.rename(name, &removing_name).await?;
        let removing = self.path_of(&removing_name)?;
        debug!(file = name, "removing gently");
        loop {
            let shrinking = removing.clone();
            if run_blocking(move || shrink_by_a_step(&shrinking)).await? == 0 {
                break;
            }
            glommio::timer::sleep(REMOVAL_STEP_PAUSE).await;
        }
        let removed = self.remove(&removing_name).await;
        debug!(file = name, ok = removed.is_ok(), "removed gently");
        removed
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let from_path = self.path_of(from)?;
        let to_path = self.path_of(to)?;
        // rename(2) replaces `to` atomically if it exists.
        run_blocking(move || {
            std::fs::rename(&from_path, &to_path).map_err(|error| {
                with_context(error, &format!("renaming to {}", to_path.display()), &from_path)
            })
        })
        .await
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let directory = PathBuf::clone(&self.directory);
        run_blocking(move || list_files(&directory)).await
    }

    async fn sync_dir(&self) -> io::Result<()> {
        // A full fsync of the directory, on the blocking pool: glommio's `Directory::sync`
        // issues fdatasync, and a directory's entries are exactly the metadata that must reach
        // the disk here.
        let directory = PathBuf::clone(&self.directory);
        run_blocking(move || {
            std::fs::File::open(&directory)
                .and_then(|handle| handle.sync_all())
                .map_err(|error| with_context(error, "syncing directory", &directory))
        })
        .await
    }

    async fn yield_point(&self, pace: Pace) {
        crate::executor::yield_if_slice_spent(pace).await;
    }

    fn available_bytes(&self) -> io::Result<Option<u64>> {
        let path = &self.directory_c;
        let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a NUL-terminated string and `stats` is room for one statvfs, which
        // the call fills in when it returns 0.
        let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled `stats` in.
        let stats = unsafe { stats.assume_init() };
        // The field types are narrower than u64 on some targets.
        #[allow(clippy::unnecessary_cast)]
        let available = (stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64);
        Ok(Some(available))
    }
}

/// Truncates the file at `path` by up to [`REMOVAL_STEP_BYTES`]; returns the bytes left.
fn shrink_by_a_step(path: &Path) -> io::Result<u64> {
    let context = |error| with_context(error, "truncating for removal", path);
    let file = std::fs::OpenOptions::new().write(true).open(path).map_err(context)?;
    let length = file.metadata().map_err(context)?.len();
    let left = length.saturating_sub(REMOVAL_STEP_BYTES);
    file.set_len(left).map_err(context)?;
    Ok(left)
}

/// Removes the `.removing` files a crash left in `directory` (see [`DmaDisk::remove_gently`]).
fn remove_leftover_removals(directory: &Path) -> io::Result<()> {
    let context = |error| with_context(error, "listing", directory);
    for entry in std::fs::read_dir(directory).map_err(context)? {
        let entry = entry.map_err(context)?;
        let is_leftover = entry.file_name().to_str().is_some_and(|name| name.ends_with(REMOVING_SUFFIX));
        if is_leftover && entry.file_type().map_err(context)?.is_file() {
            let path = entry.path();
            warn!(path = %path.display(), "removing a file whose removal a crash interrupted");
            std::fs::remove_file(&path).map_err(|error| with_context(error, "removing", &path))?;
        }
    }
    Ok(())
}

/// Names of the regular files in `directory`, sorted, without the probe marker and files being
/// removed. Names that are not UTF-8 cannot be engine files; they are skipped with a warning.
fn list_files(directory: &Path) -> io::Result<Vec<String>> {
    let context = |error| with_context(error, "listing", directory);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(context)? {
        let entry = entry.map_err(context)?;
        if !entry.file_type().map_err(context)?.is_file() {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) if name == PROBE_FILE_NAME || name.ends_with(REMOVING_SUFFIX) => {}
            Ok(name) => names.push(name),
            Err(name) => warn!(directory = %directory.display(), ?name, "skipping non-UTF-8 file name"),
        }
    }
    names.sort_unstable();
    Ok(names)
}

impl DmaDiskFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file and reports any error, which dropping it would only log.
    pub async fn close(self) -> io::Result<()> {
        let DmaDiskFile { file, path, .. } = self;
        file.close().await.map_err(|error| glommio_error(error, "closing", &path))
    }

    /// Reads at an offset that is a multiple of the device alignment, for `len_aligned` bytes
    /// (also a multiple); returns what the kernel read, short only at the end of the file.
    async fn read_aligned(&self, offset: u64, len_aligned: usize) -> io::Result<glommio::io::ReadResult> {
        self.file.read_at_aligned(offset, len_aligned).await.map_err(|error| {
            glommio_error(error, &format!("reading {len_aligned} bytes at {offset} from"), &self.path)
        })
    }
}

impl DmaDiskFile {
    /// Writes must start and end on an [`ALIGNMENT`] boundary, cached or not (the contract).
    fn check_aligned_write(&self, offset: u64, len: usize) -> io::Result<()> {
        if offset.is_multiple_of(ALIGNMENT as u64) && len.is_multiple_of(ALIGNMENT) {
            return Ok(());
        }
        Err(invalid_input(format!(
            "unaligned write to {} at {offset} of {len} bytes (alignment {ALIGNMENT})",
            self.path.display()
        )))
    }
}

impl DiskFile for DmaDiskFile {
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_aligned_write(offset, data.len())?;
        let mut written = 0;
        while written < data.len() {
            let rest = &data[written..];
            let position = offset + written as u64;
            // O_DIRECT needs an aligned buffer; glommio's come from memory registered with the
            // ring when there is room, so this copy is the only one on the way to the device.
            let mut buffer = self.file.alloc_dma_buffer(rest.len());
            buffer.as_bytes_mut().copy_from_slice(rest);
            let count = self.file.write_at(buffer, position).await.map_err(|error| {
                glommio_error(error, &format!("writing {} bytes at {position} to", rest.len()), &self.path)
            })?;
            if count == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("writing at {position} to {}: wrote 0 bytes", self.path.display()),
                ));
            }
            if !count.is_multiple_of(ALIGNMENT) && count < rest.len() {
                // The rest could only be written at an unaligned offset, which O_DIRECT refuses.
                return Err(io::Error::other(format!(
                    "writing at {position} to {}: short write of {count} bytes is not aligned",
                    self.path.display()
                )));
            }
            written += count;
        }
        Ok(())
    }

    /// A `pwrite` on the file's second, page-cached descriptor, on the shard's thread: a copy
    /// into pages inside the file (the caller's contract: nothing to allocate), which does not
    /// wait for the device. The following [`DiskFile::sync`] (fdatasync, per file, whatever the
    /// descriptor) writes those pages back and flushes the device cache in one operation, where
    /// an O_DIRECT write would first make its own trip to the device and back to the executor.
    /// The page cache and O_DIRECT stay coherent: the kernel writes back cached pages before a
    /// direct read of their range, and drops them on a direct write over it.
    async fn write_cached_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.check_aligned_write(offset, data.len())?;
        if self.cached.get().is_none() {
            let path = self.path.clone();
            let opened = run_blocking(move || std::fs::OpenOptions::new().write(true).open(&path))
                .await
                .map_err(|error| with_context(error, "opening for cached writes", &self.path))?;
            let _ = self.cached.set(opened);
        }
        let cached = self.cached.get().expect("opened above");
        cached.write_all_at(data, offset).map_err(|error| with_context(error, "writing", &self.path))
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        // glommio's unaligned `DmaFile::read_at` miscounts a read that crosses the end of the
        // file: it returns min(bytes read from the aligned start, len) bytes starting at the
        // caller's offset, so up to an alignment's worth of bytes past the end come back as if
        // they were data. So align here and slice by what the kernel actually returned.
        let alignment = self.file.alignment();
        let start = offset - offset % alignment;
        let head = (offset - start) as usize;
        let len_aligned = (head + len).next_multiple_of(alignment as usize);

        let read = self.read_aligned(start, len_aligned).await?;
        if read.len() == len_aligned {
            // The common case: one copy out of the DMA buffer, which cannot itself back a
            // `Bytes` (glommio's buffers are tied to this thread's reactor; `Bytes` is `Send`).
            return Ok(Bytes::copy_from_slice(&read[head..head + len]));
        }

        // Short read: the end of the file, or (rarely) the kernel stopping early. Keep reading
        // while reads end on an aligned boundary; a read of 0 bytes or ending mid-block is the
        // end of the file.
        let mut out = BytesMut::with_capacity(len);
        out.extend_from_slice(read.get(head..).unwrap_or_default());
        let mut position = start + read.len() as u64;
        let mut last = read.len();
        while out.len() < len && last > 0 && (last as u64).is_multiple_of(alignment) {
            let remaining = (len - out.len()).next_multiple_of(alignment as usize);
            // `position` is past `offset` here: a non-empty aligned read covers the head.
            let read = self.read_aligned(position, remaining).await?;
            out.extend_from_slice(&read);
            position += read.len() as u64;
            last = read.len();
        }
        out.truncate(len);
        Ok(out.freeze())
    }

    async fn sync(&self) -> io::Result<()> {
        let Some(observer) = &self.sync_observer else {
            return self.file.fdatasync().await.map_err(|error| glommio_error(error, "syncing", &self.path));
        };
        let started = std::time::Instant::now();
        self.file.fdatasync().await.map_err(|error| glommio_error(error, "syncing", &self.path))?;
        let name = self.path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        observer.synced(name, started.elapsed());
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(|error| glommio_error(error, "reading size of", &self.path))
    }
}
