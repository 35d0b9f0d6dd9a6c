//! Paged range scans over the memtables and every table. Where sources hold the same key, the
//! highest-ranking entry is the key's ([`Entry::cmp_precedence`]), as for point reads.

use super::{Engine, ScanPage};
use crate::disk::Disk;
use crate::entry::Entry;
use crate::Result;
use bytes::Bytes;
use std::collections::btree_map::Entry as Slot;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Keeps the higher-ranking of what `merged` holds for `key` and `entry`.
fn keep_newest(merged: &mut BTreeMap<Bytes, Entry>, key: Bytes, entry: Entry) {
    match merged.entry(key) {
        Slot::Vacant(slot) => {
            slot.insert(entry);
        }
        Slot::Occupied(mut slot) => {
            if entry.supersedes(slot.get()) {
                slot.insert(entry);
            }
        }
    }
}

/// True when no key lies between `start` and `end`.
fn range_is_empty(start: &Bound<Bytes>, end: &Bound<Bytes>) -> bool {
    match (start, end) {
        (Bound::Included(start), Bound::Included(end)) => start > end,
        (Bound::Included(start) | Bound::Excluded(start), Bound::Included(end) | Bound::Excluded(end)) => {
            start >= end
        }
        _ => false,
    }
}

impl<D: Disk> Engine<D> {
    /// One page of the entries with keys in `(start, end)`, ascending, at most `limit` of them.
    /// Dead entries (tombstones, expired values at `now_ms`) are skipped unless `include_dead`,
    /// which replication uses to stream deletes.
    pub async fn scan(
        &self,
        start: Bound<Bytes>,
        end: Bound<Bytes>,
        limit: usize,
        now_ms: u64,
        include_dead: bool,
    ) -> Result<ScanPage> {
        assert!(limit > 0, "a scan page holds at least one entry");
        if range_is_empty(&start, &end) {
            return Ok(ScanPage::default());
        }
        fn as_slice(bound: &Bound<Bytes>) -> Bound<&[u8]> {
            bound.as_ref().map(|key| &key[..])
        }
        let in_end = |key: &[u8]| match &end {
            Bound::Included(end) => key <= &end[..],
            Bound::Excluded(end) => key < &end[..],
            Bound::Unbounded => true,
        };
        // Every source contributes at most `limit` entries (dead ones included, since they hide
        // older values); the page is complete only up to the smallest last key of a source that
        // was cut short.
        let mut merged: BTreeMap<Bytes, Entry> = BTreeMap::new();
        let mut complete_through: Option<Bytes> = None;
        let cut_at = |key: &[u8], complete_through: &mut Option<Bytes>| {
            if complete_through.as_ref().is_none_or(|through| key < &through[..]) {
                *complete_through = Some(Bytes::copy_from_slice(key));
            }
        };
        let tables = {
            let state = self.state.borrow();
            let memtables = std::iter::once(&state.active).chain(state.sealed.as_deref());
            for memtable in memtables {
                for (taken, (key, mem_entry)) in memtable.range(as_slice(&start), as_slice(&end)).enumerate()
                {
                    if taken == limit {
                        cut_at(key, &mut complete_through);
                        break;
                    }
                    keep_newest(&mut merged, Bytes::copy_from_slice(key), mem_entry.entry.clone());
                }
            }
            state.tables.clone()
        };
        for table in tables.iter().rev() {
            let seek = match &start {
                Bound::Included(key) | Bound::Excluded(key) => Some(&key[..]),
                Bound::Unbounded => None,
            };
            let mut iter = table.iter(seek, true);
            let mut taken = 0;
            while let Some((key, entry)) = iter.next().await? {
                if matches!(&start, Bound::Excluded(excluded) if key == excluded) {
                    continue;
                }
                if !in_end(&key) {
                    break;
                }
                if taken == limit {
                    cut_at(&key, &mut complete_through);
                    break;
                }
                keep_newest(&mut merged, key, entry);
                taken += 1;
            }
        }
        let mut page = ScanPage::default();
        for (key, entry) in merged {
            if complete_through.as_ref().is_some_and(|through| key >= *through) {
                break;
            }
            if !include_dead && entry.is_absent_at(now_ms) {
                continue;
            }
            if page.entries.len() == limit {
                break;
            }
            page.entries.push((key, entry));
        }
        page.next_start = match page.entries.last() {
            // A full page: continue just after its last key (`key ++ 0x00` is the next key in
            // byte order).
            Some((last, _)) if page.entries.len() == limit => {
                let mut next = Vec::with_capacity(last.len() + 1);
                next.extend_from_slice(last);
                next.push(0);
                Some(Bytes::from(next))
            }
            // A source was cut short: everything below its first unread key has been seen.
            _ => complete_through,
        }
        .filter(|next| !range_is_empty(&Bound::Included(next.clone()), &end));
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, small_options};
    use super::super::*;
    use crate::disk::memory::MemDisk;
    use futures_executor::block_on;
    use std::ops::Bound;

    #[test]
    fn scan_pages_through_everything_in_order() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            for index in 0..500u32 {
                engine.put(key(index), Bytes::from_static(b"value"), 1, None).await.unwrap();
                if index % 7 == 0 {
                    engine.delete(key(index), 2, 0).await.unwrap();
                }
            }
            let mut seen = Vec::new();
            let mut start = Bound::Included(key(10));
            loop {
                let page = engine.scan(start, Bound::Excluded(key(400)), 13, 0, false).await.unwrap();
                seen.extend(page.entries.into_iter().map(|(k, _)| k));
                match page.next_start {
                    Some(next) => start = Bound::Included(next),
                    None => break,
                }
            }
            let expected: Vec<Bytes> = (10..400u32).filter(|i| i % 7 != 0).map(key).collect();
            assert_eq!(seen, expected);
        });
    }
}
