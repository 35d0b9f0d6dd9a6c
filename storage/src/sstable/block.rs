//! Data blocks: building one inside the writer's buffer, and reading one back.
//!
//! Payload: `entry 0 | ... | entry n-1 | offset 0 | ... | offset n-1 | n u32`, offsets relative
//! to the payload start, 2 bytes wide when the payload is at most [`NARROW_PAYLOAD_BYTES_MAX`]
//! bytes and 4 bytes otherwise.

use super::frame::{self, FRAME_OVERHEAD_BYTES};
use super::BLOCK_TARGET_BYTES;
use super::{key_prefix, prefix_share};
use crate::disk::align_up;
use crate::entry::{Entry, ENTRY_HEADER_BYTES};
use crate::error::{Result, StorageError};
use bytes::Bytes;
use std::cmp::Ordering;

/// Largest payload whose entry offsets are stored as u16: every offset is then below 65536.
pub(crate) const NARROW_PAYLOAD_BYTES_MAX: usize = 1 << 16;
/// Bytes of the entry count that ends the payload.
const COUNT_BYTES: usize = 4;
/// Smallest encoded entry: header, a one-byte key, the value length, no value.
const ENTRY_BYTES_MIN: usize = ENTRY_HEADER_BYTES + 1 + 4;
/// Blocks with fewer entries are searched by halves only ([`Block::find_near`]).
const GUESS_ENTRIES_MIN: usize = 8;
/// Entries [`Block::find_near`] walks from its guess before it searches by halves.
const GUESS_STEPS_MAX: usize = 4;
/// Where the key length sits inside an encoded entry.
const KEY_LEN_AT: usize = ENTRY_HEADER_BYTES - 2;

/// Width in bytes of each entry offset in a payload of `payload_len` bytes.
fn offset_width(payload_len: usize) -> usize {
    if payload_len <= NARROW_PAYLOAD_BYTES_MAX {
        2
    } else {
        4
    }
}

/// Payload length of a block holding `entry_count` entries of `entries_bytes` in total.
/// Narrow offsets are used whenever the payload then fits in [`NARROW_PAYLOAD_BYTES_MAX`]; when
/// it does not, it does not with wide offsets either, so the reader's rule picks the same width.
fn payload_len(entries_bytes: usize, entry_count: usize) -> usize {
    let narrow = entries_bytes + entry_count * 2 + COUNT_BYTES;
    if narrow <= NARROW_PAYLOAD_BYTES_MAX {
        narrow
    } else {
        entries_bytes + entry_count * 4 + COUNT_BYTES
    }
}

/// The data block being filled, encoded in place at the end of the writer's buffer.
#[derive(Debug, Default)]
pub(crate) struct BlockBuilder {
    /// Where the block's frame starts in the buffer, while a block is open.
    frame_start: Option<usize>,
    /// Offset of each entry from the payload start.
    entry_offsets: Vec<u32>,
    /// Bytes of entries so far.
    entries_bytes: usize,
    /// The frame may grow to this many bytes: [`BLOCK_TARGET_BYTES`], or the first entry's
    /// frame rounded up to a page when that entry alone is bigger.
    capacity_bytes: usize,
}

impl BlockBuilder {
    pub fn is_open(&self) -> bool {
        self.frame_start.is_some()
    }

    /// True when an entry of `entry_bytes` (encoded) still fits in the open block.
    pub fn fits(&self, entry_bytes: usize) -> bool {
        let payload = payload_len(self.entries_bytes + entry_bytes, self.entry_offsets.len() + 1);
        payload + FRAME_OVERHEAD_BYTES <= self.capacity_bytes
    }

    /// Adds an entry, opening a block at the end of `buffer` first if none is open. The caller
    /// checks [`BlockBuilder::fits`] and finishes a full block before adding.
    pub fn add(&mut self, buffer: &mut Vec<u8>, key: &[u8], entry: &Entry) {
        let entry_bytes = entry.encoded_len(key.len());
        if self.frame_start.is_none() {
            self.frame_start = Some(frame::begin(buffer));
            let alone = payload_len(entry_bytes, 1) + FRAME_OVERHEAD_BYTES;
            self.capacity_bytes = BLOCK_TARGET_BYTES.max(align_up(alone as u64) as usize);
        }
        assert!(self.fits(entry_bytes), "entry added to a block without room for it");
        let offset = u32::try_from(self.entries_bytes).expect("block entries fit in u32");
        self.entry_offsets.push(offset);
        let before = buffer.len();
        entry.encode(key, buffer);
        debug_assert_eq!(buffer.len() - before, entry_bytes);
        self.entries_bytes += entry_bytes;
    }

    /// Closes the open block: appends the offsets and the count, seals the frame and pads the
    /// buffer to a page. Returns the frame's start in the buffer and its length.
    pub fn finish(&mut self, buffer: &mut Vec<u8>) -> (usize, usize) {
        let frame_start = self.frame_start.take().expect("finish called on an open block");
        let count = self.entry_offsets.len();
        let payload = payload_len(self.entries_bytes, count);
        if offset_width(payload) == 2 {
            for &offset in &self.entry_offsets {
                buffer.extend_from_slice(&(offset as u16).to_le_bytes());
            }
        } else {
            for &offset in &self.entry_offsets {
                buffer.extend_from_slice(&offset.to_le_bytes());
            }
        }
        buffer.extend_from_slice(&(count as u32).to_le_bytes());
        let frame_len = frame::seal(buffer, frame_start);
        assert_eq!(frame_len, payload + FRAME_OVERHEAD_BYTES, "block frame length");
        assert!(frame_len <= self.capacity_bytes, "block frame outgrew its capacity");
        self.entry_offsets.clear();
        self.entries_bytes = 0;
        (frame_start, frame_len)
    }
}

/// A verified data block: a view over its payload. Cheap to make from a cached payload (no
/// allocation, no scan), which keeps the cache-hit path of a point read lean.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    payload: Bytes,
    /// End of the entries, where the offsets begin.
    entries_end: usize,
    entry_count: usize,
    offset_width: usize,
}

impl Block {
    /// Checks the structure of a payload whose checksum has just been verified: the offsets,
    /// every entry's length fields, and strictly ascending keys. Only blocks that pass this go
    /// into the cache, so [`Block::from_verified`] can trust what it is given.
    pub fn parse(payload: Bytes, file_name: &str, offset: u64) -> Result<Block> {
        let corrupt = |reason: String| StorageError::corruption(file_name, offset, reason);
        let block = Block::layout(payload).ok_or_else(|| corrupt("block offsets do not fit".to_string()))?;
        if block.entry_count == 0 {
            return Err(corrupt("block holds no entries".to_string()));
        }
        let mut previous_key: &[u8] = &[];
        for index in 0..block.entry_count {
            let start = block.offset_at(index);
            let end =
                if index + 1 < block.entry_count { block.offset_at(index + 1) } else { block.entries_end };
            // Entries are back to back from the payload start to the offsets, so only the first
            // start and the bounds need checking; each entry's own lengths are checked below.
            let first_misplaced = index == 0 && start != 0;
            if first_misplaced || end > block.entries_end || end < start || end - start < ENTRY_BYTES_MIN {
                return Err(corrupt(format!("entry {index} has bad bounds {start}..{end}")));
            }
            let entry = &block.payload[start..end];
            let key_len = u16::from_le_bytes([entry[KEY_LEN_AT], entry[KEY_LEN_AT + 1]]) as usize;
            let key_end = ENTRY_HEADER_BYTES + key_len;
            if key_len == 0 || key_len > crate::key::STORED_KEY_BYTES_MAX || key_end + 4 > entry.len() {
                return Err(corrupt(format!("entry {index} has a bad key length {key_len}")));
            }
            let value_len =
                u32::from_le_bytes(entry[key_end..key_end + 4].try_into().expect("4 bytes")) as usize;
            if key_end + 4 + value_len != entry.len() {
                return Err(corrupt(format!("entry {index} length fields disagree with its offsets")));
            }
            let key = &entry[ENTRY_HEADER_BYTES..key_end];
            if index > 0 && key <= previous_key {
                return Err(corrupt(format!("entry {index} breaks the ascending key order")));
            }
            previous_key = key;
        }
        Ok(block)
    }

    /// A view over a payload that [`Block::parse`] accepted before (a cached block).
    pub fn from_verified(payload: Bytes) -> Block {
        Block::layout(payload).expect("cached blocks were verified before insertion")
    }

    /// Locates the offsets and the count; `None` when they cannot fit in the payload.
    fn layout(payload: Bytes) -> Option<Block> {
        let offsets_end = payload.len().checked_sub(COUNT_BYTES)?;
        let entry_count = u32::from_le_bytes(payload[offsets_end..].try_into().expect("4 bytes")) as usize;
        let offset_width = offset_width(payload.len());
        let entries_end = offsets_end.checked_sub(entry_count.checked_mul(offset_width)?)?;
        Some(Block { payload, entries_end, entry_count, offset_width })
    }

    /// The payload, for the block cache.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    pub fn len(&self) -> usize {
        self.entry_count
    }

    fn offset_at(&self, index: usize) -> usize {
        let at = self.entries_end + index * self.offset_width;
        if self.offset_width == 2 {
            u16::from_le_bytes([self.payload[at], self.payload[at + 1]]) as usize
        } else {
            u32::from_le_bytes(self.payload[at..at + 4].try_into().expect("4 bytes")) as usize
        }
    }

    /// The key of entry `index`, read in place without decoding the entry.
    fn key_at(&self, index: usize) -> &[u8] {
        let start = self.offset_at(index);
        let key_len =
            u16::from_le_bytes([self.payload[start + KEY_LEN_AT], self.payload[start + KEY_LEN_AT + 1]]);
        &self.payload[start + ENTRY_HEADER_BYTES..start + ENTRY_HEADER_BYTES + key_len as usize]
    }

    /// Index of the first entry whose key is `>= key` (`len()` when there is none).
    pub fn seek(&self, key: &[u8]) -> usize {
        let (mut low, mut high) = (0, self.entry_count);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.key_at(middle) < key {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// Index of the entry whose key is exactly `key`.
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        self.find_within(key, 0, self.entry_count)
    }

    /// [`Block::find`], starting where the key's prefix ([`key_prefix`]) falls between `low`
    /// and `high`, the prefixes bounding this block's keys ([`super::index::Index::prefix_bounds`]).
    /// Stored keys' prefixes are hash tokens, spread evenly, so the key is usually within a step
    /// or two of that guess: about three entries read instead of a binary search's five or six,
    /// each a cache miss. From the guess it walks at most [`GUESS_STEPS_MAX`] entries toward the
    /// key, then searches what is left by halves, so any bounds give the right answer.
    pub fn find_near(&self, key: &[u8], low: u64, high: u64) -> Option<usize> {
        let count = self.entry_count;
        let share = match prefix_share(key_prefix(key), low, high) {
            Some(share) if count >= GUESS_ENTRIES_MIN => share,
            _ => return self.find(key),
        };
        let guess = ((share * count as f64) as usize).min(count - 1);
        match self.key_at(guess).cmp(key) {
            Ordering::Equal => Some(guess),
            // Past the guess: walk up.
            Ordering::Less => {
                let mut at = guess + 1;
                for _ in 0..GUESS_STEPS_MAX {
                    if at == count {
                        return None;
                    }
                    match self.key_at(at).cmp(key) {
                        Ordering::Less => at += 1,
                        Ordering::Equal => return Some(at),
                        Ordering::Greater => return None,
                    }
                }
                self.find_within(key, at, count)
            }
            // Before the guess: walk down.
            Ordering::Greater => {
                let mut end = guess;
                for _ in 0..GUESS_STEPS_MAX {
                    if end == 0 {
                        return None;
                    }
                    match self.key_at(end - 1).cmp(key) {
                        Ordering::Greater => end -= 1,
                        Ordering::Equal => return Some(end - 1),
                        Ordering::Less => return None,
                    }
                }
                self.find_within(key, 0, end)
            }
        }
    }

    /// Index of the entry whose key is exactly `key`, searching entries `low..high` by halves.
    fn find_within(&self, key: &[u8], mut low: usize, mut high: usize) -> Option<usize> {
        while low < high {
            let middle = low + (high - low) / 2;
            match self.key_at(middle).cmp(key) {
                Ordering::Less => low = middle + 1,
                Ordering::Greater => high = middle,
                Ordering::Equal => return Some(middle),
            }
        }
        None
    }

    /// Decodes entry `index`; the key and the value are zero-copy slices of the block.
    /// `file_name` and `offset` (the block's offset, asked for only then) only serve the error:
    /// a point read need not touch the block's index entry, a cache miss, to find its offset.
    pub fn entry_at(
        &self,
        index: usize,
        file_name: &str,
        offset: impl FnOnce() -> u64,
    ) -> Result<(Bytes, Entry)> {
        let (key, entry, _) = Entry::decode(&self.payload, self.offset_at(index)).map_err(|reason| {
            StorageError::corruption(file_name, offset(), format!("entry {index}: {reason}"))
        })?;
        Ok((key, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(entries: &[(Vec<u8>, Entry)]) -> Vec<(usize, usize, Vec<u8>)> {
        let mut buffer = Vec::new();
        let mut builder = BlockBuilder::default();
        let mut frames = Vec::new();
        for (key, entry) in entries {
            if builder.is_open() && !builder.fits(entry.encoded_len(key.len())) {
                frames.push(builder.finish(&mut buffer));
            }
            builder.add(&mut buffer, key, entry);
        }
        frames.push(builder.finish(&mut buffer));
        frames.into_iter().map(|(start, len)| (start, len, buffer[start..start + len].to_vec())).collect()
    }

    fn parse(frame: Vec<u8>) -> Result<Block> {
        let payload = frame::verify(Bytes::from(frame), "t", 0)?;
        Block::parse(payload, "t", 0)
    }

    #[test]
    fn small_entries_fill_pages_and_read_back() {
        let entries: Vec<_> = (0..200u32)
            .map(|n| {
                (format!("key{n:05}").into_bytes(), Entry::live(n.into(), Bytes::from(vec![7; 100]), None))
            })
            .collect();
        let frames = build(&entries);
        assert!(frames.len() > 1);
        let mut next = 0;
        for (start, len, frame) in frames {
            assert_eq!(start % BLOCK_TARGET_BYTES, 0);
            assert!(len <= BLOCK_TARGET_BYTES);
            let block = parse(frame).unwrap();
            assert_eq!(block.offset_width, 2);
            for index in 0..block.len() {
                let (key, entry) = block.entry_at(index, "t", || 0).unwrap();
                assert_eq!((&key[..], &entry), (&entries[next].0[..], &entries[next].1));
                assert_eq!(block.find(&key), Some(index));
                assert_eq!(block.seek(&key), index);
                next += 1;
            }
            assert_eq!(block.seek(b"zzz"), block.len());
            assert_eq!(block.find(b"key"), None);
        }
        assert_eq!(next, entries.len());
    }

    proptest::proptest! {
        /// A search from a guess finds what a search by halves finds, whatever the bounds it is
        /// given (right, wrong or nonsense), for keys that share, tie on or end inside their
        /// first eight bytes as well as token-like ones.
        #[test]
        fn a_search_from_a_guess_finds_what_a_search_by_halves_finds(
            keys in proptest::collection::btree_set(
                proptest::prop_oneof![
                    proptest::collection::vec(0u8..3, 1..12),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 8..12),
                ],
                1..40,
            ),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..12), 0..10),
            bounds in proptest::collection::vec((proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>()), 1..4),
        ) {
            let entries: Vec<_> =
                keys.iter().map(|key| (key.clone(), Entry::live(1, Bytes::from_static(b"v"), None))).collect();
            for (_, _, frame) in build(&entries) {
                let block = parse(frame).unwrap();
                let first = key_prefix(block.key_at(0));
                let last = key_prefix(block.key_at(block.len() - 1));
                let all_bounds = bounds.iter().copied().chain([(first, last), (0, u64::MAX), (last, first)]);
                for (low, high) in all_bounds {
                    for probe in probes.iter().chain(&keys) {
                        proptest::prop_assert_eq!(block.find_near(probe, low, high), block.find(probe));
                    }
                }
            }
        }
    }

    #[test]
    fn a_search_from_a_guess_finds_every_token_led_key() {
        // Keys led by evenly spread tokens, as stored keys are, with the widest bounds.
        let entries: Vec<_> = (0..30u64)
            .map(|n| {
                let mut key = (n * (u64::MAX / 30) + 12_345).to_be_bytes().to_vec();
                key.extend_from_slice(b"user");
                (key, Entry::live(1, Bytes::from_static(b"v"), None))
            })
            .collect();
        let (_, _, frame) = build(&entries).remove(0);
        let block = parse(frame).unwrap();
        assert_eq!(block.len(), 30);
        for (index, (key, _)) in entries.iter().enumerate() {
            assert_eq!(block.find_near(key, 0, u64::MAX), Some(index));
        }
        assert_eq!(block.find_near(b"\xff\xff\xff\xff\xff\xff\xff\xffzzz", 0, u64::MAX), None);
    }

    #[test]
    fn large_entry_gets_a_larger_block_with_wide_offsets() {
        let entries = vec![
            (b"a".to_vec(), Entry::live(1, Bytes::from(vec![1; crate::VALUE_BYTES_MAX]), None)),
            (b"b".to_vec(), Entry::tombstone(2, 5)),
            (b"c".to_vec(), Entry::live(3, Bytes::new(), Some(9))),
        ];
        let frames = build(&entries);
        assert_eq!(frames.len(), 1, "small entries fill the large block's last page");
        let block = parse(frames[0].2.clone()).unwrap();
        assert_eq!(block.offset_width, 4);
        assert_eq!(block.len(), 3);
        assert_eq!(block.entry_at(2, "t", || 0).unwrap().1, entries[2].1);
    }

    proptest::proptest! {
        /// A stand-in for a fuzz target: payloads damaged past their checksum never panic the
        /// parser, and a block it accepts never panics a lookup.
        #[test]
        fn damaged_payloads_never_panic(
            damage in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..6),
        ) {
            let entries: Vec<_> = (0..20u32)
                .map(|n| (format!("k{n:02}").into_bytes(), Entry::live(n.into(), Bytes::from(vec![1; n as usize]), None)))
                .collect();
            let (_, len, frame) = build(&entries).remove(0);
            let mut payload = frame[4..len - 4].to_vec();
            for (at, byte) in damage {
                let at = at % payload.len();
                payload[at] = byte;
            }
            if let Ok(block) = Block::parse(Bytes::from(payload), "t", 0) {
                for index in 0..block.len() {
                    let _ = block.entry_at(index, "t", || 0);
                }
                block.seek(b"k10");
                block.find(b"k10");
            }
        }
    }

    #[test]
    fn structural_damage_under_a_valid_checksum_is_corruption() {
        let entries = vec![
            (b"a".to_vec(), Entry::live(1, Bytes::from_static(b"x"), None)),
            (b"b".to_vec(), Entry::live(2, Bytes::from_static(b"y"), None)),
        ];
        let (_, len, frame) = build(&entries).remove(0);
        let payload_end = len - 4;
        // Each damage is re-checksummed so only the structural checks can catch it.
        let damages: [(usize, u8); 4] = [
            (payload_end - 4, 0x10),     // count
            (payload_end - 6, 0x01),     // second offset
            (4 + KEY_LEN_AT, 0x02),      // first key length
            (4 + ENTRY_HEADER_BYTES, 0), // first key becomes 0x00..., still ascending: zeroes below
        ];
        for (at, mask) in damages {
            let mut damaged = frame.clone();
            if mask == 0 {
                damaged[at] = b'c'; // first key "c" > second key "b"
            } else {
                damaged[at] ^= mask;
            }
            let checksum = crc32c::crc32c(&damaged[..payload_end]);
            damaged[payload_end..].copy_from_slice(&checksum.to_le_bytes());
            assert!(matches!(parse(damaged), Err(StorageError::Corruption { .. })), "damage at {at}");
        }
    }
}
