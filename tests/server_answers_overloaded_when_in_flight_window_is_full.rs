//! A request beyond the connection's in-flight window is answered "overloaded" (naming the
//! limit) instead of queued, and the connection keeps serving.

use crate::common;

use bytes::Bytes;
use common::{request_frame, Server};
use ringkv_wire::{Command, ErrorCode, Operation, Outcome, Reply, Request};

#[test]
fn server_answers_overloaded_when_in_flight_window_is_full() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(&root.path().join("data"), &["--in-flight-max", "1"]);
    let mut client = server.client();

    // Two puts in one write: the first is in flight (waiting for its sync) when the second is
    // read, and the window holds one.
    let put = |id: u64| {
        request_frame(&Request {
            consistency: None,
            id,
            command: Command::Single(Operation::Put {
                key: Bytes::from(format!("key-{id}")),
                value: Bytes::from_static(b"v"),
                ttl_ms: None,
            }),
        })
    };
    let mut both = put(1);
    both.extend_from_slice(&put(2));
    client.send_raw(&both);
    let mut replies = [client.receive(), client.receive()];
    replies.sort_by_key(|response| response.id);
    assert!(matches!(replies[0].reply, Reply::Single(Outcome::Written { .. })), "{:?}", replies[0]);
    match &replies[1].reply {
        Reply::Failed(failure) => {
            assert_eq!(failure.code, ErrorCode::Overloaded);
            assert!(failure.message.contains("in_flight_max"), "{}", failure.message);
        }
        other => panic!("expected overloaded, got {other:?}"),
    }

    // One at a time is within the window.
    client.put(b"key-2", b"later");
    assert_eq!(client.get_value(b"key-1").as_deref(), Some(&b"v"[..]));
    assert_eq!(client.get_value(b"key-2").as_deref(), Some(&b"later"[..]));
}
