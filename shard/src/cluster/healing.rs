//! How a shard's replicas heal: tree maintenance on every applied write, the anti-entropy
//! rounds (initiator and responder), and hint replay. The logic is in `ringkv_replication`
//! (`tictac`, `anti_entropy`, `hints`); this module runs it on the engine and the peer links.
//!
//! ```text
//!  serve_replica(Replicate) ─▶ apply_tracked ─▶ engine ─▶ RangeTrees::update (old → new version)
//!  every anti_entropy_interval: per range this node replicates, per other replica up:
//!     Exchange ─TreeRequest/KeysRequest─▶ peer's serve_replica ─▶ answer_tree / list_segments
//!     Repair: push = Replicate to the peer, pull = Read from the peer, applied here
//!  hint replay (every second, and on Up): Handoff::take_for_replay ─▶ Replicate ─▶ delivered
//! ```
//!
//! Healing requests carry ids with the top bit set, so their answers, which come back through
//! the same links as the coordinator's, go to the waiter here rather than to the coordinator.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use glommio::channels::local_channel;
use ringkv_io::now_ms;
use ringkv_replication::anti_entropy::{answer_tree, Exchange, ExchangeLimits, Step};
use ringkv_replication::replica;
use ringkv_replication::tictac::TokenRange;
use ringkv_replication::Target;
use ringkv_storage::{Entry, PendingWrite, StorageError, WriteOutcome};
use ringkv_wire::peer::{
    KeyList, PeerEntry, PeerEnvelope, PeerErrorCode, PeerFailure, PeerMessage, ReadAnswer, RepairReport,
};
use tracing::{debug, info, warn};

use super::trees::{list_segments, RangeTrees};
use super::Cluster;

/// The top bit marks the ids of healing requests.
pub const HEALING_REQUEST_BIT: u64 = 1 << 63;

/// How long a healing request waits for its answer.
const HEALING_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often hints are considered for replay.
const REPLAY_TICK: Duration = Duration::from_millis(250);

/// Hints sent per replay turn and destination (all in flight at once).
const REPLAY_HINTS_PER_TURN: usize = 256;

/// The pause before an exchange compares segments a second time: writes in flight land
/// meanwhile (a difference they cause then shows up once, not twice). Short, since what a
/// shorter pause lets through costs only a key list and an idempotent push.
const CONFIRM_PAUSE: Duration = Duration::from_millis(50);

/// Keys a repair pushes or pulls at once.
const REPAIR_IN_FLIGHT: usize = 64;

/// The pause between anti-entropy rounds while the shard has lost data and not restored it
/// (it answers no replica read of an unrepaired range meanwhile), when the interval is longer.
const REBUILD_ROUND_PAUSE: Duration = Duration::from_secs(2);

/// What one anti-entropy round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairSummary {
    pub ranges_compared: u64,
    pub exchanges: u64,
    pub exchanges_failed: u64,
    pub segments_differing: u64,
    pub keys_pushed: u64,
    pub keys_pulled: u64,
    pub bytes_sent: u64,
}

/// Healing state of a cluster shard.
#[derive(Default)]
pub struct HealingState {
    next_request: Cell<u64>,
    pub waiters: std::cell::RefCell<std::collections::HashMap<u64, local_channel::LocalSender<PeerEnvelope>>>,
    /// A round is running (periodic or asked for): rounds do not overlap.
    pub round_running: Cell<bool>,
    pub totals: std::cell::RefCell<RepairSummary>,
    /// Hints replayed when replay last logged its figures.
    pub replay_logged: Cell<u64>,
    /// A tree rebuild for a new ring layout runs, and another was asked for meanwhile.
    pub rebuilding: Cell<bool>,
    pub rebuild_again: Cell<bool>,
    /// Repair bytes sent and not yet paid for by a pause (the throttle).
    pub throttle_owed: Cell<u64>,
}

/// A replica's answer when its engine failed.
pub(super) fn storage_failure(error: StorageError) -> PeerFailure {
    PeerFailure::new(PeerErrorCode::StorageFailed, error.to_string())
}

/// Bytes a message takes on the wire, roughly (for the throttle and the report).
fn message_bytes(message: &PeerMessage) -> u64 {
    let payload = match message {
        PeerMessage::Replicate { key, entry } => {
            key.len()
                + match &entry.value {
                    ringkv_wire::peer::PeerValue::Live { data, .. } => data.len(),
                    ringkv_wire::peer::PeerValue::Tombstone { .. } => 0,
                }
        }
        PeerMessage::TreeRequest { branches, .. } => branches.len() * 2,
        PeerMessage::KeysRequest { segments, .. } => segments.len() * 2,
        PeerMessage::Read { key, .. } => key.len(),
        _ => 0,
    };
    payload as u64 + 48
}

/// What [`Cluster::replicate_now`] did with a replicated write.
pub enum ReplicaWrite {
    /// Answered at once (refused, or the engine failed).
    Answer(PeerEnvelope),
    /// Applied; answer it with [`Cluster::answer_applied`] once durable.
    Applied(AppliedReplica),
    /// It needs to wait (or is not a write this shard takes): serve it with
    /// [`Cluster::serve_replica`] in a task of its own.
    Later,
}

/// A replicated write applied in place and not yet durable: nobody is told of it before
/// [`Cluster::answer_applied`] resolves.
pub struct AppliedReplica {
    request: PeerEnvelope,
    key: Bytes,
    /// The key's version before the write, for its range's tree.
    old: Option<u64>,
    pending: PendingWrite,
}

/// Writes applied in place ([`Cluster::replicate_now`]) waiting for one task to acknowledge
/// them, oldest first, once durable.
#[derive(Default)]
pub struct CommitQueue {
    queue: RefCell<VecDeque<AppliedReplica>>,
    ready: Event,
}

impl CommitQueue {
    /// Queues a write for the acknowledging task.
    pub fn push(&self, applied: AppliedReplica) {
        self.queue.borrow_mut().push_back(applied);
        self.ready.notify(1);
    }

    /// Wakes the acknowledging task, so that it sees its owner has ended.
    pub fn wake(&self) {
        self.ready.notify(usize::MAX);
    }

    /// The oldest queued write, waiting for one; `None` once `ended()` holds and none is left.
    pub async fn next(&self, ended: impl Fn() -> bool) -> Option<AppliedReplica> {
        loop {
            if let Some(applied) = self.queue.borrow_mut().pop_front() {
                return Some(applied);
            }
            if ended() {
                return None;
            }
            event_listener::listener!(self.ready => listener);
            if self.queue.borrow().is_empty() && !ended() {
                listener.await;
            }
        }
    }
}

impl Cluster {
    /// Applies a replicated write on the local engine and keeps the range's tree current:
    /// `leaf ^= h(key, old) ^ h(key, new)`. The old version is the one the engine held in memory
    /// when it applied the write, else the one read just before (a read per write whose key is
    /// not in memory: Riak reads before it writes for the same reason).
    pub async fn apply_tracked(&self, key: Bytes, entry: Entry) -> Result<WriteOutcome, StorageError> {
        let engine = self.handler.engine().clone();
        let before = match engine.entry_now(&key, |held| held.map(|held| held.version)) {
            Some(result) => result?,
            None => engine.get_entry(&key).await?.map(|held| held.version),
        };
        let in_memory = Cell::new(None);
        let outcome = engine
            .write_with(key.clone(), |held| {
                in_memory.set(held);
                entry
            })
            .await?;
        self.track(&key, in_memory.get().or(before), &outcome);
        Ok(outcome)
    }

    /// Keeps the range's tree current after a write to `key` whose version was `old`.
    fn track(&self, key: &[u8], old: Option<u64>, outcome: &WriteOutcome) {
        if let WriteOutcome::Applied { version } = outcome {
            self.trees.borrow_mut().update(key, old, Some(*version));
        }
    }

    /// A replicated write (`Replicate`) applied in place, as [`Cluster::apply_tracked`] would,
    /// when it can be without waiting: memory holds the key's state and the memtable has room.
    /// Its acknowledgement is then [`Cluster::answer_applied`], which waits for its WAL commit;
    /// a link answers its writes that way, oldest first, from one task, instead of a task per
    /// write.
    pub fn replicate_now(&self, envelope: &PeerEnvelope) -> ReplicaWrite {
        let PeerMessage::Replicate { key, .. } = &envelope.message else { return ReplicaWrite::Later };
        if !self.view.borrow().owns(key, self.origin.shard) {
            return ReplicaWrite::Later;
        }
        let (key, entry) = match replica::accept(
            envelope,
            self.handler.clock(),
            now_ms(),
            self.settings.max_clock_skew_ms,
        ) {
            Ok(Some(replica::Work::Apply { key, entry })) => (key, Entry::from(entry)),
            Ok(_) => return ReplicaWrite::Later,
            Err(failure) => return ReplicaWrite::Answer(replica::refusal(envelope, failure)),
        };
        let engine = self.handler.engine();
        let before = match engine.entry_now(&key, |held| held.map(|held| held.version)) {
            None => return ReplicaWrite::Later,
            Some(Err(error)) => {
                return ReplicaWrite::Answer(replica::applied(envelope, Err(storage_failure(error))))
            }
            Some(Ok(before)) => before,
        };
        let held = Cell::new(None);
        let pending = engine.write_now(&key, |in_memory| {
            held.set(in_memory);
            entry
        });
        match pending {
            None => ReplicaWrite::Later,
            Some(Err(error)) => ReplicaWrite::Answer(replica::applied(envelope, Err(storage_failure(error)))),
            Some(Ok(pending)) => ReplicaWrite::Applied(AppliedReplica {
                request: envelope.clone(),
                key,
                old: held.get().or(before),
                pending,
            }),
        }
    }

    /// The acknowledgement of a write [`Cluster::replicate_now`] applied, once its WAL commit is
    /// durable (or the failure that kept it from being).
    pub async fn answer_applied(&self, applied: AppliedReplica) -> PeerEnvelope {
        let AppliedReplica { request, key, old, pending } = applied;
        let result = self.handler.engine().acknowledged(pending).await;
        if let Ok(outcome) = &result {
            self.track(&key, old, outcome);
        }
        let result = result.map(|_| ()).map_err(storage_failure);
        replica::applied(&request, result)
    }

    /// Rebuilds the trees for the ring as the view has it now (a new layout starts over).
    pub async fn rebuild_trees(&self) {
        let layout = self.ring_layout();
        if !self.trees.borrow().same_layout(&layout) {
            *self.trees.borrow_mut() = RangeTrees::new(self.origin.node_id, layout);
        }
        let engine = self.handler.engine().clone();
        match RangeTrees::rebuild(&self.trees, &engine, now_ms()).await {
            Ok(keys) => debug!(keys, ranges = self.trees.borrow().ranges().len(), "trees rebuilt"),
            Err(error) => warn!(%error, "rebuilding the anti-entropy trees failed"),
        }
    }

    /// Rebuilds the trees in the background once the ring's layout changed (membership), so
    /// that trees are compared range for range with the other replicas' (which rebuild on the
    /// same change). A rebuild asked for while one runs runs again after it.
    pub fn rebuild_if_layout_changed(&self) {
        if self.trees.borrow().same_layout(&self.ring_layout()) {
            return;
        }
        if self.healing.rebuilding.replace(true) {
            self.healing.rebuild_again.set(true);
            return;
        }
        let Some(cluster) = self.this.upgrade() else { return };
        glommio::spawn_local(async move {
            loop {
                cluster.rebuild_trees().await;
                if !cluster.healing.rebuild_again.replace(false) {
                    break;
                }
            }
            cluster.healing.rebuilding.set(false);
        })
        .detach();
    }

    /// Every ring range with its replicas.
    fn ring_layout(&self) -> Vec<(TokenRange, Vec<u16>)> {
        let view = self.view.borrow();
        view.ring()
            .ranges(view.replicas())
            .into_iter()
            .map(|range| (TokenRange { start: range.start, end: range.end }, range.replicas))
            .collect()
    }

    /// Answers a healing request (tree, keys, repair) on this shard; `None` for any other
    /// message.
    pub async fn serve_healing(&self, envelope: &PeerEnvelope) -> Option<PeerEnvelope> {
        let message = match &envelope.message {
            PeerMessage::TreeRequest { range_start, range_end, level, branches } => {
                let range = TokenRange { start: *range_start, end: *range_end };
                let trees = self.trees.borrow();
                let result = match trees.find(range).and_then(|tracked| tracked.tree.as_ref()) {
                    Some(tree) => Ok(answer_tree(tree, *level, branches)),
                    None => Err(PeerFailure::new(
                        PeerErrorCode::WrongShard,
                        format!("node {} keeps no tree of ({range_start}, {range_end}]", self.origin.node_id),
                    )),
                };
                PeerMessage::TreeReply { result }
            }
            PeerMessage::KeysRequest { range_start, range_end, segments } => {
                let range = TokenRange { start: *range_start, end: *range_end };
                let engine = self.handler.engine().clone();
                let listed = list_segments(&engine, range, segments, now_ms(), |keys, key_bytes| {
                    keys.len() < ringkv_wire::limits::KEY_LIST_ENTRIES_MAX
                        && keys.iter().map(|(key, _)| key.len()).sum::<usize>() + key_bytes
                            <= ringkv_wire::limits::KEY_LIST_BYTES_MAX
                })
                .await;
                let result =
                    listed.map(|(keys, truncated)| KeyList { keys, truncated }).map_err(storage_failure);
                PeerMessage::KeysReply { result }
            }
            PeerMessage::RepairRequest { range } => {
                let only = range.map(|(start, end)| TokenRange { start, end });
                // Boxed: a repair applies pulled keys through serve_replica, which leads back here.
                let summary = Box::pin(self.repair_now(only)).await;
                PeerMessage::RepairReply {
                    report: RepairReport {
                        ranges_compared: summary.ranges_compared,
                        exchanges: summary.exchanges,
                        exchanges_failed: summary.exchanges_failed,
                        keys_pushed: summary.keys_pushed,
                        keys_pulled: summary.keys_pulled,
                        bytes_sent: summary.bytes_sent,
                    },
                }
            }
            _ => return None,
        };
        Some(PeerEnvelope { message, ..envelope.clone() })
    }

    /// Runs an anti-entropy round now (waiting for a periodic one to finish first). The trees
    /// are compared as they are: rebuilding them first would scan every range on every call
    /// (seconds for a million keys), and they were rebuilt at start and stay current.
    pub async fn repair_now(&self, only: Option<TokenRange>) -> RepairSummary {
        while self.healing.round_running.get() && !self.stop.is_triggered() {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        self.anti_entropy_round(only).await
    }

    fn next_healing_id(&self) -> u64 {
        let next = self.healing.next_request.get().wrapping_add(1) & !HEALING_REQUEST_BIT;
        self.healing.next_request.set(next);
        next | HEALING_REQUEST_BIT
    }

    /// Takes the answer to a healing request; hands `envelope` back when it is not one.
    pub fn on_healing_reply(&self, envelope: PeerEnvelope) -> Option<PeerEnvelope> {
        if envelope.request_id & HEALING_REQUEST_BIT == 0 {
            return Some(envelope);
        }
        if let Some(waiter) = self.healing.waiters.borrow_mut().remove(&envelope.request_id) {
            let _ = waiter.try_send(envelope);
        }
        None
    }

    /// Sends a healing request to `to` and waits for its answer (`None`: no answer in time).
    pub(super) async fn ask(&self, to: Target, message: PeerMessage) -> Option<PeerMessage> {
        let request_id = self.next_healing_id();
        let envelope = PeerEnvelope {
            origin_node: self.origin.node_id,
            origin_shard: self.origin.shard,
            request_id,
            message,
        };
        let (sender, receiver) = local_channel::new_bounded(1);
        self.healing.waiters.borrow_mut().insert(request_id, sender);
        if !self.link(to).send(&envelope) {
            self.healing.waiters.borrow_mut().remove(&request_id);
            return None;
        }
        let answer = futures_lite::future::or(async { receiver.recv().await }, async {
            glommio::timer::sleep(HEALING_ANSWER_TIMEOUT).await;
            None
        })
        .await;
        self.healing.waiters.borrow_mut().remove(&request_id);
        answer.map(|envelope| envelope.message)
    }

    /// Sleeps long enough that `bytes` stay within `anti_entropy_bytes_per_s`.
    async fn throttle(&self, bytes: u64) {
        let rate = self.settings.healing.anti_entropy_bytes_per_s.max(1);
        // Small entries owe less than a millisecond each: the debt is paid in pauses of at
        // least 10 ms, so the timer's granularity does not let them through unthrottled.
        let owed = self.healing.throttle_owed.get().saturating_add(bytes);
        let pause_ms = owed.saturating_mul(1000) / rate;
        if pause_ms >= 10 {
            self.healing.throttle_owed.set(0);
            glommio::timer::sleep(Duration::from_millis(pause_ms)).await;
        } else {
            self.healing.throttle_owed.set(owed);
        }
    }

    /// One anti-entropy round: every range this node replicates (or only `only`), against
    /// every other replica up whose shard layout matches this node's.
    pub async fn anti_entropy_round(&self, only: Option<TokenRange>) -> RepairSummary {
        let mut summary = RepairSummary::default();
        if self.healing.round_running.replace(true) {
            return summary;
        }
        let ranges: Vec<(TokenRange, Vec<u16>)> = self
            .trees
            .borrow()
            .ranges()
            .iter()
            .filter(|tracked| tracked.tree.is_some())
            .filter(|tracked| only.is_none_or(|only| only == tracked.range))
            .map(|tracked| (tracked.range, tracked.replicas.clone()))
            .collect();
        let started_ms = now_ms();
        for (range, replicas) in ranges {
            if self.stop.is_triggered() {
                break;
            }
            summary.ranges_compared += 1;
            let mut clean = true;
            for peer in replicas.into_iter().filter(|&node| node != self.origin.node_id) {
                let Some(target) = self.healing_peer(peer) else {
                    clean = false;
                    continue;
                };
                summary.exchanges += 1;
                match self.exchange(target, range, &mut summary).await {
                    Ok(complete) => clean &= complete,
                    Err(reason) => {
                        summary.exchanges_failed += 1;
                        clean = false;
                        debug!(peer, ?range, %reason, "an anti-entropy exchange failed");
                    }
                }
            }
            if clean {
                self.trees.borrow_mut().repaired(range, started_ms);
            }
        }
        self.healing.round_running.set(false);
        self.end_rebuild_once_repaired().await;
        let mut totals = self.healing.totals.borrow_mut();
        totals.ranges_compared += summary.ranges_compared;
        totals.exchanges += summary.exchanges;
        totals.exchanges_failed += summary.exchanges_failed;
        totals.segments_differing += summary.segments_differing;
        totals.keys_pushed += summary.keys_pushed;
        totals.keys_pulled += summary.keys_pulled;
        totals.bytes_sent += summary.bytes_sent;
        if summary.keys_pushed + summary.keys_pulled > 0 {
            info!(
                ranges = summary.ranges_compared,
                pushed = summary.keys_pushed,
                pulled = summary.keys_pulled,
                bytes_sent = summary.bytes_sent,
                "anti-entropy repaired keys"
            );
        }
        summary
    }

    /// The shard of `node` to compare with: the same shard id, when the node is up and splits
    /// the token space among its shards as this node does (then both shards hold the same keys
    /// of every range).
    fn healing_peer(&self, node: u16) -> Option<Target> {
        let view = self.view.borrow();
        if !view.is_up(node) {
            return None;
        }
        let mine = view.member(self.origin.node_id)?;
        let theirs = view.member(node)?;
        if (mine.shards, mine.vnodes_per_shard) != (theirs.shards, theirs.vnodes_per_shard) {
            warn!(node, "no anti-entropy with a node whose shard layout differs from this node's");
            return None;
        }
        Some(Target { node_id: node, shard: self.origin.shard })
    }

    /// One exchange of `range` with `target`; `Ok(true)` when it left nothing behind.
    async fn exchange(
        &self,
        target: Target,
        range: TokenRange,
        summary: &mut RepairSummary,
    ) -> Result<bool, String> {
        let limits = ExchangeLimits::default();
        let mut exchange = Exchange::new(range, limits);
        let mut steps = vec![exchange.start()];
        loop {
            let mut next = Vec::new();
            for step in steps {
                let is_confirmation = matches!(step, Step::Confirm(_));
                match step {
                    Step::Ask(message) | Step::Confirm(message) => {
                        if is_confirmation {
                            // Let writes in flight land before the second comparison.
                            glommio::timer::sleep(CONFIRM_PAUSE).await;
                        }
                        summary.bytes_sent += message_bytes(&message);
                        let Some(answer) = self.ask(target, message).await else {
                            return Err("no answer in time".into());
                        };
                        let trees = self.trees.borrow();
                        let Some(local) = trees.find(range).and_then(|tracked| tracked.tree.as_ref()) else {
                            return Err("the ring changed during the exchange".into());
                        };
                        next.extend(exchange.on_answer(answer, local));
                    }
                    Step::ListLocal { segments } => {
                        let engine = self.handler.engine().clone();
                        let (keys, _) = list_segments(&engine, range, &segments, now_ms(), |_, _| true)
                            .await
                            .map_err(|error| error.to_string())?;
                        // The tree's hashes of these segments from what the engine holds: a
                        // segment the tree got wrong (a write missed by a rebuild's scan) would
                        // otherwise differ in every exchange with nothing to repair, and a range
                        // with many such segments would never come out complete.
                        if let Some(tree) =
                            self.trees.borrow_mut().find_mut(range).and_then(|t| t.tree.as_mut())
                        {
                            let listed: Vec<usize> =
                                segments.iter().map(|&segment| usize::from(segment)).collect();
                            tree.reset_segments(
                                &listed,
                                keys.iter()
                                    .map(|(key, version)| (ringkv_wire::token::token(key), key, *version)),
                            );
                        }
                        next.extend(exchange.on_local_keys(keys));
                    }
                    Step::Done(report) => {
                        summary.segments_differing += report.segments_differing as u64;
                        return Ok(!report.incomplete);
                    }
                    Step::Failed(reason) => return Err(reason),
                    Step::Repair { push, pull, report } => {
                        summary.segments_differing += report.segments_differing as u64;
                        let complete = self.repair(target, push, pull, summary).await;
                        return Ok(complete && !report.incomplete);
                    }
                }
            }
            steps = next;
        }
    }

    /// Pushes the local entries of `push` to `target` and pulls its entries of `pull` here,
    /// `REPAIR_IN_FLIGHT` keys at a time (so the replicas' group commit covers many of them).
    async fn repair(
        &self,
        target: Target,
        push: Vec<Bytes>,
        pull: Vec<Bytes>,
        summary: &mut RepairSummary,
    ) -> bool {
        let Some(cluster) = self.this.upgrade() else { return false };
        let mut complete = true;
        let work: Vec<(Bytes, bool)> =
            push.into_iter().map(|key| (key, true)).chain(pull.into_iter().map(|key| (key, false))).collect();
        for chunk in work.chunks(REPAIR_IN_FLIGHT) {
            let tasks: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|(key, is_push)| {
                    let cluster = cluster.clone();
                    glommio::spawn_local(async move {
                        if is_push {
                            cluster.push_one(target, key).await
                        } else {
                            cluster.pull_one(target, key).await
                        }
                    })
                })
                .collect();
            let mut bytes = 0;
            for (task, (_, is_push)) in tasks.into_iter().zip(chunk) {
                let (repaired, sent) = task.await;
                bytes += sent;
                match (repaired, is_push) {
                    (Some(true), true) => summary.keys_pushed += 1,
                    (Some(true), false) => summary.keys_pulled += 1,
                    (Some(false), _) => {}
                    (None, _) => complete = false,
                }
            }
            summary.bytes_sent += bytes;
            self.throttle(bytes).await;
        }
        complete
    }

    /// Pushes the local entry of `key` to `target`: `Some(true)` when pushed, `Some(false)` when
    /// there was nothing to push, `None` on failure; and the bytes sent.
    async fn push_one(&self, target: Target, key: Bytes) -> (Option<bool>, u64) {
        let entry = match self.handler.engine().get_entry(&key).await {
            Ok(Some(entry)) => PeerEntry::from(entry),
            Ok(None) => return (Some(false), 0),
            Err(error) => {
                warn!(%error, "reading a key to repair failed");
                return (None, 0);
            }
        };
        let message = PeerMessage::Replicate { key, entry };
        let bytes = message_bytes(&message);
        match self.ask(target, message).await {
            Some(PeerMessage::ReplicateAck { result: Ok(()) }) => (Some(true), bytes),
            _ => (None, bytes),
        }
    }

    /// Pulls `target`'s entry of `key` and applies it here through the replica path
    /// (clock-skew check, ownership, tree update).
    async fn pull_one(&self, target: Target, key: Bytes) -> (Option<bool>, u64) {
        let message = PeerMessage::Read { key: key.clone(), digest_only: false };
        let bytes = message_bytes(&message);
        let entry = match self.ask(target, message).await {
            Some(PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(Some(entry))) }) => entry,
            Some(PeerMessage::ReadReply { result: Ok(_) }) => return (Some(false), bytes),
            _ => return (None, bytes),
        };
        let envelope = PeerEnvelope {
            origin_node: target.node_id,
            origin_shard: target.shard,
            request_id: 0,
            message: PeerMessage::Replicate { key, entry },
        };
        match Box::pin(self.serve_replica(&envelope)).await.message {
            PeerMessage::ReplicateAck { result: Ok(()) } => (Some(true), bytes),
            _ => (None, bytes),
        }
    }

    /// Runs anti-entropy rounds every `anti_entropy_interval_ms` and rebuilds the trees every
    /// `tree_rebuild_interval_ms`, until the shard stops.
    pub async fn run_anti_entropy(self: Rc<Self>) {
        self.rebuild_trees().await;
        let interval = Duration::from_millis(self.settings.healing.anti_entropy_interval_ms.max(1));
        let mut last_rebuild = now_ms();
        while !self.stop.is_triggered() {
            let pause = if self.rebuilding_since_ms.get().is_some() {
                interval.min(REBUILD_ROUND_PAUSE)
            } else {
                interval
            };
            futures_lite::future::or(glommio::timer::sleep(pause), self.stop.wait()).await;
            if self.stop.is_triggered() {
                break;
            }
            let layout_changed = !self.trees.borrow().same_layout(&self.ring_layout());
            if layout_changed
                || now_ms().saturating_sub(last_rebuild) >= self.settings.healing.tree_rebuild_interval_ms
            {
                self.rebuild_trees().await;
                last_rebuild = now_ms();
            }
            if self.is_replicated() {
                self.anti_entropy_round(None).await;
            }
        }
    }

    /// Sends one hint, re-resolved by the current ring: to the destination if it still holds
    /// the key, else to the key's live replicas (a hint for a range that moved). True when
    /// every target acknowledged it.
    async fn replay_one(&self, destination: u16, hint: &ringkv_storage::hints::StoredHint) -> bool {
        let (targets, _) = self.view.borrow().targets(&hint.key);
        let to: Vec<Target> = match targets.iter().find(|target| target.node_id == destination) {
            Some(target) => vec![*target],
            None => targets.into_iter().filter(|target| target.node_id != self.origin.node_id).collect(),
        };
        let mut delivered = true;
        for target in to {
            let message =
                PeerMessage::Replicate { key: hint.key.clone(), entry: PeerEntry::from(hint.entry.clone()) };
            match self.ask(target, message).await {
                Some(PeerMessage::ReplicateAck { result: Ok(()) }) => {}
                _ => delivered = false,
            }
        }
        delivered
    }

    /// Replays hints to destinations that are up, throttled, until the shard stops.
    pub async fn run_hint_replay(self: Rc<Self>) {
        let Some(handoff) = self.handoff.clone() else { return };
        while !self.stop.is_triggered() {
            futures_lite::future::or(glommio::timer::sleep(REPLAY_TICK), self.stop.wait()).await;
            handoff.log_durable(now_ms());
            for destination in handoff.waiting() {
                if !self.view.borrow().is_up(destination) {
                    continue;
                }
                // Batch after batch while the budget lasts and every hint is acknowledged.
                loop {
                    let hints = handoff.take_for_replay(destination, now_ms(), REPLAY_HINTS_PER_TURN);
                    if hints.is_empty() || self.stop.is_triggered() {
                        break;
                    }
                    // Sent together: the highest version wins whatever the arrival order, and
                    // the destination's group commit then covers many hints per sync.
                    let tasks: Vec<_> = hints
                        .iter()
                        .map(|hint| {
                            let cluster = self.clone();
                            let hint = hint.clone();
                            glommio::spawn_local(async move { cluster.replay_one(destination, &hint).await })
                        })
                        .collect();
                    let mut undelivered = Vec::new();
                    for (task, hint) in tasks.into_iter().zip(hints) {
                        if task.await {
                            handoff.delivered(destination, &hint).await;
                        } else {
                            undelivered.push(hint);
                        }
                    }
                    if !undelivered.is_empty() {
                        handoff.give_back(destination, undelivered);
                        break;
                    }
                }
            }
            let counters = handoff.counters();
            if counters.replayed > self.healing.replay_logged.get() && handoff.waiting().is_empty() {
                self.healing.replay_logged.set(counters.replayed);
                info!(
                    shard = self.origin.shard,
                    stored = counters.stored,
                    replayed = counters.replayed,
                    replayed_bytes = counters.replayed_bytes,
                    dropped_full = counters.dropped_full,
                    dropped_window = counters.dropped_window,
                    dropped_grace = counters.dropped_grace,
                    "hint replay finished"
                );
            }
        }
    }
}
