//! The commands each client call sends, built in one place for every adapter (and for
//! callers driving a [`crate::Connection`] themselves).

use std::time::Duration;

use bytes::Bytes;
use ringkv_wire::{Command, Expected, Operation, OperationRef, Scan, ScanEnd, ScanStart};

/// A time-to-live in whole milliseconds, rounded up so that a short non-zero TTL never becomes
/// the zero the server refuses. Too large a TTL saturates and is then refused by the limit
/// check, with the server's error.
pub fn ttl_ms(ttl: Duration) -> u64 {
    let milliseconds = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(milliseconds).unwrap_or(u64::MAX)
}

/// A get of the caller's `key`, borrowed: it is encoded straight into the connection's outbox.
pub fn get(key: &[u8]) -> OperationRef<'_> {
    OperationRef::Get { key }
}

/// A put of the caller's `key` and `value`, borrowed (see [`get`]).
pub fn put<'a>(key: &'a [u8], value: &'a [u8], ttl: Option<Duration>) -> OperationRef<'a> {
    OperationRef::Put { key, value, ttl_ms: ttl.map(ttl_ms) }
}

/// A delete of the caller's `key`, borrowed (see [`get`]).
pub fn delete(key: &[u8]) -> OperationRef<'_> {
    OperationRef::Delete { key }
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

/// What a call sends: a command, or one get, put or delete borrowed from the caller's bytes,
/// which the connection encodes straight into its outbox (no copy of the key or value into a
/// [`Command`] first). Either is borrowed for as long as the call runs, so a call can send it
/// again to another replica.
#[derive(Clone, Copy, Debug)]
pub enum Outgoing<'a> {
    Command(&'a Command),
    Operation(OperationRef<'a>),
}

impl Outgoing<'_> {
    /// See [`routing_key`].
    pub fn routing_key(&self) -> Option<&[u8]> {
        match self {
            Outgoing::Command(command) => routing_key(command),
            Outgoing::Operation(operation) => Some(operation.key()),
        }
    }

    /// See [`crate::failover::is_idempotent`].
    pub fn is_idempotent(&self) -> bool {
        match self {
            Outgoing::Command(command) => crate::failover::is_idempotent(command),
            Outgoing::Operation(operation) => matches!(operation, OperationRef::Get { .. }),
        }
    }
}

impl<'a> From<&'a Command> for Outgoing<'a> {
    fn from(command: &'a Command) -> Self {
        Outgoing::Command(command)
    }
}

impl<'a> From<OperationRef<'a>> for Outgoing<'a> {
    fn from(operation: OperationRef<'a>) -> Self {
        Outgoing::Operation(operation)
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
