//! The row cache: for keys the memtables do not hold, what the tables hold, one entry per key.
//!
//! The block cache keeps whole blocks, and keys sit in a table in the order of their hash
//! token, so the hot keys of a skewed workload spread over every block: a block cached for one
//! hot key carries its thirty-odd cold neighbours. This cache keeps just the entry a read found
//! (a copy, so that it pins no block), weighed by its bytes, and answers the next read of the
//! key without a filter probe, an index search or a block lookup. ScyllaDB makes the same
//! choice, with its row cache in front of the SSTables.
//!
//! What it holds must equal what the tables would answer now, so the engine keeps it in step:
//! - a read inserts only when no memtable held the key (then it looked at every table that
//!   could hold a newer entry, and what it found is the tables' answer);
//! - an insert is refused when the tables changed, or a memtable was sealed, since the read
//!   began ([`RowCache::epoch`], bumped at each of those);
//! - a flush gives each cached key it writes the entry it writes, if that ranks higher (the
//!   sealed memtable answers for those keys until the new table is installed, so no read
//!   inserts or sees them meanwhile), so hot keys that are written keep their rows;
//! - a compaction forgets, once installed, the keys whose entries it dropped or turned into
//!   tombstones (the only answers a merge changes).
//!
//! Like the engine that owns it, it is single-threaded.

use crate::entry::{Entry, Value};
use bytes::Bytes;
use quick_cache::unsync::Cache;
use quick_cache::Weighter;
use std::cell::{Cell, Ref, RefCell};

/// Bytes charged per row on top of its key and value: the cache's slot, the key's and the
/// value's allocations.
const ROW_OVERHEAD_BYTES: u64 = 96;

/// A row of about this size only sizes the cache's tables up front.
const TYPICAL_ROW_BYTES: usize = 256;

/// Weighs a row by its key and value bytes.
#[derive(Clone, Copy, Debug, Default)]
struct RowWeighter;

impl Weighter<Box<[u8]>, Entry> for RowWeighter {
    fn weight(&self, key: &Box<[u8]>, entry: &Entry) -> u64 {
        let data = entry.data().map_or(0, |data| data.len());
        (key.len() + data) as u64 + ROW_OVERHEAD_BYTES
    }
}

type RowMap = Cache<Box<[u8]>, Entry, RowWeighter>;

/// Entries by stored key (see the module's documentation for when they are true).
pub struct RowCache {
    /// `None` when the capacity is zero: caching is off.
    rows: Option<RefCell<RowMap>>,
    /// Changes whenever an entry read before it may no longer be the tables' answer.
    epoch: Cell<u64>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl RowCache {
    /// A cache of up to about `capacity_bytes` of rows. Zero turns it off.
    pub fn new(capacity_bytes: usize) -> Self {
        let rows = (capacity_bytes > 0).then(|| {
            let items = (capacity_bytes / TYPICAL_ROW_BYTES).max(1);
            RefCell::new(Cache::with_weighter(items, capacity_bytes as u64, RowWeighter))
        });
        RowCache { rows, epoch: Cell::new(0), hits: Cell::new(0), misses: Cell::new(0) }
    }

    /// Whether the cache is on.
    pub fn is_enabled(&self) -> bool {
        self.rows.is_some()
    }

    /// The current epoch: a read notes it before it looks at the tables and hands it to
    /// [`RowCache::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Something changed that an entry read before now may not reflect: inserts of such reads
    /// are refused.
    pub fn advance_epoch(&self) {
        self.epoch.set(self.epoch.get() + 1);
    }

    /// The tables' entry for stored key `key`, if cached; counted as a hit or a miss. Nothing
    /// may change the cache while it is held.
    pub fn get(&self, key: &[u8]) -> Option<Ref<'_, Entry>> {
        let found = Ref::filter_map(self.rows.as_ref()?.borrow(), |rows| rows.get(key)).ok();
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.set(counter.get() + 1);
        found
    }

    /// Caches `entry` as the tables' answer for stored key `key`, found by a read that began at
    /// `epoch`; refused if the epoch moved since. The value is copied, so the row pins no block.
    pub fn insert(&self, key: &[u8], entry: &Entry, epoch: u64) {
        let Some(rows) = &self.rows else { return };
        if epoch != self.epoch.get() {
            return;
        }
        rows.borrow_mut().insert(key.into(), owned(entry));
    }

    /// A flush is writing `entry` for stored key `key` to a new table: the row, if cached,
    /// becomes the higher-ranking of what it held and `entry` (the tables' answer once the table
    /// is installed; until then the sealed memtable answers for the key, so no read sees it
    /// early). Hot keys that are written keep their rows through flushes this way.
    pub fn refresh(&self, key: &[u8], entry: &Entry) {
        let Some(rows) = &self.rows else { return };
        let mut rows = rows.borrow_mut();
        if let Some(mut row) = rows.peek_mut(key) {
            if entry.supersedes(&row) {
                *row = owned(entry);
            }
        }
    }

    /// Forgets stored key `key`.
    pub fn forget(&self, key: &[u8]) {
        if let Some(rows) = &self.rows {
            rows.borrow_mut().remove(key);
        }
    }

    /// Forgets every row.
    pub fn clear(&self) {
        if let Some(rows) = &self.rows {
            rows.borrow_mut().clear();
        }
    }

    /// Lookups that found their key, and that did not, since the cache was made.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }

    /// Bytes of rows held now (by the weigher's count).
    pub fn used_bytes(&self) -> usize {
        self.rows.as_ref().map_or(0, |rows| rows.borrow().weight() as usize)
    }
}

/// `entry` with its own copy of its value, so that it pins no block.
fn owned(entry: &Entry) -> Entry {
    let value = match &entry.value {
        Value::Live { data, expires_at_ms } => {
            Value::Live { data: Bytes::copy_from_slice(data), expires_at_ms: *expires_at_ms }
        }
        tombstone @ Value::Tombstone { .. } => tombstone.clone(),
    };
    Entry { version: entry.version, value }
}

impl std::fmt::Debug for RowCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RowCache").field("used_bytes", &self.used_bytes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(version: u64, data: &'static [u8]) -> Entry {
        Entry::live(version, Bytes::from_static(data), None)
    }

    #[test]
    fn a_row_is_answered_until_forgotten() {
        let cache = RowCache::new(1 << 20);
        assert_eq!(cache.get(b"k").map(|entry| entry.version), None);
        cache.insert(b"k", &live(3, b"value"), cache.epoch());
        assert_eq!(cache.get(b"k").map(|entry| entry.clone()), Some(live(3, b"value")));
        cache.forget(b"k");
        assert_eq!(cache.get(b"k").map(|entry| entry.version), None);
        assert_eq!(cache.hits_and_misses(), (1, 2));
    }

    #[test]
    fn a_refresh_keeps_the_higher_ranking_entry_of_a_cached_row_only() {
        let cache = RowCache::new(1 << 20);
        cache.refresh(b"absent", &live(5, b"five"));
        assert_eq!(cache.get(b"absent").map(|entry| entry.version), None, "a refresh adds no row");
        cache.insert(b"k", &live(3, b"three"), cache.epoch());
        cache.refresh(b"k", &live(2, b"two"));
        assert_eq!(cache.get(b"k").map(|entry| entry.version), Some(3));
        cache.refresh(b"k", &Entry::tombstone(4, 10));
        assert_eq!(cache.get(b"k").map(|entry| entry.clone()), Some(Entry::tombstone(4, 10)));
    }

    #[test]
    fn an_insert_from_before_the_epoch_moved_is_refused() {
        let cache = RowCache::new(1 << 20);
        let began = cache.epoch();
        cache.advance_epoch();
        cache.insert(b"k", &live(1, b"stale"), began);
        assert_eq!(cache.get(b"k").map(|entry| entry.version), None);
        cache.insert(b"k", &live(2, b"fresh"), cache.epoch());
        assert_eq!(cache.get(b"k").map(|entry| entry.version), Some(2));
        cache.clear();
        assert_eq!(cache.get(b"k").map(|entry| entry.version), None);
    }

    #[test]
    fn rows_stay_within_capacity_and_copy_their_values() {
        let cache = RowCache::new(64 << 10);
        let block = Bytes::from(vec![7u8; 4096]);
        for index in 0..1000u32 {
            let entry = Entry::live(1, block.slice(0..100), None);
            cache.insert(&index.to_be_bytes(), &entry, cache.epoch());
        }
        assert!(cache.used_bytes() <= 64 << 10, "{}", cache.used_bytes());
        assert!(cache.used_bytes() > 32 << 10);
        // Nothing in the cache holds the block the values were sliced from.
        assert!(block.is_unique());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = RowCache::new(0);
        assert!(!cache.is_enabled());
        cache.insert(b"k", &live(1, b"v"), cache.epoch());
        assert_eq!(cache.get(b"k").map(|entry| entry.version), None);
    }
}
