//! An open, immutable table answering point reads and handing out scans.

use super::block::Block;
use super::filter::{key_hash, BloomFilter};
use super::footer::{Footer, FOOTER_BYTES};
use super::frame;
use super::index::Index;
use super::iter::TableIter;
use super::prefix_share;
use crate::block_cache::BlockCache;
use crate::disk::{DiskFile, ALIGNMENT};
use crate::entry::Entry;
use crate::error::{Result, StorageError};
use crate::memtable::Prefetch;
use crate::prefetch::{prefetch_line, LINE_BYTES};
use bytes::Bytes;
use std::rc::Rc;

/// An open table. Its index and filter live in memory; data blocks come from the shared
/// [`BlockCache`] or, on a miss, from the file, verified before use. Used behind `Rc`: scans
/// hold a reference.
pub struct Table<F: DiskFile> {
    file: F,
    file_name: String,
    table_id: u64,
    cache: Rc<BlockCache>,
    file_bytes: u64,
    entry_count: u64,
    max_version: u64,
    index: Index,
    filter: BloomFilter,
}

impl<F: DiskFile> Table<F> {
    /// Opens a table: reads and verifies its footer, index and filter. `table_id` keys its
    /// blocks in `cache`, so it must never be reused for another file.
    pub async fn open(file: F, file_name: String, table_id: u64, cache: Rc<BlockCache>) -> Result<Self> {
        let file_bytes =
            file.size().await.map_err(|error| StorageError::io("size", file_name.as_str(), error))?;
        if file_bytes < ALIGNMENT as u64 || !file_bytes.is_multiple_of(ALIGNMENT as u64) {
            return Err(StorageError::corruption(
                file_name,
                file_bytes,
                format!("table length {file_bytes} is not a positive multiple of {ALIGNMENT} (truncated?)"),
            ));
        }
        let footer_offset = file_bytes - FOOTER_BYTES as u64;
        let footer_bytes = frame::read_exact(&file, &file_name, footer_offset, FOOTER_BYTES).await?;
        let footer = Footer::decode(&footer_bytes, &file_name, footer_offset, file_bytes)?;

        let index_payload =
            frame::read(&file, &file_name, footer.index_offset, footer.index_len as usize).await?;
        let index = Index::decode(index_payload, &file_name, footer.index_offset, footer.index_offset)?;
        let filter_payload =
            frame::read(&file, &file_name, footer.filter_offset, footer.filter_len as usize).await?;
        let filter = BloomFilter::decode(&filter_payload).map_err(|reason| {
            StorageError::corruption(file_name.as_str(), footer.filter_offset, format!("filter: {reason}"))
        })?;
        // Each block holds at least one entry, so the counts must agree on emptiness and order.
        if (footer.entry_count == 0) != (index.len() == 0) || footer.entry_count < index.len() as u64 {
            return Err(StorageError::corruption(
                file_name,
                footer_offset,
                format!("{} entries cannot fill {} blocks", footer.entry_count, index.len()),
            ));
        }
        Ok(Table {
            file,
            file_name,
            table_id,
            cache,
            file_bytes,
            entry_count: footer.entry_count,
            max_version: footer.max_version,
            index,
            filter,
        })
    }

    /// The entry for `key`, tombstones and expired values included (the caller decides what
    /// they mean at its `now_ms`).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        self.get_with_hash(key, key_hash(key)).await
    }

    /// [`Table::get`] with the key's [`key_hash`] computed by the caller, once for all the
    /// tables a read consults.
    pub async fn get_with_hash(&self, key: &[u8], key_hash: u64) -> Result<Option<Entry>> {
        if !self.may_contain_hash(key, key_hash) {
            return Ok(None);
        }
        // The range check passed, so some block's last key is >= key.
        let block_number = self.index.seek(key);
        let block = self.load_block(block_number, true).await?;
        let (low, high) = self.index.prefix_bounds(block_number);
        match block.find_near(key, low, high) {
            Some(position) => {
                let offset = || self.index.handle(block_number).offset;
                Ok(Some(block.entry_at(position, &self.file_name, offset)?.1))
            }
            None => Ok(None),
        }
    }

    /// [`Table::get_with_hash`] answered from memory: `None` when the block that may hold
    /// `key` is not in the block cache (the caller then reads it with `get_with_hash`).
    pub fn get_cached(&self, key: &[u8], key_hash: u64) -> Option<Result<Option<Entry>>> {
        if !self.may_contain_hash(key, key_hash) {
            return Some(Ok(None));
        }
        let block_number = self.index.seek(key);
        let block = self.cached_block(block_number)?;
        self.index.note_cached(block_number, block.payload());
        let (low, high) = self.index.prefix_bounds(block_number);
        Some(match block.find_near(key, low, high) {
            Some(position) => {
                let offset = || self.index.handle(block_number).offset;
                block.entry_at(position, &self.file_name, offset).map(|(_, entry)| Some(entry))
            }
            None => Ok(None),
        })
    }

    /// False when the table certainly has no entry for `key` (outside its key range, or
    /// rejected by its filter).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hash(key, key_hash(key))
    }

    /// [`Table::may_contain`] with the key's [`key_hash`] computed by the caller.
    #[inline]
    pub fn may_contain_hash(&self, key: &[u8], key_hash: u64) -> bool {
        // The range check first: two comparisons, cheaper than the filter's memory access.
        self.entry_count > 0
            && key >= &self.index.smallest_key()[..]
            && key <= &self.index.largest_key()[..]
            && self.filter.may_contain_hash(key_hash)
    }

    /// Asks the processor for what a read of a stored key starting with `token`, of filter
    /// hash `key_hash` ([`key_hash`]), will touch here at `stage`, each stage's lines found
    /// from the lines the stage before asked for:
    /// - [`Prefetch::Group`]: the filter's line for the key, and the index's radix bucket;
    /// - [`Prefetch::Slot`]: the index prefixes the bucket leads to;
    /// - [`Prefetch::Value`]: the lines of the block the index leads to, where a read last saw
    ///   it in the block cache ([`Index::cached_hint`]): its end, where its entry count and
    ///   offsets are, and the few lines around where its key's prefix puts the entry
    ///   ([`Block::find_near`]'s guess). Nothing is read through that address.
    ///
    /// A hint only.
    pub fn prefetch(&self, token: u64, key_hash: u64, stage: Prefetch) {
        match stage {
            Prefetch::Group => {
                self.filter.prefetch(key_hash);
                self.index.prefetch_radix(token);
            }
            Prefetch::Slot => self.index.prefetch_prefixes(token),
            Prefetch::Value => self.prefetch_block(token),
        }
    }

    /// Whether this table's filter lets a key of `key_hash` through (the key range is not
    /// checked): for choosing what to prefetch.
    #[inline]
    pub fn filter_passes(&self, key_hash: u64) -> bool {
        self.entry_count > 0 && self.filter.may_contain_hash(key_hash)
    }

    /// [`Table::prefetch`]'s last stage.
    fn prefetch_block(&self, token: u64) {
        let block_number = self.index.seek_prefix(token);
        let Some((start, len)) = self.index.cached_hint(block_number) else {
            return;
        };
        let line_at = |offset: usize| start.wrapping_add(offset.min(len.saturating_sub(1)));
        // The block's end: its count and, just before, its offsets (two bytes an entry), the
        // last line and, for a block of many entries or an end just past a line, the one
        // before. Few lines a read: past the ten or so misses a core keeps in flight, a
        // prefetch waits for a free one.
        prefetch_line(line_at(len.saturating_sub(1)));
        prefetch_line(line_at(len.saturating_sub(1 + LINE_BYTES)));
        let (low, high) = self.index.prefix_bounds(block_number);
        if let Some(share) = prefix_share(token, low, high) {
            // Where the guess of [`Block::find_near`] lands, as a share of the block's bytes,
            // and the line after it: an entry of a 100-byte value spans two or three.
            let guess = (share * len as f64) as usize;
            prefetch_line(line_at(guess));
            prefetch_line(line_at(guess + LINE_BYTES));
        }
    }

    /// A scan in ascending key order from the first key `>= start` (from the smallest key when
    /// `start` is `None`). With `fill_cache` false (compaction), the blocks read are not cached,
    /// so a scan does not evict the blocks point reads need, and reads run ahead in large spans.
    pub fn iter(self: &Rc<Self>, start: Option<&[u8]>, fill_cache: bool) -> TableIter<F> {
        TableIter::new(self.clone(), start, fill_cache)
    }

    pub fn id(&self) -> u64 {
        self.table_id
    }

    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// The highest version of any entry (0 for an empty table).
    pub fn max_version(&self) -> u64 {
        self.max_version
    }

    /// Empty for a table without entries.
    pub fn smallest_key(&self) -> &Bytes {
        self.index.smallest_key()
    }

    /// Empty for a table without entries.
    pub fn largest_key(&self) -> &Bytes {
        self.index.largest_key()
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    pub(crate) fn file(&self) -> &F {
        &self.file
    }

    /// Number of data blocks.
    pub fn block_count(&self) -> usize {
        self.index.len()
    }

    /// Takes blocks `blocks` of this table out of the cache: called once the table is no longer
    /// read, so they leave room for live blocks at once instead of aging out. A large table has
    /// tens of thousands of blocks, so the caller goes through them a range at a time.
    pub fn forget_cached_blocks(&self, blocks: std::ops::Range<usize>) {
        for block_number in blocks {
            self.cache.remove(self.table_id, block_number as u64);
        }
    }

    /// Block `block_number` if the cache holds it.
    pub(crate) fn cached_block(&self, block_number: usize) -> Option<Block> {
        self.cache.get(self.table_id, block_number as u64).map(Block::from_verified)
    }

    /// Block `block_number` if the cache holds it, and whether a read has used it there;
    /// without counting as a use of it (for scans that do not fill the cache: compactions and
    /// long scans).
    pub(crate) fn peek_cached_block(&self, block_number: usize) -> Option<(Block, bool)> {
        self.cache
            .peek(self.table_id, block_number as u64)
            .map(|(block, read)| (Block::from_verified(block), read))
    }

    /// Verifies the frame of block `block_number`, read by the caller, and caches it if asked.
    pub(crate) fn accept_block(&self, block_number: usize, frame: Bytes, fill_cache: bool) -> Result<Block> {
        let offset = self.index.handle(block_number).offset;
        let payload = frame::verify(frame, &self.file_name, offset)?;
        let block = Block::parse(payload, &self.file_name, offset)?;
        if fill_cache {
            self.cache.insert_read(self.table_id, block_number as u64, block.payload().clone());
        }
        Ok(block)
    }

    /// Block `block_number`, from the cache or read, verified and (if asked) cached.
    pub(crate) async fn load_block(&self, block_number: usize, fill_cache: bool) -> Result<Block> {
        if let Some(block) = self.cached_block(block_number) {
            return Ok(block);
        }
        self.cache.count_miss();
        let handle = self.index.handle(block_number);
        let frame =
            frame::read_exact(&self.file, &self.file_name, handle.offset, handle.frame_len as usize).await?;
        self.accept_block(block_number, frame, fill_cache)
    }
}

impl<F: DiskFile> std::fmt::Debug for Table<F> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Table")
            .field("file_name", &self.file_name)
            .field("table_id", &self.table_id)
            .field("file_bytes", &self.file_bytes)
            .field("entry_count", &self.entry_count)
            .field("max_version", &self.max_version)
            .field("blocks", &self.index.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::{MemDisk, MemFile};
    use crate::disk::{align_up, Disk};
    use crate::sstable::TableWriter;
    use futures_executor::block_on;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Oracle = BTreeMap<Vec<u8>, Entry>;

    async fn write(disk: &MemDisk, name: &str, entries: &Oracle) -> crate::sstable::TableSummary {
        let file = disk.create(name).await.unwrap();
        let mut writer = TableWriter::new(file, name.to_string(), 10, entries.len());
        for (key, entry) in entries {
            writer.add(key, entry).await.unwrap();
        }
        assert_eq!(writer.entry_count(), entries.len() as u64);
        let estimate = writer.estimated_file_bytes();
        let summary = writer.finish().await.unwrap();
        assert!(estimate <= summary.file_bytes && summary.file_bytes <= estimate + 3 * ALIGNMENT as u64);
        summary
    }

    async fn open(disk: &MemDisk, name: &str, cache: &Rc<BlockCache>) -> Result<Rc<Table<MemFile>>> {
        Table::open(disk.open(name).await.unwrap(), name.to_string(), 1, cache.clone()).await.map(Rc::new)
    }

    async fn scan(
        table: &Rc<Table<MemFile>>,
        start: Option<&[u8]>,
        fill_cache: bool,
    ) -> Result<Vec<(Vec<u8>, Entry)>> {
        let mut iter = table.iter(start, fill_cache);
        let mut out = Vec::new();
        while let Some((key, entry)) = iter.next().await? {
            out.push((key.to_vec(), entry));
        }
        Ok(out)
    }

    fn expected_scan(oracle: &Oracle, start: Option<&[u8]>) -> Vec<(Vec<u8>, Entry)> {
        let start = start.unwrap_or(&[]).to_vec();
        oracle.range(start..).map(|(key, entry)| (key.clone(), entry.clone())).collect()
    }

    /// Every kind of entry: tombstones, expiring values, empty values, 1 MiB values, and keys
    /// from 1 to 256 bytes.
    fn varied_entries(count: u32) -> Oracle {
        let mut oracle = Oracle::new();
        for n in 0..count {
            let key = format!("key-{:06}", n * 2).into_bytes();
            let entry = match n % 7 {
                0 => Entry::tombstone(n.into(), 1_000 + u64::from(n)),
                1 => Entry::live(n.into(), Bytes::new(), None),
                2 => Entry::live(n.into(), Bytes::from(vec![n as u8; 100]), Some(5_000)),
                _ => {
                    Entry::live(n.into(), Bytes::from(format!("value {n}").repeat(n as usize % 40 + 1)), None)
                }
            };
            oracle.insert(key, entry);
        }
        let mut long_key = b"key-000100".to_vec();
        long_key.resize(crate::KEY_BYTES_MAX, b'~');
        oracle.insert(long_key, Entry::live(9, Bytes::from_static(b"long key"), None));
        for n in [3u32, 500, count - 1] {
            let key = format!("key-{:06}-huge", n * 2).into_bytes();
            oracle.insert(key, Entry::live(7, Bytes::from(vec![n as u8; crate::VALUE_BYTES_MAX]), None));
        }
        oracle
    }

    #[test]
    fn round_trips_every_kind_of_entry() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle = varied_entries(3_000);
            let summary = write(&disk, "t", &oracle).await;
            assert_eq!(summary.file_bytes % ALIGNMENT as u64, 0);
            assert_eq!(disk.file_len("t"), Some(summary.file_bytes));
            assert_eq!(summary.entry_count, oracle.len() as u64);
            let max_version = oracle.values().map(|entry| entry.version).max().unwrap();
            assert_eq!(summary.max_version, max_version);
            assert_eq!(&summary.smallest_key[..], &oracle.keys().next().unwrap()[..]);
            assert_eq!(&summary.largest_key[..], &oracle.keys().next_back().unwrap()[..]);

            let cache = Rc::new(BlockCache::new(64 << 20));
            let table = open(&disk, "t", &cache).await.unwrap();
            assert_eq!((table.entry_count(), table.file_bytes()), (summary.entry_count, summary.file_bytes));
            assert_eq!(table.max_version(), max_version);
            assert_eq!(
                (table.smallest_key(), table.largest_key()),
                (&summary.smallest_key, &summary.largest_key)
            );
            assert_eq!((table.id(), table.file_name()), (1, "t"));
            for (key, entry) in &oracle {
                assert_eq!(table.get(key).await.unwrap().as_ref(), Some(entry), "key {key:?}");
                assert!(table.may_contain(key));
            }
            assert_eq!(scan(&table, None, true).await.unwrap(), expected_scan(&oracle, None));
        });
    }

    #[test]
    fn absent_keys_below_between_and_above_are_none() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle = varied_entries(500);
            write(&disk, "t", &oracle).await;
            let table = open(&disk, "t", &Rc::new(BlockCache::new(1 << 20))).await.unwrap();
            let mut absent = vec![b"a".to_vec(), b"key-".to_vec(), b"zzz".to_vec(), vec![0xff; 256]];
            absent.extend((0..500).map(|n| format!("key-{:06}", n * 2 + 1).into_bytes()));
            for key in absent {
                assert!(!oracle.contains_key(&key));
                assert_eq!(table.get(&key).await.unwrap(), None, "key {key:?}");
            }
        });
    }

    #[test]
    fn scans_from_every_kind_of_start() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle = varied_entries(400);
            write(&disk, "t", &oracle).await;
            let table = open(&disk, "t", &Rc::new(BlockCache::new(1 << 20))).await.unwrap();
            let mut starts: Vec<Vec<u8>> = oracle.keys().step_by(13).cloned().collect();
            starts.extend([b"".to_vec(), b"a".to_vec(), b"key-000003".to_vec(), b"key-000100~".to_vec()]);
            starts.extend([oracle.keys().next_back().unwrap().clone(), b"zzz".to_vec()]);
            for start in &starts {
                for fill_cache in [true, false] {
                    let scanned = scan(&table, Some(start), fill_cache).await.unwrap();
                    assert_eq!(scanned, expected_scan(&oracle, Some(start)), "start {start:?}");
                }
            }
            assert!(scan(&table, Some(b"zzz"), true).await.unwrap().is_empty());
        });
    }

    #[test]
    fn scan_without_cache_filling_reads_ahead_and_caches_nothing() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle: Oracle = (0..20_000u32)
                .map(|n| (format!("{n:016}").into_bytes(), Entry::live(1, Bytes::from(vec![1; 100]), None)))
                .collect();
            write(&disk, "t", &oracle).await;
            let cache = Rc::new(BlockCache::new(64 << 20));
            let table = open(&disk, "t", &cache).await.unwrap();
            assert!(table.index().len() > SCAN_BLOCKS_MIN);
            assert_eq!(scan(&table, None, false).await.unwrap(), expected_scan(&oracle, None));
            assert_eq!(cache.used_bytes(), 0);
            assert_eq!(scan(&table, None, true).await.unwrap(), expected_scan(&oracle, None));
            assert!(cache.used_bytes() > 0);
        });
    }

    /// Enough blocks that a scan spans several readahead windows.
    const SCAN_BLOCKS_MIN: usize = 2 * crate::sstable::SCAN_READAHEAD_BYTES / ALIGNMENT;

    #[test]
    fn cache_hits_answer_like_misses() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle = varied_entries(1_000);
            write(&disk, "t", &oracle).await;
            let cache = Rc::new(BlockCache::new(64 << 20));
            let cached = open(&disk, "t", &cache).await.unwrap();
            let uncached = open(&disk, "t", &Rc::new(BlockCache::new(0))).await.unwrap();
            for (key, _) in oracle.iter().step_by(3) {
                assert_eq!(cached.get(key).await.unwrap(), uncached.get(key).await.unwrap());
            }
            let used = cache.used_bytes();
            assert!(used > 0);
            // Now every block read above is a hit.
            for (key, entry) in oracle.iter().step_by(3) {
                assert_eq!(cached.get(key).await.unwrap().as_ref(), Some(entry));
            }
            assert_eq!(cache.used_bytes(), used);
            assert_eq!(scan(&cached, None, true).await.unwrap(), scan(&uncached, None, true).await.unwrap());
        });
    }

    /// A read answered from the cache notes where the block is, and a prefetch by the key's
    /// prefix goes to the same block the read searched.
    #[test]
    fn a_cached_read_notes_its_block_for_prefetches() {
        block_on(async {
            let disk = MemDisk::new();
            // Keys that start, as stored keys do, with eight bytes of hash.
            let oracle: Oracle = (0..1_000u64)
                .map(|n| {
                    let mut key = n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes().to_vec();
                    key.extend_from_slice(b"user");
                    (key, Entry::live(n, Bytes::from(vec![n as u8; 100]), None))
                })
                .collect();
            write(&disk, "t", &oracle).await;
            let cache = Rc::new(BlockCache::new(64 << 20));
            let table = open(&disk, "t", &cache).await.unwrap();
            let (key, entry) = oracle.iter().nth(500).unwrap();
            let block_number = table.index.seek(key);
            assert!(table.get_cached(key, key_hash(key)).is_none(), "not cached before a read");
            assert_eq!(table.index.cached_hint(block_number), None);
            assert_eq!(table.get(key).await.unwrap().as_ref(), Some(entry));
            assert_eq!(table.index.cached_hint(block_number), None, "a read from the disk notes nothing");
            assert_eq!(table.get_cached(key, key_hash(key)).unwrap().unwrap().as_ref(), Some(entry));
            let block = table.cached_block(block_number).unwrap();
            let hint = table.index.cached_hint(block_number);
            assert_eq!(
                hint,
                Some((block.payload().as_ptr(), block.payload().len())),
                "noted by the cached read"
            );
            assert_eq!(table.index.seek_prefix(crate::sstable::key_prefix(key)), block_number);
            for stage in [Prefetch::Group, Prefetch::Slot, Prefetch::Value] {
                table.prefetch(crate::sstable::key_prefix(key), key_hash(key), stage);
            }
        });
    }

    #[test]
    fn filter_has_no_false_negatives_and_few_false_positives() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle: Oracle = (0..20_000u32)
                .map(|n| (format!("present-{n:08}").into_bytes(), Entry::tombstone(1, 1)))
                .collect();
            write(&disk, "t", &oracle).await;
            let table = open(&disk, "t", &Rc::new(BlockCache::new(0))).await.unwrap();
            assert!(oracle.keys().all(|key| table.may_contain(key)));
            // Absent keys inside the key range, so only the filter can reject them.
            let probes = 50_000;
            let false_positives =
                (0..probes).filter(|n| table.may_contain(format!("present-{n:08}x").as_bytes())).count();
            let rate = false_positives as f64 / probes as f64;
            assert!(rate < 0.02, "false-positive rate {rate}");
        });
    }

    #[test]
    fn empty_table_opens_and_holds_nothing() {
        block_on(async {
            let disk = MemDisk::new();
            let summary = write(&disk, "t", &Oracle::new()).await;
            assert_eq!(summary.file_bytes, 2 * ALIGNMENT as u64, "an index page and a filter page");
            assert!(summary.smallest_key.is_empty() && summary.largest_key.is_empty());
            let table = open(&disk, "t", &Rc::new(BlockCache::new(1 << 20))).await.unwrap();
            assert_eq!(table.get(b"a").await.unwrap(), None);
            assert!(!table.may_contain(b"a"));
            assert!(scan(&table, None, true).await.unwrap().is_empty());
        });
    }

    #[test]
    fn writer_rejects_bad_keys_and_values() {
        block_on(async {
            let disk = MemDisk::new();
            let mut writer = TableWriter::new(disk.create("t").await.unwrap(), "t".into(), 10, 0);
            let entry = Entry::live(1, Bytes::new(), None);
            assert!(matches!(writer.add(b"", &entry).await, Err(StorageError::KeyEmpty)));
            let long = vec![b'k'; crate::key::STORED_KEY_BYTES_MAX + 1];
            assert!(matches!(writer.add(&long, &entry).await, Err(StorageError::KeyTooLong { .. })));
            let huge = Entry::live(1, Bytes::from(vec![0; crate::VALUE_BYTES_MAX + 1]), None);
            assert!(matches!(writer.add(b"k", &huge).await, Err(StorageError::ValueTooLarge { .. })));
            assert_eq!(writer.entry_count(), 0);
        });
    }

    #[test]
    #[should_panic(expected = "strictly ascending")]
    fn writer_asserts_ascending_keys() {
        block_on(async {
            let disk = MemDisk::new();
            let mut writer = TableWriter::new(disk.create("t").await.unwrap(), "t".into(), 10, 0);
            let entry = Entry::live(1, Bytes::new(), None);
            writer.add(b"b", &entry).await.unwrap();
            let _ = writer.add(b"b", &entry).await;
        });
    }

    #[test]
    fn failed_write_is_an_error() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle = varied_entries(200);
            disk.fail_writes_after(0);
            let mut writer = TableWriter::new(disk.create("t").await.unwrap(), "t".into(), 10, 0);
            let mut result = Ok(());
            for (key, entry) in &oracle {
                result = result.and(writer.add(key, entry).await);
            }
            let result = match result {
                Ok(()) => writer.finish().await.map(drop),
                Err(error) => Err(error),
            };
            assert!(matches!(result, Err(StorageError::Io { .. })));
        });
    }

    /// Small entries only, so the file is a few dozen pages and every byte can be damaged.
    fn small_entries() -> Oracle {
        (0..600u32)
            .map(|n| {
                let entry = match n % 3 {
                    0 => Entry::tombstone(n.into(), 3),
                    1 => Entry::live(n.into(), Bytes::from(format!("v{n}")), Some(99)),
                    _ => Entry::live(n.into(), Bytes::from(vec![n as u8; 40]), None),
                };
                (format!("k{n:05}").into_bytes(), entry)
            })
            .collect()
    }

    /// Opens the table and reads every key and a full scan; returns whether any error was seen,
    /// and fails the test if any value differs from the oracle.
    async fn read_everything(disk: &MemDisk, oracle: &Oracle) -> bool {
        let table = match open(disk, "t", &Rc::new(BlockCache::new(1 << 20))).await {
            Ok(table) => table,
            Err(error) => {
                assert!(error.is_fatal());
                return true;
            }
        };
        let mut failed = false;
        for (key, entry) in oracle {
            match table.get(key).await {
                Ok(found) => {
                    assert!(found.is_none() || found.as_ref() == Some(entry), "wrong value for {key:?}")
                }
                Err(error) => {
                    assert!(matches!(
                        error,
                        StorageError::ChecksumMismatch { .. } | StorageError::Corruption { .. }
                    ));
                    failed = true;
                }
            }
        }
        match scan(&table, None, false).await {
            Ok(scanned) => {
                assert!(scanned.iter().all(|(key, entry)| oracle.get(key) == Some(entry)), "wrong scan");
            }
            Err(_) => failed = true,
        }
        failed
    }

    #[test]
    fn bit_flips_anywhere_never_yield_wrong_values() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle = small_entries();
            let summary = write(&disk, "t", &oracle).await;
            for offset in (0..summary.file_bytes).step_by(41) {
                disk.flip_bit("t", offset, (offset % 8) as u8).unwrap();
                read_everything(&disk, &oracle).await;
                disk.flip_bit("t", offset, (offset % 8) as u8).unwrap();
            }
            assert!(!read_everything(&disk, &oracle).await, "restored file reads cleanly");
        });
    }

    #[test]
    fn bit_flip_in_each_part_is_detected() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle = small_entries();
            let summary = write(&disk, "t", &oracle).await;
            let file = disk.open("t").await.unwrap();
            let footer_offset = summary.file_bytes - FOOTER_BYTES as u64;
            let footer_bytes = file.read_at(footer_offset, FOOTER_BYTES).await.unwrap();
            let footer = Footer::decode(&footer_bytes, "t", footer_offset, summary.file_bytes).unwrap();
            assert!(footer.index_offset > 2 * ALIGNMENT as u64, "several data blocks");
            let first_block = open(&disk, "t", &Rc::new(BlockCache::new(0))).await.unwrap().index().handle(0);
            let parts = [
                ("first data block", 20),
                ("later data block", ALIGNMENT as u64 + 2),
                ("data block checksum", first_block.offset + u64::from(first_block.frame_len) - 1),
                ("data block length", 1),
                ("index", footer.index_offset + 9),
                ("index length", footer.index_offset),
                ("filter", footer.filter_offset + 100),
                ("filter checksum", footer.filter_offset + u64::from(footer.filter_len) - 1),
                ("footer", footer_offset + 17),
                ("footer checksum", summary.file_bytes - 1),
            ];
            for (part, offset) in parts {
                for bit in [0, 5] {
                    disk.flip_bit("t", offset, bit).unwrap();
                    assert!(
                        read_everything(&disk, &oracle).await,
                        "flip in {part} at {offset} went unnoticed"
                    );
                    disk.flip_bit("t", offset, bit).unwrap();
                }
            }
        });
    }

    #[test]
    fn truncated_file_fails_to_open() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle = small_entries();
            let summary = write(&disk, "t", &oracle).await;
            let whole = disk.open("t").await.unwrap().read_at(0, summary.file_bytes as usize).await.unwrap();
            // MemDisk writes whole pages only, so truncate at each page boundary.
            for pages in 0..summary.file_bytes / ALIGNMENT as u64 {
                let name = format!("cut{pages}");
                let cut = disk.create(&name).await.unwrap();
                let len = pages as usize * ALIGNMENT;
                if len > 0 {
                    cut.write_at(0, &whole[..len]).await.unwrap();
                }
                let opened = Table::open(cut, name, 2, Rc::new(BlockCache::new(0))).await;
                assert!(opened.is_err(), "{pages} pages opened");
            }
        });
    }

    #[test]
    fn large_tables_are_written_in_aligned_chunks() {
        block_on(async {
            let disk = MemDisk::new();
            let oracle: Oracle = (0..30_000u32)
                .map(|n| (format!("{n:016}").into_bytes(), Entry::live(1, Bytes::from(vec![2; 100]), None)))
                .collect();
            let summary = write(&disk, "t", &oracle).await;
            assert!(summary.file_bytes > 3 * crate::sstable::WRITE_CHUNK_BYTES as u64);
            assert_eq!(summary.file_bytes, align_up(summary.file_bytes));
            let table = open(&disk, "t", &Rc::new(BlockCache::new(1 << 20))).await.unwrap();
            for (key, entry) in oracle.iter().step_by(97) {
                assert_eq!(table.get(key).await.unwrap().as_ref(), Some(entry));
            }
        });
    }

    fn arbitrary_entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(version, at)| Entry::tombstone(version, at)),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(version, data, expiry)| Entry::live(
                    version,
                    Bytes::from(data),
                    expiry
                )),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn round_trip_matches_a_btree_oracle(
            oracle in proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 1..24), arbitrary_entry(), 0..400),
            probes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..40),
        ) {
            block_on(async {
                let disk = MemDisk::new();
                write(&disk, "t", &oracle).await;
                let table = open(&disk, "t", &Rc::new(BlockCache::new(1 << 20))).await.unwrap();
                for (key, entry) in &oracle {
                    assert_eq!(table.get(key).await.unwrap().as_ref(), Some(entry));
                }
                for probe in &probes {
                    if !probe.is_empty() {
                        assert_eq!(table.get(probe).await.unwrap().as_ref(), oracle.get(probe));
                    }
                    assert_eq!(scan(&table, Some(probe), false).await.unwrap(), expected_scan(&oracle, Some(probe)));
                }
                assert_eq!(scan(&table, None, true).await.unwrap(), expected_scan(&oracle, None));
            });
        }
    }
}
