//! A request that breaks a limit is refused by the client before sending, with exactly the
//! error (code and message) the server answers when a misbehaving client sends it anyway.

use crate::common;

use bytes::Bytes;
use common::{unchecked_put_frame, Server};
use ringkv_client::blocking::Client;
use ringkv_client::{Error, ErrorCode, Failure, Operation};
use ringkv_wire::limits::{BATCH_OPERATIONS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use ringkv_wire::{Reply, Response};

/// What the server answers to a put sent without the client-side checks.
fn servers_answer(server: &Server, key: &[u8], value: &[u8]) -> Failure {
    let mut raw = server.client();
    raw.send_raw(&unchecked_put_frame(7, key, value));
    match raw.receive() {
        Response { id: 7, reply: Reply::Failed(failure) } => failure,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn client_refuses_limits_with_the_servers_error() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = Client::connect(("127.0.0.1", server.client_port)).unwrap();

    let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
    let large_value = vec![b'v'; VALUE_BYTES_MAX + 1];
    for (key, value, code) in [
        (&long_key[..], &b"v"[..], ErrorCode::KeyTooLong),
        (&b""[..], &b"v"[..], ErrorCode::KeyEmpty),
        (&b"k"[..], &large_value[..], ErrorCode::ValueTooLarge),
    ] {
        let error = client.put(key, value).unwrap_err();
        assert!(matches!(error, Error::Limit(_)), "{error}");
        assert_eq!(error.code(), Some(code));
        assert_eq!(error.failure(), Some(servers_answer(&server, key, value)), "{code:?}");
    }

    let too_many = (0..=BATCH_OPERATIONS_MAX)
        .map(|index| Operation::Get { key: Bytes::from(format!("k{index}")) })
        .collect();
    assert_eq!(client.batch(too_many).unwrap_err().code(), Some(ErrorCode::BatchTooLarge));
    assert_eq!(
        client.put_with_ttl("k", "v", std::time::Duration::ZERO).unwrap_err().code(),
        Some(ErrorCode::TtlOutOfRange)
    );

    // Refusals cost the connection nothing.
    client.put("k", "v").unwrap();
    assert_eq!(&client.get("k").unwrap().unwrap().value[..], b"v");
}
