//! [`ShardService`]: one shard, composed: its storage engine, its handler, router and end of
//! the mesh, and its two listening sockets; with a two-step stop.
//!
//! ```text
//!  start:  EngineService::open(DATA_DIR/shard-<id>) ─▶ Handler ─▶ Router ◀─ Forwarding (mesh)
//!          bind client port (SO_REUSEPORT, shared) + shard port (this shard only)
//!          accept tasks ─▶ one Connection task per client
//!  drain:  stop accepting, stop reading requests, finish in-flight requests, write replies
//!  stop:   (every shard drained) close the mesh, sync and close the engine
//! ```
//!
//! Stopping takes two steps because of forwarding: a shard that has drained its own connections
//! must keep executing requests other shards forward to it until they have drained theirs too.
//! The node runs `drain` on every shard, waits for all of them, then runs `stop`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use crate::connection::{spawn_connection, DisplayPeer};
use event_listener::Event;
use futures_lite::future::or;
use futures_lite::io::AsyncWriteExt;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::UdpSocket;
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use ringkv_io::{now_ms, EngineService, SyncObserver};
use ringkv_replication::hints::HintSettings;
use ringkv_replication::NodeIdentity;
use ringkv_wire::{encode_response, ErrorCode, Failure, Reply, Response, CONNECTION_ERROR_ID};
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::auth::ClientAuth;
use crate::clock::HybridClock;
use crate::cluster::gossip::{self, GossipSetup};
use crate::cluster::handoff::Handoff;
use crate::cluster::peer_auth::PeerKey;
use crate::cluster::{
    peer_server, Cluster, ClusterSettings, ClusterView, HealingSettings, LinkOrigin, MembershipSnapshot,
};
use crate::config::NodeConfig;
use crate::connection::{Connection, ConnectionLimits};
use crate::data_directory::DataDirectory;
use crate::error::ShardError;
use crate::handler::Handler;
use crate::metrics::figures::FiguresInbox;
use crate::metrics::{OverloadReason, Protocol, ShardFigures, ShardMetrics};
use crate::request_memory::RequestMemory;
use crate::ring::Ring;
use crate::router::forwarding::{Forwarding, ShardMessage};
use crate::router::Router;
use crate::stop_signal::StopSignal;

/// Pause after a failed accept (out of descriptors, say) before trying again, so the shard does
/// not spin on an error that persists.
const ACCEPT_RETRY_MS: u64 = 10;

/// Everything a shard needs to start, besides its executor.
pub struct ShardSetup<'setup> {
    pub shard_id: u32,
    /// This shard's metrics, read by the node's metrics endpoint.
    pub metrics: Arc<ShardMetrics>,
    /// Where the metrics endpoint asks for the engine's and cluster's figures at each scrape;
    /// `None` when `metrics_listen` is not set.
    pub figures: Option<FiguresInbox>,
    pub config: &'setup NodeConfig,
    pub data_directory: &'setup DataDirectory,
    pub ring: Ring,
    pub senders: Senders<ShardMessage>,
    pub receivers: Receivers<ShardMessage>,
    /// Mesh peer index of each shard id.
    pub peer_of_shard: Vec<usize>,
    /// This node's tokens on the cluster ring.
    pub tokens: Vec<u64>,
    /// This start's generation (bumped at every start).
    pub generation: u64,
    /// How membership reaches this shard.
    pub membership: MembershipChannels,
    /// Members known from before this start.
    pub known_peers: BTreeMap<u16, NodeIdentity>,
}

/// How membership snapshots travel between the shards of a node: shard 0 runs membership and
/// sends to the others.
pub enum MembershipChannels {
    /// Shard 0: a sender to every other shard.
    Leader(Vec<SharedSender<Arc<MembershipSnapshot>>>),
    /// Any other shard: where snapshots arrive.
    Follower(SharedReceiver<Arc<MembershipSnapshot>>),
}

/// A running shard.
pub struct ShardService {
    shard_id: u32,
    engine: EngineService,
    forwarding: Rc<Forwarding>,
    receivers: Vec<JoinHandle<()>>,
    acceptors: Vec<JoinHandle<()>>,
    connections: Rc<ConnectionCount>,
    stop: Rc<StopSignal>,
    shutdown_grace: Duration,
    cluster: Rc<Cluster>,
    /// Membership (shard 0), the snapshot follower (other shards), the peer acceptor, and the
    /// task answering metrics scrapes with the engine's and cluster's figures.
    cluster_tasks: Vec<JoinHandle<()>>,
    cluster_stop: Rc<StopSignal>,
    /// The Paxos state of compare-and-swaps across replicas, when keys have several copies.
    paxos_engine: Option<EngineService>,
}

/// Open connections of one shard, with a wake-up when the last one closes.
#[derive(Default)]
struct ConnectionCount {
    open: Cell<usize>,
    closed: Event,
}

/// Counts a connection as open until dropped.
struct OpenConnection(Rc<ConnectionCount>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let count = &self.0;
        count.open.set(count.open.get() - 1);
        count.closed.notify(usize::MAX);
    }
}

impl ConnectionCount {
    fn open(self: &Rc<Self>) -> OpenConnection {
        self.open.set(self.open.get() + 1);
        OpenConnection(self.clone())
    }

    async fn wait_until_none(&self) {
        loop {
            let listener = self.closed.listen();
            if self.open.get() == 0 {
                return;
            }
            listener.await;
        }
    }
}

impl ShardService {
    /// Opens the shard's engine, binds its sockets and starts serving. Must run on the shard's
    /// own executor.
    pub async fn start(setup: ShardSetup<'_>) -> Result<ShardService, ShardError> {
        let ShardSetup {
            shard_id,
            metrics,
            figures,
            config,
            data_directory,
            ring,
            senders,
            receivers,
            peer_of_shard,
            tokens,
            generation,
            membership,
            known_peers,
        } = setup;
        let directory = data_directory.shard_path(shard_id);
        let sync_observer: Rc<dyn SyncObserver> = Rc::new(WalSyncs(metrics.clone()));
        let engine = EngineService::open_observed(&directory, config.engine_options(), Some(sync_observer))
            .await
            .map_err(|source| ShardError::Storage { shard_id, source })?;
        let recovery = engine.engine().recovery();
        info!(
            directory = %directory.display(),
            records_replayed = recovery.records_replayed,
            torn_tail_bytes = recovery.torn_tail_bytes,
            tables = recovery.tables_opened,
            tables_missing = recovery.tables_missing,
            "storage engine open"
        );
        if data_directory.started_before() && recovery.fresh {
            warn!(
                shard_id,
                directory = %directory.display(),
                "this node ran here before but the shard's storage files are gone: its data is lost \
                 here; in a cluster, anti-entropy restores it from the other replicas"
            );
            engine
                .engine()
                .mark_rebuilding()
                .await
                .map_err(|source| ShardError::Storage { shard_id, source })?;
        }

        // Versions start above every version on disk, however far ahead of the wall clock.
        let clock = HybridClock::new(config.node_id);
        clock.observe(engine.engine().max_version());
        let handler = Rc::new(
            Handler::new(engine.engine().clone(), clock, now_ms).with_scan_queue(ringkv_io::scan_queue()),
        );
        let forwarding =
            Rc::new(Forwarding::new(shard_id, senders, peer_of_shard, config.forward_in_flight_max));
        let identity = NodeIdentity {
            node_id: config.node_id,
            generation,
            peer_address: config.peer_address(0),
            client_address: config.listen,
            shard_port_base: config.shard_port(0),
            shards: ring.shards() as u32,
            vnodes_per_shard: config.vnodes_per_shard as u32,
            tokens,
        };
        let (cluster, mut cluster_tasks, cluster_stop, paxos_engine) =
            start_cluster(shard_id, config, identity, handler.clone(), membership, known_peers, &directory)
                .await?;
        if let Some(inbox) = figures {
            // Scrapes are answered until the shard stops, through the drain too.
            let (engine, cluster, stop) = (engine.engine().clone(), cluster.clone(), cluster_stop.clone());
            let answer = async move {
                inbox
                    .answer_until_stopped(&stop, || ShardFigures {
                        storage: engine.stats(),
                        cluster: cluster.figures(),
                        sockets: ringkv_readiness::Poller::thread_stats(),
                        background: ringkv_io::executor::background_held(),
                    })
                    .await;
            };
            cluster_tasks.push(glommio::spawn_local(answer).detach());
        }
        let topology = ring.topology(|shard| config.shard_port(shard));
        let receivers = forwarding.start_receivers(receivers, handler.clone(), cluster.clone());
        let router = Rc::new(Router::new(
            shard_id,
            ring,
            topology,
            handler,
            forwarding.clone(),
            cluster.clone(),
            metrics.clone(),
        ));

        let client_listener = bind_shared(config.listen)?;
        let shard_address = config.shard_address(shard_id);
        let shard_listener = bind_exclusive(shard_address)?;
        info!(client = %config.listen, shard = %shard_address, "listening");
        let resp_listener = config.resp_listen.map(bind_shared).transpose()?;

        let stop = Rc::new(StopSignal::new());
        let connections = Rc::new(ConnectionCount::default());
        let memory = RequestMemory::new(config.request_memory_bytes());
        let auth = Rc::new(ClientAuth::new(&config.users));
        let tls = crate::tls::TlsSettings::load(config)?;
        let acceptor = Acceptor {
            shard_id,
            router: router.clone(),
            stop: stop.clone(),
            connections: connections.clone(),
            connections_max: config.connections_max,
            limits: ConnectionLimits {
                in_flight_max: config.in_flight_max,
                outbox_bytes_max: config.outbox_bytes_max,
                frame_timeout: Duration::from_millis(config.frame_timeout_ms),
                idle_timeout: (config.client_idle_timeout_ms > 0)
                    .then(|| Duration::from_millis(config.client_idle_timeout_ms)),
            },
            memory: memory.clone(),
            auth: auth.clone(),
            tls: tls.clone(),
        };
        let acceptor = Rc::new(acceptor);
        let mut acceptors: Vec<_> = [("client", client_listener), ("shard", shard_listener)]
            .into_iter()
            .map(|(port, listener)| {
                let acceptor = acceptor.clone();
                let span = info_span!("accept", shard = shard_id, port);
                glommio::spawn_local(async move { acceptor.run(listener).await }.instrument(span)).detach()
            })
            .collect();
        if let Some(listener) = resp_listener {
            info!(resp = %config.resp_listen.expect("bound from it"), "listening for the Redis protocol");
            acceptors.push(crate::resp::spawn_listener(
                listener,
                shard_id,
                router,
                stop.clone(),
                config,
                memory,
                tls,
            ));
        }

        Ok(ShardService {
            shard_id,
            engine,
            forwarding,
            receivers,
            acceptors,
            connections,
            stop,
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            cluster,
            cluster_tasks,
            cluster_stop,
            paxos_engine,
        })
    }

    /// The shard's id.
    pub fn shard_id(&self) -> u32 {
        self.shard_id
    }

    /// First step of stopping: stop accepting connections and reading requests, then wait for
    /// the requests in flight to be answered and the connections to close, for at most the
    /// shutdown grace period. Requests other shards forward keep being served.
    pub async fn drain(&mut self) {
        self.stop.trigger();
        for acceptor in self.acceptors.drain(..) {
            acceptor.await;
        }
        let open = self.connections.open.get();
        if open > 0 {
            info!(open, "waiting for connections to finish their requests");
        }
        let drained = or(
            async {
                self.connections.wait_until_none().await;
                true
            },
            async {
                glommio::timer::sleep(self.shutdown_grace).await;
                false
            },
        )
        .await;
        if !drained {
            warn!(
                open = self.connections.open.get(),
                grace_ms = self.shutdown_grace.as_millis() as u64,
                "connections still open after the shutdown grace period; closing anyway"
            );
        }
    }

    /// Second step, once every shard has drained: close the mesh and the engine (which makes
    /// every acknowledged write durable). Returns the error that poisoned the engine, if any.
    pub async fn stop(self) -> Result<(), ShardError> {
        // Leave the cluster (shard 0 tells the others), stop serving peers and close links.
        self.cluster_stop.trigger();
        for task in self.cluster_tasks {
            task.await;
        }
        self.cluster.stop().await;
        if let Some(paxos_engine) = self.paxos_engine {
            if let Err(source) = paxos_engine.stop().await {
                warn!(%source, "the Paxos engine failed to close cleanly; the states it acknowledged are durable");
            }
        }
        self.forwarding.close();
        for receiver in &self.receivers {
            // Every shard has drained: nothing more will be forwarded, so the receive tasks
            // have nothing left to do.
            receiver.cancel();
        }
        for receiver in self.receivers {
            receiver.await;
        }
        let shard_id = self.shard_id;
        // An engine that already failed (a write or sync error) cannot sync what it refused;
        // what it acknowledged is on disk. Its failure was logged when it happened, and stopping
        // is what the operator asked for: the stop is clean. A failure new at the stop is not.
        let failed_before = self.engine.engine().failure();
        match self.engine.stop().await {
            Ok(()) => info!("stopped"),
            Err(source) => match failed_before {
                Some(reason) => warn!(
                    %source,
                    failure = %reason,
                    "stopped; the storage engine had failed before, so writes it refused were never acknowledged"
                ),
                None => return Err(ShardError::Storage { shard_id, source }),
            },
        }
        Ok(())
    }
}

/// Starts the shard's cluster part: the coordinator's ticker, the peer port, and membership
/// (run on shard 0, followed by the others).
async fn start_cluster(
    shard_id: u32,
    config: &NodeConfig,
    identity: NodeIdentity,
    handler: Rc<Handler<ringkv_io::DmaDisk>>,
    membership: MembershipChannels,
    known_peers: BTreeMap<u16, NodeIdentity>,
    shard_directory: &std::path::Path,
) -> Result<(Rc<Cluster>, Vec<JoinHandle<()>>, Rc<StopSignal>, Option<EngineService>), ShardError> {
    let origin = LinkOrigin { node_id: config.node_id, shard: shard_id, generation: identity.generation };
    let settings = ClusterSettings {
        write_consistency: config.write_consistency,
        read_consistency: config.read_consistency,
        max_clock_skew_ms: config.max_clock_skew_ms,
        replica_timeout_ms: config.replica_timeout_ms,
        peer_pending_max: config.peer_pending_max,
        peer_outbox_bytes_max: config.peer_outbox_bytes_max,
        peer_in_flight_max: config.in_flight_max,
        peer_receive_bytes_max: config.request_memory_bytes(),
        healing: HealingSettings {
            hints: HintSettings {
                shard_bytes_max: config.hints_bytes_max,
                destination_bytes_max: config.hints_destination_bytes_max,
                max_hint_window_ms: config.max_hint_window_ms,
                tombstone_grace_ms: config.tombstone_grace_ms,
                replay_bytes_per_s: config.hints_replay_bytes_per_s,
            },
            hints_enabled: config.hints_bytes_max > 0,
            anti_entropy_interval_ms: config.anti_entropy_interval_ms,
            anti_entropy_bytes_per_s: config.anti_entropy_bytes_per_s,
            tree_rebuild_interval_ms: config.tree_rebuild_interval_ms,
        },
        peer_key: config.cluster_secret.as_ref().map(|secret| PeerKey::from_secret(secret.expose())),
        peer_frame_timeout_ms: config.frame_timeout_ms,
    };
    // Hints live beside the shard's data, in a directory the engine does not list.
    let handoff = if settings.healing.hints_enabled {
        let handoff = Handoff::open(shard_id, shard_directory.join("hints"), settings.healing.hints)
            .await
            .map_err(|source| ShardError::Storage { shard_id, source })?;
        Some(handoff)
    } else {
        None
    };
    let own_peer_address = config.peer_address(0);
    let has_seeds = config.seeds.iter().any(|&seed| seed != own_peer_address);
    let joining = (has_seeds && known_peers.is_empty()).then(|| {
        format!(
            "the node is joining the cluster and serves nothing until one of its seeds ({}) answers",
            config.seeds.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        )
    });
    let view = ClusterView::new(&identity, config.replication_factor, &known_peers, joining.clone());
    if config.replication_factor > 1 && config.seeds.is_empty() && known_peers.is_empty() && shard_id == 0 {
        warn!(
            replication_factor = config.replication_factor,
            "a single node keeps one copy of each key until other nodes join (replication_factor is capped \
             by the number of nodes)"
        );
    }
    let cluster = Cluster::new(origin, settings, handler, view, handoff);
    // Compare-and-swap across replicas keeps its Paxos state beside the shard's data, in an
    // engine of its own.
    let paxos_engine = if config.replication_factor > 1 {
        let engine =
            crate::cluster::paxos::open_engine(&shard_directory.join("paxos"), &config.engine_options())
                .await
                .map_err(|source| ShardError::Storage { shard_id, source })?;
        cluster.set_paxos_engine(engine.engine().clone());
        Some(engine)
    } else {
        None
    };
    if let Some(tls) = crate::tls::TlsSettings::load(config)? {
        cluster.set_tls(tls, Duration::from_millis(config.frame_timeout_ms));
    }
    cluster.start();
    let stop = Rc::new(StopSignal::new());
    let peer_address = config.peer_address(shard_id);
    let peer_listener = bind_exclusive(peer_address)?;
    info!(peer = %peer_address, "listening for peers");
    let mut tasks =
        vec![glommio::spawn_local(peer_server::accept_links(peer_listener, cluster.clone(), stop.clone()))
            .detach()];
    match membership {
        MembershipChannels::Leader(senders) => {
            let socket = UdpSocket::bind(peer_address)
                .map_err(|error| ShardError::Listen { address: peer_address, source: error.into() })?;
            let mut other_shards = Vec::with_capacity(senders.len());
            for sender in senders {
                other_shards.push(sender.connect().await);
            }
            let setup = GossipSetup {
                identity,
                seeds: config.seeds.clone(),
                known: known_peers,
                joining,
                data_dir: config.data_dir.clone(),
                socket,
                cluster: cluster.clone(),
                other_shards,
                stop: stop.clone(),
            };
            tasks.push(glommio::spawn_local(gossip::run_membership(setup)).detach());
        }
        MembershipChannels::Follower(receiver) => {
            let receiver = receiver.connect().await;
            let follower = cluster.clone();
            let stopped = stop.clone();
            tasks.push(
                glommio::spawn_local(async move {
                    or(gossip::follow_membership(receiver, follower), stopped.wait()).await;
                })
                .detach(),
            );
        }
    }
    Ok((cluster, tasks, stop, paxos_engine))
}

/// Accepts connections on `listener` until `stop`, handing each to `start`. A failed accept
/// (out of file descriptors, say) is logged as accepting `what` and retried after a pause.
pub(crate) async fn accept_until_stopped(
    listener: &TcpListener,
    stop: &StopSignal,
    what: &str,
    mut start: impl FnMut(TcpStream),
) {
    loop {
        let accepted = or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => start(stream),
            Some(Err(error)) => {
                warn!(%error, "accepting {what} failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}

/// Accepts connections on one listener and starts a task for each.
struct Acceptor {
    shard_id: u32,
    router: Rc<Router>,
    stop: Rc<StopSignal>,
    connections: Rc<ConnectionCount>,
    connections_max: usize,
    limits: ConnectionLimits,
    memory: Rc<RequestMemory>,
    auth: Rc<ClientAuth>,
    tls: Option<crate::tls::TlsSettings>,
}

impl Acceptor {
    async fn run(&self, listener: TcpListener) {
        accept_until_stopped(&listener, &self.stop, "a connection", |stream| self.start_connection(stream))
            .await;
        debug!("stopped accepting");
    }

    fn start_connection(&self, stream: TcpStream) {
        let metrics = self.router.metrics().clone();
        let counts = metrics.connections(Protocol::Native);
        counts.accepted.add(1);
        if self.connections.open.get() >= self.connections_max {
            counts.refused.add(1);
            metrics.overloaded(OverloadReason::Connections);
            let span = info_span!("refuse", shard = self.shard_id);
            let connections_max = self.connections_max;
            // A TLS client could not read a plaintext refusal: it just sees the connection end.
            if self.tls.is_none() {
                glommio::spawn_local(refuse(stream, connections_max).instrument(span)).detach();
            }
            return;
        }
        let open = self.connections.open();
        let connection = Connection::new(
            stream,
            self.router.clone(),
            self.stop.clone(),
            self.limits,
            self.memory.clone(),
            self.auth.clone(),
            self.tls.clone(),
        );
        let peer = connection.peer();
        let shard_id = self.shard_id;
        spawn_connection(
            Protocol::Native,
            metrics,
            open,
            connection.serve(),
            || info_span!("connection", shard = shard_id, peer = %DisplayPeer(peer)),
        );
    }
}

/// Tells a client the shard has no room for another connection, and closes.
async fn refuse(mut stream: TcpStream, connections_max: usize) {
    let failure = Failure::new(
        ErrorCode::Overloaded,
        format!("the shard has {connections_max} open connections (connections_max); retry later"),
    );
    let response = Response { id: CONNECTION_ERROR_ID, reply: Reply::Failed(failure) };
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let frame = encode_response(&mut builder, &response).expect("a short error response fits in a frame");
    if let Err(error) = stream.write_all(frame).await {
        debug!(%error, "could not tell a refused client why");
    }
    let _ = stream.close().await;
}

/// Tells the shard's metrics of WAL syncs (the engine's disk reports every file sync).
struct WalSyncs(Arc<ShardMetrics>);

impl SyncObserver for WalSyncs {
    fn synced(&self, file: &str, elapsed: Duration) {
        self.0.synced(file, elapsed);
    }
}

/// Binds the client port, shared by every shard of the node (glommio sets SO_REUSEPORT and the
/// kernel spreads connections among the shards).
fn bind_shared(address: SocketAddr) -> Result<TcpListener, ShardError> {
    TcpListener::bind(address).map_err(|error| ShardError::Listen { address, source: error.into() })
}

/// Binds a shard's own port without SO_REUSEPORT, so that no other process can quietly share it.
fn bind_exclusive(address: SocketAddr) -> Result<TcpListener, ShardError> {
    let listener =
        std::net::TcpListener::bind(address).map_err(|source| ShardError::Listen { address, source })?;
    // SAFETY: the descriptor is a bound, listening TCP socket that `into_raw_fd` hands over; the
    // glommio listener becomes its only owner.
    Ok(unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) })
}
