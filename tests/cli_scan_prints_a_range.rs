//! `ringkv scan`: `key=value` lines in key order, paging past one server page, `--end` and
//! `--limit`, JSON lines with `next_start` when more remain, and the exit codes (1 for an empty
//! range, 2 for a bad limit).

mod common;

use std::process::{Command, Output};

use common::Server;

fn ringkv(port: u16, args: &[&str]) -> Output {
    let address = format!("127.0.0.1:{port}");
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .args(["--addr", &address])
        .output()
        .expect("running ringkv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn cli_scan_prints_a_range() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let port = server.client_port;
    let mut client = server.client();
    // More keys than one server page holds (SCAN_LIMIT_MAX), so the CLI has to page.
    for index in 0..1100 {
        client.put(format!("k{index:04}").as_bytes(), format!("v{index}").as_bytes());
    }

    let scan = ringkv(port, &["scan", "--start", "k0000", "--limit", "3"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan.stderr));
    assert_eq!(text(&scan.stdout), "k0000=v0\nk0001=v1\nk0002=v2\n");

    let bounded = ringkv(port, &["scan", "--start", "k0010", "--end", "k0012"]);
    assert_eq!(text(&bounded.stdout), "k0010=v10\nk0011=v11\n");

    let all = ringkv(port, &["scan", "--start", "k", "--limit", "5000"]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all.stderr));
    let lines: Vec<String> = text(&all.stdout).lines().map(str::to_owned).collect();
    let expected: Vec<String> = (0..1100).map(|index| format!("k{index:04}=v{index}")).collect();
    assert_eq!(lines, expected, "every key once, in order, across pages");

    let json = ringkv(port, &["scan", "--start", "k0005", "--limit", "2", "--json"]);
    let objects: Vec<serde_json::Value> =
        text(&json.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(objects.len(), 3, "two entries and where to continue");
    assert_eq!(objects[0]["key"], "k0005");
    assert_eq!(objects[0]["value"], "v5");
    assert!(objects[0]["version"].as_u64().is_some());
    assert_eq!(objects[2], serde_json::json!({ "next_start": "k0007" }));

    let empty = ringkv(port, &["scan", "--start", "zzz"]);
    assert_eq!((empty.status.code(), empty.stdout.len()), (Some(1), 0));

    let refused = ringkv(port, &["scan", "--start", "k", "--limit", "0"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("SCAN_LIMIT_MAX") && stderr.lines().count() == 1, "{stderr}");
}
