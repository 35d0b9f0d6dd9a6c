//! A connection's reads are answered in place, and pipelined ones are held in groups so that
//! their cache misses overlap. Held or not, a read must see every write sent before it on the
//! connection, and never one sent after it: in one socket write, runs of reads longer than a
//! group, with puts and deletes of the same keys between them, each read answered with the
//! state its position in the stream gives.

use crate::common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{request_frame, Server};
use ringkv_wire::{Command, Operation, Outcome, Reply, Request};

/// Keys written and read; more than a read-ahead group, so runs of reads cross groups.
const KEYS: u64 = 80;

fn key(index: u64) -> Bytes {
    Bytes::from(format!("pipelined-read-{index}"))
}

#[test]
fn server_pipelined_reads_see_the_writes_before_them() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = server.client();

    // What each key holds as the stream goes on, and what each read must find.
    let mut state: HashMap<u64, Option<Bytes>> = (0..KEYS).map(|index| (index, None)).collect();
    let mut expected_reads: HashMap<u64, Option<Bytes>> = HashMap::new();
    let mut frames = Vec::new();
    let mut id = 1u64;
    let mut send = |command: Command, frames: &mut Vec<u8>| {
        frames.extend_from_slice(&request_frame(&Request { consistency: None, id, command }));
        id += 1;
        id - 1
    };
    for round in 0..4u64 {
        // A run of reads of every key: longer than a group, no write between them.
        for index in 0..KEYS {
            let sent = send(Command::Single(Operation::Get { key: key(index) }), &mut frames);
            expected_reads.insert(sent, state[&index].clone());
        }
        // Writes and reads interleaved, key by key: each read right behind the write it must see.
        for index in 0..KEYS {
            let command = if (index + round) % 5 == 0 {
                state.insert(index, None);
                Command::Single(Operation::Delete { key: key(index) })
            } else {
                let value = Bytes::from(format!("round-{round}-key-{index}"));
                state.insert(index, Some(value.clone()));
                Command::Single(Operation::Put { key: key(index), value, ttl_ms: None })
            };
            send(command, &mut frames);
            let sent = send(Command::Single(Operation::Get { key: key(index) }), &mut frames);
            expected_reads.insert(sent, state[&index].clone());
        }
    }
    let total = id - 1;
    client.send_raw(&frames);

    let mut answered = 0;
    while answered < total {
        let response = client.receive();
        answered += 1;
        let Some(expected) = expected_reads.remove(&response.id) else {
            assert!(
                matches!(response.reply, Reply::Single(Outcome::Written { .. })),
                "write {} got {:?}",
                response.id,
                response.reply
            );
            continue;
        };
        match (expected, response.reply) {
            (Some(value), Reply::Single(Outcome::Value { value: found, .. })) => {
                assert_eq!(found, value, "read {}", response.id)
            }
            (None, Reply::Single(Outcome::NotFound)) => {}
            (expected, reply) => panic!("read {} expected {expected:?}, got {reply:?}", response.id),
        }
    }
    assert!(expected_reads.is_empty(), "reads never answered: {:?}", expected_reads.keys());
}
