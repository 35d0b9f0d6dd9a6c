//! A write is visible in the memtable as soon as it is applied, before its group commit makes it
//! durable; a read that finds it must not be answered before that commit. Otherwise a crash
//! could take back a value (or a deletion) a client was shown, one whose writer was never told
//! it had succeeded.
//!
//! Pipelined in one socket write on one connection, a put and then a read of the same key: the
//! read finds the put at once, so its reply must arrive after the put's acknowledgement. A read
//! of a key whose value is durable is not held: it is answered while the put's commit is still
//! under way, before the acknowledgement. Keys are the connection's own shard's, so both are
//! answered in place. Each read that waited is counted in `ringkv_reads_held_total`, and its
//! latency in the read latency histogram.

use crate::common;

use bytes::Bytes;
use common::metrics::{scrape, total};
use common::{keys_on_shard, request_frame, Server, LISTENER};
use ringkv_wire::{Command, Operation, Outcome, Reply, Request, Response};

/// Sends `operations` in one socket write, ids from `first_id`, and returns the replies in the
/// order they arrived.
fn pipelined(client: &mut common::Client, first_id: u64, operations: Vec<Operation>) -> Vec<Response> {
    let mut frames = Vec::new();
    let count = operations.len();
    for (offset, operation) in operations.into_iter().enumerate() {
        let request =
            Request { consistency: None, id: first_id + offset as u64, command: Command::Single(operation) };
        frames.extend_from_slice(&request_frame(&request));
    }
    client.send_raw(&frames);
    (0..count).map(|_| client.receive()).collect()
}

/// Where the reply to request `id` arrived among `replies`.
fn arrival(replies: &[Response], id: u64) -> usize {
    replies.iter().position(|response| response.id == id).unwrap_or_else(|| panic!("no reply to {id}"))
}

#[test]
fn server_reads_are_answered_only_once_durable() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(&root.path().join("data"), &["--metrics-listen", LISTENER]);
    let metrics_port = server.listener_port(0);
    let keys = keys_on_shard(&server.client().topology(), 0, 2);
    let (written, durable) = (Bytes::from(keys[0].clone()), Bytes::from(keys[1].clone()));
    let mut client = server.shard_client(0);
    client.put(&durable, b"durable");
    let before = scrape(metrics_port);

    for round in 0..20u64 {
        let value = Bytes::from(format!("round {round}"));
        let first = 1000 * (round + 1);
        let replies = pipelined(
            &mut client,
            first,
            vec![
                Operation::Put { key: written.clone(), value: value.clone(), ttl_ms: None },
                Operation::Get { key: written.clone() },
                Operation::Get { key: durable.clone() },
            ],
        );
        let (put, read, other) =
            (arrival(&replies, first), arrival(&replies, first + 1), arrival(&replies, first + 2));
        assert!(matches!(replies[put].reply, Reply::Single(Outcome::Written { .. })), "{:?}", replies[put]);
        match &replies[read].reply {
            Reply::Single(Outcome::Value { value: found, .. }) => assert_eq!(found, &value),
            reply => panic!("round {round}: the read of the put's key got {reply:?}"),
        }
        assert!(
            put < read,
            "round {round}: the read of a value not yet durable was answered first: {replies:?}"
        );
        match &replies[other].reply {
            Reply::Single(Outcome::Value { value: found, .. }) => assert_eq!(&found[..], b"durable"),
            reply => panic!("round {round}: the read of the durable key got {reply:?}"),
        }
        assert!(other < put, "round {round}: a read of a durable value waited for a commit: {replies:?}");

        // A deletion not yet durable hides the key only until a crash could bring it back: a
        // read that finds nothing because of it waits too.
        let first = first + 500;
        let replies = pipelined(
            &mut client,
            first,
            vec![Operation::Delete { key: written.clone() }, Operation::Get { key: written.clone() }],
        );
        let (delete, read) = (arrival(&replies, first), arrival(&replies, first + 1));
        assert!(matches!(replies[read].reply, Reply::Single(Outcome::NotFound)), "{:?}", replies[read]);
        assert!(delete < read, "round {round}: the read of a deletion not yet durable was answered first");
    }

    // Every read that waited is counted, and every read's latency observed.
    let after = scrape(metrics_port);
    let held = total(&after, "ringkv_reads_held_total", &[]) - total(&before, "ringkv_reads_held_total", &[]);
    assert_eq!(held, 40, "two reads held per round");
    let reads = |samples: &[common::metrics::Sample]| {
        total(samples, "ringkv_request_duration_seconds_count", &[("operation", "get")])
    };
    assert_eq!(reads(&after) - reads(&before), 60, "three reads per round");
}
