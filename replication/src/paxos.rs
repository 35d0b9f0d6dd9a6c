//! Compare-and-swap across replicas: single-decree Paxos per key, as state machines without I/O.
//!
//! A compare-and-swap must be linearizable: two clients racing to swap the same version must
//! not both succeed, whichever coordinators they reach. Quorum writes cannot promise that (two
//! coordinators can each reach W replicas), so a swap runs Paxos over the key's replicas, as
//! Cassandra's lightweight transactions do: the replicas are the acceptors, the coordinator the
//! proposer, and each swap is one decision about the key's next entry.
//!
//! ```text
//!  coordinator (PaxosCas)                          replica (AcceptorState, durable per key)
//!  begin(ballot)  ─▶ PaxosPrepare { ballot } ───▶ promise if ballot > promised
//!                 ◀─ PaxosPromise { granted, promised, committed, accepted, current } (synced)
//!  quorum granted ─▶ a proposal accepted above every commit the quorum applied? finish it
//!                    first (propose it again at this ballot, commit it), then begin again
//!                 ─▶ else compare `expected` with the newest current entry (the state
//!                    the swap is based on):
//!                    mismatch ─▶ Answer Mismatch
//!                    match    ─▶ PaxosPropose { ballot, based_on, entry (version = ballot) } ─▶
//!                 ◀─ PaxosAccept { accepted, promised }     accept if ballot >= promised (sync)
//!  quorum accepted ─▶ Commit: PaxosCommit { ballot, based_on, entry } ─▶ apply the entry as a
//!                    (hints for replicas down)               write, record the commit (ballot,
//!                                                            version, based_on)
//!  committed      ─▶ Answer Swapped { version }
//!  a higher ballot anywhere ─▶ Retry above it (the driver pauses on contention)
//! ```
//!
//! **Ballots are versions.** A ballot comes from the coordinator's [`crate::HybridClock`], so it
//! is unique (the node id is in its low bits) and rises with time; the entry a swap proposes
//! carries its ballot as its version, so a committed swap outranks every entry its compare saw
//! and last-writer-wins keeps it. A ballot at or below the newest entry a prepare saw is retried
//! above it.
//!
//! **In progress.** A proposal accepted by some replicas whose commit never happened (its
//! coordinator failed) may have been chosen; a later swap must finish it before deciding
//! anything. As in Cassandra, each replica records the ballot of the last commit it applied,
//! and the accepted proposal with the highest ballot among the quorum's is in progress when that
//! ballot is above every commit ballot the quorum reported. Ballots, not entry versions, decide
//! this: an entry proposed again keeps its version (so a client told of its swap's version finds
//! that version, whoever committed it), so versions do not follow ballots, and a rule on
//! versions could prefer a stale proposal over the chosen one. Finishing a proposal whose commit
//! reached some replicas only writes the same entry again.
//!
//! **Outcomes stay exact.** A swap whose own proposal reached some replicas but not a quorum
//! (refused by a higher ballot, or unanswered) retries; if a later prepare finds that proposal
//! in progress, current or committed, it was chosen, and the swap answers `Swapped` with its
//! version. Otherwise every proposal records `based_on`, the version of the newest entry its
//! compare saw, and each replica its last commit's (ballot, version, `based_on`): a state has
//! exactly one successor (that is what the swap promises), so a commit based on the state this
//! swap proposed from, of another entry, means its proposal lost and can never be chosen; the
//! compare's mismatch is then exact. Only when no such commit is in sight (the successor was
//! itself overwritten, or its commit reached no replica of the quorum) does the swap answer an
//! indeterminate failure rather than a mismatch that could be false.
//!
//! **Mixing** ordinary writes with swaps of the same key is not linearizable (as in Cassandra):
//! an ordinary write is a quorum write outside the protocol. Swaps among themselves are.

use bytes::Bytes;
use ringkv_wire::limits::PAXOS_SUCCESSIONS_MAX;
use ringkv_wire::peer::{
    Acceptance, Accepted, EntryHead, PeerEntry, PeerFailure, PeerMessage, PeerValue, Promise, Succession,
};
use ringkv_wire::Expected;

use crate::coordinator::{CoordinatorError, Target};

/// One replica's Paxos state for one key: the highest ballot it promised, and the proposal it
/// accepted last. It must be durable before the replica answers a prepare or a proposal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptorState {
    /// The highest ballot promised (0: none).
    pub promised: u64,
    /// The highest ballot whose commit this replica applied (0: none), with the version of the
    /// entry committed and the version it was based on.
    pub committed: u64,
    pub committed_version: u64,
    pub committed_based_on: u64,
    /// The last proposal accepted; dropped once a commit at its ballot or a higher one is
    /// applied.
    pub accepted: Option<Accepted>,
    /// The commits applied here with the highest versions (at most [`PAXOS_SUCCESSIONS_MAX`]),
    /// ascending by version: what a swap retried after a contended pause needs to learn whether
    /// its proposal won, while other swaps went on committing.
    pub successions: Vec<Succession>,
}

/// A stored [`AcceptorState`] that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a stored Paxos state of {length} bytes does not decode: {reason}")]
pub struct AcceptorStateError {
    pub length: usize,
    pub reason: &'static str,
}

/// The stored layout: 2 adds the successions after the commit; 1 (without them) still reads.
const FORMAT: u8 = 2;
const FORMAT_WITHOUT_SUCCESSIONS: u8 = 1;
const NOTHING_ACCEPTED: u8 = 0;
const ACCEPTED_LIVE: u8 = 1;
const ACCEPTED_LIVE_EXPIRING: u8 = 2;
const ACCEPTED_TOMBSTONE: u8 = 3;

/// Bytes an encoded [`AcceptorState`] adds to the accepted value, at most: format; promised
/// ballot; the commit's ballot, version and base; the count of successions and each one's
/// version and base; kind; the acceptance's ballot and base; the entry's version and expiry or
/// deletion time.
pub const ACCEPTOR_STATE_OVERHEAD_BYTES: usize =
    COMMIT_END + 1 + PAXOS_SUCCESSIONS_MAX * SUCCESSION_BYTES + 1 + 2 * 8 + 2 * 8;

/// Where an encoded state's commit ends (and, in the first format, its kind byte is).
const COMMIT_END: usize = 1 + 8 + 3 * 8;
const SUCCESSION_BYTES: usize = 2 * 8;
/// Bytes between an acceptance's kind byte and its value.
const ACCEPTANCE_HEADER_BYTES: usize = 4 * 8;

impl AcceptorState {
    /// Phase 1: promises `ballot` if it is above every ballot promised so far. Returns whether it
    /// did; the state changes only then.
    pub fn prepare(&mut self, ballot: u64) -> bool {
        if ballot > self.promised {
            self.promised = ballot;
            true
        } else {
            false
        }
    }

    /// Phase 2: accepts `entry`, decided on the state of version `based_on`, at `ballot` unless
    /// a higher ballot was promised. Returns whether it did; the state changes only then.
    pub fn propose(&mut self, ballot: u64, based_on: u64, entry: PeerEntry) -> bool {
        if ballot < self.promised {
            return false;
        }
        self.promised = ballot;
        self.accepted = Some(Accepted { ballot, based_on, entry });
        true
    }

    /// Phase 3: records that the proposal chosen at `ballot` (its entry's `version`, decided on
    /// the state of version `based_on`) was applied here. Returns whether the state changed.
    /// A commit older than the last one (they can arrive out of order) changes only the
    /// successions.
    pub fn commit(&mut self, ballot: u64, version: u64, based_on: u64) -> bool {
        let recorded = self.record_succession(Succession { version, based_on });
        if ballot <= self.committed {
            return recorded;
        }
        self.committed = ballot;
        self.committed_version = version;
        self.committed_based_on = based_on;
        if self.accepted.as_ref().is_some_and(|accepted| accepted.ballot <= ballot) {
            self.accepted = None;
        }
        true
    }

    /// Keeps `succession` among the [`PAXOS_SUCCESSIONS_MAX`] with the highest versions.
    /// Returns whether it was not known and is kept.
    fn record_succession(&mut self, succession: Succession) -> bool {
        if succession.version == 0 {
            return false;
        }
        let Err(at) = self.successions.binary_search_by_key(&succession.version, |known| known.version)
        else {
            return false;
        };
        if at == 0 && self.successions.len() >= PAXOS_SUCCESSIONS_MAX {
            return false;
        }
        self.successions.insert(at, succession);
        if self.successions.len() > PAXOS_SUCCESSIONS_MAX {
            self.successions.remove(0);
        }
        true
    }

    /// The answer to a prepare: `granted` as [`AcceptorState::prepare`] returned, with the
    /// replica's current entry head.
    pub fn promise(&self, granted: bool, current: Option<EntryHead>) -> Promise {
        Promise {
            granted,
            promised: self.promised,
            committed: self.committed,
            committed_version: self.committed_version,
            committed_based_on: self.committed_based_on,
            accepted: self.accepted.clone(),
            current,
            successions: self.successions.clone(),
        }
    }

    /// The answer to a proposal.
    pub fn acceptance(&self, accepted: bool) -> Acceptance {
        Acceptance { accepted, promised: self.promised }
    }

    /// The state as stored: little-endian fields, then the accepted value's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let data = match &self.accepted {
            Some(Accepted { entry: PeerEntry { value: PeerValue::Live { data, .. }, .. }, .. }) => data.len(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(ACCEPTOR_STATE_OVERHEAD_BYTES + data);
        out.push(FORMAT);
        for word in [self.promised, self.committed, self.committed_version, self.committed_based_on] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        debug_assert!(self.successions.len() <= PAXOS_SUCCESSIONS_MAX);
        out.push(self.successions.len() as u8);
        for succession in &self.successions {
            out.extend_from_slice(&succession.version.to_le_bytes());
            out.extend_from_slice(&succession.based_on.to_le_bytes());
        }
        match &self.accepted {
            None => out.push(NOTHING_ACCEPTED),
            Some(Accepted { ballot, based_on, entry }) => {
                let (kind, time) = match &entry.value {
                    PeerValue::Live { expires_at_ms: None, .. } => (ACCEPTED_LIVE, 0),
                    PeerValue::Live { expires_at_ms: Some(at), .. } => (ACCEPTED_LIVE_EXPIRING, *at),
                    PeerValue::Tombstone { deleted_at_ms } => (ACCEPTED_TOMBSTONE, *deleted_at_ms),
                };
                out.push(kind);
                for word in [*ballot, *based_on, entry.version, time] {
                    out.extend_from_slice(&word.to_le_bytes());
                }
                if let PeerValue::Live { data, .. } = &entry.value {
                    out.extend_from_slice(data);
                }
            }
        }
        out
    }

    /// Decodes what [`AcceptorState::encode`] wrote; the accepted value is a slice of `bytes`.
    pub fn decode(bytes: &Bytes) -> Result<Self, AcceptorStateError> {
        let error = |reason| AcceptorStateError { length: bytes.len(), reason };
        let word = |at: usize| -> Result<u64, AcceptorStateError> {
            let slice = bytes.get(at..at + 8).ok_or_else(|| error("it is cut short"))?;
            Ok(u64::from_le_bytes(slice.try_into().expect("eight bytes")))
        };
        let mut state = AcceptorState {
            promised: word(1)?,
            committed: word(9)?,
            committed_version: word(17)?,
            committed_based_on: word(25)?,
            accepted: None,
            successions: Vec::new(),
        };
        let kind_offset = match bytes.first() {
            Some(&FORMAT) => {
                let count = usize::from(*bytes.get(COMMIT_END).ok_or_else(|| error("it is cut short"))?);
                if count > PAXOS_SUCCESSIONS_MAX {
                    return Err(error("it holds more successions than the limit"));
                }
                for n in 0..count {
                    let at = COMMIT_END + 1 + n * SUCCESSION_BYTES;
                    state.successions.push(Succession { version: word(at)?, based_on: word(at + 8)? });
                }
                if !state.successions.windows(2).all(|pair| pair[0].version < pair[1].version) {
                    return Err(error("its successions are out of order"));
                }
                COMMIT_END + 1 + count * SUCCESSION_BYTES
            }
            Some(&FORMAT_WITHOUT_SUCCESSIONS) => COMMIT_END,
            _ => return Err(error("its format byte is unknown")),
        };
        let kind = *bytes.get(kind_offset).ok_or_else(|| error("it is cut short"))?;
        if kind == NOTHING_ACCEPTED {
            if bytes.len() != kind_offset + 1 {
                return Err(error("it has bytes after an empty acceptance"));
            }
            return Ok(state);
        }
        let at = kind_offset + 1;
        let (ballot, based_on, version, time) = (word(at)?, word(at + 8)?, word(at + 16)?, word(at + 24)?);
        let data = bytes.slice((at + ACCEPTANCE_HEADER_BYTES).min(bytes.len())..);
        let value = match kind {
            ACCEPTED_LIVE => PeerValue::Live { data, expires_at_ms: None },
            ACCEPTED_LIVE_EXPIRING => PeerValue::Live { data, expires_at_ms: Some(time) },
            ACCEPTED_TOMBSTONE if data.is_empty() => PeerValue::Tombstone { deleted_at_ms: time },
            ACCEPTED_TOMBSTONE => return Err(error("a tombstone carries a value")),
            _ => return Err(error("its kind byte is unknown")),
        };
        state.accepted = Some(Accepted { ballot, based_on, entry: PeerEntry { version, value } });
        Ok(state)
    }
}

/// Until when a replica that lost its data (and with it its Paxos state) refuses Paxos
/// requests after starting at `started_ms`: every swap that was running when it lost its
/// promises has ended by then (a coordinator gives a swap at most twice `replica_timeout_ms`),
/// with `max_clock_skew_ms` for the coordinators' clocks. Past it, a forgotten promise or
/// acceptance can only have been part of a swap that ended; one chosen and committed somewhere
/// comes back with the data anti-entropy restores, which the rebuild gate waits for too.
pub fn forgetful_until_ms(started_ms: u64, replica_timeout_ms: u64, max_clock_skew_ms: u64) -> u64 {
    started_ms.saturating_add(2 * replica_timeout_ms).saturating_add(max_clock_skew_ms)
}

/// How long a contended swap pauses before its next attempt (the driver's `Retry` with
/// `contended`): 1 ms up to 2 ms × 2^attempt, at most 32 ms, spread by the ballot's bits so
/// that racing coordinators draw different pauses without a random number generator. The
/// ceiling stays short of the time in which a hot key commits [`PAXOS_SUCCESSIONS_MAX`] other
/// swaps, so that a swap retried after its pause still finds the succession that settles its
/// earlier proposal: with a ceiling of 128 ms, eight clients incrementing one key through one
/// node saw 13 of 1,600 increments answered `Indeterminate`, with 32 ms 0 or 1.
pub fn contention_pause_ms(ballot: u64, attempt: u32) -> u64 {
    let ceiling = 2u64 << attempt.min(4);
    let spread = ballot.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    1 + spread % ceiling
}

/// What one compare-and-swap asks: write `data` (expiring at `expires_at_ms`) under `key` if the
/// key's live value has the `expected` version, or is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasRequest {
    pub key: Bytes,
    pub expected: Expected,
    pub data: Bytes,
    pub expires_at_ms: Option<u64>,
}

/// How a compare-and-swap ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was written with this version.
    Swapped { version: u64 },
    /// The key's live value did not match: its version, or `None` when it has none.
    Mismatch { current_version: Option<u64> },
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasStep {
    /// Send this request to every target and feed each answer to [`PaxosCas::on_answer`].
    Send(PeerMessage),
    /// Commit this entry, chosen at `ballot` and decided on the state of version `based_on`, to
    /// the key's replicas ([`crate::Coordinator::commit`], hints for the replicas down included),
    /// waiting for the commit's acknowledgements, then call [`PaxosCas::on_committed`].
    Commit { ballot: u64, based_on: u64, entry: PeerEntry },
    /// Begin again with a ballot above `above`; `contended`: another proposer holds a higher
    /// ballot, so pause a random while first.
    Retry { above: u64, contended: bool },
    /// The swap is over.
    Answer(Result<CasOutcome, CoordinatorError>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Prepare { promises: Vec<Promise> },
    Propose { entry: PeerEntry, based_on: u64, ours: bool, accepted: usize },
    Commit { entry: PeerEntry, ours: bool },
}

/// One compare-and-swap, coordinated: the proposer's side of Paxos over the key's replicas.
///
/// The driver sends each [`CasStep::Send`] to the same `targets` replicas (the key's own
/// replicas that are up, never stand-ins: Paxos needs a fixed set of acceptors), feeds every
/// answer of the current step to [`PaxosCas::on_answer`] and drops answers of earlier steps
/// (a repeated answer of a target counts once).
#[derive(Clone, Debug)]
pub struct PaxosCas {
    request: CasRequest,
    targets: usize,
    quorum: usize,
    ballot: u64,
    phase: Phase,
    /// The targets that answered the current step: a repeated answer counts once.
    answered: Vec<Target>,
    /// Answers of the current step that did not count: refusals and failures.
    refused: usize,
    /// The highest ballot a replica said it promised.
    higher: u64,
    /// The last failure a replica answered.
    failure: Option<PeerFailure>,
    /// The entries this swap proposed: each one's version, and the version of the state it was
    /// decided on.
    own: Vec<(u64, u64)>,
    /// A proposal of this swap may have been accepted by some replicas without reaching a
    /// quorum: a later mismatch cannot be told for sure.
    maybe_applied: bool,
    /// Commits any replica reported (in a promise granted or not) that settle a proposal of
    /// this swap: of one of its entries, or of another entry from the state one was based on.
    /// Facts stay facts, so they are kept across attempts: an attempt whose prepares were
    /// refused while other swaps committed still learns of them.
    settling: Vec<Succession>,
}

impl PaxosCas {
    /// A swap over `targets` replicas that are up, of which `quorum` (a majority of the key's
    /// replicas, up or not) must answer each phase.
    pub fn new(request: CasRequest, targets: usize, quorum: usize) -> Self {
        PaxosCas {
            request,
            targets,
            quorum,
            ballot: 0,
            phase: Phase::Idle,
            answered: Vec::new(),
            refused: 0,
            higher: 0,
            failure: None,
            own: Vec::new(),
            maybe_applied: false,
            settling: Vec::new(),
        }
    }

    /// The key.
    pub fn key(&self) -> &Bytes {
        &self.request.key
    }

    /// The ballot of the current attempt.
    pub fn ballot(&self) -> u64 {
        self.ballot
    }

    /// Starts an attempt at `ballot`, which must be above every ballot used before: the driver
    /// draws it from its clock after observing [`CasStep::Retry`]'s `above`.
    pub fn begin(&mut self, ballot: u64) -> CasStep {
        if self.targets < self.quorum {
            return CasStep::Answer(Err(CoordinatorError::Unavailable {
                alive: self.targets,
                required: self.quorum,
            }));
        }
        debug_assert!(ballot > self.ballot, "ballots rise");
        self.ballot = ballot;
        self.reset_counts();
        self.phase = Phase::Prepare { promises: Vec::with_capacity(self.targets) };
        CasStep::Send(PeerMessage::PaxosPrepare { key: self.request.key.clone(), ballot })
    }

    fn reset_counts(&mut self) {
        self.answered.clear();
        self.refused = 0;
        self.higher = 0;
        self.failure = None;
    }

    /// Takes the answer of target `from` to the current step, at `now_ms` (which decides
    /// whether an expiring value is still live). `None`: wait for more answers.
    pub fn on_answer(&mut self, from: Target, answer: PeerMessage, now_ms: u64) -> Option<CasStep> {
        let expected = matches!(
            (&self.phase, &answer),
            (Phase::Prepare { .. }, PeerMessage::PaxosPromise { .. })
                | (Phase::Propose { .. }, PeerMessage::PaxosAccept { .. })
        );
        if !expected || self.answered.contains(&from) {
            return None;
        }
        self.answered.push(from);
        match (&mut self.phase, answer) {
            (Phase::Prepare { .. }, PeerMessage::PaxosPromise { result }) => {
                if let Ok(promise) = &result {
                    self.learn(promise);
                }
                let Phase::Prepare { promises } = &mut self.phase else { unreachable!("matched above") };
                match result {
                    Ok(promise) if promise.granted => promises.push(promise),
                    Ok(promise) => {
                        self.higher = self.higher.max(promise.promised);
                        self.refused += 1;
                    }
                    Err(failure) => {
                        self.failure = Some(failure);
                        self.refused += 1;
                    }
                }
                if promises.len() >= self.quorum {
                    let promises = std::mem::take(promises);
                    return Some(self.decide(promises, now_ms));
                }
                self.if_quorum_lost()
            }
            (Phase::Propose { accepted, .. }, PeerMessage::PaxosAccept { result }) => {
                match result {
                    Ok(acceptance) if acceptance.accepted => *accepted += 1,
                    Ok(acceptance) => {
                        self.higher = self.higher.max(acceptance.promised);
                        self.refused += 1;
                    }
                    Err(failure) => {
                        self.failure = Some(failure);
                        self.refused += 1;
                    }
                }
                if *accepted >= self.quorum {
                    let Phase::Propose { entry, based_on, ours, .. } =
                        std::mem::replace(&mut self.phase, Phase::Idle)
                    else {
                        unreachable!("matched above")
                    };
                    self.phase = Phase::Commit { entry: entry.clone(), ours };
                    return Some(CasStep::Commit { ballot: self.ballot, based_on, entry });
                }
                self.if_quorum_lost()
            }
            // An answer of another step, or of the wrong kind: not this step's.
            _ => None,
        }
    }

    /// When the refusals leave too few targets to reach a quorum: retry above a higher ballot,
    /// or fail with the replicas' failure.
    fn if_quorum_lost(&mut self) -> Option<CasStep> {
        if self.targets - self.refused >= self.quorum {
            return None;
        }
        if let Phase::Propose { ours: true, accepted, .. } = self.phase {
            // Replicas that accepted, that have not answered yet, or that failed after storing
            // it may hold the proposal.
            let unanswered = self.targets - self.refused - accepted;
            let ambiguous =
                self.failure.as_ref().is_some_and(|failure| !failure.code.refused_before_applying());
            if accepted > 0 || unanswered > 0 || ambiguous {
                self.maybe_applied = true;
            }
        }
        let may_be_applied = self.may_be_applied();
        self.phase = Phase::Idle;
        if self.higher > 0 {
            return Some(CasStep::Retry { above: self.higher, contended: true });
        }
        let failure = self.failure.clone().unwrap_or_else(|| {
            PeerFailure::new(ringkv_wire::peer::PeerErrorCode::Internal, "replicas refused without a reason")
        });
        let acks = self.targets - self.refused;
        let error = if may_be_applied {
            CoordinatorError::WriteIndeterminate { acks, required: self.quorum, failure }
        } else {
            CoordinatorError::ReplicasFailed { acks, required: self.quorum, failure }
        };
        Some(CasStep::Answer(Err(error)))
    }

    /// A quorum promised: finish what is in progress, or compare and propose.
    fn decide(&mut self, promises: Vec<Promise>, now_ms: u64) -> CasStep {
        let newest = promises.iter().filter_map(|promise| promise.current).max_by_key(|head| head.version);
        let newest_version = newest.map_or(0, |head| head.version);
        // An entry of this swap that some replica holds or committed was chosen: commit it again
        // (at its own ballot, which records nothing new where a higher commit is known) so that
        // it reaches the level asked for, then answer.
        let chosen = promises
            .iter()
            .filter_map(|promise| promise.current.map(|head| head.version))
            .chain(self.settling.iter().map(|succession| succession.version))
            .find_map(|version| self.own.iter().copied().find(|(own, _)| *own == version));
        if let Some((version, based_on)) = chosen {
            let entry = self.own_entry(version);
            self.phase = Phase::Commit { entry: entry.clone(), ours: true };
            return CasStep::Commit { ballot: version, based_on, entry };
        }
        let committed = promises.iter().map(|promise| promise.committed).max().unwrap_or(0);
        let in_progress = promises
            .iter()
            .filter_map(|promise| promise.accepted.as_ref())
            .filter(|accepted| accepted.ballot > committed)
            .max_by_key(|accepted| accepted.ballot)
            .cloned();
        if let Some(Accepted { based_on, entry, .. }) = in_progress {
            let ours = self.own.iter().any(|(own, _)| *own == entry.version);
            return self.propose(entry, based_on, ours);
        }
        if self.ballot <= newest_version {
            self.phase = Phase::Idle;
            return CasStep::Retry { above: newest_version, contended: false };
        }
        let live = newest.filter(|head| head.is_live_at(now_ms)).map(|head| head.version);
        let matches = match self.request.expected {
            Expected::Absent => live.is_none(),
            Expected::Version(version) => live == Some(version),
        };
        if !matches {
            self.phase = Phase::Idle;
            if self.maybe_applied && !self.own_proposals_lost() {
                return CasStep::Answer(Err(CoordinatorError::WriteIndeterminate {
                    acks: 0,
                    required: self.quorum,
                    failure: PeerFailure::new(
                        ringkv_wire::peer::PeerErrorCode::Internal,
                        "an earlier proposal of this compare-and-swap reached some replicas, and the key has \
                         changed since",
                    ),
                }));
            }
            return CasStep::Answer(Ok(CasOutcome::Mismatch { current_version: live }));
        }
        let entry = self.own_entry(self.ballot);
        self.own.push((entry.version, newest_version));
        self.propose(entry, newest_version, true)
    }

    /// The entry this swap proposed at `version` (its ballot then).
    fn own_entry(&self, version: u64) -> PeerEntry {
        PeerEntry {
            version,
            value: PeerValue::Live {
                data: self.request.data.clone(),
                expires_at_ms: self.request.expires_at_ms,
            },
        }
    }

    /// What to answer when the driver gives the swap up before it ends (`failure` says why): an
    /// indeterminate failure when a proposal of this swap may have been accepted, else the
    /// failure as it is.
    pub fn abandon(&self, failure: PeerFailure) -> CoordinatorError {
        if self.may_be_applied() {
            CoordinatorError::WriteIndeterminate { acks: 0, required: self.quorum, failure }
        } else {
            CoordinatorError::ReplicasFailed { acks: 0, required: self.quorum, failure }
        }
    }

    /// Whether a proposal of this swap may have been accepted: one of an earlier attempt, or the
    /// one this attempt proposes or commits.
    fn may_be_applied(&self) -> bool {
        self.maybe_applied
            || matches!(self.phase, Phase::Propose { ours: true, .. } | Phase::Commit { ours: true, .. })
    }

    /// Whether every proposal of this swap lost its state's succession: some replica committed
    /// another entry based on the state that proposal was based on. A state has one successor,
    /// so such a proposal is never chosen.
    fn own_proposals_lost(&self) -> bool {
        self.own.iter().all(|&(version, based_on)| {
            self.settling
                .iter()
                .any(|succession| succession.based_on == based_on && succession.version != version)
        })
    }

    /// Keeps the commits `promise` reports that settle a proposal of this swap.
    fn learn(&mut self, promise: &Promise) {
        let last = (promise.committed > 0).then_some(Succession {
            version: promise.committed_version,
            based_on: promise.committed_based_on,
        });
        for succession in last.iter().chain(&promise.successions) {
            let settles = self
                .own
                .iter()
                .any(|&(version, based_on)| succession.version == version || succession.based_on == based_on);
            if settles && !self.settling.contains(succession) {
                self.settling.push(*succession);
            }
        }
    }

    fn propose(&mut self, entry: PeerEntry, based_on: u64, ours: bool) -> CasStep {
        self.reset_counts();
        self.phase = Phase::Propose { entry: entry.clone(), based_on, ours, accepted: 0 };
        CasStep::Send(PeerMessage::PaxosPropose {
            key: self.request.key.clone(),
            ballot: self.ballot,
            based_on,
            entry,
        })
    }

    /// The commit's outcome: for this swap's own entry the answer, for an entry finished for
    /// another proposer a new attempt.
    pub fn on_committed(&mut self, result: Result<(), CoordinatorError>) -> CasStep {
        let Phase::Commit { entry, ours } = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return CasStep::Answer(Err(CoordinatorError::WriteIndeterminate {
                acks: 0,
                required: self.quorum,
                failure: PeerFailure::new(ringkv_wire::peer::PeerErrorCode::Internal, "a commit out of turn"),
            }));
        };
        match (result, ours) {
            (Ok(()), true) => CasStep::Answer(Ok(CasOutcome::Swapped { version: entry.version })),
            (Ok(()), false) => CasStep::Retry { above: entry.version, contended: false },
            // Chosen (a quorum accepted it) but not visible on enough replicas yet: the swap
            // happened, but the commit's consistency was not met.
            (Err(error), true) => CasStep::Answer(Err(indeterminate(error))),
            (Err(_), false) => CasStep::Retry { above: entry.version, contended: true },
        }
    }

    /// The current step's answers did not all come within the driver's step timeout (a
    /// replica's timeout): the replicas still silent count as failed, since their requests or
    /// answers may be lost, and the swap tries again at a higher ballot, after a pause. `None`
    /// when no step waits for answers (a commit has its own timeout).
    pub fn on_step_timeout(&mut self) -> Option<CasStep> {
        match self.phase {
            Phase::Prepare { .. } | Phase::Propose { ours: false, .. } => {}
            // A silent replica may have accepted it.
            Phase::Propose { ours: true, .. } => self.maybe_applied = true,
            Phase::Idle | Phase::Commit { .. } => return None,
        }
        self.phase = Phase::Idle;
        Some(CasStep::Retry { above: self.higher.max(self.ballot), contended: true })
    }

    /// The swap's deadline passed before it ended: a timeout (its outcome unknown) when a
    /// proposal of this swap may have been accepted, else a failure that certainly changed
    /// nothing (only prepares, or other swaps' proposals finished, were sent).
    pub fn on_deadline(&self, timeout_ms: u64) -> CasStep {
        let acks = match &self.phase {
            Phase::Prepare { promises } => promises.len(),
            Phase::Propose { accepted, .. } => *accepted,
            Phase::Idle | Phase::Commit { .. } => 0,
        };
        if self.may_be_applied() {
            return CasStep::Answer(Err(CoordinatorError::Timeout {
                acks,
                required: self.quorum,
                timeout_ms,
            }));
        }
        let failure = PeerFailure::new(
            ringkv_wire::peer::PeerErrorCode::Internal,
            format!("no quorum answered within {timeout_ms} ms, before anything of this swap was proposed"),
        );
        CasStep::Answer(Err(CoordinatorError::ReplicasFailed { acks, required: self.quorum, failure }))
    }
}

/// A commit that failed: the swap was chosen, so its outcome for the client is unknown rather
/// than failed.
fn indeterminate(error: CoordinatorError) -> CoordinatorError {
    let reason = format!("the swap was chosen but its commit failed: {error}");
    match error {
        CoordinatorError::ReplicasFailed { acks, required, failure }
        | CoordinatorError::WriteIndeterminate { acks, required, failure } => {
            CoordinatorError::WriteIndeterminate { acks, required, failure }
        }
        // A timeout already says the write may be applied.
        CoordinatorError::Timeout { .. } => error,
        CoordinatorError::Unavailable { required, .. } => CoordinatorError::WriteIndeterminate {
            acks: 0,
            required,
            failure: PeerFailure::new(ringkv_wire::peer::PeerErrorCode::Internal, reason),
        },
        CoordinatorError::Overloaded { .. } => CoordinatorError::WriteIndeterminate {
            acks: 0,
            required: 0,
            failure: PeerFailure::new(ringkv_wire::peer::PeerErrorCode::Overloaded, reason),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_wire::peer::PeerErrorCode;

    fn live(version: u64, data: &'static [u8]) -> PeerEntry {
        PeerEntry { version, value: PeerValue::Live { data: Bytes::from_static(data), expires_at_ms: None } }
    }

    fn target(node_id: u16) -> Target {
        Target { node_id, shard: 0 }
    }

    fn swap(expected: Expected) -> PaxosCas {
        let request = CasRequest {
            key: Bytes::from_static(b"k"),
            expected,
            data: Bytes::from_static(b"new"),
            expires_at_ms: None,
        };
        PaxosCas::new(request, 3, 2)
    }

    fn promise(accepted: Option<(u64, PeerEntry)>, current: Option<&PeerEntry>) -> PeerMessage {
        committed_promise(0, accepted, current)
    }

    fn accepted(ballot: u64, based_on: u64, entry: PeerEntry) -> Accepted {
        Accepted { ballot, based_on, entry }
    }

    /// A promise from a replica whose last commit is (ballot, version, based_on).
    fn promise_after(
        commit: (u64, u64, u64),
        accepted: Option<Accepted>,
        current: Option<&PeerEntry>,
    ) -> PeerMessage {
        let (committed, committed_version, committed_based_on) = commit;
        let current = current.map(EntryHead::of);
        PeerMessage::PaxosPromise {
            result: Ok(Promise {
                granted: true,
                promised: 0,
                committed,
                committed_version,
                committed_based_on,
                accepted,
                current,
                successions: Vec::new(),
            }),
        }
    }

    /// A swap from version 5 whose proposal (ballot 100) one replica accepted before a ballot
    /// of 200 took the other two, begun again at `ballot`.
    fn overtaken_then_retried(ballot: u64) -> PaxosCas {
        let mut cas = swap(Expected::Version(5));
        cas.begin(100);
        cas.on_answer(target(1), promise(None, Some(&live(5, b"old"))), 0);
        cas.on_answer(target(2), promise(None, Some(&live(5, b"old"))), 0);
        let refused = PeerMessage::PaxosAccept { result: Ok(Acceptance { accepted: false, promised: 200 }) };
        cas.on_answer(target(1), accept(), 0);
        cas.on_answer(target(2), refused.clone(), 0);
        assert!(matches!(cas.on_answer(target(3), refused, 0), Some(CasStep::Retry { .. })));
        cas.begin(ballot);
        cas
    }

    /// `promise` refused: the replica had promised `promised`.
    fn refused(mut promise: PeerMessage, promised: u64) -> PeerMessage {
        if let PeerMessage::PaxosPromise { result: Ok(promise) } = &mut promise {
            (promise.granted, promise.promised) = (false, promised);
        }
        promise
    }

    /// A promise from a replica that applied these commits, (version, based_on) each, the last
    /// of them at ballot = version.
    fn promise_with_successions(successions: &[(u64, u64)], current: Option<&PeerEntry>) -> PeerMessage {
        let (version, based_on) = successions.last().copied().unwrap_or_default();
        let mut message = promise_after((version, version, based_on), None, current);
        if let PeerMessage::PaxosPromise { result: Ok(promise) } = &mut message {
            promise.successions =
                successions.iter().map(|&(version, based_on)| Succession { version, based_on }).collect();
        }
        message
    }

    fn committed_promise(
        committed: u64,
        accepted: Option<(u64, PeerEntry)>,
        current: Option<&PeerEntry>,
    ) -> PeerMessage {
        let accepted = accepted.map(|(ballot, entry)| Accepted { ballot, based_on: 0, entry });
        promise_after((committed, 0, 0), accepted, current)
    }

    fn accept() -> PeerMessage {
        PeerMessage::PaxosAccept { result: Ok(Acceptance { accepted: true, promised: 0 }) }
    }

    #[test]
    fn states_round_trip_through_their_encoding() {
        let states = [
            AcceptorState::default(),
            AcceptorState {
                promised: 9,
                committed: 3,
                committed_version: 2,
                committed_based_on: 1,
                accepted: Some(accepted(7, 2, live(5, b"value"))),
                successions: vec![Succession { version: 2, based_on: 1 }],
            },
            AcceptorState {
                promised: 9,
                accepted: Some(accepted(
                    9,
                    0,
                    PeerEntry {
                        version: 9,
                        value: PeerValue::Live { data: Bytes::new(), expires_at_ms: Some(1_000) },
                    },
                )),
                ..AcceptorState::default()
            },
            AcceptorState {
                promised: 12,
                committed: u64::MAX,
                committed_version: u64::MAX,
                committed_based_on: u64::MAX,
                accepted: Some(accepted(
                    12,
                    u64::MAX,
                    PeerEntry { version: 3, value: PeerValue::Tombstone { deleted_at_ms: 44 } },
                )),
                successions: (0..PAXOS_SUCCESSIONS_MAX as u64)
                    .map(|n| Succession { version: u64::MAX - 31 + n, based_on: n })
                    .collect(),
            },
        ];
        for state in states {
            let encoded = Bytes::from(state.encode());
            assert!(encoded.len() <= ACCEPTOR_STATE_OVERHEAD_BYTES + 5);
            assert_eq!(AcceptorState::decode(&encoded), Ok(state.clone()));
            let data = match &state.accepted {
                Some(Accepted { entry: PeerEntry { value: PeerValue::Live { data, .. }, .. }, .. }) => {
                    data.len()
                }
                _ => 0,
            };
            for cut in 0..encoded.len() {
                let decoded = AcceptorState::decode(&encoded.slice(..cut));
                // A live value's bytes run to the end, so only cuts into the header must fail.
                if cut < encoded.len() - data {
                    assert!(decoded.is_err(), "{state:?} cut at {cut}");
                }
            }
        }
        let mut unknown = AcceptorState::default().encode();
        unknown[0] = 3;
        assert!(AcceptorState::decode(&Bytes::from(unknown)).is_err());
        let mut too_many = AcceptorState::default().encode();
        too_many[COMMIT_END] = PAXOS_SUCCESSIONS_MAX as u8 + 1;
        assert!(AcceptorState::decode(&Bytes::from(too_many)).is_err());
    }

    /// States stored before replicas kept their successions read as having none.
    #[test]
    fn a_state_stored_without_successions_still_reads() {
        let mut stored = vec![FORMAT_WITHOUT_SUCCESSIONS];
        for word in [9u64, 3, 2, 1, 7, 2, 5, 0] {
            stored.extend_from_slice(&word.to_le_bytes());
            if stored.len() == COMMIT_END {
                stored.push(ACCEPTED_LIVE);
            }
        }
        stored.extend_from_slice(b"value");
        let expected = AcceptorState {
            promised: 9,
            committed: 3,
            committed_version: 2,
            committed_based_on: 1,
            accepted: Some(accepted(7, 2, live(5, b"value"))),
            successions: Vec::new(),
        };
        assert_eq!(AcceptorState::decode(&Bytes::from(stored)), Ok(expected));
        let mut empty = vec![FORMAT_WITHOUT_SUCCESSIONS];
        empty.extend_from_slice(&[0; 32]);
        empty.push(NOTHING_ACCEPTED);
        assert_eq!(AcceptorState::decode(&Bytes::from(empty)), Ok(AcceptorState::default()));
    }

    #[test]
    fn an_acceptor_keeps_the_successions_with_the_highest_versions() {
        let mut state = AcceptorState::default();
        assert!(state.commit(20, 20, 10));
        assert!(state.commit(10, 10, 0), "an older commit arriving late is still a succession");
        assert_eq!(state.committed, 20);
        assert!(!state.commit(10, 10, 0), "each is kept once");
        let max = PAXOS_SUCCESSIONS_MAX as u64;
        for version in 3..=max + 1 {
            state.commit(100 + version, 100 + version, 100 + version - 1);
        }
        assert_eq!(state.successions.len(), PAXOS_SUCCESSIONS_MAX);
        assert!(state.successions.windows(2).all(|pair| pair[0].version < pair[1].version));
        assert_eq!(state.successions[0], Succession { version: 20, based_on: 10 }, "the oldest went first");
        assert!(!state.commit(5, 5, 0), "older than every one kept");
        let round_trip = AcceptorState::decode(&Bytes::from(state.encode()));
        assert_eq!(round_trip.map(|decoded| decoded.successions), Ok(state.successions.clone()));
        assert_eq!(state.promise(true, None).successions, state.successions);
    }

    #[test]
    fn an_acceptor_promises_only_higher_ballots_and_accepts_none_below_its_promise() {
        let mut state = AcceptorState::default();
        assert!(state.prepare(10));
        assert!(!state.prepare(10), "a ballot is promised once");
        assert!(!state.prepare(9));
        assert!(!state.propose(9, 0, live(9, b"a")));
        assert_eq!(state.accepted, None);
        assert!(state.propose(10, 0, live(10, b"a")));
        assert!(state.prepare(11));
        assert!(!state.propose(10, 0, live(10, b"b")), "promised 11 since");
        assert_eq!(state.accepted, Some(accepted(10, 0, live(10, b"a"))));
        assert_eq!(state.acceptance(false), Acceptance { accepted: false, promised: 11 });
    }

    #[test]
    fn a_matching_swap_proposes_at_its_ballot_and_answers_after_the_commit() {
        let mut cas = swap(Expected::Version(5));
        let current = live(5, b"old");
        assert!(matches!(cas.begin(100), CasStep::Send(PeerMessage::PaxosPrepare { ballot: 100, .. })));
        assert_eq!(cas.on_answer(target(1), promise(None, Some(&current)), 0), None);
        assert_eq!(cas.on_answer(target(1), promise(None, Some(&current)), 0), None, "a repeat counts once");
        let step = cas.on_answer(target(2), promise(None, None), 0).unwrap();
        let CasStep::Send(PeerMessage::PaxosPropose { ballot: 100, entry, .. }) = step else {
            panic!("{step:?}")
        };
        assert_eq!(entry, live(100, b"new"));
        assert_eq!(cas.on_answer(target(3), accept(), 0), None);
        assert_eq!(
            cas.on_answer(target(1), accept(), 0),
            Some(CasStep::Commit { ballot: 100, based_on: 5, entry })
        );
        assert_eq!(cas.on_committed(Ok(())), CasStep::Answer(Ok(CasOutcome::Swapped { version: 100 })));
    }

    #[test]
    fn a_mismatch_is_answered_with_the_newest_live_version_of_the_quorum() {
        let mut cas = swap(Expected::Absent);
        cas.begin(100);
        cas.on_answer(target(1), promise(None, Some(&live(5, b"old"))), 0);
        let step = cas.on_answer(target(2), promise(None, Some(&live(7, b"newer"))), 0);
        assert_eq!(step, Some(CasStep::Answer(Ok(CasOutcome::Mismatch { current_version: Some(7) }))));
        // An expired value is absent.
        let mut cas = swap(Expected::Version(7));
        cas.begin(100);
        let expiring =
            PeerEntry { version: 7, value: PeerValue::Live { data: Bytes::new(), expires_at_ms: Some(50) } };
        cas.on_answer(target(1), promise(None, Some(&expiring)), 60);
        let step = cas.on_answer(target(2), promise(None, None), 60);
        assert_eq!(step, Some(CasStep::Answer(Ok(CasOutcome::Mismatch { current_version: None }))));
    }

    #[test]
    fn a_proposal_accepted_but_not_committed_is_finished_before_anything_else() {
        let mut cas = swap(Expected::Version(5));
        cas.begin(100);
        let stranded = live(80, b"stranded");
        cas.on_answer(target(1), promise(Some((80, stranded.clone())), Some(&live(5, b"old"))), 0);
        let step = cas.on_answer(target(2), promise(None, Some(&live(5, b"old"))), 0).unwrap();
        // Proposed again at this ballot, keeping its own version.
        assert_eq!(
            step,
            CasStep::Send(PeerMessage::PaxosPropose {
                key: Bytes::from_static(b"k"),
                ballot: 100,
                based_on: 0,
                entry: stranded.clone()
            })
        );
        cas.on_answer(target(1), accept(), 0);
        assert_eq!(
            cas.on_answer(target(2), accept(), 0),
            Some(CasStep::Commit { ballot: 100, based_on: 0, entry: stranded })
        );
        assert_eq!(cas.on_committed(Ok(())), CasStep::Retry { above: 80, contended: false });
        // The next attempt finds the finished proposal current: the compare fails.
        cas.begin(101);
        cas.on_answer(target(1), committed_promise(100, None, Some(&live(80, b"stranded"))), 0);
        let step = cas.on_answer(target(3), committed_promise(100, None, Some(&live(80, b"stranded"))), 0);
        assert_eq!(step, Some(CasStep::Answer(Ok(CasOutcome::Mismatch { current_version: Some(80) }))));
    }

    #[test]
    fn a_higher_promise_retries_above_it_and_a_stranded_own_proposal_is_not_called_a_mismatch() {
        let mut cas = swap(Expected::Version(5));
        cas.begin(100);
        cas.on_answer(target(1), promise(None, Some(&live(5, b"old"))), 0);
        cas.on_answer(target(2), promise(None, Some(&live(5, b"old"))), 0);
        // One replica accepts, two have promised a higher ballot since.
        let refused =
            |promised| PeerMessage::PaxosAccept { result: Ok(Acceptance { accepted: false, promised }) };
        cas.on_answer(target(1), accept(), 0);
        assert_eq!(cas.on_answer(target(2), refused(300), 0), None);
        assert_eq!(
            cas.on_answer(target(3), refused(200), 0),
            Some(CasStep::Retry { above: 300, contended: true })
        );
        // Its proposal may be chosen yet; the key changed meanwhile: not a mismatch for sure.
        cas.begin(301);
        cas.on_answer(target(2), promise(None, Some(&live(250, b"other"))), 0);
        let step = cas.on_answer(target(3), promise(None, Some(&live(250, b"other"))), 0).unwrap();
        assert!(
            matches!(step, CasStep::Answer(Err(CoordinatorError::WriteIndeterminate { .. }))),
            "{step:?}"
        );
        // Had a later prepare found it in progress, it would have been finished and answered.
        let mut cas = swap(Expected::Version(5));
        cas.begin(100);
        cas.on_answer(target(1), promise(None, Some(&live(5, b"old"))), 0);
        cas.on_answer(target(2), promise(None, Some(&live(5, b"old"))), 0);
        cas.on_answer(target(1), accept(), 0);
        cas.on_answer(target(2), refused(300), 0);
        cas.on_answer(target(3), refused(300), 0);
        cas.begin(301);
        cas.on_answer(target(1), promise(Some((100, live(100, b"new"))), Some(&live(5, b"old"))), 0);
        cas.on_answer(target(3), promise(None, Some(&live(5, b"old"))), 0);
        cas.on_answer(target(1), accept(), 0);
        let step = cas.on_answer(target(3), accept(), 0).unwrap();
        assert_eq!(step, CasStep::Commit { ballot: 301, based_on: 0, entry: live(100, b"new") });
        assert_eq!(cas.on_committed(Ok(())), CasStep::Answer(Ok(CasOutcome::Swapped { version: 100 })));
    }

    #[test]
    fn too_few_replicas_or_failing_ones_end_the_swap() {
        let request = CasRequest {
            key: Bytes::from_static(b"k"),
            expected: Expected::Absent,
            data: Bytes::new(),
            expires_at_ms: None,
        };
        let mut cas = PaxosCas::new(request, 1, 2);
        assert_eq!(
            cas.begin(1),
            CasStep::Answer(Err(CoordinatorError::Unavailable { alive: 1, required: 2 }))
        );
        let mut cas = swap(Expected::Absent);
        cas.begin(100);
        let failed = |code| PeerMessage::PaxosPromise { result: Err(PeerFailure::new(code, "no")) };
        assert_eq!(cas.on_answer(target(1), failed(PeerErrorCode::Rebuilding), 0), None);
        let step = cas.on_answer(target(2), failed(PeerErrorCode::StorageFailed), 0).unwrap();
        assert!(matches!(step, CasStep::Answer(Err(CoordinatorError::ReplicasFailed { .. }))), "{step:?}");
        // A ballot at or below the newest entry seen is retried above it.
        let mut cas = swap(Expected::Absent);
        cas.begin(100);
        cas.on_answer(target(1), promise(None, Some(&live(150, b"ahead"))), 0);
        let step = cas.on_answer(target(2), promise(None, None), 0);
        assert_eq!(step, Some(CasStep::Retry { above: 150, contended: false }));
    }

    #[test]
    fn a_commit_is_recorded_once_and_drops_the_proposal_it_supersedes() {
        let mut state = AcceptorState::default();
        assert!(state.propose(30, 5, live(10, b"a")));
        assert!(!state.commit(0, 0, 0));
        assert!(state.commit(20, 8, 5));
        assert_eq!(
            state.accepted,
            Some(accepted(30, 5, live(10, b"a"))),
            "a commit below the acceptance keeps it"
        );
        assert!(state.commit(30, 10, 5));
        assert_eq!((state.committed_version, state.committed_based_on), (10, 5));
        assert_eq!((state.committed, state.accepted.clone()), (30, None));
        assert!(state.commit(25, 9, 5), "a late commit is a succession");
        assert_eq!((state.committed, state.committed_version), (30, 10), "the last commit only rises");
        assert!(!state.commit(25, 9, 5));
    }

    /// A proposal re-proposed keeps its entry's version, so versions do not follow ballots. Here
    /// E1 (version 10) was chosen when re-proposed at ballot 30 and committed on replica 1; E2
    /// (version 20, accepted at ballot 20 on replica 2 only) was never chosen. A rule on versions
    /// would call E2 in progress (its version is above every current one) and choose it too,
    /// from the state E1 replaced; the commit ballots rule it out.
    #[test]
    fn a_stale_proposal_with_a_higher_version_is_not_taken_for_one_in_progress() {
        let mut cas = swap(Expected::Version(5));
        cas.begin(40);
        cas.on_answer(target(1), committed_promise(30, None, Some(&live(10, b"e1"))), 0);
        let step = cas.on_answer(
            target(2),
            committed_promise(0, Some((20, live(20, b"e2"))), Some(&live(5, b"old"))),
            0,
        );
        assert_eq!(step, Some(CasStep::Answer(Ok(CasOutcome::Mismatch { current_version: Some(10) }))));
        // Before E1's commit, the highest ballot wins: E1 is finished, not E2.
        let mut cas = swap(Expected::Version(5));
        cas.begin(40);
        cas.on_answer(target(1), promise(Some((30, live(10, b"e1"))), Some(&live(5, b"old"))), 0);
        let step = cas.on_answer(target(2), promise(Some((20, live(20, b"e2"))), Some(&live(5, b"old"))), 0);
        let Some(CasStep::Send(PeerMessage::PaxosPropose { ballot: 40, entry, .. })) = step else {
            panic!("{step:?}")
        };
        assert_eq!(entry, live(10, b"e1"));
    }

    #[test]
    fn a_chosen_swap_whose_commit_cannot_start_is_indeterminate_not_unavailable() {
        let mut cas = swap(Expected::Absent);
        cas.begin(100);
        cas.on_answer(target(1), promise(None, None), 0);
        cas.on_answer(target(2), promise(None, None), 0);
        cas.on_answer(target(1), accept(), 0);
        cas.on_answer(target(2), accept(), 0);
        let step = cas.on_committed(Err(CoordinatorError::Unavailable { alive: 1, required: 2 }));
        assert!(
            matches!(step, CasStep::Answer(Err(CoordinatorError::WriteIndeterminate { .. }))),
            "{step:?}"
        );
    }

    /// Two swaps from version 5 race: this one's proposal reached one replica before the other
    /// swap's higher ballot took the rest. On its retry the key has changed, and a replica's last
    /// commit (based on version 5, of another entry) says who succeeded version 5: the mismatch
    /// is exact. Without such a commit in sight the swap cannot tell.
    #[test]
    fn a_lost_race_is_a_mismatch_once_a_commit_names_the_winner() {
        let overtaken = || overtaken_then_retried(201);
        let winner = live(200, b"theirs");
        let mut cas = overtaken();
        cas.on_answer(target(2), promise_after((200, 200, 5), None, Some(&winner)), 0);
        let step = cas.on_answer(target(3), promise_after((200, 200, 5), None, Some(&winner)), 0);
        assert_eq!(step, Some(CasStep::Answer(Ok(CasOutcome::Mismatch { current_version: Some(200) }))));
        // The winner's commit is recorded nowhere the quorum sees (only its entry arrived).
        let mut cas = overtaken();
        cas.on_answer(target(2), promise_after((0, 0, 0), None, Some(&winner)), 0);
        let step = cas.on_answer(target(3), promise_after((0, 0, 0), None, Some(&winner)), 0).unwrap();
        assert!(
            matches!(step, CasStep::Answer(Err(CoordinatorError::WriteIndeterminate { .. }))),
            "{step:?}"
        );
        // A commit of this swap's own entry says it won, whatever came after it: it is committed
        // again at the level asked for, then answered.
        let mut cas = overtaken();
        cas.on_answer(target(1), promise_after((150, 100, 5), None, Some(&live(300, b"later"))), 0);
        let step = cas.on_answer(target(2), promise_after((0, 0, 0), None, Some(&live(300, b"later"))), 0);
        assert_eq!(step, Some(CasStep::Commit { ballot: 100, based_on: 5, entry: live(100, b"new") }));
        assert_eq!(cas.on_committed(Ok(())), CasStep::Answer(Ok(CasOutcome::Swapped { version: 100 })));
        // Given up before the end, a swap whose proposal may have been accepted is indeterminate.
        let cas = overtaken();
        let failure = PeerFailure::new(ringkv_wire::peer::PeerErrorCode::ClockSkew, "ahead");
        assert!(matches!(cas.abandon(failure.clone()), CoordinatorError::WriteIndeterminate { .. }));
        let mut fresh = swap(Expected::Absent);
        fresh.begin(1);
        assert!(matches!(fresh.abandon(failure), CoordinatorError::ReplicasFailed { .. }));
    }

    #[test]
    fn a_replica_that_lost_its_state_sits_out_every_swap_running_then() {
        let (started, timeout, skew) = (1_000_000, 2_000, 500);
        let until = forgetful_until_ms(started, timeout, skew);
        // A swap begun just before the loss gives up by its deadline, twice the replica timeout,
        // on a coordinator clock up to the skew bound behind.
        assert!(until >= started + 2 * timeout + skew);
        assert_eq!(forgetful_until_ms(u64::MAX - 1, timeout, skew), u64::MAX);
    }

    #[test]
    fn a_deadline_before_proposing_is_a_certain_failure_and_after_it_a_timeout() {
        let mut fresh = swap(Expected::Absent);
        fresh.begin(1);
        fresh.on_answer(target(1), promise(None, None), 0);
        let step = fresh.on_deadline(2_000);
        assert!(
            matches!(step, CasStep::Answer(Err(CoordinatorError::ReplicasFailed { acks: 1, .. }))),
            "{step:?}"
        );
        // Proposing: some replica may have accepted it.
        let mut proposing = swap(Expected::Absent);
        proposing.begin(1);
        proposing.on_answer(target(1), promise(None, None), 0);
        assert!(matches!(proposing.on_answer(target(2), promise(None, None), 0), Some(CasStep::Send(_))));
        let step = proposing.on_deadline(2_000);
        assert!(matches!(step, CasStep::Answer(Err(CoordinatorError::Timeout { .. }))), "{step:?}");
        // An earlier attempt's proposal may have been accepted: still unknown at a later prepare.
        let step = overtaken_then_retried(201).on_deadline(2_000);
        assert!(matches!(step, CasStep::Answer(Err(CoordinatorError::Timeout { .. }))), "{step:?}");
    }

    #[test]
    fn a_step_short_of_answers_is_tried_again_at_a_higher_ballot() {
        // A prepare one replica answered: the others' messages may be lost.
        let mut cas = swap(Expected::Absent);
        cas.begin(10);
        cas.on_answer(target(1), promise(None, None), 0);
        assert_eq!(cas.on_step_timeout(), Some(CasStep::Retry { above: 10, contended: true }));
        assert_eq!(cas.on_step_timeout(), None, "no step waits any more");
        cas.begin(11);
        cas.on_answer(target(1), promise(None, None), 0);
        assert!(matches!(cas.on_answer(target(2), promise(None, None), 0), Some(CasStep::Send(_))));
        // Its proposal went out and one replica accepted: it may be chosen, so a later failure
        // before the end is unknown, not certain.
        cas.on_answer(target(1), accept(), 0);
        assert!(matches!(cas.on_step_timeout(), Some(CasStep::Retry { above: 11, .. })));
        let step = cas.on_deadline(2_000);
        assert!(matches!(step, CasStep::Answer(Err(CoordinatorError::Timeout { .. }))), "{step:?}");
    }

    #[test]
    fn contention_pauses_grow_with_attempts_up_to_a_ceiling() {
        for ballot in [1u64, 0xDEAD_BEEF, u64::MAX, 7_534_555_326_851_317_761] {
            for attempt in 0..12 {
                let pause = contention_pause_ms(ballot, attempt);
                assert!((1..=2 << attempt.min(4)).contains(&pause), "{ballot} {attempt}: {pause}");
                assert!(pause <= 32);
            }
        }
        let spread: std::collections::BTreeSet<u64> =
            (0..64u64).map(|n| contention_pause_ms(n << 10, 6)).collect();
        assert!(spread.len() > 8, "ballots draw different pauses: {spread:?}");
    }

    /// Other swaps went on committing while this one paused: the last commit no longer names the
    /// state it proposed from, but the successions still do.
    #[test]
    fn the_successions_settle_a_lost_or_won_race_after_later_commits() {
        let overtaken = || overtaken_then_retried(401);
        let latest = live(400, b"latest");
        // 5 → 200 (another swap) → 300 → 400: this swap's proposal (100, based on 5) lost.
        let lost = [(200, 5), (300, 200), (400, 300)];
        let mut cas = overtaken();
        cas.on_answer(target(2), promise_with_successions(&lost, Some(&latest)), 0);
        let step = cas.on_answer(target(3), promise_with_successions(&lost[2..], Some(&latest)), 0);
        assert_eq!(step, Some(CasStep::Answer(Ok(CasOutcome::Mismatch { current_version: Some(400) }))));
        // 5 → 100 (this swap's, finished by another) → 300 → 400: it won; committed again, answered.
        let won = [(100, 5), (300, 100), (400, 300)];
        let mut cas = overtaken();
        cas.on_answer(target(2), promise_with_successions(&won[1..], Some(&latest)), 0);
        let step = cas.on_answer(target(3), promise_with_successions(&won, Some(&latest)), 0);
        assert_eq!(step, Some(CasStep::Commit { ballot: 100, based_on: 5, entry: live(100, b"new") }));
        assert_eq!(cas.on_committed(Ok(())), CasStep::Answer(Ok(CasOutcome::Swapped { version: 100 })));
        // Learned from a refused promise, while other swaps went on committing: still known
        // when a later attempt's quorum has only later successions.
        let mut cas = overtaken();
        let refusal = refused(promise_with_successions(&lost, Some(&latest)), 500);
        assert_eq!(cas.on_answer(target(1), refusal, 0), None);
        let step = cas.on_answer(target(2), refused(promise(None, None), 500), 0);
        assert!(matches!(step, Some(CasStep::Retry { above: 500, .. })), "{step:?}");
        cas.begin(601);
        cas.on_answer(target(2), promise_with_successions(&lost[2..], Some(&latest)), 0);
        let step = cas.on_answer(target(3), promise_with_successions(&lost[2..], Some(&latest)), 0);
        assert_eq!(step, Some(CasStep::Answer(Ok(CasOutcome::Mismatch { current_version: Some(400) }))));
        // Neither in sight (the quorum kept only later successions): still indeterminate.
        let mut cas = overtaken();
        cas.on_answer(target(2), promise_with_successions(&lost[1..], Some(&latest)), 0);
        let step = cas.on_answer(target(3), promise_with_successions(&lost[1..], Some(&latest)), 0).unwrap();
        assert!(
            matches!(step, CasStep::Answer(Err(CoordinatorError::WriteIndeterminate { .. }))),
            "{step:?}"
        );
    }
}
