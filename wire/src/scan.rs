//! [`Scan`]: a range read in token order, and [`ScanPage`], one page of its answer.
//!
//! A scan reads live keys ordered by [`position`]: the key's token (its place on the ring, see
//! [`crate::token`]), then its bytes. That is the order shards store keys in, so a token range
//! is one contiguous read, and it is the order Cassandra pages by `token()`. The range begins at
//! a key's position, a token, or right after a key (resuming); it ends before a key's position
//! or a token, or runs through the end of the ring. A page holds at most `limit` entries and
//! stops before its entries pass [`SCAN_PAGE_BYTES_MAX`] (always keeping its first entry). When
//! more may follow, the page's `next_start` is its last entry's key: scanning again
//! [`ScanStart::After`] it resumes exactly there, so paging neither skips nor repeats a key.

use bytes::Bytes;

use crate::error::WireError;
use crate::limits::{scan_entry_bytes, SCAN_LIMIT_MAX, SCAN_PAGE_BYTES_MAX};
use crate::operation::validate_key;
use crate::token::token;

/// Where `key` sits in scan order: its token, then its bytes.
pub fn position(key: &[u8]) -> (u64, &[u8]) {
    (token(key), key)
}

/// Where a scan begins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScanStart {
    /// At the first key whose token is at least this one (`Token(0)`: the start of the ring).
    Token(u64),
    /// At this key's position, inclusive.
    Key(Bytes),
    /// Right after this key's position: where a page's `next_start` resumes.
    After(Bytes),
}

impl ScanStart {
    /// From the position of `key`, inclusive.
    pub fn key(key: impl AsRef<[u8]>) -> Self {
        ScanStart::Key(Bytes::copy_from_slice(key.as_ref()))
    }

    /// Right after the position of `key`.
    pub fn after(key: impl AsRef<[u8]>) -> Self {
        ScanStart::After(Bytes::copy_from_slice(key.as_ref()))
    }

    /// Whether `key` lies at or after this start.
    pub fn admits(&self, key: &[u8]) -> bool {
        match self {
            ScanStart::Token(start) => token(key) >= *start,
            ScanStart::Key(start) => position(key) >= position(start),
            ScanStart::After(after) => position(key) > position(after),
        }
    }
}

/// Where a scan ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScanEnd {
    /// Through the last key of the ring.
    Last,
    /// Before the first key whose token is at least this one.
    Token(u64),
    /// Before this key's position.
    Key(Bytes),
}

impl ScanEnd {
    /// Before the position of `key`.
    pub fn key(key: impl AsRef<[u8]>) -> Self {
        ScanEnd::Key(Bytes::copy_from_slice(key.as_ref()))
    }

    /// Whether `key` lies before this end.
    pub fn admits(&self, key: &[u8]) -> bool {
        match self {
            ScanEnd::Last => true,
            ScanEnd::Token(end) => token(key) < *end,
            ScanEnd::Key(end) => position(key) < position(end),
        }
    }
}

/// One scan request: live keys from `start` to `end` in token order, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scan {
    pub start: ScanStart,
    pub end: ScanEnd,
    pub limit: u32,
}

impl Scan {
    /// Checks the key limits of the keys given and the scan limit (see [`crate::limits`]).
    pub fn validate(&self) -> Result<(), WireError> {
        if let ScanStart::Key(key) | ScanStart::After(key) = &self.start {
            validate_key(key)?;
        }
        if let ScanEnd::Key(key) = &self.end {
            validate_key(key)?;
        }
        if self.limit == 0 || self.limit > SCAN_LIMIT_MAX {
            return Err(WireError::ScanLimitOutOfRange { limit: self.limit });
        }
        Ok(())
    }

    /// The same scan, resumed right after `key` (a page's `next_start`).
    pub fn resume_after(&self, key: Bytes) -> Scan {
        Scan { start: ScanStart::After(key), end: self.end.clone(), limit: self.limit }
    }

    /// Whether `key` lies in the range.
    pub fn admits(&self, key: &[u8]) -> bool {
        self.start.admits(key) && self.end.admits(key)
    }

    /// The tokens the range can reach, first and last inclusive; `None` when it holds no key at
    /// all (the end at or before the start). A router asks only the shards owning them.
    pub fn token_span(&self) -> Option<(u64, u64)> {
        let first = match &self.start {
            ScanStart::Token(start) => *start,
            ScanStart::Key(key) | ScanStart::After(key) => token(key),
        };
        let last = match &self.end {
            ScanEnd::Last => u64::MAX,
            ScanEnd::Token(end) => end.checked_sub(1)?,
            // Keys of the end key's token that sort before it are still in the range.
            ScanEnd::Key(key) => token(key),
        };
        let empty = match (&self.start, &self.end) {
            (ScanStart::Key(start), ScanEnd::Key(end)) | (ScanStart::After(start), ScanEnd::Key(end)) => {
                position(end) <= position(start)
            }
            _ => last < first,
        };
        (!empty && first <= last).then_some((first, last))
    }

    /// Whether the range holds no key at all.
    pub fn is_empty_range(&self) -> bool {
        self.token_span().is_none()
    }

    /// Key bytes the request carries, the part of its encoded size the caller controls.
    pub(crate) fn payload_bytes(&self) -> usize {
        let start = match &self.start {
            ScanStart::Key(key) | ScanStart::After(key) => key.len(),
            ScanStart::Token(_) => 0,
        };
        let end = match &self.end {
            ScanEnd::Key(key) => key.len(),
            ScanEnd::Last | ScanEnd::Token(_) => 0,
        };
        start + end
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
    /// The key's token.
    pub fn token(&self) -> u64 {
        token(&self.key)
    }

    /// What the entry counts for against [`SCAN_PAGE_BYTES_MAX`].
    pub fn page_bytes(&self) -> usize {
        scan_entry_bytes(self.key.len(), self.value.len())
    }
}

/// One page of a scan: entries in token order and, when more may follow, the key to resume
/// after.
///
/// The invariant every producer keeps (a shard's page as much as the merged one): every live key
/// of the range up to `next_start` inclusive (through the range's end when it is `None`) is in
/// `entries`, and `next_start` is the last entry's key, or a later key the page looked at when a
/// shard stopped its work in a run of dead keys (then the page may hold no entry at all; paging
/// still progresses, since `next_start` moves forward).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScanPage {
    pub entries: Vec<ScanEntry>,
    /// Where the next page resumes (after this key), when more may follow; `None` when the range
    /// is finished.
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
        Scan { start: ScanStart::key(start), end: end.map_or(ScanEnd::Last, ScanEnd::key), limit }
    }

    #[test]
    fn limits_are_inclusive() {
        scan(b"a", None, 1).validate().unwrap();
        scan(&[b'k'; KEY_BYTES_MAX], Some(&[b'z'; KEY_BYTES_MAX]), SCAN_LIMIT_MAX).validate().unwrap();
        Scan { start: ScanStart::Token(0), end: ScanEnd::Token(u64::MAX), limit: 1 }.validate().unwrap();
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
        let after_nothing = Scan { start: ScanStart::after(b""), end: ScanEnd::Last, limit: 1 };
        assert_eq!(after_nothing.validate(), Err(WireError::KeyEmpty));
        assert_eq!(
            scan(b"a", Some(&[0; KEY_BYTES_MAX + 1]), 1).validate(),
            Err(WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 })
        );
    }

    #[test]
    fn ranges_are_in_token_order() {
        // Two keys, named by which comes first in token order.
        let (first, second) = {
            let (a, b) = (&b"apple"[..], &b"banana"[..]);
            if position(a) < position(b) {
                (a, b)
            } else {
                (b, a)
            }
        };
        assert!(scan(first, Some(second), 1).admits(first));
        assert!(!scan(first, Some(second), 1).admits(second), "the end is exclusive");
        assert!(scan(second, Some(first), 1).is_empty_range());
        assert!(scan(first, Some(first), 1).is_empty_range());
        assert!(!scan(first, None, 1).is_empty_range());
        let resumed = scan(first, None, 1).resume_after(Bytes::copy_from_slice(first));
        assert!(!resumed.admits(first) && resumed.admits(second));
        // Token bounds.
        let by_token =
            |start, end| Scan { start: ScanStart::Token(start), end: ScanEnd::Token(end), limit: 1 };
        assert!(by_token(5, 5).is_empty_range() && by_token(6, 5).is_empty_range());
        assert_eq!(by_token(5, 6).token_span(), Some((5, 5)));
        assert_eq!(scan(first, None, 1).token_span(), Some((token(first), u64::MAX)));
        let to_key = Scan { start: ScanStart::Token(0), end: ScanEnd::key(first), limit: 1 };
        assert_eq!(to_key.token_span(), Some((0, token(first))));
        assert!(to_key.admits(b"") == (token(b"") < token(first)));
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
