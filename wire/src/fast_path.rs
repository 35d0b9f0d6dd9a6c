//! [`parse_single`] and [`parse_single_reply`]: the common requests (one Get, Put or Delete)
//! and replies (one value with or without its expiry, not found, written) read without the generic FlatBuffers verifier;
//! [`encode_single_into`]: those requests laid out by hand, without the builder.
//!
//! The generic verifier walks a table through trait objects and error-trace bookkeeping; on a
//! cached read it cost more than the rest of the server's path together, and as much again in
//! the client. This module checks the few fields these frames have directly, each at least as
//! strictly as the verifier would: the length prefix equals the frame's length, every offset
//! lands inside the frame and is aligned, every table's vtable and inline part fit, every field
//! lies inside its table, required fields are present, and the ranges read stay within the
//! verifier's apparent-size limit (counted as it counts). A field the schema knows but these
//! frames do not use must be absent, since the verifier would check it. Anything it does not
//! recognise or cannot vouch for (another command, a batch, an error reply, an unknown
//! consistency, an odd layout) returns `None`, and the generic path parses the frame and names
//! the error. It never refuses on its own.

use bytes::{Bytes, BytesMut};

use crate::consistency::Consistency;
use crate::generated as fb;
use crate::limits::{
    FRAME_BYTES_MAX, FRAME_LENGTH_PREFIX_BYTES, KEY_BYTES_MAX, VALUE_BYTES_MAX, VERIFIER_OPTIONS,
};
use crate::operation::{Operation, OperationRef};
use crate::outcome::Outcome;
use crate::request::{Command, RequestRef, SingleRequest};
use crate::response::{Reply, Response};

/// The frame's bytes with the reads the checks need; `None` for anything out of bounds.
pub(crate) struct Frame<'a> {
    bytes: &'a [u8],
    /// The verifier's apparent-size limit for this kind of frame.
    apparent_bytes_max: usize,
    /// Bytes of every range checked so far, counted as the verifier counts its apparent size
    /// (fields again inside their table), and bounded by the same limit.
    visited: usize,
}

impl<'a> Frame<'a> {
    /// The root table's position (after the length prefix).
    pub(crate) fn root(&mut self) -> Option<Table> {
        let root = self.follow(FRAME_LENGTH_PREFIX_BYTES)?;
        self.table(root)
    }

    /// A reader over `bytes`, when its length prefix agrees with its length and the limit (as
    /// [`crate::frame::verified_root`] requires first).
    fn new(bytes: &'a [u8]) -> Option<Self> {
        Self::with_limits(bytes, FRAME_BYTES_MAX, VERIFIER_OPTIONS.max_apparent_size)
    }

    /// [`Frame::new`] with another frame limit and apparent-size limit (the peer protocol's).
    pub(crate) fn with_limits(
        bytes: &'a [u8],
        frame_bytes_max: usize,
        apparent_bytes_max: usize,
    ) -> Option<Self> {
        let prefix = u32::from_le_bytes(*bytes.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>()?) as usize;
        if prefix != bytes.len() - FRAME_LENGTH_PREFIX_BYTES || prefix > frame_bytes_max {
            return None;
        }
        let mut frame = Frame { bytes, apparent_bytes_max, visited: FRAME_LENGTH_PREFIX_BYTES };
        frame.visit(4)?;
        Some(frame)
    }

    fn array<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.bytes.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    pub(crate) fn u8(&self, at: usize) -> Option<u8> {
        self.bytes.get(at).copied()
    }

    pub(crate) fn u16(&self, at: usize) -> Option<u16> {
        at.is_multiple_of(2).then_some(())?;
        self.array(at).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&self, at: usize) -> Option<u32> {
        at.is_multiple_of(4).then_some(())?;
        self.array(at).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&self, at: usize) -> Option<u64> {
        at.is_multiple_of(8).then_some(())?;
        self.array(at).map(u64::from_le_bytes)
    }

    fn visit(&mut self, bytes: usize) -> Option<()> {
        self.visited = self.visited.checked_add(bytes)?;
        (self.visited <= self.apparent_bytes_max).then_some(())
    }

    /// The position an unsigned offset stored at `at` points to.
    pub(crate) fn follow(&self, at: usize) -> Option<usize> {
        at.checked_add(self.u32(at)? as usize)
    }

    /// The table at `position`: checks its vtable and inline size.
    pub(crate) fn table(&mut self, position: usize) -> Option<Table> {
        let back = i32::from_le_bytes(self.array(position)?);
        position.is_multiple_of(4).then_some(())?;
        let vtable = usize::try_from(position as i64 - i64::from(back)).ok()?;
        let vtable_bytes = usize::from(self.u16(vtable)?);
        let inline_bytes = usize::from(self.u16(vtable + 2)?);
        if vtable_bytes < 4 || !vtable_bytes.is_multiple_of(2) || inline_bytes < 4 {
            return None;
        }
        self.bytes.get(vtable..vtable + vtable_bytes)?;
        self.bytes.get(position..position.checked_add(inline_bytes)?)?;
        self.visit(vtable_bytes + inline_bytes)?;
        Some(Table { position, vtable, vtable_bytes, inline_bytes })
    }

    /// Where field `slot` (a `VT_` constant) of `table` lies, if present; checks that its
    /// `size` bytes fit in the table's inline part.
    pub(crate) fn field(&mut self, table: &Table, slot: u16, size: usize) -> Option<Option<usize>> {
        let slot = usize::from(slot);
        if slot + 2 > table.vtable_bytes {
            return Some(None);
        }
        let offset = usize::from(self.u16(table.vtable + slot)?);
        if offset == 0 {
            return Some(None);
        }
        if offset < 4 || offset + size > table.inline_bytes {
            return None;
        }
        self.visit(size)?;
        Some(Some(table.position + offset))
    }

    /// A `[ubyte]` field, required: the slice of `frame` it holds.
    pub(crate) fn bytes_field(&mut self, frame: &Bytes, table: &Table, slot: u16) -> Option<Bytes> {
        self.optional_bytes_field(frame, table, slot)?
    }

    /// An optional `[ubyte]` field: `Some(None)` when it is absent.
    pub(crate) fn optional_bytes_field(
        &mut self,
        frame: &Bytes,
        table: &Table,
        slot: u16,
    ) -> Option<Option<Bytes>> {
        Some(self.optional_slice_field(table, slot)?.map(|bytes| frame.slice_ref(bytes)))
    }

    /// A `[ubyte]` field, required, borrowed from the frame.
    pub(crate) fn slice_field(&mut self, table: &Table, slot: u16) -> Option<&'a [u8]> {
        self.optional_slice_field(table, slot)?
    }

    /// An optional `[ubyte]` field, borrowed from the frame: `Some(None)` when it is absent.
    pub(crate) fn optional_slice_field(&mut self, table: &Table, slot: u16) -> Option<Option<&'a [u8]>> {
        let Some(at) = self.field(table, slot, 4)? else { return Some(None) };
        let vector = self.follow(at)?;
        let length = self.u32(vector)? as usize;
        let start = vector + 4;
        let end = start.checked_add(length)?;
        let bytes = self.bytes.get(start..end)?;
        self.visit(4 + length)?;
        Some(Some(bytes))
    }

    /// An optional `ulong` field.
    pub(crate) fn u64_field(&mut self, table: &Table, slot: u16) -> Option<Option<u64>> {
        match self.field(table, slot, 8)? {
            Some(at) => self.u64(at).map(Some),
            None => Some(None),
        }
    }
}

pub(crate) struct Table {
    position: usize,
    vtable: usize,
    vtable_bytes: usize,
    inline_bytes: usize,
}

/// The first 64 bytes of a single Get or Delete as [`encode_operation_into`] lays it out (the
/// native client's layout), but for the bytes [`KEY_ONLY_FIXED`] leaves out: the length
/// prefix, padding, the id, the command's type and consistency, and the key's length. The key
/// follows.
#[rustfmt::skip]
const KEY_ONLY_HEAD: [u8; 64] = [
    0, 0, 0, 0, // length prefix
    20, 0, 0, 0, // the request table, at 24
    12, 0, 18, 0, 8, 0, 16, 0, 4, 0, 17, 0, // its vtable: id, command type, command, consistency
    0, 0, 0, 0, // padding
    16, 0, 0, 0, // the request table: its vtable 16 bytes back
    24, 0, 0, 0, // the command's table, at 52
    0, 0, 0, 0, 0, 0, 0, 0, // id
    0, 0, 0, 0, // command type, consistency, padding
    6, 0, 8, 0, 4, 0, // the command's vtable: its key
    0, 0, // padding
    8, 0, 0, 0, // the command's table: its vtable 8 bytes back
    4, 0, 0, 0, // its key, at 60
    0, 0, 0, 0, // the key's length
];

/// Which bytes of [`KEY_ONLY_HEAD`] every hand-laid Get or Delete repeats.
const KEY_ONLY_FIXED: [u8; 64] = fixed_bytes(&[(0, 4), (20, 24), (32, 44), (50, 52), (60, 64)]);

/// The first 72 bytes of a single Put without an expiry as [`encode_operation_into`] lays it
/// out, as [`KEY_ONLY_HEAD`] is for a Get. The key follows, then the value's vector at the next
/// multiple of four.
#[rustfmt::skip]
const PUT_HEAD: [u8; 72] = [
    0, 0, 0, 0, // length prefix
    20, 0, 0, 0, // the request table, at 24
    12, 0, 18, 0, 8, 0, 16, 0, 4, 0, 17, 0, // its vtable: id, command type, command, consistency
    0, 0, 0, 0, // padding
    16, 0, 0, 0, // the request table: its vtable 16 bytes back
    28, 0, 0, 0, // the command's table, at 56
    0, 0, 0, 0, 0, 0, 0, 0, // id
    fb::Command::Put.0, 0, 0, 0, // command type, consistency, padding
    10, 0, 12, 0, 4, 0, 8, 0, 0, 0, // the command's vtable: key, value, no expiry
    0, 0, // padding
    12, 0, 0, 0, // the command's table: its vtable 12 bytes back
    8, 0, 0, 0, // its key, at 68
    0, 0, 0, 0, // its value's offset
    0, 0, 0, 0, // the key's length
];

/// Which bytes of [`PUT_HEAD`] every hand-laid Put without an expiry repeats.
const PUT_FIXED: [u8; 72] = fixed_bytes(&[(0, 4), (20, 24), (32, 40), (41, 44), (54, 56), (64, 72)]);

/// A mask of `N` bytes, all set but in the `variable` ranges.
const fn fixed_bytes<const N: usize>(variable: &[(usize, usize)]) -> [u8; N] {
    let mut mask = [0xff; N];
    let mut range = 0;
    while range < variable.len() {
        let mut at = variable[range].0;
        while at < variable[range].1 {
            mask[at] = 0;
            at += 1;
        }
        range += 1;
    }
    mask
}

/// Whether `frame` starts with `head`'s bytes wherever `fixed` is set.
#[inline]
fn starts_as<const N: usize>(frame: &[u8], head: &[u8; N], fixed: &[u8; N]) -> bool {
    let Some(start) = frame.first_chunk::<N>() else { return false };
    let word = |bytes: &[u8; N], at: usize| {
        u64::from_le_bytes(*bytes[at..].first_chunk::<8>().expect("in the head"))
    };
    (0..N / 8).all(|index| word(start, index * 8) & word(fixed, index * 8) == word(head, index * 8))
}

fn u32_at(frame: &[u8], at: usize) -> usize {
    u32::from_le_bytes(*frame[at..].first_chunk::<4>().expect("inside the frame's head")) as usize
}

/// A request's consistency byte, when it is one the protocol knows.
fn consistency_of(byte: u8) -> Option<Option<Consistency>> {
    match fb::Consistency(byte) {
        fb::Consistency::Default => Some(None),
        fb::Consistency::One => Some(Some(Consistency::One)),
        fb::Consistency::Quorum => Some(Some(Consistency::Quorum)),
        fb::Consistency::All => Some(Some(Consistency::All)),
        _ => None,
    }
}

/// `frame` as a single Get, Delete or Put without an expiry, when it is byte for byte as the
/// native client lays one out ([`encode_operation_into`]) with a key and value within their
/// limits; `None` sends it to the field-by-field checks of [`parse_single`].
///
/// A frame that matches is one the verifier accepts (the encoder's frames are, and only data
/// and padding differ between them), read the way the verifier reads it, in a few word
/// compares instead of a walk of its tables. The limits keep the verifier's apparent size,
/// which counts some bytes twice, within its bound.
fn parse_hand_laid(frame: &[u8]) -> Option<SingleRequest<'_>> {
    let length_matches = |payload_end: usize| u32_at(frame, 0) + FRAME_LENGTH_PREFIX_BYTES == payload_end;
    let id =
        |frame: &[u8]| u64::from_le_bytes(*frame[32..].first_chunk::<8>().expect("inside the frame's head"));
    if starts_as(frame, &KEY_ONLY_HEAD, &KEY_ONLY_FIXED) {
        let key = &frame[KEY_ONLY_HEAD.len()..];
        if key.len() != u32_at(frame, 60) || key.len() > KEY_BYTES_MAX || !length_matches(frame.len()) {
            return None;
        }
        let operation = match fb::Command(frame[40]) {
            fb::Command::Get => OperationRef::Get { key },
            fb::Command::Delete => OperationRef::Delete { key },
            _ => return None,
        };
        return Some(SingleRequest { id: id(frame), consistency: consistency_of(frame[41])?, operation });
    }
    if starts_as(frame, &PUT_HEAD, &PUT_FIXED) {
        let key_length = u32_at(frame, 68);
        let value_vector = (PUT_HEAD.len() + key_length).next_multiple_of(4);
        let value_length = frame.len().checked_sub(value_vector + 4)?;
        if key_length > KEY_BYTES_MAX
            || value_length > VALUE_BYTES_MAX
            || u32_at(frame, 64) != value_vector - 64
            || u32_at(frame, value_vector) != value_length
            || !length_matches(frame.len())
        {
            return None;
        }
        let operation = OperationRef::Put {
            key: &frame[PUT_HEAD.len()..PUT_HEAD.len() + key_length],
            value: &frame[value_vector + 4..],
            ttl_ms: None,
        };
        return Some(SingleRequest { id: id(frame), consistency: consistency_of(frame[41])?, operation });
    }
    None
}

/// `frame` (length prefix included, as [`crate::FrameDecoder`] returns it) as a request with
/// one Get, Put or Delete, borrowed from it, when it is one and every check passes; `None` sends
/// the frame down the generic path. The request's limits are not checked here
/// (`RequestRef::validate` does).
pub(crate) fn parse_single(frame: &[u8]) -> Option<SingleRequest<'_>> {
    if let Some(single) = parse_hand_laid(frame) {
        return Some(single);
    }
    let mut reader = Frame::new(frame)?;
    let root = reader.follow(FRAME_LENGTH_PREFIX_BYTES)?;
    let request = reader.table(root)?;
    let id = reader.u64_field(&request, fb::Request::VT_ID)?.unwrap_or(0);
    let command_type = match reader.field(&request, fb::Request::VT_COMMAND_TYPE, 1)? {
        Some(at) => reader.u8(at)?,
        None => return None,
    };
    let consistency = match reader.field(&request, fb::Request::VT_CONSISTENCY, 1)? {
        Some(at) => match fb::Consistency(reader.u8(at)?) {
            fb::Consistency::Default => None,
            fb::Consistency::One => Some(Consistency::One),
            fb::Consistency::Quorum => Some(Consistency::Quorum),
            fb::Consistency::All => Some(Consistency::All),
            _ => return None,
        },
        None => None,
    };
    let command_at = reader.field(&request, fb::Request::VT_COMMAND, 4)??;
    let command = reader.follow(command_at)?;
    let command = reader.table(command)?;
    let operation = match fb::Command(command_type) {
        fb::Command::Get => OperationRef::Get { key: reader.slice_field(&command, fb::Get::VT_KEY)? },
        fb::Command::Delete => {
            OperationRef::Delete { key: reader.slice_field(&command, fb::Delete::VT_KEY)? }
        }
        fb::Command::Put => OperationRef::Put {
            key: reader.slice_field(&command, fb::Put::VT_KEY)?,
            value: reader.slice_field(&command, fb::Put::VT_VALUE)?,
            ttl_ms: reader.u64_field(&command, fb::Put::VT_TTL_MS)?,
        },
        _ => return None,
    };
    Some(SingleRequest { id, consistency, operation })
}

/// The first 56 bytes of a reply with a value and no expiry as `encode_read_reply_into` lays it
/// out, but for the bytes [`VALUE_REPLY_FIXED`] leaves out: the length prefix, padding, the id,
/// the version and the value's length. The value follows.
#[rustfmt::skip]
const VALUE_REPLY_HEAD: [u8; 56] = [
    0, 0, 0, 0, // length prefix
    20, 0, 0, 0, // the response table, at 24
    12, 0, 25, 0, 8, 0, 24, 0, 4, 0, 16, 0, // its vtable: id, status, value, version
    0, 0, 0, 0, // padding
    16, 0, 0, 0, // the table: its vtable 16 bytes back
    24, 0, 0, 0, // the value, at 52
    0, 0, 0, 0, 0, 0, 0, 0, // id
    0, 0, 0, 0, 0, 0, 0, 0, // version
    fb::Status::Value.0, 0, 0, 0, // status, padding
    0, 0, 0, 0, // the value's length
];

/// Which bytes of [`VALUE_REPLY_HEAD`] every such reply repeats.
const VALUE_REPLY_FIXED: [u8; 56] = fixed_bytes(&[(0, 4), (20, 24), (32, 48), (49, 56)]);

/// The first 48 bytes of the reply to a write as `encode_response_into` lays it out (49 in all,
/// the status last), but for the bytes [`WRITTEN_REPLY_FIXED`] leaves out: padding, where the
/// absent value's offset would be, the id and the version.
#[rustfmt::skip]
const WRITTEN_REPLY_HEAD: [u8; 48] = [
    45, 0, 0, 0, // length prefix
    20, 0, 0, 0, // the response table, at 24
    12, 0, 25, 0, 8, 0, 24, 0, 0, 0, 16, 0, // its vtable: id, status, no value, version
    0, 0, 0, 0, // padding
    16, 0, 0, 0, // the table: its vtable 16 bytes back
    0, 0, 0, 0, // no value
    0, 0, 0, 0, 0, 0, 0, 0, // id
    0, 0, 0, 0, 0, 0, 0, 0, // version
];

/// Which bytes of [`WRITTEN_REPLY_HEAD`] every reply to a write repeats.
const WRITTEN_REPLY_FIXED: [u8; 48] = fixed_bytes(&[(20, 24), (28, 48)]);

/// `frame` as a value without expiry or a write's acknowledgement, when it is byte for byte as
/// the server lays those out, with a value within its limit: the replies nearly every request
/// gets, read by word compares (see [`parse_hand_laid`]). `None` sends it to the field-by-field
/// checks of [`parse_single_reply`].
fn parse_hand_laid_reply(frame: &[u8], owner: &Bytes) -> Option<Response> {
    let u64_at =
        |at: usize| u64::from_le_bytes(*frame[at..].first_chunk::<8>().expect("inside the frame's head"));
    if starts_as(frame, &VALUE_REPLY_HEAD, &VALUE_REPLY_FIXED) {
        let value_length = frame.len() - VALUE_REPLY_HEAD.len();
        if u32_at(frame, 52) != value_length
            || value_length > VALUE_BYTES_MAX
            || u32_at(frame, 0) + FRAME_LENGTH_PREFIX_BYTES != frame.len()
        {
            return None;
        }
        let outcome = Outcome::Value {
            value: owner.slice_ref(&frame[VALUE_REPLY_HEAD.len()..]),
            version: u64_at(40),
            expires_at_ms: None,
        };
        return Some(Response { id: u64_at(32), reply: Reply::Single(outcome) });
    }
    if frame.len() == WRITTEN_REPLY_HEAD.len() + 1
        && frame[WRITTEN_REPLY_HEAD.len()] == fb::Status::Written.0
        && starts_as(frame, &WRITTEN_REPLY_HEAD, &WRITTEN_REPLY_FIXED)
    {
        let outcome = Outcome::Written { version: u64_at(40) };
        return Some(Response { id: u64_at(32), reply: Reply::Single(outcome) });
    }
    None
}

/// `frame` as a reply with one `Value`, `NotFound` or `Written` outcome, when it is one and
/// every check passes; `None` sends the frame down the generic path.
pub(crate) fn parse_single_reply(frame: &[u8], owner: &Bytes) -> Option<Response> {
    if let Some(response) = parse_hand_laid_reply(frame, owner) {
        return Some(response);
    }
    let mut reader = Frame::new(frame)?;
    let root = reader.follow(FRAME_LENGTH_PREFIX_BYTES)?;
    let response = reader.table(root)?;
    for unused in
        [fb::Response::VT_ERROR, fb::Response::VT_BATCH, fb::Response::VT_TOPOLOGY, fb::Response::VT_SCAN]
    {
        if reader.field(&response, unused, 4)?.is_some() {
            return None;
        }
    }
    let id = reader.u64_field(&response, fb::Response::VT_ID)?.unwrap_or(0);
    let status = reader.field(&response, fb::Response::VT_STATUS, 1)??;
    let status = fb::Status(reader.u8(status)?);
    let version = reader.u64_field(&response, fb::Response::VT_VERSION)?;
    let value = reader.optional_bytes_field(owner, &response, fb::Response::VT_VALUE)?;
    let expires_at_ms = reader.u64_field(&response, fb::Response::VT_EXPIRES_AT_MS)?;
    let outcome = match status {
        fb::Status::Value => Outcome::Value { value: value?, version: version?, expires_at_ms },
        fb::Status::NotFound => Outcome::NotFound,
        fb::Status::Written => Outcome::Written { version: version? },
        _ => return None,
    };
    Some(Response { id, reply: Reply::Single(outcome) })
}

/// Appends `request` as a frame laid out by hand when it is one Get, Put or Delete (`true`);
/// `false` leaves `out` untouched for the builder. The layout is one the builder could have
/// made (any verifier reads it as the same `Request`), written with one copy of the key and
/// value. The caller has checked the request's limits.
pub(crate) fn encode_single_into(request: RequestRef<'_>, out: &mut BytesMut) -> bool {
    let Command::Single(operation) = request.command else { return false };
    let operation = match operation {
        Operation::Get { key } => OperationRef::Get { key },
        Operation::Delete { key } => OperationRef::Delete { key },
        Operation::Put { key, value, ttl_ms } => OperationRef::Put { key, value, ttl_ms: *ttl_ms },
        Operation::CompareAndSwap { .. } => return false,
    };
    encode_operation_into(request.id, operation, request.consistency, out)
}

/// [`encode_single_into`] for a borrowed operation: appends request `id` carrying `operation`
/// laid out by hand (`true`), or leaves `out` untouched when the frame would be too large.
pub(crate) fn encode_operation_into(
    id: u64,
    operation: OperationRef<'_>,
    consistency: Option<Consistency>,
    out: &mut BytesMut,
) -> bool {
    let (command_type, key, put) = match operation {
        OperationRef::Get { key } => (fb::Command::Get, key, None),
        OperationRef::Delete { key } => (fb::Command::Delete, key, None),
        OperationRef::Put { key, value, ttl_ms } => (fb::Command::Put, key, Some((value, ttl_ms))),
    };
    let consistency = match consistency {
        None => fb::Consistency::Default,
        Some(Consistency::One) => fb::Consistency::One,
        Some(Consistency::Quorum) => fb::Consistency::Quorum,
        Some(Consistency::All) => fb::Consistency::All,
    };
    // The request table (vtable at 8, table at 24), then the operation's vtable at 44 and its
    // table, then the key's vector and the value's.
    const VTABLE: usize = 8;
    const TABLE: usize = 24;
    const OPERATION_VTABLE: usize = 44;
    let (operation_table, operation_inline, key_vector) = match put {
        None => (52, 8, 60),
        Some((_, None)) => (56, 12, 68),
        Some((_, Some(_))) => (56, 24, 80),
    };
    let value_vector = (key_vector + 4 + key.len()).next_multiple_of(4);
    let frame_bytes = match put {
        None => key_vector + 4 + key.len(),
        Some((value, _)) => value_vector + 4 + value.len(),
    };
    if frame_bytes - FRAME_LENGTH_PREFIX_BYTES > FRAME_BYTES_MAX {
        return false;
    }
    let start = out.len();
    out.resize(start + frame_bytes, 0);
    let frame = &mut out[start..];
    let mut put_u16 = |at: usize, field: u16| frame[at..at + 2].copy_from_slice(&field.to_le_bytes());
    put_u16(VTABLE, 12);
    put_u16(VTABLE + 2, 18);
    put_u16(VTABLE + 4, 8); // id
    put_u16(VTABLE + 6, 16); // command_type
    put_u16(VTABLE + 8, 4); // command
    put_u16(VTABLE + 10, 17); // consistency
    match put {
        None => {
            put_u16(OPERATION_VTABLE, 6);
            put_u16(OPERATION_VTABLE + 2, operation_inline as u16);
            put_u16(OPERATION_VTABLE + 4, 4); // key
        }
        Some((_, ttl_ms)) => {
            put_u16(OPERATION_VTABLE, 10);
            put_u16(OPERATION_VTABLE + 2, operation_inline as u16);
            put_u16(OPERATION_VTABLE + 4, 4); // key
            put_u16(OPERATION_VTABLE + 6, 8); // value
            put_u16(OPERATION_VTABLE + 8, if ttl_ms.is_some() { 16 } else { 0 });
        }
    }
    let mut put_u32 = |at: usize, field: u32| frame[at..at + 4].copy_from_slice(&field.to_le_bytes());
    put_u32(0, (frame_bytes - FRAME_LENGTH_PREFIX_BYTES) as u32);
    put_u32(FRAME_LENGTH_PREFIX_BYTES, (TABLE - FRAME_LENGTH_PREFIX_BYTES) as u32);
    put_u32(TABLE, (TABLE - VTABLE) as u32);
    put_u32(TABLE + 4, (operation_table - (TABLE + 4)) as u32);
    put_u32(operation_table, (operation_table - OPERATION_VTABLE) as u32);
    put_u32(operation_table + 4, (key_vector - (operation_table + 4)) as u32);
    put_u32(key_vector, key.len() as u32);
    if let Some((value, _)) = put {
        put_u32(operation_table + 8, (value_vector - (operation_table + 8)) as u32);
        put_u32(value_vector, value.len() as u32);
    }
    frame[TABLE + 8..TABLE + 16].copy_from_slice(&id.to_le_bytes());
    frame[TABLE + 16] = command_type.0;
    frame[TABLE + 17] = consistency.0;
    frame[key_vector + 4..key_vector + 4 + key.len()].copy_from_slice(key);
    if let Some((value, ttl_ms)) = put {
        if let Some(ttl_ms) = ttl_ms {
            frame[operation_table + 16..operation_table + 24].copy_from_slice(&ttl_ms.to_le_bytes());
        }
        frame[value_vector + 4..value_vector + 4 + value.len()].copy_from_slice(value);
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::request::{encode_request, parse_request_verified, Request};
    use flatbuffers::FlatBufferBuilder;
    use proptest::prelude::*;

    /// `frame` with the bytes at `flips` (positions taken modulo its length) overwritten, then cut
    /// short at `cut` (modulo its length plus one): the damage the proptests below apply.
    pub(crate) fn damaged(frame: &[u8], flips: &[(usize, u8)], cut: Option<usize>) -> Bytes {
        let mut bytes = frame.to_vec();
        for &(at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        Bytes::from(bytes)
    }

    fn requests() -> Vec<Request> {
        let key = |text: &'static str| Bytes::from_static(text.as_bytes());
        let mut requests = Vec::new();
        for consistency in [None, Some(Consistency::One), Some(Consistency::Quorum), Some(Consistency::All)] {
            for (id, operation) in [
                (1, Operation::Get { key: key("k") }),
                (u64::MAX, Operation::Get { key: key("user000000001234") }),
                (7, Operation::Delete { key: key("gone") }),
                (8, Operation::Put { key: key("k"), value: Bytes::new(), ttl_ms: None }),
                (
                    9,
                    Operation::Put {
                        key: key("key"),
                        value: Bytes::from(vec![3; 1000]),
                        ttl_ms: Some(60_000),
                    },
                ),
            ] {
                requests.push(Request { id, command: Command::Single(operation), consistency });
            }
        }
        requests
    }

    fn encode(request: &Request) -> Bytes {
        Bytes::copy_from_slice(encode_request(&mut FlatBufferBuilder::new(), request).unwrap())
    }

    #[test]
    fn reads_what_the_encoder_writes_as_the_generic_path_does() {
        for request in requests() {
            let frame = encode(&request);
            assert_eq!(parse_single(&frame).map(|single| single.to_request(&frame)).as_ref(), Some(&request));
            assert_eq!(parse_request_verified(&frame).unwrap(), request);
        }
    }

    #[test]
    fn hand_laid_requests_read_back_through_the_verifier() {
        let mut requests = requests();
        for length in 1..=12 {
            let key = Bytes::from(vec![b'k'; length]);
            for value_length in [0, 1, 2, 3, 4, 5, 100] {
                let value = Bytes::from(vec![b'v'; value_length]);
                for ttl_ms in [None, Some(1), Some(86_400_000)] {
                    let operation = Operation::Put { key: key.clone(), value: value.clone(), ttl_ms };
                    requests.push(Request { id: 11, command: Command::Single(operation), consistency: None });
                }
            }
        }
        let mut stream = BytesMut::new();
        for request in &requests {
            assert!(encode_single_into(request.as_ref(), &mut stream));
        }
        let mut decoder = crate::FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        for request in requests {
            let frame = decoder.next_frame().unwrap().expect("a frame per request");
            assert_eq!(parse_request_verified(&frame).unwrap(), request);
            assert_eq!(parse_single(&frame).map(|single| single.to_request(&frame)), Some(request));
        }
        assert!(decoder.next_frame().unwrap().is_none());
    }

    /// The native client's frames for a Get, a Delete and a Put without an expiry are read by
    /// word compares, and as the field-by-field checks read them; anything else falls through.
    #[test]
    fn hand_laid_frames_are_read_by_their_layout() {
        for request in requests() {
            let mut frame = BytesMut::new();
            assert!(encode_single_into(request.as_ref(), &mut frame));
            let frame = frame.freeze();
            let by_layout = parse_hand_laid(&frame);
            let expected_by_layout = match &request.command {
                Command::Single(Operation::Put { ttl_ms, .. }) => ttl_ms.is_none(),
                _ => true,
            };
            assert_eq!(by_layout.is_some(), expected_by_layout, "{request:?}");
            if let Some(single) = by_layout {
                assert_eq!(single.to_request(&frame), request);
                assert_eq!(parse_request_verified(&frame).unwrap(), request);
            }
        }
        // Keys and values past their limits go to the checks that name the error.
        for operation in [
            OperationRef::Get { key: &[b'k'; KEY_BYTES_MAX + 1] },
            OperationRef::Put { key: b"k", value: &vec![0; VALUE_BYTES_MAX + 1], ttl_ms: None },
        ] {
            let mut frame = BytesMut::new();
            assert!(encode_operation_into(5, operation, None, &mut frame));
            assert!(parse_hand_laid(&frame).is_none(), "{:?}", operation.key().len());
        }
    }

    /// The server's layouts of a value without expiry and of a write's acknowledgement are read
    /// by word compares, as the verifier reads them; the rest falls through.
    #[test]
    fn hand_laid_replies_are_read_by_their_layout() {
        let mut by_layout = 0;
        let written = replies().into_iter().map(|response| (encode_reply(&response), response));
        let values = hand_laid_value_replies().into_iter().map(|(response, frame)| (frame, response));
        for (frame, response) in written.chain(values) {
            let expected_by_layout = matches!(
                response.reply,
                Reply::Single(Outcome::Written { .. } | Outcome::Value { expires_at_ms: None, .. })
            );
            let read = parse_hand_laid_reply(&frame, &frame);
            if expected_by_layout && read.is_none() {
                // The builder's layout of a value reply is not the hand-laid one.
                assert!(matches!(response.reply, Reply::Single(Outcome::Value { .. })), "{response:?}");
                continue;
            }
            assert_eq!(read.is_some(), expected_by_layout, "{response:?}");
            if let Some(read) = read {
                by_layout += 1;
                assert_eq!(read, response);
                assert_eq!(crate::response::parse_response_verified(&frame).unwrap(), response);
            }
        }
        // Three ids: each one's written reply and two values without expiry.
        assert_eq!(by_layout, 9);
    }

    #[test]
    fn leaves_other_commands_to_the_generic_path() {
        for command in [
            Command::Ping,
            Command::Topology,
            Command::Batch(vec![Operation::Get { key: Bytes::from_static(b"k") }]),
        ] {
            let frame = encode(&Request { id: 3, command, consistency: None });
            assert!(parse_single(&frame).is_none());
        }
    }

    fn replies() -> Vec<Response> {
        let mut replies = Vec::new();
        for id in [0, 1, u64::MAX] {
            for outcome in [
                Outcome::Value { value: Bytes::from_static(b"v"), version: 3, expires_at_ms: None },
                Outcome::Value { value: Bytes::new(), version: u64::MAX, expires_at_ms: Some(u64::MAX) },
                Outcome::Value { value: Bytes::from(vec![9; 777]), version: 1 << 40, expires_at_ms: None },
                Outcome::Value {
                    value: Bytes::from_static(b"ttl"),
                    version: 5,
                    expires_at_ms: Some(1_800_000_000_000),
                },
                Outcome::NotFound,
                Outcome::Written { version: 12 },
            ] {
                replies.push(Response { id, reply: Reply::Single(outcome) });
            }
        }
        replies
    }

    fn encode_reply(response: &Response) -> Bytes {
        let mut out = bytes::BytesMut::new();
        crate::response::encode_response_into(&mut FlatBufferBuilder::new(), response, &mut out).unwrap();
        out.freeze()
    }

    /// The value replies of [`replies`], laid out by hand as a server answering reads in place
    /// sends them.
    fn hand_laid_value_replies() -> Vec<(Response, Bytes)> {
        replies()
            .into_iter()
            .filter_map(|response| {
                let Reply::Single(Outcome::Value { value, version, expires_at_ms }) = &response.reply else {
                    return None;
                };
                let lent = crate::LentValue { value, version: *version, expires_at_ms: *expires_at_ms };
                let mut out = BytesMut::new();
                crate::response::encode_read_reply_into(
                    &mut FlatBufferBuilder::new(),
                    response.id,
                    Some(lent),
                    &mut out,
                )
                .unwrap();
                Some((response, out.freeze()))
            })
            .collect()
    }

    #[test]
    fn reads_hand_laid_value_replies_as_the_generic_path_does() {
        let replies = hand_laid_value_replies();
        assert_eq!(replies.len(), 12);
        for (response, frame) in replies {
            assert_eq!(parse_single_reply(&frame, &frame).as_ref(), Some(&response));
            assert_eq!(crate::response::parse_response_verified(&frame).unwrap(), response);
        }
    }

    #[test]
    fn reads_replies_as_the_generic_path_does() {
        for response in replies() {
            let frame = encode_reply(&response);
            assert_eq!(parse_single_reply(&frame, &frame).as_ref(), Some(&response));
            assert_eq!(crate::response::parse_response_verified(&frame).unwrap(), response);
        }
    }

    #[test]
    fn leaves_other_replies_to_the_generic_path() {
        let failure = crate::outcome::Failure::new(crate::ErrorCode::Overloaded, "busy");
        for reply in [
            Reply::Pong,
            Reply::Failed(failure),
            Reply::Single(Outcome::CasMismatch { current_version: Some(4) }),
            Reply::Batch(vec![Ok(Outcome::NotFound)]),
        ] {
            let frame = encode_reply(&Response { id: 5, reply });
            assert!(parse_single_reply(&frame, &frame).is_none());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the damage, the fast path accepts only what the verifier accepts, and reads
        /// it the same way.
        #[test]
        fn never_accepts_what_the_verifier_refuses(
            which in 0usize..20,
            hand_laid in any::<bool>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<usize>()),
        ) {
            // Frames from the builder, and as the native client lays them out, which the
            // word-compare path reads.
            let request = &requests()[which];
            let frame = if hand_laid {
                let mut frame = BytesMut::new();
                prop_assert!(encode_single_into(request.as_ref(), &mut frame));
                frame.freeze()
            } else {
                encode(request)
            };
            let frame = damaged(&frame, &flips, cut);
            if let Some(fast) = parse_single(&frame).map(|single| single.to_request(&frame)) {
                let root = flatbuffers::size_prefixed_root_with_opts::<fb::Request>(&crate::limits::VERIFIER_OPTIONS, &frame);
                prop_assert!(root.is_ok(), "the fast path accepted a frame the verifier refuses: {root:?}");
                let generic = parse_request_verified(&frame);
                // Id 0 and the limits are refused after the fast path, by `parse_request`.
                if fast.id != 0 {
                    match generic {
                        Ok(generic) => prop_assert_eq!(generic, fast),
                        Err(error) => prop_assert!(error.id.is_some(), "only a limit may refuse it: {error}"),
                    }
                }
            }
        }

        /// The same for replies: accepted only when the verifier accepts, and read the same.
        #[test]
        fn never_accepts_a_reply_the_verifier_refuses(
            which in 0usize..18,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let frame = damaged(&encode_reply(&replies()[which]), &flips, cut);
            if let Some(fast) = parse_single_reply(&frame, &frame) {
                let root = flatbuffers::size_prefixed_root_with_opts::<fb::Response>(&crate::limits::VERIFIER_OPTIONS, &frame);
                prop_assert!(root.is_ok(), "the fast path accepted a reply the verifier refuses: {root:?}");
                prop_assert_eq!(crate::response::parse_response_verified(&frame).unwrap(), fast);
            }
        }

        /// The same for the value replies laid out by hand, with and without an expiry.
        #[test]
        fn never_accepts_a_hand_laid_reply_the_verifier_refuses(
            which in 0usize..12,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let frame = damaged(&hand_laid_value_replies()[which].1, &flips, cut);
            if let Some(fast) = parse_single_reply(&frame, &frame) {
                let root = flatbuffers::size_prefixed_root_with_opts::<fb::Response>(&crate::limits::VERIFIER_OPTIONS, &frame);
                prop_assert!(root.is_ok(), "the fast path accepted a reply the verifier refuses: {root:?}");
                prop_assert_eq!(crate::response::parse_response_verified(&frame).unwrap(), fast);
            }
        }
    }
}
