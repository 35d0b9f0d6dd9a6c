//! The blocking client against three real nodes, N = 3: each key goes to the owning shard of
//! the client's preferred node (every node replicates every key), or, asked for, of its first
//! replica; every key written is read back, ALL succeeds with every node up; after
//! the node the client connected to is SIGKILLed, writes and reads go on through the other
//! replicas, ALL fails with `Unavailable` while QUORUM works, on the blocking and the tokio
//! client alike.

use crate::common;

use std::collections::BTreeSet;

use common::cluster::{address, start_three_nodes, wait_for_every_shard, wait_for_logs};
use common::SHARDS;
use ringkv_client::blocking::Client;
use ringkv_client::{token_of, ClientOptions, Consistency, Error, ErrorCode, ReplicaChoice, Topology};

/// The first replica of `key`.
fn first_replica(topology: &Topology, key: &str) -> u16 {
    topology.replicas_of_token(token_of(key.as_bytes())).expect("the ring covers every token")[0]
}

/// The port of `node_id`'s shard owning `key`'s token.
fn owning_port(topology: &Topology, node_id: u16, key: &str) -> u16 {
    let token = token_of(key.as_bytes());
    let node = topology.node(node_id).unwrap();
    let shard = node.shards.iter().find(|shard| shard.token_ranges.iter().any(|range| range.contains(token)));
    shard.expect("a shard owns every token").port
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::Server(failure)) => assert_eq!(failure.code, ErrorCode::Unavailable, "{failure}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn client_routes_keys_to_replicas() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let [mut first, second, third] = start_three_nodes(root.path());
    let mut client = Client::connect(address(&first)).unwrap();
    let topology = client.topology().cloned().unwrap();
    assert_eq!((topology.nodes.len(), topology.replicas), (3, 3), "{topology:?}");

    // Every node replicates every key: each key goes to the preferred node's owning shard.
    let preferred = client.preferred_node().expect("a topology with a ring");
    let keys: Vec<String> = (0..200).map(|index| format!("key-{index}")).collect();
    for key in &keys {
        let route = client.route(key);
        assert_eq!(
            (route.node_id, route.address.port()),
            (Some(preferred), owning_port(&topology, preferred, key))
        );
        client.put(key, format!("value of {key}")).unwrap();
    }
    let by_preferred_node = client.connected_addresses();
    assert!(by_preferred_node.len() <= SHARDS + 1, "its shards and the first contact: {by_preferred_node:?}");

    // Asked to, a client sends each key to its first replica's owning shard instead.
    let options = ClientOptions { replica_choice: ReplicaChoice::FirstReplica, ..ClientOptions::default() };
    let mut by_first = Client::connect_with(address(&first), options).unwrap();
    assert_eq!(by_first.preferred_node(), None);
    for key in &keys {
        let route = by_first.route(key);
        let node_id = first_replica(&topology, key);
        assert_eq!(
            (route.node_id, route.address.port()),
            (Some(node_id), owning_port(&topology, node_id, key))
        );
        let stored = by_first.get(key).unwrap().expect("written");
        assert_eq!(stored.value, format!("value of {key}").as_bytes(), "{key}");
    }
    // Connections: each node's shards (bounded by one per node shard) and the first contact.
    let connected = by_first.connected_addresses();
    let ports: BTreeSet<u16> = connected.iter().map(|address| address.port()).collect();
    assert_eq!(ports.len(), connected.len());
    assert!(connected.len() <= 3 * SHARDS + 1, "{connected:?}");
    for node in [&first, &second, &third] {
        assert!(
            ports.contains(&(node.client_port + 1)),
            "no connection to {}: {connected:?}",
            node.client_port
        );
    }

    // Every node up: ALL can be met.
    client.with_consistency(Consistency::All).put("all-up", "yes").unwrap();
    assert!(client.with_consistency(Consistency::All).get("all-up").unwrap().is_some());

    // The node the client connected to, first replica of some keys, is killed; once the others
    // notice, requests go on through the client, whose topology still shows it up.
    let on_first: Vec<&String> = keys.iter().filter(|key| first_replica(&topology, key) == 1).collect();
    assert!(!on_first.is_empty());
    first.kill();
    wait_for_logs(&[(&second, 0), (&third, 0)], "node down", &[1]);
    wait_for_every_shard(&[&second, &third], &[2, 3], &[1]);
    // A write whose connection cannot be made was never sent: it goes to the next replica.
    by_first.put(on_first[0], "rewritten").unwrap();
    assert_eq!(by_first.get(on_first[0]).unwrap().unwrap().value, "rewritten".as_bytes());
    for key in keys.iter().filter(|key| *key != on_first[0]) {
        let stored = by_first.get(key).unwrap().expect("kept by the other replicas");
        assert_eq!(stored.value, format!("value of {key}").as_bytes(), "{key}");
        let stored = client.get(key).unwrap().expect("kept by the other replicas");
        assert_eq!(stored.value, format!("value of {key}").as_bytes(), "{key}");
    }
    // The topology was fetched again, from a node still up.
    let refreshed = by_first.topology().cloned().unwrap();
    assert!(!refreshed.node(1).unwrap().up, "{refreshed:?}");
    assert_ne!(by_first.route(on_first[1]).node_id, Some(1));
    by_first.ping().unwrap();

    // ALL cannot be met with a replica down; QUORUM can.
    assert_unavailable(client.with_consistency(Consistency::All).get(&keys[0]));
    assert_unavailable(client.with_consistency(Consistency::All).put("all", "no"));
    client.with_consistency(Consistency::Quorum).put("quorum", "yes").unwrap();
    assert!(client.with_consistency(Consistency::Quorum).get("quorum").unwrap().is_some());

    // The tokio client, from another node, the same.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = ringkv_client::tokio::Client::connect(address(&second)).await.unwrap();
        assert_unavailable(client.with_consistency(Consistency::All).get("quorum").await);
        let quorum = client.with_consistency(Consistency::Quorum);
        assert_eq!(quorum.get("quorum").await.unwrap().unwrap().value, "yes".as_bytes());
        quorum.put("quorum", "again").await.unwrap();
    });
}
