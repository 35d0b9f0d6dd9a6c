//! After the server restarts, the next request on every adapter reconnects and succeeds; while
//! the server is down, requests fail with a connection error after the bounded back-off.

use crate::common;

use std::time::Duration;

use common::Server;
use ringkv_client::{blocking, Backoff, ClientOptions, Error};

fn patient_options() -> ClientOptions {
    ClientOptions {
        reconnect: Backoff {
            attempts_max: 3,
            delay_initial: Duration::from_millis(10),
            delay_max: Duration::from_millis(50),
        },
        ..ClientOptions::default()
    }
}

#[test]
fn client_reconnects_after_server_restart() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(&root.path().join("data"));
    let address = ("127.0.0.1", server.client_port);
    let mut blocking_client = blocking::Client::connect_with(address, patient_options()).unwrap();
    let tokio_runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tokio_client = tokio_runtime
        .block_on(ringkv_client::tokio::Client::connect_with(address, patient_options()))
        .unwrap();
    blocking_client.put("durable", "before restart").unwrap();
    tokio_runtime.block_on(tokio_client.get("durable")).unwrap().expect("written");

    assert!(server.terminate().success());
    let error = blocking_client.get("durable").unwrap_err();
    assert!(matches!(error, Error::Connect { attempts: 3, .. }), "{error}");

    server.restart();
    let stored = blocking_client.get("durable").unwrap().expect("kept across the restart");
    assert_eq!(&stored.value[..], b"before restart");
    blocking_client.put("after", "restart").unwrap();
    // The tokio client's old connections were closed by the server; it reconnects too.
    let stored = tokio_runtime.block_on(tokio_client.get("after")).unwrap().expect("written");
    assert_eq!(&stored.value[..], b"restart");
    tokio_runtime.block_on(tokio_client.ping()).unwrap();
}
