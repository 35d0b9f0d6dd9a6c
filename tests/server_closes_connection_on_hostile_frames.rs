//! Frames that cannot be trusted — garbage bytes, a 4 GiB length prefix, a zero length, a
//! truncated frame, a FlatBuffer whose offsets point outside it — each get an error response
//! with id 0 and the connection is closed, while another client keeps being served throughout.

use crate::common;

use bytes::Bytes;
use common::{request_frame, Client, Server};
use ringkv_wire::{Command, ErrorCode, Operation, Reply, Request, CONNECTION_ERROR_ID};

/// Sends `bytes` on a fresh connection (then ends the stream if `end_stream`), and checks the
/// server answers with an id-0 error of `code` and then closes.
fn assert_refused_and_closed(server: &Server, bytes: &[u8], end_stream: bool, code: ErrorCode) {
    let mut hostile = server.client();
    hostile.send_raw(bytes);
    if end_stream {
        hostile.shutdown_write();
    }
    let response = hostile.receive_or_closed().unwrap_or_else(|| panic!("no error response for {code:?}"));
    assert_eq!(response.id, CONNECTION_ERROR_ID, "{response:?}");
    match response.reply {
        Reply::Failed(failure) => assert_eq!(failure.code, code, "{}", failure.message),
        other => panic!("expected an error response, got {other:?}"),
    }
    assert!(hostile.is_closed(), "the connection stayed open after {code:?}");
}

fn assert_still_served(bystander: &mut Client, round: u32) {
    let key = format!("bystander-{round}");
    bystander.put(key.as_bytes(), b"still here");
    assert_eq!(bystander.get_value(key.as_bytes()).as_deref(), Some(&b"still here"[..]));
}

#[test]
fn server_closes_connection_on_hostile_frames() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut bystander = server.client();
    assert_still_served(&mut bystander, 0);

    // An HTTP request: its first four bytes read as a length far above the frame limit.
    assert_refused_and_closed(
        &server,
        b"GET / HTTP/1.1\r\nHost: ringkv\r\n\r\n",
        false,
        ErrorCode::FrameTooLarge,
    );
    assert_still_served(&mut bystander, 1);

    // A 4 GiB length prefix followed by some bytes: refused before anything is allocated.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&[0xab; 1000]);
    assert_refused_and_closed(&server, &huge, false, ErrorCode::FrameTooLarge);
    assert_still_served(&mut bystander, 2);

    // A zero length prefix.
    assert_refused_and_closed(&server, &[0, 0, 0, 0, 1, 2, 3], false, ErrorCode::FrameEmpty);
    assert_still_served(&mut bystander, 3);

    // A valid frame cut short, then the end of the stream.
    let put = Request {
        consistency: None,
        id: 5,
        command: Command::Single(Operation::Put {
            key: Bytes::from_static(b"truncated"),
            value: Bytes::from_static(b"never stored"),
            ttl_ms: None,
        }),
    };
    let frame = request_frame(&put);
    assert_refused_and_closed(&server, &frame[..frame.len() - 7], true, ErrorCode::Malformed);
    assert_still_served(&mut bystander, 4);
    assert_eq!(bystander.get_value(b"truncated"), None);

    // A FlatBuffer whose root offset points far outside the frame.
    let mut bad_offsets = frame.clone();
    bad_offsets[4..8].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    assert_refused_and_closed(&server, &bad_offsets, false, ErrorCode::Malformed);
    assert_still_served(&mut bystander, 5);

    // Random bytes under a plausible length prefix.
    let mut noise = 64u32.to_le_bytes().to_vec();
    noise.extend((0..64u32).map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8));
    assert_refused_and_closed(&server, &noise, false, ErrorCode::Malformed);
    assert_still_served(&mut bystander, 6);

    // A request after a good one on the same connection as the bad frame: the good one is
    // answered first, then the error, then the close.
    let mut mixed = server.client();
    let mut bytes = request_frame(&Request { consistency: None, id: 9, command: Command::Ping });
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    mixed.send_raw(&bytes);
    assert_eq!(mixed.receive(), ringkv_wire::Response { id: 9, reply: Reply::Pong });
    assert_eq!(mixed.receive().id, CONNECTION_ERROR_ID);
    assert!(mixed.is_closed());

    assert_still_served(&mut bystander, 7);
    assert!(server.client().get_value(b"bystander-7").is_some());
}
