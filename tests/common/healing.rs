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
