//! Scans whose range is empty must return an empty page, not panic: the bounds come from clients,
//! and paging through a range with an inclusive end produces one on its own (the range after a
//! page that ends exactly at the end position is empty). Token ranges that meet or cross are
//! empty too.

use bytes::Bytes;
use futures_executor::block_on;
use ringkv_storage::disk::memory::MemDisk;
use ringkv_storage::{Engine, EngineOptions, Position, ScanEntry, ScanRange};
use std::ops::Bound;

fn key(index: u32) -> Bytes {
    Bytes::from(format!("key{index:02}"))
}

/// The positions of `count` keys, in scan order.
fn positions(count: u32) -> Vec<Position> {
    let mut positions: Vec<Position> = (0..count).map(|index| Position::of_key(key(index))).collect();
    positions.sort();
    positions
}

async fn engine_with_keys(count: u32) -> Engine<MemDisk> {
    let engine = Engine::open(MemDisk::new(), EngineOptions::default()).await.unwrap();
    for index in 0..count {
        engine.put(key(index), Bytes::from_static(b"value"), 1, None).await.unwrap();
    }
    engine
}

#[test]
fn engine_scan_pages_to_an_inclusive_end() {
    block_on(async {
        let engine = engine_with_keys(10).await;
        let positions = positions(10);
        let range = ScanRange {
            start: Bound::Included(positions[1].clone()),
            end: Bound::Included(positions[4].clone()),
        };
        let mut next = range.clone();
        let mut seen = Vec::new();
        for _ in 0..10 {
            // Limit 2 over the second to the fifth key: the second page ends exactly at the end.
            let page = engine.scan(&next, 2, 0, false).await.unwrap();
            seen.extend(page.entries.iter().map(ScanEntry::position));
            match page.next {
                Some(cursor) => next = range.after(cursor),
                None => break,
            }
        }
        assert_eq!(seen, positions[1..=4].to_vec());
    });
}

#[test]
fn engine_scan_of_an_empty_range_is_an_empty_page() {
    block_on(async {
        let engine = engine_with_keys(10).await;
        let positions = positions(10);
        let (low, high) = (positions[2].clone(), positions[8].clone());
        let mut empty_ranges = vec![
            (Bound::Included(high.clone()), Bound::Included(low.clone())),
            (Bound::Included(high.clone()), Bound::Excluded(low.clone())),
            (Bound::Excluded(low.clone()), Bound::Excluded(low.clone())),
            (Bound::Excluded(low.clone()), Bound::Included(low.clone())),
            (Bound::Included(low.clone()), Bound::Excluded(low.clone())),
        ];
        for (start, end) in [(5, Some(5)), (10, Some(3)), (u64::MAX, Some(0))] {
            let range = ScanRange::tokens(start, end);
            empty_ranges.push((range.start, range.end));
        }
        for (start, end) in empty_ranges {
            let range = ScanRange { start, end };
            assert!(range.is_empty(), "{range:?}");
            let page = engine.scan(&range, 3, 0, false).await.unwrap();
            assert!(page.entries.is_empty(), "{range:?} gave {:?}", page.entries);
            assert_eq!(page.next, None, "{range:?}");
        }
        // The same after a flush, when the entries come from a table instead of the memtable.
        engine.flush().await.unwrap();
        let range = ScanRange { start: Bound::Included(high), end: Bound::Included(low) };
        let page = engine.scan(&range, 3, 0, false).await.unwrap();
        assert!(page.entries.is_empty());
        // A token range holding one key's token exactly finds it.
        let first = &positions[0];
        let page =
            engine.scan(&ScanRange::tokens(first.token, Some(first.token + 1)), 3, 0, false).await.unwrap();
        assert_eq!(page.entries.iter().map(ScanEntry::position).collect::<Vec<_>>(), vec![first.clone()]);
    });
}
