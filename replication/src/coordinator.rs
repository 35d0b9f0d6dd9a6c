//! [`Coordinator`]: one shard's quorum writes and reads, as a state machine without I/O.
//!
//! The shard that receives a client request coordinates it (Dynamo §4.5). The coordinator is
//! told the request, the live replicas of the key and how many must answer; it says which
//! messages to send (to remote shards, or to itself for its own copy) and, later, what to answer
//! the client. Replies, membership and time come in as method calls; nothing here touches a
//! socket, a clock or a random number.
//!
//! ```text
//!  write(key, entry, targets, W) ─▶ Send Replicate to every live replica (itself included)
//!  on_reply(ReplicateAck)         ─▶ W acks ─▶ Reply Written
//!  read(key, targets, R)          ─▶ Send Read: data from the first target, digests from R − 1
//!  on_reply(ReadReply)            ─▶ all R agree ─▶ Reply Found
//!                                    disagree   ─▶ fetch the newest data if needed,
//!                                                  repair the stale replicas read (wait for them),
//!                                                  repair the live replicas not read (background)
//!                                                  ─▶ Reply Found
//!  tick(now)                      ─▶ past the deadline ─▶ Reply Timeout { acks, required }
//! ```
//!
//! Messages to this shard's own copy go out like any other (`Send` with the local node as
//! destination); the driver runs them on the local engine and feeds the answer back through
//! [`Coordinator::on_reply`], so the local replica is never a special case here.
//!
//! Every pending request is bounded: at most `pending_max` at once (more are refused with
//! [`CoordinatorError::Overloaded`]), each ending by its deadline at the latest.

use crate::ids::IdMap;
use std::collections::VecDeque;

use bytes::Bytes;
use ringkv_wire::peer::{PeerEntry, PeerEnvelope, PeerFailure, PeerMessage, ReadAnswer};

/// Where a replica message goes: a node and the shard on it that owns the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub node_id: u16,
    pub shard: u32,
}

/// Settings of a coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// This node.
    pub node_id: u16,
    /// This shard.
    pub shard: u32,
    /// How long a request waits for its replicas before it is answered with a timeout.
    pub replica_timeout_ms: u64,
    /// Requests pending at once; more are refused.
    pub pending_max: usize,
}

/// Why a coordinated request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// Fewer live replicas than the consistency level needs: refused before anything was sent.
    #[error("{alive} of the key's replicas are up and {required} must answer")]
    Unavailable { alive: usize, required: usize },
    /// The pending-request table is full.
    #[error("{pending_max} replicated requests are pending on this shard (peer_pending_max)")]
    Overloaded { pending_max: usize },
    /// The deadline passed before enough replicas answered. A write may still be applied by the
    /// replicas that had not answered.
    #[error("{acks} of {required} replicas answered within {timeout_ms}ms; a write may still be applied")]
    Timeout { acks: usize, required: usize, timeout_ms: u64 },
    /// Too many replicas refused for the request to succeed, and none applied it: a read, or a
    /// write every replica refused.
    #[error("{acks} of {required} replicas succeeded; a replica refused: {failure:?}")]
    ReplicasFailed { acks: usize, required: usize, failure: PeerFailure },
    /// Too many replicas refused a write for it to reach `required`, but `acks` applied it or
    /// others had not answered yet and still may: its outcome is unknown, as after a
    /// [`CoordinatorError::Timeout`], and the replicas that hold it serve it to later reads.
    #[error(
        "{acks} of {required} replicas applied the write and a replica refused ({failure:?}); the write \
         may have been applied"
    )]
    WriteIndeterminate { acks: usize, required: usize, failure: PeerFailure },
}

/// What a finished request answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorReply {
    /// The write reached `required` replicas with this version.
    Written { version: u64 },
    /// The read's reconciled entry: the highest version among the replicas read, tombstones and
    /// expired values included (the caller decides what is live at its `now`). `None`: no
    /// replica read has ever seen the key.
    Found(Option<PeerEntry>),
    /// The request failed.
    Failed(CoordinatorError),
}

/// A command for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `envelope` to `to` (which may be this very shard: run it on the local replica and
    /// feed the answer to [`Coordinator::on_reply`]).
    Send { to: Target, envelope: PeerEnvelope },
    /// Answer the client request `request_id`.
    Reply { request_id: u64, reply: CoordinatorReply },
    /// `to` did not acknowledge the write of `entry` under `key` by the deadline (whether or
    /// not the client was already answered): keep a hint for it. Hints never count toward W.
    Hint { to: Target, key: Bytes, entry: PeerEntry },
}

/// What a replica told a read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Waiting,
    /// A full entry (the data replica, or a replica asked for data after a digest mismatch).
    Entry(Option<PeerEntry>),
    /// A version only.
    Digest(Option<u64>),
    Failed(PeerFailure),
}

impl Answer {
    fn version(&self) -> Option<Option<u64>> {
        match self {
            Answer::Entry(entry) => Some(entry.as_ref().map(|entry| entry.version)),
            Answer::Digest(version) => Some(*version),
            Answer::Waiting | Answer::Failed(_) => None,
        }
    }
}

#[derive(Debug)]
struct WriteState {
    key: Bytes,
    entry: PeerEntry,
    version: u64,
    required: usize,
    acks: usize,
    /// Targets that have not answered yet. A target counts once, however often the network
    /// delivers its answer.
    waiting: Vec<Target>,
    failure: Option<PeerFailure>,
    /// A replica failed in a way that does not rule out that it applied the write.
    maybe_applied_by_a_failure: bool,
    /// Replicas down when the write started ([`Coordinator::hint_down_replicas`]): hinted once
    /// the write is answered, unless every replica asked refused it before applying it (the
    /// client is then told it did not happen, and a hint replayed later would make it happen).
    down: Vec<Target>,
}

#[derive(Debug, PartialEq, Eq)]
enum ReadPhase {
    /// Waiting for the replicas asked.
    Gathering,
    /// Waiting for the repairs of the stale replicas read.
    Repairing { winner: Option<PeerEntry>, waiting: Vec<Target> },
}

#[derive(Debug)]
struct ReadState {
    key: Bytes,
    required: usize,
    /// The replicas asked, in order asked, with what each said.
    asked: Vec<(Target, Answer)>,
    /// Live replicas not asked yet: asked when a replica fails, repaired in the background when
    /// the replicas read disagree.
    spare: Vec<Target>,
    phase: ReadPhase,
}

#[derive(Debug)]
enum Pending {
    Write(WriteState),
    Read(ReadState),
}

/// One shard's coordinated requests.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    next_request_id: u64,
    pending: IdMap<Pending>,
    /// Writes already answered whose slower replicas have not acknowledged yet: at the
    /// deadline, each of those gets a hint.
    lingering: IdMap<WriteState>,
    /// `(deadline, request id)` in deadline order (every request gets the same timeout, so
    /// insertion order is deadline order).
    deadlines: VecDeque<(u64, u64)>,
    counters: CoordinatorCounters,
}

/// What a coordinator has done since it was made, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorCounters {
    /// Requests answered [`CoordinatorError::Timeout`] at their deadline.
    pub timeouts: u64,
    /// Reads that found replicas disagreeing and repaired them.
    pub read_repairs: u64,
    /// Replicas sent a read repair (the stale ones read, and those not read).
    pub read_repair_replicas: u64,
}

impl Coordinator {
    /// A coordinator with nothing pending.
    pub fn new(config: CoordinatorConfig) -> Self {
        Coordinator {
            config,
            next_request_id: 1,
            pending: IdMap::default(),
            lingering: IdMap::default(),
            deadlines: VecDeque::new(),
            counters: CoordinatorCounters::default(),
        }
    }

    /// What this coordinator has done so far.
    pub fn counters(&self) -> CoordinatorCounters {
        self.counters
    }

    /// The settings.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// Requests pending now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn admit(&mut self, now_ms: u64, alive: usize, required: usize) -> Result<u64, CoordinatorError> {
        if alive < required || required == 0 {
            return Err(CoordinatorError::Unavailable { alive, required });
        }
        if self.pending.len() >= self.config.pending_max {
            return Err(CoordinatorError::Overloaded { pending_max: self.config.pending_max });
        }
        let request_id = self.allocate_request_id();
        self.deadlines.push_back((now_ms.saturating_add(self.config.replica_timeout_ms), request_id));
        Ok(request_id)
    }

    fn allocate_request_id(&mut self) -> u64 {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        request_id
    }

    fn envelope(&self, request_id: u64, message: PeerMessage) -> PeerEnvelope {
        PeerEnvelope {
            origin_node: self.config.node_id,
            origin_shard: self.config.shard,
            request_id,
            message,
        }
    }

    /// Starts a write of `entry` under `key` to the live replicas `targets`, answered after
    /// `required` acknowledgements. Returns the request id its [`Output::Reply`] will carry, or
    /// refuses at once (too few replicas up, or too many requests pending).
    pub fn write(
        &mut self,
        now_ms: u64,
        key: Bytes,
        entry: PeerEntry,
        targets: &[Target],
        required: usize,
        out: &mut Vec<Output>,
    ) -> Result<u64, CoordinatorError> {
        self.start_write(now_ms, key, entry, None, targets, required, out)
    }

    /// [`Coordinator::write`] of the entry a compare-and-swap chose at Paxos `ballot`, decided
    /// on the state of version `based_on` (see [`crate::paxos`]): each replica applies it as a
    /// write and records the commit as the key's most recent.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &mut self,
        now_ms: u64,
        key: Bytes,
        (ballot, based_on): (u64, u64),
        entry: PeerEntry,
        targets: &[Target],
        required: usize,
        out: &mut Vec<Output>,
    ) -> Result<u64, CoordinatorError> {
        self.start_write(now_ms, key, entry, Some((ballot, based_on)), targets, required, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_write(
        &mut self,
        now_ms: u64,
        key: Bytes,
        entry: PeerEntry,
        paxos: Option<(u64, u64)>,
        targets: &[Target],
        required: usize,
        out: &mut Vec<Output>,
    ) -> Result<u64, CoordinatorError> {
        let request_id = self.admit(now_ms, targets.len(), required)?;
        let version = entry.version;
        for &to in targets {
            let message = match paxos {
                None => PeerMessage::Replicate { key: key.clone(), entry: entry.clone() },
                Some((ballot, based_on)) => {
                    PeerMessage::PaxosCommit { key: key.clone(), ballot, based_on, entry: entry.clone() }
                }
            };
            out.push(Output::Send { to, envelope: self.envelope(request_id, message) });
        }
        let state = WriteState {
            key,
            entry,
            version,
            required,
            acks: 0,
            waiting: targets.to_vec(),
            failure: None,
            maybe_applied_by_a_failure: false,
            down: Vec::new(),
        };
        self.pending.insert(request_id, Pending::Write(state));
        Ok(request_id)
    }

    /// Gives the write `request_id` the replicas that are down (not among its targets): each
    /// gets an [`Output::Hint`] when the write is answered, written, timed out or of unknown
    /// outcome, and none when every replica asked refused it before applying it.
    pub fn hint_down_replicas(&mut self, request_id: u64, down: Vec<Target>) {
        if let Some(Pending::Write(write)) = self.pending.get_mut(&request_id) {
            write.down = down;
        }
    }

    /// Starts a read of `key` from `required` of the live replicas `targets`, in the order
    /// given (put the local replica first: it answers without a network hop). The first is asked
    /// for the data, the others for digests.
    pub fn read(
        &mut self,
        now_ms: u64,
        key: Bytes,
        targets: &[Target],
        required: usize,
        out: &mut Vec<Output>,
    ) -> Result<u64, CoordinatorError> {
        let request_id = self.admit(now_ms, targets.len(), required)?;
        let mut asked = Vec::with_capacity(required);
        for (index, &to) in targets.iter().take(required).enumerate() {
            let message = PeerMessage::Read { key: key.clone(), digest_only: index > 0 };
            out.push(Output::Send { to, envelope: self.envelope(request_id, message) });
            asked.push((to, Answer::Waiting));
        }
        let spare = targets[required..].to_vec();
        let state = ReadState { key, required, asked, spare, phase: ReadPhase::Gathering };
        self.pending.insert(request_id, Pending::Read(state));
        Ok(request_id)
    }

    /// Takes a replica's answer. `from` is the node and shard it came from (this shard for its
    /// own copy). Answers for requests already finished, or from replicas not asked, are
    /// ignored: they are late or duplicated, and the network may do both.
    pub fn on_reply(&mut self, from: Target, envelope: PeerEnvelope, out: &mut Vec<Output>) {
        let request_id = envelope.request_id;
        if let (Some(write), PeerMessage::ReplicateAck { result: Ok(()) }) =
            (self.lingering.get_mut(&request_id), &envelope.message)
        {
            write.waiting.retain(|&target| target != from);
            if write.waiting.is_empty() {
                self.lingering.remove(&request_id);
            }
            return;
        }
        let Some(pending) = self.pending.get_mut(&request_id) else { return };
        let finished = match (pending, envelope.message) {
            (Pending::Write(write), PeerMessage::ReplicateAck { result }) => {
                Self::on_write_ack(write, from, result)
            }
            (Pending::Read(read), PeerMessage::ReadReply { result }) => {
                Self::on_read_reply(&self.config, &mut self.counters, request_id, read, from, result, out)
            }
            (Pending::Read(read), PeerMessage::ReplicateAck { result }) => {
                Self::on_repair_ack(read, from, result)
            }
            _ => None,
        };
        if let Some(reply) = finished {
            if let Some(Pending::Write(mut write)) = self.pending.remove(&request_id) {
                let refused =
                    matches!(reply, CoordinatorReply::Failed(CoordinatorError::ReplicasFailed { .. }));
                Self::hint_the_down(&mut write, refused, out);
                // Bounded like the pending table; past it the slow replica is left to
                // anti-entropy.
                if !write.waiting.is_empty()
                    && matches!(reply, CoordinatorReply::Written { .. })
                    && self.lingering.len() < self.config.pending_max
                {
                    self.lingering.insert(request_id, write);
                }
            }
            out.push(Output::Reply { request_id, reply });
        }
    }

    fn on_write_ack(
        write: &mut WriteState,
        from: Target,
        result: Result<(), PeerFailure>,
    ) -> Option<CoordinatorReply> {
        let position = write.waiting.iter().position(|&target| target == from)?;
        write.waiting.swap_remove(position);
        match result {
            Ok(()) => write.acks += 1,
            Err(failure) => {
                write.maybe_applied_by_a_failure |= !failure.code.refused_before_applying();
                write.failure = Some(failure);
            }
        }
        if write.acks >= write.required {
            return Some(CoordinatorReply::Written { version: write.version });
        }
        if write.acks + write.waiting.len() < write.required {
            let failure = write.failure.clone().expect("a shortfall means a replica failed");
            let (acks, required) = (write.acks, write.required);
            // Only when every replica answered, refusing it before applying anything, did the
            // write not happen.
            let error = if acks == 0 && write.waiting.is_empty() && !write.maybe_applied_by_a_failure {
                CoordinatorError::ReplicasFailed { acks, required, failure }
            } else {
                CoordinatorError::WriteIndeterminate { acks, required, failure }
            };
            return Some(CoordinatorReply::Failed(error));
        }
        None
    }

    fn on_read_reply(
        config: &CoordinatorConfig,
        counters: &mut CoordinatorCounters,
        request_id: u64,
        read: &mut ReadState,
        from: Target,
        result: Result<ReadAnswer, PeerFailure>,
        out: &mut Vec<Output>,
    ) -> Option<CoordinatorReply> {
        if read.phase != ReadPhase::Gathering {
            return None;
        }
        let slot =
            read.asked.iter_mut().find(|(target, answer)| *target == from && *answer == Answer::Waiting)?;
        slot.1 = match result {
            Ok(ReadAnswer::Entry(entry)) => Answer::Entry(entry),
            Ok(ReadAnswer::Digest(version)) => Answer::Digest(version),
            Err(failure) => Answer::Failed(failure),
        };
        let envelope = |message| PeerEnvelope {
            origin_node: config.node_id,
            origin_shard: config.shard,
            request_id,
            message,
        };
        if let Answer::Failed(failure) = &slot.1 {
            // Ask a spare replica in its place; data, since the failed one may have been the
            // data replica and a spare's full answer serves either role.
            let failure = failure.clone();
            match read.spare.pop() {
                Some(spare) => {
                    let message = PeerMessage::Read { key: read.key.clone(), digest_only: false };
                    out.push(Output::Send { to: spare, envelope: envelope(message) });
                    read.asked.push((spare, Answer::Waiting));
                    return None;
                }
                None => {
                    let acks = read.asked.iter().filter(|(_, answer)| answer.version().is_some()).count();
                    return Some(CoordinatorReply::Failed(CoordinatorError::ReplicasFailed {
                        acks,
                        required: read.required,
                        failure,
                    }));
                }
            }
        }
        if read.asked.iter().any(|(_, answer)| *answer == Answer::Waiting) {
            return None;
        }
        // Every replica asked has answered (the failed ones were replaced).
        let answered: Vec<&(Target, Answer)> =
            read.asked.iter().filter(|(_, answer)| answer.version().is_some()).collect();
        let newest = answered.iter().filter_map(|(_, answer)| answer.version()).max().expect("one answered");
        let winner = answered.iter().find_map(|(_, answer)| match answer {
            Answer::Entry(entry) if entry.as_ref().map(|entry| entry.version) == newest => {
                Some(entry.clone())
            }
            _ => None,
        });
        let Some(winner) = winner else {
            // Only a digest carries the newest version: fetch its data, then decide.
            let (holder, _) = **answered
                .iter()
                .find(|(_, answer)| answer.version() == Some(newest))
                .expect("the newest version came from a replica");
            let message = PeerMessage::Read { key: read.key.clone(), digest_only: false };
            out.push(Output::Send { to: holder, envelope: envelope(message) });
            let slot = read.asked.iter_mut().find(|(target, _)| *target == holder).expect("asked");
            slot.1 = Answer::Waiting;
            return None;
        };
        let stale: Vec<Target> = answered
            .iter()
            .filter(|(_, answer)| answer.version() != Some(newest))
            .map(|(target, _)| *target)
            .collect();
        if stale.is_empty() {
            return Some(CoordinatorReply::Found(winner));
        }
        let entry = winner.clone().expect("a stale replica means some replica holds an entry");
        // Blocking read repair for the replicas read, so a later read at this level sees at least
        // this version (Cassandra's blocking read repair); the replicas not read are repaired in
        // the background, under an id nobody waits for.
        for &to in &stale {
            let message = PeerMessage::Replicate { key: read.key.clone(), entry: entry.clone() };
            out.push(Output::Send { to, envelope: envelope(message) });
        }
        for &to in &read.spare {
            let message = PeerMessage::Replicate { key: read.key.clone(), entry: entry.clone() };
            let background = PeerEnvelope { request_id: 0, ..envelope(message) };
            out.push(Output::Send { to, envelope: background });
        }
        tracing::debug!(stale = stale.len(), background = read.spare.len(), "read repair");
        counters.read_repairs += 1;
        counters.read_repair_replicas += (stale.len() + read.spare.len()) as u64;
        read.phase = ReadPhase::Repairing { winner, waiting: stale };
        None
    }

    fn on_repair_ack(
        read: &mut ReadState,
        from: Target,
        result: Result<(), PeerFailure>,
    ) -> Option<CoordinatorReply> {
        let ReadPhase::Repairing { winner, waiting } = &mut read.phase else { return None };
        let position = waiting.iter().position(|&target| target == from)?;
        waiting.swap_remove(position);
        if let Err(failure) = result {
            // The answer is still right; the replica stays stale until anti-entropy or the next
            // read repairs it.
            tracing::debug!(?failure, "a read repair was refused");
        }
        waiting.is_empty().then(|| CoordinatorReply::Found(winner.clone()))
    }

    /// Advances time to `now_ms`: every request past its deadline is answered with
    /// [`CoordinatorError::Timeout`]. Returns the earliest deadline still pending, so the driver
    /// knows when to call again.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Output>) -> Option<u64> {
        while let Some(&(deadline, request_id)) = self.deadlines.front() {
            if !self.pending.contains_key(&request_id) && !self.lingering.contains_key(&request_id) {
                self.deadlines.pop_front();
                continue;
            }
            if deadline > now_ms {
                return Some(deadline);
            }
            self.deadlines.pop_front();
            if let Some(write) = self.lingering.remove(&request_id) {
                Self::hint_the_silent(write, out);
                continue;
            }
            let pending = self.pending.remove(&request_id).expect("checked above");
            let (acks, required) = match &pending {
                Pending::Write(write) => (write.acks, write.required),
                Pending::Read(read) => match &read.phase {
                    // The answer is known; only the repair of a stale replica is late.
                    ReadPhase::Repairing { winner, .. } => {
                        out.push(Output::Reply {
                            request_id,
                            reply: CoordinatorReply::Found(winner.clone()),
                        });
                        continue;
                    }
                    ReadPhase::Gathering => (
                        read.asked.iter().filter(|(_, answer)| answer.version().is_some()).count(),
                        read.required,
                    ),
                },
            };
            let error =
                CoordinatorError::Timeout { acks, required, timeout_ms: self.config.replica_timeout_ms };
            self.counters.timeouts += 1;
            out.push(Output::Reply { request_id, reply: CoordinatorReply::Failed(error) });
            if let Pending::Write(mut write) = pending {
                Self::hint_the_down(&mut write, false, out);
                Self::hint_the_silent(write, out);
            }
        }
        None
    }

    /// A hint for every replica that was down when the write started, unless the write was
    /// `refused` (by every replica asked, before applying it).
    fn hint_the_down(write: &mut WriteState, refused: bool, out: &mut Vec<Output>) {
        for to in std::mem::take(&mut write.down) {
            if !refused {
                out.push(Output::Hint { to, key: write.key.clone(), entry: write.entry.clone() });
            }
        }
    }

    /// A hint for every replica of a write that has not answered by its deadline.
    fn hint_the_silent(write: WriteState, out: &mut Vec<Output>) {
        for to in write.waiting {
            out.push(Output::Hint { to, key: write.key.clone(), entry: write.entry.clone() });
        }
    }

    /// Writes answered whose slower replicas are still awaited (for hints).
    pub fn lingering(&self) -> usize {
        self.lingering.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_wire::peer::{PeerErrorCode, PeerValue};

    fn coordinator() -> Coordinator {
        Coordinator::new(CoordinatorConfig { node_id: 1, shard: 0, replica_timeout_ms: 100, pending_max: 8 })
    }

    fn target(node_id: u16) -> Target {
        Target { node_id, shard: 0 }
    }

    fn ack(request_id: u64) -> PeerEnvelope {
        PeerEnvelope {
            origin_node: 1,
            origin_shard: 0,
            request_id,
            message: PeerMessage::ReplicateAck { result: Ok(()) },
        }
    }

    fn hints(out: &[Output]) -> Vec<u16> {
        out.iter()
            .filter_map(|output| match output {
                Output::Hint { to, .. } => Some(to.node_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_replica_silent_past_the_deadline_gets_a_hint_even_after_the_answer() {
        let mut coordinator = coordinator();
        let entry = PeerEntry { version: 7, value: PeerValue::Tombstone { deleted_at_ms: 1 } };
        let mut out = Vec::new();
        let targets = [target(1), target(2), target(3)];
        let id = coordinator.write(0, Bytes::from_static(b"k"), entry, &targets, 2, &mut out).unwrap();
        out.clear();
        coordinator.on_reply(target(1), ack(id), &mut out);
        coordinator.on_reply(target(2), ack(id), &mut out);
        assert!(matches!(&out[..], [Output::Reply { reply: CoordinatorReply::Written { version: 7 }, .. }]));
        assert_eq!(coordinator.lingering(), 1);
        out.clear();
        coordinator.tick(50, &mut out);
        assert!(out.is_empty());
        coordinator.tick(100, &mut out);
        assert_eq!(hints(&out), vec![3]);
        assert_eq!(coordinator.lingering(), 0);
    }

    #[test]
    fn a_down_replica_is_hinted_once_the_write_is_answered_unless_every_replica_refused_it() {
        let entry = PeerEntry { version: 5, value: PeerValue::Tombstone { deleted_at_ms: 1 } };
        let refusal = |request_id| PeerEnvelope {
            origin_node: 2,
            origin_shard: 0,
            request_id,
            message: PeerMessage::ReplicateAck {
                result: Err(PeerFailure::new(PeerErrorCode::ClockSkew, "ahead")),
            },
        };
        let start = |coordinator: &mut Coordinator, out: &mut Vec<Output>| {
            let targets = [target(2)];
            let id = coordinator.write(0, Bytes::from_static(b"k"), entry.clone(), &targets, 1, out).unwrap();
            coordinator.hint_down_replicas(id, vec![target(3)]);
            assert!(hints(out).is_empty(), "no hint before the answer");
            id
        };
        // The one replica up refuses it: the client hears it did not happen, and node 3 must
        // never get it from a hint.
        let mut coordinator = coordinator();
        let mut out = Vec::new();
        let id = start(&mut coordinator, &mut out);
        coordinator.on_reply(target(2), refusal(id), &mut out);
        assert!(out.iter().any(|output| matches!(
            output,
            Output::Reply { reply: CoordinatorReply::Failed(CoordinatorError::ReplicasFailed { .. }), .. }
        )));
        coordinator.tick(1_000, &mut out);
        assert!(hints(&out).is_empty(), "{out:?}");
        // Written: node 3 gets its hint with the answer.
        let mut out = Vec::new();
        let id = start(&mut coordinator, &mut out);
        coordinator.on_reply(target(2), ack(id), &mut out);
        assert_eq!(hints(&out), vec![3]);
        // Timed out (the replica may have applied it): hinted as well, with the silent one.
        let mut out = Vec::new();
        start(&mut coordinator, &mut out);
        coordinator.tick(1_000, &mut out);
        let mut hinted = hints(&out);
        hinted.sort_unstable();
        assert_eq!(hinted, vec![2, 3]);
    }

    #[test]
    fn a_late_ack_cancels_the_hint_and_a_timeout_hints_every_silent_replica() {
        let mut coordinator = coordinator();
        let entry = PeerEntry { version: 9, value: PeerValue::Tombstone { deleted_at_ms: 1 } };
        let mut out = Vec::new();
        let targets = [target(1), target(2), target(3)];
        let first =
            coordinator.write(0, Bytes::from_static(b"a"), entry.clone(), &targets, 2, &mut out).unwrap();
        coordinator.on_reply(target(1), ack(first), &mut out);
        coordinator.on_reply(target(3), ack(first), &mut out);
        coordinator.on_reply(target(2), ack(first), &mut out);
        let second = coordinator.write(0, Bytes::from_static(b"b"), entry, &targets, 3, &mut out).unwrap();
        coordinator.on_reply(target(1), ack(second), &mut out);
        out.clear();
        coordinator.tick(1_000, &mut out);
        let mut hinted = hints(&out);
        hinted.sort_unstable();
        assert_eq!(hinted, vec![2, 3], "only the second write's silent replicas");
        assert!(out.iter().any(|output| matches!(
            output,
            Output::Reply { request_id, reply: CoordinatorReply::Failed(CoordinatorError::Timeout { acks: 1, .. }) }
                if *request_id == second
        )));
        assert_eq!(coordinator.counters().timeouts, 1, "the second write timed out; the first lingered only");
    }
}
