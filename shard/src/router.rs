//! [`Router`]: answers a request's command, running each operation on the shard that owns its
//! key.
//!
//! ```text
//!  Command::Single(op) ─▶ ring.owner_of_key ─┬─ this shard ─▶ Handler::execute
//!                                            └─ another    ─▶ Forwarding::forward ─mesh─▶ owner
//!  put / delete, owned here, one copy ─▶ write_now (applied in place) ─▶ acknowledged (commit)
//!  Command::Batch(ops) ─▶ each op routed on its own, concurrently; results in request order
//!  Command::Topology   ─▶ the ring's ranges and each shard's port (answered by any shard)
//!  Command::Ping       ─▶ Pong
//!  Command::Scan(scan) ─▶ the page of every shard owning part of its token span (this one's
//!                         Handler::scan, the others' over the mesh), concurrently
//!                         ─▶ scan::merge (token order) ─▶ one page
//! ```

pub mod forwarding;
pub mod scan;

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringkv_io::DmaDisk;
use ringkv_storage::{KeyHash, PendingWrite, Prefetch, Unsettled};
use ringkv_wire::token::token;
use ringkv_wire::{
    Command, Consistency, ErrorCode, Failure, LentValue, Operation, OperationRef, Outcome, Reply, Scan,
    ScanPage, Topology,
};

use crate::cluster::Cluster;
use crate::handler::Handler;
use crate::metrics::{OperationKind, RequestOutcome, ShardMetrics};
use crate::ring::Ring;
use forwarding::Forwarding;

/// The clock of one batch of requests (those one read from a socket brought), for the reads
/// answered in place: read once, when the batch's first such read needs it, and shared by the
/// rest; their latency is observed once, when the batch ends (the clock is reset or dropped),
/// as the time from that reading to then. At hundreds of thousands of reads a second, the
/// three clock reads of each (the wall clock for expiry, a start and an end for the latency)
/// were a measurable share of the shard's CPU. Each read's latency is then its batch's: the
/// wait behind the other requests of the batch is included.
///
/// Writes started in place ([`Router::write_now`]) take their version's wall clock and their
/// start from the same reading; each one's latency ends when it is acknowledged.
#[derive(Debug)]
pub struct BatchClock<'a> {
    metrics: &'a ShardMetrics,
    read: Option<(Instant, u64)>,
    /// Reads answered since the reading whose latency is not observed yet.
    unobserved: u64,
}

impl<'a> BatchClock<'a> {
    /// A clock not read yet, observing latencies into `metrics`.
    pub fn new(metrics: &'a ShardMetrics) -> Self {
        BatchClock { metrics, read: None, unobserved: 0 }
    }

    /// Takes the read answered last out of the batch's latency: its reply waits (see
    /// [`Router::read_now`]'s `Unsettled`), and its latency is observed when it is released
    /// ([`Router::held_read_released`]) from the start returned here.
    pub fn hold_last(&mut self) -> Instant {
        self.unobserved = self.unobserved.saturating_sub(1);
        self.metrics.reads_held.add(1);
        self.read.map_or_else(Instant::now, |(started, _)| started)
    }

    /// Ends the batch: observes the latency of its reads, and the next use reads the clock
    /// again (after an await, say).
    pub fn reset(&mut self) {
        if let Some((started, _)) = self.read.take() {
            if self.unobserved > 0 {
                self.metrics.observe_latency(OperationKind::Get, started.elapsed(), self.unobserved);
            }
        }
        self.unobserved = 0;
    }

    /// When the batch began to be answered, and the wall clock then, in milliseconds since
    /// the Unix epoch (from `now_ms`).
    fn read(&mut self, now_ms: impl FnOnce() -> u64) -> (Instant, u64) {
        *self.read.get_or_insert_with(|| (Instant::now(), now_ms()))
    }
}

impl Drop for BatchClock<'_> {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The clock of a connection's committer. A group commit makes a run of queued writes durable
/// at once; the committer answers them one after another without waiting in between, and one
/// reading ends the latency of them all. The reading is forgotten whenever the committer
/// waits. (A precise clock reading costs about 45 ns on this project's virtual machines: once
/// per write, a measurable share of a write's CPU.)
#[derive(Debug, Default)]
pub struct CommitClock {
    now: Option<Instant>,
}

impl CommitClock {
    /// A clock not read yet.
    pub fn new() -> Self {
        CommitClock::default()
    }

    /// The reading taken since the committer last waited, or a new one.
    pub fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// The committer is about to wait: the next [`CommitClock::now`] reads the clock again.
    pub fn forget(&mut self) {
        self.now = None;
    }

    /// Awaits `work`, forgetting the reading if `work` had to wait.
    pub async fn after<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let mut waited = false;
        let output = std::future::poll_fn(|cx| {
            let poll = work.as_mut().poll(cx);
            waited |= poll.is_pending();
            poll
        })
        .await;
        if waited {
            self.forget();
        }
        output
    }
}

/// A write started in place ([`Router::write_now`]), not yet acknowledged: nobody may be told
/// of it before [`Router::acknowledged`] resolves.
#[must_use = "a write must be acknowledged before its client is answered"]
pub struct WriteInPlace {
    pending: PendingWrite,
    kind: OperationKind,
    /// When the request started, for its latency metric.
    started: Instant,
}

/// Held reads between one prefetch stage of a read and its next (see
/// [`Router::prefetch_joined`]): enough decoding between them to cover a miss, few enough that
/// short runs still stage most of their reads.
pub const PREFETCH_STAGE_DISTANCE: usize = 8;

/// The prefetch stages a run of held reads is due when its read number `len` (counting from 1)
/// joins it, as (position in the run, stage): the newest read's index group, the slot of the
/// read [`PREFETCH_STAGE_DISTANCE`] back, whose group has had the time since to arrive, and the
/// value of the read twice that far back. The stages run a few reads apart rather than one
/// after the other over the whole run, so a stage seldom waits for the line the stage before it
/// asked for, and the misses overlap the decoding of the requests between them.
fn stages_on_join(len: usize) -> impl Iterator<Item = (usize, Prefetch)> {
    let newest = len.checked_sub(1);
    [
        (0, Prefetch::Group),
        (PREFETCH_STAGE_DISTANCE, Prefetch::Slot),
        (2 * PREFETCH_STAGE_DISTANCE, Prefetch::Value),
    ]
    .into_iter()
    .filter_map(move |(back, stage)| Some((newest?.checked_sub(back)?, stage)))
}

/// The stages [`stages_on_join`] leaves for the end of a run of `len` reads: the slots of its
/// last [`PREFETCH_STAGE_DISTANCE`] reads, then the values of its last twice as many.
fn stages_at_end(len: usize) -> impl Iterator<Item = (usize, Prefetch)> {
    let slots = len.saturating_sub(PREFETCH_STAGE_DISTANCE)..len;
    let values = len.saturating_sub(2 * PREFETCH_STAGE_DISTANCE)..len;
    slots.map(|at| (at, Prefetch::Slot)).chain(values.map(|at| (at, Prefetch::Value)))
}

/// Routes commands for one shard.
pub struct Router {
    shard_id: u32,
    ring: Ring,
    topology: Topology,
    handler: Rc<Handler<DmaDisk>>,
    forwarding: Rc<Forwarding>,
    /// This shard's part in the cluster; operations go through it when keys have several copies.
    cluster: Rc<Cluster>,
    /// Every operation this router answers is counted and timed here.
    metrics: Arc<ShardMetrics>,
}

impl Router {
    /// A router for shard `shard_id`; `topology` is what topology requests are answered with.
    pub fn new(
        shard_id: u32,
        ring: Ring,
        topology: Topology,
        handler: Rc<Handler<DmaDisk>>,
        forwarding: Rc<Forwarding>,
        cluster: Rc<Cluster>,
        metrics: Arc<ShardMetrics>,
    ) -> Self {
        Router { shard_id, ring, topology, handler, forwarding, cluster, metrics }
    }

    /// The task queue a request for `command` runs in: scans in the shard's scan queue (see
    /// [`ringkv_io::scan_queue`]), everything else in the caller's.
    pub fn queue_for(&self, command: &Command) -> Option<glommio::TaskQueueHandle> {
        match command {
            Command::Scan(_) => self.handler.scan_queue(),
            _ => None,
        }
    }

    /// This shard's metrics.
    pub fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.metrics
    }

    /// The shard this router runs on.
    pub fn shard_id(&self) -> u32 {
        self.shard_id
    }

    /// Runs one operation where its key lives, at `consistency` (the node's default when
    /// `None`).
    pub async fn execute(
        &self,
        operation: Operation,
        consistency: Option<Consistency>,
    ) -> Result<Outcome, Failure> {
        let started = Instant::now();
        let kind = OperationKind::of(&operation);
        let owner = self.ring.owner_of_key(operation.key());
        let result = if owner == self.shard_id {
            // The key's owning shard on this node coordinates it across the cluster.
            self.cluster.execute_owned(operation, consistency).await
        } else {
            self.forwarding.forward(owner, operation, consistency).await
        };
        self.metrics.request(kind, RequestOutcome::of(&result), started.elapsed());
        result
    }

    /// Writes every `(key, value)` of `pairs` (distinct keys) atomically, when it can be: when
    /// every key lives on one shard of this node and keys have one copy, that shard writes them
    /// as one engine write (see [`Handler::write_atomically`]); whether it wrote (with
    /// `only_if_absent`, only when no key had a live value). `None` when it cannot be: the keys
    /// span shards, or keys have several copies (whose replicas apply writes one key at a time).
    pub async fn write_atomically(
        &self,
        pairs: Vec<(Bytes, Bytes)>,
        only_if_absent: bool,
    ) -> Result<Option<bool>, Failure> {
        let Some((first, _)) = pairs.first() else { return Ok(Some(true)) };
        let owner = self.ring.owner_of_key(first);
        if self.cluster.is_replicated() || pairs.iter().any(|(key, _)| self.ring.owner_of_key(key) != owner) {
            return Ok(None);
        }
        let started = Instant::now();
        let result = if owner == self.shard_id {
            self.handler.write_atomically(pairs, only_if_absent).await.map(Some)
        } else {
            self.forwarding.write_atomically(owner, pairs, only_if_absent).await
        };
        let outcome = match &result {
            Ok(_) => RequestOutcome::Ok,
            Err(failure) => RequestOutcome::of_failure(failure),
        };
        self.metrics.request(OperationKind::Put, outcome, started.elapsed());
        result
    }

    /// One page of `scan` over the whole node, in token order. Each shard owns token ranges, so
    /// only the shards owning part of the scan's token span are asked, each for its own page (at
    /// most `limit` entries, byte-capped); their pages are merged in scan order (see
    /// [`scan::merge`]). A span within one shard's ranges (a short scan, usually) is that
    /// shard's page as it is. Any shard's failure fails the scan.
    pub async fn scan(self: &Rc<Self>, scan: Scan) -> Result<ScanPage, Failure> {
        let started = Instant::now();
        let result = self.scan_unmeasured(scan).await;
        let outcome = match &result {
            Ok(_) => RequestOutcome::Ok,
            Err(failure) => RequestOutcome::of_failure(failure),
        };
        self.metrics.request(OperationKind::Scan, outcome, started.elapsed());
        result
    }

    async fn scan_unmeasured(self: &Rc<Self>, scan: Scan) -> Result<ScanPage, Failure> {
        let Some((first, last)) = scan.token_span() else {
            return Ok(ScanPage::default());
        };
        let shards: Vec<u32> = (0..self.ring.shards() as u32)
            .filter(|&shard| self.ring.ranges_of(shard).iter().any(|range| scan::reaches(range, first, last)))
            .collect();
        if let [shard] = shards[..] {
            return if shard == self.shard_id {
                self.handler.scan_in_queue(scan).await
            } else {
                self.forwarding.scan(shard, scan).await
            };
        }
        let limit = scan.limit as usize;
        let tasks: Vec<_> = shards
            .into_iter()
            .map(|shard| {
                let router = self.clone();
                let scan = scan.clone();
                glommio::spawn_local(async move {
                    if shard == router.shard_id {
                        router.handler.scan_in_queue(scan).await
                    } else {
                        router.forwarding.scan(shard, scan).await
                    }
                })
            })
            .collect();
        // Every task is awaited, failed or not, so none outlives the request.
        let mut pages = Vec::with_capacity(tasks.len());
        for task in tasks {
            pages.push(task.await);
        }
        let pages = pages.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(scan::merge(pages, limit))
    }

    /// Whether answering `command` means waiting on storage or another shard; the connection
    /// answers the others on the spot.
    pub fn is_immediate(command: &Command) -> bool {
        matches!(command, Command::Topology | Command::Ping | Command::Auth(_))
    }

    /// The answer to an immediate command (see [`Router::is_immediate`]), or `None`.
    pub fn answer_immediately(&self, command: &Command) -> Option<Reply> {
        match command {
            Command::Topology => Some(Reply::Topology(
                self.cluster.with_view(|view| view.topology(self.topology.shards.clone())),
            )),
            Command::Ping => Some(Reply::Pong),
            // The connection's authentication gate answers every Auth before the router sees it.
            Command::Auth(_) => Some(Reply::Failed(Failure::new(
                ErrorCode::Internal,
                "Auth reached the router instead of the connection's authentication gate",
            ))),
            Command::Single(_) | Command::Batch(_) | Command::Scan(_) => None,
        }
    }

    /// The hash a read of `key` in place will probe the memtable with, when it would be read in
    /// place here (see [`Router::read_now`]): a batch of reads hashes its keys, prefetches what
    /// each will touch with [`Router::prefetch`], stage by stage, then reads them, so their
    /// cache misses overlap. `None` when the read would not be answered in place.
    pub fn read_ahead(&self, key: &[u8]) -> Option<KeyHash> {
        let token = self.owned_in_place(key)?;
        self.handler.read_hash(key, token)
    }

    /// [`Router::read_ahead`] for a put or delete: the hash its memtable lookup needs, and
    /// nothing for the tables (see [`Handler::write_hash`]).
    pub fn write_ahead(&self, key: &[u8]) -> Option<KeyHash> {
        let token = self.owned_in_place(key)?;
        self.handler.write_hash(key, token)
    }

    /// The token of `key` when this shard reads and writes it in place: it owns the key and
    /// keys have one copy.
    fn owned_in_place(&self, key: &[u8]) -> Option<u64> {
        let token = token(key);
        (self.ring.owner_of_token(token) == self.shard_id && !self.cluster.is_replicated()).then_some(token)
    }

    /// Prefetches what a read of the key of `hash` (from [`Router::read_ahead`]) will touch at
    /// `stage`. A hint only.
    pub fn prefetch(&self, hash: KeyHash, stage: Prefetch) {
        self.handler.prefetch(hash, stage);
    }

    /// The prefetches due when a read joins a run of held reads, the newest last in `held`
    /// (`hash_of` gives each one's [`Router::read_ahead`] for a stage, or `None` to skip the
    /// stage for it): see [`stages_on_join`].
    pub fn prefetch_joined<T>(&self, held: &[T], hash_of: impl Fn(&T, Prefetch) -> Option<KeyHash>) {
        self.prefetch_stages(held, hash_of, stages_on_join(held.len()));
    }

    /// The prefetches [`Router::prefetch_joined`] left for the end of a run: see
    /// [`stages_at_end`]. Then the run is answered.
    pub fn prefetch_rest<T>(&self, held: &[T], hash_of: impl Fn(&T, Prefetch) -> Option<KeyHash>) {
        self.prefetch_stages(held, hash_of, stages_at_end(held.len()));
    }

    /// Each of `stages` (a position in `held` and a stage) for the reads that have a hash.
    fn prefetch_stages<T>(
        &self,
        held: &[T],
        hash_of: impl Fn(&T, Prefetch) -> Option<KeyHash>,
        stages: impl Iterator<Item = (usize, Prefetch)>,
    ) {
        for (at, stage) in stages {
            if let Some(hash) = hash_of(&held[at], stage) {
                self.prefetch(hash, stage);
            }
        }
    }

    /// A read of `key` answered in place, when this shard owns the key and memory holds it:
    /// `read` is lent the value, version and expiry (or `None`, or the failure) and its result
    /// returned. `None` otherwise: answer the read with [`Router::answer`]. Answering cached
    /// reads in place saves a task per request on the hottest path.
    ///
    /// `clock` is the batch's: see [`BatchClock`].
    ///
    /// `hash` is the key's [`Router::read_ahead`], when the caller prefetched.
    ///
    /// `read` is also lent whether what it found is durable yet: with `Some(Unsettled)`, the
    /// reply must wait for [`Router::settled`] (and its latency then be taken out of the batch
    /// with [`BatchClock::hold_last`]).
    pub fn read_now<R>(
        &self,
        key: &[u8],
        hash: Option<KeyHash>,
        clock: &mut BatchClock<'_>,
        read: impl FnOnce(Result<Option<LentValue<'_>>, Failure>, Option<Unsettled>) -> R,
    ) -> Option<R> {
        // With several copies of each key a read is coordinated across replicas.
        let token = hash.map_or_else(|| token(key), |hash| hash.token);
        if self.ring.owner_of_token(token) != self.shard_id || self.cluster.is_replicated() {
            return None;
        }
        let (_, now_ms) = clock.read(|| self.handler.now_ms());
        self.handler.read_now_at(key, hash, now_ms, |found, unsettled| {
            let outcome = match &found {
                Ok(Some(_)) => RequestOutcome::Ok,
                Ok(None) => RequestOutcome::NotFound,
                Err(failure) => RequestOutcome::of_failure(failure),
            };
            self.metrics.count_request(OperationKind::Get, outcome);
            clock.unobserved += 1;
            read(found, unsettled)
        })
    }

    /// Resolves once what a read answered in place found is durable (see [`Router::read_now`]);
    /// a failure when the WAL failed first, to answer the read with instead.
    pub async fn settled(&self, read: Unsettled, clock: &mut CommitClock) -> Result<(), Failure> {
        clock.after(self.handler.settled(read)).await
    }

    /// A read answered in place whose reply was held since `started` (see
    /// [`BatchClock::hold_last`]) is released: its latency ends at `clock`'s reading.
    pub fn held_read_released(&self, started: Instant, clock: &mut CommitClock) {
        self.metrics.observe_latency(OperationKind::Get, clock.now().saturating_duration_since(started), 1);
    }

    /// A put or delete started in place, when this shard owns the key, keys have one copy and
    /// the engine can apply the write without waiting (see [`Handler::write_now`]): its reply
    /// waits for [`Router::acknowledged`]. `Some(Err)`: refused on the spot, answer with the
    /// failure. `None` otherwise: answer the operation with [`Router::answer`]. Writes started
    /// in place save a task per request on the write path.
    ///
    /// `clock` is the batch's: see [`BatchClock`]. `hash` is the key's [`Router::read_ahead`],
    /// when the caller prefetched.
    pub fn write_now(
        &self,
        operation: OperationRef<'_>,
        hash: Option<KeyHash>,
        clock: &mut BatchClock<'_>,
    ) -> Option<Result<WriteInPlace, Failure>> {
        let kind = match operation {
            OperationRef::Put { .. } => OperationKind::Put,
            OperationRef::Delete { .. } => OperationKind::Delete,
            OperationRef::Get { .. } => return None,
        };
        let token = hash.map_or_else(|| token(operation.key()), |hash| hash.token);
        if self.ring.owner_of_token(token) != self.shard_id || self.cluster.is_replicated() {
            return None;
        }
        let (started, now_ms) = clock.read(|| self.handler.now_ms());
        match self.handler.write_now_at(operation, hash, now_ms)? {
            Ok(pending) => Some(Ok(WriteInPlace { pending, kind, started })),
            Err(failure) => {
                self.metrics.request(kind, RequestOutcome::of_failure(&failure), started.elapsed());
                Some(Err(failure))
            }
        }
    }

    /// The reply to a write started with [`Router::write_now`], once it is acknowledged (after
    /// its fdatasync in the default sync mode).
    pub async fn acknowledged(&self, write: WriteInPlace, clock: &mut CommitClock) -> Reply {
        match self.acknowledged_outcome(write, clock).await {
            Ok(outcome) => Reply::Single(outcome),
            Err(failure) => Reply::Failed(failure),
        }
    }

    /// [`Router::acknowledged`], as the write's outcome.
    pub async fn acknowledged_outcome(
        &self,
        write: WriteInPlace,
        clock: &mut CommitClock,
    ) -> Result<Outcome, Failure> {
        let result = clock.after(self.handler.acknowledged(write.pending)).await;
        let latency = clock.now().saturating_duration_since(write.started);
        self.metrics.request(write.kind, RequestOutcome::of(&result), latency);
        result
    }

    /// Whether this shard coordinates `key` across replicas itself: it owns the key and keys
    /// have several copies. Start such operations with [`Router::coordinate`].
    pub fn coordinates_here(&self, key: &[u8]) -> bool {
        self.ring.owner_of_key(key) == self.shard_id && self.cluster.is_replicated()
    }

    /// Starts `operation`, whose key this shard coordinates (see [`Router::coordinates_here`]),
    /// through the key's replicas; `done` is handed the result. No task per request.
    pub fn coordinate(
        &self,
        operation: Operation,
        consistency: Option<Consistency>,
        done: impl FnOnce(Result<Outcome, Failure>) + 'static,
    ) {
        let started = Instant::now();
        let kind = OperationKind::of(&operation);
        let metrics = self.metrics.clone();
        self.cluster.coordinate(operation, consistency, move |result| {
            metrics.request(kind, RequestOutcome::of(&result), started.elapsed());
            done(result);
        });
    }

    /// The answer to `command`.
    pub async fn answer(self: &Rc<Self>, command: Command, consistency: Option<Consistency>) -> Reply {
        match command {
            Command::Single(operation) => match self.execute(operation, consistency).await {
                Ok(outcome) => Reply::Single(outcome),
                Err(failure) => Reply::Failed(failure),
            },
            Command::Batch(operations) => {
                // Operations of a batch are independent (not a transaction): run them all at
                // once, each on its owning shard, and collect the results in request order.
                let tasks: Vec<_> = operations
                    .into_iter()
                    .map(|operation| {
                        let router = self.clone();
                        glommio::spawn_local(async move { router.execute(operation, consistency).await })
                    })
                    .collect();
                let mut results = Vec::with_capacity(tasks.len());
                for task in tasks {
                    results.push(task.await);
                }
                Reply::Batch(results)
            }
            Command::Scan(scan) => match self.scan(scan).await {
                Ok(page) => Reply::Scan(page),
                Err(failure) => Reply::Failed(failure),
            },
            Command::Topology | Command::Ping | Command::Auth(_) => {
                self.answer_immediately(&command).expect("topology, ping and auth are immediate")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::READ_AHEAD;
    use std::cell::Cell;

    #[test]
    fn a_batch_clock_is_read_once_and_observes_its_reads_when_it_ends() {
        let metrics = ShardMetrics::default();
        let reads = Cell::new(0);
        let wall = || {
            reads.set(reads.get() + 1);
            1_000 * reads.get()
        };
        let latencies = |metrics: &ShardMetrics| metrics.latency(OperationKind::Get).count();
        {
            let mut clock = BatchClock::new(&metrics);
            let first = clock.read(wall);
            clock.unobserved += 1;
            assert_eq!(clock.read(wall), first, "the batch shares one reading");
            clock.unobserved += 1;
            assert_eq!(reads.get(), 1);
            assert_eq!(latencies(&metrics), 0, "observed when the batch ends");
            clock.reset();
            assert_eq!(latencies(&metrics), 2);
            let (started, now_ms) = clock.read(wall);
            assert_eq!(reads.get(), 2, "a reset clock is read again");
            assert_eq!(now_ms, 2_000);
            assert!(started >= first.0);
            clock.unobserved += 1;
        }
        assert_eq!(latencies(&metrics), 3, "a dropped clock observes what it holds");
        BatchClock::new(&metrics).reset();
        assert_eq!(latencies(&metrics), 3, "a clock never read observes nothing");
    }

    /// Over runs of every length up to past a full read-ahead, the joins and the end of a run
    /// ask for every read's three stages exactly once, each stage after the one before it.
    #[test]
    fn every_held_read_is_prefetched_once_per_stage_in_order() {
        for len in 0..=READ_AHEAD + 3 {
            let mut asked: Vec<(usize, Prefetch)> = (1..=len).flat_map(stages_on_join).collect();
            asked.extend(stages_at_end(len));
            for at in 0..len {
                let order: Vec<Prefetch> =
                    asked.iter().filter(|(read, _)| *read == at).map(|(_, stage)| *stage).collect();
                assert_eq!(order, [Prefetch::Group, Prefetch::Slot, Prefetch::Value], "read {at} of {len}");
            }
            assert!(asked.iter().all(|(read, _)| *read < len));
        }
    }
}
