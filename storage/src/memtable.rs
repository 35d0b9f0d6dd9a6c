//! The in-memory table of recent writes: an ordered map from key to its newest entry.
//!
//! One shard is single-threaded, so a plain `BTreeMap` is enough (no concurrent skiplist).
//! Each entry keeps the sequence number of the write that made it, so CAS can tell whether a
//! key changed while it waited on a disk read.
//!
//! Keys of up to [`INLINE_KEY_BYTES`] are stored inside the map's nodes rather than behind a
//! pointer: a lookup compares against a dozen keys per node on the way down, and a key behind a
//! pointer costs a cache miss per comparison, which dominated inserts into a large memtable.

use crate::entry::Entry;
use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Keys up to this long live inline in the map (YCSB's `user` + 19 digits fits).
pub const INLINE_KEY_BYTES: usize = 24;

/// A memtable key: inline when short, on the heap otherwise; ordered as bytes.
type MemKey = SmallVec<[u8; INLINE_KEY_BYTES]>;

/// Bytes charged per entry on top of the key and value bytes: the key and entry slots of a
/// B-tree node (nodes run about two-thirds full on random inserts, hence the factor 3/2), plus
/// the allocator's header of the value's own allocation.
const ENTRY_OVERHEAD_BYTES: usize =
    (std::mem::size_of::<MemKey>() + std::mem::size_of::<MemEntry>()) * 3 / 2 + ALLOCATION_HEADER_BYTES;
/// What the allocator adds to each heap allocation (the value's copy).
const ALLOCATION_HEADER_BYTES: usize = 16;

/// An entry as the memtable holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemEntry {
    /// Sequence number of the write.
    pub seq: u64,
    /// The key's state after the write.
    pub entry: Entry,
}

/// Recent writes, newest per key.
#[derive(Default)]
pub struct Memtable {
    map: BTreeMap<MemKey, MemEntry>,
    approximate_bytes: usize,
    last_seq: u64,
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a write; a later write to the same key replaces the earlier one.
    pub fn insert(&mut self, key: &[u8], seq: u64, entry: Entry) {
        debug_assert!(seq > self.last_seq, "memtable writes arrive in sequence order");
        // A short key lives in its node slot, already counted in the overhead.
        let key_heap_bytes =
            if key.len() > INLINE_KEY_BYTES { key.len() + ALLOCATION_HEADER_BYTES } else { 0 };
        let key_and_overhead = key_heap_bytes + ENTRY_OVERHEAD_BYTES;
        let added = key_and_overhead + entry.data().map_or(0, Bytes::len);
        match self.map.insert(MemKey::from_slice(key), MemEntry { seq, entry }) {
            Some(old) => {
                let removed = old.entry.data().map_or(0, Bytes::len);
                // The key and the overhead were counted by the first write; only the value changes.
                self.approximate_bytes = self.approximate_bytes + added - removed - key_and_overhead;
            }
            None => self.approximate_bytes += added,
        }
        self.last_seq = seq;
    }

    /// The newest entry for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&MemEntry> {
        self.map.get(key)
    }

    /// Entries with keys in the range, ascending.
    pub fn range<'a>(
        &'a self,
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a MemEntry)> + 'a {
        self.map.range::<[u8], _>((start, end)).map(|(key, entry)| (&key[..], entry))
    }

    /// All entries, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &MemEntry)> {
        self.map.iter().map(|(key, entry)| (&key[..], entry))
    }

    /// Approximate memory held, in bytes.
    pub fn approximate_bytes(&self) -> usize {
        self.approximate_bytes
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no write has been recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sequence number of the newest write (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_write_wins_and_size_tracks_values() {
        let mut table = Memtable::new();
        table.insert(b"a", 1, Entry::live(1, Bytes::from(vec![0; 100]), None));
        let after_first = table.approximate_bytes();
        table.insert(b"a", 2, Entry::tombstone(2, 5));
        assert_eq!(table.get(b"a").unwrap().seq, 2);
        assert_eq!(table.len(), 1);
        assert_eq!(table.approximate_bytes(), after_first - 100);
        assert_eq!(table.last_seq(), 2);
    }

    #[test]
    fn range_is_ordered_and_bounded() {
        let mut table = Memtable::new();
        for (seq, key) in [b"c", b"a", b"b", b"d"].iter().enumerate() {
            table.insert(*key, seq as u64 + 1, Entry::tombstone(1, 1));
        }
        let keys: Vec<_> = table
            .range(Bound::Included(&b"b"[..]), Bound::Excluded(&b"d"[..]))
            .map(|(key, _)| key.to_vec())
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
    }
}
