//! Three real nodes, each with its own certificate from one CA, replicate over mutual TLS: a
//! write at quorum through one node reads back at `all` through another. A fourth node whose
//! certificate another CA signed is refused on every peer link: a write it coordinates at
//! `all` fails, the others log the refused handshakes, and the three go on replicating.
//!
//! Gossip datagrams are not carried by TLS, so the stranger does learn the membership; what it
//! cannot do is exchange replication traffic with the cluster.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{peer_port, start_node_with, wait_for_logs, SETTLE_DEADLINE};
use common::tls::{Authority, Identity};
use common::Server;
use ringkv_client::blocking::Client;
use ringkv_client::{ClientOptions, Consistency, TlsOptions};

fn start(root: &Path, node_id: u16, seed: Option<u16>, identity: &Identity) -> Server {
    let args = identity.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_node_with(root, node_id, seed, &args)
}

fn client(server: &Server, ca_file: &Path) -> Client {
    let options =
        ClientOptions { tls: Some(TlsOptions::from_ca_file(ca_file).unwrap()), ..ClientOptions::default() };
    Client::connect_with(("127.0.0.1", server.client_port), options).unwrap()
}

/// Retries `attempt` until it succeeds, while the nodes see each other (a guard, not a timer).
fn eventually<T>(mut attempt: impl FnMut() -> Result<T, ringkv_client::Error>) -> T {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(error) => {
                assert!(Instant::now() < deadline, "still failing: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn tls_cluster_replicates_over_mutual_tls() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let authority = Authority::new(root.path(), "cluster");
    let identities: Vec<Identity> =
        (1..=3).map(|node| authority.issue(root.path(), &format!("node-{node}"))).collect();
    let first = start(root.path(), 1, None, &identities[0]);
    let second = start(root.path(), 2, Some(peer_port(&first)), &identities[1]);
    let third = start(root.path(), 3, Some(peer_port(&first)), &identities[2]);
    wait_for_logs(&[(&first, 0)], "node up", &[2, 3]);
    wait_for_logs(&[(&second, 0)], "node up", &[1, 3]);
    wait_for_logs(&[(&third, 0)], "node up", &[1, 2]);

    let mut writer = client(&first, &authority.cert_file);
    let mut reader = client(&third, &authority.cert_file);
    for key in 0..20 {
        let key = format!("key-{key}");
        eventually(|| writer.with_consistency(Consistency::Quorum).put(&key, format!("value of {key}")));
    }
    for key in 0..20 {
        let key = format!("key-{key}");
        let stored =
            eventually(|| reader.with_consistency(Consistency::All).get(&key)).expect("written at quorum");
        assert_eq!(stored.value, format!("value of {key}").as_bytes());
    }

    // `ringkv admin repair` reaches the peer port with a certificate from the CA.
    let repair = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["admin", "repair", "--addr", &format!("127.0.0.1:{}", second.client_port)])
        .args(["--peer-addr", &format!("127.0.0.1:{}", peer_port(&second))])
        .arg("--tls-ca")
        .arg(&authority.cert_file)
        .arg("--tls-cert")
        .arg(&identities[0].cert_file)
        .arg("--tls-key")
        .arg(&identities[0].key_file)
        .output()
        .unwrap();
    let repair_output = String::from_utf8_lossy(&repair.stdout);
    assert!(repair.status.success(), "{repair_output}{}", String::from_utf8_lossy(&repair.stderr));
    assert_eq!(
        repair_output.lines().filter(|line| line.contains("0 failed")).count(),
        common::SHARDS,
        "{repair_output}"
    );

    // A node with a certificate from another CA (it trusts the cluster's CA, so only the
    // cluster's refusal stops it).
    let stranger_authority = Authority::new(root.path(), "stranger");
    let mut stranger_identity = stranger_authority.issue(root.path(), "node-4");
    stranger_identity.ca_file = authority.cert_file.clone();
    let stranger = start(root.path(), 4, Some(peer_port(&first)), &stranger_identity);
    wait_for_logs(&[(&stranger, 0)], "node up", &[1]);
    let mut stranger_client = client(&stranger, &stranger_authority.cert_file);
    // Its client reaches only the stranger itself, which then coordinates the write: keys are
    // tried until one has the stranger among its replicas (3 of 4 nodes hold each key).
    let mut tried = Vec::new();
    for key in 0..20 {
        let key = format!("stranger-key-{key}");
        let refused = stranger_client.with_consistency(Consistency::All).put(&key, "stranger-value");
        tried.push(key);
        match refused {
            Ok(_) => panic!("a write coordinated by the stranger reached every replica"),
            Err(ringkv_client::Error::Server(_)) => break,
            Err(_) => continue,
        }
    }
    let logs_refusal = |server: &Server| server.log().contains("a peer link failed its TLS handshake");
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while ![&first, &second, &third].into_iter().any(logs_refusal) {
        assert!(Instant::now() < deadline, "no node logged the stranger's refused links:\n{}", first.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // The three nodes still replicate among themselves (a key's quorum is two of them).
    eventually(|| writer.with_consistency(Consistency::Quorum).put("after", "the stranger"));
    let stored = eventually(|| {
        client(&second, &authority.cert_file).with_consistency(Consistency::Quorum).get("after")
    });
    assert_eq!(stored.expect("written at quorum").value, b"the stranger".to_vec());
    // And the stranger's write reached none of them.
    for server in [&first, &second, &third] {
        let found = eventually(|| {
            client(server, &authority.cert_file).with_consistency(Consistency::Quorum).get("stranger-key")
        });
        assert!(found.is_none(), "the stranger's write reached the cluster");
    }
}
