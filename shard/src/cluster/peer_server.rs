//! The replica side of peer links: this shard's peer port accepts links from other nodes'
//! shards and answers their replication requests on this shard's engine.
//!
//! ```text
//!  accept ─▶ first frame must be Hello for this shard ─▶ frames ─▶ parse_peer (verified)
//!         ─▶ Cluster::serve_replica (task per request, at most in_flight_max at once)
//!         ─▶ reply frames ─▶ outbox ─writer─▶ the same connection
//! ```
//!
//! With a cluster secret, a link must first prove it knows the secret (see
//! [`super::peer_auth`]); one that does not is logged and closed before any frame is read.
//!
//! A frame that has started must finish within `frame_timeout_ms`, as on client connections,
//! or the link is closed: a peer that trickles bytes cannot hold a receive buffer.
//!
//! A frame that breaks framing or does not verify closes that link only: the peer reconnects,
//! and every other link and client is untouched. Requests beyond the in-flight bound are
//! answered `Overloaded` at once, and a link whose replies are not read stops being read once
//! its outbox is full, so a hostile or stuck peer holds bounded memory.

use crate::cluster::peer_link::reuse_written;
use crate::request_memory::{read_into, ReadWindow};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::local_event::LocalEvent;
use flatbuffers::FlatBufferBuilder;
use futures_lite::future::or;
use futures_lite::io::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use ringkv_replication::replica;
use ringkv_wire::peer::{PeerEnvelope, PeerErrorCode, PeerFailure, PeerMessage};
use ringkv_wire::{encode_peer_into, parse_peer_shared, FrameDecoder};
use tracing::{debug, warn};

use super::healing::{CommitQueue, ReplicaWrite};
use super::peer_auth;
use super::peer_link::HANDSHAKE_TIMEOUT_MS;
use super::Cluster;
use crate::stop_signal::StopSignal;
use crate::timeouts::ReadTimeouts;
use crate::tls::Stream;

const READ_CHUNK_BYTES: usize = 64 << 10;

/// Peer links a shard serves at once. A cluster needs one per remote shard; the bound keeps a
/// misbehaving or hostile peer that opens connections without end from exhausting memory.
pub const PEER_LINKS_MAX: usize = 1024;

/// Accepts peer links until `stop`.
pub async fn accept_links(listener: TcpListener, cluster: Rc<Cluster>, stop: Rc<StopSignal>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let accepted = or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                if open.get() >= PEER_LINKS_MAX {
                    warn!(links = open.get(), "refusing a peer link: PEER_LINKS_MAX links are open");
                    drop(stream);
                    continue;
                }
                open.set(open.get() + 1);
                let cluster = cluster.clone();
                let stop = stop.clone();
                let open = open.clone();
                glommio::spawn_local(async move {
                    serve_link(stream, cluster, stop).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Some(Err(error)) => {
                warn!(%error, "accepting a peer link failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

struct LinkState {
    outbox: RefCell<Vec<u8>>,
    /// Writes applied in place, answered oldest first once durable (each holds an in-flight
    /// slot, so there are at most `peer_in_flight_max`).
    commits: CommitQueue,
    builder: RefCell<FlatBufferBuilder<'static>>,
    written: LocalEvent,
    ready: LocalEvent,
    in_flight: Cell<usize>,
    closed: Cell<bool>,
}

impl LinkState {
    fn push(&self, envelope: &PeerEnvelope) {
        let mut outbox = self.outbox.borrow_mut();
        if let Err(error) = encode_peer_into(&mut self.builder.borrow_mut(), envelope, &mut outbox) {
            warn!(%error, "a peer reply could not be encoded");
        }
        self.ready.notify();
    }
}

async fn serve_link(stream: TcpStream, cluster: Rc<Cluster>, stop: Rc<StopSignal>) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().map(|address| address.to_string()).unwrap_or_default();
    // With TLS, the other node must present a certificate the CA signed (mutual TLS).
    let mut stream = match cluster.tls() {
        None => Stream::plain(stream),
        Some((tls, timeout)) => match tls.accept_peer(stream, *timeout, &stop).await {
            Some(stream) => stream,
            None => {
                warn!(%peer, "a peer link failed its TLS handshake; closing it");
                return;
            }
        },
    };
    if let Some(key) = &cluster.settings().peer_key {
        let handshake = or(async { Some(peer_auth::accept(&mut stream, key).await) }, async {
            glommio::timer::sleep(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS)).await;
            None
        });
        let failure = or(handshake, async {
            stop.wait().await;
            Some(Ok(()))
        });
        match failure.await {
            Some(Ok(())) if !stop.is_triggered() => {}
            Some(Ok(())) => return,
            Some(Err(error)) => {
                warn!(%peer, %error, "a peer failed authentication; closing its link");
                return;
            }
            None => {
                warn!(%peer, "a peer did not finish authenticating in time; closing its link");
                return;
            }
        }
    }
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let state = Rc::new(LinkState {
        outbox: RefCell::new(Vec::new()),
        commits: CommitQueue::default(),
        builder: RefCell::new(FlatBufferBuilder::new()),
        written: LocalEvent::new(),
        ready: LocalEvent::new(),
        in_flight: Cell::new(0),
        closed: Cell::new(false),
    });
    let in_flight_max = cluster.settings().peer_in_flight_max;
    let frame_timeout = std::time::Duration::from_millis(cluster.settings().peer_frame_timeout_ms);
    let outbox_bytes_max = cluster.settings().peer_outbox_bytes_max;
    let read_requests = {
        let state = state.clone();
        let cluster = cluster.clone();
        let peer = peer.clone();
        async move {
            let mut decoder = FrameDecoder::new();
            let mut charge = cluster.peer_memory().empty();
            let mut window = ReadWindow::new(READ_CHUNK_BYTES);
            let mut greeted = false;
            let mut timeouts = ReadTimeouts::new(frame_timeout, None);
            loop {
                // Hold back while the peer does not read its replies.
                while state.outbox.borrow().len() >= outbox_bytes_max {
                    let listener = state.written.listen();
                    if state.outbox.borrow().len() < outbox_bytes_max || state.closed.get() {
                        break;
                    }
                    listener.await;
                }
                if state.closed.get() {
                    return;
                }
                let declared = decoder.declared_frame_bytes();
                let read = or(
                    async {
                        Some(
                            read_into(&mut reader, decoder.buffer_mut(), &mut charge, &mut window, declared)
                                .await,
                        )
                    },
                    async {
                        // A peer link has no idle timeout: only a frame that started can expire.
                        timeouts.expired(|| true).await;
                        None
                    },
                );
                match read.await {
                    None => {
                        warn!(%peer, "a peer frame did not finish within frame_timeout_ms; closing its link");
                        return;
                    }
                    Some(Ok(0) | Err(_)) => return,
                    Some(Ok(_)) => {}
                }
                let mut took_frames = false;
                loop {
                    let frame = match decoder.next_frame() {
                        Ok(Some(frame)) => {
                            took_frames = true;
                            frame
                        }
                        Ok(None) => {
                            timeouts.after_read(decoder.buffered_bytes(), took_frames);
                            break;
                        }
                        Err(error) => {
                            warn!(%peer, %error, "a peer broke framing; closing its link");
                            return;
                        }
                    };
                    let envelope = match parse_peer_shared(&frame) {
                        Ok(envelope) => envelope,
                        Err(error) => {
                            warn!(%peer, %error, "a peer frame did not verify; closing its link");
                            return;
                        }
                    };
                    if !greeted {
                        match envelope.message {
                            PeerMessage::Hello { target_shard, node_id, .. }
                                if target_shard == cluster.shard_id() =>
                            {
                                debug!(%peer, node = node_id, "peer link accepted");
                                greeted = true;
                                continue;
                            }
                            _ => {
                                warn!(%peer, "a peer link did not start with a hello for this shard; closing it");
                                return;
                            }
                        }
                    }
                    if !envelope.message.is_request() {
                        debug!(%peer, "ignoring a peer message that is not a request");
                        continue;
                    }
                    // Hot reads are answered in place, with no task.
                    if let Some(answer) = cluster.serve_replica_now(&envelope) {
                        state.push(&answer);
                        continue;
                    }
                    if state.in_flight.get() >= in_flight_max {
                        let failure = PeerFailure {
                            code: PeerErrorCode::Overloaded,
                            message: format!("{in_flight_max} peer requests in flight on this link"),
                        };
                        state.push(&replica::refusal(&envelope, failure));
                        continue;
                    }
                    // A write memory can take at once is applied here, and answered by the
                    // link's committer once durable: no task per write.
                    match cluster.replicate_now(&envelope) {
                        ReplicaWrite::Answer(answer) => {
                            state.push(&answer);
                            continue;
                        }
                        ReplicaWrite::Applied(applied) => {
                            state.in_flight.set(state.in_flight.get() + 1);
                            state.commits.push(applied);
                            continue;
                        }
                        ReplicaWrite::Later => {}
                    }
                    state.in_flight.set(state.in_flight.get() + 1);
                    let state = state.clone();
                    let cluster = cluster.clone();
                    glommio::spawn_local(async move {
                        let answer = cluster.serve_replica(&envelope).await;
                        state.in_flight.set(state.in_flight.get() - 1);
                        if !state.closed.get() {
                            state.push(&answer);
                        }
                    })
                    .detach();
                }
            }
        }
    };
    let write_replies = {
        let state = state.clone();
        async move {
            // Swapped with the outbox, so both buffers keep their capacity: replies are encoded
            // into one while the other is written.
            let mut pending = Vec::new();
            loop {
                reuse_written(&mut pending);
                std::mem::swap(&mut pending, &mut *state.outbox.borrow_mut());
                if pending.is_empty() {
                    let listener = state.ready.listen();
                    if !state.outbox.borrow().is_empty() {
                        continue;
                    }
                    listener.await;
                    // Let the tasks that are ready queue their messages too, so one write
                    // carries them all: fewer system calls per message under load.
                    futures_lite::future::yield_now().await;
                    continue;
                }
                state.written.notify();
                if writer.write_all(&pending).await.is_err() || writer.flush().await.is_err() {
                    return;
                }
            }
        }
    };
    // Detached: a commit it leads must never be dropped midway (that poisons the WAL); it ends
    // once the link closed and the writes queued before are answered.
    glommio::spawn_local(answer_commits(state.clone(), cluster.clone())).detach();
    or(or(read_requests, write_replies), stop.wait()).await;
    state.closed.set(true);
    state.written.notify();
    state.commits.wake();
    debug!(%peer, "peer link closed");
}

/// Answers the writes the link applied in place, oldest first, each once its WAL commit is
/// durable; ends when the link has closed and none is left.
async fn answer_commits(state: Rc<LinkState>, cluster: Rc<Cluster>) {
    while let Some(applied) = state.commits.next(|| state.closed.get()).await {
        let answer = cluster.answer_applied(applied).await;
        state.in_flight.set(state.in_flight.get() - 1);
        if !state.closed.get() {
            state.push(&answer);
        }
    }
}
