//! Sorted string tables: the immutable files a flush or a compaction writes, and their readers.
//!
//! A table holds entries in strictly ascending key order, cut into checksummed data blocks of
//! about 4 KiB, followed by a block index, a bloom filter and a footer:
//!
//! ```text
//!   offset 0 ┌─────────────────────────────────────┐
//!            │ data block 0       │ zero padding   │  every block starts on a 4 KiB boundary
//!       4096 ├─────────────────────────────────────┤
//!            │ data block 1       │ zero padding   │
//!            ├─────────────────────────────────────┤
//!            │ ...                                 │  a block holding a large value spans
//!            │                                     │  several pages
//!            ├─────────────────────────────────────┤
//!            │ index block        │ zero padding   │  4 KiB-aligned
//!            ├─────────────────────────────────────┤
//!            │ filter block       │ zero padding   │  4 KiB-aligned
//!            ├─────────────────────────────────────┤
//!            │ ... zero padding   │ footer (60 B)  │  the footer ends the file;
//!   file end └─────────────────────────────────────┘  the file length is a multiple of 4096
//! ```
//!
//! Every block is a *frame* (all integers little-endian):
//!
//! ```text
//!   payload_len u32 │ payload │ crc32c u32 over payload_len and payload
//! ```
//!
//! Data block payload: the entries back to back in [`Entry::encode`](crate::Entry::encode)
//! form, then the offset of each entry from the start of the payload, then the entry count.
//! Offsets are `u16` when the payload is at most 64 KiB and `u32` otherwise (the reader derives
//! the width from `payload_len`), so that the usual 4 KiB block spends only 2 bytes per entry.
//!
//! ```text
//!   entry 0 │ entry 1 │ ... │ entry n-1 │ offset 0 │ ... │ offset n-1 │ n u32
//! ```
//!
//! A block is filled while its frame stays within 4096 bytes; an entry too large for that opens a
//! block of its own whose capacity is its frame rounded up to 4 KiB, and later entries fill the
//! rest of that capacity.
//!
//! Index block payload: the smallest key of the table, then for each data block its last key,
//! its offset and its frame length (without padding):
//!
//! ```text
//!   block_count u32 │ smallest_key_len u16 │ smallest_key
//!   │ block_count × (last_key_len u16 │ last_key │ offset u64 │ frame_len u32)
//! ```
//!
//! Filter block payload: a cache-line-blocked bloom filter (see [`filter`]):
//!
//! ```text
//!   hash_count u32 │ line_count × 64 bytes of bits
//! ```
//!
//! Footer, the last 60 bytes of the file:
//!
//! ```text
//!    0 magic u64           8 format_version u32   12 index_len u32
//!   16 index_offset u64   24 filter_offset u64    32 filter_len u32   36 reserved u32 (zero)
//!   40 entry_count u64    48 max_version u64      56 crc32c u32 over bytes 0..56
//! ```
//!
//! `max_version` is the highest version of any entry in the table: a point read that already
//! found a higher version for its key skips the table (and stops once every table left is below
//! it), since reads resolve by version, not by table age.
//!
//! Integrity: every frame's checksum is verified right after it is read and a mismatch is a
//! [`StorageError::ChecksumMismatch`](crate::StorageError::ChecksumMismatch); structural checks
//! (offsets, lengths, key order, sizes that do not add up) then give
//! [`StorageError::Corruption`](crate::StorageError::Corruption). The writer checks each block
//! with the same reader code before writing it. Only verified blocks enter the
//! [`BlockCache`](crate::block_cache::BlockCache).
//!
//! ## Layout
//! - [`writer`]: [`TableWriter`] builds a table in one sequential pass.
//! - [`table`]: [`Table`], an open table answering point reads.
//! - [`iter`]: [`TableIter`], an ascending scan.
//! - [`filter`]: the bloom filter and the key hash shared by every table.
//! - `block`, `index`, `footer`, `frame`: the encodings of the parts above.

mod block;
pub mod filter;
mod footer;
mod frame;
mod index;
pub mod iter;
pub mod table;
pub mod writer;

pub use filter::key_hash;
pub use iter::TableIter;
pub use table::Table;
pub use writer::{CacheFill, TableSummary, TableWriter};

use crate::disk::ALIGNMENT;

/// The first eight bytes of `key` as a big-endian number, zeros past its end: ordered as the
/// keys are, except that keys sharing these bytes (or a shorter key and a longer one it starts)
/// may tie. A strictly lower prefix always means a lower key. Stored keys begin with their hash
/// token, so their prefixes are spread evenly and almost never tie.
pub(crate) fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = key.len().min(8);
    bytes[..len].copy_from_slice(&key[..len]);
    u64::from_be_bytes(bytes)
}

/// Where `wanted` falls between the prefixes `low` and `high`, as a share from 0 to 1: where
/// a key of that prefix sits among keys bounded by them, since stored keys' prefixes (hash
/// tokens) spread evenly. `None` when the bounds are empty or leave `wanted` outside. In
/// floating point: only a guess, and cheaper than a 128-bit division.
pub(crate) fn prefix_share(wanted: u64, low: u64, high: u64) -> Option<f64> {
    (low < high && (low..=high).contains(&wanted)).then(|| (wanted - low) as f64 / (high - low) as f64)
}

/// A data block is filled while its frame stays within this many bytes: one page, so a point
/// read costs one aligned 4 KiB read.
pub const BLOCK_TARGET_BYTES: usize = ALIGNMENT;
/// The writer hands the disk its buffered blocks once this many bytes have accumulated, so a
/// flush issues large sequential writes without holding the whole table in memory.
pub const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// A scan that does not fill the cache reads this many bytes of consecutive blocks at once.
pub const SCAN_READAHEAD_BYTES: usize = 256 << 10;
/// The footer's first field: "RINGKVST" read as a little-endian u64.
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"RINGKVST");
/// Version of the format described above; a reader rejects any other. Version 2 added
/// `max_version` to the footer.
pub const FORMAT_VERSION: u32 = 2;

const _: () = assert!(BLOCK_TARGET_BYTES.is_multiple_of(ALIGNMENT));
const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(ALIGNMENT));
const _: () = assert!(footer::FOOTER_BYTES <= ALIGNMENT);
