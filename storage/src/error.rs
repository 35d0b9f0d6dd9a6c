//! The storage crate's one error type.
//!
//! Variants split into what a caller can handle (bad input, a CAS mismatch is not an error at
//! all) and what must stop the shard (`Poisoned`, `Corruption`, `ChecksumMismatch`, `Io`).

use std::io;

/// Every way a storage operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key is empty; keys are 1 to [`crate::KEY_BYTES_MAX`] bytes.
    #[error("key is empty (keys are 1 to {max} bytes)", max = crate::KEY_BYTES_MAX)]
    KeyEmpty,
    /// The key is longer than [`crate::KEY_BYTES_MAX`].
    #[error("key is {len} bytes; the limit is {max}", max = crate::KEY_BYTES_MAX)]
    KeyTooLong { len: usize },
    /// The value is larger than [`crate::VALUE_BYTES_MAX`].
    #[error("value is {len} bytes; the limit is {max}", max = crate::VALUE_BYTES_MAX)]
    ValueTooLarge { len: usize },
    /// An earlier write or sync failed; the engine refuses all writes until it is reopened
    /// (fail-stop: an fsync error must never be retried and acknowledged).
    #[error("storage engine is poisoned and refuses writes: {reason}")]
    Poisoned { reason: String },
    /// The disk has no more than the reserve left: writes are refused so that flushes and
    /// compactions can still finish, and resume by themselves once space is freed. Reads go on.
    #[error(
        "the disk is full: {available_bytes} bytes free, at or below the {reserve_bytes} bytes kept in \
         reserve for flushes and compactions (disk_reserve_bytes); free space to resume writes"
    )]
    DiskFull { available_bytes: u64, reserve_bytes: u64 },
    /// A write that reads the key first (a compare-and-swap, or a write that may be older than
    /// what a table holds) saw flushes move the key's state under it on every one of its reads.
    /// Nothing was written; retry.
    #[error(
        "the key's stored state moved under {attempts} reads in a row (flushes); nothing was written, retry"
    )]
    Contended { attempts: u32 },
    /// The engine has been closed.
    #[error("storage engine is closed")]
    Closed,
    /// A checksum did not match: the bytes on disk are not what was written.
    #[error(
        "checksum mismatch in {file} at offset {offset}: expected {expected:#010x}, found {actual:#010x}"
    )]
    ChecksumMismatch { file: String, offset: u64, expected: u32, actual: u32 },
    /// A file is in a format this release does not read: written by another release of ringkv,
    /// whose data this one cannot interpret (its keys, say, are laid out differently).
    #[error(
        "{file} is in format {found}, written by another release of ringkv; this release reads \
         format {supported} only and cannot open it"
    )]
    UnsupportedFormat { file: String, found: u32, supported: u32 },
    /// A structure on disk is malformed in a way a checksum cannot explain (or a bad record is
    /// followed by good ones, which a torn write cannot produce).
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption { file: String, offset: u64, reason: String },
    /// The operating system refused an operation.
    #[error("{op} {file}: {source}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    /// Wraps an I/O error with the operation and the file it concerned.
    pub fn io(op: &'static str, file: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io { op, file: file.into(), source }
    }

    /// Builds a corruption error.
    pub fn corruption(file: impl Into<String>, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corruption { file: file.into(), offset, reason: reason.into() }
    }

    /// True for errors that say the data or the device can no longer be trusted.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StorageError::Poisoned { .. }
                | StorageError::ChecksumMismatch { .. }
                | StorageError::Corruption { .. }
                | StorageError::UnsupportedFormat { .. }
                | StorageError::Io { .. }
        )
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
