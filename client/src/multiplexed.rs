//! [`SharedConnection`]: one [`Connection`] shared by the tasks that send requests on it and
//! the reader and writer tasks an async adapter runs for its socket. Runtime-agnostic: the
//! tokio and glommio adapters differ only in how they read, write and spawn.
//!
//! ```text
//!  caller ─start(command)─▶ Connection.send ─notify─▶ writer task: take_output ─▶ socket
//!  socket ─▶ reader task: on_received ─▶ Connection.poll_reply_held ─▶ slots[index] ─wake─▶ caller
//!  deadline task: every timeout/8 while requests are pending ─▶ overdue slots ─wake─▶ caller
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use ringkv_wire::{Consistency, Failure, Reply};

use crate::command::Outgoing;

use crate::connection::{slot_index, Connection};
use crate::error::Error;
use crate::options::ClientOptions;

/// How many times per request timeout the deadline task looks for overdue requests: a request
/// fails between `timeout` and `timeout * (1 + 1 / DEADLINE_CHECKS_PER_TIMEOUT)` after it was
/// sent.
const DEADLINE_CHECKS_PER_TIMEOUT: u32 = 8;
/// Rounds (checks) that must begin after a request's own round before it times out. A request
/// sent in round r went out at most one interval after round r began, and round r + k begins at
/// least k intervals after it; so at round r + 9 at least 8 intervals (the timeout) have passed.
const ROUNDS_TO_TIME_OUT: u64 = DEADLINE_CHECKS_PER_TIMEOUT as u64 + 1;
/// The deadline task checks at most this often, whatever the timeout.
const DEADLINE_CHECK_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// Public only because [`crate::asynchronous::Transport`] names it; unreachable from outside.
#[doc(hidden)]
pub struct SharedConnection {
    address: SocketAddr,
    /// How long a request may wait for its reply (see [`SharedConnection::expire_overdue`]).
    request_timeout: Duration,
    state: Mutex<State>,
    /// Set once `State::closed` is: read by every request without taking the lock.
    is_closed: AtomicBool,
    /// Signalled when a request slot frees up or the connection closes.
    room: Event,
    /// Signalled when requests are queued for the writer or the connection closes.
    output: Event,
    /// Signalled when a request is sent while none was pending, or the connection closes:
    /// the deadline task resumes its checks.
    pending: Event,
}

struct State {
    connection: Connection,
    /// Every request sent and not yet picked up by its caller (or abandoned), at the index of
    /// the connection's slot it holds (see [`slot_index`]): the connection keeps that slot taken
    /// until the caller is done with it, so an index never names two requests at once.
    slots: Vec<Slot>,
    /// How many of `slots` hold a request.
    occupied: usize,
    /// Counts the deadline task's checks: a slot remembers the round it was sent in, so no
    /// request reads the clock.
    round: u64,
    /// Why the connection closed, once it has.
    closed: Option<String>,
    /// The server's connection-level refusal that closed it (a failed authentication), which
    /// every caller then gets instead of [`Error::ConnectionLost`].
    refusal: Option<Failure>,
    /// The writer found nothing to write and waits on `output`: the next request notifies it.
    /// Set and cleared under this lock, so a request queued while the writer is busy skips the
    /// notification (a full memory fence each) that it would not need.
    writer_waiting: bool,
}

/// One request's progress.
struct Slot {
    /// The request's id; meaningless while the slot is vacant.
    id: u64,
    /// The deadline task's round when the request was sent: it fails with [`Error::Timeout`]
    /// once `ROUNDS_TO_TIME_OUT` more rounds have begun with no reply.
    sent_round: u64,
    progress: Progress,
}

enum Progress {
    /// No request holds the slot.
    Vacant,
    /// No reply yet; the task to wake when one comes, once the caller has polled.
    Waiting(Option<Waker>),
    /// The reply, for the caller to pick up.
    Replied(Reply),
    /// The deadline passed first.
    TimedOut,
}

/// What [`SharedConnection::try_start`] did.
pub(crate) enum Started {
    /// The request is queued; await its reply.
    Sent(ReplyFuture),
    /// `in_flight_max` requests are unanswered; nothing was sent.
    Full,
}

impl SharedConnection {
    pub(crate) fn new(address: SocketAddr, options: &ClientOptions) -> Arc<Self> {
        Arc::new(SharedConnection {
            address,
            request_timeout: options.request_timeout,
            state: Mutex::new(State {
                connection: Connection::for_options(options),
                slots: Vec::new(),
                occupied: 0,
                round: 0,
                closed: None,
                refusal: None,
                writer_waiting: false,
            }),
            is_closed: AtomicBool::new(false),
            room: Event::new(),
            output: Event::new(),
            pending: Event::new(),
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
        self.is_closed.load(Ordering::Acquire)
    }

    /// Queues `command` for the writer if fewer than `in_flight_max` requests are unanswered,
    /// without waiting; its reply is due within the request timeout. Takes the connection by
    /// value: a request's reply future holds it, and the caller's reference moves there
    /// instead of being counted up and down once more.
    pub(crate) fn try_start(
        self: Arc<Self>,
        outgoing: Outgoing<'_>,
        consistency: Option<Consistency>,
    ) -> Result<Started, Error> {
        self.try_start_waking(outgoing, consistency, None)
    }

    /// [`SharedConnection::try_start`], with the waker of the task that will await the reply
    /// registered at once: under the same lock as the request's queueing, so the reply
    /// future's first poll has nothing to register and returns without taking the lock. That
    /// task must be the one to poll the reply future first.
    pub(crate) fn try_start_waking(
        self: Arc<Self>,
        outgoing: Outgoing<'_>,
        consistency: Option<Consistency>,
        waker: Option<&Waker>,
    ) -> Result<Started, Error> {
        let mut state = self.state();
        if let Some(failure) = &state.refusal {
            return Err(Error::Server(failure.clone()));
        }
        if let Some(reason) = &state.closed {
            return Err(self.lost(reason));
        }
        if !state.connection.has_room() {
            return Ok(Started::Full);
        }
        let id = state.connection.send_outgoing(outgoing, consistency)?;
        let was_idle = state.occupied == 0;
        let sent_round = state.round;
        let index = slot_index(id);
        if index >= state.slots.len() {
            state.slots.resize_with(index + 1, || Slot { id: 0, sent_round: 0, progress: Progress::Vacant });
        }
        state.slots[index] = Slot { id, sent_round, progress: Progress::Waiting(waker.cloned()) };
        state.occupied += 1;
        let wake_writer = std::mem::take(&mut state.writer_waiting);
        drop(state);
        if wake_writer {
            self.output.notify(1);
        }
        if was_idle {
            self.pending.notify(1);
        }
        Ok(Started::Sent(ReplyFuture { shared: self, id, finished: false, registered: waker.is_some() }))
    }

    /// [`SharedConnection::try_start`], waiting while `in_flight_max` requests are unanswered.
    /// Dropping the returned future (a timeout) abandons the request.
    pub(crate) async fn start(
        self: &Arc<Self>,
        outgoing: Outgoing<'_>,
        consistency: Option<Consistency>,
    ) -> Result<ReplyFuture, Error> {
        loop {
            let listener = self.room.listen();
            if let Started::Sent(reply) = Arc::clone(self).try_start(outgoing, consistency)? {
                return Ok(reply);
            }
            listener.await;
        }
    }

    /// Reader side: bytes from the socket. Wakes the callers whose replies completed.
    pub(crate) fn on_received(&self, bytes: &[u8]) {
        let mut state = self.state();
        state.connection.on_received(bytes);
        let mut answered = false;
        loop {
            match state.connection.poll_reply_held() {
                Ok(Some((id, reply))) => {
                    answered = true;
                    let Some(slot) = state.slot(id) else {
                        // Not a request of ours (cannot happen): free the connection's slot.
                        state.connection.release(id);
                        continue;
                    };
                    // A request already timed out stays so: its caller has been told.
                    if let Progress::Waiting(waker) = &mut slot.progress {
                        let waker = waker.take();
                        slot.progress = Progress::Replied(reply);
                        if let Some(waker) = waker {
                            waker.wake();
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    if let Error::Server(failure) = &error {
                        state.refusal = Some(failure.clone());
                    }
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
            // The listener lives in this future, not on the heap; it is registered before the
            // state is looked at, so a request queued in between is not missed.
            event_listener::listener!(self.output => listener);
            {
                let mut state = self.state();
                if state.closed.is_some() {
                    return None;
                }
                if let Some(bytes) = state.connection.take_output() {
                    return Some(bytes);
                }
                state.writer_waiting = true;
            }
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
        self.is_closed.store(true, Ordering::Release);
        state.connection.on_closed();
        let wakers: Vec<Waker> = state
            .slots
            .iter_mut()
            .filter_map(|slot| match &mut slot.progress {
                Progress::Waiting(waker) => waker.take(),
                Progress::Vacant | Progress::Replied(_) | Progress::TimedOut => None,
            })
            .collect();
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
        self.room.notify(usize::MAX);
        self.output.notify(usize::MAX);
        self.pending.notify(usize::MAX);
    }

    /// The deadline task of a connection, run by its adapter until the connection closes:
    /// fails each request still waiting after the request timeout with [`Error::Timeout`] and
    /// abandons it (a late reply is dropped). While requests are pending it checks every
    /// `request_timeout / 8` (at most once a millisecond), counting rounds; otherwise it sleeps
    /// until one is sent. One task per connection replaces a timer (and a clock read) per
    /// request, which cost a fifth of a pipelining caller's CPU.
    pub(crate) async fn expire_overdue<S: Future<Output = ()>>(
        self: Arc<Self>,
        sleep: impl Fn(Duration) -> S,
    ) {
        let interval = (self.request_timeout / DEADLINE_CHECKS_PER_TIMEOUT).max(DEADLINE_CHECK_INTERVAL_MIN);
        loop {
            let listener = self.pending.listen();
            let (idle, overdue) = {
                let mut state = self.state();
                if state.closed.is_some() {
                    return;
                }
                state.round += 1;
                let State { slots, round, .. } = &mut *state;
                let mut overdue = Vec::new();
                for slot in slots.iter_mut() {
                    if *round - slot.sent_round >= ROUNDS_TO_TIME_OUT {
                        if let Progress::Waiting(waker) = &mut slot.progress {
                            overdue.extend(waker.take());
                            // The connection's slot stays taken until the caller has seen
                            // the timeout (`State::vacate`), so its index is not reused meanwhile.
                            slot.progress = Progress::TimedOut;
                        }
                    }
                }
                (state.occupied == 0, overdue)
            };
            overdue.into_iter().for_each(Waker::wake);
            if idle {
                listener.await;
            } else {
                drop(listener);
                sleep(interval).await;
            }
        }
    }
}

/// The reply to one request. Dropped before it resolves, it abandons the request: the slot is
/// released when the late reply arrives.
pub(crate) struct ReplyFuture {
    shared: Arc<SharedConnection>,
    id: u64,
    finished: bool,
    /// The awaiting task's waker went into the slot with the request (see
    /// [`SharedConnection::try_start_waking`]) and no poll has run yet: the first poll has
    /// nothing to do. A reply that comes before it wakes that waker, and the next poll takes
    /// it.
    registered: bool,
}

impl State {
    /// The slot of request `id`, while it holds that request.
    fn slot(&mut self, id: u64) -> Option<&mut Slot> {
        self.slots
            .get_mut(slot_index(id))
            .filter(|slot| slot.id == id && !matches!(slot.progress, Progress::Vacant))
    }

    /// Empties the slot of request `id` (which must hold it) and returns its progress. The
    /// connection's slot goes with it: freed if answered, else abandoned until the late reply
    /// frees it. Only then may the index name another request.
    fn vacate(&mut self, id: u64) -> Progress {
        let slot = &mut self.slots[slot_index(id)];
        let progress = std::mem::replace(&mut slot.progress, Progress::Vacant);
        self.occupied -= 1;
        self.connection.forget(id);
        progress
    }
}

impl Future for ReplyFuture {
    type Output = Result<Reply, Error>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        if std::mem::take(&mut self.registered) {
            return Poll::Pending;
        }
        let id = self.id;
        let mut state = self.shared.state();
        let open = state.closed.is_none();
        let Some(slot) = state.slot(id) else {
            // A slot lives until its future finishes or is dropped; answer sanely regardless.
            drop(state);
            self.finished = true;
            return Poll::Ready(Err(self.shared.lost("the request's state was lost")));
        };
        let outcome = match &mut slot.progress {
            Progress::Replied(_) | Progress::TimedOut => match state.vacate(id) {
                Progress::Replied(reply) => Ok(reply),
                _ => Err(Error::Timeout { timeout: self.shared.request_timeout }),
            },
            Progress::Waiting(waker) if open => {
                match waker {
                    Some(waker) if waker.will_wake(context.waker()) => {}
                    _ => *waker = Some(context.waker().clone()),
                }
                return Poll::Pending;
            }
            Progress::Waiting(_) | Progress::Vacant => {
                state.vacate(id);
                match &state.refusal {
                    Some(failure) => Err(Error::Server(failure.clone())),
                    None => Err(self.shared.lost(state.closed.as_deref().unwrap_or_default())),
                }
            }
        };
        drop(state);
        self.finished = true;
        Poll::Ready(outcome)
    }
}

impl Drop for ReplyFuture {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.shared.state();
        if state.slot(self.id).is_some() {
            state.vacate(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use flatbuffers::FlatBufferBuilder;
    use ringkv_wire::{encode_response, OperationRef, Outcome, Reply, Response};

    use super::*;

    fn reply_frame(id: u64) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        encode_response(&mut builder, &Response { id, reply: Reply::Single(Outcome::NotFound) })
            .unwrap()
            .to_vec()
    }

    fn poll(future: &mut ReplyFuture) -> Poll<Result<Reply, Error>> {
        Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn start(shared: &Arc<SharedConnection>, key: &'static [u8]) -> ReplyFuture {
        let operation = OperationRef::Get { key };
        match Arc::clone(shared).try_start(Outgoing::Operation(operation), None).unwrap() {
            Started::Sent(reply) => reply,
            Started::Full => panic!("no room"),
        }
    }

    fn time_out_all(shared: &SharedConnection) {
        let mut state = shared.state();
        for slot in &mut state.slots {
            if let Progress::Waiting(_) = slot.progress {
                slot.progress = Progress::TimedOut;
            }
        }
    }

    /// A request timed out, and its late reply came before its caller looked: the slot must
    /// not go to another request until the caller has seen the timeout.
    #[test]
    fn a_timed_out_slot_is_not_reused_before_its_caller_sees_the_timeout() {
        let options = ClientOptions { in_flight_max: 1, ..ClientOptions::default() };
        let shared = SharedConnection::new("127.0.0.1:1".parse().unwrap(), &options);
        let mut first = start(&shared, b"a");
        assert!(poll(&mut first).is_pending());
        time_out_all(&shared);
        shared.on_received(&reply_frame(first.id));
        let mut second = start(&shared, b"b");
        assert_ne!(slot_index(first.id), slot_index(second.id), "the timed-out slot was reused");
        assert!(matches!(poll(&mut first), Poll::Ready(Err(Error::Timeout { .. }))));
        shared.on_received(&reply_frame(second.id));
        assert!(matches!(poll(&mut second), Poll::Ready(Ok(Reply::Single(Outcome::NotFound)))));
        let state = shared.state();
        assert_eq!(state.occupied, 0);
        assert_eq!(state.connection.in_flight(), 0);
        drop(state);
        // Both slots are free again: a third request takes one of them.
        let third = start(&shared, b"c");
        assert!([slot_index(first.id), slot_index(second.id)].contains(&slot_index(third.id)));
    }

    /// Counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A request started with its task's waker: the reply wakes that waker even when it comes
    /// before the first poll, the first poll registers nothing and waits, and the next takes
    /// the reply; a request closed before its first poll is told on the next one.
    #[test]
    fn a_waker_given_at_the_start_is_woken_by_the_reply() {
        let options = ClientOptions::default();
        let shared = SharedConnection::new("127.0.0.1:1".parse().unwrap(), &options);
        let counter = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let wakes = || counter.0.load(std::sync::atomic::Ordering::SeqCst);
        let start_waking = |key: &'static [u8]| {
            let operation = OperationRef::Get { key };
            match Arc::clone(&shared).try_start_waking(Outgoing::Operation(operation), None, Some(&waker)) {
                Ok(Started::Sent(reply)) => reply,
                _ => panic!("no room"),
            }
        };

        // The reply after the first poll.
        let mut reply = start_waking(b"a");
        assert!(poll(&mut reply).is_pending());
        assert_eq!(wakes(), 0);
        shared.on_received(&reply_frame(reply.id));
        assert_eq!(wakes(), 1, "the waker given at the start was not woken");
        assert!(matches!(poll(&mut reply), Poll::Ready(Ok(Reply::Single(Outcome::NotFound)))));

        // The reply before the first poll: woken, the first poll still waits for the wake's poll.
        let mut reply = start_waking(b"b");
        shared.on_received(&reply_frame(reply.id));
        assert_eq!(wakes(), 2);
        assert!(poll(&mut reply).is_pending());
        assert!(matches!(poll(&mut reply), Poll::Ready(Ok(_))));

        // Closed before the first poll: woken, and told on the poll after the first.
        let mut reply = start_waking(b"c");
        shared.close("test");
        assert_eq!(wakes(), 3);
        assert!(poll(&mut reply).is_pending());
        assert!(matches!(poll(&mut reply), Poll::Ready(Err(Error::ConnectionLost { .. }))));
        let state = shared.state();
        assert_eq!(state.occupied, 0);
    }

    /// Requests dropped before, during and after their reply leave no slot taken.
    #[test]
    fn dropped_requests_leave_no_slot_behind() {
        let options = ClientOptions { in_flight_max: 4, ..ClientOptions::default() };
        let shared = SharedConnection::new("127.0.0.1:1".parse().unwrap(), &options);
        for _ in 0..100 {
            let waiting = start(&shared, b"a");
            let replied = start(&shared, b"b");
            let timed_out = start(&shared, b"c");
            shared.on_received(&reply_frame(replied.id));
            time_out_all(&shared);
            let (waiting_id, timed_out_id) = (waiting.id, timed_out.id);
            drop((waiting, replied, timed_out));
            // The late replies of the abandoned ones free their slots on the connection.
            shared.on_received(&reply_frame(waiting_id));
            shared.on_received(&reply_frame(timed_out_id));
            let state = shared.state();
            assert_eq!(state.occupied, 0);
            assert_eq!(state.connection.in_flight(), 0);
        }
        assert!(shared.state().slots.len() <= 4);
    }
}
