//! [`RespConnection`]: one Redis-protocol client connection on one shard: reads requests, runs
//! them concurrently, and writes the replies in request order, in batches.
//!
//! ```text
//!  socket ─read─▶ RequestParser ─▶ parse_command ─┬─ session command ─────────────▶ replies
//!                                                 ├─ error (arity, syntax, limit) ─▶ replies
//!                                                 ├─ GET served from memory ──────▶ replies
//!                                                 ├─ SET: Router::coordinate, or a task
//!                                                 └─ task: commands::run ─ reply ─▶ replies
//!  replies (in request order) ─writer task: everything ready, one write─▶ socket
//! ```
//!
//! Redis clients match replies to requests by order, so unlike the native protocol every reply
//! takes its request's place: a reply that is ready early waits in [`Replies`] until the ones
//! before it are written. The writer takes every reply ready at once, so a pipelining client
//! costs one write per batch.
//!
//! Commands of one connection run concurrently, as native requests do, but a command never
//! overtakes an earlier one it could observe: a command waits for every earlier command of the
//! connection still running when they share a key and are not both reads or both plain writes,
//! or when either reads the whole keyspace (SCAN, DBSIZE). Plain writes of one key may run
//! together while each was versioned as the reader started it: applied in place, they are
//! versioned in the order they arrive, so the last one sent wins, as in Redis. A plain write
//! that runs in a task (SET with a moment, MSET, a key another shard owns, a write waiting for
//! memtable room) is versioned only when the task gets that far, so until it finishes it holds
//! its keys as a read-then-write does: a later write of them waits for it.
//!
//! Bounds, per connection: `in_flight_max` commands running (the reader waits for one to finish
//! rather than refuse, since Redis clients do not retry), `outbox_bytes_max` bytes of replies not
//! yet written (above it the connection stops reading), and the parser's bounds on a request. A
//! request that is not RESP gets Redis's protocol error; then the connection stops reading,
//! finishes what is running, writes the replies and closes.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_lite::future::yield_now;
use futures_lite::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;

use crate::tls::{self, Stream, TlsSettings};
use ringkv_wire::resp::SimpleRequest;
use ringkv_wire::token::token;
use ringkv_wire::{Credentials, Failure, Operation, OperationRef, DEFAULT_USER};
use tracing::debug;

use crate::auth::Gate;
use crate::connection::linger;
use crate::connection::{read_or_give_up, ReadOutcome, READ_AHEAD};
use crate::local_event::LocalEvent;
use crate::metrics::{self, ShardMetrics};
use crate::request_memory::{read_into, ReadWindow, RequestMemory};
use crate::resp::command_table::{self, COMMANDS};
use crate::resp::commands::{
    self, failure_reply, CommandKeys, Condition, DataCommand, Expiry, RespCommand, SessionCommand,
};
use crate::resp::parser::RequestParser;
use crate::resp::reply::{encode_bulk, encode_null, Protocol, RespReply};
use crate::resp::RespShard;
use crate::router::{BatchClock, CommitClock, Router, WriteInPlace};
use crate::stop_signal::StopSignal;
use crate::timeouts::{Expired, ReadTimeouts};
use crate::ConnectionLimits;
use ringkv_storage::{KeyHash, Prefetch, Unsettled};

/// Most bytes read from the socket per call, and the receive buffer's first size.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// A Redis-protocol connection being served.
pub struct RespConnection {
    stream: TcpStream,
    router: Rc<Router>,
    stop: Rc<StopSignal>,
    limits: ConnectionLimits,
    session: Session,
    memory: Rc<RequestMemory>,
    tls: Option<TlsSettings>,
}

/// What the connection knows about its client.
struct Session {
    shard: Rc<RespShard>,
    /// Whether the client has authenticated (or needs not).
    gate: Gate,
    protocol: Protocol,
    id: u64,
    name: Option<Bytes>,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
}

/// How a command uses its keys, to decide which commands of a connection may run together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    /// A write that does not depend on the key's current state.
    Write,
    /// Reads the key and writes depending on what it found, or reads and writes in two steps.
    ReadWrite,
}

impl Access {
    fn of(command: &DataCommand) -> Access {
        match command {
            DataCommand::Get(_)
            | DataCommand::MultiGet(_)
            | DataCommand::Exists(_)
            | DataCommand::Ttl(..)
            | DataCommand::GetEx { expiry: None, .. }
            | DataCommand::Scan { .. }
            | DataCommand::DbSize
            | DataCommand::InfoWithKeyspace(_) => Access::Read,
            // SET KEEPTTL reads the expiry it keeps.
            DataCommand::Set { condition: Condition::Always, get: false, expiry, .. }
                if *expiry != Expiry::Keep =>
            {
                Access::Write
            }
            DataCommand::MultiSet(_) => Access::Write,
            _ => Access::ReadWrite,
        }
    }
}

/// Commands running on one key: how many of each access.
#[derive(Default, Clone, Copy)]
struct KeyUse {
    reads: usize,
    writes: usize,
    read_writes: usize,
}

impl KeyUse {
    fn admits(&self, access: Access) -> bool {
        match access {
            Access::Read => self.writes == 0 && self.read_writes == 0,
            Access::Write => self.reads == 0 && self.read_writes == 0,
            Access::ReadWrite => self.reads == 0 && self.writes == 0 && self.read_writes == 0,
        }
    }

    fn count(&mut self, access: Access) -> &mut usize {
        match access {
            Access::Read => &mut self.reads,
            Access::Write => &mut self.writes,
            Access::ReadWrite => &mut self.read_writes,
        }
    }
}

/// One reply's place in request order.
enum Slot {
    Waiting,
    Ready(RespReply, Protocol),
}

/// Replies in request order, and what the writer needs to know to finish.
struct Replies {
    /// Encoded replies ready for the socket.
    bytes: BytesMut,
    /// Replies not yet encoded because an earlier one is not ready; the front is request
    /// `first_sequence`.
    pending: VecDeque<Slot>,
    first_sequence: u64,
    in_flight: usize,
    /// Keys of running commands, by token (see [`CommandKeys`]); commands reading the whole
    /// keyspace count in `keyspace`. Looked up several times per command, so by a number
    /// hashed with ahash, not by the key's bytes hashed with SipHash. Only this connection's
    /// own commands in flight are here (at most `in_flight_max`), so keys chosen to collide
    /// would slow down only the connection that sent them.
    keys: HashMap<u64, KeyUse, ahash::RandomState>,
    keyspace: usize,
    reading_done: bool,
    write_failed: bool,
}

/// A SET applied in place ([`Router::write_now`]), its reply waiting for the engine to
/// acknowledge it.
struct Commit {
    sequence: u64,
    keys: Option<CommandKeys>,
    access: Access,
    write: WriteInPlace,
    protocol: Protocol,
}

/// State the reader, the command tasks, the acknowledging task and the writer share.
struct Shared {
    replies: RefCell<Replies>,
    /// Writes applied in place, oldest first, for [`acknowledge_writes`].
    commits: RefCell<VecDeque<Commit>>,
    /// A write was queued in `commits`, or reading is done.
    commit_queued: LocalEvent,
    /// The writer has something to do: replies, or the end.
    ready: LocalEvent,
    /// The writer has written a batch, or failed: reading may resume.
    drained: LocalEvent,
    /// A command finished: a reader waiting for room or for an earlier command may go on.
    completed: LocalEvent,
}

/// Why the reader stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The client closed its side, sent QUIT, or the socket failed.
    Finished,
    /// The shard is stopping; the client may still be sending.
    Stopped,
    /// A protocol error; the client may still be sending.
    Refused,
    /// A command did not finish arriving in time, or the connection sat idle too long.
    TimedOut(Expired),
}

impl Shared {
    fn new() -> Self {
        Shared {
            replies: RefCell::new(Replies {
                bytes: BytesMut::with_capacity(READ_CHUNK_BYTES),
                pending: VecDeque::new(),
                first_sequence: 0,
                in_flight: 0,
                keys: HashMap::with_hasher(ahash::RandomState::new()),
                keyspace: 0,
                reading_done: false,
                write_failed: false,
            }),
            commits: RefCell::new(VecDeque::new()),
            commit_queued: LocalEvent::new(),
            ready: LocalEvent::new(),
            drained: LocalEvent::new(),
            completed: LocalEvent::new(),
        }
    }

    /// A reply to the request being read now.
    fn push(&self, reply: &RespReply, protocol: Protocol) {
        {
            let mut replies = self.replies.borrow_mut();
            if replies.pending.is_empty() {
                reply.encode(protocol, &mut replies.bytes);
            } else {
                replies.pending.push_back(Slot::Ready(reply.clone(), protocol));
            }
        }
        self.ready.notify();
    }

    /// The reply to a read answered in place, encoded straight from the borrowed value when no
    /// earlier reply is waiting. When what it found is not durable yet (`unsettled`), the reply
    /// is handed back instead, to wait for it.
    fn push_read(
        &self,
        found: Result<Option<ringkv_wire::LentValue<'_>>, ringkv_wire::Failure>,
        unsettled: Option<Unsettled>,
        protocol: Protocol,
    ) -> Option<(RespReply, Unsettled)> {
        let found = match found {
            Ok(found) => found.map(|found| found.value),
            Err(failure) => {
                self.push(&failure_reply(&failure), protocol);
                return None;
            }
        };
        if let Some(unsettled) = unsettled {
            let reply = found.map_or(RespReply::Null, |value| RespReply::Bulk(Bytes::copy_from_slice(value)));
            return Some((reply, unsettled));
        }
        {
            let mut replies = self.replies.borrow_mut();
            if replies.pending.is_empty() {
                match found {
                    Some(value) => encode_bulk(&mut replies.bytes, value),
                    None => encode_null(protocol, &mut replies.bytes),
                }
            } else {
                let reply =
                    found.map_or(RespReply::Null, |value| RespReply::Bulk(Bytes::copy_from_slice(value)));
                replies.pending.push_back(Slot::Ready(reply, protocol));
            }
        }
        self.ready.notify();
        None
    }

    /// Whether a command with `keys` (`None`: the whole keyspace) and `access` may start now.
    fn admits(&self, keys: Option<&[u64]>, access: Access) -> bool {
        let replies = self.replies.borrow();
        if replies.keyspace > 0 && access != Access::Read {
            return false;
        }
        match keys {
            None => replies.keys.values().all(|running| running.admits(access)),
            Some(keys) => {
                keys.iter().all(|key| replies.keys.get(key).is_none_or(|running| running.admits(access)))
            }
        }
    }

    /// Starts a command: a place for its reply, its keys counted. Returns its sequence number.
    fn begin(&self, keys: Option<&[u64]>, access: Access) -> u64 {
        let mut replies = self.replies.borrow_mut();
        match keys {
            None => replies.keyspace += 1,
            Some(keys) => {
                for key in keys {
                    *replies.keys.entry(*key).or_default().count(access) += 1;
                }
            }
        }
        replies.in_flight += 1;
        replies.pending.push_back(Slot::Waiting);
        replies.first_sequence + replies.pending.len() as u64 - 1
    }

    /// A command's reply: into its place, and every reply now ready in order into the bytes.
    fn complete(
        &self,
        sequence: u64,
        keys: Option<CommandKeys>,
        access: Access,
        reply: RespReply,
        protocol: Protocol,
    ) {
        {
            let mut replies = self.replies.borrow_mut();
            let Replies { bytes, pending, first_sequence, in_flight, keys: running, keyspace, .. } =
                &mut *replies;
            match keys {
                None => *keyspace -= 1,
                Some(keys) => {
                    for key in keys {
                        if let Some(counts) = running.get_mut(&key) {
                            *counts.count(access) -= 1;
                            if counts.reads + counts.writes + counts.read_writes == 0 {
                                running.remove(&key);
                            }
                        }
                    }
                }
            }
            *in_flight -= 1;
            pending[(sequence - *first_sequence) as usize] = Slot::Ready(reply, protocol);
            while let Some(Slot::Ready(..)) = pending.front() {
                let Some(Slot::Ready(reply, protocol)) = pending.pop_front() else { unreachable!() };
                reply.encode(protocol, bytes);
                *first_sequence += 1;
            }
        }
        self.completed.notify();
        self.ready.notify();
    }

    fn in_flight(&self) -> usize {
        self.replies.borrow().in_flight
    }

    /// Commands running: the connection is not idle.
    fn busy(&self) -> bool {
        self.in_flight() > 0
    }

    fn finish_reading(&self) {
        self.replies.borrow_mut().reading_done = true;
        self.ready.notify();
        self.commit_queued.notify();
    }

    /// Recounts the keys of a command begun as a plain write ([`Access::Write`]) that runs in a
    /// task: as a read-then-write ([`Access::ReadWrite`]), so that no later command of its
    /// keys starts before it finishes. Its version is taken only when the task gets to it
    /// (after any wait for memtable room, or on the owning shard), so a later write started
    /// meanwhile could otherwise be versioned first and be overwritten by it.
    fn hold_keys(&self, keys: Option<&[u64]>) {
        let mut replies = self.replies.borrow_mut();
        for key in keys.into_iter().flatten() {
            if let Some(running) = replies.keys.get_mut(key) {
                running.writes -= 1;
                running.read_writes += 1;
            }
        }
    }

    /// A write applied in place, answered once acknowledged (see [`acknowledge_writes`]).
    fn queue_commit(&self, commit: Commit) {
        self.commits.borrow_mut().push_back(commit);
        self.commit_queued.notify();
    }

    /// Waits until `condition` holds, re-checking after each finished command. False when the
    /// shard is stopping first.
    async fn wait_for(&self, stop: &StopSignal, condition: impl Fn(&Shared) -> bool) -> bool {
        if condition(self) {
            return true;
        }
        loop {
            let listener = self.completed.listen();
            if condition(self) {
                return true;
            }
            if stop.unless_stopped(listener).await.is_none() {
                return false;
            }
        }
    }

    /// Waits until the unwritten replies are below `outbox_bytes_max`. False when the writer
    /// failed or the shard is stopping: stop reading.
    async fn wait_for_room(&self, outbox_bytes_max: usize, stop: &StopSignal) -> bool {
        let room = |shared: &Shared| {
            let replies = shared.replies.borrow();
            if replies.write_failed {
                Some(false)
            } else if replies.bytes.len() < outbox_bytes_max {
                Some(true)
            } else {
                None
            }
        };
        // Checked before listening too: there is room nearly always.
        if let Some(answer) = room(self) {
            return answer;
        }
        loop {
            let listener = self.drained.listen();
            if let Some(answer) = room(self) {
                return answer;
            }
            if stop.unless_stopped(listener).await.is_none() {
                return false;
            }
        }
    }
}

impl RespConnection {
    /// A connection to serve with `router`, stopping to read when `stop` is triggered.
    pub fn new(
        stream: TcpStream,
        router: Rc<Router>,
        stop: Rc<StopSignal>,
        limits: ConnectionLimits,
        shard: Rc<RespShard>,
        memory: Rc<RequestMemory>,
        tls: Option<TlsSettings>,
    ) -> Self {
        // Replies are already batched by the writer; Nagle's delay would only add latency.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "could not disable Nagle's algorithm");
        }
        let peer = stream.peer_addr().ok();
        let session = Session {
            id: shard.next_client_id(),
            gate: Gate::new(&shard.auth).with_peer(peer),
            shard,
            protocol: Protocol::Resp2,
            name: None,
            peer,
            local: stream.local_addr().ok(),
        };
        RespConnection { stream, router, stop, limits, session, memory, tls }
    }

    /// The client's address, when the socket still knows it.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.session.peer
    }

    /// Serves the connection until the client closes it or sends QUIT, breaks the protocol, or
    /// the shard stops; then finishes the commands running, writes their replies and closes.
    pub async fn serve(self) {
        let RespConnection { stream, router, stop, limits, mut session, memory, tls } = self;
        let Some(stream) = tls::client_stream(stream, tls.as_ref(), limits.frame_timeout, &stop).await else {
            return;
        };
        let (mut reader, writer) = futures_lite::io::split(stream);
        let shared = Rc::new(Shared::new());
        let writer_task =
            glommio::spawn_local(write_replies(writer, shared.clone(), router.metrics().clone()));
        let acknowledging = glommio::spawn_local(acknowledge_writes(shared.clone(), router.clone()));
        let end = read_requests(&mut reader, &shared, &router, &stop, limits, &mut session, &memory).await;
        shared.finish_reading();
        acknowledging.await;
        writer_task.await;
        if end != ReadEnd::Finished {
            linger(&mut reader).await;
        }
        debug!(?end, "connection closed");
    }
}

/// Reads and dispatches requests until the connection should stop reading.
async fn read_requests(
    reader: &mut ReadHalf<Stream>,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    stop: &StopSignal,
    limits: ConnectionLimits,
    session: &mut Session,
    memory: &Rc<RequestMemory>,
) -> ReadEnd {
    let mut parser = RequestParser::default();
    // Covers the receive buffer's allocation (commands cut from it are not counted once cut).
    let mut charge = memory.empty();
    let mut window = ReadWindow::new(READ_CHUNK_BYTES);
    let mut timeouts = ReadTimeouts::new(limits.frame_timeout, limits.idle_timeout);
    let mut held = HeldRun::new();
    loop {
        if !shared.wait_for_room(limits.outbox_bytes_max, stop).await {
            return if stop.is_triggered() { ReadEnd::Stopped } else { ReadEnd::Finished };
        }
        let buffer = parser.buffer_mut();
        let read = read_or_give_up(
            read_into(reader, buffer, &mut charge, &mut window, None),
            stop,
            &timeouts,
            || shared.busy(),
        )
        .await;
        match read {
            ReadOutcome::Stopped => return ReadEnd::Stopped,
            ReadOutcome::Expired(expired) => {
                expired.count();
                return ReadEnd::TimedOut(expired);
            }
            ReadOutcome::Read(Ok(0)) => {
                if let Err(error) = parser.check_end_of_stream() {
                    debug!(%error, "stream ended inside a request");
                }
                return ReadEnd::Finished;
            }
            ReadOutcome::Read(Ok(read)) => {
                router.metrics().connections(metrics::Protocol::Resp).bytes_in.add(read as u64);
            }
            ReadOutcome::Read(Err(error)) => {
                debug!(%error, "reading from the client failed");
                return ReadEnd::Finished;
            }
        }
        let mut took_requests = false;
        // The commands of this read share one clock reading, read again after a wait.
        let mut clock = BatchClock::new(router.metrics());
        loop {
            // GETs and plain SETs are read in place and held back in a run; anything else
            // answers the run first, so replies keep their order.
            if session.gate.is_open() {
                if let Some((request, end)) = parser.simple_at(held.end) {
                    took_requests = true;
                    session.shard.commands_processed.set(session.shard.commands_processed.get() + 1);
                    held.push(request, end, parser.buffered(), router);
                    if held.is_full()
                        && !held
                            .answer(&mut parser, shared, router, stop, limits, session.protocol, &mut clock)
                            .await
                    {
                        return ReadEnd::Stopped;
                    }
                    continue;
                }
            }
            if !held.answer(&mut parser, shared, router, stop, limits, session.protocol, &mut clock).await {
                return ReadEnd::Stopped;
            }
            match parser.next_request() {
                Ok(None) => break,
                Ok(Some(arguments)) => {
                    took_requests = true;
                    session.shard.commands_processed.set(session.shard.commands_processed.get() + 1);
                    match commands::parse_command(&arguments) {
                        Err(reply) => shared.push(&reply, session.protocol),
                        Ok(command) if !session.gate.is_open() && !allowed_before_auth(&command) => {
                            shared.push(&RespReply::Error(NOAUTH.to_string()), session.protocol)
                        }
                        Ok(RespCommand::Session(SessionCommand::Quit)) => {
                            shared.push(&RespReply::Ok, session.protocol);
                            return ReadEnd::Finished;
                        }
                        Ok(RespCommand::Session(command)) => match answer_session(command, session, router) {
                            Ok(reply) => shared.push(&reply, session.protocol),
                            Err(data) => {
                                if !dispatch(data, shared, router, stop, limits, session.protocol, &mut clock)
                                    .await
                                {
                                    return ReadEnd::Stopped;
                                }
                            }
                        },
                        Ok(RespCommand::Data(command)) => {
                            if !dispatch(command, shared, router, stop, limits, session.protocol, &mut clock)
                                .await
                            {
                                return ReadEnd::Stopped;
                            }
                        }
                    }
                }
                Err(error) => {
                    debug!(%error, "request refused");
                    shared.push(&RespReply::error(&error), session.protocol);
                    return ReadEnd::Refused;
                }
            }
        }
        // The batch is answered: its in-place reads' latency ends here.
        drop(clock);
        timeouts.after_read(parser.buffered_bytes(), took_requests);
        // Let the writer and the command tasks run before reading again (see the native
        // connection: a read that finds data does not yield).
        yield_now().await;
    }
}

/// A run of GETs and plain SETs a socket read brought, read in place from the parser's buffer
/// (nothing cut from it) and held back so that the cache misses of their memtable lookups
/// overlap, as the native connection's `ReadAhead` does: the lines each will touch are
/// prefetched in stages a few commands apart as they are parsed ([`Router::prefetch_joined`]),
/// and only then are they answered, in order. Any other command answers the run first.
struct HeldRun {
    held: Vec<Held>,
    /// Where the run ends in the parser's buffer: the next command starts there.
    end: usize,
}

/// A command of a [`HeldRun`]: where its arguments lie in the parser's buffer, and its key's
/// [`Router::read_ahead`] hash when this shard answers it in place.
enum Held {
    Get { key: Range<usize>, hash: Option<KeyHash> },
    Set { key: Range<usize>, value: Range<usize>, hash: Option<KeyHash> },
}

impl Held {
    /// The hash to prefetch `stage` of this command's memtable probe with. A write reads the
    /// slot it replaces (its key and version) but not the value it holds.
    fn prefetch(&self, stage: Prefetch) -> Option<KeyHash> {
        match self {
            Held::Get { hash, .. } => *hash,
            Held::Set { hash, .. } => hash.filter(|_| stage != Prefetch::Value),
        }
    }
}

/// The parser's buffer as a [`HeldRun`] is answered: the run's positions are from before any
/// cut, and `cut` bytes of it are cut out already.
struct RunBytes<'a> {
    parser: &'a mut RequestParser,
    cut: usize,
}

impl RunBytes<'_> {
    /// The bytes at `range`, a position in the run.
    fn lent(&self, range: &Range<usize>) -> &[u8] {
        &self.parser.buffered()[range.start - self.cut..range.end - self.cut]
    }

    /// `ranges` as shared bytes of their own, for a command that outlives the next read. Cuts
    /// the buffer through the last of them (the commands before are answered).
    fn owned<const N: usize>(&mut self, ranges: [&Range<usize>; N]) -> [Bytes; N] {
        let end = ranges.iter().map(|range| range.end).max().unwrap_or(self.cut);
        let (bytes, base) = (self.parser.cut(end - self.cut), self.cut);
        self.cut = end;
        ranges.map(|range| bytes.slice(range.start - base..range.end - base))
    }
}

impl HeldRun {
    fn new() -> Self {
        HeldRun { held: Vec::with_capacity(READ_AHEAD), end: 0 }
    }

    /// Holds back `request`, read in place from `buffer` and ending at `end`, prefetching what
    /// the held commands are due.
    fn push(&mut self, request: SimpleRequest, end: usize, buffer: &[u8], router: &Router) {
        let held = match request {
            SimpleRequest::Get { key } => Held::Get { hash: router.read_ahead(&buffer[key.clone()]), key },
            SimpleRequest::Set { key, value } => {
                Held::Set { hash: router.write_ahead(&buffer[key.clone()]), key, value }
            }
        };
        self.held.push(held);
        self.end = end;
        router.prefetch_joined(&self.held, Held::prefetch);
    }

    fn is_full(&self) -> bool {
        self.held.len() >= READ_AHEAD
    }

    /// Prefetches the rest of the held commands' lines, then answers them in order and drops
    /// the run from `parser`'s buffer. False when the shard stopped meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &mut self,
        parser: &mut RequestParser,
        shared: &Rc<Shared>,
        router: &Rc<Router>,
        stop: &StopSignal,
        limits: ConnectionLimits,
        protocol: Protocol,
        clock: &mut BatchClock<'_>,
    ) -> bool {
        if self.held.is_empty() {
            return true;
        }
        router.prefetch_rest(&self.held, Held::prefetch);
        let mut bytes = RunBytes { parser, cut: 0 };
        let mut answered = true;
        for held in self.held.drain(..) {
            answered = match held {
                Held::Get { key, hash } => {
                    if read_lent(bytes.lent(&key), hash, shared, router, limits, protocol, clock) {
                        continue;
                    }
                    let [key] = bytes.owned([&key]);
                    dispatch(DataCommand::Get(key), shared, router, stop, limits, protocol, clock).await
                }
                Held::Set { key, value, hash } => {
                    set_lent(&mut bytes, key, value, hash, shared, router, stop, limits, protocol, clock)
                        .await
                }
            };
            if !answered {
                break;
            }
        }
        self.held.clear();
        bytes.parser.consume(self.end - bytes.cut);
        self.end = 0;
        answered
    }
}

/// Answers a GET of `key` (lent from the receive buffer, `hash` its read-ahead) on the spot, as
/// [`dispatch`] would without waiting: when memory holds the answer and no earlier command of
/// the connection may not be overtaken. False: dispatch it.
fn read_lent(
    key: &[u8],
    hash: Option<KeyHash>,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    limits: ConnectionLimits,
    protocol: Protocol,
    clock: &mut BatchClock<'_>,
) -> bool {
    let in_flight = shared.in_flight();
    // With nothing running, nothing can be overtaken: no bookkeeping on the hottest path.
    let may_start = in_flight == 0
        || (in_flight < limits.in_flight_max && {
            let token = hash.map_or_else(|| token(key), |hash| hash.token);
            shared.admits(Some(&[token]), Access::Read)
        });
    may_start && read_now(key, hash, shared, router, protocol, clock)
}

/// Starts a SET of `key` to `value` without options, both lent from the run's bytes, as
/// [`dispatch`] does; the key and value are cut out only when the write must outlive the read
/// (coordinated across replicas, or run in a task). False when the shard stopped meanwhile.
#[allow(clippy::too_many_arguments)]
async fn set_lent(
    bytes: &mut RunBytes<'_>,
    key: Range<usize>,
    value: Range<usize>,
    hash: Option<KeyHash>,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    stop: &StopSignal,
    limits: ConnectionLimits,
    protocol: Protocol,
    clock: &mut BatchClock<'_>,
) -> bool {
    let keys: CommandKeys =
        smallvec::smallvec![hash.map_or_else(|| token(bytes.lent(&key)), |hash| hash.token)];
    if !admitted(Some(&keys), Access::Write, shared, stop, limits, clock).await {
        return false;
    }
    let sequence = shared.begin(Some(&keys), Access::Write);
    let coordinated = router.coordinates_here(bytes.lent(&key));
    let outcome = if coordinated {
        None
    } else {
        let operation = OperationRef::Put { key: bytes.lent(&key), value: bytes.lent(&value), ttl_ms: None };
        router.write_now(operation, hash, clock)
    };
    let started = started_in_place(outcome, sequence, Some(keys), Access::Write, shared, protocol);
    let Err(keys) = started else {
        return true;
    };
    let [key, value] = bytes.owned([&key, &value]);
    if coordinated {
        let operation = Operation::Put { key, value, ttl_ms: None };
        coordinate_set(operation, sequence, keys, Access::Write, shared, router, protocol);
    } else {
        let command = DataCommand::Set {
            key,
            value,
            expiry: Expiry::Never,
            condition: Condition::Always,
            get: false,
            reply_integer: false,
        };
        spawn_command(command, sequence, keys, Access::Write, shared, router, protocol);
    }
    true
}

/// Answers a GET of `key` on the spot when nothing earlier is still running and memory holds
/// the answer (`hash`: the key's, when it was read ahead). False: it must be dispatched.
fn read_in_place(
    key: &[u8],
    hash: Option<KeyHash>,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    protocol: Protocol,
    clock: &mut BatchClock<'_>,
) -> bool {
    shared.in_flight() == 0 && read_now(key, hash, shared, router, protocol, clock)
}

/// Answers a GET of `key` from memory when memory holds the answer; false otherwise. When what
/// it found is not durable yet (another connection's write waiting for its group commit), its
/// reply takes its place in order and is filled in once that commit is durable: a crash could
/// otherwise take back a value the client was shown.
fn read_now(
    key: &[u8],
    hash: Option<KeyHash>,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    protocol: Protocol,
    clock: &mut BatchClock<'_>,
) -> bool {
    let Some(held) =
        router.read_now(key, hash, clock, |found, unsettled| shared.push_read(found, unsettled, protocol))
    else {
        return false;
    };
    if let Some((reply, unsettled)) = held {
        let started = clock.hold_last();
        let keys: CommandKeys = smallvec::smallvec![token(key)];
        let sequence = shared.begin(Some(&keys), Access::Read);
        let (shared, router) = (shared.clone(), router.clone());
        // Only reads of keys written moments ago wait (about one in eight under YCSB A's
        // zipfian keys); such a read waits in a task of its own, as any command that waits does.
        drop(
            glommio::spawn_local(async move {
                let mut clock = CommitClock::new();
                let reply = match router.settled(unsettled, &mut clock).await {
                    Ok(()) => reply,
                    Err(failure) => failure_reply(&failure),
                };
                router.held_read_released(started, &mut clock);
                shared.complete(sequence, Some(keys), Access::Read, reply, protocol);
            })
            .detach(),
        );
    }
    true
}

/// Starts a data command: answered on the spot when memory holds a read, otherwise in the
/// background. Waits first for any earlier command it must not overtake, and for room under
/// `in_flight_max`. False when the shard stopped meanwhile.
async fn dispatch(
    command: DataCommand,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    stop: &StopSignal,
    limits: ConnectionLimits,
    protocol: Protocol,
    clock: &mut BatchClock<'_>,
) -> bool {
    // The hottest path: with nothing running, a read that memory holds needs no bookkeeping.
    if let DataCommand::Get(key) = &command {
        if read_in_place(key, None, shared, router, protocol, clock) {
            return true;
        }
    }
    let access = Access::of(&command);
    let keys = command.keys();
    if !admitted(keys.as_deref(), access, shared, stop, limits, clock).await {
        return false;
    }
    if let DataCommand::Get(key) = &command {
        if read_now(key, None, shared, router, protocol, clock) {
            return true;
        }
    }
    let sequence = shared.begin(keys.as_deref(), access);
    let mut keys = keys;
    if let DataCommand::Set {
        key,
        value,
        expiry,
        condition: Condition::Always,
        get: false,
        reply_integer: false,
    } = &command
    {
        let ttl_ms = match expiry {
            Expiry::Never => Some(None),
            Expiry::In(ttl_ms) => Some(Some(*ttl_ms)),
            Expiry::At(_) | Expiry::Keep => None,
        };
        if let Some(ttl_ms) = ttl_ms {
            if router.coordinates_here(key) {
                let operation = Operation::Put { key: key.clone(), value: value.clone(), ttl_ms };
                coordinate_set(operation, sequence, keys, access, shared, router, protocol);
                return true;
            }
            let operation = OperationRef::Put { key, value, ttl_ms };
            match started_in_place(
                router.write_now(operation, None, clock),
                sequence,
                keys,
                access,
                shared,
                protocol,
            ) {
                Ok(()) => return true,
                Err(returned) => keys = returned,
            }
        }
    }
    spawn_command(command, sequence, keys, access, shared, router, protocol);
    true
}

/// Waits until a command of `keys` (`None`: the whole keyspace) with `access` may start: no
/// earlier command of the connection it must not overtake is running, and there is room under
/// `in_flight_max`. False when the shard stopped meanwhile.
async fn admitted(
    keys: Option<&[u64]>,
    access: Access,
    shared: &Shared,
    stop: &StopSignal,
    limits: ConnectionLimits,
    clock: &mut BatchClock<'_>,
) -> bool {
    let admitted = |shared: &Shared| shared.in_flight() < limits.in_flight_max && shared.admits(keys, access);
    if admitted(shared) {
        return true;
    }
    // The reads answered so far are done: their latency must not include this wait.
    clock.reset();
    shared.wait_for(stop, admitted).await
}

/// Takes a write begun as `sequence` that [`Router::write_now`] started (`outcome`): applied in
/// place, it is answered by the acknowledging task once its group commit is durable (as in the
/// native connection), no task per write; refused, it is answered now. Every write of the key
/// still running was versioned when it started (it was admitted), so this one is versioned
/// after them. `Err` hands the keys back when the write was not started: run it in a task.
fn started_in_place(
    outcome: Option<Result<WriteInPlace, Failure>>,
    sequence: u64,
    keys: Option<CommandKeys>,
    access: Access,
    shared: &Shared,
    protocol: Protocol,
) -> Result<(), Option<CommandKeys>> {
    match outcome {
        Some(Ok(write)) => shared.queue_commit(Commit { sequence, keys, access, write, protocol }),
        Some(Err(failure)) => shared.complete(sequence, keys, access, failure_reply(&failure), protocol),
        None => return Err(keys),
    }
    Ok(())
}

/// Coordinates a SET begun as `sequence` across the key's replicas from this shard: the reply
/// slot waits, not a task (as in the native connection).
fn coordinate_set(
    operation: Operation,
    sequence: u64,
    keys: Option<CommandKeys>,
    access: Access,
    shared: &Rc<Shared>,
    router: &Router,
    protocol: Protocol,
) {
    let shared = shared.clone();
    router.coordinate(operation, None, move |result| {
        let reply = match result {
            Ok(_) => RespReply::Ok,
            Err(failure) => failure_reply(&failure),
        };
        shared.complete(sequence, keys, access, reply, protocol);
    });
}

/// Runs a command begun as `sequence` in a task of its own. A plain write holds its keys
/// meanwhile (see [`Shared::hold_keys`]).
fn spawn_command(
    command: DataCommand,
    sequence: u64,
    keys: Option<CommandKeys>,
    access: Access,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    protocol: Protocol,
) {
    let access = if access == Access::Write {
        shared.hold_keys(keys.as_deref());
        Access::ReadWrite
    } else {
        access
    };
    let router = router.clone();
    let shared = shared.clone();
    // Not instrumented with the connection's span, like native request tasks: entering a span
    // on every poll costs more than a cached read.
    glommio::spawn_local(async move {
        let reply = commands::run(router, command).await;
        shared.complete(sequence, keys, access, reply, protocol);
    })
    .detach();
}

/// Answers the SETs applied in place, in the order they were applied, each once the engine has
/// acknowledged it; ends when reading is done and the queue is empty. Group commit still
/// gathers the connection's writes: while this task waits for the oldest, the reader keeps
/// applying, and one commit covers them all.
async fn acknowledge_writes(shared: Rc<Shared>, router: Rc<Router>) {
    let mut clock = CommitClock::new();
    loop {
        // The listener lives in this future (no allocation per write).
        let listener = shared.commit_queued.listen();
        let oldest = shared.commits.borrow_mut().pop_front();
        match oldest {
            Some(Commit { sequence, keys, access, write, protocol }) => {
                let reply = match router.acknowledged_outcome(write, &mut clock).await {
                    Ok(_) => RespReply::Ok,
                    Err(failure) => failure_reply(&failure),
                };
                shared.complete(sequence, keys, access, reply, protocol);
            }
            None if shared.replies.borrow().reading_done => return,
            None => {
                clock.forget();
                listener.await;
            }
        }
    }
}

/// Redis's answer to a command sent before authenticating.
const NOAUTH: &str = "NOAUTH Authentication required.";

/// Redis's answer to `HELLO` without `AUTH` before authenticating.
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                            HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
                            select the RESP protocol version at the same time";

/// Redis's answer to a wrong user or password.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Redis's answer to `AUTH` when no password is configured.
const AUTH_WITHOUT_USERS: &str =
    "ERR AUTH <password> called without any password configured for the default \
                                  user. Are you sure your configuration is correct?";

/// Whether `command` may run before the connection has authenticated: AUTH, HELLO (which
/// answers NOAUTH itself unless it carries AUTH) and QUIT, as in Redis.
fn allowed_before_auth(command: &RespCommand) -> bool {
    matches!(
        command,
        RespCommand::Session(
            SessionCommand::Auth { .. } | SessionCommand::Hello { .. } | SessionCommand::Quit
        )
    )
}

/// Checks `user` (the default user when `None`) and `password`, opening the session's gate on
/// success; a failure is logged and counted.
fn authenticate(session: &mut Session, router: &Router, user: Option<&Bytes>, password: &Bytes) -> bool {
    let user =
        user.map_or_else(|| DEFAULT_USER.to_owned(), |user| String::from_utf8_lossy(user).into_owned());
    let credentials = Credentials { user, password: password.clone() };
    session.gate.authenticate(&session.shard.auth, &credentials, metrics::Protocol::Resp, router.metrics())
}

/// Answers a command about the connection or the server from the session; `Err` with the data
/// command to run when the answer needs the store (INFO with the keyspace section).
fn answer_session(
    command: SessionCommand,
    session: &mut Session,
    router: &Router,
) -> Result<RespReply, DataCommand> {
    Ok(match command {
        SessionCommand::Ping(None) => RespReply::Simple("PONG"),
        SessionCommand::Ping(Some(message)) | SessionCommand::Echo(message) => RespReply::Bulk(message),
        SessionCommand::Auth { user, password } => {
            if !session.shard.auth.required() {
                return Ok(RespReply::Error(AUTH_WITHOUT_USERS.to_string()));
            }
            if authenticate(session, router, user.as_ref(), &password) {
                RespReply::Ok
            } else {
                RespReply::Error(WRONGPASS.to_string())
            }
        }
        SessionCommand::Hello { protocol, name, auth } => {
            match &auth {
                Some((user, password)) if !authenticate(session, router, Some(user), password) => {
                    return Ok(RespReply::Error(WRONGPASS.to_string()));
                }
                Some(_) => {}
                None if !session.gate.is_open() => return Ok(RespReply::Error(HELLO_NOAUTH.to_string())),
                None => {}
            }
            match protocol {
                None => {}
                Some(2) => session.protocol = Protocol::Resp2,
                Some(3) => session.protocol = Protocol::Resp3,
                Some(_) => return Ok(RespReply::Error("NOPROTO unsupported protocol version".to_string())),
            }
            if name.is_some() {
                session.name = name;
            }
            let proto = match session.protocol {
                Protocol::Resp2 => 2,
                Protocol::Resp3 => 3,
            };
            RespReply::Map(vec![
                (RespReply::text("server"), RespReply::text("ringkv")),
                (RespReply::text("version"), RespReply::text(env!("CARGO_PKG_VERSION"))),
                (RespReply::text("proto"), RespReply::Integer(proto)),
                (RespReply::text("id"), RespReply::Integer(session.id as i64)),
                (RespReply::text("mode"), RespReply::text("standalone")),
                (RespReply::text("role"), RespReply::text("master")),
                (RespReply::text("modules"), RespReply::Array(Vec::new())),
            ])
        }
        SessionCommand::Quit => RespReply::Ok,
        SessionCommand::Select => RespReply::Ok,
        SessionCommand::CommandCount => RespReply::Integer(COMMANDS.len() as i64),
        SessionCommand::CommandInfo(names) => RespReply::Array(
            names
                .iter()
                .map(|name| command_table::find(name).map_or(RespReply::Null, |spec| spec.info()))
                .collect(),
        ),
        SessionCommand::CommandDocs(names) => {
            let specs: Vec<_> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|name| command_table::find(name)).collect()
            };
            RespReply::Map(specs.into_iter().map(|spec| (RespReply::text(spec.name), spec.docs())).collect())
        }
        SessionCommand::ClientSetName(name) => {
            session.name = (!name.is_empty()).then_some(name);
            RespReply::Ok
        }
        SessionCommand::ClientGetName => session.name.clone().map_or(RespReply::Null, RespReply::Bulk),
        SessionCommand::ClientId => RespReply::Integer(session.id as i64),
        SessionCommand::ClientInfo => RespReply::text(client_info(session)),
        SessionCommand::ClientSetInfo => RespReply::Ok,
        SessionCommand::Info(sections) => {
            let wanted = |section: &str| {
                sections.is_empty()
                    || sections.iter().any(|asked| {
                        asked == section || asked == "all" || asked == "everything" || asked == "default"
                    })
            };
            let text = session.shard.info(&wanted);
            if wanted("keyspace") {
                return Err(DataCommand::InfoWithKeyspace(text));
            }
            RespReply::text(text)
        }
    })
}

/// `CLIENT INFO`'s line, in Redis's `field=value` form.
fn client_info(session: &Session) -> String {
    let address =
        |address: Option<SocketAddr>| address.map(|address| address.to_string()).unwrap_or_default();
    let name =
        session.name.as_ref().map(|name| String::from_utf8_lossy(name).into_owned()).unwrap_or_default();
    let protocol = match session.protocol {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    };
    format!(
        "id={} addr={} laddr={} name={} db=0 resp={} shard={}\n",
        session.id,
        address(session.peer),
        address(session.local),
        name,
        protocol,
        session.shard.shard_id,
    )
}

/// Writes whatever replies are ready, all at once, until reading is done and nothing is
/// running; then shuts the write side down.
async fn write_replies(mut writer: WriteHalf<Stream>, shared: Rc<Shared>, metrics: Arc<ShardMetrics>) {
    let mut batch = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // Takes the ready replies into `batch`; false when there is nothing left to do at all.
    let take = |batch: &mut BytesMut| {
        let mut replies = shared.replies.borrow_mut();
        if !replies.bytes.is_empty() {
            // Swap buffers: command tasks keep appending to the other one meanwhile.
            std::mem::swap(&mut replies.bytes, batch);
            true
        } else {
            !(replies.reading_done && replies.in_flight == 0)
        }
    };
    loop {
        // Listen only when there is nothing to write.
        if !take(&mut batch) {
            break;
        }
        if batch.is_empty() {
            let listener = shared.ready.listen();
            if !take(&mut batch) {
                break;
            }
            if batch.is_empty() {
                listener.await;
                continue;
            }
        }
        // The flush matters with TLS: rustls may hold part of the records until it.
        if let Err(error) = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        }
        .await
        {
            debug!(%error, "writing to the client failed");
            shared.replies.borrow_mut().write_failed = true;
            shared.drained.notify();
            return;
        }
        metrics.connections(metrics::Protocol::Resp).bytes_out.add(batch.len() as u64);
        batch.clear();
        shared.drained.notify();
    }
    if let Err(error) = writer.close().await {
        debug!(%error, "shutting down the write side failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_writes_of_a_key_run_together_unless_one_runs_in_a_task() {
        let shared = Shared::new();
        // Commands count their keys by token.
        let (k, other) = (token(b"k"), token(b"other"));
        let write =
            |shared: &Shared, key: &u64| shared.admits(Some(std::slice::from_ref(key)), Access::Write);
        let read = |shared: &Shared, key: &u64| shared.admits(Some(std::slice::from_ref(key)), Access::Read);

        // A plain write applied in place: versioned already, so another plain write of the key
        // may start (and is versioned after it); a read waits.
        let in_place = shared.begin(Some(std::slice::from_ref(&k)), Access::Write);
        assert!(write(&shared, &k));
        assert!(!read(&shared, &k));

        // A plain write that runs in a task holds its key until it finishes: no later write or
        // read of it starts, while other keys are free.
        let in_task = shared.begin(Some(std::slice::from_ref(&k)), Access::Write);
        shared.hold_keys(Some(std::slice::from_ref(&k)));
        assert!(!write(&shared, &k));
        assert!(!read(&shared, &k));
        assert!(write(&shared, &other) && read(&shared, &other));

        shared.complete(
            in_task,
            Some(smallvec::smallvec![k]),
            Access::ReadWrite,
            RespReply::Ok,
            Protocol::Resp2,
        );
        assert!(write(&shared, &k), "the task finished: plain writes of the key start again");
        assert!(!read(&shared, &k), "the write applied in place is still running");
        shared.complete(
            in_place,
            Some(smallvec::smallvec![k]),
            Access::Write,
            RespReply::Ok,
            Protocol::Resp2,
        );
        assert!(write(&shared, &k) && read(&shared, &k));
        assert!(shared.replies.borrow().keys.is_empty(), "no key is counted once all finished");
    }
}
