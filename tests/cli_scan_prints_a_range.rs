//! `ringkv scan`: `key=value` lines in token order, paging past one server page, `--start` (a
//! key's position), `--end`, `--start-token`/`--end-token`, `--after` and `--limit`, JSON lines
//! with each key's token and `next_start` when more remain, and the exit codes (1 for an empty
//! range, 2 for a bad limit).

use crate::common;

use std::process::{Command, Output};

use common::Server;
use ringkv_client::token_of;

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
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let port = server.client_port;
    let mut client = server.client();
    // More keys than one server page holds (SCAN_LIMIT_MAX), so the CLI has to page.
    for index in 0..1100 {
        client.put(format!("k{index:04}").as_bytes(), format!("v{index}").as_bytes());
    }
    // The keys in scan order, as `key=value` lines.
    let mut ordered: Vec<(u64, String, String)> = (0..1100)
        .map(|index| {
            let key = format!("k{index:04}");
            (token_of(key.as_bytes()), key, format!("v{index}"))
        })
        .collect();
    ordered.sort();
    let line = |index: usize| format!("{}={}", ordered[index].1, ordered[index].2);
    let key = |index: usize| ordered[index].1.as_str();

    let scan = ringkv(port, &["scan", "--limit", "3"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan.stderr));
    assert_eq!(text(&scan.stdout), format!("{}\n{}\n{}\n", line(0), line(1), line(2)));

    let bounded = ringkv(port, &["scan", "--start", key(10), "--end", key(12)]);
    assert_eq!(text(&bounded.stdout), format!("{}\n{}\n", line(10), line(11)));
    let after = ringkv(port, &["scan", "--after", key(10), "--limit", "1"]);
    assert_eq!(text(&after.stdout), format!("{}\n", line(11)));
    let (first_token, last_token) = (ordered[20].0.to_string(), format!("{:#x}", ordered[23].0));
    let by_token = ringkv(port, &["scan", "--start-token", &first_token, "--end-token", &last_token]);
    assert_eq!(text(&by_token.stdout), format!("{}\n{}\n{}\n", line(20), line(21), line(22)));

    let all = ringkv(port, &["scan", "--limit", "5000"]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all.stderr));
    let lines: Vec<String> = text(&all.stdout).lines().map(str::to_owned).collect();
    let expected: Vec<String> = (0..1100).map(line).collect();
    assert_eq!(lines, expected, "every key once, in token order, across pages");

    let json = ringkv(port, &["scan", "--start", key(5), "--limit", "2", "--json"]);
    let objects: Vec<serde_json::Value> =
        text(&json.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(objects.len(), 3, "two entries and where to continue");
    assert_eq!(objects[0]["key"], key(5));
    assert_eq!(objects[0]["value"], ordered[5].2.as_str());
    assert_eq!(objects[0]["token"], ordered[5].0);
    assert!(objects[0]["version"].as_u64().is_some());
    assert_eq!(objects[2], serde_json::json!({ "next_start": key(6) }));

    let last_token = (ordered[1099].0 + 1).to_string();
    let empty = ringkv(port, &["scan", "--start-token", &last_token]);
    assert_eq!((empty.status.code(), empty.stdout.len()), (Some(1), 0), "{}", text(&empty.stderr));

    let refused = ringkv(port, &["scan", "--limit", "0"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("SCAN_LIMIT_MAX") && stderr.lines().count() == 1, "{stderr}");
}
