//! Many requests in flight on one connection: every reply carries its request's id, each id is
//! answered exactly once, and a cheap request sent after a slow one is answered first.

use crate::common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{request_frame, Server};
use ringkv_wire::{Command, Operation, Outcome, Reply, Request};

#[test]
fn server_pipelines_requests_out_of_order() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = server.client();

    // A put waits for its fdatasync; a ping sent right behind it in the same write needs
    // nothing, so its reply overtakes the put's.
    let put = Request {
        consistency: None,
        id: 1,
        command: Command::Single(Operation::Put {
            key: Bytes::from_static(b"slow"),
            value: Bytes::from_static(b"durable"),
            ttl_ms: None,
        }),
    };
    let ping = Request { consistency: None, id: 2, command: Command::Ping };
    let mut both = request_frame(&put);
    both.extend_from_slice(&request_frame(&ping));
    client.send_raw(&both);
    let first = client.receive();
    let second = client.receive();
    assert_eq!(
        first,
        ringkv_wire::Response { id: 2, reply: Reply::Pong },
        "the ping should overtake the put"
    );
    assert_eq!(second.id, 1);
    assert!(matches!(second.reply, Reply::Single(Outcome::Written { .. })), "{second:?}");

    // Hundreds of mixed requests sent before reading any reply.
    let count = 400u64;
    let mut expected = HashMap::new();
    let mut frames = Vec::new();
    for index in 0..count {
        let id = 1000 + index;
        let key = Bytes::from(format!("pipelined-{}", index % 100));
        let command = match index % 4 {
            0 | 1 => Command::Single(Operation::Put { key: key.clone(), value: key, ttl_ms: None }),
            2 => Command::Single(Operation::Get { key: Bytes::from_static(b"slow") }),
            _ => Command::Ping,
        };
        expected.insert(id, command.clone());
        frames.extend_from_slice(&request_frame(&Request { consistency: None, id, command }));
    }
    client.send_raw(&frames);

    let mut order = Vec::new();
    while !expected.is_empty() {
        let response = client.receive();
        let command = expected
            .remove(&response.id)
            .unwrap_or_else(|| panic!("unexpected or repeated id {}", response.id));
        match (command, response.reply) {
            (Command::Ping, Reply::Pong) => {}
            (Command::Single(Operation::Put { .. }), Reply::Single(Outcome::Written { .. })) => {}
            (Command::Single(Operation::Get { .. }), Reply::Single(Outcome::Value { value, .. })) => {
                assert_eq!(&value[..], b"durable");
            }
            (command, reply) => panic!("request {} ({command:?}) got {reply:?}", response.id),
        }
        order.push(response.id);
    }
    assert_eq!(order.len(), count as usize);

    // The connection is still in step after all that.
    assert_eq!(client.get_value(b"pipelined-4").as_deref(), Some(&b"pipelined-4"[..]));
}
