//! SIGTERM while a client has many writes in flight: the server stops reading, answers every
//! request it had read with a real result (no errors from a half-closed engine), closes idle
//! connections, exits 0, and every write it acknowledged is there after a restart.

use crate::common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{request_frame, Server};
use ringkv_wire::{Command, Operation, Outcome, Reply, Request};

#[test]
fn server_finishes_in_flight_requests_on_sigterm() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(&root.path().join("data"));
    let mut idle = server.client();
    assert_eq!(idle.call(Command::Ping), Reply::Pong);
    let mut client = server.client();

    let key_of = |id: u64| Bytes::from(format!("in-flight-{id}"));
    let mut frames = Vec::new();
    for id in 1..=300 {
        frames.extend_from_slice(&request_frame(&Request {
            consistency: None,
            id,
            command: Command::Single(Operation::Put { key: key_of(id), value: key_of(id), ttl_ms: None }),
        }));
    }
    client.send_raw(&frames);
    // Make sure at least one write is acknowledged, so the stop happens with traffic going.
    let mut acknowledged = HashMap::new();
    let first = client.receive();
    let Reply::Single(Outcome::Written { version }) = first.reply else { panic!("{first:?}") };
    acknowledged.insert(first.id, version);

    server.signal_terminate();
    while let Some(response) = client.receive_or_closed() {
        match response.reply {
            Reply::Single(Outcome::Written { version }) => {
                acknowledged.insert(response.id, version);
            }
            other => panic!("request {} answered {other:?} during shutdown", response.id),
        }
    }
    assert!(idle.is_closed(), "an idle connection stayed open through shutdown");
    let status = server.wait_for_exit();
    assert!(status.success(), "exit status {status}:\n{}", server.log());

    server.restart();
    let mut client = server.client();
    for (&id, &version) in &acknowledged {
        assert_eq!(
            client.get(&key_of(id)),
            Outcome::Value { value: key_of(id), version, expires_at_ms: None },
            "write {id} lost"
        );
    }
}
