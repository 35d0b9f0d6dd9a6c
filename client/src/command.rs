//! The commands each client call sends, built in one place for every adapter (and for
//! callers driving a [`crate::Connection`] themselves).

use std::time::Duration;

use bytes::Bytes;
use ringkv_wire::{Command, Expected, Operation, Scan, ScanEnd, ScanStart};

/// A time-to-live in whole milliseconds, rounded up so that a short non-zero TTL never becomes
/// the zero the server refuses. Too large a TTL saturates and is then refused by the limit
/// check, with the server's error.
pub fn ttl_ms(ttl: Duration) -> u64 {
    let milliseconds = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(milliseconds).unwrap_or(u64::MAX)
}

pub fn get(key: &[u8]) -> Command {
    Command::Single(Operation::Get { key: Bytes::copy_from_slice(key) })
}

pub fn put(key: &[u8], value: &[u8], ttl: Option<Duration>) -> Command {
    Command::Single(Operation::Put {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        ttl_ms: ttl.map(ttl_ms),
    })
}

pub fn delete(key: &[u8]) -> Command {
    Command::Single(Operation::Delete { key: Bytes::copy_from_slice(key) })
}

pub fn compare_and_swap(key: &[u8], expected: Expected, value: &[u8]) -> Command {
    Command::Single(Operation::CompareAndSwap {
        key: Bytes::copy_from_slice(key),
        expected,
        value: Bytes::copy_from_slice(value),
        ttl_ms: None,
    })
}

/// One page of the live keys from `start` to `end`, in token order.
pub fn scan(start: ScanStart, end: ScanEnd, limit: u32) -> Command {
    Command::Scan(Scan { start, end, limit })
}

/// The key a command should be routed by: the single operation's key. Batches, scans, pings
/// and topology requests address no single shard and go to the shared port, where the server
/// forwards each operation to its owner (a scan asks every shard wherever it lands).
pub fn routing_key(command: &Command) -> Option<&[u8]> {
    match command {
        Command::Single(operation) => Some(operation.key()),
        Command::Batch(_) | Command::Topology | Command::Ping | Command::Scan(_) | Command::Auth(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_micros(1)), 1);
        assert_eq!(ttl_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(ttl_ms(Duration::ZERO), 0);
        assert_eq!(ttl_ms(Duration::MAX), u64::MAX);
    }
}
