//! [`History`]: every client operation of a run, with when it was invoked and completed and
//! what came of it, in the form the checkers read (Jepsen's history: ok, failed, or unknown).
//!
//! Times are logical steps of the simulation (one per event handled), so "completed before
//! invoked" is exact even within one millisecond.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use ringkv_replication::clock::{LOGICAL_BITS, NODE_ID_BITS};
use ringkv_replication::HybridClock;
use ringkv_wire::peer::{PeerEntry, PeerValue};
use ringkv_wire::{Consistency, Expected};

use crate::config::START_MS;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A put, expiring `ttl_ms` after the coordinator's clock if set.
    Put {
        value: Bytes,
        ttl_ms: Option<u64>,
    },
    Delete,
    Get,
}

/// What came of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not answered yet.
    Pending,
    /// A write acknowledged by the replicas it needed.
    Written,
    /// A read's reconciled entry (tombstones included; `None`: never written).
    Read(Option<PeerEntry>),
    /// A read that found no live value, as a client sees it: a tombstone, an expired value or
    /// nothing at all, and no version. The simulator reads entries and never records this; the
    /// real-process fault runs (`ringkv-bench chaos`), which read through the client, do.
    Absent,
    /// Failed, and certainly not applied anywhere (refused before any message was sent).
    Failed(String),
    /// Failed, but a write may have been applied (a timeout, a refusing replica, a coordinator
    /// that crashed); a read ending this way says nothing.
    Unknown(String),
    /// A compare-and-swap that found the key in another state: certainly not applied. The live
    /// value's version, or `None` when the key has none.
    Mismatch { current_version: Option<u64> },
}

/// One operation.
#[derive(Clone, Debug)]
pub struct Operation {
    /// The client that issued it; `None` for the final reads of the settle phase.
    pub client: Option<usize>,
    /// The node that coordinated it.
    pub node: u16,
    pub key: Bytes,
    pub kind: Kind,
    pub consistency: Consistency,
    /// Replicas of the key (N) and how many had to answer.
    pub replicas: usize,
    pub required: usize,
    /// A write's version, minted by the coordinator at invocation.
    pub version: Option<u64>,
    pub invoked_step: u64,
    pub completed_step: Option<u64>,
    pub outcome: Outcome,
}

impl Operation {
    /// Whether the operation writes.
    pub fn is_write(&self) -> bool {
        !matches!(self.kind, Kind::Get)
    }

    /// Whether a read of `entry` may be this write's effect: same version, same value. A write
    /// whose version is unknown (a client never learns the version of a write that timed out)
    /// matches by value alone, which is enough since every put writes a value of its own.
    pub fn wrote(&self, entry: &PeerEntry) -> bool {
        if self.version.is_some_and(|version| version != entry.version) {
            return false;
        }
        match (&self.kind, &entry.value) {
            (Kind::Put { value, .. }, PeerValue::Live { data, .. }) => value == data,
            // Compaction keeps an expired value as a tombstone of the same version.
            (Kind::Put { ttl_ms: Some(_), .. }, PeerValue::Tombstone { .. }) => true,
            (Kind::Delete, PeerValue::Tombstone { .. }) => true,
            _ => false,
        }
    }

    /// Whether a read that finds no live value may be this write's effect: a delete, or a put
    /// with a time to live (expired by the time of the read, or not: a client cannot tell).
    pub fn hides(&self) -> bool {
        matches!(self.kind, Kind::Delete | Kind::Put { ttl_ms: Some(_), .. })
    }

    /// Whether the write may have been applied somewhere (acknowledged or unknown).
    pub fn may_have_applied(&self) -> bool {
        self.is_write() && matches!(self.outcome, Outcome::Written | Outcome::Unknown(_) | Outcome::Pending)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = String::from_utf8_lossy(&self.key);
        match &self.kind {
            Kind::Put { value, ttl_ms } => {
                write!(formatter, "put {key}={}", String::from_utf8_lossy(value))?;
                if let Some(ttl_ms) = ttl_ms {
                    write!(formatter, " ttl {ttl_ms}ms")?;
                }
            }
            Kind::Delete => write!(formatter, "delete {key}")?,
            Kind::Get => write!(formatter, "get {key}")?,
        }
        write!(
            formatter,
            " via n{} at {} ({}/{})",
            self.node,
            self.consistency.as_str(),
            self.required,
            self.replicas
        )?;
        if let Some(version) = self.version {
            write!(formatter, " {}", Version(version))?;
        }
        Ok(())
    }
}

/// A version as the trace shows it: `v<ms since the run's start>.<logical>.n<node>`, so a reader
/// sees at once which node minted it and how far its clock was ahead.
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let physical_ms = HybridClock::physical_ms(self.0);
        let logical = (self.0 >> NODE_ID_BITS) & ((1 << LOGICAL_BITS) - 1);
        let since_start = physical_ms as i64 - START_MS as i64;
        write!(formatter, "v{since_start}.{logical}.n{}", HybridClock::node_id(self.0))
    }
}

/// Formats an entry for the trace.
pub fn describe(entry: &Option<PeerEntry>) -> String {
    match entry {
        None => "nothing".to_string(),
        Some(PeerEntry { version, value: PeerValue::Live { data, .. } }) => {
            format!("{}@{}", String::from_utf8_lossy(data), Version(*version))
        }
        Some(PeerEntry { version, value: PeerValue::Tombstone { .. } }) => {
            format!("tombstone@{}", Version(*version))
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pending => write!(formatter, "pending"),
            Outcome::Written => write!(formatter, "ok"),
            Outcome::Read(entry) => write!(formatter, "read {}", describe(entry)),
            Outcome::Absent => write!(formatter, "read no live value"),
            Outcome::Failed(why) => write!(formatter, "failed: {why}"),
            Outcome::Unknown(why) => write!(formatter, "unknown: {why}"),
            Outcome::Mismatch { current_version: Some(version) } => {
                write!(formatter, "mismatch: the key is at {}", Version(*version))
            }
            Outcome::Mismatch { current_version: None } => write!(formatter, "mismatch: the key is absent"),
        }
    }
}

/// Every operation of a run, in invocation order.
#[derive(Default)]
pub struct History {
    pub operations: Vec<Operation>,
}

impl History {
    /// Records an invoked operation; returns its index.
    pub fn invoke(&mut self, operation: Operation) -> usize {
        self.operations.push(operation);
        self.operations.len() - 1
    }

    /// Records the outcome of operation `index`.
    pub fn complete(&mut self, index: usize, step: u64, outcome: Outcome) {
        let operation = &mut self.operations[index];
        debug_assert_eq!(operation.outcome, Outcome::Pending, "an operation completes once");
        operation.completed_step = Some(step);
        operation.outcome = outcome;
    }
}

/// What a compare-and-swap asked beyond its operation in [`History`], which records it as a put
/// of its value (a put without a TTL: what a swap writes when it succeeds, so every checker of
/// plain writes judges it as one). [`Kind`] has no swap of its own because the real-process
/// runner (`ringkv-bench chaos`) matches on it exhaustively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swap {
    /// The operation's index in [`History::operations`].
    pub index: usize,
    pub expected: Expected,
    pub value: Bytes,
}

/// Every compare-and-swap of a run, and every proposal a coordinator sent for one.
#[derive(Clone, Debug, Default)]
pub struct Swaps {
    /// By history index.
    pub swaps: BTreeMap<usize, Swap>,
    /// Every entry proposed to a key's acceptors (`PaxosPropose`), by key and version: the
    /// value proposed. A version is a ballot, unique to one attempt of one coordinator.
    pub proposed: BTreeMap<(Bytes, u64), Bytes>,
    /// Two proposals of one key and version with different values (never, ballots being
    /// unique): the first value, the second, and the version.
    pub conflicts: Vec<(Bytes, u64, Bytes, Bytes)>,
}

impl Swaps {
    /// Records that `value` was proposed for `key` at `version`.
    pub fn proposed(&mut self, key: &Bytes, version: u64, value: &Bytes) {
        match self.proposed.get(&(key.clone(), version)) {
            Some(earlier) if earlier != value => {
                self.conflicts.push((key.clone(), version, earlier.clone(), value.clone()));
            }
            Some(_) => {}
            None => {
                self.proposed.insert((key.clone(), version), value.clone());
            }
        }
    }
}

impl fmt::Display for Swap {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.expected {
            Expected::Absent => write!(formatter, "#{} swap from absent", self.index)?,
            Expected::Version(version) => {
                write!(formatter, "#{} swap from {}", self.index, Version(version))?
            }
        }
        write!(formatter, " to {}", String::from_utf8_lossy(&self.value))
    }
}
