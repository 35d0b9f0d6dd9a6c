//! [`Operation`]: one single-key operation, the unit a shard executes and a batch is made of.

use bytes::Bytes;

use crate::error::WireError;
use crate::limits::{KEY_BYTES_MAX, KEY_BYTES_MIN, TTL_MS_MAX, VALUE_BYTES_MAX};

/// What a compare-and-swap requires of the key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expected {
    /// The key's live value has exactly this version.
    Version(u64),
    /// The key has no live value (never written, deleted, or expired).
    Absent,
}

/// An operation on one key.
///
/// Keys and values parsed from a frame are [`Bytes`] slices of that frame, so parsing copies
/// nothing. The flip side: holding one keeps the whole receive buffer it came from alive, so
/// anything stored long-term (a memtable entry) should be copied out first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Read the key's live value.
    Get { key: Bytes },
    /// Write a value; with `ttl_ms` it expires that many milliseconds after the write applies.
    Put { key: Bytes, value: Bytes, ttl_ms: Option<u64> },
    /// Remove the key.
    Delete { key: Bytes },
    /// Write `value` only if the key's current state matches `expected`.
    CompareAndSwap { key: Bytes, expected: Expected, value: Bytes, ttl_ms: Option<u64> },
}

impl Operation {
    /// The operation lent as an [`OperationRef`]; `None` for a compare-and-swap, which has no
    /// lent form.
    pub fn lent(&self) -> Option<OperationRef<'_>> {
        match self {
            Self::Get { key } => Some(OperationRef::Get { key }),
            Self::Put { key, value, ttl_ms } => Some(OperationRef::Put { key, value, ttl_ms: *ttl_ms }),
            Self::Delete { key } => Some(OperationRef::Delete { key }),
            Self::CompareAndSwap { .. } => None,
        }
    }

    /// The key the operation addresses; the shard that owns its token executes it.
    pub fn key(&self) -> &Bytes {
        match self {
            Self::Get { key }
            | Self::Put { key, .. }
            | Self::Delete { key }
            | Self::CompareAndSwap { key, .. } => key,
        }
    }

    /// Checks the key, value and TTL limits (see [`crate::limits`]).
    pub fn validate(&self) -> Result<(), WireError> {
        validate_key(self.key())?;
        match self {
            Self::Get { .. } | Self::Delete { .. } => Ok(()),
            Self::Put { value, ttl_ms, .. } | Self::CompareAndSwap { value, ttl_ms, .. } => {
                validate_value(value)?;
                validate_ttl(*ttl_ms)
            }
        }
    }

    /// Key and value bytes, the part of the encoded size that the caller controls.
    pub(crate) fn payload_bytes(&self) -> usize {
        match self {
            Self::Get { key } | Self::Delete { key } => key.len(),
            Self::Put { key, value, .. } | Self::CompareAndSwap { key, value, .. } => key.len() + value.len(),
        }
    }
}

/// A get, put or delete whose key and value are borrowed: what a client encodes straight from
/// its caller's bytes ([`crate::encode_operation_into`]), with no copy into an [`Operation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationRef<'a> {
    Get { key: &'a [u8] },
    Put { key: &'a [u8], value: &'a [u8], ttl_ms: Option<u64> },
    Delete { key: &'a [u8] },
}

impl<'a> OperationRef<'a> {
    pub fn key(&self) -> &'a [u8] {
        match *self {
            Self::Get { key } | Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }

    /// The same limits as [`Operation::validate`].
    pub fn validate(&self) -> Result<(), WireError> {
        validate_key(self.key())?;
        match *self {
            Self::Get { .. } | Self::Delete { .. } => Ok(()),
            Self::Put { value, ttl_ms, .. } => {
                validate_value(value)?;
                validate_ttl(ttl_ms)
            }
        }
    }

    /// The owned operation, with copies of the key and value.
    pub fn to_operation(&self) -> Operation {
        match *self {
            Self::Get { key } => Operation::Get { key: Bytes::copy_from_slice(key) },
            Self::Put { key, value, ttl_ms } => Operation::Put {
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
                ttl_ms,
            },
            Self::Delete { key } => Operation::Delete { key: Bytes::copy_from_slice(key) },
        }
    }
}

pub(crate) fn validate_key(key: &[u8]) -> Result<(), WireError> {
    if key.len() < KEY_BYTES_MIN {
        return Err(WireError::KeyEmpty);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(WireError::KeyTooLong { length_bytes: key.len() });
    }
    Ok(())
}

fn validate_value(value: &[u8]) -> Result<(), WireError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(WireError::ValueTooLarge { length_bytes: value.len() });
    }
    Ok(())
}

fn validate_ttl(ttl_ms: Option<u64>) -> Result<(), WireError> {
    match ttl_ms {
        // A TTL of zero would store a value that is already expired: almost certainly a client
        // bug, so it is refused rather than silently turned into a delete.
        Some(ttl_ms) if ttl_ms == 0 || ttl_ms > TTL_MS_MAX => Err(WireError::TtlOutOfRange { ttl_ms }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key_bytes: usize, value_bytes: usize, ttl_ms: Option<u64>) -> Operation {
        Operation::Put { key: vec![b'k'; key_bytes].into(), value: vec![b'v'; value_bytes].into(), ttl_ms }
    }

    #[test]
    fn limits_are_inclusive() {
        put(1, 0, None).validate().unwrap();
        put(KEY_BYTES_MAX, VALUE_BYTES_MAX, Some(TTL_MS_MAX)).validate().unwrap();
        put(1, 0, Some(1)).validate().unwrap();
    }

    #[test]
    fn each_broken_limit_has_its_own_error() {
        assert_eq!(put(0, 1, None).validate(), Err(WireError::KeyEmpty));
        assert_eq!(put(257, 1, None).validate(), Err(WireError::KeyTooLong { length_bytes: 257 }));
        assert_eq!(
            put(1, VALUE_BYTES_MAX + 1, None).validate(),
            Err(WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 })
        );
        assert_eq!(put(1, 1, Some(0)).validate(), Err(WireError::TtlOutOfRange { ttl_ms: 0 }));
        assert_eq!(
            put(1, 1, Some(TTL_MS_MAX + 1)).validate(),
            Err(WireError::TtlOutOfRange { ttl_ms: TTL_MS_MAX + 1 })
        );
        assert_eq!(Operation::Get { key: Bytes::new() }.validate(), Err(WireError::KeyEmpty));
    }
}
