//! [`Request`]: what a client sends. Verified parsing ([`parse_request`]) for the server and
//! encoding ([`encode_request`], [`encode_request_into`]) for the client.

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use crate::error::WireError;
use crate::frame::verified_root;
use crate::generated as fb;
use crate::limits::{BATCH_OPERATIONS_MAX, FRAME_BYTES_MAX, FRAME_LENGTH_PREFIX_BYTES};
use crate::operation::{Expected, Operation};
use crate::response::{Reply, Response};
use crate::CONNECTION_ERROR_ID;

/// One request, identified by a client-chosen id that its response repeats. Ids let many
/// requests share a connection and their responses come back in any order; id
/// [`CONNECTION_ERROR_ID`] (0) is reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub id: u64,
    pub command: Command,
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
}

impl Request {
    /// Checks every limit a server enforces, so that a client learns of a broken limit without a
    /// round trip. [`encode_request`] calls it.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.id == CONNECTION_ERROR_ID {
            return Err(WireError::RequestIdReserved);
        }
        match &self.command {
            Command::Single(operation) => operation.validate(),
            Command::Batch(operations) => {
                if operations.len() > BATCH_OPERATIONS_MAX {
                    return Err(WireError::BatchTooLarge { operations: operations.len() });
                }
                operations.iter().try_for_each(Operation::validate)
            }
            Command::Topology | Command::Ping => Ok(()),
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
    let untrusted = |error: WireError| RequestError { id: None, error };
    let root = verified_root::<fb::Request>(frame).map_err(untrusted)?;
    let id = root.id();
    if id == CONNECTION_ERROR_ID {
        return Err(untrusted(WireError::RequestIdReserved));
    }
    let command = parse_command(frame, &root).map_err(untrusted)?;
    let request = Request { id, command };
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
    check_estimated_size(request)?;
    builder.reset();
    let (command_type, command) = match &request.command {
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
    };
    let root = fb::Request::create(
        builder,
        &fb::RequestArgs { id: request.id, command_type, command: Some(command) },
    );
    builder.finish_size_prefixed(root, None);
    finished_frame(builder)
}

/// Like [`encode_request`], but appends the frame to `out`: for gathering several frames into
/// one write, at the cost of one copy.
pub fn encode_request_into(
    builder: &mut FlatBufferBuilder<'_>,
    request: &Request,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    out.extend_from_slice(encode_request(builder, request)?);
    Ok(())
}

/// Refuses, before building anything, a request whose keys and values alone exceed the frame
/// limit; otherwise a huge batch would first be copied into the builder and only then refused.
fn check_estimated_size(request: &Request) -> Result<(), WireError> {
    let payload_bytes: usize = match &request.command {
        Command::Single(operation) => operation.payload_bytes(),
        Command::Batch(operations) => operations.iter().map(Operation::payload_bytes).sum(),
        Command::Topology | Command::Ping => 0,
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
            let key = builder.create_vector(&key[..]);
            (OperationKind::Get, fb::Get::create(builder, &fb::GetArgs { key: Some(key) }).as_union_value())
        }
        Operation::Put { key, value, ttl_ms } => {
            let key = builder.create_vector(&key[..]);
            let value = builder.create_vector(&value[..]);
            let put = fb::Put::create(
                builder,
                &fb::PutArgs { key: Some(key), value: Some(value), ttl_ms: *ttl_ms },
            );
            (OperationKind::Put, put.as_union_value())
        }
        Operation::Delete { key } => {
            let key = builder.create_vector(&key[..]);
            (
                OperationKind::Delete,
                fb::Delete::create(builder, &fb::DeleteArgs { key: Some(key) }).as_union_value(),
            )
        }
        Operation::CompareAndSwap { key, expected, value, ttl_ms } => {
            let key = builder.create_vector(&key[..]);
            let value = builder.create_vector(&value[..]);
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
