//! The in-memory table of recent writes: an ordered map from key to its newest entry.
//!
//! One shard is single-threaded, so plain std collections are enough (no concurrent
//! skiplist). Each entry keeps the sequence number of the write that made it.
//!
//! "Newest" is by version, not by arrival: an insert replaces a key's entry only if it ranks
//! higher ([`Entry::cmp_precedence`]), so a late, repeated or reordered write changes nothing.
//!
//! Three structures, one job each:
//! - the slots hold each key with its entry, in the order keys arrived, in chunks that double
//!   in size, so the table grows without moving what it holds;
//! - a hash index from key to slot answers point reads and writes in one probe
//!   ([`index`]: a cache line of tags and positions per group, so a read costs a miss for the
//!   group and one for the slot). Walking a B-tree of 50,000 keys compares against thirty-odd
//!   keys on the way down and was a fifth of a node's CPU time serving cached reads;
//! - a B-tree map from key to slot gives the order that flushes and range scans walk, straight
//!   to the slots, with no hash probe per key.
//!
//! A write to a new key goes into all three; an overwrite only updates its slot.
//!
//! Keys of up to [`INLINE_KEY_BYTES`] are stored inline (in the B-tree's nodes and the slots)
//! rather than behind a pointer: a key behind a pointer costs a cache miss per comparison,
//! which dominated inserts into a large memtable.
//!
//! Pipelined reads can hide the index's and the slot's misses: [`Memtable::hash`] a batch of
//! keys, [`Memtable::prefetch`] each at [`Prefetch::Group`], then at [`Prefetch::Slot`] and
//! [`Prefetch::Value`], then read them with [`Memtable::get_hashed`], so the misses of a batch
//! overlap instead of following one another.
//!
//! The hash's seed comes from the caller ([`Memtable::with_hash_seed`]): the engine draws
//! no randomness itself, and a server passes a random seed so clients cannot choose keys that
//! collide.

mod index;

use crate::entry::Entry;
use crate::prefetch::{prefetch_line, LINE_BYTES};
use bytes::Bytes;
use index::Index;
use smallvec::SmallVec;
use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;

/// Stored keys up to this long live inline: the 8-byte token and a key of up to 24 bytes (YCSB's
/// `user` + 19 digits fits).
pub const INLINE_KEY_BYTES: usize = 32;

/// A memtable key: inline when short, on the heap otherwise; ordered as bytes.
type MemKey = SmallVec<[u8; INLINE_KEY_BYTES]>;

/// Bytes charged per key on top of the key and value bytes: the key's entry in a B-tree node
/// (nodes run about two-thirds full on random inserts, hence the factor 3/2), its slot (the
/// newest chunk is between empty and full, about 4/3 on average), its lane in the index (a
/// 64-byte group per 12 lanes, between 7/16 and 7/8 full: about 8 bytes), plus the
/// allocator's header of the value's own allocation.
const ENTRY_OVERHEAD_BYTES: usize = (std::mem::size_of::<MemKey>() + 4) * 3 / 2
    + std::mem::size_of::<Slot>() * 4 / 3
    + 8
    + ALLOCATION_HEADER_BYTES;
/// What the allocator adds to each heap allocation (the value's copy).
const ALLOCATION_HEADER_BYTES: usize = 16;

/// The most keys [`Memtable::with_budget`] sizes an index for up front: 4 Mi keys, a 32 MiB
/// index, the smallest keys of a budget of about 900 MiB.
pub const INDEX_RESERVED_KEYS_MAX: usize = 4 << 20;

/// An entry as the memtable holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemEntry {
    /// Sequence number of the write.
    pub seq: u64,
    /// The key's state after the write.
    pub entry: Entry,
}

/// A key and its newest entry.
struct Slot {
    key: MemKey,
    entry: MemEntry,
}

/// Slots of the first chunk; chunk `c` holds `FIRST_CHUNK_SLOTS << c`.
const FIRST_CHUNK_SLOTS: usize = 16;

/// Slots by position, in chunks that double: a new chunk is allocated when the last fills, and
/// nothing already held moves.
#[derive(Default)]
struct Slots {
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

impl Slots {
    /// The chunk and the offset in it of `position`.
    #[inline]
    fn locate(position: u32) -> (usize, usize) {
        let shifted = position as usize + FIRST_CHUNK_SLOTS;
        let bits = usize::BITS - 1 - shifted.leading_zeros();
        ((bits - FIRST_CHUNK_SLOTS.trailing_zeros()) as usize, shifted - (1 << bits))
    }

    #[inline]
    fn get(&self, position: u32) -> &Slot {
        let (chunk, offset) = Self::locate(position);
        &self.chunks[chunk][offset]
    }

    #[inline]
    fn get_mut(&mut self, position: u32) -> &mut Slot {
        let (chunk, offset) = Self::locate(position);
        &mut self.chunks[chunk][offset]
    }

    /// Appends a slot and returns its position.
    fn push(&mut self, slot: Slot) -> u32 {
        let position = u32::try_from(self.len).expect("a memtable holds fewer than 2^32 keys");
        let (chunk, _) = Self::locate(position);
        if chunk == self.chunks.len() {
            self.chunks.push(Vec::with_capacity(FIRST_CHUNK_SLOTS << chunk));
        }
        self.chunks[chunk].push(slot);
        self.len += 1;
        position
    }
}

/// How far [`Memtable::prefetch`] reaches: each stage needs the line the one before fetched
/// to be in cache to be worth its instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// The index group the key's probe starts at.
    Group,
    /// The slot its first tag match points to, every line of it.
    Slot,
    /// The value that slot holds: its lines, up to four.
    Value,
}

/// Recent writes, newest per key.
pub struct Memtable {
    /// Every key, in order, with its slot's position.
    order: BTreeMap<MemKey, u32>,
    /// Hash to slot position, for every slot.
    index: Index,
    slots: Slots,
    hasher: ahash::RandomState,
    approximate_bytes: usize,
    last_seq: u64,
    /// The highest version inserted (0 when empty).
    max_version: u64,
    /// The byte budget the index was sized for ([`Memtable::with_budget`]); 0 for none.
    budget_bytes: usize,
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
        Self::with_hasher(hasher)
    }

    fn with_hasher(hasher: ahash::RandomState) -> Self {
        Memtable {
            order: BTreeMap::new(),
            index: Index::new(),
            slots: Slots::default(),
            hasher,
            approximate_bytes: 0,
            last_seq: 0,
            max_version: 0,
            budget_bytes: 0,
        }
    }

    /// This memtable, empty, with its index sized for every key a memtable of
    /// `approximate_bytes` can hold: it is flushed at that size, so its index never doubles on
    /// the way there. Doubling reads every slot again, in the write that found the index full:
    /// 19 ms at 170,000 keys, the size a 64 MiB memtable of 100-byte values passes. The index
    /// takes 3–6% of the budget (6–12 bytes per key of the smallest charge, 228 bytes, as its
    /// groups are a power of two: 2 MiB for 64 MiB), up to [`INDEX_RESERVED_KEYS_MAX`] keys;
    /// past that it grows as needed.
    pub fn with_budget(mut self, approximate_bytes: usize) -> Self {
        debug_assert!(self.is_empty(), "sized before the first write");
        let keys = (approximate_bytes.div_ceil(ENTRY_OVERHEAD_BYTES) + 1).min(INDEX_RESERVED_KEYS_MAX);
        self.index = Index::with_capacity(keys);
        self.budget_bytes = approximate_bytes;
        self
    }

    /// An empty memtable with the same hash seed and budget as this one.
    pub fn empty_like(&self) -> Self {
        let empty = Self::with_hasher(self.hasher.clone());
        if self.budget_bytes == 0 {
            return empty;
        }
        empty.with_budget(self.budget_bytes)
    }

    /// Records a write with sequence number `seq`: it becomes the key's entry unless the key
    /// already holds one that ranks as high or higher ([`Entry::supersedes`]). Returns whether
    /// it did. Sequence numbers must rise from call to call, taken or not.
    pub fn insert(&mut self, key: &[u8], seq: u64, entry: Entry) -> bool {
        self.insert_hashed(self.hash(key), key, seq, entry)
    }

    /// [`Memtable::insert`] of a key whose [`Memtable::hash`] the caller already has (from the
    /// read that decided the write).
    pub fn insert_hashed(&mut self, hash: u64, key: &[u8], seq: u64, entry: Entry) -> bool {
        debug_assert_eq!(hash, self.hash(key), "the key's own hash");
        // The entries of one atomic write share their WAL record's sequence number.
        debug_assert!(seq >= self.last_seq, "memtable writes arrive in sequence order");
        self.last_seq = seq;
        let added = entry.data().map_or(0, Bytes::len);
        let slots = &self.slots;
        match self.index.find(hash, |position| slots.get(position).key[..] == *key) {
            Ok(position) => {
                let old = &mut self.slots.get_mut(position).entry;
                if !entry.supersedes(&old.entry) {
                    return false;
                }
                // The key and the overhead were counted by the first write; only the value changes.
                let removed = old.entry.data().map_or(0, Bytes::len);
                self.approximate_bytes = self.approximate_bytes + added - removed;
                self.max_version = self.max_version.max(entry.version);
                *old = MemEntry { seq, entry };
                true
            }
            Err(vacancy) => {
                // A short key lives in its slot and B-tree entry, already counted in the
                // overhead; a long one is allocated once for each.
                let key_heap_bytes =
                    if key.len() > INLINE_KEY_BYTES { 2 * (key.len() + ALLOCATION_HEADER_BYTES) } else { 0 };
                self.approximate_bytes += key_heap_bytes + ENTRY_OVERHEAD_BYTES + added;
                self.max_version = self.max_version.max(entry.version);
                let key = MemKey::from_slice(key);
                let position = self.slots.push(Slot { key: key.clone(), entry: MemEntry { seq, entry } });
                if !self.index.put(vacancy, hash, position) {
                    let (hasher, slots) = (&self.hasher, &self.slots);
                    self.index.grow(|placed| hasher.hash_one(&slots.get(placed).key[..]));
                    let vacancy = self.index.find(hash, |_| false).expect_err("the key is new");
                    let placed = self.index.put(vacancy, hash, position);
                    debug_assert!(placed, "a grown index has room");
                }
                self.order.insert(key, position);
                true
            }
        }
    }

    /// The hash of `key`, for [`Memtable::prefetch`] and [`Memtable::get_hashed`].
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Asks the processor to bring into cache, ahead of a read of the key of `hash`, what
    /// `stage` names. A hint: it reads nothing the program sees, and a stage whose line before
    /// it is not in cache yet stalls on that line instead.
    #[inline]
    pub fn prefetch(&self, hash: u64, stage: Prefetch) {
        match stage {
            Prefetch::Group => prefetch_line(self.index.group_of(hash)),
            Prefetch::Slot => {
                if let Some(position) = self.index.first_candidate(hash) {
                    prefetch_span(
                        std::ptr::from_ref(self.slots.get(position)).cast(),
                        std::mem::size_of::<Slot>(),
                    );
                }
            }
            Prefetch::Value => {
                if let Some(position) = self.index.first_candidate(hash) {
                    if let Some(data) = self.slots.get(position).entry.entry.data() {
                        prefetch_span(data.as_ptr(), data.len());
                    }
                }
            }
        }
    }

    /// Whether the first index group of `hash` has a tag match for it: false means the
    /// memtable almost surely does not hold the key (it may, when its group overflowed).
    /// Cheap once the group is in cache ([`Prefetch::Group`]); for choosing what to prefetch.
    #[inline]
    pub fn may_hold(&self, hash: u64) -> bool {
        self.index.first_candidate(hash).is_some()
    }

    /// The newest entry for `key`.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&MemEntry> {
        self.get_hashed(self.hash(key), key)
    }

    /// The newest entry for `key`, whose [`Memtable::hash`] is `hash`.
    #[inline]
    pub fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<&MemEntry> {
        let slots = &self.slots;
        let position = self.index.find(hash, |position| slots.get(position).key[..] == *key).ok()?;
        Some(&slots.get(position).entry)
    }

    /// Entries with keys in the range, ascending.
    pub fn range<'a>(
        &'a self,
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a MemEntry)> + 'a {
        self.order
            .range::<[u8], _>((start, end))
            .map(|(key, &position)| (&key[..], &self.slots.get(position).entry))
    }

    /// All entries, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &MemEntry)> {
        self.order.iter().map(|(key, &position)| (&key[..], &self.slots.get(position).entry))
    }

    /// Takes the memtable apart, to be freed a bounded piece at a time ([`Remains::release`]).
    ///
    /// A full memtable holds hundreds of thousands of entries, each with a map node share, a
    /// slot and a value whose last reference may be a whole receive buffer: dropped in one go
    /// after its flush, a 64 MiB memtable took 11–15 ms of CPU on a shard thread, and every
    /// request on the shard waited for it.
    pub fn into_remains(self) -> Remains {
        Remains { order: self.order.into_iter(), chunks: self.slots.chunks }
    }

    /// Approximate memory held, in bytes.
    pub fn approximate_bytes(&self) -> usize {
        self.approximate_bytes
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.slots.len
    }

    /// True when no write has been recorded.
    pub fn is_empty(&self) -> bool {
        self.slots.len == 0
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

/// Lines [`prefetch_span`] asks for at most: a short value whole; of a long one, what the copy
/// reads first, after which the processor's own prefetcher follows the stream.
const SPAN_LINES_MAX: usize = 4;

/// Prefetches every cache line the `len` bytes at `start` touch, up to [`SPAN_LINES_MAX`]. A
/// slot (over 100 bytes) or a 100-byte value straddles two lines or three depending on where it
/// starts; with only its first line fetched ahead, the read stalls on the others, which made
/// the value's copy and the key's comparison the hottest lines of a node serving cached reads.
#[inline(always)]
fn prefetch_span(start: *const u8, len: usize) {
    let lines = (start as usize % LINE_BYTES + len.max(1)).div_ceil(LINE_BYTES).min(SPAN_LINES_MAX);
    for line in 0..lines {
        prefetch_line(start.wrapping_add(line * LINE_BYTES));
    }
}

/// A memtable being freed: what [`Memtable::into_remains`] left. Dropping it frees the rest at
/// once.
pub struct Remains {
    /// The ordered map, consumed front to back: each node is freed once passed.
    order: btree_map::IntoIter<MemKey, u32>,
    /// The slots, freed from the last chunk back.
    chunks: Vec<Vec<Slot>>,
}

impl Remains {
    /// Frees up to `entries` map entries and as many slots; returns whether anything is left.
    pub fn release(&mut self, entries: usize) -> bool {
        for _ in self.order.by_ref().take(entries) {}
        let mut budget = entries;
        while budget > 0 {
            let Some(chunk) = self.chunks.last_mut() else { break };
            let freed = budget.min(chunk.len());
            chunk.truncate(chunk.len() - freed);
            budget -= freed;
            if chunk.is_empty() {
                self.chunks.pop();
            }
        }
        self.order.len() > 0 || !self.chunks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remains_are_freed_in_bounded_steps_until_nothing_is_left() {
        let mut memtable = Memtable::new();
        let value = Bytes::from(vec![5u8; 100]);
        for index in 0..10_000u32 {
            let key = format!("key-{index:06}-with-a-long-enough-name-to-live-on-the-heap");
            memtable.insert(
                key.as_bytes(),
                u64::from(index) + 1,
                Entry::live(u64::from(index) + 1, value.clone(), None),
            );
        }
        // Every entry shares the one value: its count tells how many entries are left.
        assert!(!value.is_unique());
        let mut remains = memtable.into_remains();
        let mut steps = 0;
        while remains.release(1000) {
            steps += 1;
            assert!(steps < 100, "release makes progress");
        }
        assert_eq!(steps, 9, "ten steps of 1,000 for 10,000 entries, the last finding nothing left");
        assert!(value.is_unique(), "every entry's value was freed");
    }

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

    /// A memtable sized for a budget takes keys of the smallest charge (short keys, tombstones)
    /// until it is past the budget, as the engine fills it, without its index ever doubling;
    /// the memtable it makes for the next fill has the same budget.
    #[test]
    fn an_index_sized_for_the_budget_never_doubles_on_the_way_there() {
        let budget = 1 << 20;
        let mut table = Memtable::with_hash_seed(3).with_budget(budget);
        let groups = table.index.group_count();
        let mut seq = 0u64;
        while table.approximate_bytes() < budget {
            seq += 1;
            assert!(table.insert(&seq.to_le_bytes(), seq, Entry::tombstone(1, 1)));
        }
        assert_eq!(table.index.group_count(), groups, "no doubling in {seq} keys");
        assert!(groups * 64 < budget / 16, "the index is a small part of the budget");
        let next = table.empty_like();
        assert_eq!(next.index.group_count(), groups);
        for key in 1..=seq {
            assert_eq!(table.get(&key.to_le_bytes()).map(|found| found.seq), Some(key));
        }
    }

    /// Against a model (a B-tree map of each key's highest entry), over many keys: the index
    /// grows through several doublings and the slots through several chunks, short and long
    /// keys mixed, overwrites with higher and lower versions.
    #[test]
    fn agrees_with_a_model_through_growth() {
        use std::collections::BTreeMap;
        let mut table = Memtable::with_hash_seed(7);
        let mut model: BTreeMap<Vec<u8>, (u64, u64)> = BTreeMap::new();
        let mut state = 1u64;
        for seq in 1..=30_000u64 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let id = (state >> 33) % 12_000;
            let key = if id.is_multiple_of(10) {
                vec![id as u8; 40 + (id % 7) as usize]
            } else {
                format!("user{id}").into_bytes()
            };
            let version = (state >> 20) % 100;
            let taken =
                table.insert(&key, seq, Entry::live(version, Bytes::from(seq.to_le_bytes().to_vec()), None));
            let stands = model.get(&key).is_none_or(|&(old, _)| version > old);
            // Equal versions are decided by contents; the model keeps whichever the table took.
            assert!(!stands || taken, "a higher version is always taken");
            assert!(model.get(&key).is_none_or(|&(old, _)| version >= old) || !taken, "a lower one never");
            if taken {
                model.insert(key, (version, seq));
            }
        }
        assert_eq!(table.len(), model.len());
        for (key, &(version, seq)) in &model {
            let found = table.get(key).expect("every key is found");
            assert_eq!((found.entry.version, found.seq), (version, seq));
            let hash = table.hash(key);
            for stage in [Prefetch::Group, Prefetch::Slot, Prefetch::Value] {
                table.prefetch(hash, stage);
            }
            assert_eq!(table.get_hashed(hash, key), Some(found));
        }
        let walked: Vec<_> =
            table.iter().map(|(key, entry)| (key.to_vec(), (entry.entry.version, entry.seq))).collect();
        let expected: Vec<_> = model.into_iter().collect();
        assert_eq!(walked, expected);
        assert_eq!(table.get(b"user12000"), None);
    }
}
