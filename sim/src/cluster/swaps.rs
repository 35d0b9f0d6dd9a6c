//! Compare-and-swaps coordinated by the simulated nodes: the driver of [`PaxosCas`], as the
//! shard's `swap` (`shard/src/cluster/paxos.rs`) runs it, on the simulation's events.
//!
//! ```text
//!  client swap ─▶ issue ─▶ start_swap: targets = the key's replicas up (never stand-ins),
//!     quorum = majority of N, commit level = max(level, majority): fewer targets ─▶ Unavailable
//!     ─▶ PaxosCas::begin(ballot = clock.next_version(wall clock))
//!  Send(request) ─▶ every target (its own shard too, at once), request id SWAP_REQUEST_BIT | n
//!     answers of the current step ─▶ on_answer; answers of earlier steps dropped
//!  Commit ─▶ Coordinator::commit (required = max(level, majority), hints for replicas down)
//!     ─▶ its reply ─▶ on_committed
//!  Retry ─▶ the clock observes `above` (refused past the skew bound) ─▶ contended: a pause
//!     drawn from the ballot (SwapResume) ─▶ begin again
//!  deadline (2 × replica timeout, SwapDeadline) while a step waits ─▶ on_deadline
//!  crash of the coordinating node ─▶ the swap ends unanswered (unknown)
//! ```

use bytes::Bytes;
use ringkv_replication::paxos::{contention_pause_ms, CasOutcome, CasRequest, CasStep, PaxosCas};
use ringkv_replication::{CoordinatorError, CoordinatorReply, Target};
use ringkv_wire::peer::{PeerEnvelope, PeerErrorCode, PeerFailure, PeerMessage, PeerValue};
use ringkv_wire::{Consistency, Expected};

use super::{Cluster, Event};
use crate::history::Outcome;
use crate::network::{Message, Payload};

/// Requests of a swap's steps carry ids with this bit set, so their answers go to the swap
/// (healing's ids carry bit 63, the coordinator's stay far below).
pub const SWAP_REQUEST_BIT: u64 = 1 << 61;

/// One compare-and-swap a node coordinates; gone when the node crashes.
pub struct Swap {
    cas: PaxosCas,
    targets: Vec<Target>,
    commit_required: usize,
    /// Simulated time at which the swap gives up waiting for a step's answers.
    deadline_ms: u64,
    timeout_ms: u64,
    /// Contended retries so far (each pauses longer).
    contended: u32,
    /// The request id of the step waiting for answers, if one is.
    step: Option<u64>,
}

/// What a swap is asked to do.
pub struct SwapStart {
    pub node: u16,
    /// The history index of the swap.
    pub index: usize,
    pub key: Bytes,
    pub expected: Expected,
    pub value: Bytes,
    pub targets: Vec<Target>,
    /// Replicas of the key (N).
    pub replicas: usize,
    pub commit_required: usize,
}

/// The history outcome of a swap's answer, classified as a write's: refused before anything
/// was sent, or by every replica before applying anything (`Unavailable`, `Overloaded`,
/// `ReplicasFailed`: the client is told `Unavailable` or `Overloaded`), certainly not applied;
/// a timeout or an indeterminate failure may have been.
fn outcome_of(result: Result<CasOutcome, CoordinatorError>) -> (Outcome, Option<u64>) {
    match result {
        Ok(CasOutcome::Swapped { version }) => (Outcome::Written, Some(version)),
        Ok(CasOutcome::Mismatch { current_version }) => (Outcome::Mismatch { current_version }, None),
        Err(
            error @ (CoordinatorError::Unavailable { .. }
            | CoordinatorError::Overloaded { .. }
            | CoordinatorError::ReplicasFailed { .. }),
        ) => (Outcome::Failed(error.to_string()), None),
        Err(error) => (Outcome::Unknown(error.to_string()), None),
    }
}

impl Cluster {
    /// Starts a compare-and-swap on its node (running: [`Cluster::issue`] checked).
    pub(super) fn start_swap(&mut self, start: SwapStart) {
        let SwapStart { node, index, key, expected, value, targets, replicas, commit_required } = start;
        let quorum = Consistency::Quorum.required(replicas);
        // As the shard does: at most as many swaps at once as requests pending.
        let running = self.nodes[&node].running.as_ref().expect("running");
        if running.swaps.len() >= super::PENDING_MAX {
            let error = CoordinatorError::Overloaded { pending_max: super::PENDING_MAX };
            self.answer_swap(index, Outcome::Failed(error.to_string()), None);
            return;
        }
        // As the shard does: refused before anything is proposed when the commit could not meet
        // its level (past the proposal the swap may be chosen, and its outcome would be unknown).
        if targets.len() < commit_required {
            let error = CoordinatorError::Unavailable { alive: targets.len(), required: commit_required };
            self.answer_swap(index, Outcome::Failed(error.to_string()), None);
            return;
        }
        let timeout_ms = 2 * self.config.replica_timeout_ms;
        let deadline_ms = self.now_ms + timeout_ms;
        let request = CasRequest { key, expected, data: value, expires_at_ms: None };
        let cas = PaxosCas::new(request, targets.len(), quorum);
        let wall_ms = self.nodes[&node].wall_ms(self.now_ms);
        let generation = self.nodes[&node].generation;
        let running = self.nodes.get_mut(&node).and_then(|state| state.running.as_mut()).expect("running");
        let mut swap =
            Swap { cas, targets, commit_required, deadline_ms, timeout_ms, contended: 0, step: None };
        let step = swap.cas.begin(running.clock.next_version(wall_ms));
        running.swaps.insert(index, swap);
        self.scheduler.schedule(deadline_ms, Event::SwapDeadline { node, generation, index });
        self.advance_swap(node, index, step);
    }

    /// Carries out `step` of swap `index` on `node`, and the steps that follow at once, until
    /// one waits (for answers, a commit or a pause) or the swap is answered.
    fn advance_swap(&mut self, node: u16, index: usize, mut step: CasStep) {
        loop {
            let now_ms = self.now_ms;
            let wall_ms = self.nodes[&node].wall_ms(now_ms);
            let max_skew_ms = self.config.max_clock_skew_ms;
            let Some(running) = self.nodes.get_mut(&node).and_then(|state| state.running.as_mut()) else {
                return;
            };
            let Some(swap) = running.swaps.get_mut(&index) else { return };
            step = match step {
                CasStep::Answer(result) => {
                    let running =
                        self.nodes.get_mut(&node).and_then(|state| state.running.as_mut()).expect("running");
                    running.swaps.remove(&index);
                    let (outcome, version) = outcome_of(result);
                    self.answer_swap(index, outcome, version);
                    return;
                }
                CasStep::Send(message) => {
                    if let PeerMessage::PaxosPropose {
                        key,
                        entry: ringkv_wire::peer::PeerEntry { version, value: PeerValue::Live { data, .. } },
                        ..
                    } = &message
                    {
                        self.swaps.proposed(key, *version, data);
                    }
                    running.swap_request_id += 1;
                    let request_id = SWAP_REQUEST_BIT | running.swap_request_id;
                    swap.step = Some(request_id);
                    running.swap_steps.insert(request_id, index);
                    let targets = swap.targets.clone();
                    // As the shard does: a step short of answers after a replica's timeout is
                    // tried again at a higher ballot, while the deadline allows.
                    let step_timeout_ms = now_ms + self.config.replica_timeout_ms;
                    if step_timeout_ms < swap.deadline_ms {
                        let generation = self.nodes[&node].generation;
                        let event = Event::SwapStepTimeout { node, generation, index, request_id };
                        self.scheduler.schedule(step_timeout_ms, event);
                    }
                    let envelope = PeerEnvelope { origin_node: node, origin_shard: 0, request_id, message };
                    let frame = Message::encode_peer(&envelope);
                    // Its own shard's copy included: a message to itself arrives at once.
                    for target in targets {
                        self.send_between_shards(
                            node,
                            0,
                            target.node_id,
                            Some(target.shard),
                            None,
                            Payload::Peer(frame.clone()),
                        );
                    }
                    return;
                }
                CasStep::Commit { ballot, based_on, entry } => {
                    let mut outputs = Vec::new();
                    let key = swap.cas.key().clone();
                    // As the shard does: the replicas down now get hints of the commit.
                    let down = super::down_replicas(&self.ring, &self.shard_rings, &running.membership, &key);
                    let started = running.coordinator.commit(
                        now_ms,
                        key,
                        (ballot, based_on),
                        entry,
                        &swap.targets,
                        swap.commit_required,
                        &mut outputs,
                    );
                    match started {
                        Ok(request_id) => {
                            running.coordinator.hint_down_replicas(request_id, down);
                            running.swap_commits.insert(request_id, index);
                            let generation = self.nodes[&node].generation;
                            let at = now_ms + self.config.replica_timeout_ms;
                            self.scheduler.schedule(at, Event::CoordinatorTick { node, generation });
                            self.dispatch(node, outputs);
                            return;
                        }
                        Err(error) => swap.cas.on_committed(Err(error)),
                    }
                }
                CasStep::Retry { above, contended } => {
                    if let Err(skew) = running.clock.observe_remote(above, wall_ms, max_skew_ms) {
                        // As the shard answers it: given up, indeterminate if a proposal of the
                        // swap may have been accepted.
                        let why = format!("a replica's Paxos ballot is too far ahead to follow: {skew}");
                        let error = swap.cas.abandon(PeerFailure::new(PeerErrorCode::ClockSkew, why));
                        running.swaps.remove(&index);
                        let (outcome, version) = outcome_of(Err(error));
                        self.answer_swap(index, outcome, version);
                        return;
                    }
                    if contended {
                        swap.contended += 1;
                        let pause_ms = contention_pause_ms(swap.cas.ballot(), swap.contended);
                        if now_ms + pause_ms >= swap.deadline_ms {
                            swap.cas.on_deadline(swap.timeout_ms)
                        } else {
                            let generation = self.nodes[&node].generation;
                            self.scheduler
                                .schedule(now_ms + pause_ms, Event::SwapResume { node, generation, index });
                            return;
                        }
                    } else if now_ms >= swap.deadline_ms {
                        swap.cas.on_deadline(swap.timeout_ms)
                    } else {
                        swap.cas.begin(running.clock.next_version(wall_ms))
                    }
                }
            };
        }
    }

    /// Records the answer of swap `index` (its version when it wrote one).
    fn answer_swap(&mut self, index: usize, outcome: Outcome, version: Option<u64>) {
        if let Some(version) = version {
            self.log(format_args!("#{index} swapped in at {}", crate::history::Version(version)));
            self.history.operations[index].version = Some(version);
        }
        self.complete(index, outcome);
    }

    /// A swap's pause after contention is over: begin again, unless its deadline passed.
    pub(super) fn resume_swap(&mut self, node: u16, index: usize) {
        let now_ms = self.now_ms;
        let wall_ms = self.nodes[&node].wall_ms(now_ms);
        let Some(running) = self.nodes.get_mut(&node).and_then(|state| state.running.as_mut()) else {
            return;
        };
        let Some(swap) = running.swaps.get_mut(&index) else { return };
        let step = if now_ms >= swap.deadline_ms {
            swap.cas.on_deadline(swap.timeout_ms)
        } else {
            swap.cas.begin(running.clock.next_version(wall_ms))
        };
        self.advance_swap(node, index, step);
    }

    /// A swap's step timeout: the step of `request_id`, if it still waits for answers, gives up
    /// on the replicas still silent and the swap tries again.
    pub(super) fn swap_step_timeout(&mut self, node: u16, index: usize, request_id: u64) {
        let Some(running) = self.nodes.get_mut(&node).and_then(|state| state.running.as_mut()) else {
            return;
        };
        let Some(swap) = running.swaps.get_mut(&index) else { return };
        if swap.step != Some(request_id) {
            return;
        }
        let Some(step) = swap.cas.on_step_timeout() else { return };
        swap.step = None;
        running.swap_steps.remove(&request_id);
        self.advance_swap(node, index, step);
    }

    /// A swap's deadline: a step still waiting for answers ends. A commit under way is left to
    /// the coordinator's own deadline, as in the shard.
    pub(super) fn swap_deadline(&mut self, node: u16, index: usize) {
        let Some(running) = self.nodes.get_mut(&node).and_then(|state| state.running.as_mut()) else {
            return;
        };
        let Some(swap) = running.swaps.get_mut(&index) else { return };
        let Some(request_id) = swap.step.take() else { return };
        running.swap_steps.remove(&request_id);
        let step = swap.cas.on_deadline(swap.timeout_ms);
        self.advance_swap(node, index, step);
    }

    /// Takes a replica's answer to a swap's step on `node`; answers of a step that is over are
    /// dropped.
    pub(super) fn on_swap_answer(&mut self, node: u16, from: Target, envelope: PeerEnvelope) {
        let wall_ms = self.nodes[&node].wall_ms(self.now_ms);
        let Some(running) = self.nodes.get_mut(&node).and_then(|state| state.running.as_mut()) else {
            return;
        };
        let Some(&index) = running.swap_steps.get(&envelope.request_id) else { return };
        let Some(swap) = running.swaps.get_mut(&index) else { return };
        if swap.step != Some(envelope.request_id) {
            return;
        }
        if let Some(step) = swap.cas.on_answer(from, envelope.message, wall_ms) {
            swap.step = None;
            running.swap_steps.remove(&envelope.request_id);
            self.advance_swap(node, index, step);
        }
    }

    /// Takes the coordinator's reply to a swap's commit, if `request_id` is one. Returns
    /// whether it was.
    pub(super) fn on_swap_commit_reply(
        &mut self,
        node: u16,
        request_id: u64,
        reply: &CoordinatorReply,
    ) -> bool {
        let Some(running) = self.nodes.get_mut(&node).and_then(|state| state.running.as_mut()) else {
            return false;
        };
        let Some(index) = running.swap_commits.remove(&request_id) else { return false };
        let Some(swap) = running.swaps.get_mut(&index) else { return true };
        let result = match reply {
            CoordinatorReply::Written { .. } => Ok(()),
            CoordinatorReply::Failed(error) => Err(error.clone()),
            CoordinatorReply::Found(_) => {
                Err(CoordinatorError::Timeout { acks: 0, required: 0, timeout_ms: 0 })
            }
        };
        let step = swap.cas.on_committed(result);
        self.advance_swap(node, index, step);
        true
    }
}
