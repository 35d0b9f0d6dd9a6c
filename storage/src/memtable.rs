//! The in-memory table of recent writes: an ordered map from key to its newest entry.
//!
//! One shard is single-threaded, so plain std collections are enough (no concurrent
//! skiplist). Each entry keeps the sequence number of the write that made it.
//!
//! "Newest" is by version, not by arrival: an insert replaces a key's entry only if it ranks
//! higher ([`Entry::cmp_precedence`]), so a late, repeated or reordered write changes nothing.
//!
//! Two structures, one job each:
//! - a hash map from key to entry answers point reads and writes in a probe or two. Walking a
//!   B-tree of 50,000 keys compares against thirty-odd keys on the way down and was a fifth of
//!   a node's CPU time serving cached reads;
//! - a B-tree set of the keys gives the order that flushes and range scans walk.
//!
//! A write to a new key goes into both; an overwrite only updates the hash map.
//!
//! Keys of up to [`INLINE_KEY_BYTES`] are stored inline (in the set's nodes and the map's
//! slots) rather than behind a pointer: a key behind a pointer costs a cache miss per
//! comparison, which dominated inserts into a large memtable.
//!
//! The hash map's seed comes from the caller ([`Memtable::with_hash_seed`]): the engine draws
//! no randomness itself, and a server passes a random seed so clients cannot choose keys that
//! collide.

use crate::entry::Entry;
use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

/// Stored keys up to this long live inline: the 8-byte token and a key of up to 24 bytes (YCSB's
/// `user` + 19 digits fits).
pub const INLINE_KEY_BYTES: usize = 32;

/// A memtable key: inline when short, on the heap otherwise; ordered as bytes. Hashes as its
/// bytes do, so the map can be probed with a `&[u8]`.
type MemKey = SmallVec<[u8; INLINE_KEY_BYTES]>;

/// Bytes charged per key on top of the key and value bytes: the key's slot in a B-tree node
/// (nodes run about two-thirds full on random inserts, hence the factor 3/2), its slot and
/// control byte in the hash map (which runs between 7/16 and 7/8 full, so about 3/2 again),
/// plus the allocator's header of the value's own allocation.
const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<MemKey>() * 3 / 2
    + (std::mem::size_of::<MemKey>() + std::mem::size_of::<MemEntry>() + 1) * 3 / 2
    + ALLOCATION_HEADER_BYTES;
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
pub struct Memtable {
    /// Every key, in order.
    order: BTreeSet<MemKey>,
    /// The newest entry of every key in `order`.
    entries: HashMap<MemKey, MemEntry, ahash::RandomState>,
    approximate_bytes: usize,
    last_seq: u64,
    /// The highest version inserted (0 when empty).
    max_version: u64,
}

impl Default for Memtable {
    /// An empty memtable hashing with seed 0.
    fn default() -> Self {
        Self::with_hash_seed(0)
    }
}

impl Memtable {
    /// An empty memtable hashing with seed 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty memtable whose hash map is keyed by `seed`.
    pub fn with_hash_seed(seed: u64) -> Self {
        // The other three keys are fixed odd constants (digits of pi); the seed varies the state.
        let hasher = ahash::RandomState::with_seeds(
            seed,
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7345,
            0xa409_3822_299f_31d1,
        );
        Memtable {
            order: BTreeSet::new(),
            entries: HashMap::with_hasher(hasher),
            approximate_bytes: 0,
            last_seq: 0,
            max_version: 0,
        }
    }

    /// An empty memtable with the same hash seed as this one.
    pub fn empty_like(&self) -> Self {
        Memtable {
            order: BTreeSet::new(),
            entries: HashMap::with_hasher(self.entries.hasher().clone()),
            approximate_bytes: 0,
            last_seq: 0,
            max_version: 0,
        }
    }

    /// Records a write with sequence number `seq`: it becomes the key's entry unless the key
    /// already holds one that ranks as high or higher ([`Entry::supersedes`]). Returns whether
    /// it did. Sequence numbers must rise from call to call, taken or not.
    pub fn insert(&mut self, key: &[u8], seq: u64, entry: Entry) -> bool {
        // The entries of one atomic write share their WAL record's sequence number.
        debug_assert!(seq >= self.last_seq, "memtable writes arrive in sequence order");
        self.last_seq = seq;
        let added = entry.data().map_or(0, Bytes::len);
        match self.entries.get_mut(key) {
            Some(old) if !entry.supersedes(&old.entry) => false,
            Some(old) => {
                // The key and the overhead were counted by the first write; only the value changes.
                let removed = old.entry.data().map_or(0, Bytes::len);
                self.approximate_bytes = self.approximate_bytes + added - removed;
                self.max_version = self.max_version.max(entry.version);
                *old = MemEntry { seq, entry };
                true
            }
            None => {
                // A short key lives in its slots, already counted in the overhead; a long one
                // is allocated once per structure.
                let key_heap_bytes =
                    if key.len() > INLINE_KEY_BYTES { 2 * (key.len() + ALLOCATION_HEADER_BYTES) } else { 0 };
                self.approximate_bytes += key_heap_bytes + ENTRY_OVERHEAD_BYTES + added;
                self.max_version = self.max_version.max(entry.version);
                let key = MemKey::from_slice(key);
                self.order.insert(key.clone());
                self.entries.insert(key, MemEntry { seq, entry });
                true
            }
        }
    }

    /// The newest entry for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&MemEntry> {
        self.entries.get(key)
    }

    /// Entries with keys in the range, ascending.
    pub fn range<'a>(
        &'a self,
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a MemEntry)> + 'a {
        self.order.range::<[u8], _>((start, end)).map(|key| (&key[..], self.entry_of(key)))
    }

    /// All entries, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &MemEntry)> {
        self.order.iter().map(|key| (&key[..], self.entry_of(key)))
    }

    /// Approximate memory held, in bytes.
    pub fn approximate_bytes(&self) -> usize {
        self.approximate_bytes
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no write has been recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a key taken from `order`, which always has one.
    fn entry_of(&self, key: &MemKey) -> &MemEntry {
        self.entries.get(&key[..]).expect("every ordered key has an entry")
    }

    /// Sequence number of the last write recorded, taken or not (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The highest version of any entry held (0 when empty).
    pub fn max_version(&self) -> u64 {
        self.max_version
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
    fn the_highest_version_stays_whatever_the_arrival_order() {
        let mut table = Memtable::new();
        assert!(table.insert(b"k", 1, Entry::live(5, Bytes::from_static(b"five"), None)));
        // Late, repeated: nothing changes, but the sequence number moves on.
        assert!(!table.insert(b"k", 2, Entry::live(3, Bytes::from_static(b"three"), None)));
        assert!(!table.insert(b"k", 3, Entry::live(5, Bytes::from_static(b"five"), None)));
        let kept = table.get(b"k").unwrap();
        assert_eq!((kept.seq, kept.entry.version), (1, 5));
        assert_eq!(table.last_seq(), 3);
        // Equal versions: the tombstone wins over the value, then the greater bytes.
        assert!(table.insert(b"k", 4, Entry::tombstone(5, 0)));
        assert!(!table.insert(b"k", 5, Entry::live(5, Bytes::from_static(b"zzz"), None)));
        assert!(table.insert(b"t", 6, Entry::live(9, Bytes::from_static(b"a"), None)));
        assert!(table.insert(b"t", 7, Entry::live(9, Bytes::from_static(b"b"), None)));
        assert!(!table.insert(b"t", 8, Entry::live(9, Bytes::from_static(b"a"), None)));
        assert_eq!(table.get(b"t").unwrap().entry.data().unwrap(), &Bytes::from_static(b"b"));
        assert_eq!(table.get(b"k").unwrap().entry, Entry::tombstone(5, 0));
        assert_eq!(table.max_version(), 9);
        // A higher version replaces whatever is there.
        assert!(table.insert(b"k", 9, Entry::live(6, Bytes::from_static(b"six"), None)));
        assert_eq!(table.get(b"k").unwrap().entry.version, 6);
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

    #[test]
    fn point_reads_and_ordered_walks_agree_for_any_seed() {
        for seed in [0, 1, u64::MAX] {
            let mut table = Memtable::with_hash_seed(seed);
            let long = vec![b'z'; 200];
            let mut seq = 0;
            for round in 0..3u8 {
                for key in [&b"m"[..], b"a", &long, b"user0000000000000000042", b"b"] {
                    seq += 1;
                    table.insert(key, seq, Entry::live(seq, Bytes::from(vec![round; 10]), None));
                }
            }
            assert_eq!(table.len(), 5);
            let walked: Vec<_> = table.iter().map(|(key, entry)| (key.to_vec(), entry.seq)).collect();
            let mut expected: Vec<_> =
                walked.iter().map(|(key, _)| (key.clone(), table.get(key).unwrap().seq)).collect();
            expected.sort();
            assert_eq!(walked, expected, "ordered, and the same entries point reads see");
            assert!(walked.iter().all(|(_, seq)| *seq > 10), "only the newest writes remain");
            assert_eq!(table.get(b"absent"), None);
            let emptied = table.empty_like();
            assert!(emptied.is_empty() && emptied.approximate_bytes() == 0);
        }
    }
}
