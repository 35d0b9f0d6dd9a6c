//! The peer protocol's frames: [`encode_peer`] turns a [`PeerEnvelope`] into one frame of
//! `schemas/peer.fbs`, and [`parse_peer`] verifies a frame and turns it back.
//!
//! ```text
//!  coordinator shard                                                   replica shard
//!  PeerEnvelope ─encode_peer─▶ frame ─link─▶ FrameDecoder ─▶ frame ─parse_peer─▶ PeerEnvelope
//!  membership:  PeerEnvelope ─encode_peer─▶ frame = one UDP datagram ─parse_peer─▶ PeerEnvelope
//! ```
//!
//! Peer frames are framed like client frames (a `u32` little-endian length, then a FlatBuffers
//! size-prefixed payload) under the same frame limit, so a peer link cuts its byte stream with
//! the same [`crate::FrameDecoder`], which refuses an oversized length prefix before it reserves
//! any memory. A membership datagram is one whole frame: receive it into a buffer of
//! [`crate::limits::UDP_DATAGRAM_BYTES_MAX`] bytes and hand it to [`parse_peer`].
//!
//! Parsing verifies the frame with [`PEER_VERIFIER_OPTIONS`] (tighter than the client's: a peer
//! message nests at most five tables), reads it into owned types, then checks every limit again
//! ([`PeerEnvelope::validate`]). Any error refuses the whole frame: peers run this same code, so
//! a frame that breaks the protocol says the link cannot be trusted, and the receiver drops it.

use crate::bytes_vector::create_bytes;
use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use crate::error::WireError;
use crate::frame::verified_root_with;
use crate::generated::peer as fb;
use crate::limits::{PAXOS_SUCCESSIONS_MAX, PEER_VERIFIER_OPTIONS};
use crate::peer::RepairReport;
use crate::peer::{
    Acceptance, Accepted, EntryHead, KeyList, PeerEntry, PeerEnvelope, PeerErrorCode, PeerFailure,
    PeerMessage, PeerValue, Promise, ReadAnswer, Succession, TreeLevel,
};
use crate::request::finished_frame;

/// Encodes an envelope as one complete frame (length prefix included) inside `builder`, and
/// returns it borrowed from the builder: write it to the link, or send it as one datagram, with
/// no further copy.
///
/// The builder is reset first; keep one per link so its buffer is reused. The envelope is
/// [validated](PeerEnvelope::validate) first, so a frame this returns is one every peer accepts.
pub fn encode_peer<'builder>(
    builder: &'builder mut FlatBufferBuilder<'_>,
    envelope: &PeerEnvelope,
) -> Result<&'builder [u8], WireError> {
    envelope.validate()?;
    build_peer(builder, envelope)
}

/// [`encode_peer`], appending the frame to `out` (a link's outbox). On error nothing is
/// appended. The request path's messages (replicate, ack, read and its reply) are laid out by
/// hand straight into `out`, so a replicated value is copied once, into the bytes the socket
/// sends; the rest go through `builder`.
pub fn encode_peer_into(
    builder: &mut FlatBufferBuilder<'_>,
    envelope: &PeerEnvelope,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    envelope.validate()?;
    if crate::peer_fast_path::encode_replication_into(envelope, out) {
        return Ok(());
    }
    out.extend_from_slice(build_peer(builder, envelope)?);
    Ok(())
}

/// Verifies a frame (as [`crate::FrameDecoder`] returns it, or one whole datagram) and reads it
/// into an owned [`PeerEnvelope`], copying keys, values and payloads out of the frame.
///
/// Refused, with the reason: a frame without a complete length prefix, a prefix that disagrees
/// with the frame's length or is above the frame limit, a payload that does not verify (with
/// [`PEER_VERIFIER_OPTIONS`]) as an `Envelope`, a missing message or entry, an unknown message
/// type, and a message that breaks a limit ([`PeerEnvelope::validate`]).
pub fn parse_peer(frame: &[u8]) -> Result<PeerEnvelope, WireError> {
    parse_with(frame, &Bytes::copy_from_slice)
}

/// [`parse_peer`] without copying: keys, values and payloads in the result are slices of
/// `frame`, which they keep alive. The request path's messages (replicate, its ack, read, read
/// reply) are checked field by field without the generic verifier.
pub fn parse_peer_shared(frame: &Bytes) -> Result<PeerEnvelope, WireError> {
    match crate::peer_fast_path::parse_replication(frame) {
        Some(envelope) => {
            envelope.validate()?;
            Ok(envelope)
        }
        None => parse_with_verifier(frame),
    }
}

/// [`parse_peer_shared`] through the generic verifier, for every kind of message.
pub(crate) fn parse_with_verifier(frame: &Bytes) -> Result<PeerEnvelope, WireError> {
    parse_with(frame, &|slice: &[u8]| frame.slice_ref(slice))
}

/// Parses with `bytes` turning a slice of `frame` into the [`Bytes`] the result holds.
fn parse_with(frame: &[u8], bytes: &dyn Fn(&[u8]) -> Bytes) -> Result<PeerEnvelope, WireError> {
    let root = verified_root_with::<fb::Envelope>(frame, &PEER_VERIFIER_OPTIONS)?;
    let envelope = PeerEnvelope {
        origin_node: root.origin_node(),
        origin_shard: root.origin_shard(),
        request_id: root.request_id(),
        message: parse_message(&root, bytes)?,
    };
    envelope.validate()?;
    Ok(envelope)
}

fn parse_message(root: &fb::Envelope<'_>, bytes: &dyn Fn(&[u8]) -> Bytes) -> Result<PeerMessage, WireError> {
    let missing = || WireError::malformed("peer envelope has no message");
    let message = match root.message_type() {
        fb::Message::Hello => {
            let hello = root.message_as_hello().ok_or_else(missing)?;
            PeerMessage::Hello {
                node_id: hello.node_id(),
                generation: hello.generation(),
                target_shard: hello.target_shard(),
            }
        }
        fb::Message::Replicate => {
            let replicate = root.message_as_replicate().ok_or_else(missing)?;
            PeerMessage::Replicate {
                key: bytes(replicate.key().bytes()),
                entry: parse_entry(replicate.entry(), bytes)?,
            }
        }
        fb::Message::ReplicateAck => {
            let ack = root.message_as_replicate_ack().ok_or_else(missing)?;
            PeerMessage::ReplicateAck {
                result: match ack.failure() {
                    None => Ok(()),
                    Some(failure) => Err(parse_failure(failure)?),
                },
            }
        }
        fb::Message::Read => {
            let read = root.message_as_read().ok_or_else(missing)?;
            PeerMessage::Read { key: bytes(read.key().bytes()), digest_only: read.digest_only() }
        }
        fb::Message::ReadReply => PeerMessage::ReadReply {
            result: parse_read_result(root.message_as_read_reply().ok_or_else(missing)?, bytes)?,
        },
        fb::Message::Membership => {
            let membership = root.message_as_membership().ok_or_else(missing)?;
            PeerMessage::Membership { payload: bytes(membership.payload().bytes()) }
        }
        fb::Message::TreeRequest => {
            let request = root.message_as_tree_request().ok_or_else(missing)?;
            let level = match request.level() {
                fb::TreeLevel::Root => TreeLevel::Root,
                fb::TreeLevel::Branches => TreeLevel::Branches,
                fb::TreeLevel::Segments => TreeLevel::Segments,
                fb::TreeLevel(unknown) => {
                    return Err(WireError::malformed(format!("unknown tree level {unknown}")))
                }
            };
            PeerMessage::TreeRequest {
                range_start: request.start(),
                range_end: request.end(),
                level,
                branches: request.branches().map(|branches| branches.iter().collect()).unwrap_or_default(),
            }
        }
        fb::Message::TreeReply => {
            let reply = root.message_as_tree_reply().ok_or_else(missing)?;
            PeerMessage::TreeReply {
                result: match reply.failure() {
                    Some(failure) => Err(parse_failure(failure)?),
                    None => Ok(reply.hashes().map(|hashes| hashes.iter().collect()).unwrap_or_default()),
                },
            }
        }
        fb::Message::KeysRequest => {
            let request = root.message_as_keys_request().ok_or_else(missing)?;
            PeerMessage::KeysRequest {
                range_start: request.start(),
                range_end: request.end(),
                segments: request.segments().map(|segments| segments.iter().collect()).unwrap_or_default(),
            }
        }
        fb::Message::KeysReply => {
            let reply = root.message_as_keys_reply().ok_or_else(missing)?;
            PeerMessage::KeysReply {
                result: match reply.failure() {
                    Some(failure) => Err(parse_failure(failure)?),
                    None => Ok(parse_key_list(&reply, bytes)?),
                },
            }
        }
        fb::Message::RepairRequest => {
            let request = root.message_as_repair_request().ok_or_else(missing)?;
            PeerMessage::RepairRequest {
                range: request.one_range().then(|| (request.start(), request.end())),
            }
        }
        fb::Message::RepairReply => {
            let reply = root.message_as_repair_reply().ok_or_else(missing)?;
            PeerMessage::RepairReply {
                report: RepairReport {
                    ranges_compared: reply.ranges_compared(),
                    exchanges: reply.exchanges(),
                    exchanges_failed: reply.exchanges_failed(),
                    keys_pushed: reply.keys_pushed(),
                    keys_pulled: reply.keys_pulled(),
                    bytes_sent: reply.bytes_sent(),
                },
            }
        }
        fb::Message::PaxosPrepare => {
            let prepare = root.message_as_paxos_prepare().ok_or_else(missing)?;
            PeerMessage::PaxosPrepare { key: bytes(prepare.key().bytes()), ballot: prepare.ballot() }
        }
        fb::Message::PaxosPromise => {
            let promise = root.message_as_paxos_promise().ok_or_else(missing)?;
            PeerMessage::PaxosPromise {
                result: match promise.failure() {
                    Some(failure) => Err(parse_failure(failure)?),
                    None => Ok(Promise {
                        granted: promise.granted(),
                        promised: promise.promised(),
                        committed: promise.committed(),
                        committed_version: promise.committed_version(),
                        committed_based_on: promise.committed_based_on(),
                        // The accepted ballot and `based_on` are read only beside an entry.
                        accepted: match promise.accepted() {
                            Some(entry) => Some(Accepted {
                                ballot: promise.accepted_ballot(),
                                based_on: promise.accepted_based_on(),
                                entry: parse_entry(entry, bytes)?,
                            }),
                            None => None,
                        },
                        current: promise.current().map(|head| EntryHead {
                            version: head.version(),
                            tombstone: head.tombstone(),
                            expires_at_ms: head.expires_at_ms(),
                        }),
                        successions: parse_successions(promise.successions())?,
                    }),
                },
            }
        }
        fb::Message::PaxosPropose => {
            let propose = root.message_as_paxos_propose().ok_or_else(missing)?;
            PeerMessage::PaxosPropose {
                key: bytes(propose.key().bytes()),
                ballot: propose.ballot(),
                based_on: propose.based_on(),
                entry: parse_entry(propose.entry(), bytes)?,
            }
        }
        fb::Message::PaxosAccept => {
            let accept = root.message_as_paxos_accept().ok_or_else(missing)?;
            PeerMessage::PaxosAccept {
                result: match accept.failure() {
                    Some(failure) => Err(parse_failure(failure)?),
                    None => Ok(Acceptance { accepted: accept.accepted(), promised: accept.promised() }),
                },
            }
        }
        fb::Message::PaxosCommit => {
            let commit = root.message_as_paxos_commit().ok_or_else(missing)?;
            PeerMessage::PaxosCommit {
                key: bytes(commit.key().bytes()),
                ballot: commit.ballot(),
                based_on: commit.based_on(),
                entry: parse_entry(commit.entry(), bytes)?,
            }
        }
        fb::Message::NONE => return Err(missing()),
        fb::Message(unknown) => {
            return Err(WireError::malformed(format!("unknown peer message type {unknown}")))
        }
    };
    Ok(message)
}

fn parse_key_list(reply: &fb::KeysReply<'_>, bytes: &dyn Fn(&[u8]) -> Bytes) -> Result<KeyList, WireError> {
    let keys = reply.keys().map(|keys| keys.bytes()).unwrap_or_default();
    let lengths: Vec<u16> = reply.key_lengths().map(|lengths| lengths.iter().collect()).unwrap_or_default();
    let versions: Vec<u64> = reply.versions().map(|versions| versions.iter().collect()).unwrap_or_default();
    if lengths.len() != versions.len() {
        return Err(WireError::malformed("a key list has as many lengths as versions"));
    }
    let mut list = KeyList { keys: Vec::with_capacity(lengths.len()), truncated: reply.truncated() };
    let mut offset = 0usize;
    for (length, version) in lengths.into_iter().zip(versions) {
        let end = offset + usize::from(length);
        let key =
            keys.get(offset..end).ok_or_else(|| WireError::malformed("a key list runs past its bytes"))?;
        list.keys.push((bytes(key), version));
        offset = end;
    }
    if offset != keys.len() {
        return Err(WireError::malformed("a key list has bytes past its last key"));
    }
    Ok(list)
}

fn parse_read_result(
    reply: fb::ReadReply<'_>,
    bytes: &dyn Fn(&[u8]) -> Bytes,
) -> Result<Result<ReadAnswer, PeerFailure>, WireError> {
    let missing = || WireError::malformed("read reply has no result");
    let result = match reply.result_type() {
        fb::ReadResult::EntryAnswer => {
            let answer = reply.result_as_entry_answer().ok_or_else(missing)?;
            Ok(ReadAnswer::Entry(answer.entry().map(|entry| parse_entry(entry, bytes)).transpose()?))
        }
        fb::ReadResult::DigestAnswer => {
            Ok(ReadAnswer::Digest(reply.result_as_digest_answer().ok_or_else(missing)?.version()))
        }
        fb::ReadResult::Failure => Err(parse_failure(reply.result_as_failure().ok_or_else(missing)?)?),
        fb::ReadResult::NONE => return Err(missing()),
        fb::ReadResult(unknown) => {
            return Err(WireError::malformed(format!("unknown read result type {unknown}")))
        }
    };
    Ok(result)
}

/// A promise's successions, at most [`PAXOS_SUCCESSIONS_MAX`] of them (absent: none).
fn parse_successions(
    successions: Option<flatbuffers::Vector<'_, fb::Succession>>,
) -> Result<Vec<Succession>, WireError> {
    let Some(successions) = successions else { return Ok(Vec::new()) };
    if successions.len() > PAXOS_SUCCESSIONS_MAX {
        return Err(WireError::malformed(format!(
            "a promise carries {} successions; the limit is {PAXOS_SUCCESSIONS_MAX}",
            successions.len()
        )));
    }
    Ok(successions
        .iter()
        .map(|succession| Succession { version: succession.version(), based_on: succession.based_on() })
        .collect())
}

fn parse_entry(entry: fb::Entry<'_>, bytes: &dyn Fn(&[u8]) -> Bytes) -> Result<PeerEntry, WireError> {
    let missing = || WireError::malformed("peer entry has neither a value nor a tombstone");
    let value = match entry.value_type() {
        fb::Value::Live => {
            let live = entry.value_as_live().ok_or_else(missing)?;
            PeerValue::Live { data: bytes(live.data().bytes()), expires_at_ms: live.expires_at_ms() }
        }
        fb::Value::Tombstone => PeerValue::Tombstone {
            deleted_at_ms: entry.value_as_tombstone().ok_or_else(missing)?.deleted_at_ms(),
        },
        fb::Value::NONE => return Err(missing()),
        fb::Value(unknown) => return Err(WireError::malformed(format!("unknown peer value type {unknown}"))),
    };
    Ok(PeerEntry { version: entry.version(), value })
}

/// A failure as sent. A code this node does not know (a newer peer's) reads as
/// [`PeerErrorCode::Internal`], with the number kept in the message: the request failed either
/// way, and refusing the whole frame would lose the reply.
fn parse_failure(failure: fb::Failure<'_>) -> Result<PeerFailure, WireError> {
    let message = failure.message();
    let code = match failure.code() {
        fb::ErrorCode::Internal => PeerErrorCode::Internal,
        fb::ErrorCode::Overloaded => PeerErrorCode::Overloaded,
        fb::ErrorCode::StorageFailed => PeerErrorCode::StorageFailed,
        fb::ErrorCode::ClockSkew => PeerErrorCode::ClockSkew,
        fb::ErrorCode::WrongShard => PeerErrorCode::WrongShard,
        fb::ErrorCode::Invalid => PeerErrorCode::Invalid,
        fb::ErrorCode::Rebuilding => PeerErrorCode::Rebuilding,
        fb::ErrorCode(unknown) => {
            // Checked before the prefix is added, which `PeerFailure::new` may then cut.
            PeerFailure { code: PeerErrorCode::Internal, message: message.to_owned() }.validate()?;
            return Ok(PeerFailure::new(
                PeerErrorCode::Internal,
                format!("error code {unknown}, unknown to this node: {message}"),
            ));
        }
    };
    Ok(PeerFailure { code, message: message.to_owned() })
}

/// Encodes without checking limits; the tests use it to build what a well-behaved peer never
/// sends.
fn build_peer<'builder>(
    builder: &'builder mut FlatBufferBuilder<'_>,
    envelope: &PeerEnvelope,
) -> Result<&'builder [u8], WireError> {
    builder.reset();
    let (message_type, message) = encode_message(builder, &envelope.message);
    let root = fb::Envelope::create(
        builder,
        &fb::EnvelopeArgs {
            origin_node: envelope.origin_node,
            origin_shard: envelope.origin_shard,
            request_id: envelope.request_id,
            message_type,
            message: Some(message),
        },
    );
    builder.finish_size_prefixed(root, None);
    finished_frame(builder)
}

fn encode_message(
    builder: &mut FlatBufferBuilder<'_>,
    message: &PeerMessage,
) -> (fb::Message, WIPOffset<UnionWIPOffset>) {
    match message {
        PeerMessage::Hello { node_id, generation, target_shard } => {
            let hello = fb::Hello::create(
                builder,
                &fb::HelloArgs { node_id: *node_id, generation: *generation, target_shard: *target_shard },
            );
            (fb::Message::Hello, hello.as_union_value())
        }
        PeerMessage::Replicate { key, entry } => {
            let key = create_bytes(builder, &key[..]);
            let entry = encode_entry(builder, entry);
            let replicate =
                fb::Replicate::create(builder, &fb::ReplicateArgs { key: Some(key), entry: Some(entry) });
            (fb::Message::Replicate, replicate.as_union_value())
        }
        PeerMessage::ReplicateAck { result } => {
            let failure = result.as_ref().err().map(|failure| encode_failure(builder, failure));
            let ack = fb::ReplicateAck::create(builder, &fb::ReplicateAckArgs { failure });
            (fb::Message::ReplicateAck, ack.as_union_value())
        }
        PeerMessage::Read { key, digest_only } => {
            let key = create_bytes(builder, &key[..]);
            let read = fb::Read::create(builder, &fb::ReadArgs { key: Some(key), digest_only: *digest_only });
            (fb::Message::Read, read.as_union_value())
        }
        PeerMessage::ReadReply { result } => {
            let (result_type, result) = match result {
                Ok(ReadAnswer::Entry(entry)) => {
                    let entry = entry.as_ref().map(|entry| encode_entry(builder, entry));
                    let answer = fb::EntryAnswer::create(builder, &fb::EntryAnswerArgs { entry });
                    (fb::ReadResult::EntryAnswer, answer.as_union_value())
                }
                Ok(ReadAnswer::Digest(version)) => {
                    let answer =
                        fb::DigestAnswer::create(builder, &fb::DigestAnswerArgs { version: *version });
                    (fb::ReadResult::DigestAnswer, answer.as_union_value())
                }
                Err(failure) => (fb::ReadResult::Failure, encode_failure(builder, failure).as_union_value()),
            };
            let reply =
                fb::ReadReply::create(builder, &fb::ReadReplyArgs { result_type, result: Some(result) });
            (fb::Message::ReadReply, reply.as_union_value())
        }
        PeerMessage::Membership { payload } => {
            let payload = create_bytes(builder, &payload[..]);
            let membership = fb::Membership::create(builder, &fb::MembershipArgs { payload: Some(payload) });
            (fb::Message::Membership, membership.as_union_value())
        }
        PeerMessage::TreeRequest { range_start, range_end, level, branches } => {
            let branches = builder.create_vector(&branches[..]);
            let level = match level {
                TreeLevel::Root => fb::TreeLevel::Root,
                TreeLevel::Branches => fb::TreeLevel::Branches,
                TreeLevel::Segments => fb::TreeLevel::Segments,
            };
            let request = fb::TreeRequest::create(
                builder,
                &fb::TreeRequestArgs {
                    start: *range_start,
                    end: *range_end,
                    level,
                    branches: Some(branches),
                },
            );
            (fb::Message::TreeRequest, request.as_union_value())
        }
        PeerMessage::TreeReply { result } => {
            let args = match result {
                Ok(hashes) => {
                    fb::TreeReplyArgs { hashes: Some(builder.create_vector(&hashes[..])), failure: None }
                }
                Err(failure) => {
                    fb::TreeReplyArgs { hashes: None, failure: Some(encode_failure(builder, failure)) }
                }
            };
            (fb::Message::TreeReply, fb::TreeReply::create(builder, &args).as_union_value())
        }
        PeerMessage::KeysRequest { range_start, range_end, segments } => {
            let segments = builder.create_vector(&segments[..]);
            let request = fb::KeysRequest::create(
                builder,
                &fb::KeysRequestArgs { start: *range_start, end: *range_end, segments: Some(segments) },
            );
            (fb::Message::KeysRequest, request.as_union_value())
        }
        PeerMessage::KeysReply { result } => {
            let args = match result {
                Ok(list) => {
                    let mut keys = Vec::with_capacity(list.keys.iter().map(|(key, _)| key.len()).sum());
                    let mut lengths = Vec::with_capacity(list.keys.len());
                    let mut versions = Vec::with_capacity(list.keys.len());
                    for (key, version) in &list.keys {
                        keys.extend_from_slice(key);
                        // Keys are at most 256 bytes (checked by `validate`); a longer one
                        // would be cut here and refused by the parser.
                        lengths.push(key.len().min(usize::from(u16::MAX)) as u16);
                        versions.push(*version);
                    }
                    fb::KeysReplyArgs {
                        keys: Some(builder.create_vector(&keys)),
                        key_lengths: Some(builder.create_vector(&lengths)),
                        versions: Some(builder.create_vector(&versions)),
                        truncated: list.truncated,
                        failure: None,
                    }
                }
                Err(failure) => fb::KeysReplyArgs {
                    failure: Some(encode_failure(builder, failure)),
                    ..fb::KeysReplyArgs::default()
                },
            };
            (fb::Message::KeysReply, fb::KeysReply::create(builder, &args).as_union_value())
        }
        PeerMessage::RepairRequest { range } => {
            let (start, end) = range.unwrap_or((0, 0));
            let request = fb::RepairRequest::create(
                builder,
                &fb::RepairRequestArgs { start, end, one_range: range.is_some() },
            );
            (fb::Message::RepairRequest, request.as_union_value())
        }
        PeerMessage::RepairReply { report } => {
            let reply = fb::RepairReply::create(
                builder,
                &fb::RepairReplyArgs {
                    ranges_compared: report.ranges_compared,
                    exchanges: report.exchanges,
                    exchanges_failed: report.exchanges_failed,
                    keys_pushed: report.keys_pushed,
                    keys_pulled: report.keys_pulled,
                    bytes_sent: report.bytes_sent,
                },
            );
            (fb::Message::RepairReply, reply.as_union_value())
        }
        PeerMessage::PaxosPrepare { key, ballot } => {
            let key = create_bytes(builder, &key[..]);
            let prepare =
                fb::PaxosPrepare::create(builder, &fb::PaxosPrepareArgs { key: Some(key), ballot: *ballot });
            (fb::Message::PaxosPrepare, prepare.as_union_value())
        }
        PeerMessage::PaxosPromise { result } => {
            let args = match result {
                Ok(promise) => {
                    let (accepted_ballot, accepted_based_on, accepted) = match &promise.accepted {
                        Some(Accepted { ballot, based_on, entry }) => {
                            (*ballot, *based_on, Some(encode_entry(builder, entry)))
                        }
                        None => (0, 0, None),
                    };
                    let current = promise.current.map(|head| {
                        fb::EntryHead::create(
                            builder,
                            &fb::EntryHeadArgs {
                                version: head.version,
                                tombstone: head.tombstone,
                                expires_at_ms: head.expires_at_ms,
                            },
                        )
                    });
                    let successions = (!promise.successions.is_empty()).then(|| {
                        let successions: Vec<fb::Succession> = promise
                            .successions
                            .iter()
                            .map(|succession| fb::Succession::new(succession.version, succession.based_on))
                            .collect();
                        builder.create_vector(&successions)
                    });
                    fb::PaxosPromiseArgs {
                        granted: promise.granted,
                        promised: promise.promised,
                        accepted_ballot,
                        accepted,
                        current,
                        failure: None,
                        committed: promise.committed,
                        accepted_based_on,
                        committed_version: promise.committed_version,
                        committed_based_on: promise.committed_based_on,
                        successions,
                    }
                }
                Err(failure) => fb::PaxosPromiseArgs {
                    failure: Some(encode_failure(builder, failure)),
                    ..fb::PaxosPromiseArgs::default()
                },
            };
            (fb::Message::PaxosPromise, fb::PaxosPromise::create(builder, &args).as_union_value())
        }
        PeerMessage::PaxosPropose { key, ballot, based_on, entry } => {
            let key = create_bytes(builder, &key[..]);
            let entry = encode_entry(builder, entry);
            let propose = fb::PaxosPropose::create(
                builder,
                &fb::PaxosProposeArgs {
                    key: Some(key),
                    ballot: *ballot,
                    entry: Some(entry),
                    based_on: *based_on,
                },
            );
            (fb::Message::PaxosPropose, propose.as_union_value())
        }
        PeerMessage::PaxosAccept { result } => {
            let args = match result {
                Ok(acceptance) => fb::PaxosAcceptArgs {
                    accepted: acceptance.accepted,
                    promised: acceptance.promised,
                    failure: None,
                },
                Err(failure) => fb::PaxosAcceptArgs {
                    failure: Some(encode_failure(builder, failure)),
                    ..fb::PaxosAcceptArgs::default()
                },
            };
            (fb::Message::PaxosAccept, fb::PaxosAccept::create(builder, &args).as_union_value())
        }
        PeerMessage::PaxosCommit { key, ballot, based_on, entry } => {
            let key = create_bytes(builder, &key[..]);
            let entry = encode_entry(builder, entry);
            let commit = fb::PaxosCommit::create(
                builder,
                &fb::PaxosCommitArgs {
                    key: Some(key),
                    ballot: *ballot,
                    entry: Some(entry),
                    based_on: *based_on,
                },
            );
            (fb::Message::PaxosCommit, commit.as_union_value())
        }
    }
}

fn encode_entry<'builder>(
    builder: &mut FlatBufferBuilder<'builder>,
    entry: &PeerEntry,
) -> WIPOffset<fb::Entry<'builder>> {
    let (value_type, value) = match &entry.value {
        PeerValue::Live { data, expires_at_ms } => {
            let data = create_bytes(builder, &data[..]);
            let live =
                fb::Live::create(builder, &fb::LiveArgs { data: Some(data), expires_at_ms: *expires_at_ms });
            (fb::Value::Live, live.as_union_value())
        }
        PeerValue::Tombstone { deleted_at_ms } => {
            let tombstone =
                fb::Tombstone::create(builder, &fb::TombstoneArgs { deleted_at_ms: *deleted_at_ms });
            (fb::Value::Tombstone, tombstone.as_union_value())
        }
    };
    fb::Entry::create(builder, &fb::EntryArgs { version: entry.version, value_type, value: Some(value) })
}

fn encode_failure<'builder>(
    builder: &mut FlatBufferBuilder<'builder>,
    failure: &PeerFailure,
) -> WIPOffset<fb::Failure<'builder>> {
    let message = builder.create_string(&failure.message);
    let code = match failure.code {
        PeerErrorCode::Internal => fb::ErrorCode::Internal,
        PeerErrorCode::Overloaded => fb::ErrorCode::Overloaded,
        PeerErrorCode::StorageFailed => fb::ErrorCode::StorageFailed,
        PeerErrorCode::ClockSkew => fb::ErrorCode::ClockSkew,
        PeerErrorCode::WrongShard => fb::ErrorCode::WrongShard,
        PeerErrorCode::Invalid => fb::ErrorCode::Invalid,
        PeerErrorCode::Rebuilding => fb::ErrorCode::Rebuilding,
    };
    fb::Failure::create(builder, &fb::FailureArgs { code, message: Some(message) })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::limits::{
        FRAME_LENGTH_PREFIX_BYTES, KEY_BYTES_MAX, MEMBERSHIP_PAYLOAD_BYTES_MAX, NODE_ID_MAX,
        PAXOS_SUCCESSION_BYTES, PEER_ENVELOPE_BYTES, PEER_FAILURE_MESSAGE_BYTES_MAX, PEER_FRAME_BYTES_MAX,
        UDP_DATAGRAM_BYTES_MAX, VALUE_BYTES_MAX,
    };
    use crate::FrameDecoder;

    fn envelope(message: PeerMessage) -> PeerEnvelope {
        PeerEnvelope { origin_node: 3, origin_shard: 1, request_id: 42, message }
    }

    fn live(data: &[u8], expires_at_ms: Option<u64>) -> PeerEntry {
        PeerEntry {
            version: 0x0123_4567_89ab_cdef,
            value: PeerValue::Live { data: Bytes::copy_from_slice(data), expires_at_ms },
        }
    }

    fn failure(code: PeerErrorCode) -> PeerFailure {
        PeerFailure::new(code, format!("{code:?} on the replica"))
    }

    /// One envelope of every message and every shape inside it.
    fn every_envelope() -> Vec<PeerEnvelope> {
        let tombstone =
            PeerEntry { version: 9, value: PeerValue::Tombstone { deleted_at_ms: 1_700_000_000_000 } };
        let mut messages = vec![
            PeerMessage::Hello { node_id: NODE_ID_MAX, generation: u64::MAX, target_shard: 7 },
            PeerMessage::Replicate { key: "user:1".into(), entry: live(b"alice", None) },
            PeerMessage::Replicate { key: "session".into(), entry: live(b"", Some(1_700_000_030_000)) },
            PeerMessage::Replicate { key: "gone".into(), entry: tombstone.clone() },
            PeerMessage::ReplicateAck { result: Ok(()) },
            PeerMessage::Read { key: "user:1".into(), digest_only: false },
            PeerMessage::Read { key: "user:1".into(), digest_only: true },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(Some(live(b"alice", Some(5))))) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(Some(tombstone))) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(None)) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Digest(Some(u64::MAX))) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Digest(Some(0))) },
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Digest(None)) },
            PeerMessage::Membership { payload: Bytes::from_static(b"\x00swim\xff") },
            PeerMessage::Membership { payload: Bytes::new() },
            PeerMessage::TreeRequest {
                range_start: 7,
                range_end: 3,
                level: TreeLevel::Root,
                branches: vec![],
            },
            PeerMessage::TreeRequest {
                range_start: u64::MAX,
                range_end: 0,
                level: TreeLevel::Segments,
                branches: vec![0, 17, 63],
            },
            PeerMessage::TreeReply { result: Ok(vec![0, 1, u64::MAX]) },
            PeerMessage::TreeReply { result: Ok(vec![]) },
            PeerMessage::KeysRequest { range_start: 1, range_end: 2, segments: vec![0, 4095] },
            PeerMessage::KeysReply {
                result: Ok(KeyList {
                    keys: vec![("a".into(), 1), (Bytes::from(vec![b'k'; KEY_BYTES_MAX]), u64::MAX)],
                    truncated: true,
                }),
            },
            PeerMessage::KeysReply { result: Ok(KeyList::default()) },
            PeerMessage::RepairRequest { range: None },
            PeerMessage::RepairRequest { range: Some((5, 9)) },
            PeerMessage::RepairReply {
                report: RepairReport {
                    ranges_compared: 3,
                    keys_pushed: 4,
                    bytes_sent: u64::MAX,
                    ..RepairReport::default()
                },
            },
        ];
        messages.extend(paxos_messages());
        for code in ALL_CODES {
            messages.push(PeerMessage::ReplicateAck { result: Err(failure(code)) });
            messages.push(PeerMessage::ReadReply { result: Err(failure(code)) });
            messages.push(PeerMessage::TreeReply { result: Err(failure(code)) });
            messages.push(PeerMessage::KeysReply { result: Err(failure(code)) });
            messages.push(PeerMessage::PaxosPromise { result: Err(failure(code)) });
            messages.push(PeerMessage::PaxosAccept { result: Err(failure(code)) });
        }
        messages
            .push(PeerMessage::ReplicateAck { result: Err(PeerFailure::new(PeerErrorCode::Internal, "")) });
        messages.into_iter().map(envelope).collect()
    }

    /// One message of every Paxos shape: each variant, each result, each optional part present
    /// and absent, each `based_on` 0, in between and maximal.
    fn paxos_messages() -> Vec<PeerMessage> {
        let tombstone = PeerEntry { version: 12, value: PeerValue::Tombstone { deleted_at_ms: 1 } };
        let proposed = live(b"new value", Some(1_700_000_060_000));
        vec![
            PeerMessage::PaxosPrepare { key: "account:7".into(), ballot: 0x0000_0190_0000_0403 },
            PeerMessage::PaxosPrepare { key: "k".into(), ballot: 0 },
            PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: true,
                    promised: 0,
                    committed: u64::MAX,
                    committed_version: u64::MAX,
                    committed_based_on: u64::MAX,
                    accepted: Some(Accepted {
                        ballot: u64::MAX - 1,
                        based_on: u64::MAX,
                        entry: proposed.clone(),
                    }),
                    current: Some(EntryHead { version: 11, tombstone: false, expires_at_ms: Some(0) }),
                    successions: Vec::new(),
                }),
            },
            PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: true,
                    promised: 0,
                    committed: 4,
                    committed_version: 0x0000_0190_0000_0004,
                    committed_based_on: 3,
                    accepted: Some(Accepted { ballot: 5, based_on: 11, entry: tombstone.clone() }),
                    current: Some(EntryHead::of(&tombstone)),
                    successions: Vec::new(),
                }),
            },
            PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: true,
                    promised: 7,
                    committed: 0,
                    committed_version: 0,
                    committed_based_on: 0,
                    accepted: Some(Accepted { ballot: 6, based_on: 0, entry: live(b"first", None) }),
                    current: None,
                    successions: Vec::new(),
                }),
            },
            PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: true,
                    promised: 0,
                    committed: 0,
                    committed_version: 0,
                    committed_based_on: 0,
                    accepted: None,
                    current: None,
                    successions: Vec::new(),
                }),
            },
            // The commit of a swap that found the key without entries: based on 0.
            PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: false,
                    promised: u64::MAX,
                    committed: 0x0000_0190_0000_0402,
                    committed_version: 0x0000_0190_0000_0402,
                    committed_based_on: 0,
                    accepted: None,
                    current: Some(EntryHead { version: 3, tombstone: false, expires_at_ms: None }),
                    successions: Vec::new(),
                }),
            },
            PeerMessage::PaxosPropose {
                key: "account:7".into(),
                ballot: u64::MAX,
                based_on: u64::MAX,
                entry: proposed.clone(),
            },
            PeerMessage::PaxosPropose {
                key: "account:7".into(),
                ballot: 0x0000_0190_0000_0403,
                based_on: 0x0000_0190_0000_0402,
                entry: proposed.clone(),
            },
            PeerMessage::PaxosPropose {
                key: "account:7".into(),
                ballot: 1,
                based_on: 0,
                entry: tombstone.clone(),
            },
            PeerMessage::PaxosAccept { result: Ok(Acceptance { accepted: true, promised: 0 }) },
            PeerMessage::PaxosAccept { result: Ok(Acceptance { accepted: false, promised: u64::MAX }) },
            PeerMessage::PaxosCommit {
                key: "account:7".into(),
                ballot: u64::MAX,
                based_on: u64::MAX,
                entry: proposed,
            },
            PeerMessage::PaxosCommit { key: "k".into(), ballot: 0, based_on: 0, entry: tombstone },
            PeerMessage::PaxosCommit {
                key: "session".into(),
                ballot: 7,
                based_on: 6,
                entry: live(b"", None),
            },
        ]
    }

    const ALL_CODES: [PeerErrorCode; 7] = [
        PeerErrorCode::Internal,
        PeerErrorCode::Overloaded,
        PeerErrorCode::StorageFailed,
        PeerErrorCode::ClockSkew,
        PeerErrorCode::WrongShard,
        PeerErrorCode::Invalid,
        PeerErrorCode::Rebuilding,
    ];

    fn encode(envelope: &PeerEnvelope) -> Vec<u8> {
        encode_peer(&mut FlatBufferBuilder::new(), envelope).unwrap().to_vec()
    }

    fn encode_without_checks(envelope: &PeerEnvelope) -> Vec<u8> {
        build_peer(&mut FlatBufferBuilder::new(), envelope).unwrap().to_vec()
    }

    /// Builds an `Envelope` root by hand, for shapes the encoder never produces.
    fn raw_envelope(
        build_message: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> (fb::Message, Option<WIPOffset<UnionWIPOffset>>),
    ) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let (message_type, message) = build_message(&mut builder);
        let root = fb::Envelope::create(
            &mut builder,
            &fb::EnvelopeArgs { origin_node: 1, origin_shard: 0, request_id: 5, message_type, message },
        );
        builder.finish_size_prefixed(root, None);
        builder.finished_data().to_vec()
    }

    fn assert_malformed(frame: &[u8]) {
        match parse_peer(frame) {
            Err(WireError::Malformed { .. } | WireError::FrameEmpty | WireError::FrameTooLarge { .. }) => {}
            other => panic!("expected an untrusted-frame error, got {other:?}"),
        }
    }

    /// A keys reply built by hand, with lengths `lengths` over the bytes "abcde".
    fn keys_reply_frame(lengths: &[u16]) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let keys = builder.create_vector(b"abcde".as_slice());
        let lengths = builder.create_vector(lengths);
        let versions = builder.create_vector(&[1u64, 2][..]);
        let reply = fb::KeysReply::create(
            &mut builder,
            &fb::KeysReplyArgs {
                keys: Some(keys),
                key_lengths: Some(lengths),
                versions: Some(versions),
                truncated: false,
                failure: None,
            },
        );
        let root = fb::Envelope::create(
            &mut builder,
            &fb::EnvelopeArgs {
                origin_node: 1,
                origin_shard: 0,
                request_id: 1,
                message_type: fb::Message::KeysReply,
                message: Some(reply.as_union_value()),
            },
        );
        builder.finish_size_prefixed(root, None);
        builder.finished_data().to_vec()
    }

    #[test]
    fn a_key_list_whose_lengths_disagree_with_its_bytes_is_refused() {
        let parsed = parse_peer(&keys_reply_frame(&[3, 2])).unwrap();
        let expected = KeyList { keys: vec![("abc".into(), 1), ("de".into(), 2)], truncated: false };
        assert_eq!(parsed.message, PeerMessage::KeysReply { result: Ok(expected) });
        for lengths in [&[3u16, 1][..], &[3, 3], &[3]] {
            assert!(
                matches!(parse_peer(&keys_reply_frame(lengths)), Err(WireError::Malformed { .. })),
                "{lengths:?}"
            );
        }
    }

    #[test]
    fn every_message_round_trips() {
        for envelope in every_envelope() {
            let frame = encode(&envelope);
            assert_eq!(parse_peer(&frame), Ok(envelope.clone()));
            assert_eq!(parse_peer_shared(&Bytes::from(frame)), Ok(envelope));
        }
    }

    #[test]
    fn each_paxos_message_round_trips_through_the_generic_path() {
        let failed = |code| PeerFailure::new(code, "the promise could not be made durable");
        let mut messages = paxos_messages();
        messages.push(PeerMessage::PaxosPromise { result: Err(failed(PeerErrorCode::StorageFailed)) });
        messages.push(PeerMessage::PaxosAccept { result: Err(failed(PeerErrorCode::Overloaded)) });
        for message in messages {
            let envelope = envelope(message);
            let frame = encode(&envelope);
            assert_eq!(parse_peer(&frame), Ok(envelope.clone()));
            assert_eq!(parse_peer_shared(&Bytes::from(frame.clone())), Ok(envelope.clone()));
            // Not laid out by hand: `encode_peer_into` writes the builder's frame.
            let mut out = vec![7];
            encode_peer_into(&mut FlatBufferBuilder::new(), &envelope, &mut out).unwrap();
            assert_eq!(out[1..], frame[..], "{:?}", envelope.message);
        }
    }

    #[test]
    fn paxos_requests_are_requests_and_their_answers_are_not() {
        let [prepare, promise, propose, accept, commit] = [
            PeerMessage::PaxosPrepare { key: "k".into(), ballot: 1 },
            PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: true,
                    promised: 1,
                    committed: 0,
                    committed_version: 0,
                    committed_based_on: 0,
                    accepted: None,
                    current: None,
                    successions: Vec::new(),
                }),
            },
            PeerMessage::PaxosPropose { key: "k".into(), ballot: 1, based_on: 0, entry: live(b"v", None) },
            PeerMessage::PaxosAccept { result: Ok(Acceptance { accepted: true, promised: 1 }) },
            PeerMessage::PaxosCommit { key: "k".into(), ballot: 1, based_on: 0, entry: live(b"v", None) },
        ];
        assert!(prepare.is_request() && propose.is_request() && commit.is_request());
        assert!(!promise.is_request() && !accept.is_request());
    }

    /// A promise or an acceptance carrying a failure reads as that failure, whatever else the
    /// sender set beside it; the fullest promise possible also stays within the verifier's
    /// table and depth limits.
    #[test]
    fn a_paxos_answer_with_a_failure_reads_as_the_failure() {
        let promise = raw_envelope(|builder| {
            let data = builder.create_vector(b"v".as_slice());
            let live = fb::Live::create(builder, &fb::LiveArgs { data: Some(data), expires_at_ms: Some(9) });
            let entry = fb::Entry::create(
                builder,
                &fb::EntryArgs {
                    version: 4,
                    value_type: fb::Value::Live,
                    value: Some(live.as_union_value()),
                },
            );
            let current = fb::EntryHead::create(
                builder,
                &fb::EntryHeadArgs { version: 4, tombstone: false, expires_at_ms: Some(9) },
            );
            let message = builder.create_string("busy");
            let failure = fb::Failure::create(
                builder,
                &fb::FailureArgs { code: fb::ErrorCode::Overloaded, message: Some(message) },
            );
            let promise = fb::PaxosPromise::create(
                builder,
                &fb::PaxosPromiseArgs {
                    granted: true,
                    promised: 3,
                    accepted_ballot: 2,
                    accepted: Some(entry),
                    current: Some(current),
                    failure: Some(failure),
                    committed: 1,
                    accepted_based_on: 1,
                    committed_version: 1,
                    committed_based_on: 1,
                    successions: None,
                },
            );
            (fb::Message::PaxosPromise, Some(promise.as_union_value()))
        });
        let busy = PeerFailure { code: PeerErrorCode::Overloaded, message: "busy".into() };
        assert_eq!(
            parse_peer(&promise).map(|envelope| envelope.message),
            Ok(PeerMessage::PaxosPromise { result: Err(busy.clone()) })
        );
        let accept = raw_envelope(|builder| {
            let message = builder.create_string("busy");
            let failure = fb::Failure::create(
                builder,
                &fb::FailureArgs { code: fb::ErrorCode::Overloaded, message: Some(message) },
            );
            let accept = fb::PaxosAccept::create(
                builder,
                &fb::PaxosAcceptArgs { accepted: true, promised: 3, failure: Some(failure) },
            );
            (fb::Message::PaxosAccept, Some(accept.as_union_value()))
        });
        assert_eq!(
            parse_peer(&accept).map(|envelope| envelope.message),
            Ok(PeerMessage::PaxosAccept { result: Err(busy) })
        );
    }

    #[test]
    fn an_accepted_ballot_without_an_accepted_entry_reads_as_none_accepted() {
        let frame = raw_envelope(|builder| {
            let promise = fb::PaxosPromise::create(
                builder,
                &fb::PaxosPromiseArgs {
                    granted: true,
                    promised: 3,
                    accepted_ballot: 2,
                    accepted_based_on: 1,
                    ..Default::default()
                },
            );
            (fb::Message::PaxosPromise, Some(promise.as_union_value()))
        });
        assert_eq!(
            parse_peer(&frame).map(|envelope| envelope.message),
            Ok(PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: true,
                    promised: 3,
                    committed: 0,
                    committed_version: 0,
                    committed_based_on: 0,
                    accepted: None,
                    current: None,
                    successions: Vec::new(),
                })
            })
        );
    }

    #[test]
    fn a_promise_with_more_successions_than_the_limit_is_malformed() {
        let promise = |count: u64| {
            raw_envelope(|builder| {
                let successions: Vec<fb::Succession> =
                    (0..count).map(|n| fb::Succession::new(n + 1, n)).collect();
                let successions = builder.create_vector(&successions);
                let promise = fb::PaxosPromise::create(
                    builder,
                    &fb::PaxosPromiseArgs {
                        granted: true,
                        successions: Some(successions),
                        ..Default::default()
                    },
                );
                (fb::Message::PaxosPromise, Some(promise.as_union_value()))
            })
        };
        let Ok(PeerEnvelope { message: PeerMessage::PaxosPromise { result: Ok(most) }, .. }) =
            parse_peer(&promise(PAXOS_SUCCESSIONS_MAX as u64))
        else {
            panic!("the limit is refused");
        };
        assert_eq!(most.successions.len(), PAXOS_SUCCESSIONS_MAX);
        assert_eq!(most.successions[0], Succession { version: 1, based_on: 0 });
        assert!(matches!(
            parse_peer(&promise(PAXOS_SUCCESSIONS_MAX as u64 + 1)),
            Err(WireError::Malformed { reason }) if reason.contains("successions")
        ));
    }

    #[test]
    fn shared_parse_points_into_the_frame() {
        let frame = Bytes::from(encode(&envelope(PeerMessage::Replicate {
            key: "key".into(),
            entry: live(b"value", None),
        })));
        let Ok(PeerEnvelope { message: PeerMessage::Replicate { key, entry }, .. }) =
            parse_peer_shared(&frame)
        else {
            panic!("not a replicate");
        };
        let PeerValue::Live { data, .. } = entry.value else { panic!("not live") };
        let frame_range = frame.as_ptr_range();
        assert!(frame_range.contains(&key.as_ptr()) && frame_range.contains(&data.as_ptr()));
    }

    #[test]
    fn a_link_carries_many_frames_through_the_frame_decoder() {
        let mut builder = FlatBufferBuilder::new();
        let mut stream = Vec::new();
        for envelope in every_envelope().iter().chain(every_envelope().iter().rev()) {
            encode_peer_into(&mut builder, envelope, &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut parsed = Vec::new();
        // Fed in uneven pieces, as a socket would.
        for piece in stream.chunks(97) {
            decoder.extend_from_slice(piece);
            while let Some(frame) = decoder.next_frame().unwrap() {
                parsed.push(parse_peer_shared(&frame).unwrap());
            }
        }
        decoder.check_end_of_stream().unwrap();
        let expected: Vec<_> =
            every_envelope().into_iter().chain(every_envelope().into_iter().rev()).collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn maximal_messages_fit_their_frames_with_the_envelope_allowance() {
        let maximal_entry = live(&vec![b'v'; VALUE_BYTES_MAX], Some(u64::MAX));
        let key: Bytes = vec![b'k'; KEY_BYTES_MAX].into();
        // Each message with the bytes of keys, values and messages it carries.
        let largest = [
            (PeerMessage::Replicate { key, entry: maximal_entry.clone() }, KEY_BYTES_MAX + VALUE_BYTES_MAX),
            (
                PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(Some(maximal_entry.clone()))) },
                VALUE_BYTES_MAX,
            ),
            (
                PeerMessage::ReadReply {
                    result: Err(PeerFailure::new(
                        PeerErrorCode::Internal,
                        "m".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX),
                    )),
                },
                PEER_FAILURE_MESSAGE_BYTES_MAX,
            ),
            (
                PeerMessage::PaxosPropose {
                    key: vec![b'k'; KEY_BYTES_MAX].into(),
                    ballot: u64::MAX,
                    based_on: u64::MAX,
                    entry: maximal_entry.clone(),
                },
                KEY_BYTES_MAX + VALUE_BYTES_MAX,
            ),
            (
                PeerMessage::PaxosCommit {
                    key: vec![b'k'; KEY_BYTES_MAX].into(),
                    ballot: u64::MAX,
                    based_on: u64::MAX,
                    entry: maximal_entry.clone(),
                },
                KEY_BYTES_MAX + VALUE_BYTES_MAX,
            ),
            // A promise carries at most one value (the accepted entry's); the current entry is
            // only its head. Every field is set, each number to its widest.
            (
                PeerMessage::PaxosPromise {
                    result: Ok(Promise {
                        granted: true,
                        promised: u64::MAX,
                        committed: u64::MAX,
                        committed_version: u64::MAX,
                        committed_based_on: u64::MAX,
                        accepted: Some(Accepted {
                            ballot: u64::MAX,
                            based_on: u64::MAX,
                            entry: maximal_entry.clone(),
                        }),
                        current: Some(EntryHead::of(&maximal_entry)),
                        successions: (0..PAXOS_SUCCESSIONS_MAX as u64)
                            .map(|n| Succession { version: u64::MAX - n, based_on: u64::MAX - n - 1 })
                            .collect(),
                    }),
                },
                VALUE_BYTES_MAX + PAXOS_SUCCESSIONS_MAX * PAXOS_SUCCESSION_BYTES,
            ),
            (
                PeerMessage::PaxosPromise {
                    result: Err(PeerFailure::new(
                        PeerErrorCode::Internal,
                        "m".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX),
                    )),
                },
                PEER_FAILURE_MESSAGE_BYTES_MAX,
            ),
            (
                PeerMessage::PaxosAccept {
                    result: Err(PeerFailure::new(
                        PeerErrorCode::Internal,
                        "m".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX),
                    )),
                },
                PEER_FAILURE_MESSAGE_BYTES_MAX,
            ),
        ];
        for (message, carried_bytes) in largest {
            let envelope = PeerEnvelope {
                origin_node: NODE_ID_MAX,
                origin_shard: u32::MAX,
                request_id: u64::MAX,
                message,
            };
            let frame = encode(&envelope);
            assert!(frame.len() <= carried_bytes + PEER_ENVELOPE_BYTES, "{} bytes", frame.len());
            assert!(frame.len() - FRAME_LENGTH_PREFIX_BYTES <= PEER_FRAME_BYTES_MAX);
            assert_eq!(parse_peer(&frame), Ok(envelope));
        }
    }

    #[test]
    fn a_maximal_membership_frame_fits_in_one_datagram() {
        let envelope = PeerEnvelope {
            origin_node: NODE_ID_MAX,
            origin_shard: u32::MAX,
            request_id: u64::MAX,
            message: PeerMessage::Membership { payload: vec![0xa5; MEMBERSHIP_PAYLOAD_BYTES_MAX].into() },
        };
        let frame = encode(&envelope);
        assert!(frame.len() <= UDP_DATAGRAM_BYTES_MAX, "{} bytes", frame.len());
        assert!(frame.len() <= MEMBERSHIP_PAYLOAD_BYTES_MAX + PEER_ENVELOPE_BYTES);
        assert_eq!(parse_peer(&frame), Ok(envelope));
    }

    #[test]
    fn broken_limits_are_refused_by_the_encoder_and_by_the_parser() {
        let cases = [
            (envelope(PeerMessage::Read { key: Bytes::new(), digest_only: false }), WireError::KeyEmpty),
            (
                envelope(PeerMessage::Replicate {
                    key: vec![1; KEY_BYTES_MAX + 1].into(),
                    entry: live(b"v", None),
                }),
                WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::Replicate {
                    key: "k".into(),
                    entry: live(&vec![0; VALUE_BYTES_MAX + 1], None),
                }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::ReadReply {
                    result: Ok(ReadAnswer::Entry(Some(live(&vec![0; VALUE_BYTES_MAX + 1], None)))),
                }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::Membership {
                    payload: vec![0; MEMBERSHIP_PAYLOAD_BYTES_MAX + 1].into(),
                }),
                WireError::MembershipPayloadTooLarge { length_bytes: MEMBERSHIP_PAYLOAD_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::ReplicateAck {
                    result: Err(PeerFailure {
                        code: PeerErrorCode::Invalid,
                        message: "x".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX + 1),
                    }),
                }),
                WireError::PeerFailureMessageTooLong { length_bytes: PEER_FAILURE_MESSAGE_BYTES_MAX + 1 },
            ),
            (envelope(PeerMessage::PaxosPrepare { key: Bytes::new(), ballot: 1 }), WireError::KeyEmpty),
            (
                envelope(PeerMessage::PaxosPropose {
                    key: vec![1; KEY_BYTES_MAX + 1].into(),
                    ballot: 1,
                    based_on: 0,
                    entry: live(b"v", None),
                }),
                WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosPropose {
                    key: "k".into(),
                    ballot: 1,
                    based_on: u64::MAX,
                    entry: live(&vec![0; VALUE_BYTES_MAX + 1], None),
                }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosCommit {
                    key: Bytes::new(),
                    ballot: 1,
                    based_on: 1,
                    entry: live(b"v", None),
                }),
                WireError::KeyEmpty,
            ),
            (
                envelope(PeerMessage::PaxosCommit {
                    key: vec![1; KEY_BYTES_MAX + 1].into(),
                    ballot: 1,
                    based_on: 0,
                    entry: live(b"v", None),
                }),
                WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosCommit {
                    key: "k".into(),
                    ballot: 1,
                    based_on: u64::MAX,
                    entry: live(&vec![0; VALUE_BYTES_MAX + 1], None),
                }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosPromise {
                    result: Ok(Promise {
                        granted: true,
                        promised: 1,
                        committed: 1,
                        committed_version: 1,
                        committed_based_on: 1,
                        accepted: Some(Accepted {
                            ballot: 1,
                            based_on: 1,
                            entry: live(&vec![0; VALUE_BYTES_MAX + 1], None),
                        }),
                        current: None,
                        successions: Vec::new(),
                    }),
                }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosAccept {
                    result: Err(PeerFailure {
                        code: PeerErrorCode::Invalid,
                        message: "x".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX + 1),
                    }),
                }),
                WireError::PeerFailureMessageTooLong { length_bytes: PEER_FAILURE_MESSAGE_BYTES_MAX + 1 },
            ),
            (
                PeerEnvelope {
                    origin_node: NODE_ID_MAX + 1,
                    ..envelope(PeerMessage::ReplicateAck { result: Ok(()) })
                },
                WireError::NodeIdOutOfRange { node_id: NODE_ID_MAX + 1 },
            ),
            (
                envelope(PeerMessage::Hello { node_id: NODE_ID_MAX + 1, generation: 1, target_shard: 0 }),
                WireError::NodeIdOutOfRange { node_id: NODE_ID_MAX + 1 },
            ),
        ];
        for (envelope, expected) in cases {
            assert_eq!(encode_peer(&mut FlatBufferBuilder::new(), &envelope), Err(expected.clone()));
            let mut out = Vec::new();
            assert_eq!(
                encode_peer_into(&mut FlatBufferBuilder::new(), &envelope, &mut out),
                Err(expected.clone())
            );
            assert!(out.is_empty(), "a refused envelope appended bytes");
            assert_eq!(parse_peer(&encode_without_checks(&envelope)), Err(expected));
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_allocation() {
        // Only the prefix arrives: the decoder refuses it without reserving the promised bytes.
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&(PEER_FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        let capacity_before = decoder.buffer_mut().capacity();
        assert!(matches!(decoder.next_frame(), Err(WireError::FrameTooLarge { .. })));
        assert!(decoder.buffer_mut().capacity() <= capacity_before, "the decoder reserved memory");
        // A whole frame handed to the parser is checked against the limit before verification.
        let mut frame = encode(&envelope(PeerMessage::ReplicateAck { result: Ok(()) }));
        frame[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse_peer(&frame),
            Err(WireError::FrameTooLarge {
                length_bytes: u64::from(u32::MAX),
                max_bytes: PEER_FRAME_BYTES_MAX
            })
        );
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_refused() {
        let originals =
            std::iter::once(PeerMessage::Replicate { key: "user:1".into(), entry: live(b"alice", Some(5)) })
                .chain(paxos_messages())
                .chain([
                    PeerMessage::PaxosPromise { result: Err(failure(PeerErrorCode::WrongShard)) },
                    PeerMessage::PaxosAccept { result: Err(failure(PeerErrorCode::ClockSkew)) },
                ])
                .map(envelope);
        for original in originals {
            assert_every_truncation_is_refused(&original);
        }
    }

    fn assert_every_truncation_is_refused(original: &PeerEnvelope) {
        let frame = encode(original);
        for length in 0..frame.len() {
            // As received: the prefix promises more than is there.
            assert_malformed(&frame[..length]);
            // As a lying sender would write it: the prefix agrees with the short payload. Cutting
            // only trailing alignment padding leaves a valid buffer, which must read back
            // unchanged; any other cut must be refused.
            if length > 4 {
                let mut fixed = frame[..length].to_vec();
                fixed[..4].copy_from_slice(&(length as u32 - 4).to_le_bytes());
                match parse_peer(&fixed) {
                    Err(WireError::Malformed { .. }) => {}
                    Ok(parsed) if frame[length..].iter().all(|&byte| byte == 0) => {
                        assert_eq!(&parsed, original, "length {length}");
                    }
                    other => panic!("{:?}, length {length}: {other:?}", original.message),
                }
            }
        }
    }

    #[test]
    fn garbage_and_empty_frames_are_refused() {
        assert_malformed(&[]);
        assert_malformed(&[1, 0]);
        assert_malformed(&[0, 0, 0, 0]);
        assert_malformed(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_malformed(b"\x08\x00\x00\x00garbage!");
    }

    #[test]
    fn a_client_frame_is_not_a_peer_frame() {
        let request = crate::Request { id: 1, command: crate::Command::Ping, consistency: None };
        let frame = crate::encode_request(&mut FlatBufferBuilder::new(), &request).unwrap().to_vec();
        // It may verify as some envelope by accident of layout, but never as a valid message.
        assert!(parse_peer(&frame).is_err());
    }

    #[test]
    fn unknown_message_type_is_refused() {
        let frame = raw_envelope(|builder| {
            let hello =
                fb::Hello::create(builder, &fb::HelloArgs { node_id: 1, generation: 1, target_shard: 0 });
            (fb::Message(fb::Message::ENUM_MAX + 1), Some(hello.as_union_value()))
        });
        assert_malformed(&frame);
    }

    #[test]
    fn missing_message_is_refused() {
        assert_malformed(&raw_envelope(|_| (fb::Message::NONE, None)));
        assert_malformed(&raw_envelope(|_| (fb::Message::Replicate, None)));
        assert_malformed(&raw_envelope(|_| (fb::Message::PaxosPromise, None)));
        assert_malformed(&raw_envelope(|_| (fb::Message::PaxosPropose, None)));
        assert_malformed(&raw_envelope(|_| (fb::Message::PaxosCommit, None)));
    }

    #[test]
    fn missing_required_fields_are_refused() {
        // A replicate without its entry: the generated builder insists on it, so build by hand.
        assert_malformed(&raw_envelope(|builder| {
            let key = builder.create_vector(b"k".as_slice());
            let table = builder.start_table();
            builder.push_slot_always(fb::Replicate::VT_KEY, key);
            let replicate: WIPOffset<fb::Replicate> = WIPOffset::new(builder.end_table(table).value());
            (fb::Message::Replicate, Some(replicate.as_union_value()))
        }));
        // A read without its key.
        assert_malformed(&raw_envelope(|builder| {
            let table = builder.start_table();
            builder.push_slot::<bool>(fb::Read::VT_DIGEST_ONLY, true, false);
            let read: WIPOffset<fb::Read> = WIPOffset::new(builder.end_table(table).value());
            (fb::Message::Read, Some(read.as_union_value()))
        }));
        // A failure without its message.
        assert_malformed(&raw_envelope(|builder| {
            let table = builder.start_table();
            builder.push_slot::<fb::ErrorCode>(
                fb::Failure::VT_CODE,
                fb::ErrorCode::Overloaded,
                fb::ErrorCode::Internal,
            );
            let failure: WIPOffset<fb::Failure> = WIPOffset::new(builder.end_table(table).value());
            let ack = fb::ReplicateAck::create(builder, &fb::ReplicateAckArgs { failure: Some(failure) });
            (fb::Message::ReplicateAck, Some(ack.as_union_value()))
        }));
        // An entry with neither value nor tombstone.
        assert_malformed(&raw_envelope(|builder| {
            let key = builder.create_vector(b"k".as_slice());
            let entry = fb::Entry::create(
                builder,
                &fb::EntryArgs { version: 1, value_type: fb::Value::NONE, value: None },
            );
            let replicate =
                fb::Replicate::create(builder, &fb::ReplicateArgs { key: Some(key), entry: Some(entry) });
            (fb::Message::Replicate, Some(replicate.as_union_value()))
        }));
        // A Paxos prepare without its key.
        assert_malformed(&raw_envelope(|builder| {
            let table = builder.start_table();
            builder.push_slot::<u64>(fb::PaxosPrepare::VT_BALLOT, 7, 0);
            let prepare: WIPOffset<fb::PaxosPrepare> = WIPOffset::new(builder.end_table(table).value());
            (fb::Message::PaxosPrepare, Some(prepare.as_union_value()))
        }));
        // A Paxos proposal without its entry, and one without its key.
        assert_malformed(&raw_envelope(|builder| {
            let key = builder.create_vector(b"k".as_slice());
            let table = builder.start_table();
            builder.push_slot_always(fb::PaxosPropose::VT_KEY, key);
            builder.push_slot::<u64>(fb::PaxosPropose::VT_BALLOT, 7, 0);
            let propose: WIPOffset<fb::PaxosPropose> = WIPOffset::new(builder.end_table(table).value());
            (fb::Message::PaxosPropose, Some(propose.as_union_value()))
        }));
        assert_malformed(&raw_envelope(|builder| {
            let tombstone = fb::Tombstone::create(builder, &fb::TombstoneArgs { deleted_at_ms: 1 });
            let entry = fb::Entry::create(
                builder,
                &fb::EntryArgs {
                    version: 1,
                    value_type: fb::Value::Tombstone,
                    value: Some(tombstone.as_union_value()),
                },
            );
            let table = builder.start_table();
            builder.push_slot_always(fb::PaxosPropose::VT_ENTRY, entry);
            let propose: WIPOffset<fb::PaxosPropose> = WIPOffset::new(builder.end_table(table).value());
            (fb::Message::PaxosPropose, Some(propose.as_union_value()))
        }));
        // A Paxos commit without its entry, and one without its key.
        assert_malformed(&raw_envelope(|builder| {
            let key = builder.create_vector(b"k".as_slice());
            let table = builder.start_table();
            builder.push_slot_always(fb::PaxosCommit::VT_KEY, key);
            builder.push_slot::<u64>(fb::PaxosCommit::VT_BALLOT, 7, 0);
            let commit: WIPOffset<fb::PaxosCommit> = WIPOffset::new(builder.end_table(table).value());
            (fb::Message::PaxosCommit, Some(commit.as_union_value()))
        }));
        assert_malformed(&raw_envelope(|builder| {
            let tombstone = fb::Tombstone::create(builder, &fb::TombstoneArgs { deleted_at_ms: 1 });
            let entry = fb::Entry::create(
                builder,
                &fb::EntryArgs {
                    version: 1,
                    value_type: fb::Value::Tombstone,
                    value: Some(tombstone.as_union_value()),
                },
            );
            let table = builder.start_table();
            builder.push_slot_always(fb::PaxosCommit::VT_ENTRY, entry);
            builder.push_slot::<u64>(fb::PaxosCommit::VT_BALLOT, 7, 0);
            let commit: WIPOffset<fb::PaxosCommit> = WIPOffset::new(builder.end_table(table).value());
            (fb::Message::PaxosCommit, Some(commit.as_union_value()))
        }));
        // A Paxos commit whose entry has neither value nor tombstone.
        assert_malformed(&raw_envelope(|builder| {
            let key = builder.create_vector(b"k".as_slice());
            let entry = fb::Entry::create(
                builder,
                &fb::EntryArgs { version: 1, value_type: fb::Value::NONE, value: None },
            );
            let commit = fb::PaxosCommit::create(
                builder,
                &fb::PaxosCommitArgs { key: Some(key), ballot: 7, entry: Some(entry), based_on: 6 },
            );
            (fb::Message::PaxosCommit, Some(commit.as_union_value()))
        }));
        // A promise whose accepted entry has neither value nor tombstone.
        assert_malformed(&raw_envelope(|builder| {
            let entry = fb::Entry::create(
                builder,
                &fb::EntryArgs { version: 1, value_type: fb::Value::NONE, value: None },
            );
            let promise = fb::PaxosPromise::create(
                builder,
                &fb::PaxosPromiseArgs { granted: true, accepted: Some(entry), ..Default::default() },
            );
            (fb::Message::PaxosPromise, Some(promise.as_union_value()))
        }));
        // A Paxos answer whose failure has no message.
        assert_malformed(&raw_envelope(|builder| {
            let table = builder.start_table();
            builder.push_slot::<fb::ErrorCode>(
                fb::Failure::VT_CODE,
                fb::ErrorCode::Overloaded,
                fb::ErrorCode::Internal,
            );
            let failure: WIPOffset<fb::Failure> = WIPOffset::new(builder.end_table(table).value());
            let accept = fb::PaxosAccept::create(
                builder,
                &fb::PaxosAcceptArgs { failure: Some(failure), ..Default::default() },
            );
            (fb::Message::PaxosAccept, Some(accept.as_union_value()))
        }));
        // A read reply without a result.
        assert_malformed(&raw_envelope(|builder| {
            let reply = fb::ReadReply::create(
                builder,
                &fb::ReadReplyArgs { result_type: fb::ReadResult::NONE, result: None },
            );
            (fb::Message::ReadReply, Some(reply.as_union_value()))
        }));
    }

    #[test]
    fn unknown_union_members_inside_messages_are_refused() {
        assert_malformed(&raw_envelope(|builder| {
            let key = builder.create_vector(b"k".as_slice());
            let tombstone = fb::Tombstone::create(builder, &fb::TombstoneArgs { deleted_at_ms: 1 });
            let entry = fb::Entry::create(
                builder,
                &fb::EntryArgs {
                    version: 1,
                    value_type: fb::Value(fb::Value::ENUM_MAX + 1),
                    value: Some(tombstone.as_union_value()),
                },
            );
            let replicate =
                fb::Replicate::create(builder, &fb::ReplicateArgs { key: Some(key), entry: Some(entry) });
            (fb::Message::Replicate, Some(replicate.as_union_value()))
        }));
        assert_malformed(&raw_envelope(|builder| {
            let answer = fb::DigestAnswer::create(builder, &fb::DigestAnswerArgs { version: Some(1) });
            let reply = fb::ReadReply::create(
                builder,
                &fb::ReadReplyArgs {
                    result_type: fb::ReadResult(fb::ReadResult::ENUM_MAX + 1),
                    result: Some(answer.as_union_value()),
                },
            );
            (fb::Message::ReadReply, Some(reply.as_union_value()))
        }));
    }

    #[test]
    fn an_unknown_error_code_reads_as_internal_and_keeps_its_number() {
        let frame = raw_envelope(|builder| {
            let message = builder.create_string("newer failure");
            let failure = fb::Failure::create(
                builder,
                &fb::FailureArgs { code: fb::ErrorCode(fb::ErrorCode::ENUM_MAX + 1), message: Some(message) },
            );
            let ack = fb::ReplicateAck::create(builder, &fb::ReplicateAckArgs { failure: Some(failure) });
            (fb::Message::ReplicateAck, Some(ack.as_union_value()))
        });
        let Ok(PeerEnvelope { message: PeerMessage::ReplicateAck { result: Err(failure) }, .. }) =
            parse_peer(&frame)
        else {
            panic!("not a failed ack");
        };
        assert_eq!(failure.code, PeerErrorCode::Internal);
        let unknown = (fb::ErrorCode::ENUM_MAX + 1).to_string();
        assert!(
            failure.message.contains(&unknown) && failure.message.contains("newer failure"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn the_deepest_message_needs_the_whole_depth_limit() {
        // Envelope > ReadReply > EntryAnswer > Entry > Live: the limit is as tight as it can be.
        let frame = encode(&envelope(PeerMessage::ReadReply {
            result: Ok(ReadAnswer::Entry(Some(live(b"v", None)))),
        }));
        let tighter = flatbuffers::VerifierOptions {
            max_depth: PEER_VERIFIER_OPTIONS.max_depth - 1,
            ..PEER_VERIFIER_OPTIONS
        };
        assert!(flatbuffers::size_prefixed_root_with_opts::<fb::Envelope>(&tighter, &frame).is_err());
        assert!(parse_peer(&frame).is_ok());
    }

    fn arbitrary_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arbitrary_key() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 1..=KEY_BYTES_MAX).prop_map(Bytes::from)
    }

    fn arbitrary_entry() -> impl Strategy<Value = PeerEntry> {
        let value = prop_oneof![
            (arbitrary_bytes(512), any::<Option<u64>>())
                .prop_map(|(data, expires_at_ms)| PeerValue::Live { data, expires_at_ms }),
            any::<u64>().prop_map(|deleted_at_ms| PeerValue::Tombstone { deleted_at_ms }),
        ];
        (any::<u64>(), value).prop_map(|(version, value)| PeerEntry { version, value })
    }

    fn arbitrary_accepted() -> impl Strategy<Value = Accepted> {
        (any::<u64>(), any::<u64>(), arbitrary_entry()).prop_map(|(ballot, based_on, entry)| Accepted {
            ballot,
            based_on,
            entry,
        })
    }

    fn arbitrary_head() -> impl Strategy<Value = EntryHead> {
        (any::<u64>(), any::<bool>(), any::<Option<u64>>())
            .prop_map(|(version, tombstone, expires_at_ms)| EntryHead { version, tombstone, expires_at_ms })
    }

    fn arbitrary_failure() -> impl Strategy<Value = PeerFailure> {
        (proptest::sample::select(ALL_CODES.to_vec()), ".{0,64}")
            .prop_map(|(code, message)| PeerFailure { code, message })
    }

    fn arbitrary_message() -> impl Strategy<Value = PeerMessage> {
        prop_oneof![
            (0..=NODE_ID_MAX, any::<u64>(), any::<u32>()).prop_map(|(node_id, generation, target_shard)| {
                PeerMessage::Hello { node_id, generation, target_shard }
            }),
            (arbitrary_key(), arbitrary_entry())
                .prop_map(|(key, entry)| PeerMessage::Replicate { key, entry }),
            proptest::option::of(arbitrary_failure())
                .prop_map(|failure| PeerMessage::ReplicateAck { result: failure.map_or(Ok(()), Err) }),
            (arbitrary_key(), any::<bool>())
                .prop_map(|(key, digest_only)| PeerMessage::Read { key, digest_only }),
            prop_oneof![
                proptest::option::of(arbitrary_entry()).prop_map(|entry| Ok(ReadAnswer::Entry(entry))),
                any::<Option<u64>>().prop_map(|version| Ok(ReadAnswer::Digest(version))),
                arbitrary_failure().prop_map(Err),
            ]
            .prop_map(|result| PeerMessage::ReadReply { result }),
            arbitrary_bytes(2048).prop_map(|payload| PeerMessage::Membership { payload }),
            (any::<u64>(), any::<u64>(), proptest::collection::vec(0u16..64, 0..64)).prop_map(
                |(range_start, range_end, branches)| PeerMessage::TreeRequest {
                    range_start,
                    range_end,
                    level: TreeLevel::Segments,
                    branches,
                }
            ),
            prop_oneof![
                proptest::collection::vec(any::<u64>(), 0..256).prop_map(Ok),
                arbitrary_failure().prop_map(Err),
            ]
            .prop_map(|result| PeerMessage::TreeReply { result }),
            (any::<u64>(), any::<u64>(), proptest::collection::vec(0u16..4096, 0..128)).prop_map(
                |(range_start, range_end, segments)| PeerMessage::KeysRequest {
                    range_start,
                    range_end,
                    segments
                }
            ),
            prop_oneof![
                (proptest::collection::vec((arbitrary_key(), any::<u64>()), 0..32), any::<bool>())
                    .prop_map(|(keys, truncated)| Ok(KeyList { keys, truncated })),
                arbitrary_failure().prop_map(Err),
            ]
            .prop_map(|result| PeerMessage::KeysReply { result }),
            proptest::option::of((any::<u64>(), any::<u64>()))
                .prop_map(|range| PeerMessage::RepairRequest { range }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(ranges_compared, keys_pushed, bytes_sent)| PeerMessage::RepairReply {
                    report: RepairReport {
                        ranges_compared,
                        keys_pushed,
                        bytes_sent,
                        ..RepairReport::default()
                    }
                }
            ),
            (arbitrary_key(), any::<u64>())
                .prop_map(|(key, ballot)| PeerMessage::PaxosPrepare { key, ballot }),
            prop_oneof![
                (
                    any::<bool>(),
                    any::<u64>(),
                    (any::<u64>(), any::<u64>(), any::<u64>()),
                    proptest::option::of(arbitrary_accepted()),
                    proptest::option::of(arbitrary_head()),
                    proptest::collection::vec(
                        (any::<u64>(), any::<u64>())
                            .prop_map(|(version, based_on)| Succession { version, based_on }),
                        0..=PAXOS_SUCCESSIONS_MAX,
                    ),
                )
                    .prop_map(
                        |(
                            granted,
                            promised,
                            (committed, committed_version, committed_based_on),
                            accepted,
                            current,
                            successions,
                        )| {
                            Ok(Promise {
                                granted,
                                promised,
                                committed,
                                committed_version,
                                committed_based_on,
                                accepted,
                                current,
                                successions,
                            })
                        }
                    ),
                arbitrary_failure().prop_map(Err),
            ]
            .prop_map(|result| PeerMessage::PaxosPromise { result }),
            (arbitrary_key(), any::<u64>(), any::<u64>(), arbitrary_entry()).prop_map(
                |(key, ballot, based_on, entry)| PeerMessage::PaxosPropose { key, ballot, based_on, entry }
            ),
            prop_oneof![
                (any::<bool>(), any::<u64>())
                    .prop_map(|(accepted, promised)| Ok(Acceptance { accepted, promised })),
                arbitrary_failure().prop_map(Err),
            ]
            .prop_map(|result| PeerMessage::PaxosAccept { result }),
            (arbitrary_key(), any::<u64>(), any::<u64>(), arbitrary_entry()).prop_map(
                |(key, ballot, based_on, entry)| PeerMessage::PaxosCommit { key, ballot, based_on, entry }
            ),
        ]
    }

    fn arbitrary_envelope() -> impl Strategy<Value = PeerEnvelope> {
        (0..=NODE_ID_MAX, any::<u32>(), any::<u64>(), arbitrary_message()).prop_map(
            |(origin_node, origin_shard, request_id, message)| PeerEnvelope {
                origin_node,
                origin_shard,
                request_id,
                message,
            },
        )
    }

    proptest! {
        #[test]
        fn arbitrary_envelopes_round_trip(envelope in arbitrary_envelope()) {
            let frame = encode(&envelope);
            prop_assert_eq!(parse_peer(&frame), Ok(envelope.clone()));
            prop_assert_eq!(parse_peer_shared(&Bytes::from(frame)), Ok(envelope));
        }

        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_peer(&payload);
            // With a correct prefix in front, the bytes reach the FlatBuffers verifier.
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&payload);
            let _ = parse_peer(&frame);
        }

        #[test]
        fn corrupted_valid_frames_never_panic(
            envelope in arbitrary_envelope(),
            corruptions in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut frame = encode(&envelope);
            for (position, byte) in corruptions {
                // Leave the prefix alone so that every case reaches the verifier.
                let position = 4 + position % (frame.len() - 4);
                frame[position] = byte;
            }
            if let Ok(parsed) = parse_peer(&frame) {
                // Whatever survives verification must also satisfy the limits.
                prop_assert!(parsed.validate().is_ok());
            }
        }
    }
}
