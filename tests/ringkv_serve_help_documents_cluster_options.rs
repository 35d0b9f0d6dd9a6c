//! `ringkv serve --help` documents the cluster options, with their defaults and ranges.

use crate::common;
use std::process::Command;

#[test]
fn ringkv_serve_help_documents_cluster_options() {
    let _slot = common::test_slot();
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv")).args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--peer-listen",
        "--seeds",
        "--num-tokens",
        "--replication-factor",
        "--write-consistency",
        "--read-consistency",
        "--max-clock-skew-ms",
        "--replica-timeout-ms",
        "--peer-pending-max",
        "--peer-outbox-bytes-max",
        "--node-id",
        "--hints-bytes-max",
        "--hints-destination-bytes-max",
        "--max-hint-window-ms",
        "--hints-replay-bytes-per-s",
        "--anti-entropy-interval-ms",
        "--anti-entropy-bytes-per-s",
        "--tree-rebuild-interval-ms",
        "--tombstone-grace-ms",
        "--allow-missing-tables",
        "--join",
    ] {
        assert!(help.contains(option), "{option} is not documented:\n{help}");
    }
    for text in ["client port + 1000", "quorum", "1-256", "1-7", "0-1023", "ADDR:PORT,..."] {
        assert!(help.contains(text), "{text} is not mentioned:\n{help}");
    }
}

#[test]
fn ringkv_serve_refuses_an_unknown_consistency_level() {
    let _slot = common::test_slot();
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["serve", "--write-consistency", "two"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("two") && stderr.contains("quorum"), "{stderr}");
}

#[test]
fn ringkv_serve_refuses_a_tombstone_grace_shorter_than_the_hint_window_or_anti_entropy() {
    let _slot = common::test_slot();
    let data_dir = tempfile::tempdir().unwrap();
    let data_dir = data_dir.path().to_str().unwrap();
    for flags in [
        [
            "--tombstone-grace-ms",
            "1000",
            "--max-hint-window-ms",
            "5000",
            "--anti-entropy-interval-ms",
            "1000",
        ],
        [
            "--tombstone-grace-ms",
            "1000",
            "--max-hint-window-ms",
            "1000",
            "--anti-entropy-interval-ms",
            "5000",
        ],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["serve", "--data-dir", data_dir, "--listen", "127.0.0.1:1"])
            .args(flags)
            .output()
            .unwrap();
        assert!(!output.status.success(), "started with {flags:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("tombstone_grace_ms"), "{flags:?}: {stderr}");
    }
}
