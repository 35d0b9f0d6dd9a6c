//! [`Response`]: what a server sends back. Encoding ([`encode_response`],
//! [`encode_response_into`]) for the server and verified parsing ([`parse_response`]) for the
//! client.

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, Vector, WIPOffset};

use crate::error::WireError;
use crate::error_code::ErrorCode;
use crate::frame::verified_root;
use crate::generated as fb;
use crate::limits::{BATCH_OPERATIONS_MAX, FRAME_BYTES_MAX};
use crate::outcome::{Failure, Outcome};
use crate::request::finished_frame;
use crate::topology::{ShardPlacement, TokenRange, Topology};
use crate::CONNECTION_ERROR_ID;

/// The answer to the request with the same `id`. Id [`CONNECTION_ERROR_ID`] (0) marks a
/// connection-level failure, sent just before the server closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Response {
    pub id: u64,
    pub reply: Reply,
}

/// What the server answers; the variant follows the request's [`crate::Command`], except that any
/// request can fail as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// The outcome of a single operation.
    Single(Outcome),
    /// One entry per batch operation, in request order; operations fail independently.
    Batch(Vec<Result<Outcome, Failure>>),
    Topology(Topology),
    Pong,
    /// The request as a whole failed (a broken limit, overload, wrong shard, ...), or with id 0,
    /// the connection did.
    Failed(Failure),
}

impl Response {
    /// The id-0 response reporting a frame that could not be read; the connection closes after
    /// it.
    pub fn connection_error(error: &WireError) -> Self {
        Self { id: CONNECTION_ERROR_ID, reply: Reply::Failed(error.into()) }
    }
}

/// Verifies a frame (length prefix included) with tight verifier options and reads it into an
/// owned [`Response`]. Values are slices of `frame`: nothing is copied.
///
/// Any error means the server is not speaking this protocol; close the connection.
pub fn parse_response(frame: &Bytes) -> Result<Response, WireError> {
    let root = verified_root::<fb::Response>(frame)?;
    let reply = match root.status() {
        fb::Status::Batch => {
            let results =
                root.batch().ok_or_else(|| WireError::malformed("batch response has no results"))?;
            if results.len() > BATCH_OPERATIONS_MAX {
                return Err(WireError::malformed(format!(
                    "batch response has {} results, above the batch limit of {BATCH_OPERATIONS_MAX}",
                    results.len()
                )));
            }
            let results = results
                .iter()
                .map(|result| {
                    parse_outcome(frame, result.status(), result.value(), result.version(), result.error())
                })
                .collect::<Result<_, _>>()?;
            Reply::Batch(results)
        }
        fb::Status::Topology => {
            let topology =
                root.topology().ok_or_else(|| WireError::malformed("topology response has no topology"))?;
            Reply::Topology(parse_topology(topology))
        }
        fb::Status::Pong => Reply::Pong,
        status => match parse_outcome(frame, status, root.value(), root.version(), root.error())? {
            Ok(outcome) => Reply::Single(outcome),
            Err(failure) => Reply::Failed(failure),
        },
    };
    Ok(Response { id: root.id(), reply })
}

/// Reads the fields that `Response` and `OperationResult` share. Statuses that only make sense
/// for a whole response (batch, topology, pong) are malformed here.
fn parse_outcome(
    frame: &Bytes,
    status: fb::Status,
    value: Option<Vector<'_, u8>>,
    version: Option<u64>,
    error: Option<fb::Error<'_>>,
) -> Result<Result<Outcome, Failure>, WireError> {
    let outcome = match status {
        fb::Status::Error => {
            let error = error.ok_or_else(|| WireError::malformed("error status without an error"))?;
            return Ok(Err(Failure {
                code: ErrorCode::from_wire(error.code()),
                message: error.message().unwrap_or_default().to_owned(),
            }));
        }
        fb::Status::Value => Outcome::Value {
            value: frame.slice_ref(
                value.ok_or_else(|| WireError::malformed("value status without a value"))?.bytes(),
            ),
            version: version.ok_or_else(|| WireError::malformed("value status without a version"))?,
        },
        fb::Status::NotFound => Outcome::NotFound,
        fb::Status::Written => Outcome::Written {
            version: version.ok_or_else(|| WireError::malformed("written status without a version"))?,
        },
        fb::Status::CasMismatch => Outcome::CasMismatch { current_version: version },
        other => {
            return Err(WireError::malformed(format!(
                "status {} cannot describe a single operation",
                other.variant_name().map_or_else(|| other.0.to_string(), str::to_owned)
            )))
        }
    };
    Ok(Ok(outcome))
}

fn parse_topology(topology: fb::Topology<'_>) -> Topology {
    let shards = topology
        .shards()
        .iter()
        .map(|shard| ShardPlacement {
            shard_id: shard.id(),
            port: shard.port(),
            token_ranges: shard
                .ranges()
                .iter()
                .map(|range| TokenRange { start: range.start(), end: range.end() })
                .collect(),
        })
        .collect();
    Topology { shards }
}

/// Encodes a response as one complete frame (length prefix included) inside `builder`, and
/// returns it borrowed from the builder: write it to the socket as is, with no further copy.
///
/// The builder is reset first; keep one per connection so its buffer is reused. Fails with
/// [`WireError::FrameTooLarge`] when the response would not fit in a frame (a batch of large
/// values can): the server should then answer with a [`Reply::Failed`] instead.
pub fn encode_response<'builder>(
    builder: &'builder mut FlatBufferBuilder<'_>,
    response: &Response,
) -> Result<&'builder [u8], WireError> {
    check_estimated_size(&response.reply)?;
    builder.reset();
    let mut fields = FlatOutcome::default();
    let mut batch = None;
    let mut topology = None;
    match &response.reply {
        Reply::Single(outcome) => fields = encode_outcome(builder, outcome),
        Reply::Failed(failure) => fields = encode_failure(builder, failure),
        Reply::Pong => fields.status = fb::Status::Pong,
        Reply::Batch(results) => {
            let results: Vec<_> = results
                .iter()
                .map(|result| {
                    let fields = match result {
                        Ok(outcome) => encode_outcome(builder, outcome),
                        Err(failure) => encode_failure(builder, failure),
                    };
                    fb::OperationResult::create(
                        builder,
                        &fb::OperationResultArgs {
                            status: fields.status,
                            value: fields.value,
                            version: fields.version,
                            error: fields.error,
                        },
                    )
                })
                .collect();
            batch = Some(builder.create_vector(&results));
            fields.status = fb::Status::Batch;
        }
        Reply::Topology(shards) => {
            topology = Some(encode_topology(builder, shards));
            fields.status = fb::Status::Topology;
        }
    }
    let root = fb::Response::create(
        builder,
        &fb::ResponseArgs {
            id: response.id,
            status: fields.status,
            value: fields.value,
            version: fields.version,
            error: fields.error,
            batch,
            topology,
        },
    );
    builder.finish_size_prefixed(root, None);
    finished_frame(builder)
}

/// Like [`encode_response`], but appends the frame to `out`: for gathering the replies that are
/// ready into one write, at the cost of one copy.
pub fn encode_response_into(
    builder: &mut FlatBufferBuilder<'_>,
    response: &Response,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    out.extend_from_slice(encode_response(builder, response)?);
    Ok(())
}

/// The fields `Response` and `OperationResult` share, encoded.
struct FlatOutcome<'fbb> {
    status: fb::Status,
    value: Option<WIPOffset<Vector<'fbb, u8>>>,
    version: Option<u64>,
    error: Option<WIPOffset<fb::Error<'fbb>>>,
}

impl Default for FlatOutcome<'_> {
    fn default() -> Self {
        Self { status: fb::Status::Error, value: None, version: None, error: None }
    }
}

fn encode_outcome<'fbb>(builder: &mut FlatBufferBuilder<'fbb>, outcome: &Outcome) -> FlatOutcome<'fbb> {
    match outcome {
        Outcome::Value { value, version } => FlatOutcome {
            status: fb::Status::Value,
            value: Some(builder.create_vector(&value[..])),
            version: Some(*version),
            error: None,
        },
        Outcome::NotFound => FlatOutcome { status: fb::Status::NotFound, ..FlatOutcome::default() },
        Outcome::Written { version } => {
            FlatOutcome { status: fb::Status::Written, version: Some(*version), ..FlatOutcome::default() }
        }
        Outcome::CasMismatch { current_version } => FlatOutcome {
            status: fb::Status::CasMismatch,
            version: *current_version,
            ..FlatOutcome::default()
        },
    }
}

fn encode_failure<'fbb>(builder: &mut FlatBufferBuilder<'fbb>, failure: &Failure) -> FlatOutcome<'fbb> {
    let message = builder.create_string(&failure.message);
    let error =
        fb::Error::create(builder, &fb::ErrorArgs { code: failure.code.to_wire(), message: Some(message) });
    FlatOutcome { status: fb::Status::Error, error: Some(error), ..FlatOutcome::default() }
}

fn encode_topology<'fbb>(
    builder: &mut FlatBufferBuilder<'fbb>,
    topology: &Topology,
) -> WIPOffset<fb::Topology<'fbb>> {
    let shards: Vec<_> = topology
        .shards
        .iter()
        .map(|shard| {
            let ranges: Vec<_> =
                shard.token_ranges.iter().map(|range| fb::TokenRange::new(range.start, range.end)).collect();
            let ranges = builder.create_vector(&ranges);
            fb::Shard::create(
                builder,
                &fb::ShardArgs { id: shard.shard_id, port: shard.port, ranges: Some(ranges) },
            )
        })
        .collect();
    let shards = builder.create_vector(&shards);
    fb::Topology::create(builder, &fb::TopologyArgs { shards: Some(shards) })
}

/// Refuses, before building anything, a response whose values, messages and token ranges alone
/// exceed the frame limit, so that an oversized batch of values is not first copied into the
/// builder.
fn check_estimated_size(reply: &Reply) -> Result<(), WireError> {
    fn outcome_bytes(outcome: &Outcome) -> usize {
        match outcome {
            Outcome::Value { value, .. } => value.len(),
            Outcome::NotFound | Outcome::Written { .. } | Outcome::CasMismatch { .. } => 0,
        }
    }
    let payload_bytes = match reply {
        Reply::Single(outcome) => outcome_bytes(outcome),
        Reply::Failed(failure) => failure.message.len(),
        Reply::Pong => 0,
        Reply::Batch(results) => results
            .iter()
            .map(|result| match result {
                Ok(outcome) => outcome_bytes(outcome),
                Err(failure) => failure.message.len(),
            })
            .sum(),
        Reply::Topology(topology) => topology
            .shards
            .iter()
            .map(|shard| shard.token_ranges.len() * std::mem::size_of::<fb::TokenRange>())
            .sum(),
    };
    if payload_bytes > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge {
            length_bytes: payload_bytes as u64,
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    Ok(())
}
