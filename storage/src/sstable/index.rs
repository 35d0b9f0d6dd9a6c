//! The block index: for each data block, its last key, offset and frame length, plus the
//! table's smallest key.
//!
//! Payload: `block_count u32 | smallest_key_len u16 | smallest_key |
//! block_count × (last_key_len u16 | last_key | offset u64 | frame_len u32)`.

use super::frame::FRAME_OVERHEAD_BYTES;
use super::key_prefix as prefix;
use crate::disk::{align_up, ALIGNMENT};
use crate::error::{Result, StorageError};
use crate::prefetch::{prefetch_line, LINE_BYTES};
use bytes::Bytes;
use std::cell::Cell;

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
    /// Each block's last key's first eight bytes ([`prefix`]), side by side with the block's
    /// [`BlockHint`]: a seek compares the prefixes first, so its probes touch a few dense lines
    /// instead of an entry and a key apiece, and the line it ends on holds the hint of the
    /// block it found. Stored keys start with their token, a hash, so the prefixes almost
    /// never tie.
    prefixes: Vec<PrefixSlot>,
    /// The radix table over the prefixes' top [`Index::radix_bits`] bits: `radix[b]` is the
    /// first block whose prefix's top bits are `b` or more, so the blocks a prefix in bucket
    /// `b` can lead to are `radix[b]..=radix[b + 1]`. Prefixes are hash tokens, so with about a
    /// bucket a block, a seek searches one or two blocks' prefixes instead of halving its way
    /// down the whole array, each halving a miss in a large table; and the bucket's line can be
    /// asked for ahead from a key's token alone.
    radix: Vec<u32>,
    radix_bits: u32,
    smallest_key: Bytes,
    largest_key: Bytes,
}

/// A block's prefix and where its cached copy was last seen.
#[derive(Debug)]
#[repr(C, align(16))]
struct PrefixSlot {
    prefix: u64,
    hint: BlockHint,
}

/// Where a block's bytes were when a read last found it in the block cache, and how long it
/// was: an address for prefetching only, never read through. The cache may have dropped the
/// block since, and its memory be anything by now; a prefetch of it reads nothing the program
/// sees and cannot fault, so a stale hint costs a wasted prefetch, never a wrong answer.
#[derive(Debug, Default)]
struct BlockHint(Cell<u64>);

/// Bits of a [`BlockHint`] that hold the address: user-space addresses fit in 48 on x86-64 and
/// AArch64. The 16 above hold the length, so a block of 64 KiB or more (one holding a large
/// value), or at a larger address, gets no hint.
const HINT_ADDRESS_BITS: u32 = 48;

impl BlockHint {
    /// Notes that the block is at `bytes` now.
    #[inline]
    fn set(&self, bytes: &[u8]) {
        let address = bytes.as_ptr() as usize as u64;
        let len = bytes.len() as u64;
        let fits = address >> HINT_ADDRESS_BITS == 0 && len >> (u64::BITS - HINT_ADDRESS_BITS) == 0;
        let packed = if fits { address | len << HINT_ADDRESS_BITS } else { 0 };
        if self.0.get() != packed {
            self.0.set(packed);
        }
    }

    /// The block's last known address and length, if a read has seen it.
    #[inline]
    fn get(&self) -> Option<(*const u8, usize)> {
        let packed = self.0.get();
        let address = packed & ((1 << HINT_ADDRESS_BITS) - 1);
        (address != 0).then_some((address as usize as *const u8, (packed >> HINT_ADDRESS_BITS) as usize))
    }
}

/// The most lines of prefixes [`Index::prefetch_prefixes`] asks for: a bucket seldom leads
/// to more than a few blocks (four slots a line).
const PREFIX_LINES_PREFETCHED_MAX: usize = 2;
/// The most bits a radix table indexes by: a million buckets (4 MiB), for a table of a
/// million blocks (4 GiB); a larger table has a few blocks a bucket.
const RADIX_BITS_MAX: u32 = 20;

/// The radix bucket of `prefix` in a table of `bits` bits: its top `bits` bits.
#[inline]
fn radix_bucket(prefix: u64, bits: u32) -> usize {
    prefix.checked_shr(u64::BITS - bits).unwrap_or(0) as usize
}

/// The radix table over `prefixes` (ascending) and its bits: about one bucket a block.
fn radix_table(prefixes: &[PrefixSlot]) -> (Vec<u32>, u32) {
    let bits = match prefixes.len() {
        0..=1 => 0,
        count => (usize::BITS - (count - 1).leading_zeros()).min(RADIX_BITS_MAX),
    };
    let buckets = 1usize << bits;
    let mut radix = Vec::with_capacity(buckets + 1);
    let mut block = 0;
    for bucket in 0..=buckets {
        while block < prefixes.len() && radix_bucket(prefixes[block].prefix, bits) < bucket {
            block += 1;
        }
        radix.push(block as u32);
    }
    (radix, bits)
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
            prefixes.push(PrefixSlot { prefix: prefix(key), hint: BlockHint::default() });
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
        let (radix, radix_bits) = radix_table(&prefixes);
        Ok(Index { payload, entries, prefixes, radix, radix_bits, smallest_key, largest_key })
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
        let (mut low, mut high) = self.radix_range(wanted);
        while low < high {
            let middle = low + (high - low) / 2;
            let below = match self.prefixes[middle].prefix.cmp(&wanted) {
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

    /// The first block whose last key's prefix is `>= wanted` (`len()` when none is): where
    /// [`Index::seek`] goes for a key of that prefix, unless keys tie on it. For prefetching,
    /// from a key's token alone.
    pub fn seek_prefix(&self, wanted: u64) -> usize {
        let (low, high) = self.radix_range(wanted);
        low + self.prefixes[low..high].partition_point(|slot| slot.prefix < wanted)
    }

    /// Blocks `low..high` hold every block whose prefix's top bits are `wanted`'s, so the first
    /// block whose prefix is `>= wanted` (or whose last key is `>=` a key of that prefix) is
    /// one of `low..=high`.
    #[inline]
    fn radix_range(&self, wanted: u64) -> (usize, usize) {
        let bucket = radix_bucket(wanted, self.radix_bits);
        (self.radix[bucket] as usize, self.radix[bucket + 1] as usize)
    }

    /// Asks the processor for the radix table's line a seek for a key starting with `wanted`
    /// reads first. A hint only.
    #[inline]
    pub fn prefetch_radix(&self, wanted: u64) {
        prefetch_line(&self.radix[radix_bucket(wanted, self.radix_bits)]);
    }

    /// Asks the processor for the lines of prefixes a seek for a key starting with `wanted`
    /// searches (the first [`PREFIX_LINES_PREFETCHED_MAX`] lines of them), once the radix
    /// table's line is in. A hint only.
    pub fn prefetch_prefixes(&self, wanted: u64) {
        let (low, high) = self.radix_range(wanted);
        // `high` too: the key may lie past every prefix of its bucket.
        let last = high.min(self.prefixes.len().saturating_sub(1));
        let (Some(first), Some(last)) = (self.prefixes.get(low), self.prefixes.get(last)) else {
            return;
        };
        let (first, last) = (std::ptr::from_ref(first).cast::<u8>(), std::ptr::from_ref(last) as usize);
        // Line by line from the line the first slot is in.
        let first = first.wrapping_sub(first as usize % LINE_BYTES);
        for line in 0..PREFIX_LINES_PREFETCHED_MAX {
            let at = first.wrapping_add(line * LINE_BYTES);
            if at as usize > last {
                break;
            }
            prefetch_line(at);
        }
    }

    /// Prefixes ([`super::key_prefix`]) bounding the keys of block `block`: its keys' prefixes
    /// are at least the first (the previous block's last key's, or the table's smallest key's)
    /// and at most the second (its own last key's).
    pub fn prefix_bounds(&self, block: usize) -> (u64, u64) {
        let low = match block.checked_sub(1) {
            Some(previous) => self.prefixes[previous].prefix,
            None => prefix(&self.smallest_key),
        };
        (low, self.prefixes[block].prefix)
    }

    /// Notes where block `block`'s cached bytes are ([`BlockHint`]).
    #[inline]
    pub fn note_cached(&self, block: usize, bytes: &[u8]) {
        self.prefixes[block].hint.set(bytes);
    }

    /// Where block `block`'s cached bytes were last seen, and their length in bytes
    /// ([`BlockHint`]): for prefetching only.
    #[inline]
    pub fn cached_hint(&self, block: usize) -> Option<(*const u8, usize)> {
        self.prefixes.get(block)?.hint.get()
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

    /// An index of one block a key of `keys` (ascending, at least one), each block ending at its
    /// key.
    fn index_of_blocks_ending_at(keys: &[Vec<u8>]) -> Index {
        let mut builder = IndexBuilder::default();
        for (number, key) in keys.iter().enumerate() {
            builder.push(key, BlockHandle { offset: number as u64 * 4096, frame_len: 100 });
        }
        let mut out = Vec::new();
        builder.encode(&keys[0], &mut out);
        Index::decode(Bytes::from(out), "t", 0, keys.len() as u64 * 4096).unwrap()
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
            let index = index_of_blocks_ending_at(&keys);
            for probe in probes.iter().chain(&keys) {
                let expected = keys.partition_point(|key| key.as_slice() < probe.as_slice());
                proptest::prop_assert_eq!(index.seek(probe), expected, "probe {:?}", probe);
                // By the prefix alone: the same block unless some block's prefix ties with the
                // probe's, and never a later one.
                let by_prefix = index.seek_prefix(prefix(probe));
                proptest::prop_assert!(by_prefix <= expected, "probe {:?}", probe);
                if keys.iter().all(|key| prefix(key) != prefix(probe)) {
                    proptest::prop_assert_eq!(by_prefix, expected, "probe {:?}", probe);
                }
            }
        }
    }

    proptest::proptest! {
        /// With keys that start with eight bytes of hash, as stored keys do, and enough blocks
        /// for a radix table of many buckets, a seek (whole key and prefix alone) finds the
        /// block a plain search finds, for keys in the table, between them and past them.
        #[test]
        fn seeks_through_the_radix_table_match_a_plain_search(
            tokens in proptest::collection::btree_set(proptest::prelude::any::<u64>(), 1..700),
            probes in proptest::collection::vec((proptest::prelude::any::<u64>(), 0u8..3), 1..50),
            shared in proptest::prelude::any::<bool>(),
        ) {
            // Some runs share the top bits between all keys, so that every key falls in a few
            // buckets.
            let token = |token: u64| if shared { token >> 20 | 0xabc0_0000_0000_0000 } else { token };
            let key = |token: u64, tail: u8| {
                let mut key = token.to_be_bytes().to_vec();
                key.extend(std::iter::repeat_n(b'k', tail as usize));
                key
            };
            let keys: std::collections::BTreeSet<Vec<u8>> = tokens.iter().map(|&t| key(token(t), 1)).collect();
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            let index = index_of_blocks_ending_at(&keys);
            proptest::prop_assert_eq!(index.radix.len(), (1 << index.radix_bits) + 1);
            proptest::prop_assert!(keys.len() < 2 || 1 << index.radix_bits >= keys.len());
            let probes = probes.iter().map(|&(t, tail)| key(token(t), tail)).chain(keys.iter().cloned());
            for probe in probes {
                let expected = keys.partition_point(|key| key.as_slice() < probe.as_slice());
                proptest::prop_assert_eq!(index.seek(&probe), expected, "probe {:?}", probe);
                let by_prefix = keys.partition_point(|key| prefix(key) < prefix(&probe));
                proptest::prop_assert_eq!(index.seek_prefix(prefix(&probe)), by_prefix, "probe {:?}", probe);
                index.prefetch_radix(prefix(&probe));
                index.prefetch_prefixes(prefix(&probe));
            }
        }
    }

    /// A table of more blocks than the radix table's most buckets gets the most bits, and
    /// each bucket still starts at the first block of its top bits or above.
    #[test]
    fn a_radix_table_caps_its_bits_and_still_bounds_every_bucket() {
        let count = (1usize << RADIX_BITS_MAX) + 5;
        let mut prefixes: Vec<PrefixSlot> = (0..count as u64)
            .map(|n| PrefixSlot { prefix: n.wrapping_mul(0x9e37_79b9_7f4a_7c15), hint: BlockHint::default() })
            .collect();
        prefixes.sort_by_key(|slot| slot.prefix);
        let (radix, bits) = radix_table(&prefixes);
        assert_eq!(bits, RADIX_BITS_MAX);
        assert_eq!(radix.len(), (1 << RADIX_BITS_MAX) + 1);
        assert_eq!(radix[radix.len() - 1] as usize, count);
        for bucket in (0..1usize << RADIX_BITS_MAX).step_by(997).chain([(1 << RADIX_BITS_MAX) - 1]) {
            let first = prefixes.partition_point(|slot| radix_bucket(slot.prefix, bits) < bucket);
            assert_eq!(radix[bucket] as usize, first, "bucket {bucket}");
        }
    }

    #[test]
    fn a_block_hint_keeps_where_a_read_last_saw_the_block() {
        let (_, out) = sample();
        let index = Index::decode(Bytes::from(out), "t", 0, 16384).unwrap();
        assert_eq!(index.cached_hint(1), None, "no read has seen it");
        let block = vec![7u8; 4000];
        index.note_cached(1, &block);
        assert_eq!(index.cached_hint(1), Some((block.as_ptr(), 4000)));
        assert_eq!((index.cached_hint(0), index.cached_hint(3)), (None, None), "other blocks, past the end");
        let moved = vec![7u8; 100];
        index.note_cached(1, &moved);
        assert_eq!(index.cached_hint(1), Some((moved.as_ptr(), 100)), "the latest sighting wins");
        let large = vec![7u8; 1 << 16];
        index.note_cached(1, &large);
        assert_eq!(index.cached_hint(1), None, "a block of 64 KiB or more gets no hint");
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
