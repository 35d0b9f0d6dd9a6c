//! The Redis protocol (RESP2 and RESP3) on every shard, so `redis-cli`, `redis-benchmark` and
//! Redis client libraries work against ringkv unchanged.
//!
//! ```text
//!  redis client ─RESP─▶ resp_listen (SO_REUSEPORT: every shard accepts)
//!                        RespConnection ─▶ RequestParser ─▶ parse_command ─▶ DataCommand
//!                                             ─▶ Router::execute / answer (the native path:
//!                                                owning shard, replicas, node's consistency)
//!  redis client ◀─RESP─ replies in request order, batched per write
//! ```
//!
//! Off unless `resp_listen` is set. A Redis request takes exactly the path a native request
//! does: the shard that accepted the connection routes each key to its owning shard, which
//! coordinates it across replicas at the node's default consistency. What Redis commands mean
//! in ringkv's operations (get, put with TTL, delete, compare-and-swap, batch, scan), and where
//! they differ from Redis, is in [`commands`].
//!
//! With `[[users]]` configured, a connection must authenticate first, as in Redis: `AUTH
//! password` (the user `default`), `AUTH user password` or `HELLO 3 AUTH user password`. Until
//! then every other command but QUIT is answered `-NOAUTH Authentication required.`; a wrong
//! user or password gets `-WRONGPASS invalid username-password pair or user is disabled.`, is
//! logged and counted, and the connection stays open.
//!
//! ## Layout
//! - [`parser`]: [`parser::RequestParser`], incremental and bounded RESP request parsing. It lives
//!   in `ringkv_wire::resp` (pure, no runtime), so it can be fuzzed without glommio.
//! - [`reply`]: [`reply::RespReply`] and its RESP2/RESP3 encoding.
//! - [`command_table`]: the commands served, with what `COMMAND` reports.
//! - [`commands`]: argument parsing and the mapping onto ringkv operations.
//! - [`connection`]: [`RespConnection`], one client: concurrent commands, ordered replies.
//! - [`pattern`]: Redis glob patterns for `SCAN MATCH`.
//! - this file: [`RespShard`], the shard's Redis counters, and [`spawn_listener`], its acceptor.

pub mod command_table;
pub mod commands;
pub mod connection;
pub mod pattern;
pub mod reply;

pub use ringkv_wire::resp as parser;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::connection::{spawn_connection, DisplayPeer};
use event_listener::Event;
use futures_lite::future::or;
use futures_lite::io::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use tracing::{debug, info_span, warn, Instrument};

pub use connection::RespConnection;

use crate::auth::ClientAuth;
use crate::config::NodeConfig;
use crate::connection::ConnectionLimits;
use crate::metrics::{OverloadReason, Protocol};
use crate::request_memory::RequestMemory;
use crate::router::Router;
use crate::service::accept_until_stopped;
use crate::stop_signal::StopSignal;

/// Client ids are unique per node: the shard id sits above this many bits of a per-shard count.
const CLIENT_ID_SHARD_SHIFT: u32 = 48;

/// One shard's Redis-protocol state: its counters for INFO and its client ids.
pub struct RespShard {
    /// The users clients authenticate as.
    pub auth: ClientAuth,
    pub shard_id: u32,
    pub port: u16,
    started: Instant,
    pub connections_received: Cell<u64>,
    pub connections_rejected: Cell<u64>,
    pub connected: Cell<usize>,
    pub commands_processed: Cell<u64>,
    next_client: Cell<u64>,
    /// A connection closed: a stopping listener waiting for the last one goes on.
    closed: Event,
}

impl RespShard {
    fn new(shard_id: u32, port: u16, auth: ClientAuth) -> Self {
        RespShard {
            auth,
            shard_id,
            port,
            started: Instant::now(),
            connections_received: Cell::new(0),
            connections_rejected: Cell::new(0),
            connected: Cell::new(0),
            commands_processed: Cell::new(0),
            next_client: Cell::new(1),
            closed: Event::new(),
        }
    }

    /// A client id no other connection of the node has had in this run.
    pub fn next_client_id(&self) -> u64 {
        let count = self.next_client.get();
        self.next_client.set(count + 1);
        (u64::from(self.shard_id) << CLIENT_ID_SHARD_SHIFT) | count
    }

    /// INFO's text for the sections `wanted` admits, except the keyspace (which needs a scan).
    /// Counts are this shard's: the one that accepted the connection.
    pub fn info(&self, wanted: &dyn Fn(&str) -> bool) -> String {
        let mut text = String::new();
        if wanted("server") {
            text.push_str(&format!(
                "# Server\r\nringkv_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:{}\r\n\
                 process_id:{}\r\ntcp_port:{}\r\nshard_id:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                usize::BITS,
                std::process::id(),
                self.port,
                self.shard_id,
                self.started.elapsed().as_secs(),
            ));
        }
        if wanted("clients") {
            text.push_str(&format!("# Clients\r\nconnected_clients:{}\r\n\r\n", self.connected.get()));
        }
        if wanted("memory") {
            match resident_bytes() {
                Some(bytes) => text.push_str(&format!("# Memory\r\nused_memory_rss:{bytes}\r\n\r\n")),
                None => text.push_str("# Memory\r\n\r\n"),
            }
        }
        if wanted("stats") {
            text.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 rejected_connections:{}\r\n\r\n",
                self.connections_received.get(),
                self.commands_processed.get(),
                self.connections_rejected.get(),
            ));
        }
        text
    }

    async fn wait_until_no_connections(&self) {
        loop {
            let listener = self.closed.listen();
            if self.connected.get() == 0 {
                return;
            }
            listener.await;
        }
    }
}

/// The process's resident memory, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_bytes).ok()?)
}

/// Counts a connection as open until dropped.
struct OpenConnection(Rc<RespShard>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connected.set(self.0.connected.get() - 1);
        self.0.closed.notify(usize::MAX);
    }
}

/// Accepts Redis-protocol connections on `listener` until `stop` is triggered, then waits (at
/// most the shutdown grace period) for them to finish their commands and close. The task ends
/// only then, so the shard's drain, which awaits its acceptors, covers these connections too.
pub fn spawn_listener(
    listener: TcpListener,
    shard_id: u32,
    router: Rc<Router>,
    stop: Rc<StopSignal>,
    config: &NodeConfig,
    memory: Rc<RequestMemory>,
    tls: Option<crate::tls::TlsSettings>,
) -> JoinHandle<()> {
    let port = listener.local_addr().map(|address: SocketAddr| address.port()).unwrap_or_default();
    let acceptor = Acceptor {
        shard: Rc::new(RespShard::new(shard_id, port, ClientAuth::new(&config.users))),
        router,
        stop,
        connections_max: config.connections_max,
        limits: ConnectionLimits {
            in_flight_max: config.in_flight_max,
            outbox_bytes_max: config.outbox_bytes_max,
            frame_timeout: Duration::from_millis(config.frame_timeout_ms),
            idle_timeout: (config.client_idle_timeout_ms > 0)
                .then(|| Duration::from_millis(config.client_idle_timeout_ms)),
        },
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        memory,
        tls,
    };
    let span = info_span!("accept", shard = shard_id, port = "resp");
    glommio::spawn_local(async move { acceptor.run(listener).await }.instrument(span)).detach()
}

struct Acceptor {
    shard: Rc<RespShard>,
    router: Rc<Router>,
    stop: Rc<StopSignal>,
    connections_max: usize,
    limits: ConnectionLimits,
    shutdown_grace: Duration,
    memory: Rc<RequestMemory>,
    tls: Option<crate::tls::TlsSettings>,
}

impl Acceptor {
    async fn run(&self, listener: TcpListener) {
        accept_until_stopped(&listener, &self.stop, "a Redis-protocol connection", |stream| {
            self.start_connection(stream)
        })
        .await;
        drop(listener);
        let drained = or(
            async {
                self.shard.wait_until_no_connections().await;
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
                open = self.shard.connected.get(),
                "Redis-protocol connections still open after the shutdown grace period"
            );
        }
        debug!("stopped accepting");
    }

    fn start_connection(&self, stream: TcpStream) {
        let shard = &self.shard;
        shard.connections_received.set(shard.connections_received.get() + 1);
        let metrics = self.router.metrics().clone();
        metrics.connections(Protocol::Resp).accepted.add(1);
        if shard.connected.get() >= self.connections_max {
            shard.connections_rejected.set(shard.connections_rejected.get() + 1);
            metrics.connections(Protocol::Resp).refused.add(1);
            metrics.overloaded(OverloadReason::Connections);
            let connections_max = self.connections_max;
            // A TLS client could not read a plaintext refusal: it just sees the connection end.
            if self.tls.is_none() {
                glommio::spawn_local(refuse(stream, connections_max)).detach();
            }
            return;
        }
        shard.connected.set(shard.connected.get() + 1);
        let open = OpenConnection(shard.clone());
        let connection = RespConnection::new(
            stream,
            self.router.clone(),
            self.stop.clone(),
            self.limits,
            shard.clone(),
            self.memory.clone(),
            self.tls.clone(),
        );
        let peer = connection.peer();
        let shard_id = shard.shard_id;
        spawn_connection(
            Protocol::Resp,
            metrics,
            open,
            connection.serve(),
            || info_span!("resp", shard = shard_id, peer = %DisplayPeer(peer)),
        );
    }
}

/// Tells a client the shard has no room for another connection, in Redis's words, and closes.
async fn refuse(mut stream: TcpStream, connections_max: usize) {
    let reply =
        format!("-ERR max number of clients reached ({connections_max} per shard, connections_max)\r\n");
    if let Err(error) = stream.write_all(reply.as_bytes()).await {
        debug!(%error, "could not tell a refused client why");
    }
    let _ = stream.close().await;
}
