//! A request breaking the key or value limit gets an error response naming the limit, with its
//! own id, and the connection keeps serving.

use crate::common;

use common::{unchecked_put_frame, Server};
use ringkv_wire::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use ringkv_wire::{ErrorCode, Reply};

fn refusal(reply: Reply) -> (ErrorCode, String) {
    match reply {
        Reply::Failed(failure) => (failure.code, failure.message),
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[test]
fn server_rejects_oversized_key_and_value() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = server.client();

    client.send_raw(&unchecked_put_frame(11, &vec![b'k'; KEY_BYTES_MAX + 1], b"value"));
    let response = client.receive();
    assert_eq!(response.id, 11);
    let (code, message) = refusal(response.reply);
    assert_eq!(code, ErrorCode::KeyTooLong);
    assert!(message.contains("KEY_BYTES_MAX") && message.contains(&KEY_BYTES_MAX.to_string()), "{message}");

    client.send_raw(&unchecked_put_frame(12, b"", b"value"));
    let response = client.receive();
    assert_eq!(response.id, 12);
    assert_eq!(refusal(response.reply).0, ErrorCode::KeyEmpty);

    client.send_raw(&unchecked_put_frame(13, b"big", &vec![7u8; VALUE_BYTES_MAX + 1]));
    let response = client.receive();
    assert_eq!(response.id, 13);
    let (code, message) = refusal(response.reply);
    assert_eq!(code, ErrorCode::ValueTooLarge);
    assert!(
        message.contains("VALUE_BYTES_MAX") && message.contains(&VALUE_BYTES_MAX.to_string()),
        "{message}"
    );

    // Nothing was stored, and the same connection still serves, including a maximal value and
    // a maximal key.
    assert_eq!(client.get_value(b"big"), None);
    let largest = vec![9u8; VALUE_BYTES_MAX];
    client.put(b"big", &largest);
    assert_eq!(client.get_value(b"big").as_deref(), Some(&largest[..]));
    let longest_key = vec![b'k'; KEY_BYTES_MAX];
    client.put(&longest_key, b"fits");
    assert_eq!(client.get_value(&longest_key).as_deref(), Some(&b"fits"[..]));
}
