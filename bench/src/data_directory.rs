//! Preparing the directory a benchmark writes to.
//!
//! Like db_bench, a run starts from an empty database unless told to use what is there; unlike
//! db_bench, it never deletes anything itself: a non-empty directory is refused. The filesystem
//! matters: on tmpfs glommio cannot use O_DIRECT and falls back to buffered I/O, so the figures
//! would measure memory copies rather than the disk path ringkv runs on.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The directory and the filesystem it lives on.
#[derive(Debug)]
pub struct DataDirectory {
    pub path: PathBuf,
    /// Filesystem type from `/proc/mounts` (`ext4`, `xfs`, `tmpfs`...), if found.
    pub filesystem: Option<String>,
    /// The mounted device, if found.
    pub device: Option<String>,
}

/// Creates `path` if needed, refuses it if it holds anything but `ignored` files (unless
/// `use_existing`), and finds its filesystem.
pub fn prepare(path: &Path, use_existing: bool, ignored: &[&str]) -> Result<DataDirectory> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let path = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
    if !use_existing {
        let mut entries = std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))?;
        let occupied = entries.try_fold(false, |occupied, entry| -> Result<bool> {
            let name = entry?.file_name();
            Ok(occupied || !ignored.iter().any(|ignored| name == *ignored))
        })?;
        if occupied {
            bail!(
                "{} is not empty: remove it first, or pass --use-existing to benchmark what it holds",
                path.display()
            );
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mount = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?.replace("\\040", " ");
            let filesystem = fields.next()?;
            path.starts_with(&mount_point).then_some((mount_point.len(), device, filesystem))
        })
        // The longest mount point containing the path is the one it lives on; on equal length,
        // the later mount hides the earlier one.
        .max_by_key(|(length, _, _)| *length);
    Ok(DataDirectory {
        filesystem: mount.map(|(_, _, filesystem)| filesystem.to_string()),
        device: mount.map(|(_, device, _)| device.to_string()),
        path,
    })
}
