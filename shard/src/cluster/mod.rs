//! [`Cluster`]: one shard's part in the replicated cluster: it coordinates the client requests
//! this shard receives, serves as a replica for other nodes, and keeps its view of the cluster.
//!
//! ```text
//!  Router ─op─▶ Cluster::execute ─▶ Coordinator (sans-IO) ─Send─┬─ own copy ─▶ serve_replica ─▶ engine
//!                   ▲                                           └─ PeerLink ─TCP─▶ remote shard's peer port
//!                   └── Reply ◀── on_reply ◀── replica answers (own, or read back from the link)
//!  peer port ─▶ peer_server ─▶ serve_replica ─▶ engine ─▶ answer on the same link
//!  shard 0: gossip task (UDP, foca) ─▶ MembershipSnapshot ─▶ every shard's ClusterView
//! ```
//!
//! With one copy of each key (a single node, or `replication_factor` 1) requests skip all of this
//! and go straight to the handler, exactly as a single node runs.
//!
//! ## Layout
//! - [`view`]: [`ClusterView`], members, liveness, the ring and each node's shard mapping.
//! - [`peer_link`]: [`PeerLink`], an outbound link to one remote shard.
//! - [`peer_server`]: the replica side of links, on this shard's peer port.
//! - [`gossip`]: the membership task (shard 0) and its snapshots for every shard.
//! - [`known_peers`]: the members known, kept in the data directory across restarts.
//! - [`trees`]: [`trees::RangeTrees`], the anti-entropy tree of every range this node replicates.
//! - [`handoff`]: [`handoff::Handoff`], the hints kept for replicas that missed writes.
//! - [`healing`]: tree maintenance, anti-entropy rounds and hint replay on this shard.
//! - [`paxos`]: compare-and-swap across replicas: the Paxos acceptor and the swap driver.

pub mod gossip;
pub mod handoff;
pub mod healing;
pub mod known_peers;
pub mod paxos;
pub mod peer_auth;
pub mod peer_link;
pub mod peer_server;
pub mod trees;
pub mod view;

use crate::request_memory::RequestMemory;
use healing::{CommitQueue, ReplicaWrite};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel;
use glommio::task::JoinHandle;
use ringkv_io::{now_ms, DmaDisk};
use ringkv_replication::coordinator::Output;
use ringkv_replication::ids::IdMap;
use ringkv_replication::{
    replica, Coordinator, CoordinatorConfig, CoordinatorError, CoordinatorReply, Target,
};
use ringkv_storage::Entry;
use ringkv_wire::peer::{PeerEntry, PeerEnvelope, PeerErrorCode, PeerFailure, PeerMessage, PeerValue};
use ringkv_wire::{Consistency, ErrorCode, Failure, Operation, Outcome};
use tracing::{info, warn};

use crate::handler::Handler;
use crate::stop_signal::StopSignal;
pub use peer_link::{LinkOrigin, PeerLink};
pub use view::{ClusterView, MembershipSnapshot};

/// How often pending requests are checked against their deadlines.
const TICK_MS: u64 = 10;

/// What is done with a coordinated request's reply.
type Waiter = Box<dyn FnOnce(CoordinatorReply)>;

/// The settings a shard's cluster part runs with.
#[derive(Clone, Copy, Debug)]
pub struct ClusterSettings {
    pub write_consistency: Consistency,
    pub read_consistency: Consistency,
    pub max_clock_skew_ms: u64,
    pub replica_timeout_ms: u64,
    pub peer_pending_max: usize,
    pub peer_outbox_bytes_max: usize,
    pub peer_in_flight_max: usize,
    /// Bytes the shard's peer links together may hold in receive buffers (a budget of their own,
    /// so that clients that spend theirs cannot stall replication).
    pub peer_receive_bytes_max: usize,
    pub healing: HealingSettings,
    /// The key from the cluster secret: peer links and membership datagrams authenticate with
    /// it (see [`peer_auth`]). `None`: no cluster secret, nothing is authenticated.
    pub peer_key: Option<peer_auth::PeerKey>,
    /// How long a peer frame that has started may take to finish arriving on the peer port
    /// (`frame_timeout_ms`, as for clients).
    pub peer_frame_timeout_ms: u64,
}

/// How replicas heal (hinted handoff and anti-entropy).
#[derive(Clone, Copy, Debug)]
pub struct HealingSettings {
    pub hints: ringkv_replication::hints::HintSettings,
    /// Hinted handoff on or off.
    pub hints_enabled: bool,
    pub anti_entropy_interval_ms: u64,
    pub anti_entropy_bytes_per_s: u64,
    pub tree_rebuild_interval_ms: u64,
}

/// One shard's cluster part.
pub struct Cluster {
    origin: LinkOrigin,
    settings: ClusterSettings,
    handler: Rc<Handler<DmaDisk>>,
    /// What the peer links' receive buffers hold.
    peer_memory: Rc<RequestMemory>,
    view: RefCell<ClusterView>,
    coordinator: RefCell<Coordinator>,
    /// What to do with each pending request's reply.
    waiters: RefCell<IdMap<Waiter>>,
    links: RefCell<HashMap<Target, Rc<PeerLink>>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    stop: Rc<StopSignal>,
    this: Weak<Cluster>,
    trees: RefCell<trees::RangeTrees>,
    healing: healing::HealingState,
    handoff: Option<Rc<handoff::Handoff>>,
    /// TLS for peer links and the peer port, with the handshake's time bound.
    tls: std::cell::OnceCell<(crate::tls::TlsSettings, Duration)>,
    /// This shard's own copies of the writes it coordinates, applied in place and answered
    /// oldest first once durable by one task (started by [`Cluster::start`]); bounded by the
    /// coordinator's pending requests, one each.
    own_commits: CommitQueue,
    own_committer_running: Cell<bool>,
    /// When this shard started, if its engine lost data (tables, or all its files) that is not
    /// restored yet: it answers no replica read of a range until anti-entropy repaired the range
    /// after this.
    rebuilding_since_ms: Cell<Option<u64>>,
    /// Until when this shard refuses Paxos requests because its data, and with it its Paxos
    /// state, was lost (`paxos::forgetful_until_ms`); 0 when it was not.
    paxos_forgetful_until_ms: Cell<u64>,
    /// The engine of this shard's Paxos state (see [`paxos`]), when keys have several copies.
    paxos: std::cell::OnceCell<Rc<ringkv_storage::Engine<DmaDisk>>>,
    /// Compare-and-swaps this shard coordinates now; at most `peer_pending_max`.
    swaps_running: Cell<usize>,
}

impl Cluster {
    /// The cluster part of a shard; call [`Cluster::start`] on its executor.
    pub fn new(
        origin: LinkOrigin,
        settings: ClusterSettings,
        handler: Rc<Handler<DmaDisk>>,
        view: ClusterView,
        handoff: Option<Rc<handoff::Handoff>>,
    ) -> Rc<Self> {
        let coordinator = Coordinator::new(CoordinatorConfig {
            node_id: origin.node_id,
            shard: origin.shard,
            replica_timeout_ms: settings.replica_timeout_ms,
            pending_max: settings.peer_pending_max,
        });
        Rc::new_cyclic(|this| Cluster {
            origin,
            peer_memory: RequestMemory::new(settings.peer_receive_bytes_max),
            settings,
            handler,
            view: RefCell::new(view),
            coordinator: RefCell::new(coordinator),
            waiters: RefCell::new(IdMap::default()),
            links: RefCell::new(HashMap::new()),
            tasks: RefCell::new(Vec::new()),
            stop: Rc::new(StopSignal::new()),
            this: this.clone(),
            trees: RefCell::new(trees::RangeTrees::default()),
            healing: healing::HealingState::default(),
            handoff,
            tls: std::cell::OnceCell::new(),
            own_commits: CommitQueue::default(),
            own_committer_running: Cell::new(false),
            rebuilding_since_ms: Cell::new(None),
            paxos_forgetful_until_ms: Cell::new(0),
            paxos: std::cell::OnceCell::new(),
            swaps_running: Cell::new(0),
        })
    }

    /// Turns on mutual TLS for the peer port and the links this shard opens; a handshake must
    /// finish within `handshake_timeout`. Call before [`Cluster::start`].
    pub fn set_tls(&self, tls: crate::tls::TlsSettings, handshake_timeout: Duration) {
        let _ = self.tls.set((tls, handshake_timeout));
    }

    /// The TLS settings of peer links, when TLS is on.
    pub(crate) fn tls(&self) -> Option<&(crate::tls::TlsSettings, Duration)> {
        self.tls.get()
    }

    /// Starts the deadline ticker.
    pub fn start(self: &Rc<Self>) {
        if self.handler.engine().rebuilding() {
            warn!(
                shard = self.origin.shard,
                "this shard is rebuilding (it lost data, or its node joined the cluster): it answers no \
                 replica read of a range until anti-entropy has restored the range from the other replicas"
            );
            let now = now_ms();
            self.rebuilding_since_ms.set(Some(now));
            self.paxos_forgetful_until_ms.set(ringkv_replication::paxos::forgetful_until_ms(
                now,
                self.settings.replica_timeout_ms,
                self.settings.max_clock_skew_ms,
            ));
        }
        let cluster = self.clone();
        let ticker = glommio::spawn_local(async move {
            while !cluster.stop.is_triggered() {
                futures_lite::future::or(
                    glommio::timer::sleep(Duration::from_millis(TICK_MS)),
                    cluster.stop.wait(),
                )
                .await;
                let mut out = Vec::new();
                cluster.coordinator.borrow_mut().tick(now_ms(), &mut out);
                cluster.dispatch(out);
            }
        })
        .detach();
        self.tasks.borrow_mut().push(ticker);
        // A tombstone is purged only once its range was repaired after the delete.
        let this = self.this.clone();
        self.handler.engine().set_purge_gate(Box::new(move |token, dead_since_ms| {
            this.upgrade().is_some_and(|cluster| cluster.trees.borrow().may_purge(token, dead_since_ms))
        }));
        let committer = glommio::spawn_local(self.clone().answer_own_commits()).detach();
        self.own_committer_running.set(true);
        self.tasks.borrow_mut().push(committer);
        let anti_entropy = glommio::spawn_local(self.clone().run_anti_entropy()).detach();
        let replay = glommio::spawn_local(self.clone().run_hint_replay()).detach();
        self.tasks.borrow_mut().extend([anti_entropy, replay]);
    }

    /// Answers this shard's own copies of the writes it coordinates, applied in place, oldest
    /// first once durable; after the stop, the ones queued before it.
    async fn answer_own_commits(self: Rc<Self>) {
        let own = Target { node_id: self.origin.node_id, shard: self.origin.shard };
        while let Some(applied) = self.own_commits.next(|| self.stop.is_triggered()).await {
            let answer = self.answer_applied(applied).await;
            self.on_reply(own, answer);
        }
        self.own_committer_running.set(false);
    }

    /// Stops the ticker and every link; pending requests are answered with a timeout.
    pub async fn stop(&self) {
        self.stop.trigger();
        self.own_commits.wake();
        for link in self.links.borrow().values() {
            link.stop();
        }
        let tasks: Vec<_> = self.tasks.borrow_mut().drain(..).collect();
        for task in tasks {
            task.await;
        }
        let mut out = Vec::new();
        self.coordinator.borrow_mut().tick(u64::MAX, &mut out);
        self.dispatch(out);
    }

    /// This shard's id.
    pub fn shard_id(&self) -> u32 {
        self.origin.shard
    }

    /// The settings.
    /// The budget the peer links' receive buffers are charged to.
    pub(crate) fn peer_memory(&self) -> &Rc<RequestMemory> {
        &self.peer_memory
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Takes a new membership snapshot.
    pub fn apply(&self, snapshot: Arc<MembershipSnapshot>) {
        let mut view = self.view.borrow_mut();
        let before = view.replicas();
        if let Some(handoff) = &self.handoff {
            let now = now_ms();
            let old = view.snapshot();
            for node in snapshot.members.keys().filter(|&&node| node != self.origin.node_id) {
                match (old.up.contains(node), snapshot.up.contains(node)) {
                    (true, false) => handoff.mark_down(*node, now),
                    (false, true) => handoff.mark_up(*node),
                    _ => {}
                }
            }
            // A node no longer a member left the cluster: its hints go.
            for &node in old.members.keys().filter(|node| !snapshot.members.contains_key(node)) {
                let handoff = handoff.clone();
                glommio::spawn_local(async move { handoff.purge(node).await }).detach();
            }
        }
        view.apply(snapshot);
        if view.replicas() < view.replication_factor() && view.replicas() != before {
            warn!(
                replication_factor = view.replication_factor(),
                nodes = view.ring().node_count(),
                "fewer nodes than the replication factor: each key has {} copies",
                view.replicas()
            );
        }
        drop(view);
        self.rebuild_if_layout_changed();
        let view = self.view.borrow();
        // A node that restarted elsewhere keeps its links, pointed at the new address.
        for (target, link) in self.links.borrow().iter() {
            if let Some(identity) = view.member(target.node_id) {
                link.set_address(identity.shard_peer_address(target.shard));
            }
        }
    }

    /// Runs `f` with the current view.
    pub fn with_view<R>(&self, f: impl FnOnce(&ClusterView) -> R) -> R {
        f(&self.view.borrow())
    }

    /// This shard's cluster figures (coordinator, hints, anti-entropy), as they are now.
    pub fn figures(&self) -> crate::metrics::ClusterFigures {
        let coordinator = self.coordinator.borrow().counters();
        let hints = self.handoff.as_ref().map(|handoff| handoff.counters()).unwrap_or_default();
        let totals = *self.healing.totals.borrow();
        crate::metrics::ClusterFigures {
            replica_timeouts: coordinator.timeouts,
            read_repairs: coordinator.read_repairs,
            read_repair_replicas: coordinator.read_repair_replicas,
            hints_stored: hints.stored,
            hints_stored_bytes: hints.stored_bytes,
            hints_replayed: hints.replayed,
            hints_replayed_bytes: hints.replayed_bytes,
            hints_dropped_full: hints.dropped_full,
            hints_dropped_window: hints.dropped_window,
            hints_dropped_grace: hints.dropped_grace,
            anti_entropy_exchanges: totals.exchanges,
            anti_entropy_exchanges_failed: totals.exchanges_failed,
            anti_entropy_keys_pushed: totals.keys_pushed,
            anti_entropy_keys_pulled: totals.keys_pulled,
            anti_entropy_bytes_sent: totals.bytes_sent,
            rebuilding: u64::from(self.rebuilding_since_ms.get().is_some()),
        }
    }

    /// Whether this shard's requests go through replication (more than one copy of each key).
    pub fn is_replicated(&self) -> bool {
        self.view.borrow().is_replicated()
    }

    /// Carries out an operation on the shard that owns its key: through the key's replicas when
    /// keys have several copies, straight on the local handler when they have one.
    pub async fn execute_owned(
        &self,
        operation: Operation,
        consistency: Option<Consistency>,
    ) -> Result<Outcome, Failure> {
        if self.is_replicated() {
            self.execute(operation, consistency).await
        } else {
            self.handler.execute(operation).await
        }
    }

    /// Carries out a client operation through the replicas of its key, at `consistency` (the
    /// configured level for its kind when `None`).
    pub async fn execute(
        &self,
        operation: Operation,
        consistency: Option<Consistency>,
    ) -> Result<Outcome, Failure> {
        let (sender, receiver) = local_channel::new_bounded(1);
        self.coordinate(operation, consistency, move |result| {
            let _ = sender.try_send(result);
        });
        receiver.recv().await.unwrap_or_else(|| Err(failure_of(&self.stopped())))
    }

    /// Starts a client operation through the replicas of its key, at `consistency` (the
    /// configured level for its kind when `None`); `done` is handed the result when the replicas
    /// have answered, in place when they already have (a read at ONE of a key in memory). No
    /// task per request: on the hot path a connection hands its reply slot in as `done`.
    pub fn coordinate(
        &self,
        operation: Operation,
        consistency: Option<Consistency>,
        done: impl FnOnce(Result<Outcome, Failure>) + 'static,
    ) {
        if let Some(reason) = self.view.borrow().refused() {
            return done(Err(Failure::new(ErrorCode::Unavailable, reason.to_owned())));
        }
        let now = now_ms();
        match operation {
            Operation::Get { key } => {
                let consistency = consistency.unwrap_or(self.settings.read_consistency);
                let (targets, replicas) = self.view.borrow().targets(&key);
                let required = consistency.required(replicas);
                let mut out = Vec::new();
                let started = self.coordinator.borrow_mut().read(now, key, &targets, required, &mut out);
                let handler = self.handler.clone();
                let max_skew = self.settings.max_clock_skew_ms;
                self.await_reply(started, out, move |reply| {
                    done(read_outcome(reply, &handler, now, max_skew))
                });
            }
            Operation::Put { key, value, ttl_ms } => {
                let version = self.handler.clock().next_version(now);
                // A TTL becomes an absolute expiry set here, so every replica expires the value
                // at the same moment.
                let expires_at_ms = ttl_ms.map(|ttl_ms| now.saturating_add(ttl_ms));
                let entry = PeerEntry {
                    version,
                    value: PeerValue::Live { data: Bytes::copy_from_slice(&value), expires_at_ms },
                };
                self.start_write(Bytes::copy_from_slice(&key), entry, consistency, done);
            }
            Operation::Delete { key } => {
                let version = self.handler.clock().next_version(now);
                let entry = PeerEntry { version, value: PeerValue::Tombstone { deleted_at_ms: now } };
                self.start_write(Bytes::copy_from_slice(&key), entry, consistency, done);
            }
            Operation::CompareAndSwap { key, expected, value, ttl_ms } => {
                let request = paxos::cas_request(&key, expected, &value, ttl_ms, now);
                self.start_swap(request, consistency, done);
            }
        }
    }

    fn start_write(
        &self,
        key: Bytes,
        entry: PeerEntry,
        consistency: Option<Consistency>,
        done: impl FnOnce(Result<Outcome, Failure>) + 'static,
    ) {
        let consistency = consistency.unwrap_or(self.settings.write_consistency);
        let (targets, replicas) = self.view.borrow().targets(&key);
        let required = consistency.required(replicas);
        let mut out = Vec::new();
        // Replicas down now get a hint once the write is answered, unless every replica asked
        // refused it; hints never count toward W.
        let down = if self.handoff.is_some() && targets.len() < replicas {
            self.view.borrow().down_replicas(&key)
        } else {
            Vec::new()
        };
        let mut coordinator = self.coordinator.borrow_mut();
        let started = coordinator.write(now_ms(), key, entry, &targets, required, &mut out);
        if let Ok(request_id) = started {
            coordinator.hint_down_replicas(request_id, down);
        }
        drop(coordinator);
        self.await_reply(started, out, move |reply| {
            done(match reply {
                CoordinatorReply::Written { version } => Ok(Outcome::Written { version }),
                CoordinatorReply::Failed(error) => Err(failure_of(&error)),
                CoordinatorReply::Found(_) => {
                    Err(Failure::new(ErrorCode::Internal, "a write was answered as a read"))
                }
            })
        });
    }

    /// Registers `waiter` for the request the coordinator `started`, then runs the
    /// coordinator's commands (which may answer it at once).
    fn await_reply(
        &self,
        started: Result<u64, CoordinatorError>,
        out: Vec<Output>,
        waiter: impl FnOnce(CoordinatorReply) + 'static,
    ) {
        match started {
            Ok(request_id) => {
                self.waiters.borrow_mut().insert(request_id, Box::new(waiter));
                self.dispatch(out);
            }
            Err(error) => waiter(CoordinatorReply::Failed(error)),
        }
    }

    /// What a request still waiting when the shard stops is told.
    fn stopped(&self) -> CoordinatorError {
        CoordinatorError::Timeout { acks: 0, required: 0, timeout_ms: self.settings.replica_timeout_ms }
    }

    /// Runs the coordinator's commands.
    fn dispatch(&self, outputs: Vec<Output>) {
        let own = Target { node_id: self.origin.node_id, shard: self.origin.shard };
        for output in outputs {
            match output {
                Output::Reply { request_id, reply } => {
                    let waiter = self.waiters.borrow_mut().remove(&request_id);
                    if let Some(waiter) = waiter {
                        waiter(reply);
                    }
                }
                Output::Send { to, envelope } if to == own => {
                    // The own copy answers in place when memory holds it: no task, no hop.
                    if let Some(answer) = self.serve_replica_now(&envelope) {
                        self.on_reply(own, answer);
                        continue;
                    }
                    if self.own_committer_running.get() && !self.stop.is_triggered() {
                        match self.replicate_now(&envelope) {
                            ReplicaWrite::Answer(answer) => {
                                self.on_reply(own, answer);
                                continue;
                            }
                            ReplicaWrite::Applied(applied) => {
                                self.own_commits.push(applied);
                                continue;
                            }
                            ReplicaWrite::Later => {}
                        }
                    }
                    let Some(cluster) = self.this.upgrade() else { continue };
                    glommio::spawn_local(async move {
                        let answer = cluster.serve_replica(&envelope).await;
                        cluster.on_reply(own, answer);
                    })
                    .detach();
                }
                Output::Hint { to, key, entry } => self.store_hint(to, key, entry),
                Output::Send { to, envelope } => {
                    if !self.link(to).send(&envelope) {
                        tracing::debug!(node = to.node_id, "peer outbox full; the request will time out");
                    }
                }
            }
        }
    }

    /// Keeps a hint for `to` (in the background: the log append may wait to open the log).
    fn store_hint(&self, to: Target, key: Bytes, entry: PeerEntry) {
        let Some(handoff) = self.handoff.clone() else { return };
        if to.node_id == self.origin.node_id {
            return;
        }
        glommio::spawn_local(
            async move { handoff.store(to.node_id, key, Entry::from(entry), now_ms()).await },
        )
        .detach();
    }

    fn on_reply(&self, from: Target, envelope: PeerEnvelope) {
        let Some(envelope) = self.on_healing_reply(envelope) else { return };
        let mut out = Vec::new();
        self.coordinator.borrow_mut().on_reply(from, envelope, &mut out);
        self.dispatch(out);
    }

    fn link(&self, target: Target) -> Rc<PeerLink> {
        if let Some(link) = self.links.borrow().get(&target) {
            return link.clone();
        }
        let address = self
            .view
            .borrow()
            .member(target.node_id)
            .map(|identity| identity.shard_peer_address(target.shard))
            .expect("targets come from the view's members");
        let link = Rc::new(
            PeerLink::new(
                target,
                address,
                self.origin,
                self.settings.peer_outbox_bytes_max,
                self.peer_memory.clone(),
                self.settings.peer_key,
            )
            .with_tls(self.tls.get().map(|(tls, _)| tls.clone())),
        );
        let this = self.this.clone();
        let on_reply: Rc<dyn Fn(Target, PeerEnvelope)> = Rc::new(move |from, envelope| {
            if let Some(cluster) = this.upgrade() {
                cluster.on_reply(from, envelope);
            }
        });
        let task = glommio::spawn_local(link.clone().run(on_reply)).detach();
        self.tasks.borrow_mut().push(task);
        self.links.borrow_mut().insert(target, link.clone());
        link
    }

    /// Answers a replica read in place when memory holds the key's entry (the usual case for a
    /// hot key) and it is durable; `None` when the read needs the disk, must wait for the group
    /// commit of the entry it found (a replica tells a coordinator only what is durable here,
    /// as a shard tells its clients), or the request is a write: run [`Cluster::serve_replica`]
    /// then.
    pub fn serve_replica_now(&self, envelope: &PeerEnvelope) -> Option<PeerEnvelope> {
        let PeerMessage::Read { key, digest_only } = &envelope.message else { return None };
        if !self.view.borrow().owns(key, self.origin.shard) || self.rebuilding_since_ms.get().is_some() {
            return None;
        }
        let found = self.handler.engine().entry_now_hashed(key, None, |entry, unsettled| {
            unsettled.is_none().then(|| entry.cloned().map(PeerEntry::from))
        })?;
        let result = found.transpose()?.map_err(healing::storage_failure);
        Some(replica::read_answer(envelope, *digest_only, result))
    }

    /// Why this shard answers no replica read of `key`, if it does not: its engine lost data
    /// and anti-entropy has not repaired the key's range since this shard started. A stale
    /// answer from it could otherwise complete a quorum that misses an acknowledged write (the
    /// coordinator asks another replica instead).
    fn rebuilding_refusal(&self, key: &[u8]) -> Option<PeerFailure> {
        let since = self.rebuilding_since_ms.get()?;
        if self.trees.borrow().repaired_since(ringkv_wire::token::token(key), since) {
            return None;
        }
        Some(PeerFailure::new(
            PeerErrorCode::Rebuilding,
            format!(
                "shard {} of node {} has not restored this key's range yet (it lost data, or its node joined)",
                self.origin.shard, self.origin.node_id
            ),
        ))
    }

    /// Why this shard takes no part in a Paxos decision about `key`, if it does not: as for
    /// replica reads, and besides, for a while after it started with its data lost, since it may
    /// have forgotten promises that swaps still running rely on.
    fn paxos_refusal(&self, key: &[u8]) -> Option<PeerFailure> {
        if let Some(failure) = self.rebuilding_refusal(key) {
            return Some(failure);
        }
        let until = self.paxos_forgetful_until_ms.get();
        (now_ms() < until).then(|| {
            PeerFailure::new(
                PeerErrorCode::Rebuilding,
                format!(
                    "shard {} of node {} lost its Paxos state with its data: it takes part in no swap \
                     until the swaps running then have ended",
                    self.origin.shard, self.origin.node_id
                ),
            )
        })
    }

    /// Once every range this shard holds was repaired after its start, records that the data it
    /// lost is restored: replica reads are answered again.
    async fn end_rebuild_once_repaired(&self) {
        let Some(since) = self.rebuilding_since_ms.get() else { return };
        if !self.trees.borrow().all_repaired_since(since) {
            return;
        }
        match self.handler.engine().rebuilt().await {
            Ok(()) => {
                self.rebuilding_since_ms.set(None);
                info!(
                    shard = self.origin.shard,
                    "every range repaired since the shard started rebuilding: serving replica reads again"
                );
            }
            Err(error) => {
                warn!(%error, "could not record that the lost data is restored; replica reads stay refused")
            }
        }
    }

    /// Serves a replica request (from a peer link, or from this shard's own coordinator) on the
    /// local engine and returns the answer.
    pub async fn serve_replica(&self, envelope: &PeerEnvelope) -> PeerEnvelope {
        let engine = self.handler.engine();
        if let PeerMessage::Replicate { key, .. }
        | PeerMessage::Read { key, .. }
        | PeerMessage::PaxosPrepare { key, .. }
        | PeerMessage::PaxosPropose { key, .. }
        | PeerMessage::PaxosCommit { key, .. } = &envelope.message
        {
            if !self.view.borrow().owns(key, self.origin.shard) {
                let failure = PeerFailure {
                    code: PeerErrorCode::WrongShard,
                    message: format!(
                        "shard {} of node {} does not own this key",
                        self.origin.shard, self.origin.node_id
                    ),
                };
                return replica::refusal(envelope, failure);
            }
        }
        if let Some(answer) = self.serve_healing(envelope).await {
            return answer;
        }
        match replica::accept(envelope, self.handler.clock(), now_ms(), self.settings.max_clock_skew_ms) {
            Ok(Some(replica::Work::Apply { key, entry })) => {
                // Applied, or superseded by a newer version already here: either way this
                // version or a newer one is durable, which is what the ack promises.
                let result = self
                    .apply_tracked(key, Entry::from(entry))
                    .await
                    .map(|_| ())
                    .map_err(healing::storage_failure);
                replica::applied(envelope, result)
            }
            Ok(Some(replica::Work::Read { key, digest_only })) => {
                if let Some(failure) = self.rebuilding_refusal(&key) {
                    return replica::refusal(envelope, failure);
                }
                let result = engine
                    .get_durable_entry(&key)
                    .await
                    .map(|entry| entry.map(PeerEntry::from))
                    .map_err(healing::storage_failure);
                replica::read_answer(envelope, digest_only, result)
            }
            Ok(Some(replica::Work::Prepare { key, ballot })) => {
                // A copy that may lack acknowledged writes must not take part in a decision
                // about what the key holds.
                if let Some(failure) = self.paxos_refusal(&key) {
                    return replica::refusal(envelope, failure);
                }
                replica::promised(envelope, self.paxos_prepare(key, ballot).await)
            }
            Ok(Some(replica::Work::Propose { key, ballot, based_on, entry })) => {
                if let Some(failure) = self.paxos_refusal(&key) {
                    return replica::refusal(envelope, failure);
                }
                replica::accepted(envelope, self.paxos_propose(key, ballot, based_on, entry).await)
            }
            Ok(Some(replica::Work::Commit { key, ballot, based_on, entry })) => {
                // The entry first: a crash before the ballot is recorded leaves the proposal
                // looking unfinished, and finishing it again writes the same entry.
                let version = entry.version;
                let applied = self
                    .apply_tracked(key.clone(), Entry::from(entry))
                    .await
                    .map_err(healing::storage_failure);
                let result = match applied {
                    Ok(_) => self.paxos_committed(key, ballot, version, based_on).await,
                    Err(failure) => Err(failure),
                };
                replica::applied(envelope, result)
            }
            Ok(None) => replica::refusal(
                envelope,
                PeerFailure { code: PeerErrorCode::Invalid, message: "not a replica request".into() },
            ),
            Err(failure) => replica::refusal(envelope, failure),
        }
    }
}

/// The client-facing outcome of a coordinated read: the newest entry, unless it is a tombstone
/// or has expired by `now`. The clock observes the version read when it is at most
/// `max_clock_skew_ms` ahead of `now`.
fn read_outcome(
    reply: CoordinatorReply,
    handler: &Handler<DmaDisk>,
    now: u64,
    max_clock_skew_ms: u64,
) -> Result<Outcome, Failure> {
    match reply {
        CoordinatorReply::Found(Some(entry)) => {
            // Only a version within the skew bound moves the clock, as on the replica path: a
            // node whose clock runs ahead must not drag every node reading its keys along.
            if let Err(skew) = handler.clock().observe_remote(entry.version, now, max_clock_skew_ms) {
                tracing::debug!(%skew, "a version read is too far ahead to adopt");
            }
            match entry.value {
                PeerValue::Live { data, expires_at_ms } if expires_at_ms.is_none_or(|at| at > now) => {
                    Ok(Outcome::Value { value: data, version: entry.version, expires_at_ms })
                }
                _ => Ok(Outcome::NotFound),
            }
        }
        CoordinatorReply::Found(None) => Ok(Outcome::NotFound),
        CoordinatorReply::Failed(error) => Err(failure_of(&error)),
        CoordinatorReply::Written { .. } => {
            Err(Failure::new(ErrorCode::Internal, "a read was answered as a write"))
        }
    }
}

/// The client-facing failure of a coordinated request.
fn failure_of(error: &CoordinatorError) -> Failure {
    let code = match error {
        CoordinatorError::Unavailable { .. } => ErrorCode::Unavailable,
        CoordinatorError::Overloaded { .. } => ErrorCode::Overloaded,
        CoordinatorError::Timeout { .. } => ErrorCode::Timeout,
        CoordinatorError::ReplicasFailed { .. } => ErrorCode::Unavailable,
        CoordinatorError::WriteIndeterminate { .. } => ErrorCode::Indeterminate,
    };
    Failure::new(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_replication::{default_tokens, HybridClock, NodeIdentity};
    use ringkv_storage::{Engine, EngineOptions, SyncMode};
    use ringkv_wire::peer::ReadAnswer;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    /// The cluster part of shard 0 of a one-shard node alone in its cluster (so that shard
    /// owns every key), on an engine in `directory` that syncs before acknowledging
    /// (`SyncMode::Always`). Not started: no background task runs, so nothing syncs the WAL
    /// unless the test (or the code under test) waits for it.
    async fn lone_shard(directory: &std::path::Path) -> (Rc<Cluster>, Rc<Engine<DmaDisk>>) {
        let disk = DmaDisk::open(directory).await.expect("open the data directory");
        let options = EngineOptions { sync: SyncMode::Always, ..EngineOptions::default() };
        let engine = Rc::new(Engine::open(disk, options).await.expect("open the engine"));
        let handler = Rc::new(Handler::new(engine.clone(), HybridClock::new(1), now_ms));
        let identity = NodeIdentity {
            node_id: 1,
            generation: 1,
            peer_address: SocketAddr::from(([127, 0, 0, 1], 17_001)),
            client_address: SocketAddr::from(([127, 0, 0, 1], 17_000)),
            shard_port_base: 17_000,
            shards: 1,
            vnodes_per_shard: 8,
            tokens: default_tokens(1, 16),
        };
        let view = ClusterView::new(&identity, 1, &BTreeMap::new(), None);
        let hints = ringkv_replication::hints::HintSettings {
            shard_bytes_max: 0,
            destination_bytes_max: 0,
            max_hint_window_ms: 0,
            tombstone_grace_ms: 0,
            replay_bytes_per_s: 0,
        };
        let settings = ClusterSettings {
            write_consistency: Consistency::Quorum,
            read_consistency: Consistency::Quorum,
            max_clock_skew_ms: 1_000,
            replica_timeout_ms: 1_000,
            peer_pending_max: 16,
            peer_outbox_bytes_max: 1 << 20,
            peer_in_flight_max: 16,
            peer_receive_bytes_max: 1 << 20,
            healing: HealingSettings {
                hints,
                hints_enabled: false,
                anti_entropy_interval_ms: 0,
                anti_entropy_bytes_per_s: 0,
                tree_rebuild_interval_ms: 0,
            },
            peer_key: None,
            peer_frame_timeout_ms: 1_000,
        };
        let origin = LinkOrigin { node_id: 1, shard: 0, generation: 1 };
        (Cluster::new(origin, settings, handler, view, None), engine)
    }

    /// A coordinator's read of the whole entry of `key`, as node 2 would send it.
    fn read(key: &Bytes) -> PeerEnvelope {
        PeerEnvelope {
            origin_node: 2,
            origin_shard: 0,
            request_id: 7,
            message: PeerMessage::Read { key: key.clone(), digest_only: false },
        }
    }

    /// The entry a replica's answer carries (`None`: the replica has never seen the key).
    fn answered(answer: &PeerEnvelope) -> Option<PeerEntry> {
        match &answer.message {
            PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(entry)) } => entry.clone(),
            other => panic!("not a read's entry: {other:?}"),
        }
    }

    fn live(version: u64, data: &'static str) -> PeerEntry {
        PeerEntry {
            version,
            value: PeerValue::Live { data: Bytes::from_static(data.as_bytes()), expires_at_ms: None },
        }
    }

    #[test]
    fn a_replica_answers_a_read_only_with_what_is_durable() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        ringkv_io::run_local("replica-durable-reads", async {
            let (cluster, engine) = lone_shard(directory.path()).await;
            let key = Bytes::from_static(b"key");
            assert!(cluster.view.borrow().owns(&key, 0), "the lone shard owns every key");
            let envelope = read(&key);

            // Written in memory, its WAL record appended but not synced: no answer in place.
            let first = engine.write_now(&key, |_| Entry::live(10, Bytes::from_static(b"v1"), None));
            let _first = first.expect("decided without waiting").expect("the write applies");
            assert_eq!(cluster.serve_replica_now(&envelope), None, "answered with a write not yet durable");

            // The task path waits for (and triggers) the group commit, then answers with it...
            let answer = cluster.serve_replica(&envelope).await;
            assert_eq!(answered(&answer), Some(live(10, "v1")));
            // ...after which the entry is durable and answered in place.
            let now = cluster.serve_replica_now(&envelope).expect("durable: answered in place");
            assert_eq!(answered(&now), Some(live(10, "v1")));

            // A newer write is again not durable until acknowledged (its commit synced).
            let second = engine.write_now(&key, |_| Entry::live(11, Bytes::from_static(b"v2"), None));
            let second = second.expect("decided without waiting").expect("the write applies");
            assert_eq!(cluster.serve_replica_now(&envelope), None, "answered with a write not yet durable");
            // A key never written is answered at once even now: what memory found for it (nothing)
            // needs no commit, and the engine has no table that could hold it (nothing was
            // flushed), so the answer is final. Only the entry found for the key read matters.
            let missing = read(&Bytes::from_static(b"never written"));
            let now = cluster.serve_replica_now(&missing).expect("nothing to wait for: answered in place");
            assert_eq!(answered(&now), None);
            engine.acknowledged(second).await.expect("the write is acknowledged");
            let now = cluster.serve_replica_now(&envelope).expect("durable: answered in place");
            assert_eq!(answered(&now), Some(live(11, "v2")));

            engine.close().await.expect("the engine closes");
        });
    }
}
