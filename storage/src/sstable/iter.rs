//! Ascending scans over one table.

use super::block::Block;
use super::table::Table;
use super::{frame, SCAN_READAHEAD_BYTES};
use crate::disk::DiskFile;
use crate::entry::Entry;
use crate::error::Result;
use bytes::Bytes;
use std::rc::Rc;

/// Consecutive blocks read in one request, for scans that do not fill the cache.
#[derive(Debug)]
struct Readahead {
    /// File offset of `bytes[0]`.
    offset: u64,
    bytes: Bytes,
}

/// An ascending scan over a table, made by [`Table::iter`]. Positions lazily: nothing is read
/// until the first [`TableIter::next`]. After an error the scan must be abandoned.
pub struct TableIter<F: DiskFile> {
    table: Rc<Table<F>>,
    /// The start key, until the first block is positioned on it.
    start: Option<Vec<u8>>,
    fill_cache: bool,
    /// The block to load when the current one is exhausted.
    next_block: usize,
    /// The current block and its file offset.
    current: Option<(Block, u64)>,
    /// The current block was in the block cache when loaded, used by a read there.
    current_cached: bool,
    /// Next entry of the current block.
    position: usize,
    readahead: Option<Readahead>,
}

impl<F: DiskFile> TableIter<F> {
    pub(crate) fn new(table: Rc<Table<F>>, start: Option<&[u8]>, fill_cache: bool) -> Self {
        // The first block that can hold a key >= start: no I/O needed to find it.
        let next_block = start.map_or(0, |start| table.index().seek(start));
        TableIter {
            table,
            start: start.map(<[u8]>::to_vec),
            fill_cache,
            next_block,
            current: None,
            current_cached: false,
            position: 0,
            readahead: None,
        }
    }

    /// Whether the block of the entry [`TableIter::next`] returned last was in the block cache,
    /// used by a read there (for a compaction: its entries' new block is worth caching).
    pub fn from_cache(&self) -> bool {
        self.current_cached
    }

    /// The next entry in key order, or `None` past the last one. Keys and values are
    /// zero-copy slices of the block they came from.
    pub async fn next(&mut self) -> Result<Option<(Bytes, Entry)>> {
        loop {
            if let Some((block, offset)) = &self.current {
                if self.position < block.len() {
                    let item = block.entry_at(self.position, self.table.file_name(), || *offset)?;
                    self.position += 1;
                    return Ok(Some(item));
                }
                self.current = None;
            }
            if self.next_block >= self.table.index().len() {
                self.readahead = None;
                return Ok(None);
            }
            let block_number = self.next_block;
            let block = self.load(block_number).await?;
            self.next_block += 1;
            self.position = match self.start.take() {
                Some(start) => block.seek(&start),
                None => 0,
            };
            self.current = Some((block, self.table.index().handle(block_number).offset));
        }
    }

    async fn load(&mut self, block_number: usize) -> Result<Block> {
        self.current_cached = false;
        if self.fill_cache {
            // Blocks are read one by one: a cached slice of a larger read would pin all of it.
            return self.table.load_block(block_number, true).await;
        }
        if let Some((block, read)) = self.table.peek_cached_block(block_number) {
            self.current_cached = read;
            return Ok(block);
        }
        let handle = self.table.index().handle(block_number);
        let start = handle.offset;
        let end = start + u64::from(handle.frame_len);
        let covered = self
            .readahead
            .as_ref()
            .is_some_and(|ahead| ahead.offset <= start && end <= ahead.offset + ahead.bytes.len() as u64);
        if !covered {
            // Span this block and as many following ones as fit in the readahead size.
            let index = self.table.index();
            let mut span_end = end;
            for next in block_number + 1..index.len() {
                let next = index.handle(next);
                let next_end = next.offset + u64::from(next.frame_len);
                if next_end - start > SCAN_READAHEAD_BYTES as u64 {
                    break;
                }
                span_end = next_end;
            }
            let bytes = frame::read_exact(
                self.table.file(),
                self.table.file_name(),
                start,
                (span_end - start) as usize,
            )
            .await?;
            self.readahead = Some(Readahead { offset: start, bytes });
        }
        let ahead = self.readahead.as_ref().expect("readahead covers the block");
        let frame = ahead.bytes.slice((start - ahead.offset) as usize..(end - ahead.offset) as usize);
        self.table.accept_block(block_number, frame, false)
    }
}
