//! The `ringkv` command-line client: output and exit codes of every subcommand.

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::Server;

fn ringkv(port: u16, args: &[&str], stdin: &[u8]) -> Output {
    let address = format!("127.0.0.1:{port}");
    let mut all_args = args.to_vec();
    all_args.extend(["--addr", &address]);
    ringkv_at(&all_args, stdin)
}

fn ringkv_at(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ringkv");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn cli_exit_codes_and_output() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let port = server.client_port;

    let ping = ringkv(port, &["ping"], b"");
    assert_eq!((ping.status.code(), text(&ping.stdout)), (Some(0), "pong\n".to_owned()));

    let put = ringkv(port, &["put", "greeting", "hello"], b"");
    assert_eq!(put.status.code(), Some(0), "{}", text(&put.stderr));
    let version: u64 = text(&put.stdout).trim().parse().expect("put prints the version");

    let get = ringkv(port, &["get", "greeting"], b"");
    assert_eq!((get.status.code(), get.stdout.as_slice()), (Some(0), &b"hello"[..]));

    let json: serde_json::Value =
        serde_json::from_slice(&ringkv(port, &["get", "greeting", "--json"], b"").stdout).unwrap();
    assert_eq!(json, serde_json::json!({ "value": "hello", "version": version }));

    // Binary values from stdin come back byte for byte, and as base64 in JSON.
    // A value with a TTL shows its expiry: 30 s after the server applied the write, a moment
    // between the test's clock readings around the put (one machine, one clock).
    let binary = [0u8, 0xff, 0x80, b'\n'];
    let before_ms = unix_ms();
    assert_eq!(ringkv(port, &["put", "binary", "-", "--ttl", "30s"], &binary).status.code(), Some(0));
    let after_ms = unix_ms();
    assert_eq!(ringkv(port, &["get", "binary"], b"").stdout, binary);
    let json: serde_json::Value =
        serde_json::from_slice(&ringkv(port, &["get", "binary", "--json"], b"").stdout).unwrap();
    assert_eq!(json["value_base64"], "AP+ACg==");
    let written_ms = json["expires_at_ms"].as_u64().expect("a value with a TTL has expires_at_ms") - 30_000;
    assert!((before_ms..=after_ms).contains(&written_ms), "{before_ms} <= {written_ms} <= {after_ms}");

    let missing = ringkv(port, &["get", "no-such-key"], b"");
    assert_eq!((missing.status.code(), missing.stdout.len()), (Some(1), 0));

    let mismatch = ringkv(port, &["cas", "greeting", "x", "--expect-absent"], b"");
    assert_eq!((mismatch.status.code(), mismatch.stdout.len()), (Some(1), 0));
    let swapped = ringkv(port, &["cas", "greeting", "hi", "--expect-version", &version.to_string()], b"");
    assert_eq!(swapped.status.code(), Some(0), "{}", text(&swapped.stderr));
    assert_eq!(ringkv(port, &["get", "greeting"], b"").stdout, b"hi");

    assert_eq!(ringkv(port, &["del", "greeting"], b"").status.code(), Some(0));
    assert_eq!(ringkv(port, &["get", "greeting"], b"").status.code(), Some(1));

    let topology = text(&ringkv(port, &["topology"], b"").stdout);
    assert_eq!(topology.lines().count(), common::SHARDS);
    assert!(topology.starts_with(&format!("shard 0 port {}", server.shard_port(0))), "{topology}");

    // Errors: one line on stderr, exit code 2.
    let long_key = "k".repeat(300);
    let refused = ringkv(port, &["put", &long_key, "v"], b"");
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(text(&refused.stderr).lines().count(), 1);
    assert!(text(&refused.stderr).contains("KEY_BYTES_MAX"), "{}", text(&refused.stderr));
    let unreachable = ringkv_at(&["get", "k", "--addr", "127.0.0.1:1"], b"");
    assert_eq!(unreachable.status.code(), Some(2));
    assert_eq!(text(&unreachable.stderr).lines().count(), 1, "{}", text(&unreachable.stderr));
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
