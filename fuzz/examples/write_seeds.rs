//! Writes the seed inputs in fuzz/seeds/TARGET: real encodings made by ringkv's own writers (a
//! storage engine's WAL segment, SSTable and manifest, a hint log, client and peer frames,
//! membership datagrams, Redis requests), so that a fuzz run starts from valid inputs instead
//! of having to discover checksums and FlatBuffers layouts from nothing.
//!
//! Run from the repository root: `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_executor::block_on;
use rand_foca::rngs::StdRng;
use rand_foca::SeedableRng;
use ringkv_replication::membership::{Membership, MembershipTiming, NodeIdentity};
use ringkv_storage::disk::memory::MemDisk;
use ringkv_storage::hints::{HintLog, StoredHint};
use ringkv_storage::manifest::MANIFEST_FILE;
use ringkv_storage::{Disk, DiskFile, Engine, EngineOptions, Entry};
use ringkv_wire::peer::{
    PeerEntry, PeerEnvelope, PeerErrorCode, PeerFailure, PeerMessage, PeerValue, ReadAnswer,
};
use ringkv_wire::{
    encode_peer, encode_request, encode_response, Command, Consistency, ErrorCode, Expected, Failure,
    Operation, Outcome, Reply, Request, Response, Scan, ScanEnd, ScanStart,
};

fn seeds_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    fs::create_dir_all(&dir).expect("create the seeds directory");
    dir
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    fs::write(seeds_dir(target).join(name), bytes).expect("write a seed");
}

fn read_file(disk: &MemDisk, name: &str) -> Vec<u8> {
    block_on(async {
        let file = disk.open(name).await.expect("open");
        let size = file.size().await.expect("size");
        file.read_at(0, size as usize).await.expect("read").to_vec()
    })
}

/// A WAL segment, an SSTable and a manifest, written by an engine.
fn storage_seeds() {
    let disk = MemDisk::new();
    let options = EngineOptions {
        memtable_bytes_max: 1 << 20,
        block_cache_bytes: 1 << 20,
        wal_segment_bytes_max: 16 << 10,
        ..EngineOptions::default()
    };
    block_on(async {
        let engine = Engine::open(disk.clone(), options.clone()).await.expect("open the engine");
        for index in 0..40u64 {
            let key = Bytes::from(format!("key-{index:03}"));
            if index % 7 == 3 {
                engine.delete(key, 100 + index, 5_000).await.expect("delete");
            } else {
                let ttl = (index % 5 == 0).then_some(90_000);
                engine.put(key, Bytes::from(format!("value-{index}")), 100 + index, ttl).await.expect("put");
            }
        }
        engine.flush().await.expect("flush");
        for index in 40..48u64 {
            engine
                .put(Bytes::from(format!("key-{index:03}")), Bytes::from_static(b"v"), 200 + index, None)
                .await
                .expect("put");
        }
    });
    for name in disk.file_names() {
        let bytes = read_file(&disk, &name);
        if name.ends_with(".wal") {
            write_seed("wal_segment", &name, &bytes);
        } else if name.ends_with(".sst") {
            write_seed("sstable_file", &name, &bytes);
        } else if name == MANIFEST_FILE {
            write_seed("manifest", "manifest", &bytes);
        }
    }
}

/// A hint log's segment, as one segment (selector 0).
fn hint_seeds() {
    let disk = MemDisk::new();
    block_on(async {
        let (log, _) = HintLog::open(disk.clone(), 64 << 10).await.expect("open the hint log");
        let mut last = 0;
        for index in 0..12u64 {
            let entry = if index % 4 == 1 {
                Entry::tombstone(300 + index, 7_000)
            } else {
                Entry::live(
                    300 + index,
                    Bytes::from(format!("hinted-{index}")),
                    (index % 3 == 0).then_some(9_000),
                )
            };
            let hint = StoredHint {
                key: Bytes::from(format!("key-{index}")),
                entry,
                written_at_ms: 1_000 + index,
                down_since_ms: 900,
            };
            last = log.append(&hint).expect("append");
        }
        log.sync_through(last).await.expect("sync");
    });
    for name in disk.file_names().into_iter().filter(|name| name.ends_with(".wal")) {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&read_file(&disk, &name));
        write_seed("hint_log", &name, &bytes);
    }
}

/// A stream of client requests and one of responses, whole (chunk selector 255).
fn client_seeds() {
    let key = || Bytes::from_static(b"user:42");
    let requests = [
        Request { id: 1, command: Command::Single(Operation::Get { key: key() }), consistency: None },
        Request {
            id: 2,
            command: Command::Single(Operation::Put {
                key: key(),
                value: Bytes::from_static(b"hello"),
                ttl_ms: Some(60_000),
            }),
            consistency: Some(Consistency::Quorum),
        },
        Request {
            id: 3,
            command: Command::Batch(vec![
                Operation::Delete { key: key() },
                Operation::CompareAndSwap {
                    key: key(),
                    expected: Expected::Absent,
                    value: Bytes::from_static(b"new"),
                    ttl_ms: None,
                },
            ]),
            consistency: Some(Consistency::All),
        },
        Request {
            id: 4,
            command: Command::Scan(Scan { start: ScanStart::Key(key()), end: ScanEnd::Last, limit: 100 }),
            consistency: None,
        },
        Request { id: 5, command: Command::Topology, consistency: None },
        Request { id: 6, command: Command::Ping, consistency: Some(Consistency::One) },
    ];
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let mut stream = vec![255];
    for request in &requests {
        stream.extend_from_slice(encode_request(&mut builder, request).expect("encode a request"));
    }
    write_seed("client_frames", "requests", &stream);
    let responses = [
        Response {
            id: 1,
            reply: Reply::Single(Outcome::Value {
                value: Bytes::from_static(b"hello"),
                version: 77,
                expires_at_ms: Some(1_800_000_000_000),
            }),
        },
        Response { id: 2, reply: Reply::Single(Outcome::Written { version: 78 }) },
        Response {
            id: 3,
            reply: Reply::Batch(vec![
                Ok(Outcome::NotFound),
                Ok(Outcome::CasMismatch { current_version: Some(78) }),
            ]),
        },
        Response { id: 6, reply: Reply::Pong },
        Response {
            id: 7,
            reply: Reply::Failed(Failure::new(ErrorCode::Overloaded, "too many requests in flight")),
        },
    ];
    let mut stream = vec![255];
    for response in &responses {
        stream.extend_from_slice(encode_response(&mut builder, response).expect("encode a response"));
    }
    write_seed("client_frames", "responses", &stream);
}

fn identity(node_id: u16, port: u16) -> NodeIdentity {
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    NodeIdentity {
        node_id,
        generation: 1,
        peer_address: address,
        client_address: format!("127.0.0.1:{}", port + 1000).parse().expect("address"),
        shard_port_base: port + 2000,
        shards: 2,
        vnodes_per_shard: 8,
        tokens: vec![5, 1 << 33, 1 << 60],
    }
}

/// Datagrams a node sends while joining and answering: what a node receives from its peers.
/// Also the peer envelopes that carry them.
fn membership_seeds() -> Vec<Bytes> {
    let mut first =
        Membership::new(identity(2, 7001), MembershipTiming::default(), StdRng::seed_from_u64(1), 0);
    let mut second =
        Membership::new(identity(1, 7000), MembershipTiming::default(), StdRng::seed_from_u64(2), 0);
    first.join(&["127.0.0.1:7000".parse().expect("address")], 0);
    let mut datagrams = Vec::new();
    let mut now_ms = 0;
    for _ in 0..6 {
        now_ms += 100;
        let from_first: Vec<Bytes> = first.drain_outbox().map(|(_, data)| data).collect();
        for data in &from_first {
            second.handle_data(data, now_ms);
        }
        let from_second: Vec<Bytes> = second.drain_outbox().map(|(_, data)| data).collect();
        for data in &from_second {
            first.handle_data(data, now_ms);
            datagrams.push(data.clone());
        }
        first.tick(now_ms);
        second.tick(now_ms);
    }
    for (index, datagram) in datagrams.iter().take(8).enumerate() {
        let mut input = (datagram.len() as u16).to_le_bytes().to_vec();
        input.extend_from_slice(datagram);
        write_seed("membership_datagram", &format!("datagram-{index}"), &input);
    }
    datagrams
}

fn peer_seeds(membership: &[Bytes]) {
    let entry = PeerEntry {
        version: 991,
        value: PeerValue::Live { data: Bytes::from_static(b"value"), expires_at_ms: Some(50_000) },
    };
    let failure = PeerFailure::new(PeerErrorCode::Overloaded, "busy");
    let messages = vec![
        PeerMessage::Hello { node_id: 3, generation: 9, target_shard: 1 },
        PeerMessage::Replicate { key: Bytes::from_static(b"user:42"), entry: entry.clone() },
        PeerMessage::ReplicateAck { result: Ok(()) },
        PeerMessage::ReplicateAck { result: Err(failure.clone()) },
        PeerMessage::Read { key: Bytes::from_static(b"user:42"), digest_only: false },
        PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(Some(entry))) },
        PeerMessage::ReadReply { result: Ok(ReadAnswer::Digest(Some(991))) },
        PeerMessage::ReadReply {
            result: Ok(ReadAnswer::Entry(Some(PeerEntry {
                version: 992,
                value: PeerValue::Tombstone { deleted_at_ms: 4_000 },
            }))),
        },
        PeerMessage::RepairRequest { range: Some((10, 1 << 40)) },
    ]
    .into_iter()
    .chain(membership.iter().take(2).map(|payload| PeerMessage::Membership { payload: payload.clone() }));
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let mut stream = vec![255];
    for (index, message) in messages.enumerate() {
        let envelope =
            PeerEnvelope { origin_node: 3, origin_shard: 1, request_id: index as u64 + 1, message };
        let frame = encode_peer(&mut builder, &envelope).expect("encode a peer envelope");
        write_seed("peer_frames", &format!("datagram-{index}"), frame);
        stream.extend_from_slice(frame);
    }
    write_seed("peer_frames", "stream", &stream);
}

fn resp_seeds() {
    write_seed(
        "resp_requests",
        "multibulk",
        b"\xff*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*0\r\n",
    );
    write_seed(
        "resp_requests",
        "inline",
        b"\xffPING\r\nset \"a b\\x41\\n\" 'it\\'s'\n\r\nMSET k1 v1 k2 v2\r\n",
    );
}

fn main() {
    storage_seeds();
    hint_seeds();
    client_seeds();
    let membership = membership_seeds();
    peer_seeds(&membership);
    resp_seeds();
    println!("seeds written under {}", Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").display());
}
