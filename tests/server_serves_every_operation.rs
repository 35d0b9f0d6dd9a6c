//! Every request type against a real two-shard server over the shared client port: get, put,
//! delete, compare-and-swap (by version and "must not exist"), batch, topology, ping, and TTL
//! expiry.

use crate::common;

use bytes::Bytes;
use common::{Server, SHARDS};
use ringkv_wire::{Command, Expected, Operation, Outcome, Reply};

#[test]
fn server_serves_every_operation() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = server.client();

    assert_eq!(client.call(Command::Ping), Reply::Pong);

    // Put, then get returns the value with the version the put reported.
    let first = client.put(b"alpha", b"one");
    assert_eq!(
        client.get(b"alpha"),
        Outcome::Value { value: Bytes::from_static(b"one"), version: first, expires_at_ms: None }
    );
    assert_eq!(client.get(b"missing"), Outcome::NotFound);

    // Every write gets a newer version.
    let second = client.put(b"alpha", b"two");
    assert!(second > first, "{second} <= {first}");

    // Compare-and-swap on a version: a stale version is refused and reports the current one.
    assert_eq!(
        client.compare_and_swap(b"alpha", Expected::Version(first), b"three"),
        Outcome::CasMismatch { current_version: Some(second) }
    );
    let Outcome::Written { version: third } =
        client.compare_and_swap(b"alpha", Expected::Version(second), b"three")
    else {
        panic!("compare-and-swap on the current version must succeed");
    };
    assert!(third > second);
    assert_eq!(client.get_value(b"alpha").as_deref(), Some(&b"three"[..]));

    // Compare-and-swap on absence.
    assert_eq!(
        client.compare_and_swap(b"alpha", Expected::Absent, b"x"),
        Outcome::CasMismatch { current_version: Some(third) }
    );
    assert!(matches!(client.compare_and_swap(b"beta", Expected::Absent, b"b"), Outcome::Written { .. }));
    assert_eq!(client.get_value(b"beta").as_deref(), Some(&b"b"[..]));

    // Delete makes the key absent, and absent again for compare-and-swap.
    let deleted = client.delete(b"alpha");
    assert!(deleted > third);
    assert_eq!(client.get(b"alpha"), Outcome::NotFound);
    assert!(matches!(client.compare_and_swap(b"alpha", Expected::Absent, b"again"), Outcome::Written { .. }));

    // A batch: one result per operation, in order, spread over both shards.
    let keys: Vec<Bytes> = (0..20).map(|index| Bytes::from(format!("batch-{index}"))).collect();
    let mut operations: Vec<Operation> = keys
        .iter()
        .map(|key| Operation::Put { key: key.clone(), value: key.clone(), ttl_ms: None })
        .collect();
    operations.push(Operation::Get { key: Bytes::from_static(b"beta") });
    operations.push(Operation::Get { key: Bytes::from_static(b"nothing-here") });
    let Reply::Batch(results) = client.call(Command::Batch(operations)) else {
        panic!("batch reply expected")
    };
    assert_eq!(results.len(), keys.len() + 2);
    for result in &results[..keys.len()] {
        assert!(matches!(result, Ok(Outcome::Written { .. })), "{result:?}");
    }
    assert!(matches!(&results[keys.len()], Ok(Outcome::Value { value, .. }) if &value[..] == b"b"));
    assert_eq!(results[keys.len() + 1], Ok(Outcome::NotFound));
    let reads: Vec<Operation> = keys.iter().map(|key| Operation::Get { key: key.clone() }).collect();
    let Reply::Batch(results) = client.call(Command::Batch(reads)) else { panic!("batch reply expected") };
    for (key, result) in keys.iter().zip(&results) {
        assert!(matches!(result, Ok(Outcome::Value { value, .. }) if value == key), "{key:?}: {result:?}");
    }

    // Topology: every shard with its own port, the ranges covering the ring exactly once.
    let topology = client.topology();
    assert_eq!(topology.shards.len(), SHARDS);
    for (shard_id, shard) in topology.shards.iter().enumerate() {
        assert_eq!(shard.shard_id, shard_id as u32);
        assert_eq!(shard.port, server.shard_port(shard_id as u32));
        assert!(!shard.token_ranges.is_empty());
    }
    for probe in [0u64, 1, u64::MAX, 1 << 63, ringkv_shard::token(b"alpha")] {
        let owners = topology
            .shards
            .iter()
            .filter(|shard| shard.token_ranges.iter().any(|range| range.contains(probe)))
            .count();
        assert_eq!(owners, 1, "token {probe:#x}");
    }

    // TTL: a value with a short TTL is readable, then reads as absent once it has expired.
    // Poll for expiry rather than sleeping a fixed time: the test asserts the outcome, not when.
    client.put_with_ttl(b"ephemeral", b"soon gone", Some(300));
    let before_ms = unix_ms();
    let lasting = client.put_with_ttl(b"lasting", b"stays", Some(3_600_000));
    let after_ms = unix_ms();
    let mut expired = false;
    for _ in 0..600 {
        if client.get(b"ephemeral") == Outcome::NotFound {
            expired = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(expired, "a value with a 300 ms TTL never expired");
    // A read carries the expiry: an hour after the server applied the write, which it did
    // between the test's clock readings around the put (one machine, one clock).
    let Outcome::Value { value, version, expires_at_ms: Some(expires_at_ms) } = client.get(b"lasting") else {
        panic!("a value with a TTL reads back with its expiry");
    };
    assert_eq!((&value[..], version), (&b"stays"[..], lasting));
    assert!((before_ms + 3_600_000..=after_ms + 3_600_000).contains(&expires_at_ms), "{expires_at_ms}");
    // A put without a TTL replaces the expiry with none.
    let forever = client.put(b"lasting", b"stays");
    assert_eq!(
        client.get(b"lasting"),
        Outcome::Value { value: Bytes::from_static(b"stays"), version: forever, expires_at_ms: None }
    );

    // Deleting an absent key is a write like any other.
    assert!(client.delete(b"never-written") > 0);
    assert!(matches!(
        client.execute(Operation::Get { key: Bytes::from(vec![b'k'; 256]) }),
        Ok(Outcome::NotFound)
    ));
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
