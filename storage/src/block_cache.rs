//! The block cache: verified SSTable data blocks kept in memory, keyed by table and block number.
//!
//! Files are read with O_DIRECT, which bypasses the kernel's page cache, so this cache is the
//! only thing between a repeated read and the disk. It holds only blocks whose checksum and
//! structure were verified after a read, or that a flush or compaction built and is writing (the
//! exact bytes on their way to the disk), so a hit needs no check. Eviction is quick_cache's (a
//! Clock-PRO variant close to S3-FIFO), weighted by block bytes; it resists a scan flushing the
//! hot set. It is single-threaded, like the engine that owns it (one per shard).
//!
//! The cache is split into segments of at most [`SEGMENT_BYTES`], each its own quick_cache
//! with its share of the capacity, a block's segment chosen by a hash of its key. A segment's
//! hash table grows with what it holds, so a cache holding less than its capacity (most data
//! sets, against the default of a quarter of memory) keeps its tables dense: a lookup's probes
//! land on lines that other lookups keep warm, where one table sized up front for gigabytes
//! spreads a few thousand blocks over megabytes of control bytes and slots, a miss or two more
//! per lookup. And growing one segment moves at most a segment's entries at once (a fraction
//! of a millisecond), where one table of a million blocks would copy them all inside a read or
//! a flush.

use bytes::Bytes;
use quick_cache::unsync::Cache;
use quick_cache::Weighter;
use std::cell::{Cell, RefCell};

/// Blocks are about a page; this only estimates a segment's blocks for quick_cache.
const TYPICAL_BLOCK_BYTES: usize = 4096;
/// The most bytes of blocks one segment holds: 16,384 typical blocks, whose hash table and
/// slab (ghosts of evicted blocks included) are copied in well under a millisecond when the
/// segment doubles them.
const SEGMENT_BYTES: usize = 64 << 20;

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
    /// Empty when the capacity is zero: caching is off.
    segments: Box<[RefCell<BlockMap>]>,
    /// Lookups by [`BlockCache::get`] that found their block, and that did not.
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl BlockCache {
    /// A cache holding up to about `capacity_bytes` of blocks. Zero turns caching off.
    pub fn new(capacity_bytes: usize) -> Self {
        let count = capacity_bytes.div_ceil(SEGMENT_BYTES);
        let segments = (0..count)
            .map(|index| {
                // The capacity shared out to the byte: the first segments take the remainder.
                let bytes = capacity_bytes / count + usize::from(index < capacity_bytes % count);
                let items = (bytes / TYPICAL_BLOCK_BYTES).max(1);
                RefCell::new(Cache::with_weighter(items, bytes as u64, BlockWeighter))
            })
            .collect();
        BlockCache { segments, hits: Cell::new(0), misses: Cell::new(0) }
    }

    /// The segment of block `block_number` of table `table_id`, `None` when caching is off.
    /// Table ids and block numbers both count up from small numbers, so the key is mixed
    /// before its high bits choose.
    #[inline]
    fn segment(&self, table_id: u64, block_number: u64) -> Option<&RefCell<BlockMap>> {
        let count = self.segments.len() as u64;
        if count <= 1 {
            return self.segments.first();
        }
        let mixed = (table_id.rotate_left(32) ^ block_number).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let index = ((mixed >> 32) * count) >> 32;
        self.segments.get(index as usize)
    }

    /// Block `block_number` of table `table_id`, if cached; counted as a hit if
    /// it is (a lookup that then reads the block counts its miss, [`BlockCache::count_miss`]).
    #[inline]
    pub fn get(&self, table_id: u64, block_number: u64) -> Option<Bytes> {
        let blocks = self.segment(table_id, block_number)?.borrow();
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
        let blocks = self.segment(table_id, block_number)?.borrow();
        let block = blocks.peek(&(table_id, block_number))?;
        Some((block.bytes.clone(), block.read.get()))
    }

    /// Caches a verified block that no read has asked for (one a flush or a compaction wrote).
    /// A block larger than its segment's share of the cache is not kept.
    pub fn insert(&self, table_id: u64, block_number: u64, block: Bytes) {
        self.insert_marked(table_id, block_number, block, false);
    }

    /// Caches a verified block a read fetched from the disk: a use of it.
    pub fn insert_read(&self, table_id: u64, block_number: u64, block: Bytes) {
        self.insert_marked(table_id, block_number, block, true);
    }

    fn insert_marked(&self, table_id: u64, block_number: u64, block: Bytes, read: bool) {
        if let Some(blocks) = self.segment(table_id, block_number) {
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
        if let Some(blocks) = self.segment(table_id, block_number) {
            let mut blocks = blocks.borrow_mut();
            blocks.insert((table_id, block_number), CachedBlock { bytes: block, read: Cell::new(true) });
            // A get marks the entry referenced; a block over the capacity was not kept.
            let _ = blocks.get(&(table_id, block_number));
        }
    }

    /// Forgets block `block_number` of table `table_id`, if cached.
    pub fn remove(&self, table_id: u64, block_number: u64) {
        if let Some(blocks) = self.segment(table_id, block_number) {
            blocks.borrow_mut().remove(&(table_id, block_number));
        }
    }

    /// The most bytes of blocks the cache holds (0 when caching is off).
    pub fn capacity_bytes(&self) -> usize {
        self.segments.iter().map(|blocks| blocks.borrow().capacity() as usize).sum()
    }

    /// Lookups that found their block, and blocks read from the disk instead, since the cache
    /// was made (peeks excluded).
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }

    /// Bytes of blocks held now.
    pub fn used_bytes(&self) -> usize {
        self.segments.iter().map(|blocks| blocks.borrow().weight() as usize).sum()
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
    fn a_cache_of_several_segments_shares_its_capacity_and_finds_every_block() {
        let capacity = 3 * SEGMENT_BYTES + 5;
        let cache = BlockCache::new(capacity);
        assert_eq!(cache.segments.len(), 4);
        assert_eq!(cache.capacity_bytes(), capacity, "the segments' shares add up to the capacity");
        // Table ids and block numbers as the engine hands them out: small and consecutive.
        let blocks = |table: u64| (0..2_000u64).map(move |number| (table, number));
        for (table, number) in (1..=4).flat_map(blocks) {
            cache.insert(table, number, Bytes::from(vec![(table * 7 + number) as u8; 4096]));
        }
        assert_eq!(cache.used_bytes(), 8_000 * 4096);
        for (table, number) in (1..=4).flat_map(blocks) {
            let block = cache.get(table, number).expect("every block inserted is found");
            assert_eq!(block[0], (table * 7 + number) as u8);
        }
        let held: Vec<usize> = cache.segments.iter().map(|segment| segment.borrow().len()).collect();
        assert!(
            held.iter().all(|&blocks| (1_500..=2_500).contains(&blocks)),
            "blocks spread unevenly over the segments: {held:?}"
        );
        cache.remove(2, 10);
        assert_eq!(cache.get(2, 10), None);
        assert_eq!(cache.used_bytes(), 7_999 * 4096);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = BlockCache::new(0);
        cache.insert(1, 0, Bytes::from_static(b"block"));
        assert_eq!(cache.get(1, 0), None);
        assert_eq!(cache.used_bytes(), 0);
    }
}
