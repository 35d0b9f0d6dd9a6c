//! [`DataDirectory`]: a node's data directory, locked for the life of the process.
//!
//! ```text
//!  DATA_DIR/
//!  ├── LOCK        flock(2)-ed while a node runs; holds its pid for the operator
//!  ├── NODE        "shards = N": the shard count the data was placed with
//!  ├── shard-0/    shard 0's storage engine (WAL, SSTables, manifest)
//!  └── shard-1/    ...
//! ```
//!
//! Two processes writing one engine would corrupt it, so the lock is taken before anything is
//! opened, and refused with a clear message while another process holds it. The kernel drops a
//! `flock` when its holder exits, however it exits, so a crash leaves no stale lock behind.
//!
//! Keys are placed on shards by the ring, which depends on the shard count: opening the
//! directory with another count would hide every key that moved. `NODE` records the count and
//! a mismatch is refused (resharding is the cluster phase's streaming rebalance, not a restart).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::ShardError;

/// Name of the lock file.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// Name of the file recording the shard count.
pub const NODE_FILE_NAME: &str = "NODE";

/// A locked data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirectory {
    path: PathBuf,
    /// Holds the `flock`; closing the file releases it.
    _lock: File,
}

impl DataDirectory {
    /// Creates the directory if needed, takes its lock, and checks (or, on first use, records)
    /// the shard count.
    pub fn open(path: &Path, shards: usize) -> Result<Self, ShardError> {
        std::fs::create_dir_all(path).map_err(|error| ShardError::data_directory("creating", path, error))?;
        let lock_path = path.join(LOCK_FILE_NAME);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|error| ShardError::data_directory("opening", &lock_path, error))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(ShardError::DataDirectoryLocked { path: path.to_path_buf(), lock: lock_path });
            }
            return Err(ShardError::data_directory("locking", &lock_path, error));
        }
        // The pid is for people reading the file; the lock itself is the flock.
        let write_pid = |lock: &mut File| -> io::Result<()> {
            lock.set_len(0)?;
            writeln!(lock, "{}", std::process::id())
        };
        write_pid(&mut lock).map_err(|error| ShardError::data_directory("writing", &lock_path, error))?;

        check_shard_count(path, shards)?;
        Ok(DataDirectory { path: path.to_path_buf(), _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of shard `shard_id`'s storage engine.
    pub fn shard_path(&self, shard_id: u32) -> PathBuf {
        self.path.join(format!("shard-{shard_id}"))
    }
}

/// Compares the recorded shard count with `shards`, recording it durably on first use.
fn check_shard_count(path: &Path, shards: usize) -> Result<(), ShardError> {
    let node_path = path.join(NODE_FILE_NAME);
    match std::fs::read_to_string(&node_path) {
        Ok(text) => {
            let recorded = text
                .trim()
                .strip_prefix("shards = ")
                .and_then(|count| count.parse::<usize>().ok())
                .ok_or_else(|| {
                    ShardError::data_directory(
                        "reading",
                        &node_path,
                        io::Error::new(io::ErrorKind::InvalidData, format!("unexpected content {text:?}")),
                    )
                })?;
            if recorded != shards {
                return Err(ShardError::ShardCountChanged {
                    path: path.to_path_buf(),
                    recorded,
                    requested: shards,
                });
            }
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            // Write a temporary file, sync it, rename it into place, sync the directory: a crash
            // leaves either no NODE file or a complete one.
            let temporary = path.join(format!("{NODE_FILE_NAME}.tmp"));
            let write = || -> io::Result<()> {
                let mut file = File::create(&temporary)?;
                writeln!(file, "shards = {shards}")?;
                file.sync_all()?;
                std::fs::rename(&temporary, &node_path)?;
                File::open(path)?.sync_all()
            };
            write().map_err(|error| ShardError::data_directory("writing", &node_path, error))
        }
        Err(error) => Err(ShardError::data_directory("reading", &node_path, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_until_the_first_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let first = DataDirectory::open(root.path(), 2).unwrap();
        let refused = DataDirectory::open(root.path(), 2).unwrap_err();
        assert!(matches!(refused, ShardError::DataDirectoryLocked { .. }), "{refused}");
        assert!(refused.to_string().contains("in use by another ringkv process"));
        drop(first);
        DataDirectory::open(root.path(), 2).unwrap();
    }

    #[test]
    fn shard_count_is_recorded_and_checked() {
        let root = tempfile::tempdir().unwrap();
        drop(DataDirectory::open(root.path(), 3).unwrap());
        let refused = DataDirectory::open(root.path(), 2).unwrap_err();
        assert!(
            matches!(refused, ShardError::ShardCountChanged { recorded: 3, requested: 2, .. }),
            "{refused}"
        );
        let reopened = DataDirectory::open(root.path(), 3).unwrap();
        assert_eq!(reopened.shard_path(1), root.path().join("shard-1"));
    }
}
