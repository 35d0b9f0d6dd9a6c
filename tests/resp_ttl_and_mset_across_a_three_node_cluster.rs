//! The Redis protocol on a three-node cluster (N = 3, quorum): a key's expiry, set through one
//! node, is read back by TTL and PTTL through the others (it travels with the newest version),
//! and a newer write without one clears it everywhere; MSET of keys with several copies writes
//! each key; MSETNX, which could not be atomic there, is refused with its reason; and the
//! commands built on compare-and-swap (EXPIRE, INCR) work through every node, their swaps run
//! across the replicas. Uses `redis-cli` from Debian's `redis-tools`; a machine without it
//! fails this test saying so.

use crate::common;

use common::LISTENER;

use std::io::Write;
use std::process::{Command, Stdio};

use common::cluster::{peer_port, start_node_with, wait_for_three_nodes};

/// redis-cli's output lines for `script` sent to `port`.
fn redis_cli(port: u16, script: &str) -> Vec<String> {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is not installed: this test needs it (apt-get install -y redis-tools)");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "redis-cli failed: {}", String::from_utf8_lossy(&output.stderr));
    // redis-cli follows an error with an empty line when not on a terminal.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn number(line: &str) -> i64 {
    line.parse().unwrap_or_else(|_| panic!("not a number: {line}"))
}

#[test]
fn resp_ttl_and_mset_across_a_three_node_cluster() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let first = start_node_with(root.path(), 1, None, &["--resp-listen", LISTENER]);
    let seed = Some(peer_port(&first));
    let second = start_node_with(root.path(), 2, seed, &["--resp-listen", LISTENER]);
    let third = start_node_with(root.path(), 3, seed, &["--resp-listen", LISTENER]);
    let resp_ports = [&first, &second, &third].map(|node| node.listener_port(0));
    wait_for_three_nodes([&first, &second, &third]);

    assert_eq!(redis_cli(resp_ports[0], "SET session v EX 1000\nPTTL session\n")[0], "OK");
    for port in resp_ports {
        let lines = redis_cli(port, "TTL session\nPTTL session\nTTL missing\nPTTL missing\n");
        let (ttl, pttl) = (number(&lines[0]), number(&lines[1]));
        assert!(0 < ttl && ttl <= 1000, "{lines:?}");
        assert!(0 < pttl && pttl <= 1_000_000, "{lines:?}");
        assert_eq!(lines[2..], ["-2", "-2"]);
    }
    assert_eq!(redis_cli(resp_ports[2], "SET session w\n"), ["OK"]);
    for port in resp_ports {
        assert_eq!(redis_cli(port, "TTL session\nGET session\n"), ["-1", "w"]);
    }

    // Keys have three copies: MSET writes each key, MSETNX is refused.
    assert_eq!(redis_cli(resp_ports[1], "MSET a 1 b 2 c 3\n"), ["OK"]);
    assert_eq!(redis_cli(resp_ports[2], "MGET a b c\n"), ["1", "2", "3"]);
    let refused = redis_cli(resp_ports[0], "MSETNX x 1 y 2\nEXISTS x y\n");
    assert!(refused[0].contains("only when every key lives on one shard"), "{refused:?}");
    assert_eq!(refused[1], "0");
    // Compare-and-swap commands run their swaps across the replicas: an expiry set through one
    // node is seen through another, and increments through every node add up.
    assert_eq!(redis_cli(resp_ports[0], "EXPIRE session 100\n"), ["1"]);
    let ttl = number(&redis_cli(resp_ports[1], "TTL session\n")[0]);
    assert!(0 < ttl && ttl <= 100, "{ttl}");
    for (index, port) in resp_ports.iter().enumerate() {
        assert_eq!(redis_cli(*port, "INCR counter\n"), [(index + 1).to_string()]);
    }
    assert_eq!(redis_cli(resp_ports[1], "INCRBY counter 10\nGET counter\n"), ["13", "13"]);
}
