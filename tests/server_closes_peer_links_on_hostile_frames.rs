//! Hostile frames on a peer port (garbage, an oversized length, a frame that is not a hello, a
//! hello for another shard, a truncated frame) close that link only: the node keeps serving
//! clients and well-behaved peers.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use common::{Server, SHARDS};
use flatbuffers::FlatBufferBuilder;
use ringkv_wire::peer::{PeerEnvelope, PeerMessage, ReadAnswer};
use ringkv_wire::{encode_peer, parse_peer, FrameDecoder};

fn peer_port(server: &Server, shard: u32) -> u16 {
    server.client_port + 1 + SHARDS as u16 + shard as u16
}

fn frame(envelope: &PeerEnvelope) -> Vec<u8> {
    encode_peer(&mut FlatBufferBuilder::new(), envelope).unwrap().to_vec()
}

fn hello(target_shard: u32) -> Vec<u8> {
    frame(&PeerEnvelope {
        origin_node: 9,
        origin_shard: 0,
        request_id: 0,
        message: PeerMessage::Hello { node_id: 9, generation: 1, target_shard },
    })
}

/// A key shard 0 owns (a replica refuses keys of other shards).
fn key_of_shard_zero() -> Bytes {
    let ring = ringkv_shard::Ring::new(SHARDS, 16);
    (0..)
        .map(|index| Bytes::from(format!("absent-{index}")))
        .find(|key| ring.owner_of_key(key) == 0)
        .expect("some key lands on shard 0")
}

fn read_request(request_id: u64) -> Vec<u8> {
    frame(&PeerEnvelope {
        origin_node: 9,
        origin_shard: 0,
        request_id,
        message: PeerMessage::Read { key: key_of_shard_zero(), digest_only: false },
    })
}

/// Sends `bytes` on a fresh link and says whether the node closed it.
fn closes_link(port: u16, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = stream.write_all(bytes);
    let mut buffer = [0u8; 256];
    // Closed: end of stream (or a reset). A reply or a timeout means it stayed open.
    matches!(stream.read(&mut buffer), Ok(0) | Err(_))
}

#[test]
fn hostile_peer_frames_close_their_link_and_nothing_else() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let port = peer_port(&server, 0);

    assert!(closes_link(port, b"\x10\x00\x00\x00this is not a flatbuffer"), "garbage");
    assert!(closes_link(port, &u32::MAX.to_le_bytes()), "oversized length prefix");
    assert!(closes_link(port, &[0, 0, 0, 0]), "empty frame");
    assert!(closes_link(port, &read_request(1)), "a request before the hello");
    assert!(closes_link(port, &hello(1)), "a hello for another shard");
    let mut truncated = hello(0);
    truncated.extend_from_slice(&read_request(2)[..10]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(&truncated).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a truncated request gets no answer");

    // Clients are still served.
    let mut client = server.client();
    let version = client.put(b"still", b"serving");
    assert!(version > 0);
    assert_eq!(client.get_value(b"still"), Some(Bytes::from_static(b"serving")));

    // A well-behaved peer is still answered.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = hello(0);
    request.extend_from_slice(&read_request(7));
    stream.write_all(&request).unwrap();
    let mut decoder = FrameDecoder::new();
    let mut buffer = [0u8; 4096];
    let reply = loop {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the node closed a well-behaved link");
        decoder.extend_from_slice(&buffer[..read]);
        if let Some(frame) = decoder.next_frame().unwrap() {
            break parse_peer(&frame).unwrap();
        }
    };
    assert_eq!(reply.request_id, 7);
    assert_eq!(reply.message, PeerMessage::ReadReply { result: Ok(ReadAnswer::Entry(None)) });
}
