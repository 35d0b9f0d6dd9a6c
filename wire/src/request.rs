//! [`Request`]: what a client sends. Verified parsing ([`parse_request`]) for the server and
//! encoding ([`encode_request`], [`encode_request_into`]) for the client.

use crate::bytes_vector::create_bytes;
use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use crate::consistency::Consistency;
use crate::credentials::{Credentials, DEFAULT_USER};
use crate::error::WireError;
use crate::frame::{verified_root, Frames};
use crate::generated as fb;
use crate::limits::{BATCH_OPERATIONS_MAX, FRAME_BYTES_MAX, FRAME_LENGTH_PREFIX_BYTES};
use crate::operation::{Expected, Operation, OperationRef};
use crate::response::{Reply, Response};
use crate::scan::{Scan, ScanEnd, ScanStart};
use crate::CONNECTION_ERROR_ID;
use std::ops::Range;

/// One request, identified by a client-chosen id that its response repeats. Ids let many
/// requests share a connection and their responses come back in any order; id
/// [`CONNECTION_ERROR_ID`] (0) is reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub id: u64,
    pub command: Command,
    /// How many replicas must answer each operation; `None` takes the node's configured level.
    pub consistency: Option<Consistency>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// One operation on one key.
    Single(Operation),
    /// Independent operations, answered with one result each, in order. Not a transaction.
    Batch(Vec<Operation>),
    /// Which shard owns which token ranges, and their ports.
    Topology,
    /// Liveness check.
    Ping,
    /// One page of live keys in a range, in token order.
    Scan(Scan),
    /// Authenticate the connection.
    Auth(Credentials),
}

/// A [`Request`] whose command is borrowed: what a client encodes when it keeps the command
/// (to send it again elsewhere) without cloning it.
#[derive(Debug, Clone, Copy)]
pub struct RequestRef<'a> {
    pub id: u64,
    pub command: &'a Command,
    pub consistency: Option<Consistency>,
}

impl Request {
    /// The request, borrowed.
    pub fn as_ref(&self) -> RequestRef<'_> {
        RequestRef { id: self.id, command: &self.command, consistency: self.consistency }
    }

    /// Checks every limit a server enforces, so that a client learns of a broken limit without a
    /// round trip. [`encode_request`] calls it.
    pub fn validate(&self) -> Result<(), WireError> {
        self.as_ref().validate()
    }
}

impl RequestRef<'_> {
    /// See [`Request::validate`].
    pub fn validate(&self) -> Result<(), WireError> {
        if self.id == CONNECTION_ERROR_ID {
            return Err(WireError::RequestIdReserved);
        }
        match self.command {
            Command::Single(operation) => operation.validate(),
            Command::Batch(operations) => {
                if operations.len() > BATCH_OPERATIONS_MAX {
                    return Err(WireError::BatchTooLarge { operations: operations.len() });
                }
                operations.iter().try_for_each(Operation::validate)
            }
            Command::Topology | Command::Ping => Ok(()),
            Command::Scan(scan) => scan.validate(),
            Command::Auth(credentials) => credentials.validate(),
        }
    }
}

/// Why [`parse_request`] refused a frame, and whom to tell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request {}: {error}", match .id { Some(id) => id.to_string(), None => "of unknown id".to_owned() })]
pub struct RequestError {
    /// The request's id when the frame was readable enough to trust it. `None` for frames that
    /// did not verify: their reply goes to [`CONNECTION_ERROR_ID`].
    pub id: Option<u64>,
    pub error: WireError,
}

impl RequestError {
    /// Whether the server must close the connection after sending [`RequestError::response`].
    pub fn closes_connection(&self) -> bool {
        self.id.is_none() || self.error.closes_connection()
    }

    /// The error response to send back.
    pub fn response(&self) -> Response {
        let id = match self.id {
            Some(id) if !self.error.closes_connection() => id,
            _ => CONNECTION_ERROR_ID,
        };
        Response { id, reply: Reply::Failed((&self.error).into()) }
    }
}

/// Verifies a frame (as [`crate::FrameDecoder`] returns it, length prefix included) with tight
/// verifier options, then checks the protocol's limits.
///
/// Keys and values in the result are slices of `frame`: nothing is copied.
///
/// A frame that fails verification or breaks the schema's rules comes back with `id: None`
/// (close the connection); a well-formed request that breaks a limit comes back with its id
/// (answer it with [`RequestError::response`] and keep serving). A batch that breaks a limit is
/// refused whole, so that either every operation of a batch is attempted or none is.
pub fn parse_request(frame: &Bytes) -> Result<Request, RequestError> {
    match crate::fast_path::parse_single(frame).filter(|single| single.id != CONNECTION_ERROR_ID) {
        Some(single) => {
            single.operation.validate().map_err(|error| RequestError { id: Some(single.id), error })?;
            Ok(single.to_request(frame))
        }
        None => parse_request_verified(frame),
    }
}

/// A request of one Get, Put or Delete whose key and value are borrowed from its frame: what a
/// server answers in place needs nothing cut from the frame. See [`parse_single_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SingleRequest<'frame> {
    pub id: u64,
    pub consistency: Option<Consistency>,
    pub operation: OperationRef<'frame>,
}

impl SingleRequest<'_> {
    /// The owned request, its key and value slices of `frame`, the frame this was parsed from
    /// (nothing is copied).
    ///
    /// # Panics
    /// When `frame` does not hold the borrowed bytes.
    pub fn to_request(&self, frame: &Bytes) -> Request {
        let operation = match self.operation {
            OperationRef::Get { key } => Operation::Get { key: frame.slice_ref(key) },
            OperationRef::Delete { key } => Operation::Delete { key: frame.slice_ref(key) },
            OperationRef::Put { key, value, ttl_ms } => {
                Operation::Put { key: frame.slice_ref(key), value: frame.slice_ref(value), ttl_ms }
            }
        };
        Request { id: self.id, command: Command::Single(operation), consistency: self.consistency }
    }
}

/// `frame` (length prefix included) as one Get, Put or Delete borrowed from it, when the fast
/// checks vouch for the frame and the request is within every limit: what [`parse_request`]
/// would return, without cutting anything from the frame. `None` for everything else, valid or
/// not: parse it with [`parse_request`], which names any error.
pub fn parse_single_request(frame: &[u8]) -> Option<SingleRequest<'_>> {
    crate::fast_path::parse_single(frame)
        .filter(|single| single.id != CONNECTION_ERROR_ID && single.operation.validate().is_ok())
}

/// A frame's request as [`Frames::requests`] reads it.
#[derive(Debug)]
pub enum FramedRequest<'frames> {
    /// One Get, Put or Delete, borrowed from the frames: a read answered in place needs nothing
    /// cut from them. [`Frames::to_request`] makes it owned.
    Single(SingleRequest<'frames>),
    /// Any other request, cut from the frames, or why its frame was refused (as
    /// [`parse_request`] returns them).
    Other(Result<Request, RequestError>),
}

impl Frames {
    /// Each frame's range and request, in order: the common requests borrowed, the rest parsed
    /// by [`parse_request`].
    pub fn requests(&self) -> impl Iterator<Item = (Range<usize>, FramedRequest<'_>)> {
        self.ranges().map(|range| {
            let request = match parse_single_request(&self.bytes()[range.clone()]) {
                Some(single) => FramedRequest::Single(single),
                None => FramedRequest::Other(parse_request(&self.bytes().slice(range.clone()))),
            };
            (range, request)
        })
    }

    /// `single`, read from these frames, as an owned request whose key and value are slices of
    /// them (nothing is copied).
    pub fn to_request(&self, single: &SingleRequest<'_>) -> Request {
        single.to_request(self.bytes())
    }

    /// Where `part`, a slice of these frames (a borrowed key), lies in them.
    ///
    /// # Panics
    /// When `part` is not inside the frames.
    pub fn position(&self, part: &[u8]) -> Range<usize> {
        let start = (part.as_ptr() as usize)
            .checked_sub(self.bytes().as_ptr() as usize)
            .expect("a slice of the frames");
        assert!(start + part.len() <= self.bytes().len(), "a slice of the frames");
        start..start + part.len()
    }
}

/// [`parse_request`] through the generic verifier, for every kind of request. Public so that the
/// fuzz targets can check the fast path against it.
pub fn parse_request_verified(frame: &Bytes) -> Result<Request, RequestError> {
    let untrusted = |error: WireError| RequestError { id: None, error };
    let root = verified_root::<fb::Request>(frame).map_err(untrusted)?;
    let id = root.id();
    if id == CONNECTION_ERROR_ID {
        return Err(untrusted(WireError::RequestIdReserved));
    }
    let command = parse_command(frame, &root).map_err(untrusted)?;
    let consistency = match root.consistency() {
        fb::Consistency::Default => None,
        fb::Consistency::One => Some(Consistency::One),
        fb::Consistency::Quorum => Some(Consistency::Quorum),
        fb::Consistency::All => Some(Consistency::All),
        unknown => {
            return Err(untrusted(WireError::malformed(format!("unknown consistency level {}", unknown.0))))
        }
    };
    let request = Request { consistency, id, command };
    request.validate().map_err(|error| RequestError { id: Some(id), error })?;
    Ok(request)
}

fn parse_command(frame: &Bytes, root: &fb::Request<'_>) -> Result<Command, WireError> {
    let missing = || WireError::malformed("request has no command");
    let command = match root.command_type() {
        fb::Command::Get => Command::Single(parse_get(frame, root.command_as_get().ok_or_else(missing)?)),
        fb::Command::Put => Command::Single(parse_put(frame, root.command_as_put().ok_or_else(missing)?)),
        fb::Command::Delete => {
            Command::Single(parse_delete(frame, root.command_as_delete().ok_or_else(missing)?))
        }
        fb::Command::CompareAndSwap => Command::Single(parse_compare_and_swap(
            frame,
            root.command_as_compare_and_swap().ok_or_else(missing)?,
        )?),
        fb::Command::Batch => parse_batch(frame, root.command_as_batch().ok_or_else(missing)?)?,
        fb::Command::GetTopology => {
            root.command_as_get_topology().ok_or_else(missing)?;
            Command::Topology
        }
        fb::Command::Ping => {
            root.command_as_ping().ok_or_else(missing)?;
            Command::Ping
        }
        fb::Command::Scan => Command::Scan(parse_scan(frame, root.command_as_scan().ok_or_else(missing)?)?),
        fb::Command::Auth => {
            let auth = root.command_as_auth().ok_or_else(missing)?;
            let user = auth.user().unwrap_or(DEFAULT_USER).to_owned();
            Command::Auth(Credentials { user, password: frame.slice_ref(auth.password().bytes()) })
        }
        fb::Command::NONE => return Err(missing()),
        fb::Command(unknown) => return Err(WireError::malformed(format!("unknown command type {unknown}"))),
    };
    Ok(command)
}

fn parse_batch(frame: &Bytes, batch: fb::Batch<'_>) -> Result<Command, WireError> {
    let entries = batch.operations();
    // The verifier's table limit already bounds the entry count; capping the capacity as well
    // ties this allocation to the documented batch limit, not to verifier tuning. The limit
    // itself is checked by `Request::validate`, so that its error can carry the request's id.
    let mut operations = Vec::with_capacity(entries.len().min(BATCH_OPERATIONS_MAX + 1));
    for (index, entry) in entries.iter().enumerate() {
        let missing = || WireError::malformed(format!("batch operation {index} is empty"));
        let operation = match entry.operation_type() {
            fb::Operation::Get => parse_get(frame, entry.operation_as_get().ok_or_else(missing)?),
            fb::Operation::Put => parse_put(frame, entry.operation_as_put().ok_or_else(missing)?),
            fb::Operation::Delete => parse_delete(frame, entry.operation_as_delete().ok_or_else(missing)?),
            fb::Operation::CompareAndSwap => {
                parse_compare_and_swap(frame, entry.operation_as_compare_and_swap().ok_or_else(missing)?)?
            }
            fb::Operation::NONE => return Err(missing()),
            fb::Operation(unknown) => {
                return Err(WireError::malformed(format!(
                    "batch operation {index} has unknown operation type {unknown}"
                )))
            }
        };
        operations.push(operation);
    }
    Ok(Command::Batch(operations))
}

fn parse_get(frame: &Bytes, get: fb::Get<'_>) -> Operation {
    Operation::Get { key: frame.slice_ref(get.key().bytes()) }
}

fn parse_put(frame: &Bytes, put: fb::Put<'_>) -> Operation {
    Operation::Put {
        key: frame.slice_ref(put.key().bytes()),
        value: frame.slice_ref(put.value().bytes()),
        ttl_ms: put.ttl_ms(),
    }
}

fn parse_delete(frame: &Bytes, delete: fb::Delete<'_>) -> Operation {
    Operation::Delete { key: frame.slice_ref(delete.key().bytes()) }
}

fn parse_scan(frame: &Bytes, scan: fb::Scan<'_>) -> Result<Scan, WireError> {
    let key = |key: flatbuffers::Vector<'_, u8>| frame.slice_ref(key.bytes());
    let start = match (scan.start(), scan.start_token(), scan.after()) {
        (None, None, None) => ScanStart::Token(0),
        (Some(start), None, None) => ScanStart::Key(key(start)),
        (None, Some(token), None) => ScanStart::Token(token),
        (None, None, Some(after)) => ScanStart::After(key(after)),
        _ => return Err(WireError::malformed("scan gives more than one of start, start_token and after")),
    };
    let end = match (scan.end(), scan.end_token()) {
        (None, None) => ScanEnd::Last,
        (Some(end), None) => ScanEnd::Key(key(end)),
        (None, Some(token)) => ScanEnd::Token(token),
        (Some(_), Some(_)) => return Err(WireError::malformed("scan gives both end and end_token")),
    };
    Ok(Scan { start, end, limit: scan.limit() })
}

fn parse_compare_and_swap(
    frame: &Bytes,
    compare_and_swap: fb::CompareAndSwap<'_>,
) -> Result<Operation, WireError> {
    let missing = || WireError::malformed("compare-and-swap has no expectation");
    let expected = match compare_and_swap.expected_type() {
        fb::Expectation::ExpectVersion => {
            Expected::Version(compare_and_swap.expected_as_expect_version().ok_or_else(missing)?.version())
        }
        fb::Expectation::ExpectAbsent => {
            compare_and_swap.expected_as_expect_absent().ok_or_else(missing)?;
            Expected::Absent
        }
        fb::Expectation::NONE => return Err(missing()),
        fb::Expectation(unknown) => {
            return Err(WireError::malformed(format!("unknown compare-and-swap expectation type {unknown}")))
        }
    };
    Ok(Operation::CompareAndSwap {
        key: frame.slice_ref(compare_and_swap.key().bytes()),
        expected,
        value: frame.slice_ref(compare_and_swap.value().bytes()),
        ttl_ms: compare_and_swap.ttl_ms(),
    })
}

/// Encodes a request as one complete frame (length prefix included) inside `builder`, and
/// returns it borrowed from the builder: write it to the socket as is, with no further copy.
///
/// The builder is reset first; keep one per connection so its buffer is reused. The request is
/// [validated](Request::validate) first, so a frame this returns is one the server accepts.
pub fn encode_request<'builder>(
    builder: &'builder mut FlatBufferBuilder<'_>,
    request: &Request,
) -> Result<&'builder [u8], WireError> {
    request.validate()?;
    check_estimated_size(request.as_ref())?;
    build_request(builder, request.as_ref())
}

/// Encodes without checking limits; the server-side tests use it to send what a well-behaved
/// client never would.
fn build_request<'builder>(
    builder: &'builder mut FlatBufferBuilder<'_>,
    request: RequestRef<'_>,
) -> Result<&'builder [u8], WireError> {
    builder.reset();
    let (command_type, command) = match request.command {
        Command::Single(operation) => {
            let (kind, offset) = encode_operation(builder, operation);
            (kind.command(), offset)
        }
        Command::Batch(operations) => {
            let entries: Vec<_> = operations
                .iter()
                .map(|operation| {
                    let (kind, offset) = encode_operation(builder, operation);
                    fb::BatchOperation::create(
                        builder,
                        &fb::BatchOperationArgs { operation_type: kind.operation(), operation: Some(offset) },
                    )
                })
                .collect();
            let entries = builder.create_vector(&entries);
            let batch = fb::Batch::create(builder, &fb::BatchArgs { operations: Some(entries) });
            (fb::Command::Batch, batch.as_union_value())
        }
        Command::Topology => (
            fb::Command::GetTopology,
            fb::GetTopology::create(builder, &fb::GetTopologyArgs {}).as_union_value(),
        ),
        Command::Ping => (fb::Command::Ping, fb::Ping::create(builder, &fb::PingArgs {}).as_union_value()),
        Command::Scan(scan) => {
            let mut args = fb::ScanArgs { limit: scan.limit, ..Default::default() };
            match &scan.start {
                ScanStart::Token(token) => args.start_token = Some(*token),
                ScanStart::Key(key) => args.start = Some(create_bytes(builder, &key[..])),
                ScanStart::After(key) => args.after = Some(create_bytes(builder, &key[..])),
            }
            match &scan.end {
                ScanEnd::Last => {}
                ScanEnd::Token(token) => args.end_token = Some(*token),
                ScanEnd::Key(key) => args.end = Some(create_bytes(builder, &key[..])),
            }
            (fb::Command::Scan, fb::Scan::create(builder, &args).as_union_value())
        }
        Command::Auth(credentials) => {
            let user = (credentials.user != DEFAULT_USER).then(|| builder.create_string(&credentials.user));
            let password = Some(create_bytes(builder, &credentials.password[..]));
            (fb::Command::Auth, fb::Auth::create(builder, &fb::AuthArgs { user, password }).as_union_value())
        }
    };
    let root = fb::Request::create(
        builder,
        &fb::RequestArgs {
            id: request.id,
            command_type,
            command: Some(command),
            consistency: match request.consistency {
                None => fb::Consistency::Default,
                Some(Consistency::One) => fb::Consistency::One,
                Some(Consistency::Quorum) => fb::Consistency::Quorum,
                Some(Consistency::All) => fb::Consistency::All,
            },
        },
    );
    builder.finish_size_prefixed(root, None);
    finished_frame(builder)
}

/// Like [`encode_request`], but appends the frame to `out`: for gathering several frames into
/// one write. A single Get, Put or Delete is laid out by hand, straight into `out`; anything
/// else goes through the builder and is copied once.
pub fn encode_request_into(
    builder: &mut FlatBufferBuilder<'_>,
    request: &Request,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    encode_request_ref_into(builder, request.as_ref(), out)
}

/// [`encode_request_into`] for a borrowed request.
pub fn encode_request_ref_into(
    builder: &mut FlatBufferBuilder<'_>,
    request: RequestRef<'_>,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    request.validate()?;
    check_estimated_size(request)?;
    if !crate::fast_path::encode_single_into(request, out) {
        out.extend_from_slice(build_request(builder, request)?);
    }
    Ok(())
}

/// Appends request `id` carrying the borrowed `operation` to `out` as one frame, after checking
/// the limits a server enforces: the key and value go from the caller's bytes straight into
/// `out`, with no copy in between. On error nothing is appended.
pub fn encode_operation_into(
    id: u64,
    operation: OperationRef<'_>,
    consistency: Option<Consistency>,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    if id == CONNECTION_ERROR_ID {
        return Err(WireError::RequestIdReserved);
    }
    operation.validate()?;
    if crate::fast_path::encode_operation_into(id, operation, consistency, out) {
        return Ok(());
    }
    // Only a frame above the limit is not laid out by hand: the generic path names the limit.
    let command = Command::Single(operation.to_operation());
    let request = RequestRef { id, command: &command, consistency };
    check_estimated_size(request)?;
    out.extend_from_slice(build_request(&mut FlatBufferBuilder::new(), request)?);
    Ok(())
}

/// Refuses, before building anything, a request whose keys and values alone exceed the frame
/// limit; otherwise a huge batch would first be copied into the builder and only then refused.
fn check_estimated_size(request: RequestRef<'_>) -> Result<(), WireError> {
    let payload_bytes: usize = match request.command {
        Command::Single(operation) => operation.payload_bytes(),
        Command::Batch(operations) => operations.iter().map(Operation::payload_bytes).sum(),
        Command::Topology | Command::Ping => 0,
        Command::Scan(scan) => scan.payload_bytes(),
        Command::Auth(credentials) => credentials.payload_bytes(),
    };
    if payload_bytes > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge {
            length_bytes: payload_bytes as u64,
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    Ok(())
}

/// The finished frame in `builder`, refused if the encoded payload is above the frame limit.
pub(crate) fn finished_frame<'builder>(
    builder: &'builder FlatBufferBuilder<'_>,
) -> Result<&'builder [u8], WireError> {
    let frame = builder.finished_data();
    let payload_bytes = frame.len() - FRAME_LENGTH_PREFIX_BYTES;
    if payload_bytes > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge {
            length_bytes: payload_bytes as u64,
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    Ok(frame)
}

/// Which single-key operation a union offset holds; the same tables appear in two unions.
#[derive(Clone, Copy)]
enum OperationKind {
    Get,
    Put,
    Delete,
    CompareAndSwap,
}

impl OperationKind {
    fn command(self) -> fb::Command {
        match self {
            Self::Get => fb::Command::Get,
            Self::Put => fb::Command::Put,
            Self::Delete => fb::Command::Delete,
            Self::CompareAndSwap => fb::Command::CompareAndSwap,
        }
    }

    fn operation(self) -> fb::Operation {
        match self {
            Self::Get => fb::Operation::Get,
            Self::Put => fb::Operation::Put,
            Self::Delete => fb::Operation::Delete,
            Self::CompareAndSwap => fb::Operation::CompareAndSwap,
        }
    }
}

fn encode_operation(
    builder: &mut FlatBufferBuilder<'_>,
    operation: &Operation,
) -> (OperationKind, WIPOffset<UnionWIPOffset>) {
    match operation {
        Operation::Get { key } => {
            let key = create_bytes(builder, &key[..]);
            (OperationKind::Get, fb::Get::create(builder, &fb::GetArgs { key: Some(key) }).as_union_value())
        }
        Operation::Put { key, value, ttl_ms } => {
            let key = create_bytes(builder, &key[..]);
            let value = create_bytes(builder, &value[..]);
            let put = fb::Put::create(
                builder,
                &fb::PutArgs { key: Some(key), value: Some(value), ttl_ms: *ttl_ms },
            );
            (OperationKind::Put, put.as_union_value())
        }
        Operation::Delete { key } => {
            let key = create_bytes(builder, &key[..]);
            (
                OperationKind::Delete,
                fb::Delete::create(builder, &fb::DeleteArgs { key: Some(key) }).as_union_value(),
            )
        }
        Operation::CompareAndSwap { key, expected, value, ttl_ms } => {
            let key = create_bytes(builder, &key[..]);
            let value = create_bytes(builder, &value[..]);
            let (expected_type, expected) = match expected {
                Expected::Version(version) => (
                    fb::Expectation::ExpectVersion,
                    fb::ExpectVersion::create(builder, &fb::ExpectVersionArgs { version: *version })
                        .as_union_value(),
                ),
                Expected::Absent => (
                    fb::Expectation::ExpectAbsent,
                    fb::ExpectAbsent::create(builder, &fb::ExpectAbsentArgs {}).as_union_value(),
                ),
            };
            let compare_and_swap = fb::CompareAndSwap::create(
                builder,
                &fb::CompareAndSwapArgs {
                    key: Some(key),
                    expected_type,
                    expected: Some(expected),
                    value: Some(value),
                    ttl_ms: *ttl_ms,
                },
            );
            (OperationKind::CompareAndSwap, compare_and_swap.as_union_value())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::limits::{KEY_BYTES_MAX, SCAN_LIMIT_MAX, VALUE_BYTES_MAX};
    use crate::ErrorCode;

    fn bytes(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn every_operation() -> Vec<Operation> {
        vec![
            Operation::Get { key: bytes("user:1") },
            Operation::Put { key: bytes("user:1"), value: bytes("alice"), ttl_ms: None },
            Operation::Put { key: bytes("session"), value: Bytes::new(), ttl_ms: Some(30_000) },
            Operation::Delete { key: bytes("user:2") },
            Operation::CompareAndSwap {
                key: bytes("counter"),
                expected: Expected::Version(u64::MAX),
                value: bytes("7"),
                ttl_ms: None,
            },
            Operation::CompareAndSwap {
                key: bytes("lock"),
                expected: Expected::Absent,
                value: bytes("owner-3"),
                ttl_ms: Some(5_000),
            },
        ]
    }

    /// A borrowed operation encodes to the same frame as the owned request, and breaks the same
    /// limits with the same errors, appending nothing then.
    #[test]
    fn borrowed_operations_encode_as_owned_requests_do() {
        let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
        let large_value = vec![0u8; VALUE_BYTES_MAX + 1];
        let operations = [
            OperationRef::Get { key: b"user:1" },
            OperationRef::Put { key: b"user:1", value: b"alice", ttl_ms: None },
            OperationRef::Put { key: b"session", value: b"", ttl_ms: Some(30_000) },
            OperationRef::Put { key: b"big", value: &large_value[..VALUE_BYTES_MAX], ttl_ms: Some(1) },
            OperationRef::Delete { key: b"user:2" },
            OperationRef::Get { key: b"" },
            OperationRef::Delete { key: &long_key },
            OperationRef::Put { key: b"k", value: &large_value, ttl_ms: None },
            OperationRef::Put { key: b"k", value: b"v", ttl_ms: Some(0) },
        ];
        for operation in operations {
            for consistency in [None, Some(Consistency::One), Some(Consistency::All)] {
                for id in [0, 7] {
                    let owned =
                        Request { id, command: Command::Single(operation.to_operation()), consistency };
                    let mut expected = BytesMut::from(&b"before"[..]);
                    let expected_result =
                        encode_request_into(&mut FlatBufferBuilder::new(), &owned, &mut expected);
                    let mut encoded = BytesMut::from(&b"before"[..]);
                    let result = encode_operation_into(id, operation, consistency, &mut encoded);
                    assert_eq!(result, expected_result, "{operation:?} id {id}");
                    match result {
                        Ok(()) => {
                            let frame = encoded.split_off(6).freeze();
                            assert_eq!(parse_request_verified(&frame).unwrap(), owned);
                            assert_eq!(parse_request(&frame).unwrap(), owned);
                        }
                        Err(_) => assert_eq!(&encoded[..], b"before", "nothing appended on error"),
                    }
                }
            }
        }
    }

    fn every_request() -> Vec<Request> {
        let mut requests: Vec<Request> = every_operation()
            .into_iter()
            .enumerate()
            .map(|(index, operation)| Request {
                consistency: None,
                id: index as u64 + 1,
                command: Command::Single(operation),
            })
            .collect();
        requests.push(Request { consistency: None, id: 100, command: Command::Batch(every_operation()) });
        requests.push(Request { consistency: None, id: 101, command: Command::Batch(Vec::new()) });
        requests.push(Request { consistency: None, id: 102, command: Command::Topology });
        for (id, level) in [(103, Consistency::One), (104, Consistency::Quorum), (105, Consistency::All)] {
            let command = Command::Single(Operation::Get { key: Bytes::from_static(b"k") });
            requests.push(Request { consistency: Some(level), id, command });
        }
        requests.push(Request { consistency: None, id: u64::MAX, command: Command::Ping });
        requests.push(Request {
            consistency: None,
            id: 103,
            command: Command::Auth(Credentials::new("app", "pw")),
        });
        requests.push(Request {
            consistency: None,
            id: 104,
            command: Command::Auth(Credentials::new(DEFAULT_USER, Bytes::new())),
        });
        requests.push(Request {
            consistency: None,
            id: 103,
            command: Command::Scan(Scan {
                start: ScanStart::Key(bytes("user:0")),
                end: ScanEnd::Key(bytes("user:9")),
                limit: 100,
            }),
        });
        requests.push(Request {
            consistency: None,
            id: 104,
            command: Command::Scan(Scan {
                start: ScanStart::Key(Bytes::from_static(&[0])),
                end: ScanEnd::Last,
                limit: SCAN_LIMIT_MAX,
            }),
        });
        requests.push(Request {
            consistency: None,
            id: 105,
            command: Command::Scan(Scan {
                start: ScanStart::Token(0),
                end: ScanEnd::Token(u64::MAX),
                limit: 1,
            }),
        });
        requests.push(Request {
            consistency: None,
            id: 106,
            command: Command::Scan(Scan {
                start: ScanStart::After(bytes("user:5")),
                end: ScanEnd::Token(7),
                limit: 3,
            }),
        });
        requests
    }

    fn encode(request: &Request) -> Bytes {
        Bytes::copy_from_slice(encode_request(&mut FlatBufferBuilder::new(), request).unwrap())
    }

    fn encode_without_checks(request: &Request) -> Bytes {
        Bytes::copy_from_slice(build_request(&mut FlatBufferBuilder::new(), request.as_ref()).unwrap())
    }

    /// Builds a `Request` root by hand, for shapes the encoder never produces.
    fn raw_request(
        id: u64,
        build_command: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> (fb::Command, Option<WIPOffset<UnionWIPOffset>>),
    ) -> Bytes {
        let mut builder = FlatBufferBuilder::new();
        let (command_type, command) = build_command(&mut builder);
        let root = fb::Request::create(
            &mut builder,
            &fb::RequestArgs { id, command_type, command, consistency: fb::Consistency::Default },
        );
        builder.finish_size_prefixed(root, None);
        Bytes::copy_from_slice(builder.finished_data())
    }

    fn assert_untrusted(frame: &Bytes) {
        match parse_request(frame) {
            Err(error @ RequestError { id: None, .. }) => {
                assert!(error.closes_connection());
                assert_eq!(error.response().id, CONNECTION_ERROR_ID);
            }
            other => panic!("expected an untrusted-frame error, got {other:?}"),
        }
    }

    fn assert_rejected(frame: &Bytes, id: u64, expected: WireError) {
        let error = parse_request(frame).unwrap_err();
        assert_eq!(error, RequestError { id: Some(id), error: expected.clone() });
        assert!(!error.closes_connection());
        let response = error.response();
        assert_eq!(response.id, id);
        match response.reply {
            Reply::Failed(failure) => {
                assert_eq!(failure.code, expected.code());
                assert_eq!(failure.message, expected.to_string());
            }
            other => panic!("expected a failure reply, got {other:?}"),
        }
    }

    #[test]
    fn every_request_kind_round_trips() {
        for request in every_request() {
            assert_eq!(parse_request(&encode(&request)).unwrap(), request);
        }
    }

    /// The borrowed parse agrees with `parse_request` on every single operation it takes, and
    /// leaves everything else (other commands, an id of 0, a broken limit) to it.
    #[test]
    fn single_requests_borrowed_read_as_parse_request_reads_them() {
        let mut singles = 0;
        for request in every_request() {
            let frame = encode(&request);
            match parse_single_request(&frame) {
                Some(single) => {
                    singles += 1;
                    assert_eq!(single.to_request(&frame), request);
                    assert_eq!(parse_request(&frame).unwrap(), request);
                }
                None => assert!(
                    !matches!(
                        request.command,
                        Command::Single(
                            Operation::Get { .. } | Operation::Put { .. } | Operation::Delete { .. }
                        )
                    ),
                    "{request:?} left to the generic path"
                ),
            }
        }
        assert!(singles >= 3, "every request kind includes gets, puts and deletes");
        let long_key = Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]);
        for request in [
            Request {
                id: 0,
                command: Command::Single(Operation::Get { key: bytes("k") }),
                consistency: None,
            },
            Request {
                id: 4,
                command: Command::Single(Operation::Get { key: long_key.clone() }),
                consistency: None,
            },
            Request {
                id: 4,
                command: Command::Single(Operation::Delete { key: Bytes::new() }),
                consistency: None,
            },
        ] {
            let frame = encode_without_checks(&request);
            assert_eq!(parse_single_request(&frame), None, "{request:?}");
            assert!(parse_request(&frame).is_err());
        }
    }

    #[test]
    fn one_builder_serves_many_requests() {
        let mut builder = FlatBufferBuilder::new();
        let mut stream = BytesMut::new();
        for request in every_request().iter().chain(every_request().iter().rev()) {
            encode_request_into(&mut builder, request, &mut stream).unwrap();
        }
        let mut decoder = crate::FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        let mut parsed = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            parsed.push(parse_request(&frame).unwrap());
        }
        let expected: Vec<_> = every_request().into_iter().chain(every_request().into_iter().rev()).collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn parsed_keys_and_values_point_into_the_frame() {
        let request = Request {
            consistency: None,
            id: 9,
            command: Command::Single(Operation::Put {
                key: bytes("key"),
                value: bytes("value"),
                ttl_ms: None,
            }),
        };
        let frame = encode(&request);
        let Command::Single(Operation::Put { key, value, .. }) = parse_request(&frame).unwrap().command
        else {
            panic!("not a put");
        };
        let frame_range = frame.as_ptr_range();
        assert!(frame_range.contains(&key.as_ptr()) && frame_range.contains(&value.as_ptr()));
    }

    #[test]
    fn largest_single_put_fits_in_a_frame() {
        let request = Request {
            consistency: None,
            id: 1,
            command: Command::Single(Operation::CompareAndSwap {
                key: vec![b'k'; KEY_BYTES_MAX].into(),
                expected: Expected::Version(u64::MAX),
                value: vec![b'v'; VALUE_BYTES_MAX].into(),
                ttl_ms: Some(crate::limits::TTL_MS_MAX),
            }),
        };
        assert_eq!(parse_request(&encode(&request)).unwrap(), request);
    }

    #[test]
    fn full_batch_of_the_deepest_operation_passes_the_verifier() {
        let operation = Operation::CompareAndSwap {
            key: vec![b'k'; 8].into(),
            expected: Expected::Version(3),
            value: bytes("v"),
            ttl_ms: Some(1),
        };
        let request = Request {
            consistency: None,
            id: 1,
            command: Command::Batch(vec![operation; BATCH_OPERATIONS_MAX]),
        };
        assert_eq!(parse_request(&encode(&request)).unwrap(), request);
    }

    #[test]
    fn empty_key_is_rejected_with_its_id() {
        let request = Request {
            consistency: None,
            id: 41,
            command: Command::Single(Operation::Get { key: Bytes::new() }),
        };
        assert_eq!(encode_request(&mut FlatBufferBuilder::new(), &request), Err(WireError::KeyEmpty));
        assert_rejected(&encode_without_checks(&request), 41, WireError::KeyEmpty);
    }

    #[test]
    fn key_of_257_bytes_is_rejected_with_its_id() {
        let request = Request {
            consistency: None,
            id: 42,
            command: Command::Single(Operation::Delete { key: vec![1; 257].into() }),
        };
        assert_rejected(&encode_without_checks(&request), 42, WireError::KeyTooLong { length_bytes: 257 });
    }

    #[test]
    fn value_one_byte_above_a_mebibyte_is_rejected_with_its_id() {
        let request = Request {
            consistency: None,
            id: 43,
            command: Command::Single(Operation::Put {
                key: bytes("k"),
                value: vec![0; VALUE_BYTES_MAX + 1].into(),
                ttl_ms: None,
            }),
        };
        let expected = WireError::ValueTooLarge { length_bytes: VALUE_BYTES_MAX + 1 };
        assert_eq!(encode_request(&mut FlatBufferBuilder::new(), &request), Err(expected.clone()));
        assert_rejected(&encode_without_checks(&request), 43, expected);
    }

    #[test]
    fn zero_ttl_is_rejected_with_its_id() {
        let request = Request {
            consistency: None,
            id: 44,
            command: Command::Single(Operation::Put { key: bytes("k"), value: bytes("v"), ttl_ms: Some(0) }),
        };
        assert_rejected(&encode_without_checks(&request), 44, WireError::TtlOutOfRange { ttl_ms: 0 });
    }

    #[test]
    fn oversized_batch_is_rejected_whole_with_its_id() {
        let operations = vec![Operation::Get { key: bytes("k") }; BATCH_OPERATIONS_MAX + 1];
        let request = Request { consistency: None, id: 45, command: Command::Batch(operations) };
        assert_rejected(
            &encode_without_checks(&request),
            45,
            WireError::BatchTooLarge { operations: BATCH_OPERATIONS_MAX + 1 },
        );
    }

    #[test]
    fn one_bad_key_rejects_the_whole_batch() {
        let mut operations = every_operation();
        operations.push(Operation::Get { key: vec![0; KEY_BYTES_MAX + 1].into() });
        let request = Request { consistency: None, id: 46, command: Command::Batch(operations) };
        assert_rejected(
            &encode_without_checks(&request),
            46,
            WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 },
        );
    }

    #[test]
    fn batch_whose_values_exceed_the_frame_is_refused_before_building() {
        let value: Bytes = vec![0; VALUE_BYTES_MAX].into();
        let put = Operation::Put { key: bytes("k"), value, ttl_ms: None };
        let request = Request { consistency: None, id: 1, command: Command::Batch(vec![put; 2]) };
        let error = encode_request(&mut FlatBufferBuilder::new(), &request).unwrap_err();
        assert!(matches!(error, WireError::FrameTooLarge { .. }), "{error:?}");
    }

    #[test]
    fn scan_limits_are_rejected_with_the_id() {
        for limit in [0, SCAN_LIMIT_MAX + 1, u32::MAX] {
            let scan = Scan { start: ScanStart::Key(bytes("a")), end: ScanEnd::Last, limit };
            let request = Request { consistency: None, id: 47, command: Command::Scan(scan) };
            let expected = WireError::ScanLimitOutOfRange { limit };
            assert_eq!(encode_request(&mut FlatBufferBuilder::new(), &request), Err(expected.clone()));
            assert_rejected(&encode_without_checks(&request), 47, expected);
        }
        let long_end = Scan {
            start: ScanStart::Key(bytes("a")),
            end: ScanEnd::Key(vec![b'z'; KEY_BYTES_MAX + 1].into()),
            limit: 1,
        };
        assert_rejected(
            &encode_without_checks(&Request { consistency: None, id: 48, command: Command::Scan(long_end) }),
            48,
            WireError::KeyTooLong { length_bytes: KEY_BYTES_MAX + 1 },
        );
        let empty_start = Scan { start: ScanStart::Key(Bytes::new()), end: ScanEnd::Last, limit: 1 };
        assert_rejected(
            &encode_without_checks(&Request {
                consistency: None,
                id: 49,
                command: Command::Scan(empty_start),
            }),
            49,
            WireError::KeyEmpty,
        );
        let empty_after = Scan { start: ScanStart::After(Bytes::new()), end: ScanEnd::Last, limit: 1 };
        assert_rejected(
            &encode_without_checks(&Request {
                consistency: None,
                id: 49,
                command: Command::Scan(empty_after),
            }),
            49,
            WireError::KeyEmpty,
        );
    }

    #[test]
    fn scan_without_a_limit_reads_as_zero_and_is_refused() {
        let frame = raw_request(50, |builder| {
            let start = builder.create_vector(b"a".as_slice());
            let args = fb::ScanArgs { start: Some(start), ..Default::default() };
            (fb::Command::Scan, Some(fb::Scan::create(builder, &args).as_union_value()))
        });
        assert_rejected(&frame, 50, WireError::ScanLimitOutOfRange { limit: 0 });
    }

    #[test]
    fn scan_without_a_start_begins_at_token_zero() {
        let frame = raw_request(51, |builder| {
            let args = fb::ScanArgs { limit: 10, ..Default::default() };
            (fb::Command::Scan, Some(fb::Scan::create(builder, &args).as_union_value()))
        });
        let request = parse_request(&frame).unwrap();
        let everything = Scan { start: ScanStart::Token(0), end: ScanEnd::Last, limit: 10 };
        assert_eq!(request.command, Command::Scan(everything));
    }

    #[test]
    fn scan_with_two_starts_or_two_ends_is_malformed() {
        let frame = raw_request(52, |builder| {
            let start = builder.create_vector(b"a".as_slice());
            let args =
                fb::ScanArgs { start: Some(start), start_token: Some(3), limit: 10, ..Default::default() };
            (fb::Command::Scan, Some(fb::Scan::create(builder, &args).as_union_value()))
        });
        assert_untrusted(&frame);
        let frame = raw_request(53, |builder| {
            let end = builder.create_vector(b"z".as_slice());
            let args = fb::ScanArgs { end: Some(end), end_token: Some(3), limit: 10, ..Default::default() };
            (fb::Command::Scan, Some(fb::Scan::create(builder, &args).as_union_value()))
        });
        assert_untrusted(&frame);
    }

    #[test]
    fn reserved_id_closes_the_connection() {
        let request = Request { consistency: None, id: CONNECTION_ERROR_ID, command: Command::Ping };
        assert_eq!(
            encode_request(&mut FlatBufferBuilder::new(), &request),
            Err(WireError::RequestIdReserved)
        );
        assert_untrusted(&encode_without_checks(&request));
    }

    #[test]
    fn union_type_without_its_table_is_malformed() {
        assert_untrusted(&raw_request(5, |_| (fb::Command::Get, None)));
        assert_untrusted(&raw_request(5, |_| (fb::Command::NONE, None)));
    }

    #[test]
    fn unknown_command_type_is_malformed() {
        let frame = raw_request(5, |builder| {
            (
                fb::Command(fb::Command::ENUM_MAX + 1),
                Some(fb::Ping::create(builder, &fb::PingArgs {}).as_union_value()),
            )
        });
        assert_untrusted(&frame);
    }

    #[test]
    fn compare_and_swap_without_expectation_is_malformed() {
        let frame = raw_request(5, |builder| {
            let key = builder.create_vector(b"k".as_slice());
            let value = builder.create_vector(b"v".as_slice());
            let args = fb::CompareAndSwapArgs { key: Some(key), value: Some(value), ..Default::default() };
            (fb::Command::CompareAndSwap, Some(fb::CompareAndSwap::create(builder, &args).as_union_value()))
        });
        assert_untrusted(&frame);
    }

    #[test]
    fn garbage_and_empty_frames_are_malformed() {
        assert_untrusted(&Bytes::new());
        assert_untrusted(&Bytes::from_static(&[1, 0]));
        assert_untrusted(&Bytes::from_static(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]));
        assert_untrusted(&Bytes::from_static(&[8, 0, 0, 0, b'g', b'a', b'r', b'b', b'a', b'g', b'e', b'!']));
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_malformed() {
        let original = Request { consistency: None, id: 7, command: Command::Batch(every_operation()) };
        let frame = encode(&original);
        for length in 0..frame.len() {
            // As received: the prefix promises more than is there.
            assert_untrusted(&frame.slice(..length));
            // As a lying sender would write it: the prefix agrees with the short payload. Cutting
            // only trailing alignment padding leaves a valid buffer, which must then read back
            // unchanged; any other cut must be refused.
            if length > 4 {
                let mut fixed = frame[..length].to_vec();
                fixed[..4].copy_from_slice(&(length as u32 - 4).to_le_bytes());
                match parse_request(&Bytes::from(fixed)) {
                    Err(RequestError { id: None, .. }) => {}
                    Ok(request) if frame[length..].iter().all(|&byte| byte == 0) => {
                        assert_eq!(request, original, "length {length}");
                    }
                    other => panic!("length {length}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn root_offset_pointing_outside_the_frame_is_malformed() {
        let mut frame = encode(&Request { consistency: None, id: 7, command: Command::Ping }).to_vec();
        frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_untrusted(&Bytes::from(frame));
    }

    #[test]
    fn limit_errors_map_to_their_codes() {
        let request = Request {
            consistency: None,
            id: 3,
            command: Command::Single(Operation::Get { key: Bytes::new() }),
        };
        let error = parse_request(&encode_without_checks(&request)).unwrap_err();
        assert_eq!(error.error.code(), ErrorCode::KeyEmpty);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request(&Bytes::from(payload.clone()));
            // With a correct prefix in front, the bytes reach the FlatBuffers verifier.
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&payload);
            let _ = parse_request(&Bytes::from(frame));
        }

        #[test]
        fn corrupted_valid_frames_never_panic(
            corruptions in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut frame = encode(&Request { consistency: None, id: 7, command: Command::Batch(every_operation()) }).to_vec();
            for (position, byte) in corruptions {
                // Leave the prefix alone so that every case reaches the verifier.
                let position = 4 + position % (frame.len() - 4);
                frame[position] = byte;
            }
            let frame = Bytes::from(frame);
            if let Ok(request) = parse_request(&frame) {
                // Whatever survives verification must also satisfy the limits.
                prop_assert!(request.validate().is_ok());
            }
        }
    }
}
