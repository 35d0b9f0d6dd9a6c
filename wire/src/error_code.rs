//! [`ErrorCode`]: the machine-readable reason carried by every error response.

use crate::generated as fb;

/// Why a request (or one operation of a batch) failed. Clients branch on this; the message
/// next to it is for humans.
///
/// Codes are appended to the schema over time, so a client may receive one it does not know:
/// that arrives as [`ErrorCode::Unrecognized`] instead of failing the whole response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A bug or an unexpected condition on the server.
    Internal,
    /// The frame did not verify, or broke a rule of the schema. The connection is closed.
    Malformed,
    /// The frame's length prefix is above the frame limit. The connection is closed.
    FrameTooLarge,
    /// The frame's length prefix is zero. The connection is closed.
    FrameEmpty,
    /// The key has zero bytes.
    KeyEmpty,
    /// The key is longer than [`crate::limits::KEY_BYTES_MAX`].
    KeyTooLong,
    /// The value is longer than [`crate::limits::VALUE_BYTES_MAX`].
    ValueTooLarge,
    /// The batch holds more than [`crate::limits::BATCH_OPERATIONS_MAX`] operations.
    BatchTooLarge,
    /// The TTL is zero or above [`crate::limits::TTL_MS_MAX`].
    TtlOutOfRange,
    /// The server sheds load; retry later with backoff.
    Overloaded,
    /// The shard that received the request does not own the key; fetch the topology again.
    WrongShard,
    /// Not enough replicas answered.
    Unavailable,
    /// The request did not complete in time; whether it took effect is unknown.
    Timeout,
    /// A scan's limit is zero or above [`crate::limits::SCAN_LIMIT_MAX`].
    ScanLimitOutOfRange,
    /// Too few replicas applied the write for its consistency level, but some did or still may:
    /// whether it took effect is unknown, as with [`ErrorCode::Timeout`], and a later read may
    /// return it. Not retried elsewhere by the client.
    Indeterminate,
    /// The disk is full, down to the reserve kept for flushes and compactions: writes are
    /// refused until space is freed; reads go on. Worth retrying later.
    DiskFull,
    /// The storage engine failed (a write or sync error) and refuses writes until the node is
    /// restarted and checked. Not worth retrying on this node.
    StorageFailed,
    /// The node requires authentication and the connection has not authenticated.
    Unauthenticated,
    /// An `Auth` named an unknown user or a wrong password; the connection is closed.
    AuthFailed,
    /// A code added to the schema after this build. Holds only values that no other variant
    /// names.
    Unrecognized(u16),
}

impl ErrorCode {
    /// Reads the schema's code. Never fails: codes from a newer peer become
    /// [`ErrorCode::Unrecognized`].
    pub fn from_wire(code: fb::ErrorCode) -> Self {
        match code {
            fb::ErrorCode::Internal => Self::Internal,
            fb::ErrorCode::Malformed => Self::Malformed,
            fb::ErrorCode::FrameTooLarge => Self::FrameTooLarge,
            fb::ErrorCode::FrameEmpty => Self::FrameEmpty,
            fb::ErrorCode::KeyEmpty => Self::KeyEmpty,
            fb::ErrorCode::KeyTooLong => Self::KeyTooLong,
            fb::ErrorCode::ValueTooLarge => Self::ValueTooLarge,
            fb::ErrorCode::BatchTooLarge => Self::BatchTooLarge,
            fb::ErrorCode::TtlOutOfRange => Self::TtlOutOfRange,
            fb::ErrorCode::Overloaded => Self::Overloaded,
            fb::ErrorCode::WrongShard => Self::WrongShard,
            fb::ErrorCode::Unavailable => Self::Unavailable,
            fb::ErrorCode::Timeout => Self::Timeout,
            fb::ErrorCode::ScanLimitOutOfRange => Self::ScanLimitOutOfRange,
            fb::ErrorCode::Indeterminate => Self::Indeterminate,
            fb::ErrorCode::DiskFull => Self::DiskFull,
            fb::ErrorCode::StorageFailed => Self::StorageFailed,
            fb::ErrorCode::Unauthenticated => Self::Unauthenticated,
            fb::ErrorCode::AuthFailed => Self::AuthFailed,
            fb::ErrorCode(other) => Self::Unrecognized(other),
        }
    }

    /// The schema's code for this one.
    pub fn to_wire(self) -> fb::ErrorCode {
        match self {
            Self::Internal => fb::ErrorCode::Internal,
            Self::Malformed => fb::ErrorCode::Malformed,
            Self::FrameTooLarge => fb::ErrorCode::FrameTooLarge,
            Self::FrameEmpty => fb::ErrorCode::FrameEmpty,
            Self::KeyEmpty => fb::ErrorCode::KeyEmpty,
            Self::KeyTooLong => fb::ErrorCode::KeyTooLong,
            Self::ValueTooLarge => fb::ErrorCode::ValueTooLarge,
            Self::BatchTooLarge => fb::ErrorCode::BatchTooLarge,
            Self::TtlOutOfRange => fb::ErrorCode::TtlOutOfRange,
            Self::Overloaded => fb::ErrorCode::Overloaded,
            Self::WrongShard => fb::ErrorCode::WrongShard,
            Self::Unavailable => fb::ErrorCode::Unavailable,
            Self::Timeout => fb::ErrorCode::Timeout,
            Self::ScanLimitOutOfRange => fb::ErrorCode::ScanLimitOutOfRange,
            Self::Indeterminate => fb::ErrorCode::Indeterminate,
            Self::DiskFull => fb::ErrorCode::DiskFull,
            Self::StorageFailed => fb::ErrorCode::StorageFailed,
            Self::Unauthenticated => fb::ErrorCode::Unauthenticated,
            Self::AuthFailed => fb::ErrorCode::AuthFailed,
            Self::Unrecognized(code) => fb::ErrorCode(code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_code_round_trips() {
        for &wire in fb::ErrorCode::ENUM_VALUES {
            let code = ErrorCode::from_wire(wire);
            assert!(!matches!(code, ErrorCode::Unrecognized(_)), "{wire:?} has no variant");
            assert_eq!(code.to_wire(), wire);
        }
    }

    #[test]
    fn unknown_code_is_kept_not_rejected() {
        let future = fb::ErrorCode(fb::ErrorCode::ENUM_MAX + 1);
        assert_eq!(ErrorCode::from_wire(future), ErrorCode::Unrecognized(fb::ErrorCode::ENUM_MAX + 1));
        assert_eq!(ErrorCode::from_wire(future).to_wire(), future);
    }
}
