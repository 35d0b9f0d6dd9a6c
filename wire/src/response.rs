//! [`Response`]: what a server sends back. Encoding ([`encode_response`],
//! [`encode_response_into`]) for the server and verified parsing ([`parse_response`]) for the
//! client.

use crate::bytes_vector::create_bytes;
use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, Vector, WIPOffset};

use crate::error::WireError;
use crate::error_code::ErrorCode;
use crate::frame::{verified_root, Frames};
use crate::generated as fb;
use crate::limits::{BATCH_OPERATIONS_MAX, FRAME_BYTES_MAX, SCAN_LIMIT_MAX};
use crate::outcome::{Failure, LentValue, Outcome};
use crate::request::finished_frame;
use crate::scan::{ScanEntry, ScanPage};
use crate::topology::{NodePlacement, ReplicaRange, ShardPlacement, TokenRange, Topology};
use crate::CONNECTION_ERROR_ID;
use std::ops::Range;

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
    /// One page of a scan.
    Scan(ScanPage),
    /// The answer to a successful `Auth`.
    Authenticated,
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
    match crate::fast_path::parse_single_reply(frame, frame) {
        Some(response) => Ok(response),
        None => parse_response_verified(frame),
    }
}

impl Frames {
    /// The reply in `range` of these frames, as [`parse_response`] reads it, a value in it a
    /// slice of the frames: the common replies are read without cutting the frame first.
    pub fn response(&self, range: Range<usize>) -> Result<Response, WireError> {
        match crate::fast_path::parse_single_reply(&self.bytes()[range.clone()], self.bytes()) {
            Some(response) => Ok(response),
            None => parse_response_verified(&self.bytes().slice(range)),
        }
    }
}

/// [`parse_response`] through the generic verifier, for every kind of reply. Public so that the
/// fuzz targets can check the fast path against it.
pub fn parse_response_verified(frame: &Bytes) -> Result<Response, WireError> {
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
                    let fields = (result.value(), result.version(), result.expires_at_ms());
                    parse_outcome(frame, result.status(), fields, result.error())
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
        fb::Status::Authenticated => Reply::Authenticated,
        fb::Status::ScanPage => {
            let page = root.scan().ok_or_else(|| WireError::malformed("scan response has no page"))?;
            Reply::Scan(parse_scan_page(frame, page)?)
        }
        status => match parse_outcome(
            frame,
            status,
            (root.value(), root.version(), root.expires_at_ms()),
            root.error(),
        )? {
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
    (value, version, expires_at_ms): (Option<Vector<'_, u8>>, Option<u64>, Option<u64>),
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
            expires_at_ms,
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

fn parse_scan_page(frame: &Bytes, page: fb::ScanPage<'_>) -> Result<ScanPage, WireError> {
    let entries = page.entries();
    if entries.len() > SCAN_LIMIT_MAX as usize {
        return Err(WireError::malformed(format!(
            "scan page has {} entries, above the scan limit of {SCAN_LIMIT_MAX}",
            entries.len()
        )));
    }
    let entries = entries
        .iter()
        .map(|entry| ScanEntry {
            key: frame.slice_ref(entry.key().bytes()),
            value: frame.slice_ref(entry.value().bytes()),
            version: entry.version(),
        })
        .collect();
    let next_start = page.next_start().map(|next| frame.slice_ref(next.bytes()));
    Ok(ScanPage { entries, next_start })
}

fn parse_shards(
    shards: flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::Shard<'_>>>,
) -> Vec<ShardPlacement> {
    shards
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
        .collect()
}

fn parse_topology(topology: fb::Topology<'_>) -> Topology {
    let nodes = topology
        .nodes()
        .map(|nodes| {
            nodes
                .iter()
                .map(|node| NodePlacement {
                    node_id: node.id(),
                    address: node.address().to_owned(),
                    up: node.up(),
                    tokens: node.tokens().iter().collect(),
                    shards: parse_shards(node.shards()),
                })
                .collect()
        })
        .unwrap_or_default();
    let ring = topology
        .ring()
        .map(|ring| {
            ring.iter()
                .map(|range| ReplicaRange {
                    start: range.start(),
                    end: range.end(),
                    replicas: range.replicas().iter().collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    Topology {
        shards: parse_shards(topology.shards()),
        nodes,
        ring,
        replicas: topology.replicas(),
        node_id: topology.node_id(),
    }
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
    let mut scan = None;
    match &response.reply {
        Reply::Single(outcome) => fields = encode_outcome(builder, outcome),
        Reply::Failed(failure) => fields = encode_failure(builder, failure),
        Reply::Pong => fields.status = fb::Status::Pong,
        Reply::Authenticated => fields.status = fb::Status::Authenticated,
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
                            expires_at_ms: fields.expires_at_ms,
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
        Reply::Scan(page) => {
            scan = Some(encode_scan_page(builder, page));
            fields.status = fb::Status::ScanPage;
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
            scan,
            expires_at_ms: fields.expires_at_ms,
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
    // The reply to every write: laid out by hand, as the reply to a read is.
    if let Reply::Single(Outcome::Written { version }) = response.reply {
        written_reply_into(response.id, version, out);
        return Ok(());
    }
    out.extend_from_slice(encode_response(builder, response)?);
    Ok(())
}

/// Where [`written_reply_into`] puts each part of its frame (byte positions from the frame's
/// start, the length prefix included, as in [`ValueReply`]): the vtable covers fields 0 to 3 (id,
/// status, value, version), `value` absent; the table starts 8-aligned, so `id` and `version`
/// are too.
mod written_reply {
    pub const ROOT: usize = 4;
    pub const VTABLE: usize = 8;
    pub const VTABLE_BYTES: u16 = 12;
    pub const TABLE: usize = 24;
    pub const ID: usize = TABLE + 8;
    pub const VERSION: usize = TABLE + 16;
    pub const STATUS: usize = TABLE + 24;
    pub const FRAME_BYTES: usize = STATUS + 1;
}

/// Appends the `Status::Written` reply to a write, laid out by hand: the table the builder makes
/// for `Response { id, status: Written, version }`, which any verifier reads as that. The
/// builder spent about 580 instructions on it (vtable search and bookkeeping), a tenth of a
/// write's whole path on the server.
fn written_reply_into(id: u64, version: u64, out: &mut BytesMut) {
    use written_reply::*;
    let mut frame = [0u8; FRAME_BYTES];
    let mut put_u16 = |at: usize, field: u16| frame[at..at + 2].copy_from_slice(&field.to_le_bytes());
    put_u16(VTABLE, VTABLE_BYTES);
    put_u16(VTABLE + 2, (STATUS + 1 - TABLE) as u16);
    put_u16(VTABLE + 4, (ID - TABLE) as u16);
    put_u16(VTABLE + 6, (STATUS - TABLE) as u16);
    // Field 2 (value) stays absent: its slot holds 0.
    put_u16(VTABLE + 10, (VERSION - TABLE) as u16);
    let mut put_u32 = |at: usize, field: u32| frame[at..at + 4].copy_from_slice(&field.to_le_bytes());
    put_u32(0, (FRAME_BYTES - ROOT) as u32);
    put_u32(ROOT, (TABLE - ROOT) as u32);
    put_u32(TABLE, (TABLE - VTABLE) as u32);
    frame[ID..ID + 8].copy_from_slice(&id.to_le_bytes());
    frame[VERSION..VERSION + 8].copy_from_slice(&version.to_le_bytes());
    frame[STATUS] = fb::Status::Written.0;
    out.extend_from_slice(&frame);
}

/// The reply to a read, encoded from borrowed bytes and appended to `out`: the frame
/// [`encode_response_into`] writes for `Outcome::Value` (`found` holds the value, its version
/// and expiry) or `Outcome::NotFound` (`found` is `None`), without the caller first owning the
/// value. A server answering reads in place uses it to skip a reference-count round trip (a
/// cache miss) per read.
pub fn encode_read_reply_into(
    builder: &mut FlatBufferBuilder<'_>,
    id: u64,
    found: Option<LentValue<'_>>,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    match found {
        Some(found) => {
            let header_bytes = if found.expires_at_ms.is_some() { 72 } else { 56 };
            let payload_bytes = header_bytes - ValueReply::ROOT + found.value.len();
            if payload_bytes > FRAME_BYTES_MAX {
                return Err(WireError::FrameTooLarge {
                    length_bytes: payload_bytes as u64,
                    max_bytes: FRAME_BYTES_MAX,
                });
            }
            // One copy of the layout per case, so every offset is a constant.
            match found.expires_at_ms {
                None => value_reply_into::<false, 56>(id, found, out),
                Some(_) => value_reply_into::<true, 72>(id, found, out),
            }
            Ok(())
        }
        None => {
            builder.reset();
            let root = fb::Response::create(
                builder,
                &fb::ResponseArgs { id, status: fb::Status::NotFound, ..fb::ResponseArgs::default() },
            );
            builder.finish_size_prefixed(root, None);
            out.extend_from_slice(finished_frame(builder)?);
            Ok(())
        }
    }
}

/// Where [`value_reply_into`] puts each part of its frame (byte positions from the frame's
/// start, the length prefix included, which is what the verifier's alignment rules count from).
/// Two layouts: without an expiry the vtable stops at `version` (field 3); with one it runs to
/// `expires_at_ms` (field 8), the fields between absent.
struct ValueReply {
    /// The vtable's size: 4 bytes, then 2 per field up to the last one present.
    vtable_bytes: u16,
    /// The table: the signed offset back to the vtable, then the fields.
    table: usize,
    /// `expires_at_ms`, when present.
    expires_at_ms: Option<usize>,
    status: usize,
    /// The value vector: its length, then the bytes.
    vector: usize,
    header_bytes: usize,
}

impl ValueReply {
    /// The root offset (relative to its own position, after the length prefix).
    const ROOT: usize = 4;
    /// The vtable: its size, the table's size, then the offsets of the fields.
    const VTABLE: usize = 8;

    const fn of(expires: bool) -> Self {
        if expires {
            // A 22-byte vtable (fields 0 to 8) ends at 30; the table starts at 32, so the u64
            // fields (id, version, expires_at_ms at table + 8, 16 and 24) are 8-aligned.
            ValueReply {
                vtable_bytes: 22,
                table: 32,
                expires_at_ms: Some(56),
                status: 64,
                vector: 68,
                header_bytes: 72,
            }
        } else {
            ValueReply {
                vtable_bytes: 12,
                table: 24,
                expires_at_ms: None,
                status: 48,
                vector: 52,
                header_bytes: 56,
            }
        }
    }

    const fn value_offset(&self) -> usize {
        self.table + 4
    }

    const fn id(&self) -> usize {
        self.table + 8
    }

    const fn version(&self) -> usize {
        self.table + 16
    }

    /// The table's inline size: from its start to the end of `status`.
    const fn table_bytes(&self) -> usize {
        self.status + 1 - self.table
    }
}

/// Appends the `Status::Value` reply to a read, laid out by hand: the same table the builder
/// makes for `Response { id, status: Value, value, version, expires_at_ms }` (any verifier
/// reads it as that), written with one copy of the value and no builder. The hottest reply
/// there is; the builder spends more on vtable bookkeeping than on the bytes. The value is at
/// most `FRAME_BYTES_MAX`. `EXPIRES` picks the layout ([`ValueReply::of`]), whose header is
/// `HEADER_BYTES` long.
fn value_reply_into<const EXPIRES: bool, const HEADER_BYTES: usize>(
    id: u64,
    found: LentValue<'_>,
    out: &mut BytesMut,
) {
    let layout = const {
        let layout = ValueReply::of(EXPIRES);
        assert!(layout.header_bytes == HEADER_BYTES, "the header length is the layout's");
        layout
    };
    let frame_bytes = HEADER_BYTES + found.value.len();
    let mut header = [0u8; HEADER_BYTES];
    let table = layout.table;
    let mut put_u16 = |at: usize, field: u16| header[at..at + 2].copy_from_slice(&field.to_le_bytes());
    let vtable = ValueReply::VTABLE;
    put_u16(vtable, layout.vtable_bytes);
    put_u16(vtable + 2, layout.table_bytes() as u16);
    put_u16(vtable + 4, (layout.id() - table) as u16);
    put_u16(vtable + 6, (layout.status - table) as u16);
    put_u16(vtable + 8, (layout.value_offset() - table) as u16);
    put_u16(vtable + 10, (layout.version() - table) as u16);
    // Fields 4 to 7 (error, batch, topology, scan) stay absent: their slots hold 0.
    if let Some(at) = layout.expires_at_ms {
        put_u16(vtable + 20, (at - table) as u16);
    }
    let mut put_u32 = |at: usize, field: u32| header[at..at + 4].copy_from_slice(&field.to_le_bytes());
    put_u32(0, (frame_bytes - ValueReply::ROOT) as u32);
    put_u32(ValueReply::ROOT, (table - ValueReply::ROOT) as u32);
    put_u32(table, (table - vtable) as u32);
    put_u32(layout.value_offset(), (layout.vector - layout.value_offset()) as u32);
    put_u32(layout.vector, found.value.len() as u32);
    header[layout.id()..layout.id() + 8].copy_from_slice(&id.to_le_bytes());
    header[layout.version()..layout.version() + 8].copy_from_slice(&found.version.to_le_bytes());
    if let (Some(at), Some(expires_at_ms)) = (layout.expires_at_ms, found.expires_at_ms) {
        header[at..at + 8].copy_from_slice(&expires_at_ms.to_le_bytes());
    }
    header[layout.status] = fb::Status::Value.0;
    out.reserve(frame_bytes);
    out.extend_from_slice(&header);
    out.extend_from_slice(found.value);
}

/// The fields `Response` and `OperationResult` share, encoded.
struct FlatOutcome<'fbb> {
    status: fb::Status,
    value: Option<WIPOffset<Vector<'fbb, u8>>>,
    version: Option<u64>,
    error: Option<WIPOffset<fb::Error<'fbb>>>,
    expires_at_ms: Option<u64>,
}

impl Default for FlatOutcome<'_> {
    fn default() -> Self {
        Self { status: fb::Status::Error, value: None, version: None, error: None, expires_at_ms: None }
    }
}

fn encode_outcome<'fbb>(builder: &mut FlatBufferBuilder<'fbb>, outcome: &Outcome) -> FlatOutcome<'fbb> {
    match outcome {
        Outcome::Value { value, version, expires_at_ms } => FlatOutcome {
            status: fb::Status::Value,
            value: Some(create_bytes(builder, &value[..])),
            version: Some(*version),
            error: None,
            expires_at_ms: *expires_at_ms,
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

fn encode_shards<'fbb>(
    builder: &mut FlatBufferBuilder<'fbb>,
    shards: &[ShardPlacement],
) -> WIPOffset<flatbuffers::Vector<'fbb, flatbuffers::ForwardsUOffset<fb::Shard<'fbb>>>> {
    let shards: Vec<_> = shards
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
    builder.create_vector(&shards)
}

fn encode_topology<'fbb>(
    builder: &mut FlatBufferBuilder<'fbb>,
    topology: &Topology,
) -> WIPOffset<fb::Topology<'fbb>> {
    let shards = encode_shards(builder, &topology.shards);
    let nodes: Vec<_> = topology
        .nodes
        .iter()
        .map(|node| {
            let address = builder.create_string(&node.address);
            let tokens = builder.create_vector(&node.tokens);
            let shards = encode_shards(builder, &node.shards);
            fb::Node::create(
                builder,
                &fb::NodeArgs {
                    id: node.node_id,
                    address: Some(address),
                    up: node.up,
                    tokens: Some(tokens),
                    shards: Some(shards),
                },
            )
        })
        .collect();
    let nodes = builder.create_vector(&nodes);
    let ring: Vec<_> = topology
        .ring
        .iter()
        .map(|range| {
            let replicas = builder.create_vector(&range.replicas);
            fb::ReplicaRange::create(
                builder,
                &fb::ReplicaRangeArgs { start: range.start, end: range.end, replicas: Some(replicas) },
            )
        })
        .collect();
    let ring = builder.create_vector(&ring);
    fb::Topology::create(
        builder,
        &fb::TopologyArgs {
            shards: Some(shards),
            nodes: Some(nodes),
            ring: Some(ring),
            replicas: topology.replicas,
            node_id: topology.node_id,
        },
    )
}

fn encode_scan_page<'fbb>(
    builder: &mut FlatBufferBuilder<'fbb>,
    page: &ScanPage,
) -> WIPOffset<fb::ScanPage<'fbb>> {
    let entries: Vec<_> = page
        .entries
        .iter()
        .map(|entry| {
            let key = create_bytes(builder, &entry.key[..]);
            let value = create_bytes(builder, &entry.value[..]);
            fb::ScanEntry::create(
                builder,
                &fb::ScanEntryArgs { key: Some(key), value: Some(value), version: entry.version },
            )
        })
        .collect();
    let entries = builder.create_vector(&entries);
    let next_start = page.next_start.as_ref().map(|next| create_bytes(builder, &next[..]));
    fb::ScanPage::create(builder, &fb::ScanPageArgs { entries: Some(entries), next_start })
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
        Reply::Pong | Reply::Authenticated => 0,
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
        Reply::Scan(page) => {
            page.entries.iter().map(|entry| entry.key.len() + entry.value.len()).sum::<usize>()
                + page.next_start.as_ref().map_or(0, Bytes::len)
        }
    };
    if payload_bytes > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge {
            length_bytes: payload_bytes as u64,
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::limits::{
        scan_entry_bytes, KEY_BYTES_MAX, SCAN_ENTRY_OVERHEAD_BYTES, SCAN_PAGE_BYTES_MAX, VALUE_BYTES_MAX,
    };
    use crate::scan::page_has_room;

    fn bytes(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn every_outcome() -> Vec<Outcome> {
        vec![
            Outcome::Value { value: bytes("alice"), version: 17, expires_at_ms: None },
            Outcome::Value { value: Bytes::new(), version: 0, expires_at_ms: Some(0) },
            Outcome::Value { value: bytes("bob"), version: 18, expires_at_ms: Some(1_900_000_000_123) },
            Outcome::NotFound,
            Outcome::Written { version: u64::MAX },
            Outcome::CasMismatch { current_version: Some(16) },
            Outcome::CasMismatch { current_version: None },
        ]
    }

    fn every_response() -> Vec<Response> {
        let mut responses: Vec<Response> = every_outcome()
            .into_iter()
            .enumerate()
            .map(|(index, outcome)| Response { id: index as u64 + 1, reply: Reply::Single(outcome) })
            .collect();
        let mut batch: Vec<Result<Outcome, Failure>> = every_outcome().into_iter().map(Ok).collect();
        batch.insert(2, Err(Failure::new(ErrorCode::WrongShard, "key belongs to shard 3")));
        batch.push(Err(Failure::new(ErrorCode::Unrecognized(900), "")));
        responses.push(Response { id: 100, reply: Reply::Batch(batch) });
        responses.push(Response { id: 101, reply: Reply::Batch(Vec::new()) });
        responses.push(Response {
            id: 102,
            reply: Reply::Topology(Topology {
                shards: vec![
                    ShardPlacement {
                        shard_id: 0,
                        port: 7000,
                        token_ranges: vec![
                            TokenRange { start: 0, end: 1 << 62 },
                            TokenRange { start: 1 << 63, end: 0 },
                        ],
                    },
                    ShardPlacement { shard_id: 1, port: 7001, token_ranges: Vec::new() },
                ],
                nodes: vec![NodePlacement {
                    node_id: 3,
                    address: "10.0.0.3:7379".into(),
                    up: true,
                    tokens: vec![5, u64::MAX],
                    shards: vec![ShardPlacement {
                        shard_id: 0,
                        port: 7380,
                        token_ranges: vec![TokenRange { start: 0, end: 0 }],
                    }],
                }],
                ring: vec![
                    ReplicaRange { start: u64::MAX, end: 5, replicas: vec![3, 1] },
                    ReplicaRange { start: 5, end: u64::MAX, replicas: vec![1, 3] },
                ],
                replicas: 2,
                node_id: 3,
            }),
        });
        responses.push(Response { id: 103, reply: Reply::Topology(Topology::default()) });
        responses.push(Response { id: 104, reply: Reply::Pong });
        responses.push(Response { id: 105, reply: Reply::Authenticated });
        responses
            .push(Response { id: 105, reply: Reply::Failed(Failure::new(ErrorCode::Overloaded, "shed")) });
        responses.push(Response::connection_error(&WireError::FrameEmpty));
        responses.push(Response {
            id: 106,
            reply: Reply::Scan(ScanPage {
                entries: vec![
                    ScanEntry { key: bytes("user:1"), value: bytes("alice"), version: 3 },
                    ScanEntry { key: bytes("user:2"), value: Bytes::new(), version: u64::MAX },
                ],
                next_start: Some(bytes("user:3")),
            }),
        });
        responses.push(Response { id: 107, reply: Reply::Scan(ScanPage::default()) });
        responses
    }

    fn encode(response: &Response) -> Bytes {
        Bytes::copy_from_slice(encode_response(&mut FlatBufferBuilder::new(), response).unwrap())
    }

    /// Builds a `Response` root by hand, for shapes the encoder never produces.
    fn raw_response(
        build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> fb::ResponseArgs<'static>,
    ) -> Bytes {
        let mut builder = FlatBufferBuilder::new();
        let args = build(&mut builder);
        let root = fb::Response::create(&mut builder, &args);
        builder.finish_size_prefixed(root, None);
        Bytes::copy_from_slice(builder.finished_data())
    }

    fn assert_malformed(frame: &Bytes) {
        let result = parse_response(frame);
        assert!(matches!(result, Err(WireError::Malformed { .. })), "{result:?}");
    }

    #[test]
    fn read_replies_from_borrowed_bytes_read_back_as_owned_ones() {
        let mut builder = FlatBufferBuilder::new();
        let mut values: Vec<Vec<u8>> =
            (0..=72).map(|length| (0..length).map(|byte| byte as u8 ^ 0x5a).collect()).collect();
        values.push(vec![0; 4093]);
        values.push(vec![0xff; crate::limits::VALUE_BYTES_MAX]);
        let expiries = [None, Some(1), None, Some(u64::MAX), Some(1_800_000_000_000)];
        let mut cases: Vec<(Option<LentValue>, Outcome)> = values
            .iter()
            .zip([1, 42, u64::MAX, 1 << 63].into_iter().cycle())
            .zip(expiries.into_iter().cycle())
            .map(|((value, version), expires_at_ms)| {
                (
                    Some(LentValue { value: &value[..], version, expires_at_ms }),
                    Outcome::Value { value: Bytes::copy_from_slice(value), version, expires_at_ms },
                )
            })
            .collect();
        cases.push((None, Outcome::NotFound));
        // One stream, as a connection's outbox gathers replies: each frame reads back on its own.
        let mut stream = BytesMut::new();
        let mut expected = Vec::new();
        for (id, (found, outcome)) in [9, 1, u64::MAX].into_iter().cycle().zip(cases) {
            encode_read_reply_into(&mut builder, id, found, &mut stream).unwrap();
            expected.push(Response { id, reply: Reply::Single(outcome) });
        }
        let mut decoder = crate::FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        for response in expected {
            let frame = decoder.next_frame().unwrap().expect("a frame per reply");
            assert_eq!(parse_response(&frame).unwrap(), response);
            // The hand-laid frame is a `Response` to the plain verifier too, read the same way.
            let verified = flatbuffers::size_prefixed_root::<fb::Response>(&frame).unwrap();
            assert_eq!(verified.id(), response.id);
            assert_eq!(parse_response_verified(&frame).unwrap(), response);
        }
        assert!(decoder.next_frame().unwrap().is_none());
    }

    #[test]
    fn write_replies_laid_out_by_hand_read_back_as_the_builders_do() {
        let ids = [0, 1, 9, 1 << 31, u64::MAX];
        let versions = [0, 1, 42, 1 << 63, u64::MAX];
        let cases: Vec<(u64, u64)> =
            ids.iter().flat_map(|&id| versions.iter().map(move |&version| (id, version))).collect();
        // One stream, as a connection's outbox gathers replies: each frame reads back on its own.
        let mut stream = BytesMut::new();
        let mut builder = FlatBufferBuilder::new();
        for &(id, version) in &cases {
            let response = Response { id, reply: Reply::Single(Outcome::Written { version }) };
            encode_response_into(&mut builder, &response, &mut stream).unwrap();
        }
        let mut decoder = crate::FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        for (id, version) in cases {
            let response = Response { id, reply: Reply::Single(Outcome::Written { version }) };
            let frame = decoder.next_frame().unwrap().expect("a frame per reply");
            assert_eq!(frame.len(), written_reply::FRAME_BYTES, "laid out by hand");
            // The builder's frame for the same reply reads back the same way.
            let built = Bytes::copy_from_slice(encode_response(&mut builder, &response).unwrap());
            for frame in [&frame, &built] {
                assert_eq!(parse_response(frame).unwrap(), response);
                assert_eq!(parse_response_verified(frame).unwrap(), response);
                let root = flatbuffers::size_prefixed_root::<fb::Response>(frame).unwrap();
                assert_eq!(
                    (root.id(), root.status(), root.version()),
                    (id, fb::Status::Written, Some(version))
                );
                assert!(root.value().is_none() && root.error().is_none() && root.expires_at_ms().is_none());
            }
        }
        assert!(decoder.next_frame().unwrap().is_none());
    }

    #[test]
    fn every_response_kind_round_trips() {
        for response in every_response() {
            assert_eq!(parse_response(&encode(&response)).unwrap(), response);
        }
    }

    #[test]
    fn one_builder_serves_many_responses() {
        let mut builder = FlatBufferBuilder::new();
        let mut stream = BytesMut::new();
        for response in every_response().iter().rev() {
            encode_response_into(&mut builder, response, &mut stream).unwrap();
        }
        let mut decoder = crate::FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        let mut parsed = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            parsed.push(parse_response(&frame).unwrap());
        }
        assert_eq!(parsed, every_response().into_iter().rev().collect::<Vec<_>>());
    }

    /// Replies read from a read's frames taken together, values sliced from them, are the
    /// replies `parse_response` reads from each frame cut alone; hand-laid value replies too.
    #[test]
    fn replies_read_from_frames_taken_together() {
        let mut builder = FlatBufferBuilder::new();
        let mut stream = BytesMut::new();
        let mut expected = every_response();
        for response in &expected {
            encode_response_into(&mut builder, response, &mut stream).unwrap();
        }
        for (id, expires_at_ms) in [(41, None), (42, Some(1_900_000_000_000))] {
            let found = LentValue { value: b"laid by hand", version: 9, expires_at_ms };
            encode_read_reply_into(&mut builder, id, Some(found), &mut stream).unwrap();
            let value = Bytes::from_static(b"laid by hand");
            let outcome = Outcome::Value { value, version: 9, expires_at_ms };
            expected.push(Response { id, reply: Reply::Single(outcome) });
        }
        let mut decoder = crate::FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        let frames = decoder.take_frames().unwrap().expect("whole frames");
        let read: Vec<_> = frames.ranges().map(|range| frames.response(range).unwrap()).collect();
        assert_eq!(read, expected);
        // Read from the middle on, as a reader that stopped there goes on.
        let second = frames.ranges().next().unwrap().end;
        assert_eq!(frames.ranges_from(second).count(), expected.len() - 1);
    }

    #[test]
    fn largest_value_fits_in_a_response_frame() {
        let response = Response {
            id: 1,
            reply: Reply::Single(Outcome::Value {
                value: vec![7; VALUE_BYTES_MAX].into(),
                version: u64::MAX,
                expires_at_ms: Some(u64::MAX),
            }),
        };
        assert_eq!(parse_response(&encode(&response)).unwrap(), response);
    }

    #[test]
    fn full_batch_of_failures_passes_the_verifier() {
        let failure = Err(Failure::new(ErrorCode::Unavailable, "1 of 2 replicas answered"));
        let response = Response { id: 1, reply: Reply::Batch(vec![failure; BATCH_OPERATIONS_MAX]) };
        assert_eq!(parse_response(&encode(&response)).unwrap(), response);
    }

    #[test]
    fn batch_of_values_larger_than_a_frame_is_refused_before_building() {
        let value =
            Ok(Outcome::Value { value: vec![0; VALUE_BYTES_MAX].into(), version: 1, expires_at_ms: None });
        let response = Response { id: 1, reply: Reply::Batch(vec![value; 2]) };
        let error = encode_response(&mut FlatBufferBuilder::new(), &response).unwrap_err();
        assert!(matches!(error, WireError::FrameTooLarge { .. }), "{error:?}");
    }

    fn scan_response(entries: Vec<ScanEntry>, next_start: Option<Bytes>) -> Response {
        Response { id: 1, reply: Reply::Scan(ScanPage { entries, next_start }) }
    }

    fn entry(key_bytes: usize, value_bytes: usize) -> ScanEntry {
        ScanEntry {
            key: vec![b'k'; key_bytes].into(),
            value: vec![b'v'; value_bytes].into(),
            version: u64::MAX,
        }
    }

    #[test]
    fn one_scan_entry_costs_at_most_its_counted_overhead() {
        for key_bytes in [1, 2, 3, 5, 8, 16, KEY_BYTES_MAX] {
            for value_bytes in [0, 1, 3, 7, 100, 4097] {
                for existing in [0, 1, 7] {
                    let before = scan_response(vec![entry(9, 9); existing], Some(vec![b'n'; 17].into()));
                    let mut after = before.clone();
                    let Reply::Scan(page) = &mut after.reply else { unreachable!() };
                    page.entries.push(entry(key_bytes, value_bytes));
                    let growth = encode(&after).len() - encode(&before).len();
                    assert!(
                        growth <= scan_entry_bytes(key_bytes, value_bytes),
                        "an entry of {key_bytes}+{value_bytes} bytes took {growth} (overhead counted: {SCAN_ENTRY_OVERHEAD_BYTES})"
                    );
                }
            }
        }
    }

    #[test]
    fn fullest_scan_pages_fit_in_a_frame() {
        // As many entries as the byte cap lets in, with maximal keys and a maximal next_start.
        let mut entries = Vec::new();
        let mut page_bytes = 0;
        loop {
            let next = entry(KEY_BYTES_MAX, 700);
            if !page_has_room(entries.len(), page_bytes, next.page_bytes(), SCAN_LIMIT_MAX as usize) {
                break;
            }
            page_bytes += next.page_bytes();
            entries.push(next);
        }
        assert!(page_bytes <= SCAN_PAGE_BYTES_MAX && entries.len() > 1);
        let full = scan_response(entries, Some(vec![b'n'; KEY_BYTES_MAX].into()));
        assert_eq!(parse_response(&encode(&full)).unwrap(), full);

        // The entry limit, with the smallest entries.
        let many = scan_response(vec![entry(1, 0); SCAN_LIMIT_MAX as usize], Some(bytes("n")));
        assert_eq!(parse_response(&encode(&many)).unwrap(), many);

        // One maximal entry alone, which a page always takes.
        let largest = scan_response(
            vec![entry(KEY_BYTES_MAX, VALUE_BYTES_MAX)],
            Some(vec![b'n'; KEY_BYTES_MAX].into()),
        );
        assert_eq!(parse_response(&encode(&largest)).unwrap(), largest);
    }

    #[test]
    fn scan_page_above_the_scan_limit_is_malformed() {
        assert_malformed(&encode(&scan_response(vec![entry(1, 0); SCAN_LIMIT_MAX as usize + 1], None)));
    }

    #[test]
    fn connection_error_names_the_limit() {
        let error =
            WireError::FrameTooLarge { length_bytes: u64::from(u32::MAX), max_bytes: FRAME_BYTES_MAX };
        let response = parse_response(&encode(&Response::connection_error(&error))).unwrap();
        assert_eq!(response.id, CONNECTION_ERROR_ID);
        let Reply::Failed(failure) = response.reply else { panic!("not a failure") };
        assert_eq!(failure.code, ErrorCode::FrameTooLarge);
        assert!(failure.message.contains("FRAME_BYTES_MAX"), "{}", failure.message);
    }

    #[test]
    fn status_without_its_fields_is_malformed() {
        assert_malformed(&raw_response(|_| fb::ResponseArgs {
            id: 1,
            status: fb::Status::Error,
            ..Default::default()
        }));
        assert_malformed(&raw_response(|_| fb::ResponseArgs {
            id: 1,
            status: fb::Status::Value,
            version: Some(1),
            ..Default::default()
        }));
        assert_malformed(&raw_response(|builder| fb::ResponseArgs {
            id: 1,
            status: fb::Status::Value,
            value: Some(builder.create_vector(b"v".as_slice())),
            ..Default::default()
        }));
        assert_malformed(&raw_response(|_| fb::ResponseArgs {
            id: 1,
            status: fb::Status::Written,
            ..Default::default()
        }));
        assert_malformed(&raw_response(|_| fb::ResponseArgs {
            id: 1,
            status: fb::Status::Batch,
            ..Default::default()
        }));
        assert_malformed(&raw_response(|_| fb::ResponseArgs {
            id: 1,
            status: fb::Status::Topology,
            ..Default::default()
        }));
        assert_malformed(&raw_response(|_| fb::ResponseArgs {
            id: 1,
            status: fb::Status::ScanPage,
            ..Default::default()
        }));
    }

    #[test]
    fn unknown_status_is_malformed() {
        assert_malformed(&raw_response(|_| fb::ResponseArgs {
            id: 1,
            status: fb::Status(fb::Status::ENUM_MAX + 1),
            ..Default::default()
        }));
    }

    #[test]
    fn whole_response_status_inside_a_batch_is_malformed() {
        for nested in [
            fb::Status::Batch,
            fb::Status::Topology,
            fb::Status::Pong,
            fb::Status::ScanPage,
            fb::Status::Authenticated,
        ] {
            assert_malformed(&raw_response(|builder| {
                let result = fb::OperationResult::create(
                    builder,
                    &fb::OperationResultArgs { status: nested, ..Default::default() },
                );
                fb::ResponseArgs {
                    id: 1,
                    status: fb::Status::Batch,
                    batch: Some(builder.create_vector(&[result])),
                    ..Default::default()
                }
            }));
        }
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_refused() {
        let frame = encode(&every_response()[6]);
        for length in 0..frame.len() {
            assert_malformed(&frame.slice(..length));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_response(&Bytes::from(payload.clone()));
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&payload);
            let _ = parse_response(&Bytes::from(frame));
        }

        #[test]
        fn corrupted_valid_frames_never_panic(
            choice in 0..13usize,
            corruptions in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let responses = every_response();
            let mut frame = encode(&responses[choice % responses.len()]).to_vec();
            for (position, byte) in corruptions {
                let position = 4 + position % (frame.len() - 4);
                frame[position] = byte;
            }
            let _ = parse_response(&Bytes::from(frame));
        }
    }
}
