//! [`Node`]: every shard of one ringkv node, each on its own glommio executor (pinned only
//! with `pin_to_cores`).
//!
//! ```text
//!  Node::start ─▶ lock DATA_DIR ─▶ per shard: thread + executor (pinned if asked)
//!                                      ├─ join the channel mesh (waits for every shard)
//!                                      │  then, in the serving task queue:
//!                                      ├─ ShardService::start (engine, sockets) ─▶ "ready"
//!                                      ├─ serve until the node is asked to stop
//!                                      ├─ drain ─▶ wait until every shard has drained
//!                                      └─ stop (mesh, engine: sync and close)
//!  StopHandle::stop (signal thread) ─▶ every shard sees it within STOP_POLL_MS
//!  Node::wait ─▶ joins the threads; the lock is released when the Node is dropped
//! ```
//!
//! The stop request crosses from an ordinary thread (the signal handler's) into the executors,
//! which cannot be woken from outside without a channel endpoint on each; every shard polls an
//! atomic flag on a slow timer instead ([`watch`], which also keeps glommio from parking the
//! shard without a timer). It costs a wake-up every [`STOP_POLL_MS`] and nothing else. A
//! node-wide thread ([`ringkv_io::nudge`]) wakes a shard whose watch stopped ticking.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use event_listener::Event;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use ringkv_io::{ExecutorBuilder, Nudges};
use tracing::{info, info_span, warn};

use crate::cluster::MembershipSnapshot;
use crate::config::NodeConfig;
use crate::data_directory::{DataDirectory, Placement};
use crate::error::ShardError;
use crate::metrics::figures::{self, FiguresInbox};
use crate::metrics::http::{Access, MetricsServer, ShardSource};
use crate::metrics::ShardMetrics;
use crate::ring::Ring;
use crate::router::forwarding::ShardMessage;
use crate::service::{MembershipChannels, ShardService, ShardSetup};
use glommio::channels::shared_channel;

/// How often a shard checks whether the node was asked to stop.
pub const STOP_POLL_MS: u64 = 20;

/// How often a shard checks whether its peers have reached a start-up or shutdown step.
const PEER_POLL_MS: u64 = 1;

/// Marks a mesh peer index not yet published.
const PEER_UNKNOWN: usize = usize::MAX;

/// Membership snapshots waiting for a shard to take them; changes are rare and each snapshot
/// replaces the last.
const MEMBERSHIP_CHANNEL_CAPACITY: usize = 16;

// Not set: glommio's preempt timer (100 ms by default). A 2 ms timer cut YCSB A's write p99.9
// from 185 ms to 29 ms, but about one start in ten then hung inside glommio (a shard parked for
// good during mesh join; 4 hangs in ~40 concurrent starts against 0 in 36 without it). The
// serving queue (`ringkv_io::serving_queue`) gets the short timer while there is serving work,
// and `watch` keeps a shard from parking without a timer. See docs/ARCHITECTURE.md.

/// A running node.
pub struct Node {
    shards: usize,
    threads: Vec<thread::JoinHandle<std::io::Result<Result<(), ShardError>>>>,
    /// Wakes a shard whose executor stopped waking up (see [`ringkv_io::nudge`]).
    nudger: thread::JoinHandle<()>,
    control: Arc<NodeControl>,
    /// The `/metrics` endpoint, when `metrics_listen` is set; stops when dropped.
    metrics_server: Option<MetricsServer>,
    /// Held for the node's lifetime: dropping it releases the data directory's lock.
    _data_directory: Arc<DataDirectory>,
}

/// What the shards of a node share, across threads.
struct NodeControl {
    stop_requested: AtomicBool,
    /// Shards that have drained their connections (or never started serving).
    drained: AtomicUsize,
    /// Each shard's watch ticks here; the nudge thread wakes a shard that stopped ticking.
    nudges: Arc<Nudges>,
}

impl NodeControl {
    fn new(metrics: &[Arc<ShardMetrics>]) -> NodeControl {
        NodeControl {
            stop_requested: AtomicBool::new(false),
            drained: AtomicUsize::new(0),
            nudges: Arc::new(Nudges::observed(metrics.len(), {
                let metrics = metrics.to_vec();
                // The nudge thread is the counter's only writer.
                move |shard| metrics[shard].nudges.add(1)
            })),
        }
    }
}

/// Asks a node to stop; cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct StopHandle(Arc<NodeControl>);

impl StopHandle {
    /// Asks every shard to stop accepting, finish what is in flight, and close.
    pub fn stop(&self) {
        self.0.stop_requested.store(true, Ordering::SeqCst);
    }
}

/// Sends a shard's start-up result to [`Node::start`] exactly once. If the shard's future is
/// dropped before it reports (its executor failed to start), the drop reports the failure, so
/// the node never waits for a shard that is gone.
struct ReadyReport {
    shard_id: u32,
    sender: Option<mpsc::Sender<Result<(), ShardError>>>,
}

impl ReadyReport {
    fn report(&mut self, result: Result<(), ShardError>) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(result);
        }
    }
}

impl Drop for ReadyReport {
    fn drop(&mut self) {
        let shard_id = self.shard_id;
        self.report(Err(ShardError::Executor {
            shard_id,
            reason: "the shard ended before it was ready".into(),
        }));
    }
}

impl Node {
    /// Validates the configuration, locks the data directory, starts every shard and returns
    /// once all of them serve.
    ///
    /// On error, shards that did start keep running until the process exits: a node that
    /// cannot start is meant to end the process.
    pub fn start(config: NodeConfig) -> Result<Node, ShardError> {
        config.validate()?;
        let shards = config.shard_count();
        let placement =
            Placement { shards, vnodes_per_shard: config.vnodes_per_shard, node_id: config.node_id };
        // The node's tokens on the cluster ring: recorded at the first start and checked at every
        // later one (another num_tokens would move keys between nodes).
        let tokens = ringkv_replication::default_tokens(config.node_id, config.num_tokens);
        let data_directory = Arc::new(DataDirectory::open(&config.data_dir, placement, &tokens)?);
        let tokens = data_directory.tokens().to_vec();
        if config.join && !data_directory.started_before() {
            // Before any engine opens: from here on a crash leaves either the marks or empty
            // shards under a recorded `NODE`, and both start gated.
            for shard in 0..shards {
                data_directory.mark_rebuilding(shard as u32)?;
            }
            warn!(
                shards,
                "joining a cluster that holds data: until anti-entropy has brought each range from \
                 the other replicas, this node answers no replica read of it"
            );
        }
        let mut known_peers = crate::cluster::known_peers::load(data_directory.path()).map_err(|error| {
            ShardError::data_directory("reading the known members in", data_directory.path(), error)
        })?;
        known_peers.remove(&config.node_id);
        let config = Arc::new(config);
        let peers: Arc<Vec<AtomicUsize>> =
            Arc::new((0..shards).map(|_| AtomicUsize::new(PEER_UNKNOWN)).collect());
        let mesh = MeshBuilder::<ShardMessage, _>::full(shards, config.mesh_channel_capacity);
        // This start's generation: the wall clock, so a restart always outranks the identity it
        // replaces.
        let generation = ringkv_io::now_ms();
        // Shard 0 runs membership and sends each change to the other shards.
        let (membership_senders, mut membership_receivers): (Vec<_>, Vec<_>) = (1..shards)
            .map(|_| shared_channel::new_bounded::<Arc<MembershipSnapshot>>(MEMBERSHIP_CHANNEL_CAPACITY))
            .unzip();
        let mut membership_senders = Some(membership_senders);
        membership_receivers.reverse();
        let cores = thread::available_parallelism().map_or(1, |cores| cores.get());
        let metrics: Vec<Arc<ShardMetrics>> = (0..shards).map(|_| Arc::default()).collect();
        let control = Arc::new(NodeControl::new(&metrics));
        // Bound before any shard starts, so a taken port fails the start like any other.
        let (metrics_server, figure_inboxes) = match config.metrics_listen {
            Some(address) => {
                let (askers, inboxes): (Vec<_>, Vec<_>) =
                    (0..shards).map(|_| figures::channel(figures::PENDING_REQUESTS_MAX)).unzip();
                let sources = metrics
                    .iter()
                    .zip(askers)
                    .map(|(metrics, figures)| ShardSource { metrics: metrics.clone(), figures })
                    .collect();
                let server = MetricsServer::start(address, sources, metrics_access(&config)?)?;
                (Some(server), inboxes)
            }
            None => (None, Vec::new()),
        };
        let mut figure_inboxes = figure_inboxes.into_iter();
        let (ready_sender, ready_receiver) = mpsc::channel();
        let nudger = control.nudges.spawn("ringkv-nudge").map_err(ShardError::NudgeThread)?;

        let mut threads = Vec::with_capacity(shards);
        for (shard, shard_metrics) in metrics.iter().enumerate() {
            let shard_id = shard as u32;
            let mut builder = ExecutorBuilder::new(&format!("ringkv-shard-{shard_id}"))
                .io_memory_bytes(config.io_memory_bytes)
                .background_share_percent(config.background_share_percent);
            if config.pin_to_cores {
                builder = builder.pin_to_core(shard % cores);
            }
            let membership = if shard == 0 {
                MembershipChannels::Leader(membership_senders.take().expect("shard 0 starts once"))
            } else {
                MembershipChannels::Follower(
                    membership_receivers.pop().expect("one receiver per other shard"),
                )
            };
            let context = ShardThread {
                known_peers: known_peers.clone(),
                tokens: tokens.clone(),
                generation,
                membership: Some(membership),
                shard_id,
                metrics: shard_metrics.clone(),
                figures: figure_inboxes.next(),
                config: config.clone(),
                data_directory: data_directory.clone(),
                control: control.clone(),
                peers: peers.clone(),
                mesh: Some(mesh.clone()),
                ready: ReadyReport { shard_id, sender: Some(ready_sender.clone()) },
            };
            let thread = builder
                .spawn(move || context.run())
                .map_err(|error| ShardError::Executor { shard_id, reason: error.to_string() })?;
            threads.push(thread);
        }
        drop(ready_sender);

        for _ in 0..shards {
            let started = ready_receiver.recv().unwrap_or_else(|_| {
                Err(ShardError::Executor {
                    shard_id: 0,
                    reason: "a shard thread ended before it was ready".into(),
                })
            });
            if let Err(error) = started {
                // The shards that did start run until the process exits; so does the nudger.
                control.stop_requested.store(true, Ordering::SeqCst);
                return Err(error);
            }
        }
        info!(shards, data_dir = %data_directory.path().display(), "node serving");
        Ok(Node { shards, threads, nudger, control, metrics_server, _data_directory: data_directory })
    }

    /// Where `/metrics` is served, when `metrics_listen` is set.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(MetricsServer::address)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// A handle that asks the node to stop, for a signal handler's thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.control.clone())
    }

    /// Waits for every shard to stop (after [`StopHandle::stop`]) and returns the first error
    /// one of them reported. The data directory's lock is released on return.
    pub fn wait(self) -> Result<(), ShardError> {
        let mut first_error = None;
        for (shard_id, thread) in self.threads.into_iter().enumerate() {
            let shard_id = shard_id as u32;
            let result = match thread.join() {
                Ok(Ok(result)) => result,
                Ok(Err(error)) => Err(ShardError::Executor { shard_id, reason: error.to_string() }),
                Err(_) => {
                    Err(ShardError::Executor { shard_id, reason: "the shard's thread panicked".into() })
                }
            };
            if let Err(error) = result {
                tracing::error!(shard = shard_id, %error, "shard stopped with an error");
                first_error.get_or_insert(error);
            }
        }
        self.control.nudges.finish();
        if self.nudger.join().is_err() {
            tracing::error!("the thread that wakes stalled shards panicked");
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Who may scrape the metrics port, and over what: HTTPS with the node's certificate when TLS is
/// on, and the bearer token when one is set. Warns once when clients or peers must authenticate
/// but the metrics port is open to anyone who reaches it.
fn metrics_access(config: &NodeConfig) -> Result<Access, ShardError> {
    let token = config.metrics_token()?;
    if token.is_none() && (!config.users.is_empty() || config.cluster_secret.is_some()) {
        warn!(
            "clients or peers must authenticate, but the metrics port has no bearer token: anyone who \
             reaches it can read the node's figures (set metrics_token or metrics_token_file)"
        );
    }
    let tls = crate::tls::TlsSettings::load(config)?.map(|tls| tls.metrics_port());
    Ok(Access { tls, token, token_file: config.metrics_token_file.clone() })
}

/// What one shard's thread owns.
struct ShardThread {
    known_peers: std::collections::BTreeMap<u16, ringkv_replication::NodeIdentity>,
    tokens: Vec<u64>,
    generation: u64,
    membership: Option<MembershipChannels>,
    shard_id: u32,
    metrics: Arc<ShardMetrics>,
    figures: Option<FiguresInbox>,
    config: Arc<NodeConfig>,
    data_directory: Arc<DataDirectory>,
    control: Arc<NodeControl>,
    peers: Arc<Vec<AtomicUsize>>,
    /// Cloned on the main thread, as glommio's examples do, and consumed by `join`.
    mesh: Option<MeshBuilder<ShardMessage, Full>>,
    ready: ReadyReport,
}

/// The shard's one timer: every [`STOP_POLL_MS`] until the shard's life is over it looks at the
/// node's stop request, and wakes [`Watch::stopped`]'s waiters once it is set.
///
/// It also keeps the executor from ever parking without a timer armed. glommio 0.9 can miss a
/// wake-up while a queue that declares `Latency::Matters` has work: with the service started in
/// the serving queue and no timer armed, a shard parked for good during start-up in 3 of 40 node
/// starts (2 shards each, 4 starting at once), and with a global 1 ms preempt timer in 1 of 6 (a
/// parked shard went on when a debugger attached to it interrupted its wait). Parked with a
/// timer armed, it wakes when the timer fires and then finds the work the missed wake-up was
/// for. So this runs from before the mesh join until after the stop.
///
/// The timer alone was not enough: a shard still slept through it in 3 of 600 busy starts
/// (`tools/start-stress.sh`). Each tick therefore reports to [`Nudges`], whose thread wakes
/// this task from outside when the ticks stop (see [`ringkv_io::nudge`]).
async fn watch(watch: Rc<Watch>) {
    while watch.alive.get() {
        if watch.stop_requested() {
            watch.stop.notify(usize::MAX);
        }
        watch.control.nudges.tick_here(watch.shard_id as usize).await;
        glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
    watch.control.nudges.forget(watch.shard_id as usize);
}

/// What [`watch`] and the shard's serving task share.
struct Watch {
    shard_id: u32,
    control: Arc<NodeControl>,
    /// Cleared when the shard's life is over; [`watch`] then ends.
    alive: Cell<bool>,
    /// Notified by [`watch`] once the node was asked to stop.
    stop: Event,
}

impl Watch {
    fn new(shard_id: u32, control: Arc<NodeControl>) -> Rc<Watch> {
        Rc::new(Watch { shard_id, control, alive: Cell::new(true), stop: Event::new() })
    }

    fn stop_requested(&self) -> bool {
        self.control.stop_requested.load(Ordering::SeqCst)
    }

    /// Resolves once [`watch`] has seen the node's stop request.
    async fn stopped(&self) {
        loop {
            event_listener::listener!(self.stop => listener);
            if self.stop_requested() {
                return;
            }
            listener.await;
        }
    }
}

/// This shard's ends of the channel mesh, and every shard's mesh peer index.
struct JoinedMesh {
    senders: Senders<ShardMessage>,
    receivers: Receivers<ShardMessage>,
    peer_of_shard: Vec<usize>,
}

impl ShardThread {
    /// The shard's whole life, on its executor.
    async fn run(mut self) -> Result<(), ShardError> {
        let span = info_span!("shard", shard = self.shard_id);
        // Entered for the thread's whole life instead of instrumenting one future: every task on
        // this executor is this shard's, so every event carries the shard, request tasks
        // included (they go uninstrumented: a span per request costs more than a cached read).
        let _entered = span.enter();
        self.metrics.record_thread();
        let shard_id = self.shard_id;
        let watching = Watch::new(shard_id, self.control.clone());
        glommio::spawn_local(watch(watching.clone())).detach();
        let serving_watch = watching.clone();
        let result = async move {
            // The mesh join runs in glommio's default queue; everything after it, serving
            // included, in the serving queue (see `ringkv_io::serving_queue`).
            let mesh = match self.join_mesh().await {
                Ok(mesh) => mesh,
                Err(error) => return self.failed_to_start(error),
            };
            let serving = ringkv_io::serving_queue();
            match glommio::spawn_local_into(self.serve(mesh, serving_watch), serving) {
                Ok(task) => task.await,
                Err(error) => Err(ShardError::Executor {
                    shard_id,
                    reason: format!("creating the serving task: {error}"),
                }),
            }
        }
        .await;
        watching.alive.set(false);
        result.inspect_err(|error| tracing::error!(shard = shard_id, %error, "stopping failed"))
    }

    /// Starts the service, serves until the node is asked to stop, drains and stops.
    async fn serve(mut self, mesh: JoinedMesh, watching: Rc<Watch>) -> Result<(), ShardError> {
        let mut service = match self.start(mesh).await {
            Ok(service) => {
                self.ready.report(Ok(()));
                service
            }
            Err(error) => return self.failed_to_start(error),
        };
        watching.stopped().await;
        info!("stopping: draining connections");
        service.drain().await;
        self.control.drained.fetch_add(1, Ordering::SeqCst);
        let shards = self.peers.len();
        while self.control.drained.load(Ordering::SeqCst) < shards {
            glommio::timer::sleep(Duration::from_millis(PEER_POLL_MS)).await;
        }
        service.stop().await
    }

    /// Reports a failed start and counts the shard as drained, so that peers, if they stop, do
    /// not wait for it.
    fn failed_to_start(&mut self, error: ShardError) -> Result<(), ShardError> {
        self.ready.report(Err(error));
        self.control.drained.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Joins the channel mesh and learns every shard's mesh peer index.
    async fn join_mesh(&mut self) -> Result<JoinedMesh, ShardError> {
        let shard_id = self.shard_id;
        let mesh = self.mesh.take().expect("a shard starts once");
        let (senders, receivers) =
            mesh.join().await.map_err(|error| ShardError::Mesh { shard_id, reason: error.to_string() })?;
        // glommio numbers mesh peers in its own order; publish ours and learn everyone's.
        self.peers[shard_id as usize].store(senders.peer_id(), Ordering::SeqCst);
        while self.peers.iter().any(|peer| peer.load(Ordering::SeqCst) == PEER_UNKNOWN) {
            glommio::timer::sleep(Duration::from_millis(PEER_POLL_MS)).await;
        }
        let peer_of_shard = self.peers.iter().map(|peer| peer.load(Ordering::SeqCst)).collect();
        Ok(JoinedMesh { senders, receivers, peer_of_shard })
    }

    async fn start(&mut self, mesh: JoinedMesh) -> Result<ShardService, ShardError> {
        let JoinedMesh { senders, receivers, peer_of_shard } = mesh;
        let shard_id = self.shard_id;
        ShardService::start(ShardSetup {
            shard_id,
            metrics: self.metrics.clone(),
            figures: self.figures.take(),
            config: &self.config,
            data_directory: &self.data_directory,
            ring: Ring::new(self.peers.len(), self.config.vnodes_per_shard),
            senders,
            receivers,
            peer_of_shard,
            tokens: self.tokens.clone(),
            generation: self.generation,
            membership: self.membership.take().expect("a shard starts once"),
            known_peers: self.known_peers.clone(),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> Arc<NodeControl> {
        Arc::new(NodeControl::new(&[Arc::default()]))
    }

    #[test]
    fn the_watch_tells_the_serving_task_of_a_stop_asked_from_another_thread() {
        let control = control();
        let stopper = StopHandle(control.clone());
        ringkv_io::run_local("watch-test", async move {
            let watching = Watch::new(0, control.clone());
            let watcher = glommio::spawn_local(watch(watching.clone()));
            let waiter = glommio::spawn_local({
                let watching = watching.clone();
                async move { watching.stopped().await }
            });
            std::thread::spawn(move || stopper.stop()).join().expect("the stopping thread");
            waiter.await;
            assert!(control.stop_requested.load(Ordering::SeqCst));
            // Once the shard's life is over, the watch ends at its next tick.
            watching.alive.set(false);
            watcher.await;
        });
    }

    #[test]
    fn a_stop_asked_before_the_service_waits_is_not_missed() {
        let control = control();
        control.stop_requested.store(true, Ordering::SeqCst);
        ringkv_io::run_local("watch-early-test", async move {
            let watching = Watch::new(0, control);
            let watcher = glommio::spawn_local(watch(watching.clone()));
            // The watch notifies at its first tick, before anyone waits; the waiter must still
            // see the request.
            glommio::timer::sleep(Duration::from_millis(2 * STOP_POLL_MS)).await;
            watching.stopped().await;
            watching.alive.set(false);
            watcher.await;
        });
    }
}
