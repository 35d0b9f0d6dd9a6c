//! Compare-and-swap across replicas on this shard: the acceptor (its durable Paxos state, in an
//! engine of its own) and the driver of [`PaxosCas`] for the swaps this shard coordinates.
//!
//! ```text
//!  client CAS ─▶ Cluster::coordinate ─▶ start_swap (a task, at most peer_pending_max at once)
//!     PaxosCas::begin(ballot = clock.next_version) ─▶ Send Prepare ─┬─ own shard: serve_replica
//!                                                                   └─ other replicas: ask (peer link)
//!     answers ─▶ PaxosCas::on_answer ─▶ Send Propose ─▶ ... ─▶ Commit: Coordinator::commit (hints too)
//!     Retry (a higher ballot) ─▶ observe it, pause when contended, begin again; deadline ─▶ Timeout
//!
//!  peer PaxosPrepare / PaxosPropose ─▶ serve_replica ─▶ acceptor_update: read the key's state,
//!     change it, compare-and-swap it back in the Paxos engine (synced) ─▶ PaxosPromise / PaxosAccept
//!  peer PaxosCommit ─▶ serve_replica ─▶ apply the entry (as a replicated write) ─▶ record the
//!     commit's ballot (acceptor_update) ─▶ ReplicateAck
//! ```
//!
//! The Paxos state lives in `paxos/` under the shard's directory, an engine apart from the
//! data's: its records are not keys of the store (no tree, scan or anti-entropy sees them), and
//! each is a key's [`AcceptorState`] with the accepted value inside. Each record expires
//! [`ACCEPTOR_STATE_TTL_MS`] after its last change, far beyond any swap's deadline, so a key
//! swapped once costs nothing forever.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel;
use ringkv_io::{now_ms, DmaDisk, EngineService};
use ringkv_replication::paxos::{
    contention_pause_ms, AcceptorState, CasOutcome, CasRequest, CasStep, PaxosCas,
};
use ringkv_replication::{replica, CoordinatorError, CoordinatorReply, Target};
use ringkv_storage::{CasOutcome as StoredCas, Engine, EngineOptions, Entry, Expected as StoredExpected};
use ringkv_wire::peer::{
    Acceptance, EntryHead, PeerEntry, PeerEnvelope, PeerErrorCode, PeerFailure, PeerMessage, Promise,
};
use ringkv_wire::{Consistency, Expected, Failure, Outcome};

use super::{failure_of, healing, Cluster};

// A state holding a client's largest value fits in one engine value.
const _: () = assert!(
    ringkv_wire::limits::VALUE_BYTES_MAX + ringkv_replication::paxos::ACCEPTOR_STATE_OVERHEAD_BYTES
        <= ringkv_storage::VALUE_BYTES_MAX
);

/// How long a key's Paxos state is kept after its last change.
pub const ACCEPTOR_STATE_TTL_MS: u64 = 3 * 60 * 60 * 1000;

/// The Paxos engine's memtable: states are small unless the values swapped are large.
const PAXOS_MEMTABLE_BYTES: usize = 4 << 20;

/// Options of the Paxos engine: the data engine's durability, in less memory.
pub fn engine_options(data: &EngineOptions) -> EngineOptions {
    EngineOptions {
        memtable_bytes_max: PAXOS_MEMTABLE_BYTES,
        block_cache_bytes: 1 << 20,
        wal_bytes_max: 4 * PAXOS_MEMTABLE_BYTES as u64,
        wal_segment_bytes_max: data.wal_segment_bytes_max.min(16 << 20),
        ..data.clone()
    }
}

/// Opens the shard's Paxos engine in `directory` (created if missing).
pub async fn open_engine(
    directory: &std::path::Path,
    data: &EngineOptions,
) -> Result<EngineService, ringkv_storage::StorageError> {
    let path = directory.display().to_string();
    std::fs::create_dir_all(directory)
        .map_err(|error| ringkv_storage::StorageError::io("create the Paxos directory", path, error))?;
    EngineService::open(directory, engine_options(data)).await
}

impl Cluster {
    /// Starts a compare-and-swap of `key` through its replicas; `done` is handed the outcome.
    pub(super) fn start_swap(
        &self,
        request: CasRequest,
        consistency: Option<Consistency>,
        done: impl FnOnce(Result<Outcome, Failure>) + 'static,
    ) {
        let running = self.swaps_running.get();
        if running >= self.settings.peer_pending_max {
            let error = CoordinatorError::Overloaded { pending_max: self.settings.peer_pending_max };
            return done(Err(failure_of(&error)));
        }
        let Some(cluster) = self.this.upgrade() else { return done(Err(failure_of(&self.stopped()))) };
        self.swaps_running.set(running + 1);
        glommio::spawn_local(async move {
            let outcome = cluster.swap(request, consistency).await;
            cluster.swaps_running.set(cluster.swaps_running.get() - 1);
            done(outcome);
        })
        .detach();
    }

    /// Runs one compare-and-swap to its end: attempts at rising ballots until one decides, the
    /// deadline passes (twice the replica timeout) or the shard stops.
    async fn swap(&self, request: CasRequest, consistency: Option<Consistency>) -> Result<Outcome, Failure> {
        let timeout_ms = 2 * self.settings.replica_timeout_ms;
        let deadline = now_ms().saturating_add(timeout_ms);
        let key = request.key.clone();
        let (targets, replicas) = self.view.borrow().targets(&key);
        let quorum = Consistency::Quorum.required(replicas);
        let commit_required = consistency.map_or(quorum, |level| level.required(replicas).max(quorum));
        // Refused before anything is proposed: past the proposal the swap may be chosen, and a
        // commit short of replicas could only say its outcome is unknown.
        if targets.len() < commit_required {
            let error = CoordinatorError::Unavailable { alive: targets.len(), required: commit_required };
            return Err(failure_of(&error));
        }
        let mut cas = PaxosCas::new(request, targets.len(), quorum);
        let mut step = cas.begin(self.handler.clock().next_version(now_ms()));
        let mut contended = 0u32;
        loop {
            if self.stop.is_triggered() {
                return Err(failure_of(&cas_answer(cas.on_deadline(timeout_ms))));
            }
            step = match step {
                CasStep::Answer(Ok(CasOutcome::Swapped { version })) => {
                    return Ok(Outcome::Written { version })
                }
                CasStep::Answer(Ok(CasOutcome::Mismatch { current_version })) => {
                    return Ok(Outcome::CasMismatch { current_version })
                }
                CasStep::Answer(Err(error)) => return Err(failure_of(&error)),
                CasStep::Send(message) => {
                    self.paxos_step(&mut cas, &targets, message, deadline, timeout_ms).await
                }
                CasStep::Commit { ballot, based_on, entry } => {
                    let committed = self
                        .commit_swap(key.clone(), (ballot, based_on), entry, &targets, commit_required)
                        .await;
                    cas.on_committed(committed)
                }
                CasStep::Retry { above, contended: pause } => {
                    let now = now_ms();
                    if let Err(skew) =
                        self.handler.clock().observe_remote(above, now, self.settings.max_clock_skew_ms)
                    {
                        let reason = format!("a replica's Paxos ballot is too far ahead to follow: {skew}");
                        return Err(failure_of(
                            &cas.abandon(PeerFailure::new(PeerErrorCode::ClockSkew, reason)),
                        ));
                    }
                    if pause {
                        contended += 1;
                        let pause_ms = contention_pause_ms(cas.ballot(), contended);
                        if now.saturating_add(pause_ms) >= deadline {
                            return Err(failure_of(&cas_answer(cas.on_deadline(timeout_ms))));
                        }
                        glommio::timer::sleep(Duration::from_millis(pause_ms)).await;
                    }
                    if now_ms() >= deadline {
                        return Err(failure_of(&cas_answer(cas.on_deadline(timeout_ms))));
                    }
                    cas.begin(self.handler.clock().next_version(now_ms()))
                }
            };
        }
    }

    /// Sends one Paxos request to every target (the own shard's copy served in place) and feeds
    /// the answers to `cas` until it takes its next step or the deadline passes.
    async fn paxos_step(
        &self,
        cas: &mut PaxosCas,
        targets: &[Target],
        message: PeerMessage,
        deadline: u64,
        timeout_ms: u64,
    ) -> CasStep {
        let own = Target { node_id: self.origin.node_id, shard: self.origin.shard };
        let (sender, receiver) = local_channel::new_bounded(targets.len().max(1));
        let sender = Rc::new(sender);
        let request = PeerEnvelope {
            origin_node: self.origin.node_id,
            origin_shard: self.origin.shard,
            request_id: 0,
            message,
        };
        for &target in targets {
            let Some(cluster) = self.this.upgrade() else { break };
            let (sender, request) = (sender.clone(), request.clone());
            glommio::spawn_local(async move {
                let answer = if target == own {
                    Some(cluster.serve_replica(&request).await.message)
                } else {
                    cluster.ask(target, request.message.clone()).await
                };
                // No answer in time counts as a failure: the request may have been carried out.
                let answer = answer.unwrap_or_else(|| {
                    replica::refusal(&request, PeerFailure::new(PeerErrorCode::Internal, "no answer in time"))
                        .message
                });
                let _ = sender.try_send((target, answer));
            })
            .detach();
        }
        drop(sender);
        // A step short of answers after a replica's timeout is tried again at a higher ballot
        // (a broken link may have lost a request or its answer), while the deadline allows.
        let step_deadline = deadline.min(now_ms().saturating_add(self.settings.replica_timeout_ms));
        loop {
            let remaining = Duration::from_millis(step_deadline.saturating_sub(now_ms()));
            let next = futures_lite::future::or(receiver.recv(), async {
                glommio::timer::sleep(remaining).await;
                None
            })
            .await;
            let Some((from, answer)) = next else {
                if step_deadline < deadline {
                    if let Some(step) = cas.on_step_timeout() {
                        return step;
                    }
                }
                return cas.on_deadline(timeout_ms);
            };
            if let Some(step) = cas.on_answer(from, answer, now_ms()) {
                return step;
            }
        }
    }

    /// Commits the entry chosen at `paxos`'s ballot, based on the state of its version, to the
    /// key's replicas (hints for the replicas down), waiting for `required` acknowledgements.
    async fn commit_swap(
        &self,
        key: Bytes,
        paxos: (u64, u64),
        entry: PeerEntry,
        targets: &[Target],
        required: usize,
    ) -> Result<(), CoordinatorError> {
        let down = if self.handoff.is_some() { self.view.borrow().down_replicas(&key) } else { Vec::new() };
        let (sender, receiver) = local_channel::new_bounded(1);
        let mut out = Vec::new();
        let started = {
            let mut coordinator = self.coordinator.borrow_mut();
            let started = coordinator.commit(now_ms(), key, paxos, entry, targets, required, &mut out);
            if let Ok(request_id) = started {
                coordinator.hint_down_replicas(request_id, down);
            }
            started
        };
        self.await_reply(started, out, move |reply| {
            let _ = sender.try_send(reply);
        });
        match receiver.recv().await {
            Some(CoordinatorReply::Written { .. }) => Ok(()),
            Some(CoordinatorReply::Failed(error)) => Err(error),
            Some(CoordinatorReply::Found(_)) | None => Err(self.stopped()),
        }
    }

    /// The acceptor's answer to a prepare of `key` at `ballot`: promised durably when granted,
    /// with the accepted proposal and the head of the newest entry here.
    ///
    /// The entry is read after the state: a commit applies its entry before recording its ballot
    /// (and drops the proposal it supersedes), so every commit the promise reports is in the
    /// entry read. Read the other way round, a commit landing between the two reads would be
    /// reported without its entry, and the proposer would compare against the state before it:
    /// two swaps would both succeed from that state.
    pub(super) async fn paxos_prepare(&self, key: Bytes, ballot: u64) -> Result<Promise, PeerFailure> {
        let (state, granted) = self.acceptor_update(key.clone(), |state| state.prepare(ballot)).await?;
        let current = self
            .handler
            .engine()
            .get_durable_entry(&key)
            .await
            .map_err(healing::storage_failure)?
            .map(|entry| EntryHead::of(&PeerEntry::from(entry)));
        Ok(state.promise(granted, current))
    }

    /// The acceptor's answer to a proposal: accepted durably unless a higher ballot was
    /// promised.
    pub(super) async fn paxos_propose(
        &self,
        key: Bytes,
        ballot: u64,
        based_on: u64,
        entry: PeerEntry,
    ) -> Result<Acceptance, PeerFailure> {
        let (state, accepted) =
            self.acceptor_update(key, move |state| state.propose(ballot, based_on, entry.clone())).await?;
        Ok(state.acceptance(accepted))
    }

    /// The acceptor's part of a commit, once the entry is applied: records the commit at
    /// `ballot` of the entry of `version`, based on the state of version `based_on`, as the key's
    /// most recent (dropping the proposal it supersedes).
    pub(super) async fn paxos_committed(
        &self,
        key: Bytes,
        ballot: u64,
        version: u64,
        based_on: u64,
    ) -> Result<(), PeerFailure> {
        self.acceptor_update(key, |state| state.commit(ballot, version, based_on)).await.map(|_| ())
    }

    /// Reads `key`'s Paxos state, lets `change` change it, and when it did writes it back, synced,
    /// with a compare-and-swap on the state's record (another request for the key between the
    /// read and the write makes it start again from the state that request left).
    async fn acceptor_update(
        &self,
        key: Bytes,
        change: impl Fn(&mut AcceptorState) -> bool,
    ) -> Result<(AcceptorState, bool), PeerFailure> {
        let Some(engine) = self.paxos_engine() else {
            return Err(PeerFailure::new(
                PeerErrorCode::Invalid,
                "this node keeps one copy of each key: no Paxos here",
            ));
        };
        loop {
            let now = now_ms();
            let stored = engine.get(&key, now).await.map_err(healing::storage_failure)?;
            let (mut state, expected) = match stored {
                Some(stored) => {
                    let state = AcceptorState::decode(&stored.value)
                        .map_err(|error| PeerFailure::new(PeerErrorCode::StorageFailed, error.to_string()))?;
                    (state, StoredExpected::Version(stored.version))
                }
                None => (AcceptorState::default(), StoredExpected::Absent),
            };
            if !change(&mut state) {
                return Ok((state, false));
            }
            let record = Bytes::from(state.encode());
            let expires_at_ms = Some(now.saturating_add(ACCEPTOR_STATE_TTL_MS));
            let swapped = engine
                .compare_and_swap_with(key.clone(), expected, now, |stored| {
                    Entry::live(stored.map_or(1, |version| version + 1), record, expires_at_ms)
                })
                .await
                .map_err(healing::storage_failure)?;
            match swapped {
                StoredCas::Swapped { .. } => return Ok((state, true)),
                StoredCas::Mismatch { .. } => continue,
                StoredCas::Stale { current_version } => {
                    return Err(PeerFailure::new(
                        PeerErrorCode::Internal,
                        format!("a Paxos state versioned at or below the stored {current_version}"),
                    ))
                }
            }
        }
    }

    fn paxos_engine(&self) -> Option<Rc<Engine<DmaDisk>>> {
        self.paxos.get().cloned()
    }

    /// Gives the shard its Paxos engine (see [`open_engine`]); without one it refuses Paxos
    /// requests. Call before [`Cluster::start`].
    pub fn set_paxos_engine(&self, engine: Rc<Engine<DmaDisk>>) {
        let _ = self.paxos.set(engine);
    }
}

/// The request a client's compare-and-swap makes, its TTL made an absolute expiry here.
pub fn cas_request(
    key: &[u8],
    expected: Expected,
    value: &[u8],
    ttl_ms: Option<u64>,
    now: u64,
) -> CasRequest {
    CasRequest {
        key: Bytes::copy_from_slice(key),
        expected,
        data: Bytes::copy_from_slice(value),
        expires_at_ms: ttl_ms.map(|ttl_ms| now.saturating_add(ttl_ms)),
    }
}

fn cas_answer(step: CasStep) -> CoordinatorError {
    match step {
        CasStep::Answer(Err(error)) => error,
        _ => CoordinatorError::Timeout { acks: 0, required: 0, timeout_ms: 0 },
    }
}
