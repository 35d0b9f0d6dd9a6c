//! The client computes each key's token exactly as the server does, routes it to the shard the
//! server's topology names, and sends it to that shard's own port.

use crate::common;

use bytes::Bytes;
use common::{keys_on_shard, Server};
use ringkv_client::blocking::Client;
use ringkv_client::{token_of, Operation, Outcome};

#[test]
fn client_routes_each_key_to_its_owning_shard() {
    let _slot = common::test_slot();
    for index in 0..10_000u32 {
        let key = format!("token-{index}");
        assert_eq!(token_of(key.as_bytes()), ringkv_shard::token(key.as_bytes()), "{key}");
    }

    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let topology = server.client().topology();

    for shard_id in 0..common::SHARDS as u32 {
        let keys = keys_on_shard(&topology, shard_id, 200);
        // A fresh client holds only the shared connection it fetched the topology on.
        let mut client = Client::connect(("127.0.0.1", server.client_port)).unwrap();
        assert_eq!(client.topology(), Some(&topology));
        for key in &keys {
            let route = client.route(key);
            assert_eq!(route.shard_id, Some(shard_id));
            assert_eq!(route.address.port(), server.shard_port(shard_id));
        }
        let puts = keys
            .iter()
            .map(|key| Operation::Put {
                key: Bytes::from(key.clone()),
                value: Bytes::from_static(b"v"),
                ttl_ms: None,
            })
            .collect();
        for result in client.pipeline(puts) {
            assert!(matches!(result, Ok(Outcome::Written { .. })), "{result:?}");
        }
        client.get(&keys[0]).unwrap().expect("written");
        // Every request for this shard's keys went to its port and to no other shard's.
        let ports: Vec<u16> = client.connected_addresses().iter().map(|address| address.port()).collect();
        let mut expected = vec![server.client_port, server.shard_port(shard_id)];
        expected.sort();
        assert_eq!(ports, expected);
    }
}
