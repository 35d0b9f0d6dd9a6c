//! [`Forwarding`]: sends operations for keys this shard does not own to the shard that does,
//! over glommio's cross-shard channel mesh, and routes the replies back to the waiting request.
//!
//! ```text
//!  shard A (has the connection)                      shard B (owns the key)
//!  forward(B, op) ─▶ pending[ticket] ─try_send─▶ ─mesh─▶ receive task ─spawn─▶ Cluster::execute_owned
//!                        ▲                                                          │
//!  receive task ◀─mesh◀─ send Reply { ticket, result } ◀──────────────────────────── ┘
//!    └─▶ pending.remove(ticket) ─▶ wakes forward()
//! ```
//!
//! A scan crosses the mesh the same way: `scan(B, scan)` sends a `ScanRequest`, shard B answers
//! with its own page of the range (`Handler::scan`) in a `ScanReply`. So does an atomic write
//! of several keys that shard B owns (`AtomicRequest`, answered by `Handler::write_atomically`).
//!
//! Deadlock freedom (PITFALLS: two shards that both send on bounded channels and neither
//! drains): each peer's channel is drained by its own receive task, which never waits on a send.
//! Requests are executed in tasks of their own, and only those tasks wait for room to send the
//! reply back; the receive task on the other side keeps draining, so that wait always ends.
//!
//! Bounds: a shard has at most `forward_in_flight_max` requests waiting on other shards; a
//! request beyond that, or one that finds the channel full, is answered "overloaded" at once.
//! Because every shard bounds what it sends, what a shard executes for its peers is bounded too.
//! A scan takes one slot per peer it asks. A forwarded put carries at most one value, an atomic
//! write about as much (its keys and values fit one WAL record), and a scan reply at most one
//! page (`SCAN_PAGE_BYTES_MAX`), so the same bound caps the bytes in flight.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::task::JoinHandle;
use ringkv_wire::{Consistency, ErrorCode, Failure, Operation, Outcome, Scan, ScanPage};
use tracing::{debug, Instrument};

use crate::cluster::Cluster;
use crate::handler::Handler;
use ringkv_io::DmaDisk;

/// What shards send each other.
#[derive(Debug)]
pub enum ShardMessage {
    /// Execute `operation` (the receiver owns its key) and reply with `ticket`.
    Request { ticket: u64, operation: Operation, consistency: Option<Consistency> },
    /// The result of the request with `ticket`.
    Reply { ticket: u64, result: Result<Outcome, Failure> },
    /// Answer with the receiver's own page of `scan` (see `Handler::scan`) under `ticket`.
    ScanRequest { ticket: u64, scan: Scan },
    /// The page asked for by the scan request with `ticket`.
    ScanReply { ticket: u64, result: Result<ScanPage, Failure> },
    /// Write `pairs` (the receiver owns every key) as one atomic write (see
    /// `Router::write_atomically`) and reply under `ticket`.
    AtomicRequest { ticket: u64, pairs: Vec<(Bytes, Bytes)>, only_if_absent: bool },
    /// The result of the atomic write with `ticket`: whether it wrote, `None` when it could not
    /// be atomic there.
    AtomicReply { ticket: u64, result: Result<Option<bool>, Failure> },
}

/// What a waiting request receives: the reply its message asked for.
#[derive(Debug)]
enum Answer {
    Operation(Result<Outcome, Failure>),
    Scan(Result<ScanPage, Failure>),
    Atomic(Result<Option<bool>, Failure>),
}

/// This shard's end of the mesh.
pub struct Forwarding {
    shard_id: u32,
    senders: Senders<ShardMessage>,
    /// Mesh peer index of each shard id: glommio numbers peers in its own order.
    peer_of_shard: Vec<usize>,
    /// Requests sent and not yet answered, by ticket.
    pending: RefCell<HashMap<u64, LocalSender<Answer>>>,
    next_ticket: Cell<u64>,
    forward_in_flight_max: usize,
}

/// Removes a ticket from the pending map when the waiting request goes away, answered or not
/// (a connection can be dropped while its request waits).
struct PendingTicket<'forwarding> {
    forwarding: &'forwarding Forwarding,
    ticket: u64,
}

impl Drop for PendingTicket<'_> {
    fn drop(&mut self) {
        self.forwarding.pending.borrow_mut().remove(&self.ticket);
    }
}

impl Forwarding {
    /// This shard's end of a joined mesh. `peer_of_shard[shard]` is that shard's mesh peer index.
    pub fn new(
        shard_id: u32,
        senders: Senders<ShardMessage>,
        peer_of_shard: Vec<usize>,
        forward_in_flight_max: usize,
    ) -> Self {
        Forwarding {
            shard_id,
            senders,
            peer_of_shard,
            pending: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(1),
            forward_in_flight_max,
        }
    }

    /// Requests waiting for another shard's answer.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Executes `operation` on shard `owner` and returns its result.
    pub async fn forward(
        &self,
        owner: u32,
        operation: Operation,
        consistency: Option<Consistency>,
    ) -> Result<Outcome, Failure> {
        match self.exchange(owner, |ticket| ShardMessage::Request { ticket, operation, consistency }).await? {
            Answer::Operation(result) => result,
            Answer::Scan(_) | Answer::Atomic(_) => Err(mismatched_answer(owner)),
        }
    }

    /// Writes `pairs` atomically on shard `owner`, which owns every key.
    pub async fn write_atomically(
        &self,
        owner: u32,
        pairs: Vec<(Bytes, Bytes)>,
        only_if_absent: bool,
    ) -> Result<Option<bool>, Failure> {
        match self
            .exchange(owner, |ticket| ShardMessage::AtomicRequest { ticket, pairs, only_if_absent })
            .await?
        {
            Answer::Atomic(result) => result,
            Answer::Operation(_) | Answer::Scan(_) => Err(mismatched_answer(owner)),
        }
    }

    /// Shard `shard`'s own page of `scan`.
    pub async fn scan(&self, shard: u32, scan: Scan) -> Result<ScanPage, Failure> {
        match self.exchange(shard, |ticket| ShardMessage::ScanRequest { ticket, scan }).await? {
            Answer::Scan(result) => result,
            Answer::Operation(_) | Answer::Atomic(_) => Err(mismatched_answer(shard)),
        }
    }

    /// Sends the message `message(ticket)` to shard `owner` and waits for the answer filed
    /// under that ticket.
    async fn exchange(
        &self,
        owner: u32,
        message: impl FnOnce(u64) -> ShardMessage,
    ) -> Result<Answer, Failure> {
        if self.pending() >= self.forward_in_flight_max {
            return Err(Failure::new(
                ErrorCode::Overloaded,
                format!(
                    "shard {} has {} requests forwarded to other shards (forward_in_flight_max); retry later",
                    self.shard_id, self.forward_in_flight_max
                ),
            ));
        }
        let peer = self.peer_of_shard[owner as usize];
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        let (sender, receiver) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(ticket, sender);
        let _guard = PendingTicket { forwarding: self, ticket };
        if self.senders.try_send_to(peer, message(ticket)).is_err() {
            return Err(Failure::new(
                ErrorCode::Overloaded,
                format!("the channel from shard {} to shard {owner} is full; retry later", self.shard_id),
            ));
        }
        receiver
            .recv()
            .await
            .ok_or_else(|| Failure::new(ErrorCode::Unavailable, format!("shard {owner} did not answer")))
    }

    /// Starts one task per peer draining what that peer sends: operations are executed through
    /// `cluster` (on its replicas when keys have several copies, else on this shard's handler),
    /// scans on `handler`; replies wake the waiting request. The tasks end when the peer closes
    /// its side.
    pub fn start_receivers(
        self: &Rc<Self>,
        mut receivers: Receivers<ShardMessage>,
        handler: Rc<Handler<DmaDisk>>,
        cluster: Rc<Cluster>,
    ) -> Vec<JoinHandle<()>> {
        receivers
            .streams()
            .into_iter()
            .map(|(peer, receiver)| {
                let forwarding = self.clone();
                let handler = handler.clone();
                let cluster = cluster.clone();
                let span = tracing::debug_span!("mesh_receiver", shard = self.shard_id, peer);
                glommio::spawn_local(
                    async move {
                        while let Some(message) = receiver.recv().await {
                            forwarding.on_message(peer, message, &handler, &cluster);
                        }
                        debug!("peer closed its channel");
                    }
                    .instrument(span),
                )
                .detach()
            })
            .collect()
    }

    fn on_message(
        self: &Rc<Self>,
        peer: usize,
        message: ShardMessage,
        handler: &Rc<Handler<DmaDisk>>,
        cluster: &Rc<Cluster>,
    ) {
        match message {
            ShardMessage::Request { ticket, operation, consistency } => {
                let forwarding = self.clone();
                let cluster = cluster.clone();
                let span = tracing::debug_span!("forwarded", shard = self.shard_id, peer, ticket);
                glommio::spawn_local(
                    async move {
                        let result = cluster.execute_owned(operation, consistency).await;
                        forwarding.reply(peer, ShardMessage::Reply { ticket, result }).await;
                    }
                    .instrument(span),
                )
                .detach();
            }
            ShardMessage::ScanRequest { ticket, scan } => {
                let forwarding = self.clone();
                let handler = handler.clone();
                let span = tracing::debug_span!("forwarded_scan", shard = self.shard_id, peer, ticket);
                glommio::spawn_local(
                    async move {
                        let result = handler.scan_in_queue(scan).await;
                        forwarding.reply(peer, ShardMessage::ScanReply { ticket, result }).await;
                    }
                    .instrument(span),
                )
                .detach();
            }
            ShardMessage::AtomicRequest { ticket, pairs, only_if_absent } => {
                let forwarding = self.clone();
                let handler = handler.clone();
                let cluster = cluster.clone();
                let span = tracing::debug_span!("forwarded_atomic", shard = self.shard_id, peer, ticket);
                glommio::spawn_local(
                    async move {
                        // Keys may have gained copies since the sender looked.
                        let result = if cluster.is_replicated() {
                            Ok(None)
                        } else {
                            handler.write_atomically(pairs, only_if_absent).await.map(Some)
                        };
                        forwarding.reply(peer, ShardMessage::AtomicReply { ticket, result }).await;
                    }
                    .instrument(span),
                )
                .detach();
            }
            ShardMessage::Reply { ticket, result } => self.on_answer(ticket, Answer::Operation(result)),
            ShardMessage::AtomicReply { ticket, result } => self.on_answer(ticket, Answer::Atomic(result)),
            ShardMessage::ScanReply { ticket, result } => self.on_answer(ticket, Answer::Scan(result)),
        }
    }

    /// Sends a reply to `peer`, waiting for room; the peer's receive task drains without waiting.
    async fn reply(&self, peer: usize, message: ShardMessage) {
        if self.senders.send_to(peer, message).await.is_err() {
            debug!("the requesting shard closed its channel before the reply");
        }
    }

    /// Wakes the request waiting on `ticket`.
    fn on_answer(&self, ticket: u64, answer: Answer) {
        // Absent when the waiting request was dropped; the answer has no one to go to.
        if let Some(waiting) = self.pending.borrow_mut().remove(&ticket) {
            let _ = waiting.try_send(answer);
        }
    }

    /// Closes this shard's sending side: peers' receive tasks end once they have drained it.
    pub fn close(&self) {
        self.senders.close();
    }
}

/// The failure for a peer that answered a ticket with the wrong kind of reply: a bug.
fn mismatched_answer(shard: u32) -> Failure {
    Failure::new(ErrorCode::Internal, format!("shard {shard} answered with a reply of the wrong kind"))
}
