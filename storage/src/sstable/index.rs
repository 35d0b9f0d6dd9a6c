//! The block index: for each data block, its last key, offset and frame length, plus the
//! table's smallest key.
//!
//! Payload: `block_count u32 | smallest_key_len u16 | smallest_key |
//! block_count × (last_key_len u16 | last_key | offset u64 | frame_len u32)`.

use super::frame::FRAME_OVERHEAD_BYTES;
use super::key_prefix as prefix;
use crate::disk::{align_up, ALIGNMENT};
use crate::error::{Result, StorageError};
use bytes::Bytes;

/// Where a data block's frame is in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockHandle {
    pub offset: u64,
    pub frame_len: u32,
}

/// Collects index entries while the writer emits blocks.
#[derive(Debug, Default)]
pub(crate) struct IndexBuilder {
    /// The encoded entries, without the header.
    entries: Vec<u8>,
    block_count: u32,
}

impl IndexBuilder {
    pub fn push(&mut self, last_key: &[u8], handle: BlockHandle) {
        self.entries.extend_from_slice(&(last_key.len() as u16).to_le_bytes());
        self.entries.extend_from_slice(last_key);
        self.entries.extend_from_slice(&handle.offset.to_le_bytes());
        self.entries.extend_from_slice(&handle.frame_len.to_le_bytes());
        self.block_count += 1;
    }

    /// Blocks indexed so far: the number the next block gets.
    pub fn len(&self) -> usize {
        self.block_count as usize
    }

    /// Bytes the payload will take with a smallest key of `smallest_key_len` bytes.
    pub fn payload_len(&self, smallest_key_len: usize) -> usize {
        4 + 2 + smallest_key_len + self.entries.len()
    }

    /// Appends the payload to `out`.
    pub fn encode(&self, smallest_key: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block_count.to_le_bytes());
        out.extend_from_slice(&(smallest_key.len() as u16).to_le_bytes());
        out.extend_from_slice(smallest_key);
        out.extend_from_slice(&self.entries);
    }
}

/// One decoded index entry; its key lives in the index payload.
#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    key_start: u32,
    key_len: u16,
    handle: BlockHandle,
}

/// The decoded index, kept in memory for the life of the table.
#[derive(Debug)]
pub(crate) struct Index {
    payload: Bytes,
    entries: Vec<IndexEntry>,
    /// Each block's last key's first eight bytes ([`prefix`]), side by side: a seek compares
    /// these first, so its probes touch a few dense lines instead of an entry and a key apiece.
    /// Stored keys start with their token, a hash, so the prefixes almost never tie.
    prefixes: Vec<u64>,
    smallest_key: Bytes,
    largest_key: Bytes,
}

/// Reads the little-endian integer of `N` bytes at `*at`, advancing it.
fn take<const N: usize>(payload: &[u8], at: &mut usize) -> Option<[u8; N]> {
    let bytes = payload.get(*at..*at + N)?.try_into().ok()?;
    *at += N;
    Some(bytes)
}

impl Index {
    /// Decodes a verified index payload read at `offset`, and checks it against the writer's
    /// layout: keys within limits and strictly ascending, blocks back to back from offset 0,
    /// each starting on a page, the last one ending right before the index (`data_end`).
    pub fn decode(payload: Bytes, file_name: &str, offset: u64, data_end: u64) -> Result<Index> {
        let corrupt = |reason: &str| StorageError::corruption(file_name, offset, format!("index: {reason}"));
        let key_ok = |len: usize| (1..=crate::key::STORED_KEY_BYTES_MAX).contains(&len);
        let mut at = 0;
        let block_count = u32::from_le_bytes(take(&payload, &mut at).ok_or_else(|| corrupt("truncated"))?);
        let smallest_len = u16::from_le_bytes(take(&payload, &mut at).ok_or_else(|| corrupt("truncated"))?);
        let smallest_range = at..at + smallest_len as usize;
        at = smallest_range.end;
        let smallest_ok = if block_count == 0 { smallest_len == 0 } else { key_ok(smallest_len as usize) };
        if at > payload.len() || !smallest_ok {
            return Err(corrupt("bad smallest key"));
        }
        // Each entry takes at least 2 + 1 + 8 + 4 bytes; bound the allocation by what fits.
        if block_count as usize > (payload.len() - at) / 15 {
            return Err(corrupt("block count larger than the index"));
        }
        let mut entries = Vec::with_capacity(block_count as usize);
        let mut prefixes = Vec::with_capacity(block_count as usize);
        let mut expected_offset = 0u64;
        let mut previous_key: &[u8] = &payload[smallest_range.clone()];
        for number in 0..block_count {
            let key_len = u16::from_le_bytes(take(&payload, &mut at).ok_or_else(|| corrupt("truncated"))?);
            let key_start = at;
            at += key_len as usize;
            let key = payload.get(key_start..at).ok_or_else(|| corrupt("truncated"))?;
            let block_offset =
                u64::from_le_bytes(take(&payload, &mut at).ok_or_else(|| corrupt("truncated"))?);
            let frame_len = u32::from_le_bytes(take(&payload, &mut at).ok_or_else(|| corrupt("truncated"))?);
            // The first block's last key may equal the smallest key (a one-entry block).
            let ordered = if number == 0 { key >= previous_key } else { key > previous_key };
            if !key_ok(key.len()) || !ordered {
                return Err(corrupt("block keys out of limits or out of order"));
            }
            if block_offset != expected_offset || (frame_len as usize) < FRAME_OVERHEAD_BYTES + 4 {
                return Err(corrupt("data blocks are not back to back"));
            }
            expected_offset = align_up(block_offset + u64::from(frame_len));
            previous_key = key;
            let handle = BlockHandle { offset: block_offset, frame_len };
            entries.push(IndexEntry { key_start: key_start as u32, key_len, handle });
            prefixes.push(prefix(key));
        }
        if at != payload.len() {
            return Err(corrupt("trailing bytes"));
        }
        if expected_offset != data_end || !data_end.is_multiple_of(ALIGNMENT as u64) {
            return Err(corrupt("data blocks do not end where the index begins"));
        }
        let smallest_key = payload.slice(smallest_range);
        let largest_key = entries.last().map_or_else(Bytes::new, |last| {
            payload.slice(last.key_start as usize..last.key_start as usize + last.key_len as usize)
        });
        Ok(Index { payload, entries, prefixes, smallest_key, largest_key })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn handle(&self, block: usize) -> BlockHandle {
        self.entries[block].handle
    }

    fn last_key(&self, block: usize) -> &[u8] {
        let entry = &self.entries[block];
        &self.payload[entry.key_start as usize..entry.key_start as usize + entry.key_len as usize]
    }

    /// The first block that may hold `key` or the first key after it: the first whose last key
    /// is `>= key`. `len()` when `key` is past the largest key.
    pub fn seek(&self, key: &[u8]) -> usize {
        let wanted = prefix(key);
        let (mut low, mut high) = (0, self.entries.len());
        while low < high {
            let middle = low + (high - low) / 2;
            let below = match self.prefixes[middle].cmp(&wanted) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => self.last_key(middle) < key,
            };
            if below {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// Prefixes ([`super::key_prefix`]) bounding the keys of block `block`: its keys' prefixes
    /// are at least the first (the previous block's last key's, or the table's smallest key's)
    /// and at most the second (its own last key's).
    pub fn prefix_bounds(&self, block: usize) -> (u64, u64) {
        let low = match block.checked_sub(1) {
            Some(previous) => self.prefixes[previous],
            None => prefix(&self.smallest_key),
        };
        (low, self.prefixes[block])
    }

    /// Empty for an empty table.
    pub fn smallest_key(&self) -> &Bytes {
        &self.smallest_key
    }

    /// Empty for an empty table.
    pub fn largest_key(&self) -> &Bytes {
        &self.largest_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (IndexBuilder, Vec<u8>) {
        let mut builder = IndexBuilder::default();
        builder.push(b"c", BlockHandle { offset: 0, frame_len: 4000 });
        builder.push(b"f", BlockHandle { offset: 4096, frame_len: 5000 });
        builder.push(b"k", BlockHandle { offset: 12288, frame_len: 100 });
        let mut out = Vec::new();
        builder.encode(b"a", &mut out);
        assert_eq!(out.len(), builder.payload_len(1));
        (builder, out)
    }

    #[test]
    fn round_trips_and_seeks() {
        let (_, out) = sample();
        let index = Index::decode(Bytes::from(out), "t", 0, 16384).unwrap();
        assert_eq!(index.len(), 3);
        assert_eq!((&index.smallest_key()[..], &index.largest_key()[..]), (&b"a"[..], &b"k"[..]));
        assert_eq!(index.seek(b"a"), 0);
        assert_eq!(index.seek(b"c"), 0);
        assert_eq!(index.seek(b"d"), 1);
        assert_eq!(index.seek(b"k"), 2);
        assert_eq!(index.seek(b"z"), 3);
        assert_eq!(index.handle(1), BlockHandle { offset: 4096, frame_len: 5000 });
    }

    #[test]
    fn rejects_layouts_the_writer_never_makes() {
        let (_, out) = sample();
        assert!(Index::decode(Bytes::from(out.clone()), "t", 0, 20480).is_err());
        for cut in 0..out.len() {
            assert!(Index::decode(Bytes::from(out[..cut].to_vec()), "t", 0, 16384).is_err(), "cut {cut}");
        }
        let mut gap = IndexBuilder::default();
        gap.push(b"c", BlockHandle { offset: 0, frame_len: 100 });
        gap.push(b"d", BlockHandle { offset: 8192, frame_len: 100 });
        let mut encoded = Vec::new();
        gap.encode(b"a", &mut encoded);
        assert!(Index::decode(Bytes::from(encoded), "t", 0, 12288).is_err());
        let mut unordered = IndexBuilder::default();
        unordered.push(b"c", BlockHandle { offset: 0, frame_len: 100 });
        unordered.push(b"b", BlockHandle { offset: 4096, frame_len: 100 });
        let mut encoded = Vec::new();
        unordered.encode(b"a", &mut encoded);
        assert!(Index::decode(Bytes::from(encoded), "t", 0, 8192).is_err());
    }

    proptest::proptest! {
        /// A stand-in for a fuzz target: damaged payloads (past their checksum) never panic.
        #[test]
        fn damaged_payloads_never_panic(
            damage in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..6),
        ) {
            let (_, mut out) = sample();
            for (at, byte) in damage {
                let at = at % out.len();
                out[at] = byte;
            }
            if let Ok(index) = Index::decode(Bytes::from(out), "t", 0, 16384) {
                for key in [&b"a"[..], b"f", b"zz"] {
                    let block = index.seek(key);
                    if block < index.len() {
                        index.handle(block);
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// Seeking by prefix first finds the block a plain search by whole keys finds, for keys
        /// of any length that share their first bytes, tie on them, or end inside them.
        #[test]
        fn seek_by_prefix_matches_a_search_by_whole_keys(
            keys in proptest::collection::btree_set(proptest::collection::vec(0u8..3, 1..12), 1..40),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..12), 1..20),
        ) {
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            let mut builder = IndexBuilder::default();
            for (number, key) in keys.iter().enumerate() {
                builder.push(key, BlockHandle { offset: number as u64 * 4096, frame_len: 100 });
            }
            let mut out = Vec::new();
            builder.encode(&keys[0], &mut out);
            let index = Index::decode(Bytes::from(out), "t", 0, keys.len() as u64 * 4096).unwrap();
            for probe in probes.iter().chain(&keys) {
                let expected = keys.partition_point(|key| key.as_slice() < probe.as_slice());
                proptest::prop_assert_eq!(index.seek(probe), expected, "probe {:?}", probe);
            }
        }
    }

    #[test]
    fn prefixes_order_as_keys_do_or_tie() {
        assert!(prefix(b"a") < prefix(b"b"));
        assert_eq!(prefix(b"a"), prefix(b"a\0"), "a key and its zero-extension tie");
        assert_eq!(prefix(b"abcdefgh1"), prefix(b"abcdefgh2"), "only eight bytes count");
        assert!(prefix(b"ab") < prefix(b"abc"));
        assert_eq!(prefix(b""), 0);
    }

    #[test]
    fn empty_index_decodes() {
        let mut out = Vec::new();
        IndexBuilder::default().encode(b"", &mut out);
        let index = Index::decode(Bytes::from(out), "t", 0, 0).unwrap();
        assert_eq!(index.len(), 0);
        assert_eq!(index.seek(b"a"), 0);
        assert!(index.smallest_key().is_empty() && index.largest_key().is_empty());
    }
}
