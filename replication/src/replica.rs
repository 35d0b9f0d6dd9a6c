//! The replica side of the peer protocol: what a shard does with a request from a coordinator,
//! and the reply it sends back. Pure functions: the driver runs the work on its engine.
//!
//! ```text
//!  Replicate { key, entry } ─▶ clock skew check ─▶ Work::Apply  ─(engine: keep if newer)─▶ ReplicateAck
//!  Read { key, digest }     ─────────────────────▶ Work::Read   ─(engine: newest entry)──▶ ReadReply
//!  PaxosPrepare { ballot }  ─▶ clock skew check ─▶ Work::Prepare ─(Paxos state, synced)──▶ PaxosPromise
//!  PaxosPropose { entry }   ─▶ clock skew check ─▶ Work::Propose ─(Paxos state, synced)──▶ PaxosAccept
//!  PaxosCommit { entry }    ─▶ clock skew check ─▶ Work::Commit  ─(apply, record ballot)─▶ ReplicateAck
//! ```
//!
//! A write is applied if its version is higher than the replica's (the engine resolves by
//! version), so a late, repeated or reordered message changes nothing; the ack says "this
//! version or a newer one is durable here" either way.

use bytes::Bytes;
use ringkv_wire::peer::{
    Acceptance, PeerEntry, PeerEnvelope, PeerErrorCode, PeerFailure, PeerMessage, Promise, ReadAnswer,
};

use crate::clock::HybridClock;

/// What a replica must do for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// Apply `entry` under `key` if newer than what is stored, then acknowledge.
    Apply { key: Bytes, entry: PeerEntry },
    /// Read the newest stored entry of `key` (tombstones and expired values included).
    Read { key: Bytes, digest_only: bool },
    /// Paxos phase 1 for `key` (see [`crate::paxos`]): promise `ballot` if it is the highest yet,
    /// durably, and answer with the accepted proposal and the current entry's head.
    Prepare { key: Bytes, ballot: u64 },
    /// Paxos phase 2: accept `entry` (decided on the state of version `based_on`) at `ballot`
    /// unless a higher ballot was promised, durably.
    Propose { key: Bytes, ballot: u64, based_on: u64, entry: PeerEntry },
    /// Paxos phase 3: apply `entry` as [`Work::Apply`] does, and record `ballot` as the key's
    /// most recent commit, then acknowledge with [`applied`].
    Commit { key: Bytes, ballot: u64, based_on: u64, entry: PeerEntry },
}

/// Takes a request from a coordinator. `Ok(None)`: the message is not a request (a reply,
/// a hello, membership). `Err`: the request is refused; answer it with [`refusal`].
///
/// A write whose version is more than `max_clock_skew_ms` ahead of `now_ms` is refused and never
/// observed; any other write's version is observed by `clock`, so a later write coordinated here
/// is versioned above it.
pub fn accept(
    envelope: &PeerEnvelope,
    clock: &HybridClock,
    now_ms: u64,
    max_clock_skew_ms: u64,
) -> Result<Option<Work>, PeerFailure> {
    match &envelope.message {
        PeerMessage::Replicate { key, entry } => {
            if let Err(skew) = clock.observe_remote(entry.version, now_ms, max_clock_skew_ms) {
                tracing::warn!(
                    origin_node = envelope.origin_node,
                    %skew,
                    "refused a replicated write from the future"
                );
                return Err(PeerFailure { code: PeerErrorCode::ClockSkew, message: skew.to_string() });
            }
            Ok(Some(Work::Apply { key: key.clone(), entry: entry.clone() }))
        }
        PeerMessage::Read { key, digest_only } => {
            Ok(Some(Work::Read { key: key.clone(), digest_only: *digest_only }))
        }
        PeerMessage::PaxosPrepare { key, ballot } => {
            observe(envelope, clock, *ballot, now_ms, max_clock_skew_ms)?;
            Ok(Some(Work::Prepare { key: key.clone(), ballot: *ballot }))
        }
        PeerMessage::PaxosPropose { key, ballot, based_on, entry } => {
            observe(envelope, clock, (*ballot).max(entry.version), now_ms, max_clock_skew_ms)?;
            Ok(Some(Work::Propose {
                key: key.clone(),
                ballot: *ballot,
                based_on: *based_on,
                entry: entry.clone(),
            }))
        }
        PeerMessage::PaxosCommit { key, ballot, based_on, entry } => {
            observe(envelope, clock, (*ballot).max(entry.version), now_ms, max_clock_skew_ms)?;
            Ok(Some(Work::Commit {
                key: key.clone(),
                ballot: *ballot,
                based_on: *based_on,
                entry: entry.clone(),
            }))
        }
        PeerMessage::Hello { .. }
        | PeerMessage::ReplicateAck { .. }
        | PeerMessage::ReadReply { .. }
        | PeerMessage::Membership { .. }
        | PeerMessage::TreeRequest { .. }
        | PeerMessage::TreeReply { .. }
        | PeerMessage::KeysRequest { .. }
        | PeerMessage::KeysReply { .. }
        | PeerMessage::RepairRequest { .. }
        | PeerMessage::RepairReply { .. }
        | PeerMessage::PaxosPromise { .. }
        | PeerMessage::PaxosAccept { .. } => Ok(None),
    }
}

/// Observes a ballot or version from a coordinator, refusing one too far ahead of `now_ms`.
fn observe(
    envelope: &PeerEnvelope,
    clock: &HybridClock,
    version: u64,
    now_ms: u64,
    max_clock_skew_ms: u64,
) -> Result<(), PeerFailure> {
    clock.observe_remote(version, now_ms, max_clock_skew_ms).map_err(|skew| {
        tracing::warn!(origin_node = envelope.origin_node, %skew, "refused a Paxos ballot from the future");
        PeerFailure { code: PeerErrorCode::ClockSkew, message: skew.to_string() }
    })
}

fn reply_to(request: &PeerEnvelope, message: PeerMessage) -> PeerEnvelope {
    PeerEnvelope {
        origin_node: request.origin_node,
        origin_shard: request.origin_shard,
        request_id: request.request_id,
        message,
    }
}

/// The answer to a refused request.
pub fn refusal(request: &PeerEnvelope, failure: PeerFailure) -> PeerEnvelope {
    let message = match request.message {
        PeerMessage::Read { .. } => PeerMessage::ReadReply { result: Err(failure) },
        PeerMessage::PaxosPrepare { .. } => PeerMessage::PaxosPromise { result: Err(failure) },
        PeerMessage::PaxosPropose { .. } => PeerMessage::PaxosAccept { result: Err(failure) },
        _ => PeerMessage::ReplicateAck { result: Err(failure) },
    };
    reply_to(request, message)
}

/// The answer to an applied (or superseded) write, or the storage failure that stopped it.
pub fn applied(request: &PeerEnvelope, result: Result<(), PeerFailure>) -> PeerEnvelope {
    reply_to(request, PeerMessage::ReplicateAck { result })
}

/// The answer to a read: the entry, or only its version when a digest was asked for.
pub fn read_answer(
    request: &PeerEnvelope,
    digest_only: bool,
    result: Result<Option<PeerEntry>, PeerFailure>,
) -> PeerEnvelope {
    let result = result.map(|entry| {
        if digest_only {
            ReadAnswer::Digest(entry.map(|entry| entry.version))
        } else {
            ReadAnswer::Entry(entry)
        }
    });
    reply_to(request, PeerMessage::ReadReply { result })
}

/// The answer to a Paxos prepare, or the failure that stopped it.
pub fn promised(request: &PeerEnvelope, result: Result<Promise, PeerFailure>) -> PeerEnvelope {
    reply_to(request, PeerMessage::PaxosPromise { result })
}

/// The answer to a Paxos proposal, or the failure that stopped it.
pub fn accepted(request: &PeerEnvelope, result: Result<Acceptance, PeerFailure>) -> PeerEnvelope {
    reply_to(request, PeerMessage::PaxosAccept { result })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_wire::peer::PeerValue;

    fn replicate(version: u64) -> PeerEnvelope {
        PeerEnvelope {
            origin_node: 2,
            origin_shard: 0,
            request_id: 9,
            message: PeerMessage::Replicate {
                key: Bytes::from_static(b"k"),
                entry: PeerEntry { version, value: PeerValue::Tombstone { deleted_at_ms: 1 } },
            },
        }
    }

    #[test]
    fn writes_from_the_future_are_refused_and_answered() {
        let clock = HybridClock::new(1);
        let far = HybridClock::new(2).next_version(100_000);
        let refused = accept(&replicate(far), &clock, 1_000, 500).unwrap_err();
        assert_eq!(refused.code, PeerErrorCode::ClockSkew);
        let answer = refusal(&replicate(far), refused);
        assert_eq!((answer.origin_node, answer.request_id), (2, 9));
        assert!(matches!(answer.message, PeerMessage::ReplicateAck { result: Err(_) }));
        assert!(clock.next_version(1_000) < far);
    }

    #[test]
    fn accepted_writes_are_observed() {
        let clock = HybridClock::new(1);
        let near = HybridClock::new(2).next_version(1_200);
        let work = accept(&replicate(near), &clock, 1_000, 500).unwrap();
        assert!(matches!(work, Some(Work::Apply { .. })));
        assert!(clock.next_version(1_000) > near);
    }

    #[test]
    fn ballots_from_the_future_are_refused_with_a_paxos_answer() {
        let clock = HybridClock::new(1);
        let far = HybridClock::new(2).next_version(100_000);
        let prepare = PeerEnvelope {
            origin_node: 2,
            origin_shard: 0,
            request_id: 5,
            message: PeerMessage::PaxosPrepare { key: Bytes::from_static(b"k"), ballot: far },
        };
        let refused = accept(&prepare, &clock, 1_000, 500).unwrap_err();
        assert_eq!(refused.code, PeerErrorCode::ClockSkew);
        assert!(matches!(refusal(&prepare, refused).message, PeerMessage::PaxosPromise { result: Err(_) }));
        let near = HybridClock::new(2).next_version(1_100);
        let prepare = PeerEnvelope {
            message: PeerMessage::PaxosPrepare { key: Bytes::from_static(b"k"), ballot: near },
            ..prepare
        };
        assert_eq!(
            accept(&prepare, &clock, 1_000, 500).unwrap(),
            Some(Work::Prepare { key: Bytes::from_static(b"k"), ballot: near })
        );
        assert!(clock.next_version(1_000) > near, "the ballot is observed");
    }

    #[test]
    fn digests_carry_only_the_version() {
        let request = PeerEnvelope {
            origin_node: 3,
            origin_shard: 1,
            request_id: 4,
            message: PeerMessage::Read { key: Bytes::from_static(b"k"), digest_only: true },
        };
        let entry = PeerEntry { version: 77, value: PeerValue::Tombstone { deleted_at_ms: 1 } };
        let answer = read_answer(&request, true, Ok(Some(entry)));
        assert_eq!(answer.message, PeerMessage::ReadReply { result: Ok(ReadAnswer::Digest(Some(77))) });
    }
}
