//! A request sent to a shard's own port for a key another shard owns is forwarded over the
//! cross-shard mesh and answered on the same connection; batches mixing both shards' keys too.

use crate::common;

use bytes::Bytes;
use common::{keys_on_shard, Server};
use ringkv_wire::{Command, Operation, Outcome, Reply};

#[test]
fn server_forwards_requests_for_other_shards() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let topology = server.client().topology();
    let on_zero = keys_on_shard(&topology, 0, 20);
    let on_one = keys_on_shard(&topology, 1, 20);

    let mut shard_zero = server.shard_client(0);
    let mut shard_one = server.shard_client(1);

    // Writes land on the wrong shard's port; reads come from the other port and the shared one.
    for key in &on_one {
        shard_zero.put(key, b"written via shard 0");
    }
    for key in &on_zero {
        shard_one.put(key, b"written via shard 1");
    }
    let mut shared = server.client();
    for key in &on_one {
        assert_eq!(shard_one.get_value(key).as_deref(), Some(&b"written via shard 0"[..]));
        assert_eq!(shard_zero.get_value(key).as_deref(), Some(&b"written via shard 0"[..]));
        assert_eq!(shared.get_value(key).as_deref(), Some(&b"written via shard 0"[..]));
    }
    for key in &on_zero {
        assert_eq!(shard_zero.get_value(key).as_deref(), Some(&b"written via shard 1"[..]));
        assert_eq!(shard_one.get_value(key).as_deref(), Some(&b"written via shard 1"[..]));
    }

    // Versions come from the owning shard's clock: a forwarded write and a direct one to the
    // same key still increase.
    let forwarded = shard_zero.put(&on_one[0], b"v1");
    let direct = shard_one.put(&on_one[0], b"v2");
    assert!(direct > forwarded);

    // A batch mixing keys of both shards, sent to shard 1's port, answered in request order.
    let operations: Vec<Operation> = on_zero
        .iter()
        .zip(&on_one)
        .flat_map(|(zero, one)| {
            [
                Operation::Delete { key: Bytes::copy_from_slice(zero) },
                Operation::Get { key: Bytes::copy_from_slice(one) },
            ]
        })
        .collect();
    let Reply::Batch(results) = shard_one.call(Command::Batch(operations)) else {
        panic!("batch reply expected")
    };
    assert_eq!(results.len(), 40);
    for (index, result) in results.iter().enumerate() {
        if index % 2 == 0 {
            assert!(matches!(result, Ok(Outcome::Written { .. })), "{index}: {result:?}");
        } else {
            assert!(matches!(result, Ok(Outcome::Value { .. })), "{index}: {result:?}");
        }
    }
    for key in &on_zero {
        assert_eq!(shard_one.get(key), Outcome::NotFound);
    }
}
