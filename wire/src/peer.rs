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
//!  Membership { payload } ◀──────────────▶  (SWIM datagrams between nodes)
//! ```

use bytes::Bytes;

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
