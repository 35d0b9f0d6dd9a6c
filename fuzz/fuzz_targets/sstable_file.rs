//! Arbitrary bytes as an SSTable file: opening, point reads and a full scan must return entries
//! or an error, never panic.
//!
//! The input is padded with zeros in front up to a whole number of 4 KiB blocks (the disk
//! writes whole blocks), so the input's last bytes are the file's last bytes: the footer.
#![no_main]

use futures_executor::block_on;
use libfuzzer_sys::fuzz_target;
use ringkv_storage::block_cache::BlockCache;
use ringkv_storage::disk::memory::MemDisk;
use ringkv_storage::disk::{align_up, Disk, DiskFile};
use ringkv_storage::sstable::Table;
use std::rc::Rc;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let disk = MemDisk::new();
        let file = disk.create("fuzz.sst").await.expect("create");
        let mut padded = vec![0; align_up(data.len() as u64).max(4096) as usize - data.len()];
        padded.extend_from_slice(data);
        file.write_at(0, &padded).await.expect("write");
        let cache = Rc::new(BlockCache::new(1 << 20));
        let Ok(table) = Table::open(file, "fuzz.sst".to_string(), 1, cache).await else { return };
        let table = Rc::new(table);
        for key in [&b"a"[..], b"key", b"\xff\xff"] {
            let _ = table.get(key).await;
        }
        let mut iter = table.iter(None, true);
        for _ in 0..10_000 {
            match iter.next().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    });
});
