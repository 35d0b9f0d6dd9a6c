//! A peer link whose frame starts and never finishes (a slowloris on the peer port) is closed
//! once it outlasts `--frame-timeout-ms`, as a client connection would be, and logged; clients
//! are served throughout. The wait is a generous guard, never a measurement.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::cluster::peer_port;
use common::Server;

#[test]
fn server_closes_slow_peer_links() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(&root.path().join("data"), &["--frame-timeout-ms", "300"]);

    let mut slow = TcpStream::connect(("127.0.0.1", peer_port(&server))).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // A length prefix announcing 100 bytes, and only 10 of them.
    slow.write_all(&100u32.to_le_bytes()).unwrap();
    slow.write_all(&[0u8; 10]).unwrap();
    let mut byte = [0u8; 1];
    match slow.read(&mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the slow peer link was not closed: {other:?}\n{}", server.log()),
    }
    assert!(server.log().contains("a peer frame did not finish within frame_timeout_ms"), "{}", server.log());

    let mut client = server.client();
    client.put(b"still served", b"yes");
    assert_eq!(client.get_value(b"still served").as_deref(), Some(&b"yes"[..]));
}
