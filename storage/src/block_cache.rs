//! The block cache: verified SSTable data blocks kept in memory, keyed by table and block number.
//!
//! Files are read with O_DIRECT, which bypasses the kernel's page cache, so this cache is the
//! only thing between a repeated read and the disk. It holds only blocks whose checksum and
//! structure were verified after a read, or that a flush or compaction built and is writing (the
//! exact bytes on their way to the disk), so a hit needs no check. Eviction is quick_cache's (a
//! Clock-PRO variant close to S3-FIFO), weighted by block bytes; it resists a scan flushing the
//! hot set. It is single-threaded, like the engine that owns it (one per shard).

use bytes::Bytes;
use quick_cache::unsync::Cache;
use quick_cache::Weighter;
use std::cell::{Cell, RefCell};

/// Blocks are about a page; this only sizes the cache's tables up front.
const TYPICAL_BLOCK_BYTES: usize = 4096;
/// The most blocks [`BlockCache::new`] reserves room for up front.
const RESERVED_BLOCKS_MAX: usize = 1 << 20;

/// A block in the cache, and whether a read has used it since it went in.
#[derive(Clone)]
struct CachedBlock {
    bytes: Bytes,
    read: Cell<bool>,
}

/// Weighs a cached block by its length, so the capacity is in bytes.
#[derive(Clone, Copy, Debug, Default)]
struct BlockWeighter;

impl Weighter<(u64, u64), CachedBlock> for BlockWeighter {
    fn weight(&self, _key: &(u64, u64), block: &CachedBlock) -> u64 {
        // Zero-weight items are never evicted, so even an empty block weighs something.
        (block.bytes.len() as u64).max(1)
    }
}

/// Blocks by `(table_id, block number)`, weighed in bytes.
type BlockMap = Cache<(u64, u64), CachedBlock, BlockWeighter>;

/// A cache of verified blocks, keyed by `(table_id, block number)` (the block's place in its
/// table's index, so a lookup needs nothing from the index entry itself). Table ids are never
/// reused, so a removed table's blocks are never served for another; they simply age out.
pub struct BlockCache {
    /// `None` when the capacity is zero: caching is off.
    blocks: Option<RefCell<BlockMap>>,
    /// Lookups by [`BlockCache::get`] that found their block, and that did not.
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl BlockCache {
    /// A cache holding up to about `capacity_bytes` of blocks. Zero turns caching off.
    pub fn new(capacity_bytes: usize) -> Self {
        let blocks = (capacity_bytes > 0).then(|| {
            let items = (capacity_bytes / TYPICAL_BLOCK_BYTES).max(1);
            let mut cache = Cache::with_weighter(items, capacity_bytes as u64, BlockWeighter);
            // Room for the blocks (and the ghosts of evicted ones, which quick_cache adds) taken
            // now: grown on demand, a cache of gigabytes would double its tables inside a read or
            // a flush, copying hundreds of thousands of entries while the shard waits. Room not
            // yet used costs address space, not memory, but the hash table's control bytes are
            // written at once: up to RESERVED_BLOCKS_MAX (a 4 GiB cache's worth, about 2 MiB of
            // them); a larger cache, on a machine with memory to match, grows past that.
            cache.reserve(items.min(RESERVED_BLOCKS_MAX));
            RefCell::new(cache)
        });
        BlockCache { blocks, hits: Cell::new(0), misses: Cell::new(0) }
    }

    /// Block `block_number` of table `table_id`, if cached; counted as a hit if
    /// it is (a lookup that then reads the block counts its miss, [`BlockCache::count_miss`]).
    #[inline]
    pub fn get(&self, table_id: u64, block_number: u64) -> Option<Bytes> {
        let blocks = self.blocks.as_ref()?.borrow();
        let block = blocks.get(&(table_id, block_number))?;
        block.read.set(true);
        self.hits.set(self.hits.get() + 1);
        Some(block.bytes.clone())
    }

    /// Counts a block a read or a scan did not find here and reads from the disk.
    pub fn count_miss(&self) {
        self.misses.set(self.misses.get() + 1);
    }

    /// Block `block_number` of table `table_id`, if cached, and whether a read has used it
    /// since it went in; not itself a use: what a compaction or a long scan passes through says
    /// nothing of what reads want kept.
    #[inline]
    pub fn peek(&self, table_id: u64, block_number: u64) -> Option<(Bytes, bool)> {
        let blocks = self.blocks.as_ref()?.borrow();
        let block = blocks.peek(&(table_id, block_number))?;
        Some((block.bytes.clone(), block.read.get()))
    }

    /// Caches a verified block that no read has asked for (one a flush or a compaction wrote).
    /// A block larger than the whole cache is not kept.
    pub fn insert(&self, table_id: u64, block_number: u64, block: Bytes) {
        self.insert_marked(table_id, block_number, block, false);
    }

    /// Caches a verified block a read fetched from the disk: a use of it.
    pub fn insert_read(&self, table_id: u64, block_number: u64, block: Bytes) {
        self.insert_marked(table_id, block_number, block, true);
    }

    fn insert_marked(&self, table_id: u64, block_number: u64, block: Bytes, read: bool) {
        if let Some(blocks) = &self.blocks {
            blocks
                .borrow_mut()
                .insert((table_id, block_number), CachedBlock { bytes: block, read: Cell::new(read) });
        }
    }

    /// Caches a verified block as if just read: it survives its first pass through the cache's
    /// probation (new blocks are evicted there unless read again), like a block reads use, and
    /// counts as used by a read. For a block that takes over from one reads used (a
    /// compaction's output).
    pub fn insert_used(&self, table_id: u64, block_number: u64, block: Bytes) {
        if let Some(blocks) = &self.blocks {
            let mut blocks = blocks.borrow_mut();
            blocks.insert((table_id, block_number), CachedBlock { bytes: block, read: Cell::new(true) });
            // A get marks the entry referenced; a block over the capacity was not kept.
            let _ = blocks.get(&(table_id, block_number));
        }
    }

    /// Forgets block `block_number` of table `table_id`, if cached.
    pub fn remove(&self, table_id: u64, block_number: u64) {
        if let Some(blocks) = &self.blocks {
            blocks.borrow_mut().remove(&(table_id, block_number));
        }
    }

    /// The most bytes of blocks the cache holds (0 when caching is off).
    pub fn capacity_bytes(&self) -> usize {
        self.blocks.as_ref().map_or(0, |blocks| blocks.borrow().capacity() as usize)
    }

    /// Lookups that found their block, and blocks read from the disk instead, since the cache
    /// was made (peeks excluded).
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }

    /// Bytes of blocks held now.
    pub fn used_bytes(&self) -> usize {
        self.blocks.as_ref().map_or(0, |blocks| blocks.borrow().weight() as usize)
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("BlockCache").field("used_bytes", &self.used_bytes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_returns_what_was_inserted() {
        let cache = BlockCache::new(1 << 20);
        assert_eq!(cache.get(1, 0), None);
        cache.insert(1, 0, Bytes::from(vec![1; 4096]));
        cache.insert(2, 0, Bytes::from(vec![2; 4096]));
        assert_eq!(cache.get(1, 0).unwrap()[..], [1; 4096][..]);
        assert_eq!(cache.get(2, 0).unwrap()[..], [2; 4096][..]);
        assert_eq!(cache.get(1, 4096), None);
        assert_eq!(cache.used_bytes(), 8192);
        cache.count_miss();
        assert_eq!(cache.hits_and_misses(), (2, 1), "a lookup that finds nothing is not a miss by itself");
        assert!(cache.peek(1, 0).is_some_and(|(_, read)| read), "a get is a read's use");
        assert_eq!(cache.hits_and_misses(), (2, 1), "a peek is not counted");
        cache.insert(3, 0, Bytes::from_static(b"new"));
        assert!(cache.peek(3, 0).is_some_and(|(_, read)| !read), "no read has used it");
        assert!(cache.peek(3, 0).is_some_and(|(_, read)| !read), "a peek is not a use");
    }

    #[test]
    fn stays_within_capacity() {
        let cache = BlockCache::new(64 << 10);
        for offset in 0..100 {
            cache.insert(7, offset * 4096, Bytes::from(vec![0; 4096]));
        }
        assert!(cache.used_bytes() <= 64 << 10, "used {}", cache.used_bytes());
        assert!(cache.used_bytes() > 0);
        cache.insert(7, 1 << 30, Bytes::from(vec![0; 1 << 20]));
        assert!(cache.used_bytes() <= 64 << 10);
    }

    #[test]
    fn a_block_inserted_as_used_outlasts_probation_where_a_new_one_does_not() {
        let cache = BlockCache::new(64 << 10);
        let block = || Bytes::from(vec![0; 4096]);
        for offset in 0..16 {
            cache.insert(1, offset * 4096, block());
        }
        cache.insert_used(2, 0, block());
        cache.insert(2, 4096, block());
        // Blocks nobody reads pass through after them.
        for offset in 0..8 {
            cache.insert(3, offset * 4096, block());
        }
        assert!(cache.peek(2, 0).is_some(), "the block inserted as used was evicted");
        assert!(cache.peek(2, 4096).is_none(), "the plain new block outlasted the churn");
        assert!(cache.used_bytes() <= 64 << 10);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = BlockCache::new(0);
        cache.insert(1, 0, Bytes::from_static(b"block"));
        assert_eq!(cache.get(1, 0), None);
        assert_eq!(cache.used_bytes(), 0);
    }
}
