//! [`AsyncClient`]: the async client, written once and run on tokio or glommio through a
//! [`Transport`]. Use it through `ringkv_client::tokio::Client` or
//! `ringkv_client::glommio::Client`.
//!
//! The client is a cheap handle: clone it into as many tasks as needed. Concurrent calls share
//! one connection per shard port and are pipelined on it, up to
//! [`ClientOptions::in_flight_max`] per connection; beyond that, calls wait for room.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ringkv_wire::{
    Command, Expected, Failure, Operation, Outcome, Reply, ScanEnd, ScanPage, ScanStart, Topology,
};

use crate::command;
use crate::error::Error;
pub(crate) use crate::multiplexed::SharedConnection;
use crate::multiplexed::Started;
use crate::options::ClientOptions;
use crate::reply::{self, CasResult, Versioned};
use crate::routing::{Route, Router};

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

/// A shard-aware ringkv client for an async runtime `R`; see the module documentation.
pub struct AsyncClient<R: Transport> {
    inner: Arc<Inner>,
    runtime: PhantomData<fn() -> R>,
}

impl<R: Transport> Clone for AsyncClient<R> {
    fn clone(&self) -> Self {
        AsyncClient { inner: Arc::clone(&self.inner), runtime: PhantomData }
    }
}

struct Inner {
    options: ClientOptions,
    router: Mutex<Router>,
    connections: Mutex<HashMap<SocketAddr, Arc<SharedConnection>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader and writer tasks hold the connections too; closing ends them.
        let connections = self.connections.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        for connection in connections.values() {
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
        let shared = crate::resolve(&address)?;
        let client = AsyncClient {
            inner: Arc::new(Inner {
                options,
                router: Mutex::new(Router::new(shared)),
                connections: Mutex::new(HashMap::new()),
            }),
            runtime: PhantomData,
        };
        client.refresh_topology().await?;
        Ok(client)
    }

    /// The value of `key` and its version, or `None` when the key has no live value.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        reply::into_get(self.execute(command::get(key.as_ref())).await?)
    }

    /// Stores `value` under `key`; returns the write's version.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        reply::into_written("put", self.execute(command::put(key.as_ref(), value.as_ref(), None)).await?)
    }

    /// Stores `value` under `key` until `ttl` has passed; returns the write's version.
    pub async fn put_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<u64, Error> {
        let command = command::put(key.as_ref(), value.as_ref(), Some(ttl));
        reply::into_written("put", self.execute(command).await?)
    }

    /// Removes `key`; returns the deletion's version.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<u64, Error> {
        reply::into_written("delete", self.execute(command::delete(key.as_ref())).await?)
    }

    /// Writes `value` only if the key's state matches `expected`.
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Expected,
        value: impl AsRef<[u8]>,
    ) -> Result<CasResult, Error> {
        let command = command::compare_and_swap(key.as_ref(), expected, value.as_ref());
        reply::into_cas(self.execute(command).await?)
    }

    /// One page of the live keys from `start` to `end` in token order (by the keys' tokens,
    /// then their bytes; see [`ScanStart`] and [`ScanEnd`]): at most `limit` entries (1 to
    /// [`crate::SCAN_LIMIT_MAX`]), fewer when the page reaches the server's byte cap. When
    /// [`ScanPage::next_start`] is set, more may follow: scan again from [`ScanStart::After`]
    /// it. The request goes to the shared port; the server asks the shards owning the range.
    pub async fn scan(&self, start: ScanStart, end: ScanEnd, limit: u32) -> Result<ScanPage, Error> {
        reply::into_scan(self.execute(command::scan(start, end, limit)).await?)
    }

    /// Independent operations in one request, answered in order; each can fail on its own.
    /// Not a transaction. The batch goes to the shared port and the server forwards each
    /// operation to its owning shard; for shard-aware bulk work, run single calls
    /// concurrently (they pipeline on each shard's connection).
    pub async fn batch(&self, operations: Vec<Operation>) -> Result<Vec<Result<Outcome, Failure>>, Error> {
        reply::into_batch(self.execute(Command::Batch(operations)).await?)
    }

    /// Checks that the node answers.
    pub async fn ping(&self) -> Result<(), Error> {
        reply::into_pong(self.execute(Command::Ping).await?)
    }

    /// Fetches the node's topology and routes by it from now on.
    pub async fn refresh_topology(&self) -> Result<Topology, Error> {
        let shared = locked(&self.inner.router).shared();
        let topology = reply::into_topology(self.call(shared, Command::Topology).await?)?;
        locked(&self.inner.router).set_topology(topology.clone());
        Ok(topology)
    }

    /// The topology requests are routed by (fetched on connect), if any.
    pub fn topology(&self) -> Option<Topology> {
        locked(&self.inner.router).topology().cloned()
    }

    /// Where a request for `key` goes: its owning shard's port, or the shared port.
    pub fn route(&self, key: impl AsRef<[u8]>) -> Route {
        locked(&self.inner.router).route_key(key.as_ref())
    }

    fn route_command(&self, command: &Command) -> Route {
        let router = locked(&self.inner.router);
        match command::routing_key(command) {
            Some(key) => router.route_key(key),
            None => router.shared_route(),
        }
    }

    /// Sends `command` to the owner of its key (or the shared port) and returns the reply. On
    /// a wrong-shard answer the topology is fetched again and the request resent once.
    async fn execute(&self, command: Command) -> Result<Reply, Error> {
        let route = self.route_command(&command);
        let reply = self.call(route.address, command.clone()).await?;
        if !reply::is_wrong_shard(&reply) {
            return Ok(reply);
        }
        self.refresh_topology().await?;
        let route = self.route_command(&command);
        self.call(route.address, command).await
    }

    /// One request to `address`, bounded by the request timeout: the connection's deadline
    /// task fails it if no reply comes in time (see [`SharedConnection::expire_overdue`]), and
    /// a wait for room in a full pipeline is bounded by a timer.
    async fn call(&self, address: SocketAddr, command: Command) -> Result<Reply, Error> {
        let connection = self.connection(address).await?;
        let timeout = self.inner.options.request_timeout;
        let reply = match connection.try_start(command)? {
            Started::Sent(reply) => reply,
            Started::Full(command) => R::timeout(timeout, connection.start(command))
                .await
                .unwrap_or(Err(Error::Timeout { timeout }))?,
        };
        reply.await
    }

    /// The open connection to `address`, reconnecting with bounded back-off when there is none
    /// or it has closed.
    async fn connection(&self, address: SocketAddr) -> Result<Arc<SharedConnection>, Error> {
        if let Some(connection) = locked(&self.inner.connections).get(&address) {
            if !connection.is_closed() {
                return Ok(Arc::clone(connection));
            }
        }
        let options = &self.inner.options;
        let mut last_error = None;
        for attempt in options.reconnect.attempts() {
            R::sleep(options.reconnect.delay_before(attempt)).await;
            match R::open(address, options).await {
                Ok(connection) => {
                    let mut connections = locked(&self.inner.connections);
                    if let Some(existing) = connections.get(&address).filter(|existing| !existing.is_closed())
                    {
                        // Another task connected while this one did, and may already have
                        // requests in flight on its connection: keep that one, drop ours (unused).
                        let existing = Arc::clone(existing);
                        drop(connections);
                        connection.close("another task connected to this address first");
                        return Ok(existing);
                    }
                    connections.insert(address, Arc::clone(&connection));
                    return Ok(connection);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(Error::Connect {
            address,
            attempts: options.reconnect.attempts().end,
            source: last_error.expect("at least one attempt"),
        })
    }
}
