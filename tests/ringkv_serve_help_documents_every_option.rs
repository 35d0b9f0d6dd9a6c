//! `ringkv serve --help` documents every option, with its default.

use crate::common;
use std::process::Command;

#[test]
fn ringkv_serve_help_documents_every_option() {
    let _slot = common::test_slot();
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv")).args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--config",
        "--data-dir",
        "--listen",
        "--shard-port-base",
        "--shards",
        "--pin",
        "--node-id",
        "--sync",
        "--vnodes-per-shard",
        "--connections-max",
        "--in-flight-max",
        "--outbox-bytes-max",
        "--request-memory-bytes-max",
        "--frame-timeout-ms",
        "--client-idle-timeout-ms",
        "--accept-wal-tail-loss",
        "--disk-reserve-bytes",
        "--forward-in-flight-max",
        "--mesh-channel-capacity",
        "--io-memory-bytes",
        "--memtable-bytes-max",
        "--wal-bytes-max",
        "--block-cache-bytes",
        "--row-cache-bytes",
        "--shutdown-grace-ms",
        "--resp-listen",
        "--metrics-listen",
        "--metrics-token-file",
        "--check-config",
        "--allow-unauthenticated",
    ] {
        assert!(help.contains(option), "{option} is not documented:\n{help}");
    }
    for default in ["./ringkv-data", "127.0.0.1:7379", "periodic:MS", "SIGTERM"] {
        assert!(help.contains(default), "{default} is not mentioned:\n{help}");
    }
}
