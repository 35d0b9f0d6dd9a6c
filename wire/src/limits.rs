//! Every bound the client and peer protocols enforce, in one place, with the relations between
//! them checked at compile time.
//!
//! Both sides use these numbers: the client checks a request before sending it, the server
//! checks it again after verifying the frame, and the frame decoder refuses a length prefix above
//! [`FRAME_BYTES_MAX`] (or [`PEER_FRAME_BYTES_MAX`] on a peer link) before it reserves a single
//! byte for the frame.

use flatbuffers::VerifierOptions;

/// Shortest key accepted, in bytes. An empty key would make "no key" and "the empty key"
/// indistinguishable in logs and in the storage engine's ordering.
pub const KEY_BYTES_MIN: usize = 1;

/// Longest key accepted, in bytes. Keys travel in every replication message and sit in every
/// index block, so they are kept short.
pub const KEY_BYTES_MAX: usize = 256;

/// Largest value accepted, in bytes (1 MiB). Larger objects belong in a blob store; a bounded
/// value keeps one request from monopolising a shard's core or memory.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Most operations one batch may carry. Bounds the work a single frame can queue on a shard
/// and the size of the response vector.
pub const BATCH_OPERATIONS_MAX: usize = 1024;

/// Longest time-to-live accepted, in milliseconds (about ten years). Bounding it keeps
/// `now_ms + ttl_ms` far from overflowing a `u64` on every node.
pub const TTL_MS_MAX: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// Most entries one scan page may carry; a scan asks for 1 to this many. Bounds the tables in
/// a scan response and the work one scan request queues on every shard.
pub const SCAN_LIMIT_MAX: u32 = 1000;

/// Bytes of keys and values (each entry counted by [`scan_entry_bytes`]) past which a scan page
/// stops, so that its response fits in one frame. A page always holds its first entry, whatever
/// its size: a maximal key and value fit in a frame on their own.
pub const SCAN_PAGE_BYTES_MAX: usize = 1 << 20;

/// What one scan entry costs in a response beyond its key and value bytes, rounded up: the
/// entry's table and offset in the vector, its version, two vector lengths and the padding
/// around them. The tests measure the real figure against it.
pub const SCAN_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Longest user name an `Auth` request may carry.
pub const USER_NAME_BYTES_MAX: usize = 256;

/// Longest password an `Auth` request may carry.
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// The bytes one entry counts for against [`SCAN_PAGE_BYTES_MAX`].
pub const fn scan_entry_bytes(key_bytes: usize, value_bytes: usize) -> usize {
    key_bytes + value_bytes + SCAN_ENTRY_OVERHEAD_BYTES
}

/// Bytes of the little-endian `u32` length that starts every frame.
pub const FRAME_LENGTH_PREFIX_BYTES: usize = 4;

/// Room in a frame for everything except one value: the key, the FlatBuffers tables, vtables,
/// offsets and padding, and an error message.
pub const FRAME_HEADROOM_BYTES: usize = 64 * 1024;

/// Largest frame payload accepted (the length prefix excluded), in bytes. A frame holds at most
/// one maximal value plus headroom; a batch may hold many small values but never more bytes
/// than this in total.
pub const FRAME_BYTES_MAX: usize = VALUE_BYTES_MAX + FRAME_HEADROOM_BYTES;

/// Deepest nesting of tables in a valid frame:
/// `Request > Batch > BatchOperation > CompareAndSwap > ExpectVersion`. Responses nest at most
/// three deep (`Response > OperationResult > Error`, `Response > Topology > Shard`,
/// `Response > ScanPage > ScanEntry`). Raise it
/// only together with a schema change that needs it.
pub const TABLE_DEPTH_MAX: usize = 5;

/// Most tables in a valid frame. The largest legitimate frame is a full batch of
/// compare-and-swap operations: the request, the batch, and per operation a `BatchOperation`,
/// a `CompareAndSwap` and its expectation. A full batch response needs fewer (per result an
/// `OperationResult` and at most one `Error`).
pub const TABLES_MAX: usize = 3 * BATCH_OPERATIONS_MAX + 8;

/// Verifier options for every frame this crate parses. FlatBuffers' defaults allow depth 64,
/// a million tables and 2 GiB of apparent size, which would let one hostile frame cost far more
/// CPU than its bytes suggest.
pub const VERIFIER_OPTIONS: VerifierOptions = VerifierOptions {
    max_depth: TABLE_DEPTH_MAX,
    max_tables: TABLES_MAX,
    // The verifier adds up the sizes of everything it visits; a frame that reaches further than
    // its own length can only do so by pointing at the same bytes many times.
    max_apparent_size: FRAME_BYTES_MAX + FRAME_LENGTH_PREFIX_BYTES,
    ignore_missing_null_terminator: false,
};

/// Largest peer frame payload accepted (the length prefix excluded), in bytes: one maximal value
/// plus headroom, exactly like a client frame, since a `Replicate`, a `ReadReply`, a
/// `PaxosPropose`, a `PaxosCommit` or a `PaxosPromise` carries at most one value. Being equal,
/// the two protocols share [`crate::FrameDecoder`] and [`crate::WireError::FrameTooLarge`];
/// split those if the limits ever differ.
pub const PEER_FRAME_BYTES_MAX: usize = FRAME_BYTES_MAX;

/// Largest membership (SWIM) payload one peer message may carry, in bytes. A membership message
/// travels as one UDP datagram, so its whole frame must fit in [`UDP_DATAGRAM_BYTES_MAX`]; 63 KiB
/// leaves about a kibibyte for the envelope.
pub const MEMBERSHIP_PAYLOAD_BYTES_MAX: usize = 63 * 1024;

/// Largest UDP payload over IPv4: 65535 bytes less the 20-byte IP header and the 8-byte UDP
/// header. A membership datagram is one whole peer frame, so no membership frame is larger; a
/// receive buffer of this size holds any datagram.
pub const UDP_DATAGRAM_BYTES_MAX: usize = 65_507;

/// Longest failure message a replica may send, in bytes. The message is for logs; bounding it
/// keeps an error reply small whatever the error text. [`crate::peer::PeerFailure::new`]
/// truncates to it.
pub const PEER_FAILURE_MESSAGE_BYTES_MAX: usize = 4096;

/// Highest node id: node ids fill the low 10 bits of every version, so no two nodes ever mint
/// the same one.
pub const NODE_ID_MAX: u16 = 1023;

/// Branches of an anti-entropy tree (see `ringkv_replication::tictac`).
pub const TREE_BRANCHES: usize = 64;

/// Segments (leaves) of an anti-entropy tree: 64 per branch.
pub const TREE_SEGMENTS: usize = TREE_BRANCHES * 64;

/// Most keys in one anti-entropy key list.
pub const KEY_LIST_ENTRIES_MAX: usize = 8192;

/// Most bytes of keys in one anti-entropy key list: with the lengths and versions of
/// [`KEY_LIST_ENTRIES_MAX`] keys (80 KiB) it stays well inside a peer frame.
pub const KEY_LIST_BYTES_MAX: usize = 768 * 1024;

const _: () = assert!(KEY_LIST_BYTES_MAX + KEY_LIST_ENTRIES_MAX * 10 + 4096 < PEER_FRAME_BYTES_MAX);

/// Most successions (commits a replica applied, `peer::Succession`) one Paxos promise carries,
/// and a replica keeps per key: enough to tell a swap retried after a contended pause whether its
/// proposal won, while other swaps of the key went on committing.
pub const PAXOS_SUCCESSIONS_MAX: usize = 32;

/// Bytes one succession takes in a promise.
pub const PAXOS_SUCCESSION_BYTES: usize = 16;

/// Deepest nesting of tables in a valid peer frame:
/// `Envelope > ReadReply > EntryAnswer > Entry > Live`. Raise it only together with a schema
/// change that needs it.
pub const PEER_TABLE_DEPTH_MAX: usize = 5;

/// Most tables in a valid peer frame: the deepest message has five
/// ([`PEER_TABLE_DEPTH_MAX`]), the widest six (a `PaxosPromise` with an accepted entry, the
/// current entry's head and a failure all set), and no message has a vector of tables, so a few
/// more than that only leave room for appended fields.
pub const PEER_TABLES_MAX: usize = 8;

/// Verifier options for every peer frame: as tight as the peer schema allows.
pub const PEER_VERIFIER_OPTIONS: VerifierOptions = VerifierOptions {
    max_depth: PEER_TABLE_DEPTH_MAX,
    max_tables: PEER_TABLES_MAX,
    max_apparent_size: PEER_FRAME_BYTES_MAX + FRAME_LENGTH_PREFIX_BYTES,
    ignore_missing_null_terminator: false,
};

/// Bytes the peer protocol needs around one maximal key and entry (or a maximal failure
/// message, or a maximal membership payload): root offset, envelope, message and entry tables,
/// vtables, vector lengths, padding. Generous on purpose; the tests measure the real figure.
pub const PEER_ENVELOPE_BYTES: usize = 512;

/// Bytes the protocol itself needs around one maximal key and value in a single `Put` or a
/// `Value` response: root offset, tables, vtables, vector lengths, optional TTL and version.
/// Generous on purpose; the tests measure the real figure.
const SINGLE_OPERATION_ENVELOPE_BYTES: usize = 256;

/// Bytes a scan response needs beyond its entries: root offset, the response and page tables,
/// vtables, the entry vector's length and `next_start` (a key). Generous on purpose; the tests
/// measure the real figure.
const SCAN_PAGE_ENVELOPE_BYTES: usize = KEY_BYTES_MAX + 256;

const _: () = assert!(KEY_BYTES_MIN >= 1 && KEY_BYTES_MIN <= KEY_BYTES_MAX);
// A single maximal put must fit in one frame, or the value limit would be a lie.
const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + SINGLE_OPERATION_ENVELOPE_BYTES <= FRAME_BYTES_MAX);
// The length prefix is a u32, and FlatBuffers offsets are signed 32-bit: stay far below both.
const _: () = assert!(FRAME_BYTES_MAX + FRAME_LENGTH_PREFIX_BYTES <= i32::MAX as usize);
// A full batch of compare-and-swap operations must pass the table limit.
const _: () = assert!(TABLES_MAX >= 2 + 3 * BATCH_OPERATIONS_MAX);
// A full scan page fits in a frame, and so does a page of one maximal entry.
const _: () = assert!(SCAN_PAGE_BYTES_MAX + SCAN_PAGE_ENVELOPE_BYTES <= FRAME_BYTES_MAX);
const _: () =
    assert!(scan_entry_bytes(KEY_BYTES_MAX, VALUE_BYTES_MAX) + SCAN_PAGE_ENVELOPE_BYTES <= FRAME_BYTES_MAX);
// A full page of entries passes the verifier's table limit (one table per entry, plus the
// response and the page).
const _: () = assert!(TABLES_MAX >= SCAN_LIMIT_MAX as usize + 2);
// A batch must be able to carry at least one operation per entry with a minimal key.
const _: () = assert!(BATCH_OPERATIONS_MAX * (KEY_BYTES_MIN + 64) <= FRAME_BYTES_MAX);
const _: () = assert!(PEER_FRAME_BYTES_MAX == FRAME_BYTES_MAX);
// A maximal replicated entry, or a read reply, a Paxos proposal, commit or promise carrying one,
// fits in one peer frame (a promise carries one value at most: the current entry is only its
// head).
const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + PEER_ENVELOPE_BYTES <= PEER_FRAME_BYTES_MAX);
const _: () = assert!(
    VALUE_BYTES_MAX + PAXOS_SUCCESSIONS_MAX * PAXOS_SUCCESSION_BYTES + PEER_ENVELOPE_BYTES
        <= PEER_FRAME_BYTES_MAX
);
const _: () = assert!(PEER_FAILURE_MESSAGE_BYTES_MAX + PEER_ENVELOPE_BYTES <= PEER_FRAME_BYTES_MAX);
// A maximal membership message fits in one UDP datagram, prefix included.
const _: () = assert!(
    FRAME_LENGTH_PREFIX_BYTES + MEMBERSHIP_PAYLOAD_BYTES_MAX + PEER_ENVELOPE_BYTES <= UDP_DATAGRAM_BYTES_MAX
);
const _: () = assert!(UDP_DATAGRAM_BYTES_MAX <= PEER_FRAME_BYTES_MAX);
const _: () = assert!(PEER_TABLES_MAX >= PEER_TABLE_DEPTH_MAX);
// Node ids fill 10 bits of a version.
const _: () = assert!(NODE_ID_MAX as u32 + 1 == 1 << 10);
