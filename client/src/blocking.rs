//! The blocking adapter: [`Client`] over `std::net`, one socket per shard port.
//!
//! Each call sends one request and waits for its reply; [`Client::pipeline`] sends many
//! requests before reading their replies, which is how a blocking program keeps the server
//! busy. [`Client::with_consistency`] asks a level of the replicas for the calls made through
//! it; [`ClientOptions::consistency`] sets the client's default.
//!
//! There is no background thread: the topology is fetched again by the first request that
//! finds it due (see [`crate::refresh`]).
//!
//! ```no_run
//! use ringkv_client::blocking::Client;
//! use ringkv_client::{CasResult, Expected};
//!
//! fn main() -> Result<(), ringkv_client::Error> {
//!     let mut client = Client::connect("127.0.0.1:7379")?;
//!     let version = client.put("greeting", "hello")?;
//!     let stored = client.get("greeting")?.expect("just written");
//!     assert_eq!(&stored.value[..], b"hello");
//!     match client.compare_and_swap("greeting", Expected::Version(version), "hi")? {
//!         CasResult::Swapped { version } => println!("now at version {version}"),
//!         CasResult::Mismatch { current_version } => println!("raced: {current_version:?}"),
//!     }
//!     client.delete("greeting")?;
//!     assert!(client.get("greeting")?.is_none());
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use ringkv_wire::{
    Command, Consistency, Expected, Failure, Operation, Outcome, Reply, ScanEnd, ScanEntry, ScanPage,
    ScanStart, Topology,
};

use crate::command::{self, Outgoing};
use crate::connection::Connection;
use crate::error::Error;
use crate::failover;
use crate::options::{Backoff, ClientOptions};
use crate::refresh::RefreshSchedule;
use crate::reply::{self, CasResult, Versioned};
use crate::routing::{Route, Router};

/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A blocking, token- and shard-aware ringkv client. Not shared between threads: give each
/// thread its own (connections are cheap; the server keeps one per client per shard).
///
/// In a cluster each key goes to the owning shard of its first replica that is up; when that
/// node cannot be reached the request goes to the next replica (a read also when the node
/// stops answering; a write only if it was never sent). At most one connection is kept per
/// node shard used, and per node client port asked for the topology.
pub struct Client {
    router: Router,
    refresh: RefreshSchedule,
    options: ClientOptions,
    links: HashMap<SocketAddr, Link>,
}

/// One open socket and its protocol state.
struct Link {
    address: SocketAddr,
    stream: TcpStream,
    /// The TLS session over `stream`, when the client speaks TLS.
    tls: Option<Box<rustls::ClientConnection>>,
    connection: Connection,
}

impl Client {
    /// Connects to a node's client port with the default options and fetches its topology.
    pub fn connect(address: impl ToSocketAddrs + fmt::Debug) -> Result<Client, Error> {
        Client::connect_with(address, ClientOptions::default())
    }

    /// Connects with `options` and fetches the topology, so that later requests go straight to
    /// their owning shard.
    pub fn connect_with(
        address: impl ToSocketAddrs + fmt::Debug,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let seed = crate::resolve(&address)?;
        let mut client = Client {
            router: Router::with_unreachable_node_hold(seed, options.unreachable_node_hold)
                .with_replica_choice(options.replica_choice),
            refresh: RefreshSchedule::new(options.topology_refresh_interval),
            options,
            links: HashMap::new(),
        };
        client.refresh_topology()?;
        Ok(client)
    }

    /// The calls made through the returned handle ask `level` of the replicas: how many must
    /// answer each read or acknowledge each write. For example
    /// `client.with_consistency(Consistency::All).get("key")`.
    pub fn with_consistency(&mut self, level: Consistency) -> WithConsistency<'_> {
        WithConsistency { client: self, consistency: Some(level) }
    }

    /// The client's own calls, at [`ClientOptions::consistency`].
    fn at_default(&mut self) -> WithConsistency<'_> {
        let consistency = self.options.consistency;
        WithConsistency { client: self, consistency }
    }

    /// The value of `key` and its version, or `None` when the key has no live value.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        self.at_default().get(key)
    }

    /// Stores `value` under `key`; returns the write's version.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        self.at_default().put(key, value)
    }

    /// Stores `value` under `key` until `ttl` has passed; returns the write's version.
    pub fn put_with_ttl(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<u64, Error> {
        self.at_default().put_with_ttl(key, value, ttl)
    }

    /// Removes `key`; returns the deletion's version.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<u64, Error> {
        self.at_default().delete(key)
    }

    /// Writes `value` only if the key's state matches `expected`.
    pub fn compare_and_swap(
        &mut self,
        key: impl AsRef<[u8]>,
        expected: Expected,
        value: impl AsRef<[u8]>,
    ) -> Result<CasResult, Error> {
        self.at_default().compare_and_swap(key, expected, value)
    }

    /// One page of the live keys from `start` to `end` in token order (by the keys' tokens,
    /// then their bytes; see [`ScanStart`] and [`ScanEnd`]): at most `limit` entries (1 to
    /// [`crate::SCAN_LIMIT_MAX`]), fewer when the page reaches the server's byte cap. When
    /// [`ScanPage::next_start`] is set, more may follow: scan again from
    /// [`ScanStart::After`] it, or let [`Client::scan_all`] do the paging. The request goes to
    /// the shared port; the server asks the shards owning the range.
    pub fn scan(&mut self, start: ScanStart, end: ScanEnd, limit: u32) -> Result<ScanPage, Error> {
        reply::into_scan(self.execute(&command::scan(start, end, limit), None)?)
    }

    /// Every live key from `start` to `end`, in token order, fetched `page_limit` entries per
    /// request as the iterator is consumed. An error ends the iteration after it is yielded.
    /// Keys written or deleted meanwhile may or may not appear (each page is read at its own
    /// time), but no key present throughout is skipped or repeated.
    pub fn scan_all(&mut self, start: ScanStart, end: ScanEnd, page_limit: u32) -> ScanAll<'_> {
        ScanAll { client: self, next_start: Some(start), end, page_limit, page: Vec::new().into_iter() }
    }

    /// Independent operations in one request, answered in order; each can fail on its own.
    /// Not a transaction. The batch goes to the shared port of the node the topology came from,
    /// and the server forwards each operation to its owning shard; for shard-aware bulk work
    /// use [`Client::pipeline`].
    pub fn batch(&mut self, operations: Vec<Operation>) -> Result<Vec<Result<Outcome, Failure>>, Error> {
        self.at_default().batch(operations)
    }

    /// Checks that the node answers.
    pub fn ping(&mut self) -> Result<(), Error> {
        reply::into_pong(self.execute(&Command::Ping, None)?)
    }

    /// Fetches the topology and routes by it from now on: from the node it last came from,
    /// or when that one cannot be reached, from another node it listed, or the address given
    /// to `connect`.
    pub fn refresh_topology(&mut self) -> Result<Topology, Error> {
        let now = Instant::now();
        let contacts = self.router.contacts(now);
        let (last, others) = contacts.split_last().expect("the seed is always a contact");
        for contact in others {
            match self.fetch_topology(contact, Backoff::once()) {
                Ok(topology) => return Ok(topology),
                Err(error) => self.on_route_failed(contact, &error),
            }
        }
        let reconnect = self.options.reconnect;
        self.fetch_topology(last, reconnect).inspect_err(|error| self.on_route_failed(last, error))
    }

    fn fetch_topology(&mut self, contact: &Route, reconnect: Backoff) -> Result<Topology, Error> {
        let topology =
            reply::into_topology(self.call(contact.address, &Command::Topology, None, reconnect)?)?;
        self.router.set_topology(topology.clone(), contact.address);
        self.refresh.on_fetched(Instant::now());
        // Connections no route leads to any more (a node that left) are closed.
        let router = &self.router;
        self.links.retain(|address, _| router.routes_to(*address));
        Ok(topology)
    }

    /// Fetches the topology first when it is due: old, or suspected out of date. A failed
    /// fetch leaves the topology as it was; the request goes on with it.
    fn refresh_if_due(&mut self) {
        if self.refresh.begin(Instant::now()) {
            let _ = self.refresh_topology();
            self.refresh.end();
        }
    }

    /// The topology requests are routed by (fetched on connect), if any.
    pub fn topology(&self) -> Option<&Topology> {
        self.router.topology()
    }

    /// The node this client prefers to coordinate the keys it replicates (see
    /// [`crate::ReplicaChoice`]), once a topology is known.
    pub fn preferred_node(&self) -> Option<u16> {
        self.router.preferred_node()
    }

    /// Where a request for `key` goes first: the owning shard of the replica chosen for it
    /// (see [`crate::ReplicaChoice`]) that is up and not found unreachable lately, of its
    /// node's owning shard, or the shared port.
    pub fn route(&self, key: impl AsRef<[u8]>) -> Route {
        self.router.routes(Some(key.as_ref()), Instant::now())[0]
    }

    /// The addresses this client holds a connection to: the client port it fetched the
    /// topology from, and each shard port a request went to.
    pub fn connected_addresses(&self) -> Vec<SocketAddr> {
        let mut addresses: Vec<SocketAddr> = self.links.keys().copied().collect();
        addresses.sort();
        addresses
    }

    /// Sends every operation to its owning shard without waiting, then collects the replies:
    /// one result per operation, in order. At most `in_flight_max` requests wait on one
    /// connection; beyond that, replies are read before more is sent.
    ///
    /// An operation that breaks a limit gets its [`Error::Limit`] and the others still run. A
    /// connection failure fails every operation still waiting on that connection.
    pub fn pipeline(&mut self, operations: Vec<Operation>) -> Vec<Result<Outcome, Error>> {
        self.at_default().pipeline(operations)
    }

    fn pipeline_at(
        &mut self,
        operations: Vec<Operation>,
        consistency: Option<Consistency>,
    ) -> Vec<Result<Outcome, Error>> {
        self.refresh_if_due();
        let mut results: Vec<Option<Result<Outcome, Error>>> = (0..operations.len()).map(|_| None).collect();
        // (address, request id) → position in `operations`.
        let mut waiting: HashMap<(SocketAddr, u64), usize> = HashMap::new();
        let now = Instant::now();
        for (index, operation) in operations.into_iter().enumerate() {
            let address = self.router.routes(Some(operation.key()), now)[0].address;
            let sent = self.pipeline_send(address, operation, consistency, index, &mut waiting, &mut results);
            if let Err(error) = sent {
                results[index] = Some(Err(error));
            }
        }
        let addresses: Vec<SocketAddr> = self.links.keys().copied().collect();
        for address in addresses {
            self.flush_and_drain(address, 0, &mut waiting, &mut results);
        }
        results
            .into_iter()
            .map(|result| result.expect("every operation is answered, refused or failed with its connection"))
            .collect()
    }

    fn pipeline_send(
        &mut self,
        address: SocketAddr,
        operation: Operation,
        consistency: Option<Consistency>,
        index: usize,
        waiting: &mut HashMap<(SocketAddr, u64), usize>,
        results: &mut [Option<Result<Outcome, Error>>],
    ) -> Result<(), Error> {
        let reconnect = self.options.reconnect;
        let in_flight_max = self.link(address, reconnect)?.connection.in_flight_max();
        // Keep one slot free for this operation: read replies until there is room.
        self.flush_and_drain(address, in_flight_max - 1, waiting, results);
        let link = self.link(address, reconnect)?;
        let id = link.connection.send_at(&Command::Single(operation), consistency)?;
        waiting.insert((address, id), index);
        Ok(())
    }

    /// Writes what is queued for `address`, then reads replies until at most `keep` requests
    /// wait there, filing each reply under its operation's position.
    fn flush_and_drain(
        &mut self,
        address: SocketAddr,
        keep: usize,
        waiting: &mut HashMap<(SocketAddr, u64), usize>,
        results: &mut [Option<Result<Outcome, Error>>],
    ) {
        let Some(link) = self.links.get_mut(&address) else { return };
        let outcome = link.flush().and_then(|()| {
            while link.connection.in_flight() > keep {
                let (id, reply) = link.receive(self.options.request_timeout)?;
                if let Some(index) = waiting.remove(&(address, id)) {
                    results[index] = Some(reply::into_outcome(reply));
                }
            }
            Ok(())
        });
        if let Err(error) = outcome {
            // The connection is gone (or timed out): every request still waiting on it fails.
            self.links.remove(&address);
            let lost: Vec<(SocketAddr, u64)> =
                waiting.keys().filter(|(waiting_address, _)| *waiting_address == address).copied().collect();
            for key in lost {
                let index = waiting.remove(&key).expect("listed just above");
                results[index] = Some(Err(copy_error(&error, address)));
            }
        }
    }

    /// Sends `command` along its routes (see [`Router::routes`]) until one answers or the
    /// failure may not be retried elsewhere (see [`failover`]), and returns the reply. Every
    /// route but the last gets one connection attempt; the last gets the reconnect back-off.
    /// On a wrong-shard answer the topology is fetched again and the request resent once.
    fn execute<'a>(
        &mut self,
        command: impl Into<Outgoing<'a>>,
        consistency: Option<Consistency>,
    ) -> Result<Reply, Error> {
        let command = command.into();
        self.refresh_if_due();
        let idempotent = command.is_idempotent();
        let routes = self.router.routes(command.routing_key(), Instant::now());
        let (last, others) = routes.split_last().expect("Router::routes gives at least one route");
        for route in others {
            match self.call(route.address, command, consistency, Backoff::once()) {
                Err(error) if failover::may_try_another(&error, idempotent) => {
                    self.on_route_failed(route, &error);
                }
                result => return self.answered(route, result, command, consistency),
            }
        }
        let reconnect = self.options.reconnect;
        let result = self.call(last.address, command, consistency, reconnect);
        self.answered(last, result, command, consistency)
    }

    /// The outcome of `command` on `route`, after what it says about the topology is noted.
    fn answered(
        &mut self,
        route: &Route,
        result: Result<Reply, Error>,
        command: Outgoing<'_>,
        consistency: Option<Consistency>,
    ) -> Result<Reply, Error> {
        let reply = result.inspect_err(|error| self.on_route_failed(route, error))?;
        if failover::is_unavailable(&reply) {
            self.refresh.mark_stale();
        }
        if !reply::is_wrong_shard(&reply) {
            return Ok(reply);
        }
        self.refresh_topology()?;
        let route = self.router.routes(command.routing_key(), Instant::now())[0];
        let reconnect = self.options.reconnect;
        self.call(route.address, command, consistency, reconnect)
    }

    /// Notes a failed route: a node that cannot be reached is routed around for a while, and
    /// the topology is fetched again before the next request.
    fn on_route_failed(&mut self, route: &Route, error: &Error) {
        if failover::is_unreachable(error) {
            if let Some(node_id) = route.node_id {
                self.router.mark_unreachable(node_id, Instant::now());
            }
            self.refresh.mark_stale();
        }
    }

    /// One request to `address`, waiting for its reply; connecting first if needed, with
    /// `reconnect`.
    fn call<'a>(
        &mut self,
        address: SocketAddr,
        command: impl Into<Outgoing<'a>>,
        consistency: Option<Consistency>,
        reconnect: Backoff,
    ) -> Result<Reply, Error> {
        let timeout = self.options.request_timeout;
        let link = self.link(address, reconnect)?;
        let id = link.connection.send_outgoing(command.into(), consistency)?;
        let result = link.flush().and_then(|()| loop {
            let (reply_id, reply) = link.receive(timeout)?;
            if reply_id == id {
                return Ok(reply);
            }
        });
        match result {
            Err(Error::Timeout { timeout }) => {
                // The connection stays usable: the late reply will be recognised and dropped.
                link.connection.abandon(id);
                Err(Error::Timeout { timeout })
            }
            Err(error) => {
                self.links.remove(&address);
                Err(error)
            }
            Ok(reply) => Ok(reply),
        }
    }

    /// The open link to `address`, reconnecting (with the bounded back-off `reconnect`) when
    /// there is none or the server closed it since the last request.
    fn link(&mut self, address: SocketAddr, reconnect: Backoff) -> Result<&mut Link, Error> {
        if self.links.get(&address).is_some_and(|link| !link.is_usable()) {
            self.links.remove(&address);
        }
        if !self.links.contains_key(&address) {
            let link = Link::open(address, &self.options, reconnect)?;
            self.links.insert(address, link);
        }
        Ok(self.links.get_mut(&address).expect("inserted above"))
    }
}

/// A [`Client`] asking one consistency level of the replicas; see [`Client::with_consistency`].
/// Each method is the client's method of the same name.
pub struct WithConsistency<'client> {
    client: &'client mut Client,
    consistency: Option<Consistency>,
}

impl WithConsistency<'_> {
    /// See [`Client::get`].
    pub fn get(self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        reply::into_get(self.client.execute(command::get(key.as_ref()), self.consistency)?)
    }

    /// See [`Client::put`].
    pub fn put(self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        let command = command::put(key.as_ref(), value.as_ref(), None);
        reply::into_written("put", self.client.execute(command, self.consistency)?)
    }

    /// See [`Client::put_with_ttl`].
    pub fn put_with_ttl(
        self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<u64, Error> {
        let command = command::put(key.as_ref(), value.as_ref(), Some(ttl));
        reply::into_written("put", self.client.execute(command, self.consistency)?)
    }

    /// See [`Client::delete`].
    pub fn delete(self, key: impl AsRef<[u8]>) -> Result<u64, Error> {
        reply::into_written("delete", self.client.execute(command::delete(key.as_ref()), self.consistency)?)
    }

    /// See [`Client::compare_and_swap`].
    pub fn compare_and_swap(
        self,
        key: impl AsRef<[u8]>,
        expected: Expected,
        value: impl AsRef<[u8]>,
    ) -> Result<CasResult, Error> {
        let command = command::compare_and_swap(key.as_ref(), expected, value.as_ref());
        reply::into_cas(self.client.execute(&command, self.consistency)?)
    }

    /// See [`Client::batch`]: the level applies to each operation.
    pub fn batch(self, operations: Vec<Operation>) -> Result<Vec<Result<Outcome, Failure>>, Error> {
        reply::into_batch(self.client.execute(&Command::Batch(operations), self.consistency)?)
    }

    /// See [`Client::pipeline`].
    pub fn pipeline(self, operations: Vec<Operation>) -> Vec<Result<Outcome, Error>> {
        self.client.pipeline_at(operations, self.consistency)
    }
}

/// The entries of a range, page by page; see [`Client::scan_all`].
pub struct ScanAll<'client> {
    client: &'client mut Client,
    /// Where the next page starts; `None` once the range is finished or an error was yielded.
    next_start: Option<ScanStart>,
    end: ScanEnd,
    page_limit: u32,
    /// The current page's entries not yet yielded.
    page: std::vec::IntoIter<ScanEntry>,
}

impl Iterator for ScanAll<'_> {
    type Item = Result<ScanEntry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok(entry));
            }
            let start = self.next_start.take()?;
            match self.client.scan(start, self.end.clone(), self.page_limit) {
                Ok(page) => {
                    self.next_start = page.next_start.map(ScanStart::After);
                    self.page = page.entries.into_iter();
                }
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

impl Link {
    fn open(address: SocketAddr, options: &ClientOptions, reconnect: Backoff) -> Result<Link, Error> {
        let mut last_error = None;
        for attempt in reconnect.attempts() {
            std::thread::sleep(reconnect.delay_before(attempt));
            let opened =
                TcpStream::connect_timeout(&address, options.connect_timeout).and_then(|mut stream| {
                    // Requests are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    let tls = match &options.tls {
                        None => None,
                        Some(tls) => {
                            // A server that never answers the handshake must not hold us for ever.
                            stream.set_read_timeout(Some(options.connect_timeout))?;
                            let session =
                                tls.handshake_blocking(&mut stream, address).map_err(crate::tls::explain)?;
                            Some(Box::new(session))
                        }
                    };
                    Ok(Link { address, stream, tls, connection: Connection::for_options(options) })
                });
            match opened {
                Ok(link) => return Ok(link),
                // A certificate the client does not trust will not become trusted by retrying.
                Err(error) if error.kind() == ErrorKind::InvalidData => {
                    return Err(Error::Connect { address, attempts: attempt + 1, source: error })
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

    /// False when the server has closed an idle connection (it restarted, or dropped us): a
    /// request written into it would be lost, so the caller reconnects first.
    fn is_usable(&self) -> bool {
        if self.connection.in_flight() > 0 {
            return true;
        }
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut probe = [0u8; 1];
        let usable = match self.stream.peek(&mut probe) {
            Ok(0) => false,
            // A late reply to an abandoned request; it will be read and dropped.
            Ok(_) => true,
            Err(error) => error.kind() == ErrorKind::WouldBlock,
        };
        usable && self.stream.set_nonblocking(false).is_ok()
    }

    fn flush(&mut self) -> Result<(), Error> {
        if let Some(bytes) = self.connection.take_output() {
            let written = match &mut self.tls {
                None => self.stream.write_all(&bytes),
                Some(tls) => {
                    let mut stream = rustls::Stream::new(tls.as_mut(), &mut self.stream);
                    stream.write_all(&bytes).and_then(|()| stream.flush())
                }
            };
            written.map_err(|error| self.lost(error.to_string()))?;
        }
        Ok(())
    }

    /// The next reply for a request someone waits for, within `timeout`.
    fn receive(&mut self, timeout: Duration) -> Result<(u64, Reply), Error> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            if let Some(reply) = self.connection.poll_reply()? {
                return Ok(reply);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout { timeout });
            }
            self.stream.set_read_timeout(Some(remaining)).map_err(|error| self.lost(error.to_string()))?;
            let read = match &mut self.tls {
                None => self.stream.read(&mut chunk),
                Some(tls) => rustls::Stream::new(tls.as_mut(), &mut self.stream).read(&mut chunk),
            };
            match read {
                Ok(0) => return Err(self.lost("closed by the server".into())),
                Ok(read) => self.connection.on_received(&chunk[..read]),
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Error::Timeout { timeout })
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(self.lost(error.to_string())),
            }
        }
    }

    fn lost(&self, reason: String) -> Error {
        Error::ConnectionLost { address: self.address, reason }
    }
}

/// The same failure again, for every operation it ended; [`Error`] holds an `io::Error` and so
/// cannot be `Clone`. Only errors a connection can end with reach here.
fn copy_error(error: &Error, address: SocketAddr) -> Error {
    match error {
        Error::Timeout { timeout } => Error::Timeout { timeout: *timeout },
        Error::ConnectionLost { address, reason } => {
            Error::ConnectionLost { address: *address, reason: reason.clone() }
        }
        Error::Server(failure) => Error::Server(failure.clone()),
        Error::Protocol(error) => Error::Protocol(error.clone()),
        Error::Limit(error) => Error::Limit(error.clone()),
        other => Error::ConnectionLost { address, reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::mpsc;

    use flatbuffers::FlatBufferBuilder;
    use ringkv_wire::{encode_response, parse_request, FrameDecoder, Response};

    use super::*;

    /// A node that takes one connection, answers topology requests with a topology that routes
    /// nothing (so every request comes to it) and each operation with a plausible outcome, and
    /// reports each request's command and consistency.
    fn fake_node() -> (SocketAddr, mpsc::Receiver<(Command, Option<Consistency>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (requests, received) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut decoder = FrameDecoder::new();
            let mut builder = FlatBufferBuilder::new();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(frame) = decoder.next_frame().unwrap() {
                    let request = parse_request(&frame).unwrap();
                    let outcome = |operation: &Operation| match operation {
                        Operation::Get { .. } => Outcome::NotFound,
                        _ => Outcome::Written { version: 1 },
                    };
                    let reply = match &request.command {
                        Command::Topology => Reply::Topology(Topology::default()),
                        Command::Single(operation) => Reply::Single(outcome(operation)),
                        Command::Batch(operations) => {
                            Reply::Batch(operations.iter().map(|operation| Ok(outcome(operation))).collect())
                        }
                        Command::Ping | Command::Scan(_) => Reply::Pong,
                        Command::Auth(_) => Reply::Authenticated,
                    };
                    let response = Response { id: request.id, reply };
                    stream.write_all(encode_response(&mut builder, &response).unwrap()).unwrap();
                    requests.send((request.command, request.consistency)).unwrap();
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(read) => decoder.extend_from_slice(&chunk[..read]),
                }
            }
        });
        (address, received)
    }

    #[test]
    fn each_request_carries_the_clients_or_the_calls_consistency() {
        let (address, received) = fake_node();
        let options = ClientOptions { consistency: Some(Consistency::Quorum), ..ClientOptions::default() };
        let mut client = Client::connect_with(address, options).unwrap();
        assert_eq!(client.get("k").unwrap(), None);
        client.with_consistency(Consistency::All).put("k", "v").unwrap();
        client.with_consistency(Consistency::One).delete("k").unwrap();
        client.with_consistency(Consistency::One).batch(vec![Operation::Get { key: "k".into() }]).unwrap();
        let pipelined =
            client.with_consistency(Consistency::All).pipeline(vec![Operation::Get { key: "k".into() }]);
        assert!(matches!(pipelined[..], [Ok(Outcome::NotFound)]), "{pipelined:?}");
        client.ping().unwrap();
        drop(client);
        let levels: Vec<Option<Consistency>> = received.iter().map(|(_, consistency)| consistency).collect();
        use Consistency::{All, One, Quorum};
        assert_eq!(levels, [None, Some(Quorum), Some(All), Some(One), Some(One), Some(All), None]);
    }
}
