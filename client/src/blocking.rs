//! The blocking adapter: [`Client`] over `std::net`, one socket per shard port.
//!
//! Each call sends one request and waits for its reply; [`Client::pipeline`] sends many
//! requests before reading their replies, which is how a blocking program keeps the server
//! busy.
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
    Command, Expected, Failure, Operation, Outcome, Reply, ScanEnd, ScanEntry, ScanPage, ScanStart, Topology,
};

use crate::command;
use crate::connection::Connection;
use crate::error::Error;
use crate::options::ClientOptions;
use crate::reply::{self, CasResult, Versioned};
use crate::routing::{Route, Router};

/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A blocking, shard-aware ringkv client. Not shared between threads: give each thread its
/// own (connections are cheap; the server keeps one per client per shard).
pub struct Client {
    router: Router,
    options: ClientOptions,
    links: HashMap<SocketAddr, Link>,
}

/// One open socket and its protocol state.
struct Link {
    address: SocketAddr,
    stream: TcpStream,
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
        let shared = crate::resolve(&address)?;
        let mut client = Client { router: Router::new(shared), options, links: HashMap::new() };
        client.refresh_topology()?;
        Ok(client)
    }

    /// The value of `key` and its version, or `None` when the key has no live value.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        reply::into_get(self.execute(command::get(key.as_ref()))?)
    }

    /// Stores `value` under `key`; returns the write's version.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        reply::into_written("put", self.execute(command::put(key.as_ref(), value.as_ref(), None))?)
    }

    /// Stores `value` under `key` until `ttl` has passed; returns the write's version.
    pub fn put_with_ttl(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<u64, Error> {
        reply::into_written("put", self.execute(command::put(key.as_ref(), value.as_ref(), Some(ttl)))?)
    }

    /// Removes `key`; returns the deletion's version.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<u64, Error> {
        reply::into_written("delete", self.execute(command::delete(key.as_ref()))?)
    }

    /// Writes `value` only if the key's state matches `expected`.
    pub fn compare_and_swap(
        &mut self,
        key: impl AsRef<[u8]>,
        expected: Expected,
        value: impl AsRef<[u8]>,
    ) -> Result<CasResult, Error> {
        reply::into_cas(self.execute(command::compare_and_swap(key.as_ref(), expected, value.as_ref()))?)
    }

    /// One page of the live keys from `start` to `end` in token order (by the keys' tokens,
    /// then their bytes; see [`ScanStart`] and [`ScanEnd`]): at most `limit` entries (1 to
    /// [`crate::SCAN_LIMIT_MAX`]), fewer when the page reaches the server's byte cap. When
    /// [`ScanPage::next_start`] is set, more may follow: scan again from
    /// [`ScanStart::After`] it, or let [`Client::scan_all`] do the paging. The request goes to
    /// the shared port; the server asks the shards owning the range.
    pub fn scan(&mut self, start: ScanStart, end: ScanEnd, limit: u32) -> Result<ScanPage, Error> {
        reply::into_scan(self.execute(command::scan(start, end, limit))?)
    }

    /// Every live key from `start` to `end`, in token order, fetched `page_limit` entries per
    /// request as the iterator is consumed. An error ends the iteration after it is yielded.
    /// Keys written or deleted meanwhile may or may not appear (each page is read at its own
    /// time), but no key present throughout is skipped or repeated.
    pub fn scan_all(&mut self, start: ScanStart, end: ScanEnd, page_limit: u32) -> ScanAll<'_> {
        ScanAll { client: self, next_start: Some(start), end, page_limit, page: Vec::new().into_iter() }
    }

    /// Independent operations in one request, answered in order; each can fail on its own.
    /// Not a transaction. The batch goes to the shared port and the server forwards each
    /// operation to its owning shard; for shard-aware bulk work use [`Client::pipeline`].
    pub fn batch(&mut self, operations: Vec<Operation>) -> Result<Vec<Result<Outcome, Failure>>, Error> {
        reply::into_batch(self.execute(Command::Batch(operations))?)
    }

    /// Checks that the node answers.
    pub fn ping(&mut self) -> Result<(), Error> {
        reply::into_pong(self.execute(Command::Ping)?)
    }

    /// Fetches the node's topology and routes by it from now on.
    pub fn refresh_topology(&mut self) -> Result<Topology, Error> {
        let shared = self.router.shared();
        let topology = reply::into_topology(self.call(shared, Command::Topology)?)?;
        self.router.set_topology(topology.clone());
        Ok(topology)
    }

    /// The topology requests are routed by (fetched on connect), if any.
    pub fn topology(&self) -> Option<&Topology> {
        self.router.topology()
    }

    /// Where a request for `key` goes: its owning shard's port, or the shared port.
    pub fn route(&self, key: impl AsRef<[u8]>) -> Route {
        self.router.route_key(key.as_ref())
    }

    /// The addresses this client holds a connection to: the shared port it fetched the
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
        let mut results: Vec<Option<Result<Outcome, Error>>> = (0..operations.len()).map(|_| None).collect();
        // (address, request id) → position in `operations`.
        let mut waiting: HashMap<(SocketAddr, u64), usize> = HashMap::new();
        for (index, operation) in operations.into_iter().enumerate() {
            let address = self.router.route_key(operation.key()).address;
            if let Err(error) = self.pipeline_send(address, operation, index, &mut waiting, &mut results) {
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
        index: usize,
        waiting: &mut HashMap<(SocketAddr, u64), usize>,
        results: &mut [Option<Result<Outcome, Error>>],
    ) -> Result<(), Error> {
        let in_flight_max = self.link(address)?.connection.in_flight_max();
        // Keep one slot free for this operation: read replies until there is room.
        self.flush_and_drain(address, in_flight_max - 1, waiting, results);
        let link = self.link(address)?;
        let id = link.connection.send(Command::Single(operation))?;
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

    /// Sends `command` to the owner of its key (or the shared port) and returns the reply. On
    /// a wrong-shard answer the topology is fetched again and the request resent once.
    fn execute(&mut self, command: Command) -> Result<Reply, Error> {
        let route = match command::routing_key(&command) {
            Some(key) => self.router.route_key(key),
            None => self.router.shared_route(),
        };
        let reply = self.call(route.address, command.clone())?;
        if !reply::is_wrong_shard(&reply) {
            return Ok(reply);
        }
        self.refresh_topology()?;
        let route = command::routing_key(&command)
            .map_or(self.router.shared_route(), |key| self.router.route_key(key));
        self.call(route.address, command)
    }

    /// One request to `address`, waiting for its reply.
    fn call(&mut self, address: SocketAddr, command: Command) -> Result<Reply, Error> {
        let timeout = self.options.request_timeout;
        let link = self.link(address)?;
        let id = link.connection.send(command)?;
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

    /// The open link to `address`, reconnecting (with bounded back-off) when there is none or
    /// the server closed it since the last request.
    fn link(&mut self, address: SocketAddr) -> Result<&mut Link, Error> {
        if self.links.get(&address).is_some_and(|link| !link.is_usable()) {
            self.links.remove(&address);
        }
        if !self.links.contains_key(&address) {
            let link = Link::open(address, &self.options)?;
            self.links.insert(address, link);
        }
        Ok(self.links.get_mut(&address).expect("inserted above"))
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
    fn open(address: SocketAddr, options: &ClientOptions) -> Result<Link, Error> {
        let mut last_error = None;
        for attempt in options.reconnect.attempts() {
            std::thread::sleep(options.reconnect.delay_before(attempt));
            match TcpStream::connect_timeout(&address, options.connect_timeout) {
                Ok(stream) => {
                    // Requests are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    return Ok(Link { address, stream, connection: Connection::new(options.in_flight_max) });
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
            self.stream.write_all(&bytes).map_err(|error| self.lost(error.to_string()))?;
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
            match self.stream.read(&mut chunk) {
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
