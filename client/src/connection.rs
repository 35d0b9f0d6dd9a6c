//! [`Connection`]: the sans-IO core of one client connection. Every adapter drives one of these
//! per socket; none of them encodes, decodes or matches anything itself.
//!
//! ```text
//!  send(command) ──validate, id, encode──▶ outbox ──take_output──▶ adapter writes to the socket
//!  adapter reads the socket ──on_received──▶ FrameDecoder ──poll_reply──▶ (id, Reply)
//!  abandon(id): a timed-out request keeps its slot until its late reply arrives and is dropped
//! ```
//!
//! A request's id names its slot: the low [`SLOT_BITS`] bits are the slot's index in a table,
//! the high bits a count of requests sent, so an id never repeats on a connection and a reply
//! finds its request with one bounds-checked index and one comparison, no hashing.

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use ringkv_wire::{
    encode_operation_into, encode_request_ref_into, Command, Consistency, Credentials, FrameDecoder, Frames,
    OperationRef, Reply, RequestRef, Response, WireError, CONNECTION_ERROR_ID,
};

use crate::command::Outgoing;

use crate::error::Error;
use crate::options::ClientOptions;

/// Default bound on requests awaiting an answer on one connection; matches the server's
/// default per-connection window, so a client left at its defaults is never answered
/// "overloaded" for pipelining alone.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 1024;

/// One connection's protocol state: request ids, encoding, response matching, and the bound on
/// requests in flight. No I/O: bytes to send come out of [`Connection::take_output`], bytes
/// received go into [`Connection::on_received`].
pub struct Connection {
    builder: FlatBufferBuilder<'static>,
    decoder: FrameDecoder,
    /// Replies taken from the decoder together, and where the next one to read starts in them:
    /// taking a read's frames at once and reading each in place costs one cut of the buffer per
    /// read instead of one per reply.
    received: Option<(Frames, usize)>,
    outbox: BytesMut,
    /// Requests sent, counted: the high bits of the next id.
    sequence: u64,
    /// Every slot ever used, by index.
    slots: Vec<Slot>,
    /// Indexes of the free slots, reused last freed first.
    free: Vec<u32>,
    /// Slots whose reply someone is waiting for.
    awaited: usize,
    /// Slots whose caller gave up (timed out). The server still works on them, so they keep
    /// counting against `in_flight_max` until their reply arrives and is dropped.
    abandoned: usize,
    in_flight_max: usize,
    /// The id of the `Auth` request sent first, until its reply arrives.
    authenticating: Option<u64>,
}

/// Bits of a request id that index its slot; the rest count requests.
pub const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// The slot index of the `Auth` request's id, which takes no slot.
const AUTH_SLOT: u64 = SLOT_MASK;
/// Most slots a connection uses: requests in flight plus replies not yet released.
const SLOTS_MAX: usize = AUTH_SLOT as usize;

/// One request slot: the id of the request it holds and where that request stands.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    state: SlotState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Sent; someone waits for the reply.
    Awaited,
    /// Sent; the caller gave up, and the reply is dropped when it comes.
    Abandoned,
    /// Answered through [`Connection::poll_reply_held`]: no longer in flight, but the slot (and
    /// its index) stays taken until [`Connection::release`].
    Held,
}

/// The index of the slot the request `id` names.
pub fn slot_index(id: u64) -> usize {
    (id & SLOT_MASK) as usize
}

impl Connection {
    /// A fresh connection state allowing `in_flight_max` unanswered requests (at least one).
    pub fn new(in_flight_max: usize) -> Self {
        Connection {
            builder: FlatBufferBuilder::new(),
            decoder: FrameDecoder::new(),
            received: None,
            outbox: BytesMut::new(),
            sequence: 1,
            slots: Vec::new(),
            free: Vec::new(),
            awaited: 0,
            abandoned: 0,
            in_flight_max: in_flight_max.clamp(1, SLOTS_MAX),
            authenticating: None,
        }
    }

    /// The next id for a request in slot `index`; ids never repeat and are never 0.
    fn next_id(&mut self, index: u64) -> u64 {
        let id = (self.sequence << SLOT_BITS) | index;
        self.sequence += 1;
        if self.sequence >> (64 - SLOT_BITS) != 0 {
            // After 2^40 requests: start the count again.
            self.sequence = 1;
        }
        debug_assert_ne!(id, CONNECTION_ERROR_ID);
        id
    }

    /// The slot holding request `id`, if it still does.
    fn slot(&mut self, id: u64) -> Option<&mut Slot> {
        self.slots.get_mut(slot_index(id)).filter(|slot| slot.id == id && slot.state != SlotState::Free)
    }

    fn free_slot(&mut self, index: usize) {
        self.slots[index].state = SlotState::Free;
        self.free.push(index as u32);
    }

    /// A fresh connection as `options` ask: their in-flight bound, and when they carry
    /// credentials, authenticated (see [`Connection::authenticate`]).
    pub fn for_options(options: &ClientOptions) -> Self {
        let mut connection = Connection::new(options.in_flight_max);
        if let Some(credentials) = &options.credentials {
            // Credentials beyond the protocol's length limits are not sent; the server then
            // answers every request `Unauthenticated`, which says what to fix.
            let _ = connection.authenticate(credentials);
        }
        connection
    }

    /// Queues an `Auth` request carrying `credentials` ahead of everything sent after it. The
    /// server reads a connection's requests in order, so requests may follow at once, without
    /// waiting for the answer. Its reply is taken by [`Connection::poll_reply`] and never returned:
    /// a refusal (`AuthFailed`, after which the server closes the connection) comes out of it as
    /// [`Error::Server`]. Does not count against `in_flight_max`. Fails with [`Error::Limit`],
    /// sending nothing, when the user name or password breaks the protocol's length limits.
    pub fn authenticate(&mut self, credentials: &Credentials) -> Result<(), Error> {
        let command = Command::Auth(credentials.clone());
        let id = (self.sequence << SLOT_BITS) | AUTH_SLOT;
        let request = RequestRef { consistency: None, id, command: &command };
        encode_request_ref_into(&mut self.builder, request, &mut self.outbox).map_err(Error::Limit)?;
        self.next_id(AUTH_SLOT);
        self.authenticating = Some(request.id);
        Ok(())
    }

    /// Requests sent and not yet answered, abandoned ones included.
    pub fn in_flight(&self) -> usize {
        self.awaited + self.abandoned
    }

    /// The bound on [`Connection::in_flight`].
    pub fn in_flight_max(&self) -> usize {
        self.in_flight_max
    }

    /// Whether another request may be sent now: fewer than `in_flight_max` in flight, and a
    /// slot to put it in (held replies take slots too).
    pub fn has_room(&self) -> bool {
        self.in_flight() < self.in_flight_max && (!self.free.is_empty() || self.slots.len() < SLOTS_MAX)
    }

    /// Checks `command` against every limit the server enforces, encodes it with a fresh id
    /// into the outbox, and returns the id its reply will carry.
    ///
    /// Fails with [`Error::Limit`] (the server's own error for that limit) without sending
    /// anything, or with [`Error::InFlightFull`] when `in_flight_max` requests are unanswered.
    pub fn send(&mut self, command: &Command) -> Result<u64, Error> {
        self.send_at(command, None)
    }

    /// [`Connection::send`], asking `consistency` of the replicas (`None`: the node's
    /// configured level).
    pub fn send_at(&mut self, command: &Command, consistency: Option<Consistency>) -> Result<u64, Error> {
        let (index, id) = self.peek_slot();
        let request = RequestRef { consistency, id, command };
        request.validate().map_err(Error::Limit)?;
        if !self.has_room() {
            return Err(Error::InFlightFull { in_flight_max: self.in_flight_max });
        }
        encode_request_ref_into(&mut self.builder, request, &mut self.outbox).map_err(Error::Limit)?;
        Ok(self.sent(index))
    }

    /// [`Connection::send_at`] for one get, put or delete borrowed from the caller's bytes: the
    /// key and value are copied once, into the outbox.
    pub fn send_operation_at(
        &mut self,
        operation: OperationRef<'_>,
        consistency: Option<Consistency>,
    ) -> Result<u64, Error> {
        operation.validate().map_err(Error::Limit)?;
        if !self.has_room() {
            return Err(Error::InFlightFull { in_flight_max: self.in_flight_max });
        }
        let (index, id) = self.peek_slot();
        encode_operation_into(id, operation, consistency, &mut self.outbox).map_err(Error::Limit)?;
        Ok(self.sent(index))
    }

    /// [`Connection::send_at`] or [`Connection::send_operation_at`], whichever `outgoing` is.
    pub fn send_outgoing(
        &mut self,
        outgoing: Outgoing<'_>,
        consistency: Option<Consistency>,
    ) -> Result<u64, Error> {
        match outgoing {
            Outgoing::Command(command) => self.send_at(command, consistency),
            Outgoing::Operation(operation) => self.send_operation_at(operation, consistency),
        }
    }

    /// The slot the next request will take and the id it will carry, taking nothing yet.
    fn peek_slot(&self) -> (usize, u64) {
        let index = self.free.last().map_or(self.slots.len(), |&index| index as usize);
        (index, (self.sequence << SLOT_BITS) | index as u64)
    }

    /// Records that the request peeked at slot `index` went into the outbox, and returns its id.
    fn sent(&mut self, index: usize) -> u64 {
        // Ids never repeat on one connection, so a late reply can never be taken for another
        // request's; 0 is reserved for connection-level errors.
        let id = self.next_id(index as u64);
        if index == self.slots.len() {
            self.slots.push(Slot { id, state: SlotState::Awaited });
        } else {
            let taken = self.free.pop();
            debug_assert_eq!(taken, Some(index as u32));
            self.slots[index] = Slot { id, state: SlotState::Awaited };
        }
        self.awaited += 1;
        id
    }

    /// Encoded requests not yet handed to the socket, all of them as one buffer so that a burst
    /// of requests costs one write.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.outbox.is_empty() {
            return None;
        }
        Some(self.outbox.split().freeze())
    }

    /// Bytes the socket returned.
    pub fn on_received(&mut self, bytes: &[u8]) {
        self.decoder.extend_from_slice(bytes);
    }

    /// The next reply to a request someone waits for, in the order the server sent them (which
    /// need not be the order of the requests). `Ok(None)` means more bytes are needed. The
    /// request's slot is free again.
    ///
    /// An error means the connection cannot go on and must be closed: the server broke the
    /// protocol, or reported a connection-level failure (reply id 0).
    pub fn poll_reply(&mut self) -> Result<Option<(u64, Reply)>, Error> {
        let reply = self.poll_reply_held()?;
        if let Some((id, _)) = &reply {
            self.release(*id);
        }
        Ok(reply)
    }

    /// The next reply received, in the order the server sent them; `Ok(None)` until more bytes
    /// arrive.
    fn next_response(&mut self) -> Result<Option<Response>, Error> {
        loop {
            if let Some((frames, at)) = &mut self.received {
                if let Some(range) = frames.ranges_from(*at).next() {
                    *at = range.end;
                    return frames.response(range).map(Some).map_err(Error::Protocol);
                }
                self.received = None;
            }
            match self.decoder.take_frames().map_err(Error::Protocol)? {
                Some(frames) => self.received = Some((frames, 0)),
                None => return Ok(None),
            }
        }
    }

    /// [`Connection::poll_reply`], keeping the request's slot (and so its index, see
    /// [`slot_index`]) taken until [`Connection::release`]: a caller keeping per-request state
    /// in a table of its own, by the same index, keeps it until it is done with it.
    pub fn poll_reply_held(&mut self) -> Result<Option<(u64, Reply)>, Error> {
        loop {
            let Some(response) = self.next_response()? else {
                return Ok(None);
            };
            if response.id == CONNECTION_ERROR_ID {
                return Err(match response.reply {
                    Reply::Failed(failure) => Error::Server(failure),
                    other => Error::Protocol(WireError::Malformed {
                        reason: format!("reply with the reserved id 0 is not an error: {other:?}"),
                    }),
                });
            }
            if self.authenticating == Some(response.id) {
                self.authenticating = None;
                match response.reply {
                    Reply::Authenticated => continue,
                    Reply::Failed(failure) => return Err(Error::Server(failure)),
                    other => {
                        return Err(Error::Protocol(WireError::Malformed {
                            reason: format!("reply to Auth is neither Authenticated nor an error: {other:?}"),
                        }))
                    }
                }
            }
            match self.slot(response.id).map(|slot| slot.state) {
                Some(SlotState::Awaited) => {
                    self.awaited -= 1;
                    self.slots[slot_index(response.id)].state = SlotState::Held;
                    return Ok(Some((response.id, response.reply)));
                }
                Some(SlotState::Abandoned) => {
                    // The caller timed out; the reply frees its slot and nothing else.
                    self.abandoned -= 1;
                    self.free_slot(slot_index(response.id));
                    continue;
                }
                Some(SlotState::Held | SlotState::Free) | None => {
                    return Err(Error::Protocol(WireError::Malformed {
                        reason: format!("reply to request {} that was never sent", response.id),
                    }));
                }
            }
        }
    }

    /// Frees the slot of request `id`, answered through [`Connection::poll_reply_held`].
    pub fn release(&mut self, id: u64) {
        if let Some(slot) = self.slot(id).filter(|slot| slot.state == SlotState::Held) {
            slot.state = SlotState::Free;
            self.free.push(slot_index(id) as u32);
        }
    }

    /// The caller is done with request `id`, whatever became of it: an answered request's slot
    /// is freed (as [`Connection::release`]); one still unanswered is abandoned (as
    /// [`Connection::abandon`]).
    pub fn forget(&mut self, id: u64) {
        match self.slot(id).map(|slot| slot.state) {
            Some(SlotState::Held) => self.release(id),
            Some(SlotState::Awaited) => self.abandon(id),
            Some(SlotState::Abandoned | SlotState::Free) | None => {}
        }
    }

    /// The caller no longer waits for request `id` (it timed out or was cancelled).
    pub fn abandon(&mut self, id: u64) {
        if let Some(slot) = self.slot(id).filter(|slot| slot.state == SlotState::Awaited) {
            slot.state = SlotState::Abandoned;
            self.awaited -= 1;
            self.abandoned += 1;
        }
    }

    /// The socket closed: every awaited request is lost. Returns their ids.
    pub fn on_closed(&mut self) -> Vec<u64> {
        self.authenticating = None;
        self.outbox.clear();
        let awaited =
            self.slots.iter().filter(|slot| slot.state == SlotState::Awaited).map(|slot| slot.id).collect();
        self.slots.clear();
        self.free.clear();
        self.awaited = 0;
        self.abandoned = 0;
        awaited
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ringkv_wire::{encode_response, ErrorCode, Operation, Outcome, Response};

    use super::*;

    fn get(key: &str) -> Command {
        Command::Single(Operation::Get { key: Bytes::copy_from_slice(key.as_bytes()) })
    }

    fn response_frame(id: u64, reply: Reply) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        encode_response(&mut builder, &Response { id, reply }).unwrap().to_vec()
    }

    #[test]
    fn the_auth_reply_is_taken_and_a_refusal_fails_the_connection() {
        let mut connection = Connection::new(2);
        connection.authenticate(&Credentials::new("app", "secret")).unwrap();
        let get_id = connection.send(&get("k")).unwrap();
        let sent = connection.take_output().unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&sent);
        let auth = ringkv_wire::parse_request(&decoder.next_frame().unwrap().unwrap()).unwrap();
        assert_eq!(auth.command, Command::Auth(Credentials::new("app", "secret")), "Auth goes first");
        assert_eq!(connection.in_flight(), 1, "Auth does not count against in_flight_max");
        connection.on_received(&response_frame(auth.id, Reply::Authenticated));
        connection.on_received(&response_frame(get_id, Reply::Single(Outcome::NotFound)));
        assert_eq!(connection.poll_reply().unwrap(), Some((get_id, Reply::Single(Outcome::NotFound))));

        let mut refused = Connection::new(2);
        refused.authenticate(&Credentials::new("app", "wrong")).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&refused.take_output().unwrap());
        let auth = ringkv_wire::parse_request(&decoder.next_frame().unwrap().unwrap()).unwrap();
        let failure = ringkv_wire::Failure::new(ErrorCode::AuthFailed, "wrong user or password");
        refused.on_received(&response_frame(auth.id, Reply::Failed(failure.clone())));
        match refused.poll_reply() {
            Err(Error::Server(got)) => assert_eq!(got, failure),
            other => panic!("expected the refusal, got {other:?}"),
        }
    }

    #[test]
    fn replies_are_matched_by_id_in_any_order() {
        let mut connection = Connection::new(8);
        let first = connection.send(&get("a")).unwrap();
        let second = connection.send(&get("b")).unwrap();
        assert_ne!(first, second);
        assert!(connection.take_output().is_some());
        assert!(connection.take_output().is_none());
        let mut bytes = response_frame(second, Reply::Single(Outcome::NotFound));
        bytes.extend(response_frame(first, Reply::Pong));
        // Split mid-frame: the decoder waits for the rest.
        connection.on_received(&bytes[..5]);
        assert!(connection.poll_reply().unwrap().is_none());
        connection.on_received(&bytes[5..]);
        assert_eq!(connection.poll_reply().unwrap(), Some((second, Reply::Single(Outcome::NotFound))));
        assert_eq!(connection.poll_reply().unwrap(), Some((first, Reply::Pong)));
        assert_eq!(connection.in_flight(), 0);
    }

    #[test]
    fn the_consistency_asked_for_is_in_the_encoded_request() {
        let mut connection = Connection::new(8);
        let mut levels = vec![None];
        levels.extend(Consistency::ALL_LEVELS.map(Some));
        for level in levels {
            let id = connection.send_at(&get("a"), level).unwrap();
            let mut decoder = FrameDecoder::new();
            decoder.extend_from_slice(&connection.take_output().unwrap());
            let request = ringkv_wire::parse_request(&decoder.next_frame().unwrap().unwrap()).unwrap();
            assert_eq!((request.id, request.consistency), (id, level));
        }
    }

    #[test]
    fn limits_are_refused_before_anything_is_queued() {
        let mut connection = Connection::new(8);
        let error = connection.send(&get("")).unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::KeyEmpty));
        assert!(connection.take_output().is_none());
        assert_eq!(connection.in_flight(), 0);
    }

    #[test]
    fn in_flight_is_bounded_and_abandoned_requests_keep_their_slot_until_answered() {
        let mut connection = Connection::new(2);
        let first = connection.send(&get("a")).unwrap();
        connection.send(&get("b")).unwrap();
        assert!(matches!(connection.send(&get("c")), Err(Error::InFlightFull { in_flight_max: 2 })));
        connection.abandon(first);
        assert!(!connection.has_room());
        connection.on_received(&response_frame(first, Reply::Pong));
        assert_eq!(connection.poll_reply().unwrap(), None, "an abandoned reply is dropped");
        assert!(connection.has_room());
    }

    #[test]
    fn slots_are_reused_only_once_free_and_ids_never_repeat() {
        let mut connection = Connection::new(2);
        let first = connection.send(&get("a")).unwrap();
        let second = connection.send(&get("b")).unwrap();
        assert_ne!(slot_index(first), slot_index(second));
        // An abandoned request keeps its slot until its reply comes.
        connection.abandon(first);
        connection.on_received(&response_frame(second, Reply::Pong));
        assert_eq!(connection.poll_reply_held().unwrap(), Some((second, Reply::Pong)));
        // A held reply keeps its slot too, though it no longer counts as in flight.
        assert_eq!(connection.in_flight(), 1);
        let third = connection.send(&get("c")).unwrap();
        assert!(![slot_index(first), slot_index(second)].contains(&slot_index(third)));
        connection.release(second);
        let fourth = connection.send_at(&get("d"), None).unwrap_err();
        assert!(matches!(fourth, Error::InFlightFull { in_flight_max: 2 }), "abandoned and third in flight");
        connection.on_received(&response_frame(first, Reply::Pong));
        assert_eq!(connection.poll_reply().unwrap(), None, "the late reply frees the slot, and is dropped");
        let fifth = connection.send(&get("e")).unwrap();
        let mut ids = vec![first, second, third, fifth];
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4, "ids never repeat, though slots do");
        // A second reply to a request already answered names no request of ours.
        connection.on_received(&response_frame(second, Reply::Pong));
        assert!(matches!(connection.poll_reply(), Err(Error::Protocol(_))));
    }

    #[test]
    fn thousands_of_requests_in_any_order_keep_the_slot_count_at_the_window() {
        let mut connection = Connection::new(64);
        let mut in_flight = std::collections::VecDeque::new();
        let mut seen = std::collections::HashSet::new();
        for round in 0..5000u64 {
            while connection.has_room() {
                let id = connection.send(&get("k")).unwrap();
                assert!(seen.insert(id), "id {id} repeated");
                in_flight.push_back(id);
            }
            // Answer from the front or the back, so slots free out of order.
            let id = if round % 3 == 0 { in_flight.pop_back() } else { in_flight.pop_front() }.unwrap();
            connection.on_received(&response_frame(id, Reply::Pong));
            assert_eq!(connection.poll_reply().unwrap(), Some((id, Reply::Pong)));
        }
        assert!(connection.slots.len() <= 64, "{} slots", connection.slots.len());
    }

    #[test]
    fn a_reply_nobody_asked_for_is_a_protocol_error() {
        let mut connection = Connection::new(2);
        connection.on_received(&response_frame(99, Reply::Pong));
        assert!(matches!(connection.poll_reply(), Err(Error::Protocol(_))));
    }

    #[test]
    fn a_connection_level_error_ends_the_connection() {
        let mut connection = Connection::new(2);
        let id = connection.send(&get("a")).unwrap();
        let failure = ringkv_wire::Failure::new(ErrorCode::Malformed, "bad frame");
        connection.on_received(&response_frame(CONNECTION_ERROR_ID, Reply::Failed(failure)));
        assert!(matches!(connection.poll_reply(), Err(Error::Server(_))));
        assert_eq!(connection.on_closed(), vec![id]);
    }
}
