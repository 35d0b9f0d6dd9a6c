//! Three nodes sharing a cluster secret form a cluster and replicate; a fourth node with a
//! wrong secret is refused: its membership datagrams are dropped (it never joins), a peer link
//! opened with the wrong secret is closed and logged, and the three keep serving at ALL.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{peer_port, start_node_with, start_three_nodes_with, SETTLE_DEADLINE};
use common::Server;
use ringkv_wire::{Consistency, Operation, Outcome};

const SECRET: &str = "the cluster's shared secret";
const WRONG_SECRET: &str = "not the cluster's secret";

fn config(root: &Path, name: &str, secret: &str) -> String {
    let path = root.join(name);
    std::fs::write(&path, format!("cluster_secret = \"{secret}\"\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

fn put_all(node: &Server, key: &str) {
    let operation =
        Operation::Put { key: Bytes::from(key.to_owned()), value: Bytes::from("v"), ttl_ms: None };
    let outcome = node.client().execute_at(operation, Some(Consistency::All));
    assert!(matches!(outcome, Ok(Outcome::Written { .. })), "{key}: {outcome:?}");
}

/// Waits until `node`'s log contains `text`.
fn wait_for_log(node: &Server, text: &str) {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while !node.log().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in the log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cluster_peers_need_the_cluster_secret() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let right = config(root.path(), "right.toml", SECRET);
    let nodes = start_three_nodes_with(root.path(), &["--config", &right]);
    for (index, node) in nodes.iter().enumerate() {
        put_all(node, &format!("before-{index}"));
    }

    let wrong = config(root.path(), "wrong.toml", WRONG_SECRET);
    let intruder = start_node_with(root.path(), 4, Some(peer_port(&nodes[0])), &["--config", &wrong]);
    wait_for_log(&nodes[0], "dropping a membership datagram without a valid cluster-secret tag");

    // A peer link with the wrong secret (what `ringkv admin repair` opens) is refused; with the
    // right one it is served.
    let peer = format!("127.0.0.1:{}", peer_port(&nodes[0]));
    let client = format!("127.0.0.1:{}", nodes[0].client_port);
    let repair = |secret: &str| {
        Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["admin", "repair", "--addr", &client, "--peer-addr", &peer, "--cluster-secret", secret])
            .output()
            .unwrap()
    };
    let refused = repair(WRONG_SECRET);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cluster secret"), "{refused:?}");
    wait_for_log(&nodes[0], "a peer failed authentication; closing its link");
    let served = repair(SECRET);
    assert!(matches!(served.status.code(), Some(0 | 1)), "{served:?}");

    // The three keep serving at ALL, and none of them ever saw the intruder up.
    for (index, node) in nodes.iter().enumerate() {
        put_all(node, &format!("after-{index}"));
    }
    for node in &nodes {
        assert!(!node.log().contains("node up node_id=4 "), "the intruder joined:\n{}", node.log());
    }
    assert!(!intruder.log().contains("node up node_id=1 "), "the intruder joined:\n{}", intruder.log());
}
