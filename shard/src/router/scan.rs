//! [`merge`]: one scan page for the whole node out of every shard's page.
//!
//! ```text
//!  shard 0 page: a c e | next_start g      complete below min(next_start) = g
//!  shard 1 page: b d h   (finished)    ─▶  merged: a b c d e   (h waits for the next page)
//!                                          cut by limit or bytes at x ─▶ next_start = x
//!                                          not cut                    ─▶ next_start = g
//! ```
//!
//! Keys are placed on shards by the hash of the key, so a key-ordered scan must ask every shard.
//! Each shard's page covers every live key of its own below its `next_start` (a shard cut its
//! page short at its own limit or byte cap, or it finished the range). Below the smallest
//! `next_start` of any shard, then, the union of the pages is every live key of the node; at or
//! above it, a shard may still hold keys it did not send. The merged page keeps only the
//! complete part, in key order, cut again to the limit and the byte cap; its `next_start` is the
//! first key it left out, or that smallest shard `next_start`. So a client paging with
//! `next_start` neither skips nor repeats a key.
//!
//! Progress: a shard sets `next_start` only after taking at least one entry below it, so when
//! the merged page has a `next_start` it also has an entry, and the next page starts further on.

use bytes::Bytes;
use ringkv_wire::scan::page_has_room;
use ringkv_wire::ScanPage;

/// Merges shard pages of one scan (each obeying the [`ScanPage`] invariant for the same range)
/// into one page of at most `limit` entries under the byte cap.
pub fn merge(pages: Vec<ScanPage>, limit: usize) -> ScanPage {
    let complete_below: Option<Bytes> = pages.iter().filter_map(|page| page.next_start.clone()).min();
    let mut entries: Vec<_> = pages
        .into_iter()
        .flat_map(|page| page.entries)
        .filter(|entry| complete_below.as_ref().is_none_or(|below| entry.key < *below))
        .collect();
    // Each page is sorted already; a k-way merge would save little on at most a few thousand
    // entries.
    entries.sort_unstable_by(|left, right| left.key.cmp(&right.key));
    debug_assert!(entries.windows(2).all(|pair| pair[0].key < pair[1].key), "a key lives on one shard");
    let mut merged = ScanPage::default();
    let mut page_bytes = 0;
    for entry in entries {
        if !page_has_room(merged.entries.len(), page_bytes, entry.page_bytes(), limit) {
            merged.next_start = Some(entry.key);
            return merged;
        }
        page_bytes += entry.page_bytes();
        merged.entries.push(entry);
    }
    merged.next_start = complete_below;
    merged
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use ringkv_wire::limits::SCAN_PAGE_BYTES_MAX;
    use ringkv_wire::{Scan, ScanEntry};

    use super::*;

    /// A shard's stored keys: live values, and dead ones (deleted or expired) as `None`.
    type Shard = BTreeMap<Vec<u8>, Option<usize>>;

    /// What `Handler::scan` does, over a map: live keys from `start` below `end`, cut at the limit
    /// or the byte cap, `next_start` the first live key left out.
    fn shard_page(shard: &Shard, scan: &Scan, values: &Bytes) -> ScanPage {
        let mut page = ScanPage::default();
        let mut page_bytes = 0;
        let live = shard
            .range(scan.start.to_vec()..)
            .take_while(|(key, _)| scan.is_below_end(key))
            .filter_map(|(key, value_bytes)| value_bytes.map(|value_bytes| (key, value_bytes)));
        for (key, value_bytes) in live {
            let entry = ScanEntry {
                key: Bytes::copy_from_slice(key),
                value: values.slice(..value_bytes),
                version: 1,
            };
            if !page_has_room(page.entries.len(), page_bytes, entry.page_bytes(), scan.limit as usize) {
                page.next_start = Some(entry.key);
                return page;
            }
            page_bytes += entry.page_bytes();
            page.entries.push(entry);
        }
        page
    }

    /// Pages through `[start, end)` on all `shards` with `limit`, checking each page's bounds;
    /// every key returned, in order.
    fn page_through(shards: &[Shard], start: Vec<u8>, end: Option<Vec<u8>>, limit: u32) -> Vec<Vec<u8>> {
        let values = Bytes::from(vec![b'v'; SCAN_PAGE_BYTES_MAX]);
        let mut scan = Scan { start: start.into(), end: end.map(Bytes::from), limit };
        let mut returned = Vec::new();
        for _page in 0..10_000 {
            let pages = shards.iter().map(|shard| shard_page(shard, &scan, &values)).collect();
            let page = merge(pages, limit as usize);
            assert!(page.entries.len() <= limit as usize);
            if page.entries.len() > 1 {
                assert!(page.page_bytes() <= SCAN_PAGE_BYTES_MAX, "the byte cap holds");
            }
            for entry in &page.entries {
                assert!(entry.key >= scan.start && scan.is_below_end(&entry.key));
                if let Some(next) = &page.next_start {
                    assert!(entry.key < *next, "next_start lies past every entry");
                }
            }
            returned.extend(page.entries.iter().map(|entry| entry.key.to_vec()));
            match page.next_start {
                Some(next) => {
                    assert!(!page.entries.is_empty(), "a page with a next_start made progress");
                    scan.start = next;
                }
                None => return returned,
            }
        }
        panic!("paging did not finish");
    }

    fn live_keys_in(shards: &[Shard], start: &[u8], end: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = shards
            .iter()
            .flat_map(|shard| shard.iter())
            .filter(|(key, value)| {
                value.is_some() && key.as_slice() >= start && end.is_none_or(|end| key.as_slice() < end)
            })
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Spreads `keys` over `shard_count` shards by a hash, as the ring does.
    fn spread(keys: BTreeMap<Vec<u8>, Option<usize>>, shard_count: usize) -> Vec<Shard> {
        let mut shards = vec![Shard::new(); shard_count];
        for (key, value) in keys {
            let shard = xxhash_rust::xxh3::xxh3_64(&key) as usize % shard_count;
            shards[shard].insert(key, value);
        }
        shards
    }

    #[test]
    fn a_shard_cut_short_bounds_what_the_others_may_return() {
        let entry = |key: &'static str| ScanEntry {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::new(),
            version: 1,
        };
        let cut_short =
            ScanPage { entries: vec![entry("a"), entry("c")], next_start: Some(Bytes::from_static(b"e")) };
        let finished = ScanPage { entries: vec![entry("b"), entry("d"), entry("f")], next_start: None };
        let merged = merge(vec![cut_short.clone(), finished.clone()], 10);
        let keys: Vec<_> = merged.entries.iter().map(|entry| entry.key.clone()).collect();
        assert_eq!(keys, ["a", "b", "c", "d"].map(|key| Bytes::from_static(key.as_bytes())));
        assert_eq!(merged.next_start, Some(Bytes::from_static(b"e")), "f waits for the next page");

        let merged = merge(vec![cut_short, finished], 3);
        assert_eq!(merged.entries.len(), 3);
        assert_eq!(merged.next_start, Some(Bytes::from_static(b"d")), "the first key left out");
    }

    #[test]
    fn finished_shards_finish_the_scan() {
        let merged = merge(vec![ScanPage::default(), ScanPage::default()], 5);
        assert_eq!(merged, ScanPage::default());
    }

    proptest! {
        #[test]
        fn paging_returns_every_live_key_exactly_once(
            keys in proptest::collection::btree_map(
                proptest::collection::vec(0u8..4, 1..5),
                proptest::option::weighted(0.8, prop_oneof![
                    4 => 0usize..64,
                    1 => 0usize..SCAN_PAGE_BYTES_MAX,
                ]),
                0..200,
            ),
            shard_count in 1usize..5,
            limit in 1u32..12,
            start in proptest::collection::vec(0u8..4, 1..3),
            end in proptest::option::of(proptest::collection::vec(0u8..4, 1..4)),
        ) {
            let shards = spread(keys, shard_count);
            let returned = page_through(&shards, start.clone(), end.clone(), limit);
            prop_assert_eq!(returned, live_keys_in(&shards, &start, end.as_deref()));
        }
    }
}
