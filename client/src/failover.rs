//! What a client does when a request fails on the way to one node: decisions only, shared by
//! every adapter.
//!
//! ```text
//!  error on a route ─▶ is_unreachable? ─yes─▶ route around the node for a while, fetch the
//!                  │                          topology again before the next request
//!                  └─▶ may_try_another? ─yes─▶ next candidate route (Router::routes)
//!                                       └─no──▶ the caller gets the error
//! ```
//!
//! A request that never left the client (no connection could be made) may go anywhere else.
//! One that was sent and then lost (timeout, connection lost) may have taken effect: only reads
//! are sent again, since reading twice is harmless, while a write sent twice could land twice
//! (with two versions). The caller learns of a lost write and decides.

use ringkv_wire::{Command, ErrorCode, Failure, Operation, Reply};

use crate::error::Error;

/// Whether running `command` twice is the same as running it once: reads, scans, pings,
/// topology requests and batches of reads only.
pub fn is_idempotent(command: &Command) -> bool {
    match command {
        Command::Single(operation) => matches!(operation, Operation::Get { .. }),
        Command::Batch(operations) => {
            operations.iter().all(|operation| matches!(operation, Operation::Get { .. }))
        }
        Command::Scan(_) | Command::Ping | Command::Topology | Command::Auth(_) => true,
    }
}

/// Whether a request that failed with `error` may be sent to the next candidate route.
pub fn may_try_another(error: &Error, idempotent: bool) -> bool {
    match error {
        // Nothing was sent.
        Error::Connect { .. } => true,
        // Sent, and maybe carried out.
        Error::ConnectionLost { .. } | Error::Timeout { .. } => idempotent,
        _ => false,
    }
}

/// Whether `error` says the node at the end of the route cannot be reached now.
pub fn is_unreachable(error: &Error) -> bool {
    matches!(error, Error::Connect { .. } | Error::ConnectionLost { .. })
}

/// Whether the node answered that too few replicas are up: the client's picture of which
/// nodes are up is likely out of date.
pub fn is_unavailable(reply: &Reply) -> bool {
    matches!(reply, Reply::Failed(Failure { code: ErrorCode::Unavailable, .. }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use ringkv_wire::{Expected, Scan, ScanEnd, ScanStart};

    use super::*;

    fn key() -> Bytes {
        Bytes::from_static(b"k")
    }

    #[test]
    fn only_reads_are_idempotent() {
        let get = Operation::Get { key: key() };
        let put = Operation::Put { key: key(), value: key(), ttl_ms: None };
        assert!(is_idempotent(&Command::Single(get.clone())));
        assert!(is_idempotent(&Command::Batch(vec![get.clone(), get.clone()])));
        assert!(is_idempotent(&Command::Scan(Scan {
            start: ScanStart::Token(0),
            end: ScanEnd::Last,
            limit: 1
        })));
        assert!(is_idempotent(&Command::Ping) && is_idempotent(&Command::Topology));
        assert!(!is_idempotent(&Command::Single(put.clone())));
        assert!(!is_idempotent(&Command::Batch(vec![get, put])));
        assert!(!is_idempotent(&Command::Single(Operation::Delete { key: key() })));
        let cas =
            Operation::CompareAndSwap { key: key(), expected: Expected::Absent, value: key(), ttl_ms: None };
        assert!(!is_idempotent(&Command::Single(cas)));
    }

    #[test]
    fn writes_go_elsewhere_only_when_never_sent() {
        let address = "127.0.0.1:1".parse().unwrap();
        let refused = Error::Connect {
            address,
            attempts: 1,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let lost = Error::ConnectionLost { address, reason: "reset".into() };
        let timeout = Error::Timeout { timeout: Duration::from_secs(1) };
        let refusal = Error::Server(Failure::new(ErrorCode::Unavailable, "1 of 3 replicas up"));
        for idempotent in [false, true] {
            assert!(may_try_another(&refused, idempotent));
            assert_eq!(may_try_another(&lost, idempotent), idempotent);
            assert_eq!(may_try_another(&timeout, idempotent), idempotent);
            assert!(!may_try_another(&refusal, idempotent), "another coordinator sees the same replicas");
        }
        assert!(is_unreachable(&refused) && is_unreachable(&lost));
        assert!(!is_unreachable(&timeout) && !is_unreachable(&refusal));
        assert!(is_unavailable(&Reply::Failed(Failure::new(ErrorCode::Unavailable, "down"))));
        assert!(!is_unavailable(&Reply::Failed(Failure::new(ErrorCode::Overloaded, "busy"))));
    }
}
