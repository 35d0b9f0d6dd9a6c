//! A batch counts against the connection's in-flight window as its operations, not as one
//! request: with a window of four, a batch of four arriving while a put is running is answered
//! "overloaded", and the same batch on its own is served.

use crate::common;

use bytes::Bytes;
use common::{request_frame, Server};
use ringkv_wire::{Command, ErrorCode, Operation, Outcome, Reply, Request};

fn put(key: String) -> Operation {
    Operation::Put { key: Bytes::from(key), value: Bytes::from_static(b"v"), ttl_ms: None }
}

#[test]
fn server_counts_a_batch_as_its_operations_in_flight() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(&root.path().join("data"), &["--in-flight-max", "4"]);
    let mut client = server.client();
    let batch = |id: u64| Request {
        consistency: None,
        id,
        command: Command::Batch((0..4).map(|index| put(format!("batch-{index}"))).collect()),
    };

    // A put and a batch of four in one write: the put is in flight (waiting for its sync) when
    // the batch is read, and one plus four is more than the window.
    let mut both =
        request_frame(&Request { consistency: None, id: 1, command: Command::Single(put("single".into())) });
    both.extend_from_slice(&request_frame(&batch(2)));
    client.send_raw(&both);
    let mut replies = [client.receive(), client.receive()];
    replies.sort_by_key(|response| response.id);
    assert!(matches!(replies[0].reply, Reply::Single(Outcome::Written { .. })), "{:?}", replies[0]);
    match &replies[1].reply {
        Reply::Failed(failure) => {
            assert_eq!(failure.code, ErrorCode::Overloaded);
            assert!(failure.message.contains("in_flight_max"), "{}", failure.message);
        }
        other => panic!("expected the batch to be refused as overloaded, got {other:?}"),
    }

    // Alone, the batch fits the window and is served.
    client.send(&batch(3));
    let response = client.receive();
    assert_eq!(response.id, 3);
    match response.reply {
        Reply::Batch(results) => {
            assert_eq!(results.len(), 4);
            assert!(
                results.iter().all(|result| matches!(result, Ok(Outcome::Written { .. }))),
                "{results:?}"
            );
        }
        other => panic!("expected the batch's results, got {other:?}"),
    }
    assert_eq!(client.get_value(b"batch-3").as_deref(), Some(&b"v"[..]));
}
