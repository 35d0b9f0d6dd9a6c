//! [`AsyncClient`]: the async client, written once and run on tokio or glommio through a
//! [`Transport`]. Use it through `ringkv_client::tokio::Client` or
//! `ringkv_client::glommio::Client`.
//!
//! The client is a cheap handle: clone it into as many tasks as needed. Concurrent calls share
//! one connection per node shard and are pipelined on it, up to
//! [`ClientOptions::in_flight_max`] per connection; beyond that, calls wait for room.
//! [`AsyncClient::with_consistency`] makes a handle asking another level of the replicas, on
//! the same connections.
//!
//! No task of its own: the topology is fetched again by the first call that finds it due (see
//! [`crate::refresh`]); the calls meanwhile go on with the topology they have.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use ringkv_wire::{
    Command, Consistency, Expected, Failure, Operation, Outcome, Reply, ScanEnd, ScanPage, ScanStart,
    Topology,
};

use crate::clock::coarse_now;
use crate::command::{self, Outgoing};
use crate::error::Error;
use crate::failover;
pub(crate) use crate::multiplexed::SharedConnection;
use crate::multiplexed::Started;
use crate::options::{Backoff, ClientOptions};
use crate::refresh::RefreshSchedule;
use crate::reply::{self, CasResult, Versioned};
use crate::routing::{Route, Router, Routes};

/// What an async runtime provides the client: opening a connection (with its reader and
/// writer tasks running), sleeping, and bounding a future by a timeout.
///
/// Sealed: implemented by this crate's tokio and glommio adapters only.
#[allow(async_fn_in_trait)] // The futures' auto traits are the runtime's concern: tokio's are Send, glommio's are not.
pub trait Transport: sealed::Sealed + 'static {
    /// Connects to `address` and spawns the tasks that move bytes between the socket and
    /// `shared`. When the socket fails or closes, they call [`SharedConnection::close`].
    #[doc(hidden)]
    async fn open(address: SocketAddr, options: &ClientOptions) -> std::io::Result<Arc<SharedConnection>>;
    #[doc(hidden)]
    async fn sleep(duration: Duration);
    #[doc(hidden)]
    async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output>;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// A token- and shard-aware ringkv client for an async runtime `R`; see the module
/// documentation, and the crate's for routing and failover.
pub struct AsyncClient<R: Transport> {
    inner: Arc<Inner>,
    /// What this handle asks of the replicas; see [`AsyncClient::with_consistency`].
    consistency: Option<Consistency>,
    runtime: PhantomData<fn() -> R>,
}

impl<R: Transport> Clone for AsyncClient<R> {
    fn clone(&self) -> Self {
        AsyncClient { inner: Arc::clone(&self.inner), consistency: self.consistency, runtime: PhantomData }
    }
}

/// What every handle of one client shares. The lock is never held across an await.
struct Inner {
    options: ClientOptions,
    /// One lock for all a request looks up before it is sent: each lock taken costs two atomic
    /// operations, a measurable share of a request at a million a second.
    routing: Mutex<Routing>,
}

/// How requests find their connection.
struct Routing {
    router: Router,
    refresh: RefreshSchedule,
    /// Looked up on every request: hashed with ahash, not SipHash.
    connections: HashMap<SocketAddr, Arc<SharedConnection>, ahash::RandomState>,
}

/// Where a request goes first, found under one lock (see [`AsyncClient::first_route_now`]).
struct FirstRoute {
    route: Route,
    /// Whether `route` is the only one: no other replica to fail over to.
    only: bool,
    /// The open connection to `route`, if there is one.
    connection: Option<Arc<SharedConnection>>,
}

/// Ends a claimed topology fetch however the fetching call ends, cancelled included.
struct RefreshClaim<'a>(&'a Mutex<Routing>);

impl Drop for RefreshClaim<'_> {
    fn drop(&mut self) {
        locked(self.0).refresh.end();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader and writer tasks hold the connections too; closing ends them.
        let routing = self.routing.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        for connection in routing.connections.values() {
            connection.close("client dropped");
        }
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<R: Transport> AsyncClient<R> {
    /// Connects to a node's client port with the default options and fetches its topology.
    ///
    /// Resolving a host name blocks the thread; pass an IP address to avoid that.
    pub async fn connect(address: impl ToSocketAddrs + fmt::Debug) -> Result<Self, Error> {
        Self::connect_with(address, ClientOptions::default()).await
    }

    /// Connects with `options` and fetches the topology.
    pub async fn connect_with(
        address: impl ToSocketAddrs + fmt::Debug,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let seed = crate::resolve(&address)?;
        let consistency = options.consistency;
        let client = AsyncClient {
            inner: Arc::new(Inner {
                routing: Mutex::new(Routing {
                    router: Router::with_unreachable_node_hold(seed, options.unreachable_node_hold)
                        .with_replica_choice(options.replica_choice),
                    refresh: RefreshSchedule::new(options.topology_refresh_interval),
                    connections: HashMap::with_hasher(ahash::RandomState::new()),
                }),
                options,
            }),
            consistency,
            runtime: PhantomData,
        };
        client.refresh_topology().await?;
        Ok(client)
    }

    /// A handle on the same client (same connections and topology) whose calls ask `level` of
    /// the replicas: how many must answer each read or acknowledge each write. For example
    /// `client.with_consistency(Consistency::All).get("key").await`.
    pub fn with_consistency(&self, level: Consistency) -> Self {
        AsyncClient { inner: Arc::clone(&self.inner), consistency: Some(level), runtime: PhantomData }
    }

    /// The level this handle asks of the replicas; `None`: the node's configured level.
    pub fn consistency(&self) -> Option<Consistency> {
        self.consistency
    }

    /// The value of `key` and its version, or `None` when the key has no live value.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        reply::into_get(self.execute(command::get(key.as_ref()), self.consistency).await?)
    }

    /// Stores `value` under `key`; returns the write's version.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        let command = command::put(key.as_ref(), value.as_ref(), None);
        reply::into_written("put", self.execute(command, self.consistency).await?)
    }

    /// Stores `value` under `key` until `ttl` has passed; returns the write's version.
    pub async fn put_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<u64, Error> {
        let command = command::put(key.as_ref(), value.as_ref(), Some(ttl));
        reply::into_written("put", self.execute(command, self.consistency).await?)
    }

    /// Removes `key`; returns the deletion's version.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<u64, Error> {
        reply::into_written("delete", self.execute(command::delete(key.as_ref()), self.consistency).await?)
    }

    /// Writes `value` only if the key's state matches `expected`.
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Expected,
        value: impl AsRef<[u8]>,
    ) -> Result<CasResult, Error> {
        let command = command::compare_and_swap(key.as_ref(), expected, value.as_ref());
        reply::into_cas(self.execute(&command, self.consistency).await?)
    }

    /// One page of the live keys from `start` to `end` in token order (by the keys' tokens,
    /// then their bytes; see [`ScanStart`] and [`ScanEnd`]): at most `limit` entries (1 to
    /// [`crate::SCAN_LIMIT_MAX`]), fewer when the page reaches the server's byte cap. When
    /// [`ScanPage::next_start`] is set, more may follow: scan again from [`ScanStart::After`]
    /// it. The request goes to the shared port; the server asks the shards owning the range.
    pub async fn scan(&self, start: ScanStart, end: ScanEnd, limit: u32) -> Result<ScanPage, Error> {
        reply::into_scan(self.execute(&command::scan(start, end, limit), None).await?)
    }

    /// Independent operations in one request, answered in order; each can fail on its own.
    /// Not a transaction. The batch goes to the shared port of the node the topology came from,
    /// and the server forwards each operation to its owning shard; for shard-aware bulk work,
    /// run single calls concurrently (they pipeline on each shard's connection). This handle's
    /// consistency applies to each operation.
    pub async fn batch(&self, operations: Vec<Operation>) -> Result<Vec<Result<Outcome, Failure>>, Error> {
        reply::into_batch(self.execute(&Command::Batch(operations), self.consistency).await?)
    }

    /// Checks that the node answers.
    pub async fn ping(&self) -> Result<(), Error> {
        reply::into_pong(self.execute(&Command::Ping, None).await?)
    }

    /// Fetches the topology and routes by it from now on: from the node it last came from,
    /// or when that one cannot be reached, from another node it listed, or the address given
    /// to `connect`.
    pub async fn refresh_topology(&self) -> Result<Topology, Error> {
        let contacts = locked(&self.inner.routing).router.contacts(Instant::now());
        let (last, others) = contacts.split_last().expect("the seed is always a contact");
        for contact in others {
            match self.fetch_topology(contact, Backoff::once()).await {
                Ok(topology) => return Ok(topology),
                Err(error) => self.on_route_failed(contact, &error),
            }
        }
        let reconnect = self.inner.options.reconnect;
        self.fetch_topology(last, reconnect).await.inspect_err(|error| self.on_route_failed(last, error))
    }

    async fn fetch_topology(&self, contact: &Route, reconnect: Backoff) -> Result<Topology, Error> {
        let reply = self.call(contact.address, &Command::Topology, None, reconnect).await?;
        let topology = reply::into_topology(reply)?;
        let mut closed = Vec::new();
        {
            let mut routing = locked(&self.inner.routing);
            let Routing { router, refresh, connections } = &mut *routing;
            router.set_topology(topology.clone(), contact.address);
            refresh.on_fetched(Instant::now());
            // Connections no route leads to any more (a node that left) are closed.
            connections.retain(|address, connection| {
                let keep = router.routes_to(*address);
                if !keep {
                    closed.push(Arc::clone(connection));
                }
                keep
            });
        }
        for connection in closed {
            connection.close("no route leads to this address any more");
        }
        Ok(topology)
    }

    /// Where a request for `key` goes first at `now`, with the open connection to it, all
    /// under one lock; `None` when `may_refresh` and the topology is due for a fetch (old, or
    /// suspected out of date): the caller now holds the fetch (see [`RefreshSchedule::begin`])
    /// and must end it.
    fn first_route_now(&self, key: Option<&[u8]>, now: Instant, may_refresh: bool) -> Option<FirstRoute> {
        let mut routing = locked(&self.inner.routing);
        if may_refresh && routing.refresh.begin(now) {
            return None;
        }
        let (route, only) = routing.router.first_route(key, now);
        let connection =
            routing.connections.get(&route.address).filter(|connection| !connection.is_closed()).cloned();
        Some(FirstRoute { route, only, connection })
    }

    /// Fetches the topology, having claimed the fetch ([`AsyncClient::first_route_now`]). One
    /// call fetches while the others go on; a failed fetch leaves the topology as it was.
    async fn refresh_claimed(&self) {
        let _claim = RefreshClaim(&self.inner.routing);
        // Boxed: a fetch is rare, and its future (a connect, TLS included) is kilobytes that
        // every request's future would otherwise carry and copy.
        let _ = Box::pin(self.refresh_topology()).await;
    }

    /// The topology requests are routed by (fetched on connect), if any.
    pub fn topology(&self) -> Option<Topology> {
        locked(&self.inner.routing).router.topology().cloned()
    }

    /// The node this client prefers to coordinate the keys it replicates (see
    /// [`crate::ReplicaChoice`]), once a topology is known.
    pub fn preferred_node(&self) -> Option<u16> {
        locked(&self.inner.routing).router.preferred_node()
    }

    /// Where a request for `key` goes first: the owning shard of the replica chosen for it
    /// (see [`crate::ReplicaChoice`]) that is up and not found unreachable lately, of its
    /// node's owning shard, or the shared port.
    pub fn route(&self, key: impl AsRef<[u8]>) -> Route {
        locked(&self.inner.routing).router.routes(Some(key.as_ref()), Instant::now())[0]
    }

    /// Sends `command` along its routes (see [`Router::routes`]) until one answers or the
    /// failure may not be retried elsewhere (see [`failover`]), and returns the reply. Every
    /// route but the last gets one connection attempt; the last gets the reconnect back-off.
    /// On a wrong-shard answer the topology is fetched again and the request resent once.
    async fn execute(
        &self,
        outgoing: impl Into<Outgoing<'_>>,
        consistency: Option<Consistency>,
    ) -> Result<Reply, Error> {
        let command = outgoing.into();
        // One reading of the coarse clock serves both the refresh schedule and the routing
        // (both measure spans far longer than its tick; see `clock.rs`); a refresh that ran
        // takes time, so the routing reads the clock again after one. The first route alone:
        // the whole list is only needed once an attempt fails.
        let key = command.routing_key();
        let first = match self.first_route_now(key, coarse_now(), true) {
            Some(first) => first,
            None => {
                self.refresh_claimed().await;
                self.first_route_now(key, coarse_now(), false).expect("no fetch to claim")
            }
        };
        let FirstRoute { route: first, only, connection } = first;
        let reconnect = if only { self.inner.options.reconnect } else { Backoff::once() };
        // Started from inside a poll, so the request's slot takes this task's waker with it
        // and the reply's first poll has nothing to register (one lock less per request).
        let started = match connection {
            Some(connection) => {
                let mut connection = Some(connection);
                Some(
                    std::future::poll_fn(|context| {
                        let connection = connection.take().expect("polled once: it is ready at once");
                        Poll::Ready(connection.try_start_waking(command, consistency, Some(context.waker())))
                    })
                    .await,
                )
            }
            None => None,
        };
        let result = match started {
            Some(Ok(Started::Sent(reply))) => reply.await,
            // Boxed: connecting or waiting for room is the exception.
            Some(Ok(Started::Full)) | None => {
                Box::pin(self.call(first.address, command, consistency, reconnect)).await
            }
            Some(Err(error)) => Err(error),
        };
        match result {
            Err(error) if !only && failover::may_try_another(&error, command.is_idempotent()) => {
                self.on_route_failed(&first, &error);
                // Boxed: failing over is the exception, and its future holds every route.
                Box::pin(self.fail_over(first, command, consistency)).await
            }
            // Not through `answered`: its future would make every request's 150 bytes larger.
            result => match self.note_outcome(&first, result)? {
                Some(reply) => Ok(reply),
                None => Box::pin(self.after_wrong_shard(command, consistency)).await,
            },
        }
    }

    /// After the attempt on `tried` failed in a way another node may answer: the remaining
    /// routes in order (the topology's, as marked by that failure), every one but the last
    /// with one connection attempt, the last with the reconnect back-off.
    async fn fail_over(
        &self,
        tried: Route,
        command: Outgoing<'_>,
        consistency: Option<Consistency>,
    ) -> Result<Reply, Error> {
        let idempotent = command.is_idempotent();
        let all = locked(&self.inner.routing).router.routes(command.routing_key(), Instant::now());
        let mut routes: Routes = all.iter().copied().filter(|route| *route != tried).collect();
        if routes.is_empty() {
            // The topology changed under the request: the tried route is all there is.
            routes.push(tried);
        }
        let (last, others) = routes.split_last().expect("at least one route is left");
        for route in others {
            match self.call(route.address, command, consistency, Backoff::once()).await {
                Err(error) if failover::may_try_another(&error, idempotent) => {
                    self.on_route_failed(route, &error);
                }
                result => return self.answered(route, result, command, consistency).await,
            }
        }
        let reconnect = self.inner.options.reconnect;
        let result = self.call(last.address, command, consistency, reconnect).await;
        self.answered(last, result, command, consistency).await
    }

    /// The outcome of `command` on `route`, after what it says about the topology is noted.
    async fn answered(
        &self,
        route: &Route,
        result: Result<Reply, Error>,
        command: Outgoing<'_>,
        consistency: Option<Consistency>,
    ) -> Result<Reply, Error> {
        match self.note_outcome(route, result)? {
            Some(reply) => Ok(reply),
            // Boxed: a wrong shard is rare, and its future holds a topology fetch.
            None => Box::pin(self.after_wrong_shard(command, consistency)).await,
        }
    }

    /// Notes what the outcome on `route` says about the topology, and returns the reply, or
    /// `None` when it was a wrong-shard answer: the request must be sent again.
    fn note_outcome(&self, route: &Route, result: Result<Reply, Error>) -> Result<Option<Reply>, Error> {
        let reply = result.inspect_err(|error| self.on_route_failed(route, error))?;
        if failover::is_unavailable(&reply) {
            locked(&self.inner.routing).refresh.mark_stale();
        }
        Ok((!reply::is_wrong_shard(&reply)).then_some(reply))
    }

    /// Fetches the topology again after a wrong-shard answer and resends `command` once.
    async fn after_wrong_shard(
        &self,
        command: Outgoing<'_>,
        consistency: Option<Consistency>,
    ) -> Result<Reply, Error> {
        self.refresh_topology().await?;
        let route = locked(&self.inner.routing).router.routes(command.routing_key(), Instant::now())[0];
        self.call(route.address, command, consistency, self.inner.options.reconnect).await
    }

    /// Notes a failed route: a node that cannot be reached is routed around for a while, and
    /// the topology is fetched again before the next request.
    fn on_route_failed(&self, route: &Route, error: &Error) {
        if failover::is_unreachable(error) {
            let mut routing = locked(&self.inner.routing);
            if let Some(node_id) = route.node_id {
                routing.router.mark_unreachable(node_id, Instant::now());
            }
            routing.refresh.mark_stale();
        }
    }

    /// The connection to `address`, if one is open.
    fn open_connection(&self, address: SocketAddr) -> Option<Arc<SharedConnection>> {
        let routing = locked(&self.inner.routing);
        routing.connections.get(&address).filter(|connection| !connection.is_closed()).cloned()
    }

    /// One request to `address`, bounded by the request timeout: the connection's deadline
    /// task fails it if no reply comes in time (see [`SharedConnection::expire_overdue`]), and
    /// a wait for room in a full pipeline is bounded by a timer. Connects first if needed,
    /// with `reconnect`.
    async fn call(
        &self,
        address: SocketAddr,
        command: impl Into<Outgoing<'_>>,
        consistency: Option<Consistency>,
        reconnect: Backoff,
    ) -> Result<Reply, Error> {
        let command = command.into();
        let connection = self.connection(address, reconnect).await?;
        let timeout = self.inner.options.request_timeout;
        let reply = match Arc::clone(&connection).try_start(command, consistency)? {
            Started::Sent(reply) => reply,
            // Boxed, as the connect below: waiting for room is the exception.
            Started::Full => Box::pin(R::timeout(timeout, connection.start(command, consistency)))
                .await
                .unwrap_or(Err(Error::Timeout { timeout }))?,
        };
        reply.await
    }

    /// The open connection to `address`, reconnecting with the bounded back-off `reconnect`
    /// when there is none or it has closed.
    async fn connection(
        &self,
        address: SocketAddr,
        reconnect: Backoff,
    ) -> Result<Arc<SharedConnection>, Error> {
        if let Some(connection) = self.open_connection(address) {
            return Ok(connection);
        }
        // Boxed: connecting is rare, and its future (TLS included) is kilobytes that every
        // request's future would otherwise carry and copy.
        Box::pin(self.connect_to(address, reconnect)).await
    }

    /// Opens a connection to `address` with the bounded back-off `reconnect`, unless another
    /// task opened one meanwhile.
    async fn connect_to(
        &self,
        address: SocketAddr,
        reconnect: Backoff,
    ) -> Result<Arc<SharedConnection>, Error> {
        let options = &self.inner.options;
        let mut last_error = None;
        for attempt in reconnect.attempts() {
            R::sleep(reconnect.delay_before(attempt)).await;
            match R::open(address, options).await {
                Ok(connection) => {
                    let mut routing = locked(&self.inner.routing);
                    if let Some(existing) =
                        routing.connections.get(&address).filter(|existing| !existing.is_closed())
                    {
                        // Another task connected while this one did, and may already have
                        // requests in flight on its connection: keep that one, drop ours (unused).
                        let existing = Arc::clone(existing);
                        drop(routing);
                        connection.close("another task connected to this address first");
                        return Ok(existing);
                    }
                    routing.connections.insert(address, Arc::clone(&connection));
                    return Ok(connection);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(Error::Connect {
            address,
            attempts: reconnect.attempts().end,
            source: last_error.expect("at least one attempt"),
        })
    }
}
