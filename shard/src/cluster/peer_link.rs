//! [`PeerLink`]: this shard's outbound connection to one shard of another node.
//!
//! ```text
//!  send(envelope) ─encode─▶ outbox (bounded bytes) ─writer task─▶ TCP ─▶ remote shard's peer port
//!  replies ◀─reader task─ FrameDecoder ◀─ TCP (the same connection) ─▶ on_reply(target, envelope)
//! ```
//!
//! The link connects on first use and again after a failure (after a pause), and says `Hello`
//! first so the remote shard knows who is talking and can refuse a link meant for another shard.
//! Its outbox is bounded by `peer_outbox_bytes_max`: a message that does not fit is dropped and
//! [`PeerLink::send`] says so, and the request it belonged to times out on the coordinator. A
//! slow or stopped replica therefore costs a bounded outbox, never memory that grows with load.
//! When the connection fails, what was queued is dropped the same way.
//!
//! With a cluster secret, each connection first proves it (see [`peer_auth`]); a remote that
//! fails is logged and the link closed before anything is sent.

use crate::request_memory::{read_into, ReadWindow, RequestMemory};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::local_event::LocalEvent;
use flatbuffers::FlatBufferBuilder;
use futures_lite::future::or;
use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;
use ringkv_replication::Target;
use ringkv_wire::peer::{PeerEnvelope, PeerMessage};
use ringkv_wire::{encode_peer_into, parse_peer_shared, FrameDecoder};
use tracing::{debug, warn};

use crate::cluster::peer_auth::{self, PeerKey};
use crate::stop_signal::StopSignal;
use crate::tls::{Stream, TlsSettings};

/// Pause before connecting again after a failed connection.
const RECONNECT_PAUSE_MS: u64 = 200;
/// Longest wait for a connection to be established.
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longest wait for the cluster-secret handshake (see [`peer_auth`]) at each connection.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Who this side of a link is, for the `Hello`.
#[derive(Clone, Copy, Debug)]
pub struct LinkOrigin {
    pub node_id: u16,
    pub shard: u32,
    pub generation: u64,
}

/// One outbound link.
pub struct PeerLink {
    target: Target,
    address: Cell<SocketAddr>,
    origin: LinkOrigin,
    outbox: RefCell<Vec<u8>>,
    outbox_bytes_max: usize,
    builder: RefCell<FlatBufferBuilder<'static>>,
    ready: LocalEvent,
    stop: Rc<StopSignal>,
    /// What the receive buffer is charged to.
    memory: Rc<RequestMemory>,
    /// The cluster secret's key, proved at every connection when set.
    key: Option<PeerKey>,
    /// TLS for the connection, when on: this node's certificate, the remote one verified.
    tls: Option<TlsSettings>,
}

impl PeerLink {
    /// A link to `target` at `address`; call [`PeerLink::run`] in a task to drive it.
    pub fn new(
        target: Target,
        address: SocketAddr,
        origin: LinkOrigin,
        outbox_bytes_max: usize,
        memory: Rc<RequestMemory>,
        key: Option<PeerKey>,
    ) -> Self {
        PeerLink {
            target,
            address: Cell::new(address),
            origin,
            outbox: RefCell::new(Vec::new()),
            outbox_bytes_max,
            builder: RefCell::new(FlatBufferBuilder::new()),
            ready: LocalEvent::new(),
            stop: Rc::new(StopSignal::new()),
            memory,
            key,
            tls: None,
        }
    }

    /// The link connects with mutual TLS when `tls` is set.
    pub fn with_tls(mut self, tls: Option<TlsSettings>) -> Self {
        self.tls = tls;
        self
    }

    /// Points the link at a new address (the node restarted elsewhere); the next connection
    /// uses it.
    pub fn set_address(&self, address: SocketAddr) {
        self.address.set(address);
    }

    /// Queues `envelope`. Returns false, dropping it, when the outbox is full or the message
    /// cannot be encoded.
    pub fn send(&self, envelope: &PeerEnvelope) -> bool {
        let mut outbox = self.outbox.borrow_mut();
        let before = outbox.len();
        if before >= self.outbox_bytes_max {
            return false;
        }
        if let Err(error) = encode_peer_into(&mut self.builder.borrow_mut(), envelope, &mut outbox) {
            warn!(%error, "a peer message could not be encoded");
            return false;
        }
        if outbox.len() > self.outbox_bytes_max {
            outbox.truncate(before);
            return false;
        }
        self.ready.notify();
        true
    }

    /// Stops the link's task.
    pub fn stop(&self) {
        self.stop.trigger();
        self.ready.notify();
    }

    /// Drives the link until stopped: connects, writes the outbox, hands replies to `on_reply`.
    pub async fn run(self: Rc<Self>, on_reply: Rc<dyn Fn(Target, PeerEnvelope)>) {
        while !self.stop.is_triggered() {
            // Connect only once there is something to send.
            while self.outbox.borrow().is_empty() && !self.stop.is_triggered() {
                let listener = self.ready.listen();
                if !self.outbox.borrow().is_empty() || self.stop.is_triggered() {
                    break;
                }
                listener.await;
            }
            if self.stop.is_triggered() {
                break;
            }
            let address = self.address.get();
            match self.connect(address).await {
                Ok(stream) => {
                    debug!(node = self.target.node_id, shard = self.target.shard, %address, "peer link up");
                    self.serve(stream, on_reply.clone()).await;
                }
                // rustls reports a refused certificate as invalid data: worth an operator's eye.
                Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                    warn!(node = self.target.node_id, %address, %error, "peer link failed its TLS handshake");
                }
                Err(error) => {
                    debug!(node = self.target.node_id, %address, %error, "peer link could not connect");
                }
            }
            // Whatever was queued for the failed connection is dropped: its requests time out.
            self.outbox.borrow_mut().clear();
            or(glommio::timer::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)), self.stop.wait()).await;
        }
    }

    async fn connect(&self, address: SocketAddr) -> std::io::Result<Stream> {
        let connect = async {
            let stream = TcpStream::connect(address).await.map_err(std::io::Error::from)?;
            stream.set_nodelay(true)?;
            match &self.tls {
                None => Ok(Stream::plain(stream)),
                Some(tls) => tls.connect_peer(stream, address).await,
            }
        };
        let timeout = async {
            glommio::timer::sleep(Duration::from_millis(CONNECT_TIMEOUT_MS)).await;
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))
        };
        or(connect, timeout).await
    }

    async fn serve(&self, mut stream: Stream, on_reply: Rc<dyn Fn(Target, PeerEnvelope)>) {
        if let Some(key) = &self.key {
            let handshake = or(async { Some(peer_auth::open(&mut stream, key).await) }, async {
                glommio::timer::sleep(Duration::from_millis(HANDSHAKE_TIMEOUT_MS)).await;
                None
            });
            match handshake.await {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    warn!(node = self.target.node_id, %error, "peer failed authentication; closing the link");
                    return;
                }
                None => {
                    warn!(
                        node = self.target.node_id,
                        "peer did not finish authenticating in time; closing the link"
                    );
                    return;
                }
            }
        }
        let hello = PeerEnvelope {
            origin_node: self.origin.node_id,
            origin_shard: self.origin.shard,
            request_id: 0,
            message: PeerMessage::Hello {
                node_id: self.origin.node_id,
                generation: self.origin.generation,
                target_shard: self.target.shard,
            },
        };
        let mut first = Vec::new();
        if encode_peer_into(&mut self.builder.borrow_mut(), &hello, &mut first).is_err() {
            return;
        }
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let target = self.target;
        let memory = self.memory.clone();
        let read_replies = async move {
            let mut decoder = FrameDecoder::new();
            let mut charge = memory.empty();
            let mut window = ReadWindow::new(READ_CHUNK_BYTES);
            loop {
                let declared = decoder.declared_frame_bytes();
                match read_into(&mut reader, decoder.buffer_mut(), &mut charge, &mut window, declared).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => match parse_peer_shared(&frame) {
                            Ok(envelope) => on_reply(target, envelope),
                            Err(error) => {
                                warn!(node = target.node_id, %error, "a peer sent a frame that does not parse; closing the link");
                                return;
                            }
                        },
                        Ok(None) => break,
                        Err(error) => {
                            warn!(node = target.node_id, %error, "a peer broke framing; closing the link");
                            return;
                        }
                    }
                }
            }
        };
        let write_requests = async {
            if writer.write_all(&first).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            // Swapped with the outbox, so both buffers keep their capacity: messages are encoded
            // into one while the other is written.
            let mut pending = Vec::new();
            loop {
                reuse_written(&mut pending);
                std::mem::swap(&mut pending, &mut *self.outbox.borrow_mut());
                if pending.is_empty() {
                    let listener = self.ready.listen();
                    if !self.outbox.borrow().is_empty() {
                        continue;
                    }
                    if self.stop.is_triggered() {
                        return;
                    }
                    listener.await;
                    // Let the tasks that are ready queue their messages too, so one write
                    // carries them all: fewer system calls per message under load.
                    futures_lite::future::yield_now().await;
                    continue;
                }
                if writer.write_all(&pending).await.is_err() || writer.flush().await.is_err() {
                    return;
                }
            }
        };
        // Either half ending ends the connection.
        or(or(read_replies, write_requests), self.stop.wait()).await;
    }
}

/// Outbox capacity kept between writes; a buffer grown past it by a burst of large values is
/// given back rather than held by an idle link.
const OUTBOX_KEPT_BYTES_MAX: usize = 256 << 10;

/// Readies a written outbox buffer for reuse: emptied, and freed if a burst grew it large.
pub(crate) fn reuse_written(buffer: &mut Vec<u8>) {
    if buffer.capacity() > OUTBOX_KEPT_BYTES_MAX {
        *buffer = Vec::new();
    } else {
        buffer.clear();
    }
}
