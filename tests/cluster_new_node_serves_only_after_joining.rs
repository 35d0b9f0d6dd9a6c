//! A new node whose seeds do not answer serves nothing (it would otherwise take writes alone, as
//! a cluster of one, and lose them to the ring it later joins); it starts serving as soon as a
//! seed answers.

use crate::common;

use bytes::Bytes;
use common::cluster::{eventually, peer_port, start_node, wait_for_logs};
use ringkv_wire::{ErrorCode, Operation, Outcome};

#[test]
fn a_node_with_silent_seeds_refuses_requests_until_it_joins() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let mut seed = start_node(root.path(), 1, None);
    let seed_peer_port = peer_port(&seed);
    seed.kill();

    let newcomer = start_node(root.path(), 2, Some(seed_peer_port));
    let mut client = newcomer.client();
    let put = Operation::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v"), ttl_ms: None };
    let refused = client.execute(put.clone()).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    assert!(refused.message.contains("joining"), "{}", refused.message);
    let refused = client.execute(Operation::Get { key: Bytes::from_static(b"k") }).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");

    seed.restart();
    wait_for_logs(&[(&newcomer, 0)], "node up", &[1]);
    assert!(matches!(eventually(&mut client, put), Outcome::Written { .. }));
    assert!(matches!(seed.client().get(b"k"), Outcome::Value { .. }));
}
