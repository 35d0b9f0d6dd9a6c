//! [`Outcome`] and [`Failure`]: how one operation ended.

use bytes::Bytes;

use crate::error::WireError;
use crate::error_code::ErrorCode;

/// How a single-key operation that the server carried out ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A get found a live value. `expires_at_ms` is when it expires (milliseconds since the
    /// Unix epoch, by the clock of the node that wrote it), `None` when it never does.
    Value { value: Bytes, version: u64, expires_at_ms: Option<u64> },
    /// A get found no live value.
    NotFound,
    /// A put, delete or compare-and-swap was applied and given this version.
    Written { version: u64 },
    /// A compare-and-swap's expectation did not hold. `current_version` is the key's version
    /// now, or `None` when the key has no live value.
    CasMismatch { current_version: Option<u64> },
}

/// Why a request, or one operation of a batch, failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Failure {
    pub code: ErrorCode,
    /// For humans and logs; names the broken limit where there is one.
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<&WireError> for Failure {
    fn from(error: &WireError) -> Self {
        Self { code: error.code(), message: error.to_string() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Failure {}

/// A live value lent by the store for a reply encoded in place (see
/// [`crate::encode_read_reply_into`]): what [`Outcome::Value`] holds, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LentValue<'a> {
    pub value: &'a [u8],
    pub version: u64,
    /// As in [`Outcome::Value`].
    pub expires_at_ms: Option<u64>,
}
