//! The peer messages of the request path (Replicate, an ack without a failure, Read, a ReadReply
//! carrying an entry or a digest), read and written without the generic FlatBuffers code.
//!
//! - [`parse_replication`] reads them without the generic verifier, by the same rules as
//!   [`crate::fast_path`]: each check at least as strict as the verifier's, every field the
//!   schema knows either read or required absent, and `None` (the generic path, which names the
//!   error) for anything else.
//! - [`encode_replication_into`] lays them out by hand straight into a link's outbox: a
//!   replicated value is copied once, from the coordinator's request into the bytes the socket
//!   sends, where the builder copied it twice (into its own buffer, then into the outbox). The
//!   layout is front to back (each table's vtable just before it, every child after the field
//!   that points to it), which is a valid FlatBuffer: the tests check that the verifier accepts
//!   every frame it writes and reads back the same envelope.

use bytes::Bytes;

use crate::fast_path::{Frame, Table};
use crate::generated::peer as fb;
use crate::limits::{FRAME_LENGTH_PREFIX_BYTES, PEER_FRAME_BYTES_MAX, PEER_VERIFIER_OPTIONS};
use crate::peer::{PeerEntry, PeerEnvelope, PeerMessage, PeerValue, ReadAnswer};

/// Appends `envelope` to `out` as one frame, laid out by hand, when it is a request-path message
/// ([`parse_replication`]'s kinds) of at most `frame_bytes_max` payload bytes; returns false,
/// appending nothing, for anything else. The caller validates the envelope first.
pub(crate) fn encode_replication_into(envelope: &PeerEnvelope, out: &mut Vec<u8>) -> bool {
    if !matches!(
        envelope.message,
        PeerMessage::Replicate { .. }
            | PeerMessage::ReplicateAck { result: Ok(()) }
            | PeerMessage::Read { .. }
            | PeerMessage::ReadReply { result: Ok(_) }
    ) {
        return false;
    }
    // First measure, then write the same layout into exactly that much room.
    let mut measure = Layout { frame: None, at: 0 };
    lay_out(&mut measure, envelope);
    let frame_bytes = measure.at;
    if frame_bytes - FRAME_LENGTH_PREFIX_BYTES > PEER_FRAME_BYTES_MAX {
        return false;
    }
    let start = out.len();
    out.resize(start + frame_bytes, 0);
    let mut write = Layout { frame: Some(&mut out[start..]), at: 0 };
    lay_out(&mut write, envelope);
    debug_assert_eq!(write.at, frame_bytes, "both passes lay out the same frame");
    true
}

/// A frame laid out front to back: `at` is the next free byte. Without a frame it only measures.
struct Layout<'a> {
    frame: Option<&'a mut [u8]>,
    at: usize,
}

impl Layout<'_> {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        if let Some(frame) = self.frame.as_deref_mut() {
            frame[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    /// A vtable for a table of `table_bytes` inline bytes whose fields (in schema order) sit at
    /// `fields` (0: absent). Returns its position.
    fn vtable(&mut self, fields: &[u16], table_bytes: u16) -> usize {
        self.at = self.at.next_multiple_of(2);
        let vtable = self.at;
        let vtable_bytes = 4 + 2 * fields.len();
        self.put(vtable, &(vtable_bytes as u16).to_le_bytes());
        self.put(vtable + 2, &table_bytes.to_le_bytes());
        for (index, field) in fields.iter().enumerate() {
            self.put(vtable + 4 + 2 * index, &field.to_le_bytes());
        }
        self.at += vtable_bytes;
        vtable
    }

    /// A table of `table_bytes` inline bytes after `vtable`, starting on an 8-byte boundary so
    /// that a `u64` field at an offset that is a multiple of 8 is aligned. Returns its position.
    fn table(&mut self, vtable: usize, table_bytes: u16) -> usize {
        self.at = self.at.next_multiple_of(8);
        let table = self.at;
        self.put(table, &((table - vtable) as i32).to_le_bytes());
        self.at += usize::from(table_bytes);
        table
    }

    /// A `[ubyte]` vector of `bytes` here, pointed to from the offset field at `from`.
    fn bytes(&mut self, from: usize, bytes: &[u8]) {
        self.at = self.at.next_multiple_of(4);
        let vector = self.at;
        self.point(from, vector);
        self.put(vector, &(bytes.len() as u32).to_le_bytes());
        self.put(vector + 4, bytes);
        self.at += 4 + bytes.len();
    }

    /// Writes, at the offset field `from`, the forward offset to `to`.
    fn point(&mut self, from: usize, to: usize) {
        self.put(from, &((to - from) as u32).to_le_bytes());
    }

    fn u64(&mut self, at: usize, value: u64) {
        self.put(at, &value.to_le_bytes());
    }
}

fn lay_out(layout: &mut Layout<'_>, envelope: &PeerEnvelope) {
    // The length prefix, then the root offset.
    layout.at = 2 * FRAME_LENGTH_PREFIX_BYTES;
    // Envelope: origin_node, origin_shard, request_id, message_type, message.
    let vtable = layout.vtable(&[20, 4, 8, 22, 16], 24);
    let root = layout.table(vtable, 24);
    layout.point(FRAME_LENGTH_PREFIX_BYTES, root);
    layout.put(root + 20, &envelope.origin_node.to_le_bytes());
    layout.put(root + 4, &envelope.origin_shard.to_le_bytes());
    layout.u64(root + 8, envelope.request_id);
    let message_field = root + 16;
    let message_type = match &envelope.message {
        PeerMessage::Replicate { key, entry } => {
            // Replicate: key, entry.
            let vtable = layout.vtable(&[4, 8], 12);
            let table = layout.table(vtable, 12);
            layout.point(message_field, table);
            layout.bytes(table + 4, key);
            lay_out_entry(layout, table + 8, entry);
            fb::Message::Replicate
        }
        PeerMessage::ReplicateAck { .. } => {
            // ReplicateAck without a failure: no fields.
            let vtable = layout.vtable(&[], 4);
            let table = layout.table(vtable, 4);
            layout.point(message_field, table);
            fb::Message::ReplicateAck
        }
        PeerMessage::Read { key, digest_only } => {
            // Read: key, digest_only.
            let vtable = layout.vtable(&[4, 8], 12);
            let table = layout.table(vtable, 12);
            layout.point(message_field, table);
            layout.put(table + 8, &[u8::from(*digest_only)]);
            layout.bytes(table + 4, key);
            fb::Message::Read
        }
        PeerMessage::ReadReply { result } => {
            // ReadReply: result_type, result.
            let vtable = layout.vtable(&[8, 4], 12);
            let table = layout.table(vtable, 12);
            layout.point(message_field, table);
            let result_field = table + 4;
            let result_type = match result {
                Ok(ReadAnswer::Entry(entry)) => {
                    // EntryAnswer: entry, when there is one.
                    let vtable = layout.vtable(&[if entry.is_some() { 4 } else { 0 }], 8);
                    let answer = layout.table(vtable, 8);
                    layout.point(result_field, answer);
                    if let Some(entry) = entry {
                        lay_out_entry(layout, answer + 4, entry);
                    }
                    fb::ReadResult::EntryAnswer
                }
                Ok(ReadAnswer::Digest(version)) => {
                    // DigestAnswer: version, when there is one.
                    let vtable = layout.vtable(&[if version.is_some() { 8 } else { 0 }], 16);
                    let answer = layout.table(vtable, 16);
                    layout.point(result_field, answer);
                    if let Some(version) = version {
                        layout.u64(answer + 8, *version);
                    }
                    fb::ReadResult::DigestAnswer
                }
                Err(_) => unreachable!("failures take the generic path"),
            };
            layout.put(table + 8, &[result_type.0]);
            fb::Message::ReadReply
        }
        _ => unreachable!("only request-path messages are laid out by hand"),
    };
    layout.put(root + 22, &[message_type.0]);
    let payload_bytes = (layout.at - FRAME_LENGTH_PREFIX_BYTES) as u32;
    layout.put(0, &payload_bytes.to_le_bytes());
}

/// An `Entry` table after the fields laid out so far, pointed to from the offset field `from`.
fn lay_out_entry(layout: &mut Layout<'_>, from: usize, entry: &PeerEntry) {
    // Entry: version, value_type, value.
    let vtable = layout.vtable(&[8, 16, 4], 20);
    let table = layout.table(vtable, 20);
    layout.point(from, table);
    layout.u64(table + 8, entry.version);
    let value_field = table + 4;
    let value_type = match &entry.value {
        PeerValue::Live { data, expires_at_ms } => {
            // Live: data, expires_at_ms when there is one.
            let vtable = layout.vtable(&[4, if expires_at_ms.is_some() { 8 } else { 0 }], 16);
            let live = layout.table(vtable, 16);
            layout.point(value_field, live);
            if let Some(expires_at_ms) = expires_at_ms {
                layout.u64(live + 8, *expires_at_ms);
            }
            layout.bytes(live + 4, data);
            fb::Value::Live
        }
        PeerValue::Tombstone { deleted_at_ms } => {
            // Tombstone: deleted_at_ms.
            let vtable = layout.vtable(&[8], 16);
            let tombstone = layout.table(vtable, 16);
            layout.point(value_field, tombstone);
            layout.u64(tombstone + 8, *deleted_at_ms);
            fb::Value::Tombstone
        }
    };
    layout.put(table + 16, &[value_type.0]);
}

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
    use crate::peer::{Acceptance, Accepted, EntryHead, PeerErrorCode, PeerFailure, Promise};
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

    /// A frame laid out by hand, checked to be one.
    fn laid_out(envelope: &PeerEnvelope) -> Bytes {
        let mut out = vec![0xAA; 3];
        assert!(encode_replication_into(envelope, &mut out), "{envelope:?} is laid out by hand");
        assert_eq!(&out[..3], &[0xAA; 3], "what the outbox held is kept");
        Bytes::copy_from_slice(&out[3..])
    }

    #[test]
    fn lays_out_frames_the_verifier_reads_back_the_same() {
        for envelope in envelopes() {
            let frame = laid_out(&envelope);
            let root =
                flatbuffers::size_prefixed_root_with_opts::<fb::Envelope>(&PEER_VERIFIER_OPTIONS, &frame);
            assert!(root.is_ok(), "{envelope:?}: {root:?}");
            assert_eq!(parse_with_verifier(&frame).unwrap(), envelope);
            assert_eq!(parse_replication(&frame).as_ref(), Some(&envelope));
        }
    }

    /// Failures and messages off the request path are neither read nor laid out by hand: the
    /// generic path handles them and names any error.
    #[test]
    fn leaves_failures_and_other_messages_to_the_generic_path() {
        let failure = PeerFailure::new(PeerErrorCode::Overloaded, "busy");
        let entry = PeerEntry {
            version: 8,
            value: PeerValue::Live { data: Bytes::from_static(b"v"), expires_at_ms: None },
        };
        for message in [
            PeerMessage::ReplicateAck { result: Err(failure.clone()) },
            PeerMessage::ReadReply { result: Err(failure) },
            PeerMessage::Hello { node_id: 1, generation: 2, target_shard: 0 },
            PeerMessage::Membership { payload: Bytes::from_static(b"gossip") },
            PeerMessage::PaxosPrepare { key: Bytes::from_static(b"k"), ballot: 3 },
            PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: true,
                    promised: 3,
                    committed: 1,
                    committed_version: 7,
                    committed_based_on: 6,
                    accepted: Some(Accepted { ballot: 2, based_on: 7, entry: entry.clone() }),
                    current: Some(EntryHead::of(&entry)),
                    successions: Vec::new(),
                }),
            },
            PeerMessage::PaxosPropose {
                key: Bytes::from_static(b"k"),
                ballot: 3,
                based_on: 7,
                entry: entry.clone(),
            },
            PeerMessage::PaxosAccept { result: Ok(Acceptance { accepted: true, promised: 3 }) },
            PeerMessage::PaxosCommit { key: Bytes::from_static(b"k"), ballot: 3, based_on: 7, entry },
        ] {
            let envelope = PeerEnvelope { origin_node: 1, origin_shard: 0, request_id: 4, message };
            assert!(parse_replication(&encode(&envelope)).is_none());
            let mut out = vec![1, 2];
            assert!(!encode_replication_into(&envelope, &mut out));
            assert_eq!(out, vec![1, 2], "nothing appended");
        }
    }

    fn any_entry() -> impl Strategy<Value = PeerEntry> {
        let live = (proptest::collection::vec(any::<u8>(), 0..300), proptest::option::of(any::<u64>()))
            .prop_map(|(data, expires_at_ms)| PeerValue::Live { data: Bytes::from(data), expires_at_ms });
        let tombstone = any::<u64>().prop_map(|deleted_at_ms| PeerValue::Tombstone { deleted_at_ms });
        (any::<u64>(), prop_oneof![live, tombstone]).prop_map(|(version, value)| PeerEntry { version, value })
    }

    fn any_message() -> impl Strategy<Value = PeerMessage> {
        let key = || proptest::collection::vec(any::<u8>(), 0..257).prop_map(Bytes::from);
        prop_oneof![
            (key(), any_entry()).prop_map(|(key, entry)| PeerMessage::Replicate { key, entry }),
            Just(PeerMessage::ReplicateAck { result: Ok(()) }),
            (key(), any::<bool>()).prop_map(|(key, digest_only)| PeerMessage::Read { key, digest_only }),
            proptest::option::of(any_entry())
                .prop_map(|entry| PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(entry)) }),
            proptest::option::of(any::<u64>())
                .prop_map(|version| PeerMessage::ReadReply { result: Ok(ReadAnswer::Digest(version)) }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Every request-path envelope, laid out by hand, is a frame the verifier accepts and
        /// reads back as the same envelope, as the fast parser does.
        #[test]
        fn hand_laid_frames_read_back_as_written(
            origin_node in 0..=crate::limits::NODE_ID_MAX,
            origin_shard in any::<u32>(),
            request_id in any::<u64>(),
            message in any_message(),
        ) {
            let envelope = PeerEnvelope { origin_node, origin_shard, request_id, message };
            prop_assume!(envelope.validate().is_ok());
            let frame = laid_out(&envelope);
            prop_assert_eq!(&parse_with_verifier(&frame).unwrap(), &envelope);
            let fast = parse_replication(&frame);
            prop_assert_eq!(fast.as_ref(), Some(&envelope));
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
