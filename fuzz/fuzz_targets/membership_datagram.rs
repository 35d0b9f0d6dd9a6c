//! Arbitrary bytes as the membership datagrams a node receives (foca's messages, the payload of
//! a peer `Membership` envelope). The input is cut into datagrams, each preceded by a two-byte
//! little-endian length; between datagrams the node's timers run. Nothing may panic, the outbox and the event
//! list drain, and the node always counts itself up.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use rand_foca::rngs::StdRng;
use rand_foca::SeedableRng;
use ringkv_replication::membership::{
    Membership, MembershipTiming, NodeIdentity, MEMBERSHIP_PACKET_BYTES_MAX,
};

fuzz_target!(|data: &[u8]| {
    let address: SocketAddr = "127.0.0.1:7000".parse().expect("address");
    let identity = NodeIdentity {
        node_id: 1,
        generation: 1,
        peer_address: address,
        client_address: "127.0.0.1:6000".parse().expect("address"),
        shard_port_base: 6100,
        shards: 1,
        vnodes_per_shard: 8,
        tokens: vec![1, 1 << 40, 1 << 62],
    };
    let seed: SocketAddr = "127.0.0.2:7000".parse().expect("address");
    let mut now_ms = 1_000;
    let mut membership =
        Membership::new(identity, MembershipTiming::default(), StdRng::seed_from_u64(7), now_ms);
    membership.join(&[seed], now_ms);
    let mut rest = data;
    while rest.len() >= 2 {
        let (length, tail) = rest.split_at(2);
        let length = usize::from(u16::from_le_bytes([length[0], length[1]])).min(tail.len());
        let (datagram, next) = tail.split_at(length);
        rest = next;
        membership.handle_data(datagram, now_ms);
        now_ms += 150;
        membership.tick(now_ms);
        for (_, sent) in membership.drain_outbox() {
            assert!(sent.len() <= MEMBERSHIP_PACKET_BYTES_MAX);
        }
        membership.drain_events().for_each(drop);
        assert!(membership.up().contains_key(&1), "the node counts itself up");
    }
    // A last datagram of everything, as one large packet.
    membership.handle_data(data, now_ms);
    membership.tick(now_ms + 10_000);
});
