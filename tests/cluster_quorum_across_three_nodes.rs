//! Three real nodes on loopback, N = 3, W = R = quorum: every operation through every node, a
//! value written through one node read through every other, concurrent writes of one key
//! converging, and quorum reads and writes going on with one node SIGKILLed.

use crate::common;

use bytes::Bytes;
use common::cluster::{eventually, eventually_at, start_three_nodes, wait_for_every_shard, wait_for_logs};
use common::Client;
use ringkv_wire::{Consistency, ErrorCode, Operation, Outcome};

#[test]
fn quorum_operations_through_every_node_survive_one_node_killed() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let [first, second, mut third] = start_three_nodes(root.path());

    let mut clients: Vec<Client> = [&first, &second, &third].iter().map(|node| node.client()).collect();
    // Every operation through every node, each read back through every node.
    for writer in 0..3 {
        for index in 0..10 {
            let key = format!("key-{writer}-{index}").into_bytes();
            let value = format!("value-{writer}-{index}").into_bytes();
            let version = clients[writer].put(&key, &value);
            for reader in clients.iter_mut() {
                assert_eq!(
                    reader.get(&key),
                    Outcome::Value { value: Bytes::from(value.clone()), version, expires_at_ms: None }
                );
            }
        }
    }
    // A value with a TTL reads back through every node with the expiry the write set, and a
    // newer write without one reads back without it: the newest version's expiry goes with it.
    let version = clients[0].put_with_ttl(b"expiring", b"v", Some(3_600_000));
    let Outcome::Value { version: read, expires_at_ms: Some(expires_at_ms), .. } =
        clients[0].get(b"expiring")
    else {
        panic!("a value with a TTL reads back with its expiry");
    };
    assert_eq!(read, version);
    for reader in clients.iter_mut() {
        let expected =
            Outcome::Value { value: Bytes::from_static(b"v"), version, expires_at_ms: Some(expires_at_ms) };
        assert_eq!(reader.get(b"expiring"), expected);
    }
    let version = clients[2].put(b"expiring", b"w");
    for reader in clients.iter_mut() {
        let expected = Outcome::Value { value: Bytes::from_static(b"w"), version, expires_at_ms: None };
        assert_eq!(reader.get(b"expiring"), expected);
    }
    let deleted = clients[1].delete(b"key-0-0");
    assert!(deleted > 0);
    for reader in clients.iter_mut() {
        assert_eq!(reader.get(b"key-0-0"), Outcome::NotFound);
    }
    // Concurrent writes of one key through the three nodes converge to one value everywhere.
    let ports: Vec<u16> = [&first, &second, &third].iter().map(|node| node.client_port).collect();
    let writers: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(index, &port)| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                for round in 0..20 {
                    client.put(b"contended", format!("writer-{index}-round-{round}").as_bytes());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let seen: Vec<Outcome> = clients.iter_mut().map(|client| client.get(b"contended")).collect();
    assert!(seen.windows(2).all(|pair| pair[0] == pair[1]), "nodes disagree: {seen:?}");
    // A read at ALL repairs any replica a late write left behind; then every node's own copy
    // (a read at ONE through it) holds that same value.
    let contended = Operation::Get { key: Bytes::from_static(b"contended") };
    let everyone = clients[0].execute_at(contended.clone(), Some(Consistency::All)).unwrap();
    assert_eq!(everyone, seen[0]);
    for client in clients.iter_mut() {
        assert_eq!(client.execute_at(contended.clone(), Some(Consistency::One)).unwrap(), everyone);
    }

    // One node killed: quorum writes and reads go on through the other two.
    third.kill();
    wait_for_logs(&[(&first, 0), (&second, 0)], "node down", &[3]);
    wait_for_every_shard(&[&first, &second], &[1, 2], &[3]);
    let mut survivors: Vec<Client> = [&first, &second].iter().map(|node| node.client()).collect();
    for index in 0..10 {
        let key = format!("after-kill-{index}").into_bytes();
        let written = eventually(
            &mut survivors[index % 2],
            Operation::Put { key: Bytes::from(key.clone()), value: Bytes::from_static(b"v"), ttl_ms: None },
        );
        let Outcome::Written { version } = written else { panic!("expected a write, got {written:?}") };
        for reader in survivors.iter_mut() {
            assert_eq!(
                reader.get(&key),
                Outcome::Value { value: Bytes::from_static(b"v"), version, expires_at_ms: None }
            );
        }
    }
    // Data written before the kill is still read at quorum.
    assert!(matches!(survivors[0].get(b"key-2-9"), Outcome::Value { .. }));
    // ALL cannot be met with a replica down: refused at once as unavailable.
    let get = |key: &[u8]| Operation::Get { key: Bytes::copy_from_slice(key) };
    let put = |key: &[u8], value: &[u8]| Operation::Put {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        ttl_ms: None,
    };
    for operation in [get(b"key-2-9"), put(b"missed", b"x")] {
        let refused = survivors[0].execute_at(operation, Some(Consistency::All)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    }
    // A value the killed node misses.
    let Outcome::Written { version: missed_version } =
        eventually(&mut survivors[1], put(b"missed", b"while-down"))
    else {
        panic!("expected a write")
    };

    // The killed node comes back and serves again.
    let first_log_bytes = first.log().len();
    third.restart();
    wait_for_logs(&[(&first, first_log_bytes)], "node up", &[3]);
    wait_for_every_shard(&[&first], &[1, 2, 3], &[]);
    let mut back = third.client();
    assert!(matches!(eventually(&mut back, get(b"after-kill-1")), Outcome::Value { .. }));
    // Its own copy of the value it missed is missing, unless the hint a survivor kept for it was
    // replayed already (the node is up again, so that can happen at any moment).
    let own = back.execute_at(get(b"missed"), Some(Consistency::One)).unwrap();
    assert!(
        own == Outcome::NotFound
            || own
                == Outcome::Value {
                    value: Bytes::from_static(b"while-down"),
                    version: missed_version,
                    expires_at_ms: None
                },
        "the restarted node's own copy: {own:?}"
    );
    // A read at ALL sees every replica, answers the newest and repairs the stale one ...
    let everyone = eventually_at(&mut first.client(), get(b"missed"), Consistency::All);
    assert_eq!(
        everyone,
        Outcome::Value {
            value: Bytes::from_static(b"while-down"),
            version: missed_version,
            expires_at_ms: None
        }
    );
    // ... so the restarted node's own copy now has it.
    assert_eq!(
        back.execute_at(get(b"missed"), Some(Consistency::One)).unwrap(),
        Outcome::Value {
            value: Bytes::from_static(b"while-down"),
            version: missed_version,
            expires_at_ms: None
        }
    );
}
