//! [`WireError`]: everything that can be wrong with a frame, a request or a peer message, each
//! case mapped to the [`ErrorCode`] a client receives.

use crate::error_code::ErrorCode;
use crate::limits::{
    BATCH_OPERATIONS_MAX, KEY_BYTES_MAX, MEMBERSHIP_PAYLOAD_BYTES_MAX, NODE_ID_MAX,
    PEER_FAILURE_MESSAGE_BYTES_MAX, SCAN_LIMIT_MAX, TTL_MS_MAX, VALUE_BYTES_MAX,
};

/// A frame or request this crate refused. The `Display` text names the broken limit, so it can
/// go straight into an error response's message.
///
/// Two kinds, told apart by [`WireError::closes_connection`]: a frame that cannot be trusted
/// (the byte stream is out of step or the payload does not verify) ends the connection; a
/// well-formed request that breaks a limit is answered with an error and the connection keeps
/// serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {length_bytes} bytes is above the frame limit of {max_bytes} bytes (FRAME_BYTES_MAX)")]
    FrameTooLarge { length_bytes: u64, max_bytes: usize },
    #[error("frame length prefix is zero; every frame carries a FlatBuffers payload")]
    FrameEmpty,
    #[error("malformed frame: {reason}")]
    Malformed { reason: String },
    #[error("request id 0 is reserved for connection-level errors")]
    RequestIdReserved,
    #[error("key is empty; keys are 1 to {KEY_BYTES_MAX} bytes (KEY_BYTES_MAX)")]
    KeyEmpty,
    #[error("key of {length_bytes} bytes is above the key limit of {KEY_BYTES_MAX} bytes (KEY_BYTES_MAX)")]
    KeyTooLong { length_bytes: usize },
    #[error(
        "value of {length_bytes} bytes is above the value limit of {VALUE_BYTES_MAX} bytes (VALUE_BYTES_MAX)"
    )]
    ValueTooLarge { length_bytes: usize },
    #[error("batch of {operations} operations is above the batch limit of {BATCH_OPERATIONS_MAX} operations (BATCH_OPERATIONS_MAX)")]
    BatchTooLarge { operations: usize },
    #[error("TTL of {ttl_ms} ms is outside 1 to {TTL_MS_MAX} ms (TTL_MS_MAX)")]
    TtlOutOfRange { ttl_ms: u64 },
    #[error("scan limit of {limit} entries is outside 1 to {SCAN_LIMIT_MAX} entries (SCAN_LIMIT_MAX)")]
    ScanLimitOutOfRange { limit: u32 },
    #[error(
        "membership payload of {length_bytes} bytes is above the limit of {MEMBERSHIP_PAYLOAD_BYTES_MAX} \
         bytes (MEMBERSHIP_PAYLOAD_BYTES_MAX)"
    )]
    MembershipPayloadTooLarge { length_bytes: usize },
    #[error(
        "failure message of {length_bytes} bytes is above the limit of {PEER_FAILURE_MESSAGE_BYTES_MAX} \
         bytes (PEER_FAILURE_MESSAGE_BYTES_MAX)"
    )]
    PeerFailureMessageTooLong { length_bytes: usize },
    #[error("node id {node_id} is above {NODE_ID_MAX} (NODE_ID_MAX)")]
    NodeIdOutOfRange { node_id: u16 },
}

impl WireError {
    /// The code an error response for this carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::FrameEmpty => ErrorCode::FrameEmpty,
            Self::Malformed { .. } | Self::RequestIdReserved => ErrorCode::Malformed,
            Self::KeyEmpty => ErrorCode::KeyEmpty,
            Self::KeyTooLong { .. } => ErrorCode::KeyTooLong,
            Self::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
            Self::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            Self::TtlOutOfRange { .. } => ErrorCode::TtlOutOfRange,
            Self::ScanLimitOutOfRange { .. } => ErrorCode::ScanLimitOutOfRange,
            // Peer-protocol limits: never sent to a client, and a peer that breaks them does
            // not speak this protocol.
            Self::MembershipPayloadTooLarge { .. }
            | Self::PeerFailureMessageTooLong { .. }
            | Self::NodeIdOutOfRange { .. } => ErrorCode::Malformed,
        }
    }

    /// Whether the connection must be closed after reporting this. True when the frame itself
    /// cannot be trusted: after a bad length prefix the stream is out of step, and a payload that
    /// does not verify says the peer does not speak this protocol.
    pub fn closes_connection(&self) -> bool {
        match self {
            Self::FrameTooLarge { .. }
            | Self::FrameEmpty
            | Self::Malformed { .. }
            | Self::RequestIdReserved => true,
            Self::KeyEmpty
            | Self::KeyTooLong { .. }
            | Self::ValueTooLarge { .. }
            | Self::BatchTooLarge { .. }
            | Self::TtlOutOfRange { .. }
            | Self::ScanLimitOutOfRange { .. }
            | Self::MembershipPayloadTooLarge { .. }
            | Self::PeerFailureMessageTooLong { .. }
            | Self::NodeIdOutOfRange { .. } => false,
        }
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed { reason: reason.into() }
    }
}

impl From<flatbuffers::InvalidFlatbuffer> for WireError {
    fn from(error: flatbuffers::InvalidFlatbuffer) -> Self {
        Self::Malformed { reason: error.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_limit() {
        let message = WireError::KeyTooLong { length_bytes: 257 }.to_string();
        assert!(message.contains("257") && message.contains("256") && message.contains("KEY_BYTES_MAX"));
        let message = WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 }.to_string();
        assert!(message.contains("VALUE_BYTES_MAX"), "{message}");
    }

    #[test]
    fn untrusted_frames_close_limit_breaks_do_not() {
        assert!(WireError::FrameEmpty.closes_connection());
        assert!(WireError::malformed("truncated").closes_connection());
        assert!(!WireError::KeyEmpty.closes_connection());
        assert!(!WireError::BatchTooLarge { operations: 2000 }.closes_connection());
        assert_eq!(WireError::TtlOutOfRange { ttl_ms: 0 }.code(), ErrorCode::TtlOutOfRange);
        let limit = WireError::ScanLimitOutOfRange { limit: 0 };
        assert!(!limit.closes_connection());
        assert_eq!(limit.code(), ErrorCode::ScanLimitOutOfRange);
        assert!(limit.to_string().contains("SCAN_LIMIT_MAX"), "{limit}");
    }

    #[test]
    fn peer_limit_messages_name_the_limit() {
        let message = WireError::MembershipPayloadTooLarge { length_bytes: 70_000 }.to_string();
        assert!(message.contains("70000") && message.contains("MEMBERSHIP_PAYLOAD_BYTES_MAX"), "{message}");
        let message = WireError::PeerFailureMessageTooLong { length_bytes: 5000 }.to_string();
        assert!(message.contains("5000") && message.contains("PEER_FAILURE_MESSAGE_BYTES_MAX"), "{message}");
        let message = WireError::NodeIdOutOfRange { node_id: 1024 }.to_string();
        assert!(message.contains("1024") && message.contains("1023"), "{message}");
    }
}
