//! `ringkv status` and `ringkv ring` against three real nodes, N = 3: every node listed up,
//! their shares of the ring adding up to 300%, every range with three distinct replicas and the
//! ranges covering the ring; after one node is SIGKILLed, status shows it down.

use crate::common;

use std::process::{Command, Output};
use std::time::Instant;

use common::cluster::{address, start_three_nodes, wait_for_logs, SETTLE_DEADLINE};
use common::SHARDS;
use serde_json::Value;

fn ringkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv")).args(args).env_remove("RINGKV_ADDR").output().unwrap()
}

/// The stdout of a run that must succeed.
fn stdout_of(output: Output) -> String {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// The fields of each `status` line: `node ID ADDRESS up|down PERCENT% of the ring, N shards`.
fn status_lines(text: &str) -> Vec<(u16, String, String, f64)> {
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields[0], "node", "{line}");
            let percent = fields[4].strip_suffix('%').unwrap().parse().unwrap();
            (fields[1].parse().unwrap(), fields[2].to_owned(), fields[3].to_owned(), percent)
        })
        .collect()
}

#[test]
fn cli_status_and_ring_describe_the_cluster() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let [first, second, mut third] = start_three_nodes(root.path());
    let addresses: Vec<String> = [&first, &second, &third].iter().map(|node| address(node)).collect();

    let status = status_lines(&stdout_of(ringkv(&["status", "--addr", &addresses[0]])));
    assert_eq!(status.len(), 3, "{status:?}");
    for (index, (node_id, node_address, state, _)) in status.iter().enumerate() {
        assert_eq!((*node_id, node_address, state.as_str()), (index as u16 + 1, &addresses[index], "up"));
    }
    // Each share is printed to 0.1%.
    let total: f64 = status.iter().map(|(_, _, _, percent)| percent).sum();
    assert!((total - 300.0).abs() < 0.2, "shares add up to {total}%: {status:?}");

    // The same from JSON, exact, through another node and with --addr before the subcommand.
    let nodes = json_lines(&stdout_of(ringkv(&["--addr", &addresses[1], "status", "--json"])));
    assert_eq!(nodes.len(), 3);
    let total: f64 = nodes.iter().map(|node| node["ring_percent"].as_f64().unwrap()).sum();
    assert!((total - 300.0).abs() < 1e-6, "{nodes:?}");
    for node in &nodes {
        assert_eq!(node["up"], true, "{node}");
        assert_eq!(node["shards"].as_array().unwrap().len(), SHARDS, "{node}");
    }

    // The ring: every range has three distinct replicas, and the ranges tile the ring.
    let ring_text = stdout_of(ringkv(&["ring", "--addr", &addresses[2]]));
    for line in ring_text.lines() {
        let (_, replicas) = line.split_once("] ").expect("(start, end] replicas");
        let mut replicas: Vec<u16> = replicas.split(',').map(|id| id.parse().unwrap()).collect();
        replicas.sort();
        assert_eq!(replicas, vec![1, 2, 3], "{line}");
    }
    let ranges = json_lines(&stdout_of(ringkv(&["ring", "--json", "--addr", &addresses[2]])));
    assert_eq!(ranges.len(), ring_text.lines().count());
    assert!(ranges.len() >= 3, "{ranges:?}");
    for (range, next) in ranges.iter().zip(ranges.iter().cycle().skip(1)) {
        assert_eq!(range["end"], next["start"], "ranges are contiguous and wrap around");
        assert_eq!(range["replicas"].as_array().unwrap().len(), 3, "{range}");
    }

    // RINGKV_ADDR picks the node when no --addr is given.
    let from_env = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("status")
        .env("RINGKV_ADDR", &addresses[0])
        .output()
        .unwrap();
    assert_eq!(status_lines(&stdout_of(from_env)).len(), 3);

    // One node killed: once the others notice, status shows it down and the others up.
    let first_log_bytes = first.log().len();
    third.kill();
    wait_for_logs(&[(&first, first_log_bytes)], "node down", &[3]);
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let status = status_lines(&stdout_of(ringkv(&["status", "--addr", &addresses[0]])));
        let states: Vec<(u16, &str)> = status.iter().map(|(id, _, state, _)| (*id, state.as_str())).collect();
        if states == [(1, "up"), (2, "up"), (3, "down")] {
            break;
        }
        assert!(Instant::now() < deadline, "status never showed node 3 down: {states:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
