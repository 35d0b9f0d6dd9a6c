//! [`parse_replication`]: the peer messages of the request path (Replicate, an ack without a
//! failure, Read, a ReadReply carrying an entry or a digest) read without the generic
//! FlatBuffers verifier, by the same rules as [`crate::fast_path`]: each check at least as strict
//! as the verifier's, every field the schema knows either read or required absent, and `None`
//! (the generic path, which names the error) for anything else.

use bytes::Bytes;

use crate::fast_path::{Frame, Table};
use crate::generated::peer as fb;
use crate::limits::{PEER_FRAME_BYTES_MAX, PEER_VERIFIER_OPTIONS};
use crate::peer::{PeerEntry, PeerEnvelope, PeerMessage, PeerValue, ReadAnswer};

/// `frame` as a request-path peer message, when it is one and every check passes.
pub(crate) fn parse_replication(frame: &Bytes) -> Option<PeerEnvelope> {
    let mut reader =
        Frame::with_limits(frame, PEER_FRAME_BYTES_MAX, PEER_VERIFIER_OPTIONS.max_apparent_size)?;
    let envelope = reader.root()?;
    let origin_node = match reader.field(&envelope, fb::Envelope::VT_ORIGIN_NODE, 2)? {
        Some(at) => reader.u16(at)?,
        None => 0,
    };
    let origin_shard = match reader.field(&envelope, fb::Envelope::VT_ORIGIN_SHARD, 4)? {
        Some(at) => reader.u32(at)?,
        None => 0,
    };
    let request_id = reader.u64_field(&envelope, fb::Envelope::VT_REQUEST_ID)?.unwrap_or(0);
    let message_type = reader.field(&envelope, fb::Envelope::VT_MESSAGE_TYPE, 1)??;
    let message_type = fb::Message(reader.u8(message_type)?);
    let message = reader.field(&envelope, fb::Envelope::VT_MESSAGE, 4)??;
    let message = reader.follow(message)?;
    let message = reader.table(message)?;
    let message = match message_type {
        fb::Message::Replicate => PeerMessage::Replicate {
            key: reader.bytes_field(frame, &message, fb::Replicate::VT_KEY)?,
            entry: entry(&mut reader, frame, &message, fb::Replicate::VT_ENTRY)??,
        },
        fb::Message::ReplicateAck => {
            if reader.field(&message, fb::ReplicateAck::VT_FAILURE, 4)?.is_some() {
                return None;
            }
            PeerMessage::ReplicateAck { result: Ok(()) }
        }
        fb::Message::Read => PeerMessage::Read {
            key: reader.bytes_field(frame, &message, fb::Read::VT_KEY)?,
            digest_only: match reader.field(&message, fb::Read::VT_DIGEST_ONLY, 1)? {
                Some(at) => reader.u8(at)? != 0,
                None => false,
            },
        },
        fb::Message::ReadReply => {
            let result_type = reader.field(&message, fb::ReadReply::VT_RESULT_TYPE, 1)??;
            let result_type = fb::ReadResult(reader.u8(result_type)?);
            let result = reader.field(&message, fb::ReadReply::VT_RESULT, 4)??;
            let result = reader.follow(result)?;
            let result = reader.table(result)?;
            let answer = match result_type {
                fb::ReadResult::EntryAnswer => {
                    ReadAnswer::Entry(entry(&mut reader, frame, &result, fb::EntryAnswer::VT_ENTRY)?)
                }
                fb::ReadResult::DigestAnswer => {
                    ReadAnswer::Digest(reader.u64_field(&result, fb::DigestAnswer::VT_VERSION)?)
                }
                _ => return None,
            };
            PeerMessage::ReadReply { result: Ok(answer) }
        }
        _ => return None,
    };
    Some(PeerEnvelope { origin_node, origin_shard, request_id, message })
}

/// The `Entry` table in field `slot` of `table`: `Some(None)` when the field is absent.
fn entry(reader: &mut Frame<'_>, frame: &Bytes, table: &Table, slot: u16) -> Option<Option<PeerEntry>> {
    let Some(at) = reader.field(table, slot, 4)? else { return Some(None) };
    let entry = reader.follow(at)?;
    let entry = reader.table(entry)?;
    let version = reader.u64_field(&entry, fb::Entry::VT_VERSION)?.unwrap_or(0);
    let value_type = reader.field(&entry, fb::Entry::VT_VALUE_TYPE, 1)??;
    let value_type = fb::Value(reader.u8(value_type)?);
    let value = reader.field(&entry, fb::Entry::VT_VALUE, 4)??;
    let value = reader.follow(value)?;
    let value = reader.table(value)?;
    let value = match value_type {
        fb::Value::Live => PeerValue::Live {
            data: reader.bytes_field(frame, &value, fb::Live::VT_DATA)?,
            expires_at_ms: reader.u64_field(&value, fb::Live::VT_EXPIRES_AT_MS)?,
        },
        fb::Value::Tombstone => PeerValue::Tombstone {
            deleted_at_ms: reader.u64_field(&value, fb::Tombstone::VT_DELETED_AT_MS)?.unwrap_or(0),
        },
        _ => return None,
    };
    Some(Some(PeerEntry { version, value }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast_path::tests::damaged;
    use crate::peer::{PeerErrorCode, PeerFailure};
    use crate::peer_codec::{encode_peer, parse_with_verifier};
    use proptest::prelude::*;

    fn envelopes() -> Vec<PeerEnvelope> {
        let live = |data: &'static [u8], expires_at_ms| PeerEntry {
            version: 77,
            value: PeerValue::Live { data: Bytes::from_static(data), expires_at_ms },
        };
        let tombstone = PeerEntry { version: u64::MAX, value: PeerValue::Tombstone { deleted_at_ms: 5 } };
        let messages = vec![
            PeerMessage::Replicate { key: Bytes::from_static(b"k"), entry: live(b"value", None) },
            PeerMessage::Replicate { key: Bytes::from_static(b"key2"), entry: live(b"", Some(1 << 50)) },
            PeerMessage::Replicate { key: Bytes::from_static(b"gone"), entry: tombstone.clone() },
            PeerMessage::ReplicateAck { result: Ok(()) },
            PeerMessage::Read { key: Bytes::from_static(b"k"), digest_only: false },
            PeerMessage::Read { key: Bytes::from_static(b"k"), digest_only: true },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(Some(live(b"v", Some(3))))) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(Some(tombstone))) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(None)) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Digest(Some(9))) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Digest(None)) },
        ];
        messages
            .into_iter()
            .enumerate()
            .map(|(index, message)| PeerEnvelope {
                origin_node: index as u16 + 1,
                origin_shard: index as u32,
                request_id: index as u64 * 1000,
                message,
            })
            .collect()
    }

    fn encode(envelope: &PeerEnvelope) -> Bytes {
        Bytes::copy_from_slice(encode_peer(&mut flatbuffers::FlatBufferBuilder::new(), envelope).unwrap())
    }

    #[test]
    fn reads_the_request_path_messages_as_the_generic_path_does() {
        for envelope in envelopes() {
            let frame = encode(&envelope);
            assert_eq!(parse_replication(&frame).as_ref(), Some(&envelope));
            assert_eq!(parse_with_verifier(&frame).unwrap(), envelope);
        }
    }

    #[test]
    fn leaves_failures_and_other_messages_to_the_generic_path() {
        let failure = PeerFailure::new(PeerErrorCode::Overloaded, "busy");
        for message in [
            PeerMessage::ReplicateAck { result: Err(failure.clone()) },
            PeerMessage::ReadReply { result: Err(failure) },
            PeerMessage::Hello { node_id: 1, generation: 2, target_shard: 0 },
            PeerMessage::Membership { payload: Bytes::from_static(b"gossip") },
        ] {
            let envelope = PeerEnvelope { origin_node: 1, origin_shard: 0, request_id: 4, message };
            assert!(parse_replication(&encode(&envelope)).is_none());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the damage, accepted only when the verifier accepts, and read the same.
        #[test]
        fn never_accepts_what_the_verifier_refuses(
            which in 0usize..11,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let frame = damaged(&encode(&envelopes()[which]), &flips, cut);
            if let Some(fast) = parse_replication(&frame) {
                let root = flatbuffers::size_prefixed_root_with_opts::<fb::Envelope>(&PEER_VERIFIER_OPTIONS, &frame);
                prop_assert!(root.is_ok(), "the fast path accepted a frame the verifier refuses: {root:?}");
                match parse_with_verifier(&frame) {
                    Ok(generic) => prop_assert_eq!(generic, fast),
                    // Limits (key length and the like) are checked after either path.
                    Err(error) => prop_assert!(fast.validate().is_err(), "generic refused {error} but the fast read validates"),
                }
            }
        }
    }
}
