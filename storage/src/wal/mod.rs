//! The write-ahead log: append-only segments of checksummed, sequence-numbered records.
//!
//! ```text
//! segment file:  | group write 1, zero-padded to 4 KiB | group write 2, padded | ...
//! record:        crc32c u32 | payload_len u32 | seq u64 | payload (one encoded entry)
//! ```
//! Each group commit writes the records queued since the previous one as a single write that
//! starts on a fresh 4 KiB boundary and is zero-padded to the next, so a disk sector holding
//! acknowledged records is never written again (O_DIRECT writes whole sectors). The checksum
//! covers length, sequence number and payload. Sequence numbers are contiguous across segments,
//! which lets recovery tell a torn tail (nothing valid after the bad record) from corruption
//! (a valid record with a later sequence number after it).
//!
//! A group write that would grow the segment also writes zeros ahead (`wal_preallocate_bytes`),
//! so most group writes land inside the file and their fdatasync has no new file size to
//! commit. Those zeros are written before any record goes there; a sector that holds records is
//! still never written twice. Recovery reads a zero header on a block boundary as the log's end.
//!
//! ## Layout
//! - [`record`]: encoding and decoding of one record.
//! - [`reader`]: recovery scan of a segment.
//! - [`writer`]: the group-commit writer.

pub mod reader;
pub mod record;
pub mod writer;

/// Zeros written ahead of the records each time a segment grows (see [`writer::WalWriter::create`]).
/// The group write that grows the segment carries them, so it is the one that waits longer: a
/// quarter of a MiB costs that group a fraction of a millisecond, and the journal commit it
/// brings comes once per thousands of small writes.
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 256 << 10;

/// File name of WAL segment `number`.
pub fn segment_file_name(number: u64) -> String {
    format!("{number:020}.wal")
}

/// The number of a WAL segment file, if `name` is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    name.strip_suffix(".wal")?.parse().ok()
}
