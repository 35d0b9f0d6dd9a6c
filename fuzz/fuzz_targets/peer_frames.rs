//! Arbitrary bytes as a peer byte stream (a shard's peer port, a peer link's replies) and as one
//! membership datagram. The stream goes through the frame decoder in chunks whose size the input
//! chooses, and every frame through both peer parsers. Nothing may panic; the copying and the
//! zero-copy parser agree; whatever parses satisfies the limits and survives a re-encode round
//! trip, through the builder and through a link's encoder (which lays out request-path messages
//! by hand).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringkv_wire::{encode_peer, encode_peer_into, parse_peer, parse_peer_shared};

fuzz_target!(|data: &[u8]| {
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    // A whole datagram, as the gossip socket receives it.
    check_frame(&Bytes::copy_from_slice(data), &mut builder);
    ringkv_fuzz::each_streamed_frame(data, |frame| check_frame(frame, &mut builder));
});

fn check_frame(frame: &Bytes, builder: &mut flatbuffers::FlatBufferBuilder<'static>) {
    let copied = parse_peer(frame);
    let shared = parse_peer_shared(frame);
    assert_eq!(copied, shared, "the copying and the zero-copy parser agree");
    if let Ok(envelope) = copied {
        envelope.validate().expect("a parsed envelope satisfies the limits");
        let encoded =
            Bytes::copy_from_slice(encode_peer(builder, &envelope).expect("a parsed envelope encodes"));
        assert_eq!(parse_peer(&encoded).expect("a re-encoded envelope parses"), envelope);
        let mut outbox = Vec::new();
        encode_peer_into(builder, &envelope, &mut outbox).expect("a parsed envelope encodes into an outbox");
        let linked = Bytes::from(outbox);
        assert_eq!(parse_peer(&linked).expect("a link's frame parses"), envelope);
        assert_eq!(parse_peer_shared(&linked).expect("a link's frame parses in place"), envelope);
    }
}
