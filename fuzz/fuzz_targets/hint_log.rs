//! Arbitrary bytes as the segments of a hint log: opening the log must recover hints or refuse
//! the log with an error, never panic, and a log that opens takes a new hint and reads it back
//! after the hints it recovered.
//!
//! The first byte cuts the rest into one to three segment files, so that the sequence checks
//! across segments are explored too.

#![no_main]

use bytes::Bytes;
use futures_executor::block_on;
use libfuzzer_sys::fuzz_target;
use ringkv_storage::disk::memory::MemDisk;
use ringkv_storage::disk::{align_up, Disk, DiskFile};
use ringkv_storage::hints::{HintLog, StoredHint};
use ringkv_storage::wal::segment_file_name;
use ringkv_storage::Entry;

const SEGMENT_BYTES_MAX: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let segments = usize::from(selector % 3) + 1;
    let piece = rest.len().div_ceil(segments).max(1);
    block_on(async {
        let disk = MemDisk::new();
        for (index, bytes) in rest.chunks(piece).enumerate() {
            let name = segment_file_name(index as u64 + 1);
            let file = disk.create(&name).await.expect("create");
            let mut padded = bytes.to_vec();
            padded.resize(align_up(bytes.len() as u64) as usize, 0);
            if !padded.is_empty() {
                file.write_at(0, &padded).await.expect("write");
            }
            file.sync().await.expect("sync");
        }
        let Ok((log, recovery)) = HintLog::open(disk.clone(), SEGMENT_BYTES_MAX).await else { return };
        let hint = StoredHint {
            key: Bytes::from_static(b"fuzz-key"),
            entry: Entry::live(7, Bytes::from_static(b"value"), None),
            written_at_ms: 1,
            down_since_ms: 1,
        };
        let seq = log.append(&hint).expect("append");
        log.sync_through(seq).await.expect("sync");
        drop(log);
        let (_, again) =
            HintLog::open(disk, SEGMENT_BYTES_MAX).await.expect("a log written after recovery opens");
        let mut expected = recovery.hints;
        expected.push(hint);
        assert_eq!(again.hints, expected, "the recovered hints, then the new one");
    });
});
