//! A server killed with SIGKILL while a client pipelines writes loses none of the writes it
//! acknowledged: after a restart every acknowledged key reads back with its value and version.

use crate::common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{request_frame, Server};
use ringkv_wire::{Command, Operation, Outcome, Reply, Request};

/// Writes sent ahead of their acknowledgements.
const WINDOW: u64 = 32;

#[test]
fn server_keeps_acknowledged_writes_after_sigkill() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(&root.path().join("data"));
    let mut client = server.client();

    let key_of = |id: u64| Bytes::from(format!("acked-{id}"));
    let value_of = |id: u64| Bytes::from(format!("value-{id}-").repeat(20));
    let put = |id: u64| {
        request_frame(&Request {
            consistency: None,
            id,
            command: Command::Single(Operation::Put { key: key_of(id), value: value_of(id), ttl_ms: None }),
        })
    };

    // Keep WINDOW writes in flight; kill the server once 500 are acknowledged, with more
    // still in flight.
    let mut acknowledged: HashMap<u64, u64> = HashMap::new();
    let mut next_id = 1;
    while next_id <= WINDOW {
        client.send_raw(&put(next_id));
        next_id += 1;
    }
    while acknowledged.len() < 500 {
        let response = client.receive();
        let Reply::Single(Outcome::Written { version }) = response.reply else {
            panic!("write {} failed: {:?}", response.id, response.reply)
        };
        acknowledged.insert(response.id, version);
        client.send_raw(&put(next_id));
        next_id += 1;
    }
    server.kill();
    // Replies that arrived before the kill are acknowledgements too.
    while let Some(response) = client.receive_or_closed() {
        if let Reply::Single(Outcome::Written { version }) = response.reply {
            acknowledged.insert(response.id, version);
        }
    }

    server.restart();
    let mut client = server.client();
    for (&id, &version) in &acknowledged {
        assert_eq!(
            client.get(&key_of(id)),
            Outcome::Value { value: value_of(id), version, expires_at_ms: None },
            "acknowledged write {id} lost"
        );
    }
    // Writes never acknowledged may or may not have survived, but never as anything else.
    for id in 1..next_id {
        if acknowledged.contains_key(&id) {
            continue;
        }
        match client.get(&key_of(id)) {
            Outcome::NotFound => {}
            Outcome::Value { value, .. } => assert_eq!(value, value_of(id)),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
}
