//! [`SharedConnection`]: one [`Connection`] shared by the tasks that send requests on it and
//! the reader and writer tasks an async adapter runs for its socket. Runtime-agnostic: the
//! tokio and glommio adapters differ only in how they read, write and spawn.
//!
//! ```text
//!  caller ─start(command)─▶ Connection.send ─notify─▶ writer task: take_output ─▶ socket
//!  socket ─▶ reader task: on_received ─▶ Connection.poll_reply ─▶ replies[id] ─wake─▶ caller
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use event_listener::Event;
use ringkv_wire::{Command, Reply};

use crate::connection::Connection;
use crate::error::Error;

/// Public only because [`crate::asynchronous::Transport`] names it; unreachable from outside.
#[doc(hidden)]
pub struct SharedConnection {
    address: SocketAddr,
    state: Mutex<State>,
    /// Signalled when a request slot frees up or the connection closes.
    room: Event,
    /// Signalled when requests are queued for the writer or the connection closes.
    output: Event,
}

struct State {
    connection: Connection,
    /// Replies that arrived and whose caller has not picked them up yet.
    replies: HashMap<u64, Reply>,
    /// The task waiting for each request's reply.
    wakers: HashMap<u64, Waker>,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

impl SharedConnection {
    pub(crate) fn new(address: SocketAddr, in_flight_max: usize) -> Arc<Self> {
        Arc::new(SharedConnection {
            address,
            state: Mutex::new(State {
                connection: Connection::new(in_flight_max),
                replies: HashMap::new(),
                wakers: HashMap::new(),
                closed: None,
            }),
            room: Event::new(),
            output: Event::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lost(&self, reason: &str) -> Error {
        Error::ConnectionLost { address: self.address, reason: reason.to_owned() }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed.is_some()
    }

    /// Queues `command` for the writer, waiting while `in_flight_max` requests are unanswered,
    /// and returns a future for its reply. Dropping that future (a timeout) abandons the
    /// request.
    pub(crate) async fn start(self: &Arc<Self>, command: Command) -> Result<ReplyFuture, Error> {
        let mut command = Some(command);
        loop {
            let listener = {
                let mut state = self.state();
                if let Some(reason) = &state.closed {
                    return Err(self.lost(reason));
                }
                if state.connection.has_room() {
                    let id = state.connection.send(command.take().expect("sent once"))?;
                    drop(state);
                    self.output.notify(1);
                    return Ok(ReplyFuture { shared: Arc::clone(self), id, finished: false });
                }
                self.room.listen()
            };
            listener.await;
        }
    }

    /// Reader side: bytes from the socket. Wakes the callers whose replies completed.
    pub(crate) fn on_received(&self, bytes: &[u8]) {
        let mut state = self.state();
        state.connection.on_received(bytes);
        let mut answered = false;
        loop {
            match state.connection.poll_reply() {
                Ok(Some((id, reply))) => {
                    answered = true;
                    state.replies.insert(id, reply);
                    if let Some(waker) = state.wakers.remove(&id) {
                        waker.wake();
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    drop(state);
                    self.close(&error.to_string());
                    return;
                }
            }
        }
        drop(state);
        if answered {
            self.room.notify(usize::MAX);
        }
    }

    /// Writer side: the next bytes to write, or `None` once the connection is closed.
    pub(crate) async fn next_output(&self) -> Option<Bytes> {
        loop {
            let listener = {
                let mut state = self.state();
                if state.closed.is_some() {
                    return None;
                }
                if let Some(bytes) = state.connection.take_output() {
                    return Some(bytes);
                }
                self.output.listen()
            };
            listener.await;
        }
    }

    /// Ends the connection: every waiting caller gets [`Error::ConnectionLost`] and the
    /// reader and writer tasks stop.
    pub(crate) fn close(&self, reason: &str) {
        let mut state = self.state();
        if state.closed.is_some() {
            return;
        }
        state.closed = Some(reason.to_owned());
        state.connection.on_closed();
        let wakers: Vec<Waker> = state.wakers.drain().map(|(_, waker)| waker).collect();
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
        self.room.notify(usize::MAX);
        self.output.notify(usize::MAX);
    }
}

/// The reply to one request. Dropped before it resolves, it abandons the request: the slot is
/// released when the late reply arrives.
pub(crate) struct ReplyFuture {
    shared: Arc<SharedConnection>,
    id: u64,
    finished: bool,
}

impl Future for ReplyFuture {
    type Output = Result<Reply, Error>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        let mut state = self.shared.state();
        if let Some(reply) = state.replies.remove(&id) {
            drop(state);
            self.finished = true;
            return Poll::Ready(Ok(reply));
        }
        if let Some(reason) = state.closed.clone() {
            drop(state);
            self.finished = true;
            return Poll::Ready(Err(self.shared.lost(&reason)));
        }
        state.wakers.insert(id, context.waker().clone());
        Poll::Pending
    }
}

impl Drop for ReplyFuture {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.shared.state();
        state.wakers.remove(&self.id);
        if state.replies.remove(&self.id).is_none() {
            state.connection.abandon(self.id);
        }
    }
}
