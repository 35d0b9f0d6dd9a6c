//! Engine configuration. Every default works for one shard on one machine.

/// When a write's future resolves relative to the WAL sync that makes it durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// A write resolves only after an fdatasync covering it (group commit shares one sync
    /// between every write queued while the previous sync ran). The default.
    Always,
    /// A write resolves once it is in the WAL buffer; the owner of the engine calls
    /// [`crate::Engine::sync`] every `interval_ms`, so at most that much is lost on power loss.
    Periodic { interval_ms: u64 },
}

/// Tuning for one engine instance.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// When writes are acknowledged.
    pub sync: SyncMode,
    /// The active memtable is sealed and flushed once it holds this many bytes.
    pub memtable_bytes_max: usize,
    /// Bytes of verified SSTable blocks kept in memory (O_DIRECT bypasses the page cache).
    pub block_cache_bytes: usize,
    /// A WAL segment is closed and a new one started past this size.
    pub wal_segment_bytes_max: u64,
    /// WAL bytes the active memtable may stand for: past them it is sealed and flushed even
    /// if it is not full, so that the segments before it can be removed. Overwrites of a key
    /// already in the memtable replace it in place and do not grow the memtable, so without
    /// this bound a workload that updates a set of keys smaller than the memtable would grow
    /// the log, and the replay after a restart, without end. The log on disk stays below about
    /// twice this plus one segment.
    pub wal_bytes_max: u64,
    /// Zeros written ahead of the WAL's records whenever a group write would grow its segment,
    /// so that most commits sync a write inside the file (a device flush) rather than one that
    /// grows it (a journal commit too). 0 turns it off.
    pub wal_preallocate_bytes: u64,
    /// In periodic mode, buffered WAL bytes are written (not synced) past this size.
    pub wal_buffer_bytes_max: usize,
    /// Tombstones and expired values are kept at least this long after their deletion or
    /// expiry before compaction may purge them, so replicas can learn of the delete first.
    pub tombstone_grace_ms: u64,
    /// Bytes of the row cache: entries the tables hold for keys the memtables do not, one per
    /// key, in front of the block cache (see [`crate::row_cache`]). 0, the default, turns it
    /// off (as RocksDB's `row_cache`): it saves disk reads when the hot keys' blocks do not fit
    /// the block cache, and costs a lookup per key flushed and a copy per row cached otherwise.
    pub row_cache_bytes: usize,
    /// Bloom filter bits per key in each SSTable (10 gives about 1% false positives).
    pub bloom_bits_per_key: u32,
    /// Size-tiered compaction: merge once this many similar-sized tables exist.
    pub compaction_width_min: usize,
    /// Most tables merged by one compaction.
    pub compaction_width_max: usize,
    /// Seeds the memtable's hash index. A server passes a random value so that clients cannot
    /// pick keys that collide; tests and simulations pass a fixed one to replay runs exactly.
    pub memtable_hash_seed: u64,
    /// Open even when tables the manifest lists are missing from the disk, leaving them out
    /// (their data is lost here; replication's anti-entropy restores it from the other
    /// replicas). Off by default: a missing table is an error the operator must see.
    pub missing_tables_allowed: bool,
    /// Open even when the WAL's last record fails its checksum though every sector of it was
    /// written (bit rot, not a torn write), dropping it with an error logged. Off by default: the
    /// record may hold acknowledged writes, so the engine refuses to open.
    pub wal_rotten_tail_accepted: bool,
    /// Free disk bytes kept for flushes and compactions: at or below it, writes are refused
    /// with [`crate::StorageError::DiskFull`] until space is freed. 0 turns the check off.
    pub disk_reserve_bytes: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            sync: SyncMode::Always,
            memtable_bytes_max: 64 << 20,
            block_cache_bytes: 256 << 20,
            wal_segment_bytes_max: 128 << 20,
            wal_bytes_max: 256 << 20,
            wal_preallocate_bytes: crate::wal::PREALLOCATE_BYTES_DEFAULT,
            wal_buffer_bytes_max: 1 << 20,
            tombstone_grace_ms: 10 * 24 * 3600 * 1000,
            row_cache_bytes: 0,
            bloom_bits_per_key: 10,
            compaction_width_min: 4,
            compaction_width_max: 16,
            memtable_hash_seed: 0,
            missing_tables_allowed: false,
            wal_rotten_tail_accepted: false,
            disk_reserve_bytes: 0,
        }
    }
}
