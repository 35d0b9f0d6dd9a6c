//! Writing a table in one sequential pass.

use super::block::{Block, BlockBuilder};
use super::filter::{key_hash, BloomFilter};
use super::footer::{Footer, FOOTER_BYTES};
use super::frame::{self, FRAME_OVERHEAD_BYTES};
use super::index::{BlockHandle, IndexBuilder};
use super::WRITE_CHUNK_BYTES;
use crate::block_cache::BlockCache;
use crate::disk::{align_up, DiskFile, ALIGNMENT};
use crate::entry::Entry;
use crate::error::{Result, StorageError};
use bytes::Bytes;
use std::rc::Rc;

/// The key hashes are collected for the filter; a caller's estimate beyond this is not trusted
/// for the up-front allocation (the vector still grows as needed).
const EXPECTED_KEYS_RESERVED_MAX: usize = 1 << 22;

/// What a finished table holds, for the manifest.
#[derive(Clone, Debug)]
pub struct TableSummary {
    /// Length of the file, a multiple of [`ALIGNMENT`].
    pub file_bytes: u64,
    pub entry_count: u64,
    /// Empty for a table without entries.
    pub smallest_key: Bytes,
    /// Empty for a table without entries.
    pub largest_key: Bytes,
    /// The highest version of any entry (0 for a table without entries).
    pub max_version: u64,
}

/// Builds a table from entries given in strictly ascending key order.
///
/// Blocks are encoded in place in one buffer, which is written out in aligned chunks of about
/// [`WRITE_CHUNK_BYTES`] as it fills, so memory stays bounded whatever the table's size (apart
/// from the index and 8 bytes of key hash per entry for the filter). After any error the
/// writer must be dropped and the file removed: what was written is not a table.
pub struct TableWriter<F: DiskFile> {
    file: F,
    file_name: String,
    bloom_bits_per_key: u32,
    /// One hash per key; the filter is sized from the final count in [`TableWriter::finish`].
    key_hashes: Vec<u64>,
    /// Bytes not yet written. Always starts at a page boundary of the file, and holds only
    /// whole, padded blocks plus at most the open one.
    buffer: Vec<u8>,
    /// File offset of `buffer[0]`.
    buffer_offset: u64,
    block: BlockBuilder,
    index: IndexBuilder,
    entry_count: u64,
    smallest_key: Vec<u8>,
    /// The last key added: the order check, and the open block's last key for the index.
    last_key: Vec<u8>,
    max_version: u64,
    /// The cache finished blocks go to, the table's id there, and which blocks go.
    cache_fill: Option<(Rc<BlockCache>, u64, CacheFill)>,
    /// The open block holds an entry whose source block was cached (see [`TableWriter::mark_warm`]).
    block_warm: bool,
}

/// Which of a table's blocks its writer puts in the block cache as it finishes them. Blocks
/// holding an entry marked with [`TableWriter::mark_warm`] go in either way, as if read
/// ([`BlockCache::insert_used`]): they take over from blocks reads had cached. The others enter
/// as new blocks, which the cache evicts first unless read soon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheFill {
    /// Every block: a flush, whose entries were all in memory, or a compaction small next to
    /// the cache.
    All,
    /// Only the warm blocks: a compaction too large for the cache carries over what reads had
    /// cached, and nothing else.
    Warm,
}

impl<F: DiskFile> TableWriter<F> {
    /// A writer into `file`, new and empty. `expected_keys` only sizes allocations.
    pub fn new(file: F, file_name: String, bloom_bits_per_key: u32, expected_keys: usize) -> Self {
        TableWriter {
            file,
            file_name,
            bloom_bits_per_key,
            key_hashes: Vec::with_capacity(expected_keys.min(EXPECTED_KEYS_RESERVED_MAX)),
            buffer: Vec::with_capacity(WRITE_CHUNK_BYTES + ALIGNMENT),
            buffer_offset: 0,
            block: BlockBuilder::default(),
            index: IndexBuilder::default(),
            entry_count: 0,
            smallest_key: Vec::new(),
            last_key: Vec::new(),
            max_version: 0,
            cache_fill: None,
            block_warm: false,
        }
    }

    /// This writer, also putting the blocks it finishes (those `fill` says) into `cache` as
    /// those of table `table_id` (the id the table is then opened with), so that the first reads
    /// of the new table find them in memory. Files are written and read with O_DIRECT, so without
    /// this each block's first read after a flush or a compaction goes to the disk (RocksDB's
    /// `prepopulate_block_cache` answers the same problem for flushes).
    pub fn filling_cache(mut self, cache: Rc<BlockCache>, table_id: u64, fill: CacheFill) -> Self {
        self.cache_fill = Some((cache, table_id, fill));
        self
    }

    /// Marks the entry added last as warm: the block that holds it goes to the cache as if read
    /// when finished (see [`CacheFill`]). Call it after [`TableWriter::add`].
    pub fn mark_warm(&mut self) {
        self.block_warm = true;
    }

    /// Adds an entry. Keys must be strictly ascending (asserted: a violation is a bug in the
    /// caller, and a table out of order would return wrong answers). Writes a chunk to the file
    /// when the buffer is full.
    pub async fn add(&mut self, key: &[u8], entry: &Entry) -> Result<()> {
        if key.is_empty() {
            return Err(StorageError::KeyEmpty);
        }
        if key.len() > crate::key::STORED_KEY_BYTES_MAX {
            return Err(StorageError::KeyTooLong { len: key.len() });
        }
        if let Some(data) = entry.data().filter(|data| data.len() > crate::VALUE_BYTES_MAX) {
            return Err(StorageError::ValueTooLarge { len: data.len() });
        }
        assert!(
            self.entry_count == 0 || key > &self.last_key[..],
            "table keys must be added in strictly ascending order"
        );
        if self.block.is_open() && !self.block.fits(entry.encoded_len(key.len())) {
            self.finish_block().await?;
        }
        self.block.add(&mut self.buffer, key, entry);
        if self.entry_count == 0 {
            self.smallest_key = key.to_vec();
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.key_hashes.push(key_hash(key));
        self.entry_count += 1;
        self.max_version = self.max_version.max(entry.version);
        Ok(())
    }

    /// Closes the open block, indexes it, and writes the buffer once it reaches a chunk.
    async fn finish_block(&mut self) -> Result<()> {
        let (start, frame_len) = self.block.finish(&mut self.buffer);
        // Check the block with the reader's own code before it leaves memory.
        debug_assert!(
            frame::verify(Bytes::copy_from_slice(&self.buffer[start..start + frame_len]), &self.file_name, 0)
                .and_then(|payload| Block::parse(payload, &self.file_name, 0))
                .is_ok(),
            "a block the writer built does not read back"
        );
        let offset = self.buffer_offset + start as u64;
        if let Some((cache, table_id, fill)) = &self.cache_fill {
            let payload = &self.buffer[frame::payload_range(start, frame_len)];
            let block_number = self.index.len() as u64;
            if self.block_warm {
                cache.insert_used(*table_id, block_number, Bytes::copy_from_slice(payload));
            } else if *fill == CacheFill::All {
                cache.insert(*table_id, block_number, Bytes::copy_from_slice(payload));
            }
        }
        self.block_warm = false;
        let frame_len = u32::try_from(frame_len).expect("a block frame fits in u32");
        self.index.push(&self.last_key, BlockHandle { offset, frame_len });
        if self.buffer.len() >= WRITE_CHUNK_BYTES {
            self.write_buffer().await?;
        }
        Ok(())
    }

    async fn write_buffer(&mut self) -> Result<()> {
        assert!(
            self.buffer.len().is_multiple_of(ALIGNMENT) && !self.block.is_open(),
            "only whole pages are written"
        );
        self.file
            .write_at(self.buffer_offset, &self.buffer)
            .await
            .map_err(|error| StorageError::io("write", self.file_name.as_str(), error))?;
        self.buffer_offset += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes the open block, the index, the filter and the footer, then syncs the file. The
    /// table is durable when this resolves `Ok`; the caller still syncs the directory to make
    /// its name durable.
    pub async fn finish(mut self) -> Result<TableSummary> {
        if self.block.is_open() {
            self.finish_block().await?;
        }
        let index_offset = self.buffer_offset + self.buffer.len() as u64;
        let start = frame::begin(&mut self.buffer);
        self.index.encode(&self.smallest_key, &mut self.buffer);
        let index_len = frame::seal(&mut self.buffer, start);

        let filter = BloomFilter::build(&self.key_hashes, self.bloom_bits_per_key);
        let filter_offset = self.buffer_offset + self.buffer.len() as u64;
        let start = frame::begin(&mut self.buffer);
        filter.encode(&mut self.buffer);
        let filter_len = frame::seal(&mut self.buffer, start);

        // The footer ends the last page: inside the filter's padding when it has room.
        let file_bytes = align_up(filter_offset + (filter_len + FOOTER_BYTES) as u64);
        self.buffer.resize((file_bytes - self.buffer_offset) as usize - FOOTER_BYTES, 0);
        let footer = Footer {
            index_offset,
            index_len: u32::try_from(index_len).expect("the index fits in u32"),
            filter_offset,
            filter_len: u32::try_from(filter_len).expect("the filter fits in u32"),
            entry_count: self.entry_count,
            max_version: self.max_version,
        };
        footer.encode(&mut self.buffer);
        assert_eq!(self.buffer_offset + self.buffer.len() as u64, file_bytes, "footer ends the file");
        debug_assert_eq!(
            Footer::decode(&self.buffer[self.buffer.len() - FOOTER_BYTES..], &self.file_name, 0, file_bytes)
                .ok(),
            Some(footer),
            "the footer the writer built does not read back"
        );
        self.write_buffer().await?;
        self.file.sync().await.map_err(|error| StorageError::io("sync", self.file_name.as_str(), error))?;
        Ok(TableSummary {
            file_bytes,
            entry_count: self.entry_count,
            smallest_key: Bytes::from(self.smallest_key),
            largest_key: Bytes::from(self.last_key),
            max_version: self.max_version,
        })
    }

    /// Entries added so far.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// About how long the file would be if finished now: what is written and buffered, plus
    /// the index, the filter and the footer. Compaction uses it to cut output tables.
    pub fn estimated_file_bytes(&self) -> u64 {
        let blocks = self.buffer_offset + self.buffer.len() as u64;
        let index = self.index.payload_len(self.smallest_key.len()) + FRAME_OVERHEAD_BYTES;
        let filter = self.key_hashes.len() as u64 * u64::from(self.bloom_bits_per_key) / 8;
        blocks + index as u64 + filter + FOOTER_BYTES as u64
    }
}
