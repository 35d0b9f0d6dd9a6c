//! Scans whose range is empty must return an empty page, not panic: the bounds come from clients,
//! and paging through a range with an inclusive end produces one on its own (the continuation
//! key `last ++ 0x00` of a page that ends exactly at the end key lies past that end).

use bytes::Bytes;
use futures_executor::block_on;
use ringkv_storage::disk::memory::MemDisk;
use ringkv_storage::{Engine, EngineOptions};
use std::ops::Bound;

fn key(index: u32) -> Bytes {
    Bytes::from(format!("key{index:02}"))
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
        let end = Bound::Included(key(4));
        let mut start = Bound::Included(key(1));
        let mut seen = Vec::new();
        for _ in 0..10 {
            // Limit 2 over key01..=key04: the second page ends exactly at the end key.
            let page = engine.scan(start, end.clone(), 2, 0, false).await.unwrap();
            seen.extend(page.entries.into_iter().map(|(key, _)| key));
            match page.next_start {
                Some(next) => start = Bound::Included(next),
                None => break,
            }
        }
        assert_eq!(seen, (1..=4).map(key).collect::<Vec<_>>());
    });
}

#[test]
fn engine_scan_of_an_empty_range_is_an_empty_page() {
    block_on(async {
        let engine = engine_with_keys(10).await;
        let empty_ranges = [
            (Bound::Included(key(8)), Bound::Included(key(2))),
            (Bound::Included(key(8)), Bound::Excluded(key(2))),
            (Bound::Excluded(key(5)), Bound::Excluded(key(5))),
            (Bound::Excluded(key(5)), Bound::Included(key(5))),
            (Bound::Included(key(5)), Bound::Excluded(key(5))),
        ];
        for (start, end) in empty_ranges {
            let page = engine.scan(start.clone(), end.clone(), 3, 0, false).await.unwrap();
            assert!(page.entries.is_empty(), "{start:?}..{end:?} gave {:?}", page.entries);
            assert_eq!(page.next_start, None, "{start:?}..{end:?}");
        }
        // The same after a flush, when the entries come from a table instead of the memtable.
        engine.flush().await.unwrap();
        let page = engine.scan(Bound::Included(key(8)), Bound::Included(key(2)), 3, 0, false).await.unwrap();
        assert!(page.entries.is_empty());
    });
}
