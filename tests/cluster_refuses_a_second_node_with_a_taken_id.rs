//! A second process claiming a node id that a member already holds is refused: the cluster
//! keeps the first holder on its ring and logs the conflict, and the newcomer serves nothing.

use crate::common;

use bytes::Bytes;
use common::cluster::{peer_port, start_node, wait_for_logs};
use ringkv_wire::{ErrorCode, Operation, Outcome};

#[test]
fn a_node_claiming_a_taken_id_serves_nothing_and_the_cluster_keeps_the_holder() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let first = start_node(root.path(), 1, None);
    let second = start_node(root.path(), 2, Some(peer_port(&first)));
    wait_for_logs(&[(&first, 0)], "node up", &[2]);
    wait_for_logs(&[(&second, 0)], "node up", &[1]);

    // Another process, with its own data directory and ports, claims node id 2.
    let impostor = common::Server::start_with(
        &root.path().join("impostor"),
        &[
            "--node-id",
            "2",
            "--replication-factor",
            "3",
            "--seeds",
            &format!("127.0.0.1:{}", peer_port(&first)),
        ],
    );
    let deadline = std::time::Instant::now() + common::cluster::SETTLE_DEADLINE;
    while !impostor.log().contains("already held") {
        assert!(std::time::Instant::now() < deadline, "the impostor never learned:\n{}", impostor.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    while !first.log().contains("two members claim one node id") {
        assert!(std::time::Instant::now() < deadline, "the holder's peer never logged it:\n{}", first.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let put = Operation::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v"), ttl_ms: None };
    let refused = impostor.client().execute(put.clone()).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    assert!(refused.message.contains("already held"), "{}", refused.message);

    // The cluster keeps serving with the first holder of id 2.
    let Outcome::Written { version } = first.client().execute(put).unwrap() else {
        panic!("expected a write")
    };
    assert_eq!(
        second.client().get(b"k"),
        Outcome::Value { value: Bytes::from_static(b"v"), version, expires_at_ms: None }
    );
    let topology = first.client().topology();
    let holder = topology.nodes.iter().find(|node| node.node_id == 2).expect("node 2 listed");
    assert_eq!(holder.address, format!("127.0.0.1:{}", second.client_port));
}
