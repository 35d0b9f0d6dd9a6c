//! [`Scan`]: an ordered range read, and [`ScanPage`], one page of its answer.
//!
//! A scan reads live keys in byte order from `start` (inclusive) to `end` (exclusive, or the
//! last key). A page holds at most `limit` entries and stops before its entries pass
//! [`SCAN_PAGE_BYTES_MAX`] (always keeping its first entry). When more may follow, the page's
//! `next_start` is the smallest key it did not cover: scanning again from there neither skips
//! nor repeats a key.

use bytes::Bytes;

use crate::error::WireError;
use crate::limits::{scan_entry_bytes, SCAN_LIMIT_MAX, SCAN_PAGE_BYTES_MAX};
use crate::operation::validate_key;

/// One scan request: keys in `[start, end)`, or from `start` on when `end` is `None`, at most
/// `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scan {
    pub start: Bytes,
    pub end: Option<Bytes>,
    pub limit: u32,
}

impl Scan {
    /// Checks the key limits of both bounds and the scan limit (see [`crate::limits`]).
    pub fn validate(&self) -> Result<(), WireError> {
        validate_key(&self.start)?;
        if let Some(end) = &self.end {
            validate_key(end)?;
        }
        if self.limit == 0 || self.limit > SCAN_LIMIT_MAX {
            return Err(WireError::ScanLimitOutOfRange { limit: self.limit });
        }
        Ok(())
    }

    /// Whether the range holds no key at all (`end <= start`).
    pub fn is_empty_range(&self) -> bool {
        self.end.as_ref().is_some_and(|end| end <= &self.start)
    }

    /// Whether `key` lies below the range's end.
    pub fn is_below_end(&self, key: &[u8]) -> bool {
        self.end.as_ref().is_none_or(|end| key < &end[..])
    }

    /// Key bytes the request carries, the part of its encoded size the caller controls.
    pub(crate) fn payload_bytes(&self) -> usize {
        self.start.len() + self.end.as_ref().map_or(0, Bytes::len)
    }
}

/// One live key of a scan page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScanEntry {
    pub key: Bytes,
    pub value: Bytes,
    /// The version of the write that stored the value.
    pub version: u64,
}

impl ScanEntry {
    /// What the entry counts for against [`SCAN_PAGE_BYTES_MAX`].
    pub fn page_bytes(&self) -> usize {
        scan_entry_bytes(self.key.len(), self.value.len())
    }
}

/// One page of a scan: entries in ascending key order and, when more may follow, the key the
/// next page starts at.
///
/// The invariant every producer keeps (a shard's page as much as the merged one): every live key
/// of the range below `next_start` (below the range's end when it is `None`) is in `entries`, and
/// every entry is below `next_start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScanPage {
    pub entries: Vec<ScanEntry>,
    /// The smallest key this page did not cover; `None` when the range is finished.
    pub next_start: Option<Bytes>,
}

impl ScanPage {
    /// Bytes the entries count for against [`SCAN_PAGE_BYTES_MAX`].
    pub fn page_bytes(&self) -> usize {
        self.entries.iter().map(ScanEntry::page_bytes).sum()
    }
}

/// Whether a page holding `page_bytes` and `entries` entries has room for one more entry of
/// `entry_bytes` under `limit` and [`SCAN_PAGE_BYTES_MAX`]. An empty page always has room, so
/// that a page makes progress whatever the size of the next value.
pub fn page_has_room(entries: usize, page_bytes: usize, entry_bytes: usize, limit: usize) -> bool {
    entries == 0 || (entries < limit && page_bytes + entry_bytes <= SCAN_PAGE_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

    fn scan(start: &[u8], end: Option<&[u8]>, limit: u32) -> Scan {
        Scan { start: Bytes::copy_from_slice(start), end: end.map(Bytes::copy_from_slice), limit }
    }

    #[test]
    fn limits_are_inclusive() {
        scan(b"a", None, 1).validate().unwrap();
        scan(&[b'k'; KEY_BYTES_MAX], Some(&[b'z'; KEY_BYTES_MAX]), SCAN_LIMIT_MAX).validate().unwrap();
    }

    #[test]
    fn each_broken_limit_has_its_own_error() {
        assert_eq!(scan(b"a", None, 0).validate(), Err(WireError::ScanLimitOutOfRange { limit: 0 }));
        assert_eq!(
            scan(b"a", None, SCAN_LIMIT_MAX + 1).validate(),
            Err(WireError::ScanLimitOutOfRange { limit: SCAN_LIMIT_MAX + 1 })
        );
        assert_eq!(scan(b"", None, 1).validate(), Err(WireError::KeyEmpty));
        assert_eq!(scan(b"a", Some(b""), 1).validate(), Err(WireError::KeyEmpty));
        assert_eq!(
            scan(b"a", Some(&[0; KEY_BYTES_MAX + 1]), 1).validate(),
            Err(WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 })
        );
    }

    #[test]
    fn end_at_or_before_start_is_an_empty_range() {
        assert!(scan(b"b", Some(b"b"), 1).is_empty_range());
        assert!(scan(b"b", Some(b"a"), 1).is_empty_range());
        assert!(!scan(b"b", Some(b"b\0"), 1).is_empty_range());
        assert!(!scan(b"b", None, 1).is_empty_range());
        assert!(scan(b"b", Some(b"c"), 1).is_below_end(b"b\xff"));
        assert!(!scan(b"b", Some(b"c"), 1).is_below_end(b"c"));
    }

    #[test]
    fn a_page_always_takes_its_first_entry_and_then_stops_at_the_byte_cap() {
        let largest = scan_entry_bytes(KEY_BYTES_MAX, VALUE_BYTES_MAX);
        assert!(page_has_room(0, 0, largest, 1));
        assert!(!page_has_room(1, largest, scan_entry_bytes(1, 0), 1000));
        assert!(page_has_room(1, SCAN_PAGE_BYTES_MAX - 100, 100, 1000));
        assert!(!page_has_room(1, SCAN_PAGE_BYTES_MAX - 100, 101, 1000));
        assert!(!page_has_room(3, 0, 1, 3), "the entry limit binds too");
    }
}
