//! Bit rot in every kind of file the engine keeps. A flipped bit must never turn into a wrong
//! answer: for every key a read gives the right value or an error.
//!
//! - WAL segments: damage followed by valid records (in the same segment or, through sequence
//!   continuity, in the next) makes opening fail with a checksum or corruption error. Damage to
//!   the very last record, whose sectors were all written, is bit rot, not a torn write: opening
//!   fails too, unless the loss is accepted (`wal_rotten_tail_accepted`), which drops that one
//!   record. Only a flip in its length field that stretches it over the zero padding after it
//!   looks like a torn write (sectors never written), and is dropped as one.
//! - SSTables: a flip in the footer, the index or the filter fails the open (they are read and
//!   verified then); a flip in a data block fails the reads that load that block.
//! - The manifest: a flip in its header or body fails the open.

use crate::common;

use bytes::Bytes;
use common::{key, read_state, state_after, Write};
use futures_executor::block_on;
use ringkv_storage::disk::memory::{CrashMode, MemDisk};
use ringkv_storage::manifest::MANIFEST_FILE;
use ringkv_storage::{Disk, DiskFile, Engine, EngineOptions, ScanRange, StorageError};
use std::collections::BTreeMap;

fn options() -> EngineOptions {
    EngineOptions {
        memtable_bytes_max: 4 << 20,
        block_cache_bytes: 1 << 20,
        wal_segment_bytes_max: 16 << 10,
        ..EngineOptions::default()
    }
}

/// A copy of `disk` (as of its last syncs) with one bit flipped.
fn flipped(disk: &MemDisk, file: &str, offset: u64, bit: u8) -> MemDisk {
    let copy = disk.crash(CrashMode::DropUnsynced);
    copy.flip_bit(file, offset, bit).unwrap();
    copy
}

fn is_damage_error(error: &StorageError) -> bool {
    matches!(error, StorageError::ChecksumMismatch { .. } | StorageError::Corruption { .. })
}

fn file_bytes(disk: &MemDisk, name: &str) -> Bytes {
    block_on(async {
        let file = disk.open(name).await.unwrap();
        let len = file.size().await.unwrap() as usize;
        file.read_at(0, len).await.unwrap()
    })
}

/// A small deterministic generator for offsets to damage (xorshift64*).
struct Offsets(u64);

impl Offsets {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// The WAL records of `disk` in log order, as (segment, offset, length): with one write at a
/// time, each record is the only one of its group write, at the start of a 4 KiB page.
fn wal_records(disk: &MemDisk, record_bytes: u64) -> Vec<(String, u64, u64)> {
    let mut records = Vec::new();
    for name in disk.file_names().into_iter().filter(|name| name.ends_with(".wal")) {
        let bytes = file_bytes(disk, &name);
        for page in (0..bytes.len()).step_by(4096) {
            if bytes[page..page + 16].iter().any(|&byte| byte != 0) {
                records.push((name.clone(), page as u64, record_bytes));
            }
        }
    }
    records
}

#[test]
fn engine_wal_bit_flip_is_an_error_and_in_the_last_record_dropped_only_if_accepted() {
    const VALUE_BYTES: usize = 500;
    // Record header, entry header, the key's token and the key, value length, value.
    const RECORD_BYTES: u64 = 16 + 19 + 8 + 7 + 4 + VALUE_BYTES as u64;
    let writes: Vec<Write> = (0..10).map(|index| Write::put(index, index, VALUE_BYTES)).collect();
    let disk = MemDisk::new();
    block_on(async {
        let engine = Engine::open(disk.clone(), options()).await.unwrap();
        for (index, write) in writes.iter().enumerate() {
            write.issue(&engine, index).await.unwrap();
        }
    });
    let records = wal_records(&disk, RECORD_BYTES);
    assert_eq!(records.len(), writes.len());
    let segments: Vec<&String> = records.iter().map(|(segment, ..)| segment).collect();
    assert!(segments.first() != segments.last(), "the log should span several segments");

    let mut sample = Offsets(0x9e37_79b9_7f4a_7c15);
    for (index, (segment, offset, len)) in records.iter().enumerate() {
        let last = index + 1 == records.len();
        // Every bit of one middle record and of the last one; a sample of the others, always
        // including the first header byte and the last payload byte.
        let bits: Vec<u64> = if index == 5 || last {
            (0..len * 8).collect()
        } else {
            let mut bits = vec![0, len * 8 - 1];
            bits.extend((0..24).map(|_| sample.next_below(len * 8)));
            bits
        };
        for bit in bits {
            let damaged = flipped(&disk, segment, offset + bit / 8, (bit % 8) as u8);
            let context = format!("record {index} ({segment} at {offset}), bit {bit}");
            if last {
                let in_length_field = (32..64).contains(&bit);
                match block_on(Engine::open(damaged.crash(CrashMode::DropUnsynced), options())) {
                    Err(error) => assert!(is_damage_error(&error), "{context}: {error}"),
                    Ok(_) => assert!(in_length_field, "{context}: rotted last record dropped silently"),
                }
                let accepting = EngineOptions { wal_rotten_tail_accepted: true, ..options() };
                let engine = block_on(Engine::open(damaged, accepting))
                    .unwrap_or_else(|error| panic!("{context}: {error}"));
                assert!(engine.recovery().torn_tail_bytes > 0, "{context}");
                assert_eq!(engine.recovery().records_replayed, index as u64, "{context}");
                let state = block_on(read_state(&engine)).unwrap();
                assert_eq!(state, state_after(&writes, index), "{context}");
            } else {
                let opened = block_on(Engine::open(damaged, options()));
                match opened {
                    Ok(_) => panic!("{context}: opened despite damage before valid records"),
                    Err(error) => assert!(is_damage_error(&error), "{context}: {error}"),
                }
            }
        }
    }
}

/// Where the parts of a table are, from its footer.
struct TableLayout {
    data_end: u64,
    index: (u64, u64),
    filter: (u64, u64),
    footer: (u64, u64),
}

/// Bytes of a table's footer (format 2; see `storage/src/sstable/mod.rs`).
const FOOTER_BYTES: usize = 60;

fn table_layout(bytes: &[u8]) -> TableLayout {
    let footer = bytes.len() - FOOTER_BYTES;
    let u32_at =
        |at: usize| u32::from_le_bytes(bytes[footer + at..footer + at + 4].try_into().unwrap()) as u64;
    let u64_at = |at: usize| u64::from_le_bytes(bytes[footer + at..footer + at + 8].try_into().unwrap());
    let (index_len, index_offset) = (u32_at(12), u64_at(16));
    let (filter_offset, filter_len) = (u64_at(24), u32_at(32));
    TableLayout {
        data_end: index_offset,
        index: (index_offset, index_offset + index_len),
        filter: (filter_offset, filter_offset + filter_len),
        footer: (footer as u64, bytes.len() as u64),
    }
}

/// Every read of a damaged engine: each key's value or an error, never a wrong value; the same
/// for a full scan. Returns whether any read failed.
fn check_reads(
    engine: &Engine<MemDisk>,
    expected: &BTreeMap<Bytes, Bytes>,
    slots: usize,
    context: &str,
) -> bool {
    block_on(async {
        let mut failed = false;
        for slot in 0..slots {
            match engine.get(&key(slot), 0).await {
                Ok(found) => assert_eq!(
                    found.map(|found| found.value).as_ref(),
                    expected.get(&key(slot)),
                    "{context}: wrong value for slot {slot}"
                ),
                Err(error) => {
                    assert!(is_damage_error(&error), "{context}: {error}");
                    failed = true;
                }
            }
        }
        let mut scanned = BTreeMap::new();
        let mut range = ScanRange::all();
        loop {
            match engine.scan(&range, 50, 0, false).await {
                Ok(page) => {
                    for found in page.entries {
                        scanned.insert(found.key, found.entry.data().expect("live").clone());
                    }
                    match page.next {
                        Some(cursor) => range = ScanRange::all().after(cursor),
                        None => {
                            assert_eq!(&scanned, expected, "{context}: a scan gave wrong data");
                            break;
                        }
                    }
                }
                Err(error) => {
                    assert!(is_damage_error(&error), "{context}: {error}");
                    // What the scan gave before the error is still right.
                    for (key, value) in &scanned {
                        assert_eq!(expected.get(key), Some(value), "{context}: scan gave a wrong value");
                    }
                    failed = true;
                    break;
                }
            }
        }
        failed
    })
}

#[test]
fn engine_sstable_bit_flip_gives_an_error_never_a_wrong_value() {
    const SLOTS: usize = 320;
    // Two overlapping tables with deletes; the WAL is empty after the flushes.
    let mut writes = Vec::new();
    for index in 0..600 {
        let slot = (index * 7) % 300;
        if index % 10 == 9 {
            writes.push(Write::delete(slot));
        } else {
            writes.push(Write::put(index, slot, 40 + (index * 13) % 150));
        }
    }
    let disk = MemDisk::new();
    block_on(async {
        let engine = Engine::open(disk.clone(), options()).await.unwrap();
        for (index, write) in writes.iter().enumerate() {
            write.issue(&engine, index).await.unwrap();
            if index == 299 {
                engine.flush().await.unwrap();
            }
        }
        engine.flush().await.unwrap();
        assert_eq!(engine.stats().tables, 2);
    });
    let expected = state_after(&writes, writes.len());
    let tables: Vec<String> = disk.file_names().into_iter().filter(|name| name.ends_with(".sst")).collect();
    assert_eq!(tables.len(), 2);

    let mut sample = Offsets(0x2545_f491_4f6c_dd1d);
    let mut data_flips_detected = 0;
    for table in &tables {
        let bytes = file_bytes(&disk, table);
        let layout = table_layout(&bytes);
        assert!(layout.data_end >= 3 * 4096, "{table}: several data blocks");
        let mut targets: Vec<(&str, u64)> = Vec::new();
        targets.extend((0..60).map(|_| ("data", sample.next_below(layout.data_end))));
        for (region, (start, end)) in [("index", layout.index), ("filter", layout.filter)] {
            targets.extend((0..25).map(|_| (region, start + sample.next_below(end - start))));
            targets.push((region, start));
            targets.push((region, end - 1));
        }
        targets.extend((layout.footer.0..layout.footer.1).map(|offset| ("footer", offset)));
        // Padding between parts: harmless, but still never a wrong value.
        targets.extend(
            (0..5).map(|_| ("padding", layout.index.1 + sample.next_below(layout.filter.0 - layout.index.1))),
        );

        for (region, offset) in targets {
            let bit = sample.next_below(8) as u8;
            let context = format!("{table}: {region} byte {offset} bit {bit}");
            let in_frame = bytes[offset as usize] != 0 || region != "data" && region != "padding";
            match block_on(Engine::open(flipped(&disk, table, offset, bit), options())) {
                Err(error) => {
                    assert!(is_damage_error(&error), "{context}: {error}");
                    assert!(region != "padding", "{context}: padding is not read, yet open failed: {error}");
                }
                Ok(engine) => {
                    assert!(
                        region == "data" || region == "padding",
                        "{context}: the {region} is verified at open, yet the damage went unnoticed"
                    );
                    let failed = check_reads(&engine, &expected, SLOTS, &context);
                    if region == "data" && in_frame {
                        // A nonzero byte is inside a block's frame: its checksum must catch it.
                        assert!(failed, "{context}: damage inside a data block went unnoticed");
                        data_flips_detected += 1;
                    }
                }
            }
        }
    }
    assert!(data_flips_detected >= 60, "only {data_flips_detected} flips landed in data blocks");
}

#[test]
fn engine_manifest_bit_flip_fails_the_open() {
    let disk = MemDisk::new();
    let writes: Vec<Write> = (0..50).map(|index| Write::put(index, index, 30)).collect();
    block_on(async {
        let engine = Engine::open(disk.clone(), options()).await.unwrap();
        for (index, write) in writes.iter().enumerate() {
            write.issue(&engine, index).await.unwrap();
            if index % 20 == 19 {
                engine.flush().await.unwrap();
            }
        }
    });
    let bytes = file_bytes(&disk, MANIFEST_FILE);
    let body_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as u64;
    // Header fields that carry meaning (magic, format, body length, checksum), then the body.
    let meaningful = (0..20u64).chain(24..24 + body_len);
    for offset in meaningful {
        for bit in 0..8 {
            let context = format!("manifest byte {offset} bit {bit}");
            match block_on(Engine::open(flipped(&disk, MANIFEST_FILE, offset, bit), options())) {
                Ok(_) => panic!("{context}: opened with a damaged manifest"),
                Err(error) => assert!(is_damage_error(&error), "{context}: {error}"),
            }
        }
    }
    // The zero padding after the body is never read: damage there changes nothing.
    for offset in [24 + body_len, bytes.len() as u64 - 1] {
        let engine = block_on(Engine::open(flipped(&disk, MANIFEST_FILE, offset, 3), options())).unwrap();
        let state = block_on(read_state(&engine)).unwrap();
        assert_eq!(state, state_after(&writes, writes.len()), "manifest padding byte {offset}");
    }
}

#[test]
fn engine_manifest_reserved_header_bytes_are_checked() {
    let disk = MemDisk::new();
    block_on(async {
        let engine = Engine::open(disk.clone(), options()).await.unwrap();
        engine.put(key(1), Bytes::from_static(b"value"), 1, None).await.unwrap();
        engine.flush().await.unwrap();
    });
    // The SSTable footer rejects a nonzero reserved field; the manifest header should too, so
    // that bit rot anywhere in the checksummed-or-checked bytes is reported.
    for offset in 20..24 {
        for bit in 0..8 {
            let opened = block_on(Engine::open(flipped(&disk, MANIFEST_FILE, offset, bit), options()));
            assert!(opened.is_err(), "manifest reserved byte {offset} bit {bit}: flip went unnoticed");
        }
    }
}
