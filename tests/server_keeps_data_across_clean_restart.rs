//! SIGTERM (and SIGINT) stop the node cleanly with exit code 0, and everything written before is
//! there after a restart on the same data directory, including values flushed to SSTables.

use crate::common;

use common::Server;
use ringkv_wire::Outcome;

#[test]
fn server_keeps_data_across_clean_restart() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(&root.path().join("data"));
    let mut client = server.client();
    // Enough bytes to pass the 1 MiB memtable limit the tests run with, so some data reaches
    // SSTables and some stays in the WAL.
    let value = vec![0x5a; 4096];
    let mut versions = Vec::new();
    for index in 0..600 {
        versions.push(client.put(format!("key-{index}").as_bytes(), &value));
    }
    client.delete(b"key-0");
    drop(client);

    let status = server.terminate();
    assert!(status.success(), "SIGTERM exit status {status}:\n{}", server.log());
    assert!(server.log().contains("stopped cleanly"), "{}", server.log());

    server.restart();
    let mut client = server.client();
    assert_eq!(client.get(b"key-0"), Outcome::NotFound);
    for (index, version) in versions.iter().enumerate().skip(1) {
        let key = format!("key-{index}");
        assert_eq!(
            client.get(key.as_bytes()),
            Outcome::Value { value: value.clone().into(), version: *version, expires_at_ms: None },
            "{key} after restart"
        );
    }
    // New writes after the restart are versioned above the old ones.
    assert!(client.put(b"key-1", b"newer") > versions[1]);
    drop(client);

    let status = server.interrupt();
    assert!(status.success(), "SIGINT exit status {status}:\n{}", server.log());
    server.restart();
    assert_eq!(server.client().get_value(b"key-1").as_deref(), Some(&b"newer"[..]));
}
