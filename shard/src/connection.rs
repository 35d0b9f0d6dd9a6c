//! [`Connection`]: one client connection on one shard: reads frames, runs requests
//! concurrently, and writes replies in batches.
//!
//! ```text
//!  socket ─read─▶ FrameDecoder ─▶ parse_request ─┬─ Ping / Topology ─────────────▶ outbox
//!                                                ├─ limit broken ─ error reply ──▶ outbox
//!                                                ├─ untrusted frame ─ id-0 error ▶ outbox, stop reading
//!                                                ├─ read served from memory ────▶ outbox
//!                                                ├─ read served from memory, held ─▶ commits (queue)
//!                                                ├─ write applied in place ─▶ commits (queue)
//!                                                └─ spawn: Router::answer ─ reply ▶ outbox
//!  commits ─committer task: each once durable, oldest first─▶ outbox
//!  outbox (encoded frames) ─writer task: everything ready, one write─▶ socket
//! ```
//!
//! Replies go out in completion order, not request order; clients match them by id. The writer
//! takes every reply that is ready at once and writes them with one call, so a pipelining client
//! costs one syscall per batch rather than per reply.
//!
//! A put or delete the shard can apply without waiting (see [`Router::write_now`]) is applied by
//! the reader and queued; one committer task per connection waits for each queued write's
//! acknowledgement (its group commit's fdatasync, by default) in the order they were applied,
//! and only then queues its reply. That costs no task per write; the rest run in a task each.
//!
//! A read answered from memory is told only what is durable: when the entry it found waits for
//! its group commit (a write applied in place, on any connection, not yet synced), its reply is
//! encoded at once but held in the commit queue until that commit is durable. A crash could
//! otherwise take back a value a client was shown. Other reads are answered at once, even
//! behind queued writes: holding them for the writes' commit, as Redis does, would keep a
//! pipeline's replies together but cost every read a sync's latency (under YCSB A it cut the
//! throughput by a quarter to a third on this machine, each pipeline's window then waiting
//! on commits).
//!
//! Bounds, per connection:
//! - the shard's request memory (see [`crate::request_memory`]): the receive buffer grows with
//!   the bytes received and each request's frame stays charged until it is answered; with the
//!   budget spent, the connection waits before reading.
//! - `in_flight_max` operations executing at once (a batch counts as its operations; a write
//!   waiting in the commit queue counts too); a request beyond that is answered "overloaded"
//!   straight away. A held read counts as in flight but is never refused: its reply is already
//!   encoded, and counts against the next bound.
//! - `outbox_bytes_max` bytes of encoded replies not yet written, held reads' included; above it
//!   the connection stops reading, so a client that sends without reading is held back by TCP
//!   flow control instead of growing the server's memory.
//!
//! When the node has users configured, a connection starts unauthenticated: its requests pass
//! an authentication [`Gate`] first, which answers everything but `Auth` and `Ping` with
//! `Unauthenticated` until an `Auth` succeeds, and closes the connection after a failed `Auth`.
//!
//! A frame that cannot be trusted (bad length prefix, failed verification, truncated at end of
//! stream) gets an error reply with id 0; then the connection stops reading, finishes the
//! requests already running, writes their replies, and closes. Every other connection is
//! untouched.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use flatbuffers::FlatBufferBuilder;
use futures_lite::future::{or, yield_now};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use ringkv_wire::{
    encode_read_reply_into, encode_response_into, Command, Consistency, ErrorCode, Failure, FrameDecoder,
    FramedRequest, Frames, LentValue, Operation, OperationRef, Reply, Request, Response, SingleRequest,
};
use std::future::Future;

use tracing::level_filters::LevelFilter;
use tracing::{debug, Instrument, Span};

use crate::auth::{Admission, ClientAuth, Gate};
use crate::local_event::LocalEvent;
use crate::metrics::{OverloadReason, Protocol, ShardMetrics};
use crate::request_memory::{read_into, Charge, ReadWindow, RequestMemory};
use crate::router::{BatchClock, CommitClock, Router, WriteInPlace};
use crate::stop_signal::StopSignal;
use crate::timeouts::{Expired, ReadTimeouts};
use crate::tls::{self, Stream, TlsSettings};
use ringkv_storage::{KeyHash, Prefetch, Unsettled};

/// Most bytes read from the socket per call, and the receive buffer's first size.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// After an untrusted frame, or when the shard stops, how much more the connection reads and
/// discards before closing.
/// Closing a socket with unread bytes makes the kernel send a reset, which can destroy the error
/// reply before the client reads it; draining a bounded amount first lets the reply arrive.
const LINGER_BYTES_MAX: usize = 4 << 20;

/// How long the connection lingers (see [`LINGER_BYTES_MAX`]) at most.
const LINGER_MS: u64 = 1000;

/// The bounds one connection works within.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Operations executing at once (a batch counts as its operations).
    pub in_flight_max: usize,
    /// Encoded replies waiting for the socket, in bytes, above which reading pauses.
    pub outbox_bytes_max: usize,
    /// How long a frame that has started may take to finish arriving.
    pub frame_timeout: Duration,
    /// How long a connection may stay idle before it is closed; `None`: for ever.
    pub idle_timeout: Option<Duration>,
}

/// A client connection being served.
pub struct Connection {
    stream: TcpStream,
    peer: Option<SocketAddr>,
    router: Rc<Router>,
    stop: Rc<StopSignal>,
    limits: ConnectionLimits,
    memory: Rc<RequestMemory>,
    auth: Rc<ClientAuth>,
    tls: Option<TlsSettings>,
}

/// Replies waiting for the socket, and what the writer needs to know to finish.
struct Outbox {
    bytes: BytesMut,
    builder: FlatBufferBuilder<'static>,
    in_flight: usize,
    reading_done: bool,
    write_failed: bool,
}

/// State the reader, the request tasks, the committer and the writer share.
struct Shared {
    outbox: RefCell<Outbox>,
    /// The writer has something to do: replies, or the end.
    ready: LocalEvent,
    /// The writer has written a batch, or failed: reading may resume.
    drained: LocalEvent,
    /// Writes applied in place and held reads, oldest first, waiting for their commit. Each
    /// counts as in flight; the queue keeps its room once grown.
    commits: RefCell<VecDeque<Queued>>,
    /// The encoded replies of the held reads in `commits`, in the same order.
    held: RefCell<BytesMut>,
    /// The committer has something to do: a queued write or read, or the end.
    commit_queued: LocalEvent,
}

/// What waits in the commit queue.
enum Queued {
    Write(Commit),
    Read(HeldRead),
}

/// A write applied in place, waiting in the commit queue for its acknowledgement.
struct Commit {
    id: u64,
    write: WriteInPlace,
    /// The request's frame, given back once the reply is queued.
    charge: Charge,
}

/// A read answered in place whose reply waits in the commit queue until what it found is
/// durable (and what was queued before it is answered).
struct HeldRead {
    id: u64,
    /// Its encoded reply's length, at the front of [`Shared::held`] when its turn comes.
    bytes: usize,
    /// The commit what it found waits for.
    unsettled: Unsettled,
    /// When its batch began to be answered (see [`BatchClock::hold_last`]).
    started: Instant,
}

/// What became of a read answered in place.
enum ReadAnswer {
    /// Its reply is in the outbox.
    Sent,
    /// Its reply is encoded at the end of [`Shared::held`], this long; queue it.
    Held { bytes: usize, unsettled: Unsettled },
}

/// Why the reader stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The client closed its side, or the socket failed.
    Finished,
    /// The shard is stopping; the client may still be sending.
    Stopped,
    /// An untrusted frame; the client may still be sending.
    Refused,
    /// A frame did not finish in time, or the connection sat idle too long.
    TimedOut(Expired),
}

/// What one attempt to read gave.
pub(crate) enum ReadOutcome {
    Read(std::io::Result<usize>),
    Stopped,
    Expired(Expired),
}

impl Shared {
    fn new() -> Self {
        Shared {
            outbox: RefCell::new(Outbox {
                bytes: BytesMut::with_capacity(READ_CHUNK_BYTES),
                builder: FlatBufferBuilder::with_capacity(1024),
                in_flight: 0,
                reading_done: false,
                write_failed: false,
            }),
            ready: LocalEvent::new(),
            drained: LocalEvent::new(),
            commits: RefCell::new(VecDeque::new()),
            held: RefCell::new(BytesMut::new()),
            commit_queued: LocalEvent::new(),
        }
    }

    /// Encodes `response` into the outbox and wakes the writer.
    fn push(&self, response: &Response) {
        {
            let mut outbox = self.outbox.borrow_mut();
            let Outbox { bytes, builder, .. } = &mut *outbox;
            if let Err(error) = encode_response_into(builder, response, bytes) {
                // A batch of large values can add up to more than one frame may carry.
                let refused = Response {
                    id: response.id,
                    reply: Reply::Failed(Failure::new(error.code(), format!("the response: {error}"))),
                };
                encode_response_into(builder, &refused, bytes)
                    .expect("a short error response fits in a frame");
            }
        }
        self.ready.notify();
    }

    /// Encodes the reply to a read answered in place (see [`Router::read_now`]) straight from
    /// the borrowed value, and wakes the writer.
    fn push_read(&self, id: u64, found: Result<Option<LentValue<'_>>, Failure>) {
        let found = match found {
            Ok(found) => found,
            Err(failure) => return self.push(&Response { id, reply: Reply::Failed(failure) }),
        };
        let encoded = {
            let mut outbox = self.outbox.borrow_mut();
            let Outbox { bytes, builder, .. } = &mut *outbox;
            encode_read_reply_into(builder, id, found, bytes)
        };
        match encoded {
            Ok(()) => {
                self.ready.notify();
            }
            Err(error) => {
                let failure = Failure::new(error.code(), format!("the response: {error}"));
                self.push(&Response { id, reply: Reply::Failed(failure) });
            }
        }
    }

    /// Answers a read found in place: into the outbox at once when what it found is durable,
    /// else encoded into [`Shared::held`] for the commit queue (and counted in flight until
    /// released).
    fn answer_read(
        &self,
        id: u64,
        found: Result<Option<LentValue<'_>>, Failure>,
        unsettled: Option<Unsettled>,
    ) -> ReadAnswer {
        let (Ok(found), Some(unsettled)) = (&found, unsettled) else {
            self.push_read(id, found);
            return ReadAnswer::Sent;
        };
        let found = *found;
        let encoded = {
            let mut outbox = self.outbox.borrow_mut();
            let mut held = self.held.borrow_mut();
            let before = held.len();
            encode_read_reply_into(&mut outbox.builder, id, found, &mut held).map(|()| held.len() - before)
        };
        match encoded {
            Ok(bytes) => {
                self.begin_request(1);
                ReadAnswer::Held { bytes, unsettled }
            }
            Err(error) => {
                let failure = Failure::new(error.code(), format!("the response: {error}"));
                self.push(&Response { id, reply: Reply::Failed(failure) });
                ReadAnswer::Sent
            }
        }
    }

    /// A held read's turn: its reply moves from [`Shared::held`] to the outbox, or, when what
    /// it found could not be made durable (`settled` failed), a failure goes instead.
    fn release_read(&self, read: &HeldRead, settled: Result<(), Failure>) {
        let failed = {
            let mut held = self.held.borrow_mut();
            let mut outbox = self.outbox.borrow_mut();
            outbox.in_flight -= 1;
            let failed = match settled {
                Ok(()) => {
                    outbox.bytes.extend_from_slice(&held[..read.bytes]);
                    None
                }
                Err(failure) => Some(failure),
            };
            held.advance(read.bytes);
            failed
        };
        match failed {
            None => {
                self.ready.notify();
            }
            Some(failure) => self.push(&Response { id: read.id, reply: Reply::Failed(failure) }),
        }
    }

    fn in_flight(&self) -> usize {
        self.outbox.borrow().in_flight
    }

    /// Requests running or replies waiting: the connection is not idle.
    fn busy(&self) -> bool {
        let outbox = self.outbox.borrow();
        outbox.in_flight > 0 || !outbox.bytes.is_empty()
    }

    /// `operations` more in flight.
    fn begin_request(&self, operations: usize) {
        self.outbox.borrow_mut().in_flight += operations;
    }

    /// A request task's reply: into the outbox, and its `operations` no longer in flight.
    fn complete_request(&self, operations: usize, response: &Response) {
        self.outbox.borrow_mut().in_flight -= operations;
        self.push(response);
    }

    /// A write applied in place or a held read, already counted in flight: its reply waits in
    /// the commit queue for its commit.
    fn queue_commit(&self, queued: Queued) {
        self.commits.borrow_mut().push_back(queued);
        self.commit_queued.notify();
    }

    fn finish_reading(&self) {
        self.outbox.borrow_mut().reading_done = true;
        self.ready.notify();
        self.commit_queued.notify();
    }

    /// Waits until the outbox is below `outbox_bytes_max`. False when the writer failed or the
    /// shard is stopping: stop reading.
    async fn wait_for_room(&self, outbox_bytes_max: usize, stop: &StopSignal) -> bool {
        loop {
            // The listener lives in this future (no allocation per read).
            let listener = self.drained.listen();
            {
                let outbox = self.outbox.borrow();
                if outbox.write_failed {
                    return false;
                }
                if outbox.bytes.len() + self.held.borrow().len() < outbox_bytes_max {
                    return true;
                }
            }
            if stop.unless_stopped(listener).await.is_none() {
                return false;
            }
        }
    }
}

impl Connection {
    /// A connection to serve with `router`, stopping to read when `stop` is triggered, its
    /// request bytes charged to `memory`, authenticated against `auth`.
    pub fn new(
        stream: TcpStream,
        router: Rc<Router>,
        stop: Rc<StopSignal>,
        limits: ConnectionLimits,
        memory: Rc<RequestMemory>,
        auth: Rc<ClientAuth>,
        tls: Option<TlsSettings>,
    ) -> Self {
        // Replies are already batched by the writer; Nagle's delay would only add latency.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "could not disable Nagle's algorithm");
        }
        let peer = stream.peer_addr().ok();
        Connection { stream, peer, router, stop, limits, memory, auth, tls }
    }

    /// The client's address, when the socket still knows it.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Serves the connection until the client closes it, it breaks the protocol, or the shard
    /// stops; then finishes the requests in flight, writes their replies and closes.
    pub async fn serve(self) {
        let Connection { stream, router, stop, limits, memory, auth, tls, peer } = self;
        // With TLS, the handshake comes first, bounded like a frame.
        let Some(stream) = tls::client_stream(stream, tls.as_ref(), limits.frame_timeout, &stop).await else {
            return;
        };
        let (mut reader, writer) = futures_lite::io::split(stream);
        let shared = Rc::new(Shared::new());
        let metrics = router.metrics().clone();
        let writer_task = glommio::spawn_local(
            write_replies(writer, shared.clone(), metrics).instrument(tracing::Span::current()),
        );
        let committer_task = glommio::spawn_local(acknowledge_writes(shared.clone(), router.clone()));
        let gate = Gate::new(&auth).with_peer(peer);
        let end = read_requests(&mut reader, &shared, &router, &stop, limits, &memory, &auth, gate).await;
        shared.finish_reading();
        // Every write applied is acknowledged before the connection ends: its commit may be
        // under way, and its client is owed the reply.
        committer_task.await;
        writer_task.await;
        if end != ReadEnd::Finished {
            linger(&mut reader).await;
        }
        debug!(?end, "connection closed");
    }
}

/// Spawns a client connection's task, counted open in `protocol`'s metrics while it serves;
/// `open` (the acceptor's hold on its connection count) is released when it ends. Only when
/// debug logs may be on is it polled inside its span (`span`): entering and leaving a span
/// costs the subscriber's bookkeeping on every poll, a few percent of a shard's time under
/// pipelined reads, for context only debug logs use. The connection's few logs above debug name
/// the client themselves.
pub(crate) fn spawn_connection<Open: 'static>(
    protocol: Protocol,
    metrics: Arc<ShardMetrics>,
    open: Open,
    serve: impl Future<Output = ()> + 'static,
    span: impl FnOnce() -> Span,
) {
    let task = async move {
        debug!("connection open");
        metrics.connections(protocol).open.add(1);
        serve.await;
        metrics.connections(protocol).open.sub(1);
        drop(open);
    };
    if LevelFilter::current() >= LevelFilter::DEBUG {
        glommio::spawn_local(task.instrument(span())).detach();
    } else {
        glommio::spawn_local(task).detach();
    }
}

/// A client's address for a span, empty when the socket no longer knew it.
pub(crate) struct DisplayPeer(pub Option<SocketAddr>);

impl std::fmt::Display for DisplayPeer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => peer.fmt(formatter),
            None => Ok(()),
        }
    }
}

/// Reads and dispatches requests until the connection should stop reading.
#[allow(clippy::too_many_arguments)]
async fn read_requests(
    reader: &mut ReadHalf<Stream>,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    stop: &StopSignal,
    limits: ConnectionLimits,
    memory: &Rc<RequestMemory>,
    auth: &ClientAuth,
    mut gate: Gate,
) -> ReadEnd {
    let mut decoder = FrameDecoder::new();
    // Covers the receive buffer's allocation; each frame cut from it takes its share along.
    let mut charge = memory.empty();
    let mut window = ReadWindow::new(READ_CHUNK_BYTES);
    let mut timeouts = ReadTimeouts::new(limits.frame_timeout, limits.idle_timeout);
    let mut ahead = ReadAhead::new();
    loop {
        if !shared.wait_for_room(limits.outbox_bytes_max, stop).await {
            return if stop.is_triggered() { ReadEnd::Stopped } else { ReadEnd::Finished };
        }
        let declared = decoder.declared_frame_bytes();
        let buffer = decoder.buffer_mut();
        let read = read_or_give_up(
            read_into(reader, buffer, &mut charge, &mut window, declared),
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
                if let Err(error) = decoder.check_end_of_stream() {
                    debug!(%error, "stream ended inside a frame");
                    shared.push(&Response::connection_error(&error));
                }
                return ReadEnd::Finished;
            }
            ReadOutcome::Read(Ok(read)) => {
                router.metrics().connections(Protocol::Native).bytes_in.add(read as u64);
            }
            ReadOutcome::Read(Err(error)) => {
                debug!(%error, "reading from the client failed");
                return ReadEnd::Finished;
            }
        }
        let mut took_frames = false;
        // The requests of this read share one clock reading (no await until they are
        // dispatched); their latency is observed when it drops, after the last of them.
        let mut clock = BatchClock::new(router.metrics());
        loop {
            let frames = match decoder.take_frames() {
                Ok(None) => break,
                Ok(Some(frames)) => frames,
                Err(error) => {
                    debug!(%error, "frame refused");
                    shared.push(&Response::connection_error(&error));
                    return ReadEnd::Refused;
                }
            };
            // The frames' share of the receive buffer; each request cut from them takes its own.
            let mut batch = Batch { charge: charge.split(frames.bytes().len()), frames: &frames };
            for (range, request) in frames.requests() {
                let parsed = match request {
                    FramedRequest::Single(single) if gate.is_open() => {
                        took_frames = true;
                        ahead.push_single(&single, range, &frames, router);
                        if ahead.is_full() {
                            ahead.answer(&mut batch, shared, router, limits, &mut clock);
                        }
                        continue;
                    }
                    FramedRequest::Single(single) => Ok(frames.to_request(&single)),
                    FramedRequest::Other(parsed) => parsed,
                };
                match parsed {
                    Ok(request) => {
                        took_frames = true;
                        match gate.admit(request, auth, router.metrics()) {
                            Admission::Serve(request) => {
                                ahead.push(request, batch.charge.split(range.len()), router);
                                if ahead.is_full() {
                                    ahead.answer(&mut batch, shared, router, limits, &mut clock);
                                }
                            }
                            Admission::Answer(response) => {
                                ahead.answer(&mut batch, shared, router, limits, &mut clock);
                                shared.push(&response);
                            }
                            Admission::Close(response) => {
                                ahead.answer(&mut batch, shared, router, limits, &mut clock);
                                shared.push(&response);
                                return ReadEnd::Refused;
                            }
                        }
                    }
                    Err(error) => {
                        ahead.answer(&mut batch, shared, router, limits, &mut clock);
                        debug!(%error, "request refused");
                        shared.push(&error.response());
                        if error.closes_connection() {
                            return ReadEnd::Refused;
                        }
                    }
                }
            }
            // Reads held back borrow these frames: they are answered before the next ones.
            ahead.answer(&mut batch, shared, router, limits, &mut clock);
        }
        // The batch is answered: its in-place reads' latency ends here.
        drop(clock);
        timeouts.after_read(decoder.buffered_bytes(), took_frames);
        // Let the writer and the request tasks run before reading again. A read that finds
        // data returns at once without yielding, so under a steady stream this task would
        // otherwise keep the executor until glommio preempts it, holding back every reply:
        // that showed as a 1.4 ms median at half the peak rate.
        yield_now().await;
    }
}

/// Runs `read` until it completes, unless the shard stops or `timeouts` expire first (`busy`
/// tells whether requests are running, which keeps an idle timeout from firing).
pub(crate) async fn read_or_give_up(
    read: impl std::future::Future<Output = std::io::Result<usize>>,
    stop: &StopSignal,
    timeouts: &ReadTimeouts,
    busy: impl Fn() -> bool,
) -> ReadOutcome {
    or(async { ReadOutcome::Read(read.await) }, async {
        or(
            async {
                stop.wait().await;
                ReadOutcome::Stopped
            },
            async { ReadOutcome::Expired(timeouts.expired(busy).await) },
        )
        .await
    })
    .await
}

/// The frames of one read being answered, and the share of the receive buffer's charge they
/// still hold.
struct Batch<'a> {
    frames: &'a Frames,
    charge: Charge,
}

/// Requests a socket read brought, held back so that the cache misses of their reads overlap.
///
/// A cached read costs a few dependent misses (the memtable's index group, the key's slot, the
/// value) and little else; one after another, the shard waits on each in turn. Up to
/// [`READ_AHEAD`] requests are decoded first, the lines each read will touch prefetched in
/// stages a few requests apart as they join ([`Router::prefetch_joined`]), then all are
/// answered in arrival order.
struct ReadAhead {
    requests: Vec<Held>,
}

/// A request held back by [`ReadAhead`].
enum Held {
    /// A single Get, Put or Delete, its frame, key and value still in the read's frames (nothing
    /// cut from them, so no reference counted for a request answered in place). `hash` is its
    /// key's [`Router::read_ahead`].
    Single {
        id: u64,
        consistency: Option<Consistency>,
        frame: Range<usize>,
        operation: HeldOperation,
        hash: Option<KeyHash>,
    },
    /// Any other request, with its frame's charge; for a single Put or Delete of a key this shard
    /// writes in place, its key's [`Router::read_ahead`].
    Request { request: Request, charge: Charge, hash: Option<KeyHash> },
}

impl Held {
    /// The hash to prefetch `stage` of this request's memtable probe with. A write reads the
    /// slot it replaces (its key and version) but not the value it holds.
    fn prefetch(&self, stage: Prefetch) -> Option<KeyHash> {
        match self {
            Held::Single { operation: HeldOperation::Get { .. }, hash, .. } => *hash,
            Held::Single { hash, .. } | Held::Request { hash, .. } => {
                hash.filter(|_| stage != Prefetch::Value)
            }
        }
    }
}

/// A single operation by where its key and value lie in the read's frames.
enum HeldOperation {
    Get { key: Range<usize> },
    Put { key: Range<usize>, value: Range<usize>, ttl_ms: Option<u64> },
    Delete { key: Range<usize> },
}

impl HeldOperation {
    fn of(operation: OperationRef<'_>, frames: &Frames) -> Self {
        match operation {
            OperationRef::Get { key } => HeldOperation::Get { key: frames.position(key) },
            OperationRef::Put { key, value, ttl_ms } => {
                HeldOperation::Put { key: frames.position(key), value: frames.position(value), ttl_ms }
            }
            OperationRef::Delete { key } => HeldOperation::Delete { key: frames.position(key) },
        }
    }

    /// The operation lent from `frames`, the bytes it was read from.
    fn lent<'a>(&self, frames: &'a [u8]) -> OperationRef<'a> {
        match self {
            HeldOperation::Get { key } => OperationRef::Get { key: &frames[key.clone()] },
            HeldOperation::Put { key, value, ttl_ms } => OperationRef::Put {
                key: &frames[key.clone()],
                value: &frames[value.clone()],
                ttl_ms: *ttl_ms,
            },
            HeldOperation::Delete { key } => OperationRef::Delete { key: &frames[key.clone()] },
        }
    }
}

/// Requests held back at most: enough to cover a miss's latency with the others' work, few
/// enough that their lines stay in the first-level cache.
pub(crate) const READ_AHEAD: usize = 32;

impl ReadAhead {
    fn new() -> Self {
        ReadAhead { requests: Vec::with_capacity(READ_AHEAD) }
    }

    /// Holds back `single`, read from `frames` (its frame at `frame`), prefetching what the held
    /// requests are due: a write of a key this shard writes in place looks its key up in the
    /// memtable first, as a read does.
    fn push_single(
        &mut self,
        single: &SingleRequest<'_>,
        frame: Range<usize>,
        frames: &Frames,
        router: &Router,
    ) {
        let hash = match single.operation {
            OperationRef::Get { key } => router.read_ahead(key),
            OperationRef::Put { key, .. } | OperationRef::Delete { key } => router.write_ahead(key),
        };
        let operation = HeldOperation::of(single.operation, frames);
        self.requests.push(Held::Single {
            id: single.id,
            consistency: single.consistency,
            frame,
            operation,
            hash,
        });
        router.prefetch_joined(&self.requests, Held::prefetch);
    }

    /// Holds `request` back, prefetching what the held requests are due: a write of a key this
    /// shard writes in place looks its key up in the memtable first, as a read does.
    fn push(&mut self, request: Request, charge: Charge, router: &Router) {
        let hash = match &request.command {
            Command::Single(Operation::Put { key, .. } | Operation::Delete { key }) => {
                router.write_ahead(key)
            }
            _ => None,
        };
        self.requests.push(Held::Request { request, charge, hash });
        router.prefetch_joined(&self.requests, Held::prefetch);
    }

    fn is_full(&self) -> bool {
        self.requests.len() >= READ_AHEAD
    }

    /// Prefetches the rest of the held reads' lines, then answers every held request.
    fn answer(
        &mut self,
        batch: &mut Batch<'_>,
        shared: &Rc<Shared>,
        router: &Rc<Router>,
        limits: ConnectionLimits,
        clock: &mut BatchClock<'_>,
    ) {
        router.prefetch_rest(&self.requests, Held::prefetch);
        for held in self.requests.drain(..) {
            match held {
                Held::Single { id, consistency, frame, operation, hash } => {
                    let frames = batch.frames.bytes();
                    let lent = operation.lent(frames);
                    let in_place = match lent {
                        OperationRef::Get { key } if read_in_place(id, key, hash, shared, router, clock) => {
                            continue;
                        }
                        OperationRef::Get { .. } => InPlace::Elsewhere,
                        OperationRef::Put { .. } | OperationRef::Delete { .. } => write_in_place(
                            id,
                            lent,
                            hash,
                            &mut batch.charge,
                            frame.len(),
                            shared,
                            router,
                            limits,
                            clock,
                        ),
                    };
                    if in_place == InPlace::Done {
                        continue;
                    }
                    // Cut from the frames only now: the request outlives this read.
                    let request = SingleRequest { id, consistency, operation: lent }.to_request(frames);
                    hand_over(in_place, request, batch.charge.split(frame.len()), shared, router, limits);
                }
                Held::Request { request, charge, hash } => {
                    dispatch(request, charge, hash, shared, router, limits, clock)
                }
            }
        }
    }
}

/// Answers a read of `key` in place when the router can ([`Router::read_now`]): sent now, or
/// queued to be sent once what it found is durable. `false` when it must be answered otherwise.
fn read_in_place(
    id: u64,
    key: &[u8],
    hash: Option<KeyHash>,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    clock: &mut BatchClock<'_>,
) -> bool {
    match router.read_now(key, hash, clock, |found, unsettled| shared.answer_read(id, found, unsettled)) {
        Some(ReadAnswer::Sent) => true,
        Some(ReadAnswer::Held { bytes, unsettled }) => {
            let started = clock.hold_last();
            shared.queue_commit(Queued::Read(HeldRead { id, bytes, unsettled, started }));
            true
        }
        None => false,
    }
}

/// Answers a request: on the spot when it needs nothing, otherwise in a task of its own. `charge`
/// (the request's frame) is given back once the reply is queued. `hash` is a write's
/// [`Router::read_ahead`], when it was taken. (A single Get, Put or Delete is held as
/// [`Held::Single`] and comes here only when the generic parse read it.)
fn dispatch(
    request: Request,
    mut charge: Charge,
    hash: Option<KeyHash>,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    limits: ConnectionLimits,
    clock: &mut BatchClock<'_>,
) {
    if let Some(reply) = router.answer_immediately(&request.command) {
        shared.push(&Response { id: request.id, reply });
        return;
    }
    let in_place = match &request.command {
        Command::Single(Operation::Get { key })
            if read_in_place(request.id, key, None, shared, router, clock) =>
        {
            return;
        }
        Command::Single(operation @ (Operation::Put { .. } | Operation::Delete { .. })) => {
            let lent = operation.lent().expect("a put or delete has a lent form");
            let frame_bytes = charge.bytes();
            write_in_place(request.id, lent, hash, &mut charge, frame_bytes, shared, router, limits, clock)
        }
        _ => InPlace::Elsewhere,
    };
    hand_over(in_place, request, charge, shared, router, limits);
}

/// Runs `request` as [`write_in_place`] (or a read not answered in place) left it: nothing more
/// when it was done, in a task when it needs one, else as [`dispatch_task`] decides.
fn hand_over(
    in_place: InPlace,
    request: Request,
    charge: Charge,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    limits: ConnectionLimits,
) {
    match in_place {
        InPlace::Done => {}
        InPlace::Later => spawn_single(request, charge, shared, router),
        InPlace::Elsewhere => dispatch_task(request, charge, shared, router, limits),
    }
}

/// What became of a single write offered to [`write_in_place`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InPlace {
    /// Applied and queued for its acknowledgement, or refused and answered.
    Done,
    /// It needs a task (a read first, room in the memtables, another shard): run it in one.
    Later,
    /// Coordinated across replicas, or over the connection's in-flight bound: [`dispatch_task`]
    /// decides.
    Elsewhere,
}

/// Starts a single put or delete in place (keys with one copy, this shard's key, no stall or
/// table read needed): applied by the reader and queued for its acknowledgement, so a write
/// costs no task. It is handed over lent, so a write read from a socket's frames needs nothing
/// cut from them. `charge` gives the frame's share (`frame_bytes`) to the queued write.
#[allow(clippy::too_many_arguments)]
fn write_in_place(
    id: u64,
    operation: OperationRef<'_>,
    hash: Option<KeyHash>,
    charge: &mut Charge,
    frame_bytes: usize,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    limits: ConnectionLimits,
    clock: &mut BatchClock<'_>,
) -> InPlace {
    let in_flight = shared.in_flight();
    if (in_flight > 0 && in_flight + 1 > limits.in_flight_max) || router.coordinates_here(operation.key()) {
        return InPlace::Elsewhere;
    }
    let reply = match router.write_now(operation, hash, clock) {
        None => return InPlace::Later,
        Some(Ok(write)) => {
            shared.begin_request(1);
            shared.queue_commit(Queued::Write(Commit { id, write, charge: charge.split(frame_bytes) }));
            return InPlace::Done;
        }
        Some(Err(failure)) => Reply::Failed(failure),
    };
    shared.begin_request(1);
    shared.complete_request(1, &Response { id, reply });
    InPlace::Done
}

/// Runs a single request [`write_in_place`] found needs a task, in one.
fn spawn_single(request: Request, charge: Charge, shared: &Rc<Shared>, router: &Rc<Router>) {
    let Request { id, consistency, command } = request;
    shared.begin_request(1);
    spawn_request(command, id, consistency, 1, charge, shared, router);
}

/// Answers a request [`dispatch`] could not answer on the spot: in a task of its own, unless
/// this shard coordinates it across replicas; or "overloaded" past `in_flight_max`.
fn dispatch_task(
    request: Request,
    charge: Charge,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
    limits: ConnectionLimits,
) {
    let Request { consistency, id, command } = request;
    // A batch counts as its operations: it costs the shard as much work as that many requests.
    // One larger than the whole window still runs when nothing else does, so it is not refused
    // for good.
    let operations = match &command {
        Command::Batch(operations) => operations.len().max(1),
        _ => 1,
    };
    let in_flight = shared.in_flight();
    if in_flight > 0 && in_flight + operations > limits.in_flight_max {
        router.metrics().overloaded(OverloadReason::InFlight);
        let failure = Failure::new(
            ErrorCode::Overloaded,
            format!(
                "the connection has {in_flight} operations in flight and this request adds {operations} \
                 (in_flight_max is {}); retry later",
                limits.in_flight_max
            ),
        );
        shared.push(&Response { id, reply: Reply::Failed(failure) });
        return;
    }
    shared.begin_request(operations);
    let command = match command {
        // Coordinated across replicas by this shard: the reply slot waits, not a task.
        Command::Single(operation) if router.coordinates_here(operation.key()) => {
            let shared = shared.clone();
            router.coordinate(operation, consistency, move |result| {
                let _charge = charge;
                let reply = match result {
                    Ok(outcome) => Reply::Single(outcome),
                    Err(failure) => Reply::Failed(failure),
                };
                shared.complete_request(operations, &Response { id, reply });
            });
            return;
        }
        command => command,
    };
    spawn_request(command, id, consistency, operations, charge, shared, router);
}

/// Answers a request begun on the connection (`operations` of them) in a task of its own.
fn spawn_request(
    command: Command,
    id: u64,
    consistency: Option<Consistency>,
    operations: usize,
    charge: Charge,
    shared: &Rc<Shared>,
    router: &Rc<Router>,
) {
    let router = router.clone();
    let shared = shared.clone();
    // Not instrumented with the connection's span: entering and leaving a span on every poll
    // of every request costs more than the rest of a cached read. Request tasks log nothing;
    // failures travel back in the reply.
    let queue = router.queue_for(&command);
    let answered_here = shared.clone();
    let request = async move {
        let _charge = charge;
        let reply = router.answer(command, consistency).await;
        shared.complete_request(operations, &Response { id, reply });
    };
    match queue {
        // A scan's whole request (its pages, their merge and the reply) runs in the scan queue:
        // point requests behind it are picked up within the queue's preemption interval.
        Some(queue) => match glommio::spawn_local_into(request, queue) {
            Ok(task) => drop(task.detach()),
            Err(error) => {
                let failure = Failure::new(ErrorCode::Internal, format!("starting a scan: {error}"));
                answered_here.complete_request(operations, &Response { id, reply: Reply::Failed(failure) });
            }
        },
        None => drop(glommio::spawn_local(request).detach()),
    }
}

/// Answers the writes applied in place and releases the held reads, in the order they were
/// queued, each once what it wrote or read is durable (see [`Router::acknowledged`],
/// [`Router::settled`]); ends when reading is done and the queue is empty. Group commit still
/// gathers the connection's writes: while this task waits for the oldest, the reader keeps
/// appending, and one commit covers them all.
async fn acknowledge_writes(shared: Rc<Shared>, router: Rc<Router>) {
    let mut clock = CommitClock::new();
    loop {
        // The listener lives in this future (no allocation per write).
        let listener = shared.commit_queued.listen();
        let oldest = shared.commits.borrow_mut().pop_front();
        match oldest {
            Some(Queued::Write(Commit { id, write, charge })) => {
                let reply = router.acknowledged(write, &mut clock).await;
                shared.complete_request(1, &Response { id, reply });
                drop(charge);
            }
            Some(Queued::Read(read)) => {
                let settled = router.settled(read.unsettled, &mut clock).await;
                shared.release_read(&read, settled);
                router.held_read_released(read.started, &mut clock);
            }
            None if shared.outbox.borrow().reading_done => return,
            None => {
                clock.forget();
                listener.await;
            }
        }
    }
}

/// Writes whatever replies are ready, all at once, until reading is done and nothing is in
/// flight; then shuts the write side down.
async fn write_replies(mut writer: WriteHalf<Stream>, shared: Rc<Shared>, metrics: Arc<ShardMetrics>) {
    let mut batch = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        // The listener lives in this future (no allocation per batch).
        let listener = shared.ready.listen();
        {
            let mut outbox = shared.outbox.borrow_mut();
            if !outbox.bytes.is_empty() {
                // Swap buffers: request tasks keep appending to the other one meanwhile.
                std::mem::swap(&mut outbox.bytes, &mut batch);
            } else if outbox.reading_done && outbox.in_flight == 0 {
                break;
            }
        }
        if batch.is_empty() {
            listener.await;
            continue;
        }
        // The flush matters with TLS: rustls may hold part of the records until it.
        if let Err(error) = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        }
        .await
        {
            debug!(%error, "writing to the client failed");
            shared.outbox.borrow_mut().write_failed = true;
            shared.drained.notify();
            return;
        }
        metrics.connections(Protocol::Native).bytes_out.add(batch.len() as u64);
        batch.clear();
        shared.drained.notify();
    }
    if let Err(error) = writer.close().await {
        debug!(%error, "shutting down the write side failed");
    }
}

/// Reads and discards what the client still sends, within bounds (see [`LINGER_BYTES_MAX`]), so
/// the kernel does not reset the socket before the client has read the last reply. The
/// Redis-protocol connections close the same way.
pub(crate) async fn linger(reader: &mut ReadHalf<Stream>) {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut discarded = 0;
    let drain = async {
        while discarded < LINGER_BYTES_MAX {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => discarded += read,
            }
        }
    };
    or(drain, glommio::timer::sleep(Duration::from_millis(LINGER_MS))).await;
}
