//! [`merge`]: one scan page for the whole node out of every shard's page.
//!
//! ```text
//!  shard 0 page: a c e | next_start e      complete through min(next_start) = e
//!  shard 1 page: b d h   (finished)    ─▶  merged: a b c d e   (h waits for the next page)
//!                                          cut by limit or bytes after x ─▶ next_start = x
//!                                          not cut                       ─▶ next_start = e
//! ```
//! (letters stand for keys in scan order: by token, then by bytes.)
//!
//! Shards own token ranges, and one vnode range is one shard's, but a scan may span many ranges,
//! so it asks every shard owning part of it. Each shard's page covers every live key of its own
//! up to its `next_start`, inclusive (a shard cut its page short at its own limit or byte cap, and
//! `next_start` is its last entry), or through the range's end when it finished. Up to the
//! smallest `next_start` of any shard, then, the union of the pages is every live key of the
//! node; past it, a shard may still hold keys it did not send. The merged page keeps only the
//! complete part, in scan order, cut again to the limit and the byte cap; its `next_start` is its
//! last entry whenever anything was left out. So a client resuming after `next_start` neither
//! skips nor repeats a key.
//!
//! Progress: a shard sets `next_start` only to an entry of its page, and that entry is kept (it
//! is the smallest cut), so when the merged page has a `next_start` it also has an entry, and the
//! next page starts further on.

use bytes::Bytes;
use ringkv_wire::scan::{page_has_room, position};
use ringkv_wire::{ScanPage, TokenRange};

/// Merges shard pages of one scan (each obeying the [`ScanPage`] invariant for the same range)
/// into one page of at most `limit` entries under the byte cap.
pub fn merge(pages: Vec<ScanPage>, limit: usize) -> ScanPage {
    let complete_through: Option<Bytes> = pages
        .iter()
        .filter_map(|page| page.next_start.clone())
        .min_by(|left, right| position(left).cmp(&position(right)));
    let mut entries: Vec<_> = pages
        .into_iter()
        .flat_map(|page| page.entries)
        .map(|entry| (entry.token(), entry))
        .filter(|(token, entry)| {
            complete_through.as_ref().is_none_or(|through| (*token, &entry.key[..]) <= position(through))
        })
        .collect();
    // Each page is sorted already; a k-way merge would save little on at most a few thousand
    // entries.
    entries.sort_unstable_by(|(left_token, left), (right_token, right)| {
        (left_token, &left.key).cmp(&(right_token, &right.key))
    });
    debug_assert!(entries.windows(2).all(|pair| pair[0].1.key != pair[1].1.key), "a key lives on one shard");
    let mut merged = ScanPage::default();
    let mut page_bytes = 0;
    for (_, entry) in entries {
        if !page_has_room(merged.entries.len(), page_bytes, entry.page_bytes(), limit) {
            merged.next_start = merged.entries.last().map(|last| last.key.clone());
            return merged;
        }
        page_bytes += entry.page_bytes();
        merged.entries.push(entry);
    }
    debug_assert!(
        complete_through.is_none()
            || merged.entries.last().is_none_or(
                |last| position(&last.key) <= position(complete_through.as_ref().expect("checked"))
            ),
        "the smallest cut is at or after the merged page's last entry"
    );
    merged.next_start = complete_through;
    merged
}

/// Whether `range` holds any token of `first..=last`.
pub fn reaches(range: &TokenRange, first: u64, last: u64) -> bool {
    if range.start < range.end {
        range.start <= last && first < range.end
    } else {
        // Wrapping (or the whole ring when start == end): [start, 2^64) ∪ [0, end).
        range.start <= last || first < range.end
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use ringkv_wire::limits::SCAN_PAGE_BYTES_MAX;
    use ringkv_wire::token::token;
    use ringkv_wire::{Scan, ScanEnd, ScanEntry, ScanStart};

    use super::*;

    /// A shard's stored keys in scan order, keyed by (token, key): live values, and dead ones
    /// (deleted or expired) as `None`.
    type Shard = BTreeMap<(u64, Vec<u8>), Option<usize>>;

    /// What `Handler::scan` does, over a map: live keys of the range in scan order, cut at the
    /// limit or the byte cap, `next_start` the last key taken when a live key was left out.
    fn shard_page(shard: &Shard, scan: &Scan, values: &Bytes) -> ScanPage {
        let mut page = ScanPage::default();
        let mut page_bytes = 0;
        let live = shard
            .iter()
            .filter(|((_, key), _)| scan.admits(key))
            .filter_map(|((_, key), value_bytes)| value_bytes.map(|value_bytes| (key, value_bytes)));
        for (key, value_bytes) in live {
            let entry = ScanEntry {
                key: Bytes::copy_from_slice(key),
                value: values.slice(..value_bytes),
                version: 1,
            };
            if !page_has_room(page.entries.len(), page_bytes, entry.page_bytes(), scan.limit as usize) {
                page.next_start = page.entries.last().map(|last| last.key.clone());
                return page;
            }
            page_bytes += entry.page_bytes();
            page.entries.push(entry);
        }
        page
    }

    /// Pages through `scan` on all `shards`, checking each page's bounds; every key returned,
    /// in order.
    fn page_through(shards: &[Shard], mut scan: Scan) -> Vec<Vec<u8>> {
        let values = Bytes::from(vec![b'v'; SCAN_PAGE_BYTES_MAX]);
        let limit = scan.limit as usize;
        let mut returned = Vec::new();
        for _page in 0..10_000 {
            let pages = shards.iter().map(|shard| shard_page(shard, &scan, &values)).collect();
            let page = merge(pages, limit);
            assert!(page.entries.len() <= limit);
            if page.entries.len() > 1 {
                assert!(page.page_bytes() <= SCAN_PAGE_BYTES_MAX, "the byte cap holds");
            }
            for entry in &page.entries {
                assert!(scan.admits(&entry.key), "{:?} is outside the range", entry.key);
            }
            returned.extend(page.entries.iter().map(|entry| entry.key.to_vec()));
            match page.next_start {
                Some(next) => {
                    assert_eq!(
                        page.entries.last().map(|last| &last.key),
                        Some(&next),
                        "next_start is the last entry"
                    );
                    scan = scan.resume_after(next);
                }
                None => return returned,
            }
        }
        panic!("paging did not finish");
    }

    fn live_keys_in(shards: &[Shard], scan: &Scan) -> Vec<Vec<u8>> {
        let mut keys: Vec<(u64, Vec<u8>)> = shards
            .iter()
            .flat_map(|shard| shard.iter())
            .filter(|((_, key), value)| value.is_some() && scan.admits(key))
            .map(|(position, _)| position.clone())
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, key)| key).collect()
    }

    /// Spreads `keys` over `shard_count` shards by token ranges, dealt round-robin as the ring
    /// deals them.
    fn spread(keys: BTreeMap<Vec<u8>, Option<usize>>, shard_count: usize, ranges: u64) -> Vec<Shard> {
        let mut shards = vec![Shard::new(); shard_count];
        for (key, value) in keys {
            let token = token(&key);
            let range = (u128::from(token) * u128::from(ranges)) >> 64;
            let shard = range as usize % shard_count;
            shards[shard].insert((token, key), value);
        }
        shards
    }

    fn entry(key: &[u8]) -> ScanEntry {
        ScanEntry { key: Bytes::copy_from_slice(key), value: Bytes::new(), version: 1 }
    }

    /// `count` keys named `k0`, `k1`, ..., in scan order.
    fn keys_in_scan_order(count: usize) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = (0..count).map(|index| format!("k{index}").into_bytes()).collect();
        keys.sort_by(|left, right| position(left).cmp(&position(right)));
        keys
    }

    #[test]
    fn a_shard_cut_short_bounds_what_the_others_may_return() {
        let keys = keys_in_scan_order(6);
        let cut_short = ScanPage {
            entries: vec![entry(&keys[0]), entry(&keys[2]), entry(&keys[4])],
            next_start: Some(Bytes::copy_from_slice(&keys[4])),
        };
        let finished =
            ScanPage { entries: vec![entry(&keys[1]), entry(&keys[3]), entry(&keys[5])], next_start: None };
        let merged = merge(vec![cut_short.clone(), finished.clone()], 10);
        let returned: Vec<_> = merged.entries.iter().map(|entry| entry.key.to_vec()).collect();
        assert_eq!(returned, keys[..5].to_vec());
        assert_eq!(merged.next_start.as_deref(), Some(&keys[4][..]), "the last key waits for the next page");

        let merged = merge(vec![cut_short, finished], 3);
        assert_eq!(merged.entries.len(), 3);
        assert_eq!(merged.next_start.as_deref(), Some(&keys[2][..]), "the last key returned");
    }

    #[test]
    fn finished_shards_finish_the_scan() {
        let merged = merge(vec![ScanPage::default(), ScanPage::default()], 5);
        assert_eq!(merged, ScanPage::default());
    }

    #[test]
    fn ranges_reach_spans_plainly_and_across_the_top_of_the_ring() {
        let plain = TokenRange { start: 10, end: 20 };
        assert!(reaches(&plain, 0, 10) && reaches(&plain, 19, 30) && reaches(&plain, 12, 13));
        assert!(!reaches(&plain, 0, 9) && !reaches(&plain, 20, u64::MAX));
        let wrapping = TokenRange { start: u64::MAX - 5, end: 3 };
        assert!(
            reaches(&wrapping, 0, 0) && reaches(&wrapping, u64::MAX, u64::MAX) && reaches(&wrapping, 2, 7)
        );
        assert!(!reaches(&wrapping, 3, u64::MAX - 6));
        let whole = TokenRange { start: 7, end: 7 };
        assert!(reaches(&whole, 0, 0) && reaches(&whole, 8, 9) && reaches(&whole, u64::MAX, u64::MAX));
    }

    fn scan_start() -> impl Strategy<Value = ScanStart> {
        prop_oneof![
            proptest::collection::vec(0u8..4, 1..3).prop_map(ScanStart::key),
            proptest::collection::vec(0u8..4, 1..3).prop_map(ScanStart::after),
            any::<u64>().prop_map(ScanStart::Token),
            Just(ScanStart::Token(0)),
        ]
    }

    fn scan_end() -> impl Strategy<Value = ScanEnd> {
        prop_oneof![
            Just(ScanEnd::Last),
            proptest::collection::vec(0u8..4, 1..4).prop_map(ScanEnd::key),
            any::<u64>().prop_map(ScanEnd::Token),
        ]
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
            ranges in 1u64..20,
            limit in 1u32..12,
            start in scan_start(),
            end in scan_end(),
        ) {
            let shards = spread(keys, shard_count, ranges);
            let scan = Scan { start, end, limit };
            let returned = page_through(&shards, scan.clone());
            prop_assert_eq!(returned, live_keys_in(&shards, &scan));
        }
    }
}
