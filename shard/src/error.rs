//! [`ShardError`]: why a node or one of its shards could not start, or stopped badly.
//!
//! Errors of single requests are not here: they go back to the client as a
//! [`ringkv_wire::Failure`] and the shard keeps serving.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use ringkv_storage::StorageError;

/// Everything that keeps a node from starting or stopping cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The configuration file could not be read or parsed.
    #[error("configuration {path}: {reason}")]
    ConfigFile { path: PathBuf, reason: String },
    /// A configuration value is out of range.
    #[error("configuration: {field} {reason}")]
    ConfigValue { field: &'static str, reason: String },
    /// Another process holds the data directory's lock.
    #[error(
        "data directory {path} is in use by another ringkv process (lock file {lock} is held); \
         stop that process or choose another --data-dir"
    )]
    DataDirectoryLocked { path: PathBuf, lock: PathBuf },
    /// The data directory was created with a different number of shards. Keys are placed by
    /// shard, so opening it with another count would hide them.
    #[error(
        "data directory {path} was created with {recorded} shards; it cannot be opened with {requested} \
         (start with --shards {recorded})"
    )]
    ShardCountChanged { path: PathBuf, recorded: usize, requested: usize },
    /// The data directory was created with another value of a setting that decides where keys
    /// live (`vnodes_per_shard`, `node_id`, `tokens`); opening it with this one would hide them.
    #[error(
        "data directory {path} was created with {setting} = {recorded}; it cannot be opened with \
         {setting} = {given}, which would place keys elsewhere ({remedy})"
    )]
    PlacementChanged { path: PathBuf, setting: &'static str, recorded: String, given: String, remedy: String },
    /// A file operation on the data directory failed.
    #[error("{op} {path}: {source}")]
    DataDirectory {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A listening socket could not be opened.
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A shard's executor could not start, or its thread died.
    #[error("shard {shard_id}: executor: {reason}")]
    Executor { shard_id: u32, reason: String },
    /// The cross-shard channel mesh could not be joined.
    #[error("starting the thread that wakes stalled shards: {0}")]
    NudgeThread(std::io::Error),

    #[error("shard {shard_id}: joining the channel mesh failed: {reason}")]
    Mesh { shard_id: u32, reason: String },
    /// A shard's storage engine failed to open or to stop.
    #[error("shard {shard_id}: storage: {source}")]
    Storage {
        shard_id: u32,
        #[source]
        source: StorageError,
    },
    /// The TLS settings are incomplete, or their files are missing, malformed or do not match.
    #[error("configuration: {0}")]
    Tls(crate::tls::TlsError),
}

// By hand rather than `#[from]`, which would make the TLS error a source too and print it twice.
impl From<crate::tls::TlsError> for ShardError {
    fn from(error: crate::tls::TlsError) -> Self {
        ShardError::Tls(error)
    }
}

impl ShardError {
    pub(crate) fn data_directory(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ShardError::DataDirectory { op, path: path.into(), source }
    }
}
