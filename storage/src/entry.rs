//! What the engine stores for a key: a version, and either a value (with an optional expiry) or
//! a tombstone (with its deletion time), plus the one byte encoding both the WAL and SSTables use.
//!
//! Encoding, little-endian:
//! ```text
//! flags u8 | version u64 | time_ms u64 | key_len u16 | key | value_len u32 | value
//! ```
//! `flags` bit 0: tombstone; bit 1: the value has an expiry. `time_ms` is the expiry of a value
//! (0 when none) or the deletion time of a tombstone.
//!
//! Which of two entries for a key stands is [`Entry::cmp_precedence`]: the higher version, and
//! between equal versions a fixed order of the contents, so every replica resolves the same way
//! whatever order the writes reach it in (arrival order never decides).

use bytes::{BufMut, Bytes};
use ringkv_wire::peer::{PeerEntry, PeerValue};
use std::cmp::Ordering;

/// Flag bit: the entry is a tombstone.
const FLAG_TOMBSTONE: u8 = 1;
/// Flag bit: the value expires at `time_ms`.
const FLAG_EXPIRES: u8 = 2;
/// Bytes of an encoded entry before the key.
pub const ENTRY_HEADER_BYTES: usize = 1 + 8 + 8 + 2;

/// A value or its absence, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A live value, expiring at `expires_at_ms` (caller's clock, milliseconds) if set.
    Live { data: Bytes, expires_at_ms: Option<u64> },
    /// A delete, made at `deleted_at_ms`; kept for the tombstone grace period.
    Tombstone { deleted_at_ms: u64 },
}

/// One key's stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Caller-supplied version (a hybrid logical clock timestamp in ringkv).
    pub version: u64,
    /// The value or tombstone.
    pub value: Value,
}

/// A replicated entry (as replicas exchange it) as the engine stores it.
impl From<PeerEntry> for Entry {
    fn from(entry: PeerEntry) -> Self {
        match entry.value {
            PeerValue::Live { data, expires_at_ms } => Entry::live(entry.version, data, expires_at_ms),
            PeerValue::Tombstone { deleted_at_ms } => Entry::tombstone(entry.version, deleted_at_ms),
        }
    }
}

/// A stored entry as replicas exchange it.
impl From<Entry> for PeerEntry {
    fn from(entry: Entry) -> Self {
        let value = match entry.value {
            Value::Live { data, expires_at_ms } => PeerValue::Live { data, expires_at_ms },
            Value::Tombstone { deleted_at_ms } => PeerValue::Tombstone { deleted_at_ms },
        };
        PeerEntry { version: entry.version, value }
    }
}

impl Entry {
    /// A live value.
    pub fn live(version: u64, data: Bytes, expires_at_ms: Option<u64>) -> Self {
        Entry { version, value: Value::Live { data, expires_at_ms } }
    }

    /// A tombstone.
    pub fn tombstone(version: u64, deleted_at_ms: u64) -> Self {
        Entry { version, value: Value::Tombstone { deleted_at_ms } }
    }

    /// True when a reader at `now_ms` must see this entry as absent: a tombstone, or a value
    /// whose expiry has passed.
    pub fn is_absent_at(&self, now_ms: u64) -> bool {
        match &self.value {
            Value::Tombstone { .. } => true,
            Value::Live { expires_at_ms: Some(at), .. } => *at <= now_ms,
            Value::Live { expires_at_ms: None, .. } => false,
        }
    }

    /// When the entry stopped being visible (deletion or expiry time), if it has.
    pub fn dead_since_ms(&self, now_ms: u64) -> Option<u64> {
        match &self.value {
            Value::Tombstone { deleted_at_ms } => Some(*deleted_at_ms),
            Value::Live { expires_at_ms: Some(at), .. } if *at <= now_ms => Some(*at),
            Value::Live { .. } => None,
        }
    }

    /// The value bytes a reader at `now_ms` sees: none for a tombstone or an expired value.
    pub fn data_at(&self, now_ms: u64) -> Option<&Bytes> {
        if self.is_absent_at(now_ms) {
            return None;
        }
        self.data()
    }

    /// The value bytes, if live.
    pub fn data(&self) -> Option<&Bytes> {
        match &self.value {
            Value::Live { data, .. } => Some(data),
            Value::Tombstone { .. } => None,
        }
    }

    /// How this entry ranks against `other`, an entry for the same key: the one that ranks
    /// higher is the key's state, wherever and in whatever order the two were written. The
    /// higher version ranks higher. Equal versions normally mean the same write seen twice; when
    /// they differ anyway, the tie is broken by content so that every replica picks the same
    /// one: a tombstone over a value (a delete is never undone by its twin), then the later
    /// deletion time, or the greater value bytes, then the later expiry (no expiry counts as
    /// the latest). `Equal` only for identical entries.
    pub fn cmp_precedence(&self, other: &Entry) -> Ordering {
        self.version.cmp(&other.version).then_with(|| match (&self.value, &other.value) {
            (Value::Tombstone { .. }, Value::Live { .. }) => Ordering::Greater,
            (Value::Live { .. }, Value::Tombstone { .. }) => Ordering::Less,
            (Value::Tombstone { deleted_at_ms: mine }, Value::Tombstone { deleted_at_ms: theirs }) => {
                mine.cmp(theirs)
            }
            (
                Value::Live { data: mine, expires_at_ms: my_expiry },
                Value::Live { data: theirs, expires_at_ms: their_expiry },
            ) => mine.cmp(theirs).then_with(|| {
                // `None` (never expires) ranks above every expiry time.
                let rank = |expiry: &Option<u64>| expiry.map_or(u64::MAX as u128 + 1, u128::from);
                rank(my_expiry).cmp(&rank(their_expiry))
            }),
        })
    }

    /// True when this entry ranks above `other` (see [`Entry::cmp_precedence`]), so it replaces
    /// `other` as the key's state; false for the same entry seen again.
    pub fn supersedes(&self, other: &Entry) -> bool {
        self.cmp_precedence(other) == Ordering::Greater
    }

    /// Size of this entry encoded with a key of `key_len` bytes.
    pub fn encoded_len(&self, key_len: usize) -> usize {
        ENTRY_HEADER_BYTES + key_len + 4 + self.data().map_or(0, Bytes::len)
    }

    /// Appends the encoding of `(key, self)` to `out`.
    pub fn encode(&self, key: &[u8], out: &mut impl BufMut) {
        debug_assert!(key.len() <= u16::MAX as usize);
        let (flags, time_ms, data): (u8, u64, &[u8]) = match &self.value {
            Value::Live { data, expires_at_ms: Some(at) } => (FLAG_EXPIRES, *at, data),
            Value::Live { data, expires_at_ms: None } => (0, 0, data),
            Value::Tombstone { deleted_at_ms } => (FLAG_TOMBSTONE, *deleted_at_ms, &[]),
        };
        out.put_u8(flags);
        out.put_u64_le(self.version);
        out.put_u64_le(time_ms);
        out.put_u16_le(key.len() as u16);
        out.put_slice(key);
        out.put_u32_le(data.len() as u32);
        out.put_slice(data);
    }

    /// Decodes one entry from the front of `buf`, a slice of `whole` (so values are zero-copy
    /// slices of it). Returns the key, the entry and the bytes consumed; `Err` names what is wrong.
    pub fn decode(whole: &Bytes, start: usize) -> Result<(Bytes, Entry, usize), &'static str> {
        let buf = whole.get(start..).ok_or("entry starts past the end")?;
        if buf.len() < ENTRY_HEADER_BYTES {
            return Err("entry header truncated");
        }
        let flags = buf[0];
        if flags & !(FLAG_TOMBSTONE | FLAG_EXPIRES) != 0 {
            return Err("unknown entry flags");
        }
        let version = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
        let time_ms = u64::from_le_bytes(buf[9..17].try_into().expect("8 bytes"));
        let key_len = u16::from_le_bytes(buf[17..19].try_into().expect("2 bytes")) as usize;
        let key_end = ENTRY_HEADER_BYTES + key_len;
        if key_len == 0 || key_len > crate::key::STORED_KEY_BYTES_MAX || buf.len() < key_end + 4 {
            return Err("entry key truncated or out of limits");
        }
        let value_len = u32::from_le_bytes(buf[key_end..key_end + 4].try_into().expect("4 bytes")) as usize;
        let value_start = key_end + 4;
        if value_len > crate::VALUE_BYTES_MAX || buf.len() < value_start + value_len {
            return Err("entry value truncated or out of limits");
        }
        let key = whole.slice(start + ENTRY_HEADER_BYTES..start + key_end);
        let value = if flags & FLAG_TOMBSTONE != 0 {
            if value_len != 0 || flags & FLAG_EXPIRES != 0 {
                return Err("tombstone with a value");
            }
            Value::Tombstone { deleted_at_ms: time_ms }
        } else {
            let data = whole.slice(start + value_start..start + value_start + value_len);
            let expires_at_ms = (flags & FLAG_EXPIRES != 0).then_some(time_ms);
            Value::Live { data, expires_at_ms }
        };
        Ok((key, Entry { version, value }, value_start + value_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_cross_to_replicas_and_back_unchanged() {
        let entries = [
            Entry::live(7, Bytes::from_static(b"value"), None),
            Entry::live(8, Bytes::new(), Some(1_700_000_000_000)),
            Entry::tombstone(9, 1_700_000_000_001),
        ];
        for entry in entries {
            let replicated = ringkv_wire::peer::PeerEntry::from(entry.clone());
            assert_eq!(replicated.version, entry.version);
            assert_eq!(Entry::from(replicated), entry);
        }
    }

    #[test]
    fn round_trips_every_kind() {
        let entries = [
            Entry::live(7, Bytes::from_static(b"value"), None),
            Entry::live(8, Bytes::from_static(b""), Some(1_000)),
            Entry::tombstone(9, 55),
        ];
        let mut buf = Vec::new();
        for entry in &entries {
            entry.encode(b"key", &mut buf);
        }
        let whole = Bytes::from(buf);
        let mut at = 0;
        for expected in &entries {
            let (key, entry, used) = Entry::decode(&whole, at).unwrap();
            assert_eq!(&key[..], b"key");
            assert_eq!(&entry, expected);
            assert_eq!(used, expected.encoded_len(3));
            at += used;
        }
        assert_eq!(at, whole.len());
    }

    #[test]
    fn rejects_truncation_and_bad_flags() {
        let mut buf = Vec::new();
        Entry::live(1, Bytes::from_static(b"abc"), None).encode(b"k", &mut buf);
        let whole = Bytes::from(buf.clone());
        for cut in 0..whole.len() {
            assert!(Entry::decode(&whole.slice(..cut), 0).is_err(), "cut at {cut}");
        }
        buf[0] = 0x80;
        assert!(Entry::decode(&Bytes::from(buf), 0).is_err());
    }

    #[test]
    fn higher_version_wins_and_ties_break_by_content() {
        let value =
            |version, data: &'static [u8], expiry| Entry::live(version, Bytes::from_static(data), expiry);
        // The version decides first, whatever the contents.
        assert!(value(2, b"a", Some(1)).supersedes(&Entry::tombstone(1, 99)));
        assert!(Entry::tombstone(2, 0).supersedes(&value(1, b"zzz", None)));
        // Equal versions: tombstone over value, then deletion time, value bytes, expiry.
        assert!(Entry::tombstone(5, 0).supersedes(&value(5, b"zzz", None)));
        assert!(Entry::tombstone(5, 7).supersedes(&Entry::tombstone(5, 6)));
        assert!(value(5, b"b", Some(1)).supersedes(&value(5, b"a", None)));
        assert!(value(5, b"a", None).supersedes(&value(5, b"a", Some(u64::MAX))));
        assert!(value(5, b"a", Some(9)).supersedes(&value(5, b"a", Some(8))));
        // The same write twice: neither replaces the other.
        let entries = [
            value(5, b"a", None),
            value(5, b"a", Some(3)),
            value(5, b"", None),
            Entry::tombstone(5, 1),
            Entry::tombstone(4, 1),
            value(6, b"", Some(0)),
        ];
        for entry in &entries {
            assert_eq!(entry.cmp_precedence(entry), Ordering::Equal);
            assert!(!entry.supersedes(entry));
            // A total order: antisymmetric, so any two replicas agree on the winner.
            for other in &entries {
                assert_eq!(entry.cmp_precedence(other), other.cmp_precedence(entry).reverse());
                assert_eq!(entry.cmp_precedence(other) == Ordering::Equal, entry == other);
            }
        }
    }

    #[test]
    fn expiry_hides_value_from_then_on() {
        let entry = Entry::live(1, Bytes::from_static(b"v"), Some(100));
        assert!(!entry.is_absent_at(99));
        assert!(entry.is_absent_at(100));
        assert_eq!(entry.dead_since_ms(150), Some(100));
        assert_eq!(entry.dead_since_ms(50), None);
    }
}
