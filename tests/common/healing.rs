//! Helpers for the healing tests (hinted handoff, anti-entropy): log figures and reads at ONE.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv_wire::{Consistency, Operation, Outcome};

use super::cluster::{eventually_at, SETTLE_DEADLINE};
use super::{Client, Server};

/// A put of `value` under `key`.
pub fn put(key: &str, value: &str) -> Operation {
    Operation::Put { key: Bytes::from(key.to_owned()), value: Bytes::from(value.to_owned()), ttl_ms: None }
}

/// Writes `key-0` .. `key-{keys - 1}` (values `v0` ..) at QUORUM, retrying while the cluster
/// notices a node down, and returns each write's version in key order.
pub fn put_keys_at_quorum(client: &mut Client, keys: usize) -> Vec<u64> {
    put_keys_at(client, keys, Consistency::Quorum)
}

/// [`put_keys_at_quorum`] at `consistency`.
pub fn put_keys_at(client: &mut Client, keys: usize, consistency: Consistency) -> Vec<u64> {
    (0..keys)
        .map(|index| {
            let put = put(&format!("key-{index}"), &format!("v{index}"));
            match eventually_at(client, put, consistency) {
                Outcome::Written { version } => version,
                outcome => panic!("expected a write, got {outcome:?}"),
            }
        })
        .collect()
}

/// Waits until every shard of `server` has logged, after `since` bytes, that it serves replica
/// reads again (its rebuild is over); `what` names the server in a failure.
pub fn wait_for_rebuilds(server: &Server, since: usize, what: &str) {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while log_lines(server, since, "serving replica reads again").len() < super::SHARDS {
        assert!(Instant::now() < deadline, "{what} never finished rebuilding:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `server`'s log, after `since` bytes, holds `needle`.
pub fn wait_for_log(server: &Server, since: usize, needle: &str) {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while !server.log()[since.min(server.log().len())..].contains(needle) {
        assert!(Instant::now() < deadline, "no '{needle}' in the log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `field=` in a log line, as a number.
pub fn field(line: &str, field: &str) -> Option<u64> {
    let start = line.find(&format!(" {field}="))? + field.len() + 2;
    line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The lines of `server`'s log holding `message`, after `since` bytes.
pub fn log_lines(server: &Server, since: usize, message: &str) -> Vec<String> {
    let log = server.log();
    log[since.min(log.len())..].lines().filter(|line| line.contains(message)).map(str::to_owned).collect()
}

/// The sum over shards of the last value of `field` in the lines holding `message`.
pub fn last_per_shard(server: &Server, since: usize, message: &str, field_name: &str) -> u64 {
    let mut last = std::collections::BTreeMap::new();
    for line in log_lines(server, since, message) {
        if let (Some(shard), Some(value)) = (field(&line, "shard"), field(&line, field_name)) {
            last.insert(shard, value);
        }
    }
    last.values().sum()
}

/// Waits until the sum over shards of the last `field` of `message` lines reaches `expected`.
pub fn wait_for_sum(server: &Server, since: usize, message: &str, field_name: &str, expected: u64) {
    let deadline = Instant::now() + SETTLE_DEADLINE * 2;
    while last_per_shard(server, since, message, field_name) < expected {
        assert!(
            Instant::now() < deadline,
            "'{message}' {field_name} stayed below {expected}:\n{}",
            log_lines(server, since, message).join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `key` through `client` at ONE (the node's own copy first, so this reads that node's
/// replica when it holds the key).
pub fn read_one(client: &mut Client, key: &str) -> Outcome {
    eventually_at(client, Operation::Get { key: Bytes::from(key.to_owned()) }, Consistency::One)
}

/// Reads `key-0`, `key-1`, ... through `client` at ONE ([`read_one`]) and asserts each holds
/// `value_of(index)` at the version in `versions`; `what` names a miss.
pub fn assert_reads_every_key(
    client: &mut Client,
    versions: &[u64],
    value_of: impl Fn(usize) -> String,
    what: &str,
) {
    for (index, version) in versions.iter().enumerate() {
        assert_eq!(
            read_one(client, &format!("key-{index}")),
            Outcome::Value { value: Bytes::from(value_of(index)), version: *version, expires_at_ms: None },
            "{what}: key-{index}"
        );
    }
}

/// Runs `ringkv admin repair --json` against `server` until a round repairs nothing (at most
/// `rounds_max` rounds); returns the keys repaired, over every round and shard, and prints each
/// shard's figures.
pub fn repair_until_clean(server: &Server, rounds_max: usize) -> u64 {
    let mut repaired = 0;
    for round in 0..rounds_max {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["admin", "repair", "--json", "--addr", &super::cluster::address(server)])
            .args(["--peer-addr", &format!("127.0.0.1:{}", super::cluster::peer_port(server))])
            .output()
            .expect("running ringkv admin repair");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.code() == Some(0) || output.status.code() == Some(1),
            "admin repair failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut this_round = 0;
        for line in stdout.lines() {
            println!("repair round {round}: {line}");
            let report: serde_json::Value = serde_json::from_str(line).expect("one JSON object per shard");
            this_round += report["keys_repaired"].as_u64().expect("keys_repaired");
        }
        repaired += this_round;
        if this_round == 0 && output.status.code() == Some(0) {
            return repaired;
        }
    }
    panic!("anti-entropy still repairing after {rounds_max} rounds");
}

/// Removes the storage engine's files (WAL segments, tables, manifest) of every shard of the
/// node whose data directory is `data_dir`, keeping its identity (node file, members known).
pub fn wipe_engine_files(data_dir: &std::path::Path) -> usize {
    let mut removed = 0;
    for shard in std::fs::read_dir(data_dir).unwrap().flatten() {
        if !shard.file_name().to_string_lossy().starts_with("shard-") {
            continue;
        }
        for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if ringkv_storage::is_engine_file(&file.file_name().to_string_lossy()) {
                std::fs::remove_file(file.path()).unwrap();
                removed += 1;
            }
        }
    }
    removed
}
