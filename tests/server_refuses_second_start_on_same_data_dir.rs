//! A second `ringkv serve` on a data directory in use exits with an error that says so, and
//! the first server keeps serving.

use crate::common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

use common::{run_to_exit, serve_args, Server};

#[test]
fn server_refuses_second_start_on_same_data_dir() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let server = Server::start(&data_dir);
    let mut client = server.client();
    client.put(b"before", b"1");

    // Other ports, so the refusal can only come from the lock.
    let free_port =
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let mut args = serve_args(&data_dir, free_port);
    args.extend(["--shard-port-base".to_string(), "1".to_string()]);
    let (status, output) = run_to_exit(&args);
    assert!(!status.success(), "the second server started:\n{output}");
    assert!(output.contains("in use by another ringkv process"), "{output}");
    assert!(output.contains("LOCK"), "{output}");

    client.put(b"after", b"2");
    assert_eq!(client.get_value(b"before").as_deref(), Some(&b"1"[..]));
    assert_eq!(server.client().get_value(b"after").as_deref(), Some(&b"2"[..]));
}
