//! How the engine stores keys: `token (u64, big-endian) ‖ user key`, where the token is
//! [`ringkv_wire::token::token`] of the user key (xxh3-64 with a fixed seed, the one definition
//! servers and clients share).
//!
//! Byte order of stored keys is then token order, keys of one token in byte order: a range of
//! the token ring (a vnode's, say) is one contiguous range of the LSM tree, which a scan, a
//! stream or an anti-entropy hash walks in one pass. The engine's public API takes and returns
//! user keys; only memtables, the WAL, tables and the manifest hold stored keys.
//!
//! A [`Position`] is a place in that order: a token and a key of that token, or the token
//! alone, which comes before every key of the token.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes};
use ringkv_wire::token::token;

/// Bytes of the token prefix.
pub const TOKEN_BYTES: usize = 8;
/// Longest stored key: the token and the longest user key.
pub const STORED_KEY_BYTES_MAX: usize = TOKEN_BYTES + crate::KEY_BYTES_MAX;

/// A stored key built on the stack (a point read builds one per lookup; no allocation).
pub struct StoredKey {
    bytes: [u8; STORED_KEY_BYTES_MAX],
    len: usize,
}

impl StoredKey {
    /// The stored form of `key`, whose length the caller has checked (at most
    /// [`crate::KEY_BYTES_MAX`]; asserted, since a longer one is a bug in the engine).
    pub fn new(key: &[u8]) -> Self {
        StoredKey::with_token(token(key), key)
    }

    /// [`StoredKey::new`] with the key's token, already computed by the caller (it must be
    /// `token(key)`).
    pub fn with_token(key_token: u64, key: &[u8]) -> Self {
        assert!(key.len() <= crate::KEY_BYTES_MAX, "key of {} bytes reached the engine", key.len());
        debug_assert_eq!(key_token, token(key), "the token of another key");
        let mut bytes = [0; STORED_KEY_BYTES_MAX];
        bytes[..TOKEN_BYTES].copy_from_slice(&key_token.to_be_bytes());
        bytes[TOKEN_BYTES..TOKEN_BYTES + key.len()].copy_from_slice(key);
        StoredKey { bytes, len: TOKEN_BYTES + key.len() }
    }
}

/// Runs `work` with the stored form of `key` (whose token, `token(key)`, the caller has), built
/// in place on this frame: for the hot paths. A [`StoredKey`] returned by value is moved at
/// least once, a copy of its whole array (264 bytes) per key, which was 3% of a node's samples
/// under YCSB A; borrowed from here it is not moved. The key's length is the caller's to check,
/// as for [`StoredKey::new`].
#[inline]
pub fn with_stored<R>(key_token: u64, key: &[u8], work: impl FnOnce(&[u8]) -> R) -> R {
    assert!(key.len() <= crate::KEY_BYTES_MAX, "key of {} bytes reached the engine", key.len());
    debug_assert_eq!(key_token, token(key), "the token of another key");
    // Only the bytes the key needs are written: zeroing the whole array first was as many
    // stores again as a short key's copy.
    let mut bytes = [MaybeUninit::<u8>::uninit(); STORED_KEY_BYTES_MAX];
    let start = bytes.as_mut_ptr().cast::<u8>();
    // SAFETY: `MaybeUninit<u8>` has `u8`'s layout. The token's bytes and the key's (at most
    // `KEY_BYTES_MAX`, asserted above) fit in the array's `TOKEN_BYTES + KEY_BYTES_MAX`, no
    // source overlaps the array, and the slice lent covers exactly the bytes written.
    let stored = unsafe {
        std::ptr::copy_nonoverlapping(key_token.to_be_bytes().as_ptr(), start, TOKEN_BYTES);
        std::ptr::copy_nonoverlapping(key.as_ptr(), start.add(TOKEN_BYTES), key.len());
        std::slice::from_raw_parts(start, TOKEN_BYTES + key.len())
    };
    work(stored)
}

impl std::ops::Deref for StoredKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The token and the user key of a stored key, the key a zero-copy slice of it; `None` when
/// `stored` is too short to hold both (damage).
pub fn split(stored: &Bytes) -> Option<(u64, Bytes)> {
    if stored.len() <= TOKEN_BYTES {
        return None;
    }
    let token = u64::from_be_bytes(stored[..TOKEN_BYTES].try_into().expect("8 bytes"));
    Some((token, stored.slice(TOKEN_BYTES..)))
}

/// A place in the engine's key order: `(token, key)`, compared token first, then key bytes. An
/// empty `key` stands for the token itself, before every key that has it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub token: u64,
    pub key: Bytes,
}

impl Position {
    /// Where `key` is: at its token, among that token's keys by bytes.
    pub fn of_key(key: impl Into<Bytes>) -> Self {
        let key = key.into();
        Position { token: token(&key), key }
    }

    /// The start of `token`: before every key that has it.
    pub fn of_token(token: u64) -> Self {
        Position { token, key: Bytes::new() }
    }

    /// The position as a stored key (or, for a token alone, the token prefix).
    pub fn stored(&self) -> Bytes {
        let mut bytes = Vec::with_capacity(TOKEN_BYTES + self.key.len());
        bytes.put_u64(self.token);
        bytes.extend_from_slice(&self.key);
        Bytes::from(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_stored_in_place_is_the_stored_key() {
        for length in [1, 2, 15, 16, 17, 64, crate::KEY_BYTES_MAX] {
            let key: Vec<u8> = (0..length).map(|index| index as u8 ^ 0x5a).collect();
            let lent = with_stored(token(&key), &key, <[u8]>::to_vec);
            assert_eq!(lent, StoredKey::new(&key).to_vec());
            assert_eq!(lent.len(), TOKEN_BYTES + length);
            assert_eq!(&lent[TOKEN_BYTES..], &key[..]);
        }
    }

    #[test]
    fn stored_keys_sort_by_token_then_key() {
        let keys: Vec<Bytes> = (0..200).map(|index| Bytes::from(format!("key{index}"))).collect();
        let mut stored: Vec<Vec<u8>> = keys.iter().map(|key| StoredKey::new(key).to_vec()).collect();
        stored.sort();
        let mut positions: Vec<Position> = keys.iter().cloned().map(Position::of_key).collect();
        positions.sort();
        for (stored, position) in stored.iter().zip(&positions) {
            assert_eq!(stored, &position.stored().to_vec());
            let (token, key) = split(&Bytes::copy_from_slice(stored)).unwrap();
            assert_eq!((token, &key), (position.token, &position.key));
            assert_eq!(token, ringkv_wire::token::token(&key));
        }
        // A token alone comes before every key of that token, and after every lower token.
        let first = &positions[0];
        assert!(Position::of_token(first.token) < *first);
        assert!(Position::of_token(first.token).stored() < first.stored());
        assert!(Position::of_token(first.token + 1) > *first);
        assert_eq!(split(&Position::of_token(5).stored()), None, "no key in a bare token");
    }

    #[test]
    fn the_longest_key_fits() {
        let key = vec![b'k'; crate::KEY_BYTES_MAX];
        assert_eq!(StoredKey::new(&key).len(), STORED_KEY_BYTES_MAX);
    }
}
