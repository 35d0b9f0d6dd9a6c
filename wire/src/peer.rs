//! The peer protocol: messages between the shards of different nodes (replication and
//! membership), as owned Rust types.
//!
//! Every message is one-way. A request carries the coordinator's `(origin node, origin shard,
//! request id)` in its [`PeerEnvelope`], and the reply repeats them, so the coordinator matches
//! replies to its pending requests without holding a connection open per request (ScyllaDB's
//! `MUTATION_DONE` works the same way).
//!
//! ```text
//!  coordinator shard                          replica shard
//!  Replicate { key, entry } ───────────────▶  apply if newer ─┐
//!           ◀─────────────── ReplicateAck { result }          ┘
//!  Read { key, digest_only } ──────────────▶  read own copy ─┐
//!           ◀─────────────── ReadReply { result }            ┘
//!  PaxosPrepare { key, ballot } ───────────▶  promise ballot ─┐
//!           ◀─────────────── PaxosPromise { result }          ┘
//!  PaxosPropose { key, ballot, based_on, entry } ─▶  accept if promised ─┐
//!           ◀─────────────── PaxosAccept { result }                        ┘
//!  PaxosCommit { key, ballot, based_on, entry } ──▶  apply, record the commit ─┐
//!           ◀─────────────── ReplicateAck { result }                           ┘
//!  Membership { payload } ◀──────────────▶  (SWIM datagrams between nodes)
//! ```

use bytes::Bytes;

use crate::error::WireError;
use crate::limits::{
    KEY_LIST_BYTES_MAX, KEY_LIST_ENTRIES_MAX, MEMBERSHIP_PAYLOAD_BYTES_MAX, NODE_ID_MAX,
    PEER_FAILURE_MESSAGE_BYTES_MAX, TREE_BRANCHES, TREE_SEGMENTS, VALUE_BYTES_MAX,
};
use crate::operation::validate_key;

/// A key's state as replicas exchange it: its version and either a value or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerEntry {
    /// The version the coordinator stamped (a hybrid logical clock timestamp).
    pub version: u64,
    /// The value or tombstone.
    pub value: PeerValue,
}

/// A live value or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerValue {
    /// A live value, expiring at `expires_at_ms` (absolute, set by the coordinator) if set.
    Live { data: Bytes, expires_at_ms: Option<u64> },
    /// A delete, made at `deleted_at_ms` by the coordinator's clock.
    Tombstone { deleted_at_ms: u64 },
}

/// What a replica answers to a read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReadAnswer {
    /// The replica's newest entry for the key, tombstones and expired values included (the
    /// coordinator needs them to reconcile), or `None` when it has never seen the key.
    Entry(Option<PeerEntry>),
    /// Only the version of the replica's newest entry: versions are unique per write (the node
    /// id is in their low bits), so equal versions mean equal entries.
    Digest(Option<u64>),
}

/// Why a replica could not carry out a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerErrorCode {
    /// A bug or an unexpected condition on the replica.
    Internal,
    /// The replica sheds load: its queue for the coordinator is full.
    Overloaded,
    /// The replica's storage refuses writes (an fsync or write failed).
    StorageFailed,
    /// The version is further in the future than the replica's clock allows.
    ClockSkew,
    /// The replica shard does not own the key's token.
    WrongShard,
    /// The request broke a limit (key or value size).
    Invalid,
    /// The replica lost data (tables missing at its start) and has not restored the key's range
    /// from the other replicas yet: it does not answer reads there.
    Rebuilding,
}

impl PeerErrorCode {
    /// Whether a replica answering with this code refused the request before applying any of
    /// it. A storage failure may come after the write reached the memtable (its sync failed),
    /// and an internal error may come from anywhere: neither says the write is not there.
    pub fn refused_before_applying(self) -> bool {
        match self {
            PeerErrorCode::Overloaded
            | PeerErrorCode::ClockSkew
            | PeerErrorCode::WrongShard
            | PeerErrorCode::Invalid
            | PeerErrorCode::Rebuilding => true,
            PeerErrorCode::Internal | PeerErrorCode::StorageFailed => false,
        }
    }
}

/// A replica's failure: a code to branch on and a message for logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerFailure {
    pub code: PeerErrorCode,
    pub message: String,
}

/// One peer message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerMessage {
    /// The first frame on a new link: who is connecting. The receiving shard checks that the
    /// link was meant for it (`target_shard`) and drops the link otherwise.
    Hello { node_id: u16, generation: u64, target_shard: u32 },
    /// Apply this write if it is newer than what the replica holds.
    Replicate { key: Bytes, entry: PeerEntry },
    /// The answer to [`PeerMessage::Replicate`]: applied (or already superseded), or why not.
    ReplicateAck { result: Result<(), PeerFailure> },
    /// Read the replica's copy of `key`: the whole entry, or only its version.
    Read { key: Bytes, digest_only: bool },
    /// The answer to [`PeerMessage::Read`].
    ReadReply { result: Result<ReadAnswer, PeerFailure> },
    /// A membership (SWIM) datagram, opaque to this layer.
    Membership { payload: Bytes },
    /// Anti-entropy: the replica's tictac tree of the token range `(range_start, range_end]` at
    /// `level`; `branches` is read at [`TreeLevel::Segments`] only.
    TreeRequest { range_start: u64, range_end: u64, level: TreeLevel, branches: Vec<u16> },
    /// The answer to [`PeerMessage::TreeRequest`]: the hashes in the order asked.
    TreeReply { result: Result<Vec<u64>, PeerFailure> },
    /// Anti-entropy: the keys and versions the replica holds in `segments` of the token range
    /// `(range_start, range_end]`, tombstones included.
    KeysRequest { range_start: u64, range_end: u64, segments: Vec<u16> },
    /// The answer to [`PeerMessage::KeysRequest`].
    KeysReply { result: Result<KeyList, PeerFailure> },
    /// An operator asks the shard to run anti-entropy now, over every range it replicates or
    /// over `range` (start, end] only.
    RepairRequest { range: Option<(u64, u64)> },
    /// The answer to [`PeerMessage::RepairRequest`].
    RepairReply { report: RepairReport },
    /// Paxos phase 1 (compare-and-swap across replicas): promise to accept no proposal for
    /// `key` under `ballot`, and tell what was accepted.
    PaxosPrepare { key: Bytes, ballot: u64 },
    /// The answer to [`PeerMessage::PaxosPrepare`].
    PaxosPromise { result: Result<Promise, PeerFailure> },
    /// Paxos phase 2: accept `entry` for `key` at `ballot` unless a higher ballot was promised.
    /// `based_on` is the version of the key's newest entry (live or not) that the swap's compare
    /// was made against, 0 when the key had none: the state this proposal succeeds.
    PaxosPropose { key: Bytes, ballot: u64, based_on: u64, entry: PeerEntry },
    /// The answer to [`PeerMessage::PaxosPropose`].
    PaxosAccept { result: Result<Acceptance, PeerFailure> },
    /// Paxos phase 3: the proposal a majority accepted at `ballot` is chosen. Apply `entry` to
    /// `key` as [`PeerMessage::Replicate`] does (if it outranks what the replica holds) and
    /// record `ballot`, the entry's version and `based_on` (the proposal's, see
    /// [`PeerMessage::PaxosPropose`]) as the key's most recent commit. Answered with
    /// [`PeerMessage::ReplicateAck`].
    PaxosCommit { key: Bytes, ballot: u64, based_on: u64, entry: PeerEntry },
}

/// The head of an entry: what a compare needs, without the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryHead {
    /// The entry's version.
    pub version: u64,
    /// The entry is a tombstone.
    pub tombstone: bool,
    /// When a live value expires (absolute milliseconds since the Unix epoch), if it does.
    pub expires_at_ms: Option<u64>,
}

impl EntryHead {
    /// The head of `entry`.
    pub fn of(entry: &PeerEntry) -> Self {
        let (tombstone, expires_at_ms) = match &entry.value {
            PeerValue::Live { expires_at_ms, .. } => (false, *expires_at_ms),
            PeerValue::Tombstone { .. } => (true, None),
        };
        EntryHead { version: entry.version, tombstone, expires_at_ms }
    }

    /// Whether the entry holds a live value at `now_ms`: it is not a tombstone and has not
    /// expired. A value expiring at `now_ms` has expired, as in the storage engine.
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        !self.tombstone && !matches!(self.expires_at_ms, Some(at) if at <= now_ms)
    }
}

/// A replica's answer to a Paxos prepare.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Promise {
    /// The replica promised the ballot.
    pub granted: bool,
    /// When not granted, the higher ballot the replica had promised.
    pub promised: u64,
    /// The ballot of the most recent commit ([`PeerMessage::PaxosCommit`]) this replica applied
    /// (the highest ballot of any commit it applied), 0 when none.
    pub committed: u64,
    /// The version of the entry committed at ballot `committed`, 0 when none.
    pub committed_version: u64,
    /// The `based_on` of the commit at ballot `committed`: the version of the entry its swap
    /// was compared against, 0 when none (or when that swap found the key without entries).
    pub committed_based_on: u64,
    /// The proposal the replica accepted last (its ballot, its `based_on`, its entry), or `None`
    /// when it accepted none.
    pub accepted: Option<Accepted>,
    /// The head of the replica's newest entry for the key, or `None` when it has never seen the
    /// key.
    pub current: Option<EntryHead>,
    /// The most recent commits the replica applied for the key (the highest versions, at most
    /// [`crate::limits::PAXOS_SUCCESSIONS_MAX`]), ascending by version.
    pub successions: Vec<Succession>,
}

/// One commit a replica applied: the entry's version and the version its swap's compare saw.
/// A key's state has exactly one successor, so for a swap whose proposal was based on
/// `based_on`, a succession of that state to another version says the proposal lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Succession {
    pub version: u64,
    pub based_on: u64,
}

/// A proposal a replica accepted ([`PeerMessage::PaxosPropose`]), as its promise reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Accepted {
    /// The ballot the proposal was accepted at.
    pub ballot: u64,
    /// The version of the key's newest entry that the proposal's compare was made against, 0
    /// when the key had none.
    pub based_on: u64,
    /// The entry proposed.
    pub entry: PeerEntry,
}

/// A replica's answer to a Paxos proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Acceptance {
    /// The replica accepted the proposal.
    pub accepted: bool,
    /// When not accepted, the higher ballot the replica had promised.
    pub promised: u64,
}

/// What an anti-entropy repair asked by an operator did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RepairReport {
    pub ranges_compared: u64,
    pub exchanges: u64,
    pub exchanges_failed: u64,
    pub keys_pushed: u64,
    pub keys_pulled: u64,
    pub bytes_sent: u64,
}

/// The level of a tictac tree a [`PeerMessage::TreeRequest`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreeLevel {
    /// One hash, the root.
    Root,
    /// The 64 branch hashes.
    Branches,
    /// The 64 segment hashes of each branch listed.
    Segments,
}

/// Keys and their versions, as a replica lists them for anti-entropy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyList {
    /// Each key with the version of its newest entry.
    pub keys: Vec<(Bytes, u64)>,
    /// The list stops early: the segments hold more keys than one answer carries.
    pub truncated: bool,
}

impl KeyList {
    /// Whether one more key of `key_bytes` fits in an answer.
    pub fn has_room_for(&self, key_bytes: usize) -> bool {
        self.keys.len() < KEY_LIST_ENTRIES_MAX
            && self.keys.iter().map(|(key, _)| key.len()).sum::<usize>() + key_bytes <= KEY_LIST_BYTES_MAX
    }

    fn validate(&self) -> Result<(), WireError> {
        if self.keys.len() > KEY_LIST_ENTRIES_MAX {
            return Err(WireError::malformed(format!("{} keys in one key list", self.keys.len())));
        }
        let mut bytes = 0usize;
        for (key, _) in &self.keys {
            validate_key(key)?;
            bytes += key.len();
        }
        if bytes > KEY_LIST_BYTES_MAX {
            return Err(WireError::malformed(format!("{bytes} bytes of keys in one key list")));
        }
        Ok(())
    }
}

impl PeerMessage {
    /// Whether the message asks a replica for something (and is answered), as opposed to an
    /// answer, a hello or a membership datagram.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            PeerMessage::Replicate { .. }
                | PeerMessage::Read { .. }
                | PeerMessage::TreeRequest { .. }
                | PeerMessage::KeysRequest { .. }
                | PeerMessage::RepairRequest { .. }
                | PeerMessage::PaxosPrepare { .. }
                | PeerMessage::PaxosPropose { .. }
                | PeerMessage::PaxosCommit { .. }
        )
    }
}

/// A peer message with the correlation that routes its reply: the coordinator's node and shard
/// and its request id. Replies repeat the request's envelope fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerEnvelope {
    pub origin_node: u16,
    pub origin_shard: u32,
    pub request_id: u64,
    pub message: PeerMessage,
}

impl PeerFailure {
    /// A failure whose message is cut, at a character boundary, to
    /// [`PEER_FAILURE_MESSAGE_BYTES_MAX`], so that it always encodes: the message is for logs,
    /// and a long one must not keep a replica from answering.
    pub fn new(code: PeerErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > PEER_FAILURE_MESSAGE_BYTES_MAX {
            let mut end = PEER_FAILURE_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        PeerFailure { code, message }
    }

    /// Checks the message limit.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.message.len() > PEER_FAILURE_MESSAGE_BYTES_MAX {
            return Err(WireError::PeerFailureMessageTooLong { length_bytes: self.message.len() });
        }
        Ok(())
    }
}

impl PeerEntry {
    /// Checks the value limit (a tombstone has nothing to check).
    pub fn validate(&self) -> Result<(), WireError> {
        match &self.value {
            PeerValue::Live { data, .. } if data.len() > VALUE_BYTES_MAX => {
                Err(WireError::ValueTooLarge { length_bytes: data.len() })
            }
            PeerValue::Live { .. } | PeerValue::Tombstone { .. } => Ok(()),
        }
    }
}

impl PeerEnvelope {
    /// Checks every limit of the peer protocol: node ids, keys, values, membership payloads
    /// and failure messages. [`crate::encode_peer`] calls it before encoding and
    /// [`crate::parse_peer`] after verifying, so a message that breaks a limit is never sent
    /// and never accepted.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_node_id(self.origin_node)?;
        match &self.message {
            PeerMessage::Hello { node_id, .. } => validate_node_id(*node_id),
            PeerMessage::Replicate { key, entry } => {
                validate_key(key)?;
                entry.validate()
            }
            PeerMessage::ReplicateAck { result } => match result {
                Ok(()) => Ok(()),
                Err(failure) => failure.validate(),
            },
            PeerMessage::Read { key, .. } => validate_key(key),
            PeerMessage::ReadReply { result } => match result {
                Ok(ReadAnswer::Entry(Some(entry))) => entry.validate(),
                Ok(ReadAnswer::Entry(None) | ReadAnswer::Digest(_)) => Ok(()),
                Err(failure) => failure.validate(),
            },
            PeerMessage::Membership { payload } => {
                if payload.len() > MEMBERSHIP_PAYLOAD_BYTES_MAX {
                    return Err(WireError::MembershipPayloadTooLarge { length_bytes: payload.len() });
                }
                Ok(())
            }
            PeerMessage::TreeRequest { level, branches, .. } => {
                let listed = if *level == TreeLevel::Segments { branches.len() } else { 0 };
                if listed > TREE_BRANCHES
                    || branches.iter().any(|&branch| usize::from(branch) >= TREE_BRANCHES)
                {
                    return Err(WireError::malformed("a tree request lists branches out of range"));
                }
                Ok(())
            }
            PeerMessage::TreeReply { result } => match result {
                Ok(hashes) if hashes.len() > TREE_SEGMENTS => {
                    Err(WireError::malformed(format!("{} hashes in one tree reply", hashes.len())))
                }
                Ok(_) => Ok(()),
                Err(failure) => failure.validate(),
            },
            PeerMessage::KeysRequest { segments, .. } => {
                if segments.len() > TREE_SEGMENTS
                    || segments.iter().any(|&segment| usize::from(segment) >= TREE_SEGMENTS)
                {
                    return Err(WireError::malformed("a keys request lists segments out of range"));
                }
                Ok(())
            }
            PeerMessage::KeysReply { result } => match result {
                Ok(list) => list.validate(),
                Err(failure) => failure.validate(),
            },
            PeerMessage::RepairRequest { .. } | PeerMessage::RepairReply { .. } => Ok(()),
            PeerMessage::PaxosPrepare { key, .. } => validate_key(key),
            PeerMessage::PaxosPromise { result } => match result {
                Ok(Promise { accepted: Some(Accepted { entry, .. }), .. }) => entry.validate(),
                Ok(Promise { accepted: None, .. }) => Ok(()),
                Err(failure) => failure.validate(),
            },
            PeerMessage::PaxosPropose { key, entry, .. } | PeerMessage::PaxosCommit { key, entry, .. } => {
                validate_key(key)?;
                entry.validate()
            }
            PeerMessage::PaxosAccept { result } => match result {
                Ok(_) => Ok(()),
                Err(failure) => failure.validate(),
            },
        }
    }
}

fn validate_node_id(node_id: u16) -> Result<(), WireError> {
    if node_id > NODE_ID_MAX {
        return Err(WireError::NodeIdOutOfRange { node_id });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{KEY_BYTES_MAX, KEY_BYTES_MIN};

    #[test]
    fn failure_messages_are_cut_at_a_character_boundary() {
        // 'é' is two bytes: a cut at an odd byte count would split one.
        let failure = PeerFailure::new(PeerErrorCode::Internal, "é".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX));
        assert!(failure.message.len() <= PEER_FAILURE_MESSAGE_BYTES_MAX);
        assert!(failure.message.len() >= PEER_FAILURE_MESSAGE_BYTES_MAX - 1);
        assert!(failure.validate().is_ok());
        let short = PeerFailure::new(PeerErrorCode::ClockSkew, "ahead by 900 ms");
        assert_eq!(short.message, "ahead by 900 ms");
    }

    #[test]
    fn each_broken_limit_has_its_own_error() {
        let envelope = |message| PeerEnvelope { origin_node: 1, origin_shard: 0, request_id: 7, message };
        let live = |length: usize| PeerEntry {
            version: 1,
            value: PeerValue::Live { data: vec![0; length].into(), expires_at_ms: None },
        };
        let cases = [
            (
                PeerEnvelope {
                    origin_node: NODE_ID_MAX + 1,
                    ..envelope(PeerMessage::Membership { payload: Bytes::new() })
                },
                WireError::NodeIdOutOfRange { node_id: NODE_ID_MAX + 1 },
            ),
            (
                envelope(PeerMessage::Hello { node_id: u16::MAX, generation: 1, target_shard: 0 }),
                WireError::NodeIdOutOfRange { node_id: u16::MAX },
            ),
            (envelope(PeerMessage::Replicate { key: Bytes::new(), entry: live(1) }), WireError::KeyEmpty),
            (
                envelope(PeerMessage::Read { key: vec![1; KEY_BYTES_MAX + 1].into(), digest_only: true }),
                WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::Replicate { key: "k".into(), entry: live(VALUE_BYTES_MAX + 1) }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::ReadReply {
                    result: Ok(ReadAnswer::Entry(Some(live(VALUE_BYTES_MAX + 1)))),
                }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::ReplicateAck {
                    result: Err(PeerFailure {
                        code: PeerErrorCode::Internal,
                        message: "x".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX + 1),
                    }),
                }),
                WireError::PeerFailureMessageTooLong { length_bytes: PEER_FAILURE_MESSAGE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::Membership {
                    payload: vec![0; MEMBERSHIP_PAYLOAD_BYTES_MAX + 1].into(),
                }),
                WireError::MembershipPayloadTooLarge { length_bytes: MEMBERSHIP_PAYLOAD_BYTES_MAX + 1 },
            ),
            (envelope(PeerMessage::PaxosPrepare { key: Bytes::new(), ballot: 1 }), WireError::KeyEmpty),
            (
                envelope(PeerMessage::PaxosPropose {
                    key: vec![1; KEY_BYTES_MAX + 1].into(),
                    ballot: 1,
                    based_on: 0,
                    entry: live(1),
                }),
                WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosPropose {
                    key: "k".into(),
                    ballot: 1,
                    based_on: u64::MAX,
                    entry: live(VALUE_BYTES_MAX + 1),
                }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosCommit {
                    key: Bytes::new(),
                    ballot: 1,
                    based_on: 1,
                    entry: live(1),
                }),
                WireError::KeyEmpty,
            ),
            (
                envelope(PeerMessage::PaxosCommit {
                    key: vec![1; KEY_BYTES_MAX + 1].into(),
                    ballot: 1,
                    based_on: 0,
                    entry: live(1),
                }),
                WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosCommit {
                    key: "k".into(),
                    ballot: 1,
                    based_on: u64::MAX,
                    entry: live(VALUE_BYTES_MAX + 1),
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
                        committed_based_on: 0,
                        accepted: Some(Accepted { ballot: 1, based_on: 0, entry: live(VALUE_BYTES_MAX + 1) }),
                        current: None,
                        successions: Vec::new(),
                    }),
                }),
                WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosPromise {
                    result: Err(PeerFailure {
                        code: PeerErrorCode::Internal,
                        message: "x".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX + 1),
                    }),
                }),
                WireError::PeerFailureMessageTooLong { length_bytes: PEER_FAILURE_MESSAGE_BYTES_MAX + 1 },
            ),
            (
                envelope(PeerMessage::PaxosAccept {
                    result: Err(PeerFailure {
                        code: PeerErrorCode::Internal,
                        message: "x".repeat(PEER_FAILURE_MESSAGE_BYTES_MAX + 1),
                    }),
                }),
                WireError::PeerFailureMessageTooLong { length_bytes: PEER_FAILURE_MESSAGE_BYTES_MAX + 1 },
            ),
        ];
        for (envelope, expected) in cases {
            assert_eq!(envelope.validate(), Err(expected), "{:?}", envelope.message);
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let envelope =
            |message| PeerEnvelope { origin_node: NODE_ID_MAX, origin_shard: 0, request_id: 0, message };
        let entry = PeerEntry {
            version: 1,
            value: PeerValue::Live { data: vec![0; VALUE_BYTES_MAX].into(), expires_at_ms: Some(1) },
        };
        let maximal = [
            envelope(PeerMessage::PaxosPropose {
                key: vec![1; KEY_BYTES_MAX].into(),
                ballot: u64::MAX,
                based_on: u64::MAX,
                entry: entry.clone(),
            }),
            envelope(PeerMessage::PaxosPromise {
                result: Ok(Promise {
                    granted: true,
                    promised: u64::MAX,
                    committed: u64::MAX,
                    committed_version: u64::MAX,
                    committed_based_on: u64::MAX,
                    accepted: Some(Accepted { ballot: u64::MAX, based_on: u64::MAX, entry: entry.clone() }),
                    current: Some(EntryHead::of(&entry)),
                    successions: Vec::new(),
                }),
            }),
            envelope(PeerMessage::PaxosCommit {
                key: vec![1; KEY_BYTES_MAX].into(),
                ballot: u64::MAX,
                based_on: u64::MAX,
                entry: entry.clone(),
            }),
            envelope(PeerMessage::PaxosCommit {
                key: vec![1; KEY_BYTES_MIN].into(),
                ballot: 0,
                based_on: 0,
                entry: entry.clone(),
            }),
            envelope(PeerMessage::PaxosPrepare { key: vec![1; KEY_BYTES_MIN].into(), ballot: 0 }),
            envelope(PeerMessage::Replicate { key: vec![1; KEY_BYTES_MAX].into(), entry }),
            envelope(PeerMessage::Read { key: vec![1; KEY_BYTES_MIN].into(), digest_only: false }),
            envelope(PeerMessage::Membership { payload: vec![0; MEMBERSHIP_PAYLOAD_BYTES_MAX].into() }),
            envelope(PeerMessage::Hello {
                node_id: NODE_ID_MAX,
                generation: u64::MAX,
                target_shard: u32::MAX,
            }),
        ];
        for envelope in maximal {
            assert_eq!(envelope.validate(), Ok(()), "{:?}", envelope.message);
        }
    }

    #[test]
    fn an_entry_head_is_live_until_the_value_expires() {
        let live = |expires_at_ms| PeerEntry {
            version: 5,
            value: PeerValue::Live { data: Bytes::from_static(b"v"), expires_at_ms },
        };
        let tombstone = PeerEntry { version: 6, value: PeerValue::Tombstone { deleted_at_ms: 100 } };

        let forever = EntryHead::of(&live(None));
        assert_eq!(forever, EntryHead { version: 5, tombstone: false, expires_at_ms: None });
        assert!(forever.is_live_at(0) && forever.is_live_at(u64::MAX));

        // Expired at its expiry instant, as `ringkv_storage::Entry::is_absent_at` has it.
        let expiring = EntryHead::of(&live(Some(1_000)));
        assert_eq!(expiring, EntryHead { version: 5, tombstone: false, expires_at_ms: Some(1_000) });
        assert!(expiring.is_live_at(999));
        assert!(!expiring.is_live_at(1_000));
        assert!(!expiring.is_live_at(1_001));

        let deleted = EntryHead::of(&tombstone);
        assert_eq!(deleted, EntryHead { version: 6, tombstone: true, expires_at_ms: None });
        assert!(!deleted.is_live_at(0));
    }
}
