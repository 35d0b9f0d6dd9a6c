//! The blocking client against a real server: every operation, a batch, and a pipeline of
//! many requests on one connection per shard.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::Server;
use ringkv_client::blocking::Client;
use ringkv_client::{CasResult, Expected, Operation, Outcome};

#[test]
fn client_blocking_serves_every_operation() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = Client::connect(("127.0.0.1", server.client_port)).unwrap();

    client.ping().unwrap();
    let topology = client.topology().cloned().expect("fetched on connect");
    assert_eq!(topology.shards.len(), common::SHARDS);
    assert_eq!(client.refresh_topology().unwrap(), topology);

    assert_eq!(client.get("missing").unwrap(), None);
    let first = client.put("fruit", "apple").unwrap();
    let stored = client.get("fruit").unwrap().expect("just written");
    assert_eq!((&stored.value[..], stored.version), (&b"apple"[..], first));

    let ttl_version = client.put_with_ttl("ephemeral", "soon gone", Duration::from_secs(3600)).unwrap();
    assert_eq!(client.get("ephemeral").unwrap().map(|stored| stored.version), Some(ttl_version));

    assert_eq!(
        client.compare_and_swap("fruit", Expected::Version(first + 1_000_000), "cherry").unwrap(),
        CasResult::Mismatch { current_version: Some(first) }
    );
    let CasResult::Swapped { version: swapped } =
        client.compare_and_swap("fruit", Expected::Version(first), "banana").unwrap()
    else {
        panic!("the expectation held")
    };
    assert!(swapped > first);
    assert_eq!(
        client.compare_and_swap("fruit", Expected::Absent, "cherry").unwrap(),
        CasResult::Mismatch { current_version: Some(swapped) }
    );
    assert!(matches!(
        client.compare_and_swap("new", Expected::Absent, "x").unwrap(),
        CasResult::Swapped { .. }
    ));

    let deleted = client.delete("fruit").unwrap();
    assert!(deleted > swapped);
    assert_eq!(client.get("fruit").unwrap(), None);

    let results = client
        .batch(vec![
            Operation::Put {
                key: Bytes::from_static(b"b1"),
                value: Bytes::from_static(b"one"),
                ttl_ms: None,
            },
            Operation::Get { key: Bytes::from_static(b"b1") },
            Operation::Get { key: Bytes::from_static(b"b-missing") },
        ])
        .unwrap();
    assert!(matches!(results[0], Ok(Outcome::Written { .. })));
    assert!(matches!(&results[1], Ok(Outcome::Value { value, .. }) if &value[..] == b"one"));
    assert_eq!(results[2], Ok(Outcome::NotFound));

    // Many requests in flight per connection: 3000 puts then 3000 gets, all sent before their
    // replies are read (in windows of in_flight_max per shard connection).
    let keys: Vec<Bytes> = (0..3000).map(|index| Bytes::from(format!("pipelined-{index}"))).collect();
    let puts = keys
        .iter()
        .map(|key| Operation::Put { key: key.clone(), value: key.clone(), ttl_ms: None })
        .collect();
    for result in client.pipeline(puts) {
        assert!(matches!(result, Ok(Outcome::Written { .. })), "{result:?}");
    }
    let gets = keys.iter().map(|key| Operation::Get { key: key.clone() }).collect();
    for (key, result) in keys.iter().zip(client.pipeline(gets)) {
        assert!(matches!(&result, Ok(Outcome::Value { value, .. }) if value == key), "{key:?}: {result:?}");
    }
    // One connection per shard port plus the shared one, however many requests went out.
    assert_eq!(client.connected_addresses().len(), 1 + common::SHARDS);
}
