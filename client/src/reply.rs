//! What a reply means for each client call: [`Versioned`], [`CasResult`], [`ScanPage`], and the
//! conversions every adapter shares (public for callers driving a [`crate::Connection`]
//! themselves).

use bytes::Bytes;
use ringkv_wire::{ErrorCode, Failure, Outcome, Reply, ScanPage, Topology};

use crate::error::Error;

/// A value and the version the server gave the write that stored it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Versioned {
    pub value: Bytes,
    pub version: u64,
    /// When the value expires, in milliseconds since the Unix epoch by the clock of the node
    /// that wrote it; `None` when it never does.
    pub expires_at_ms: Option<u64>,
}

/// How a compare-and-swap ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CasResult {
    /// The expectation held and the new value was written with this version.
    Swapped { version: u64 },
    /// The expectation did not hold; nothing was written. `current_version` is the key's
    /// version now, or `None` when it has no live value.
    Mismatch { current_version: Option<u64> },
}

/// Whether the server refused a request because the receiving shard does not own the key,
/// which means the client's topology is stale.
pub fn is_wrong_shard(reply: &Reply) -> bool {
    matches!(reply, Reply::Failed(Failure { code: ErrorCode::WrongShard, .. }))
}

fn unexpected(request: &'static str, reply: Reply) -> Error {
    match reply {
        Reply::Failed(failure) => Error::Server(failure),
        other => Error::UnexpectedReply { request, reply: format!("{other:?}") },
    }
}

fn single(request: &'static str, reply: Reply) -> Result<Outcome, Error> {
    match reply {
        Reply::Single(outcome) => Ok(outcome),
        other => Err(unexpected(request, other)),
    }
}

pub fn into_get(reply: Reply) -> Result<Option<Versioned>, Error> {
    match single("get", reply)? {
        Outcome::Value { value, version, expires_at_ms } => {
            Ok(Some(Versioned { value, version, expires_at_ms }))
        }
        Outcome::NotFound => Ok(None),
        other => Err(unexpected("get", Reply::Single(other))),
    }
}

/// The version of a put or delete.
pub fn into_written(request: &'static str, reply: Reply) -> Result<u64, Error> {
    match single(request, reply)? {
        Outcome::Written { version } => Ok(version),
        other => Err(unexpected(request, Reply::Single(other))),
    }
}

pub fn into_cas(reply: Reply) -> Result<CasResult, Error> {
    match single("compare-and-swap", reply)? {
        Outcome::Written { version } => Ok(CasResult::Swapped { version }),
        Outcome::CasMismatch { current_version } => Ok(CasResult::Mismatch { current_version }),
        other => Err(unexpected("compare-and-swap", Reply::Single(other))),
    }
}

/// A single operation's outcome as a pipeline entry: failures become [`Error::Server`].
pub fn into_outcome(reply: Reply) -> Result<Outcome, Error> {
    single("pipelined", reply)
}

pub fn into_batch(reply: Reply) -> Result<Vec<Result<Outcome, Failure>>, Error> {
    match reply {
        Reply::Batch(results) => Ok(results),
        other => Err(unexpected("batch", other)),
    }
}

pub fn into_topology(reply: Reply) -> Result<Topology, Error> {
    match reply {
        Reply::Topology(topology) => Ok(topology),
        other => Err(unexpected("topology", other)),
    }
}

/// One page of a scan: entries in token order, and the key to resume after if any remain.
pub fn into_scan(reply: Reply) -> Result<ScanPage, Error> {
    match reply {
        Reply::Scan(page) => Ok(page),
        other => Err(unexpected("scan", other)),
    }
}

pub fn into_pong(reply: Reply) -> Result<(), Error> {
    match reply {
        Reply::Pong => Ok(()),
        other => Err(unexpected("ping", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_none_and_failures_are_server_errors() {
        assert_eq!(into_get(Reply::Single(Outcome::NotFound)).unwrap(), None);
        let failure = Failure::new(ErrorCode::Overloaded, "busy");
        let error = into_get(Reply::Failed(failure.clone())).unwrap_err();
        assert!(matches!(error, Error::Server(ref got) if *got == failure));
        assert!(matches!(into_pong(Reply::Single(Outcome::NotFound)), Err(Error::UnexpectedReply { .. })));
        assert_eq!(
            into_cas(Reply::Single(Outcome::CasMismatch { current_version: Some(3) })).unwrap(),
            CasResult::Mismatch { current_version: Some(3) }
        );
        assert!(is_wrong_shard(&Reply::Failed(Failure::new(ErrorCode::WrongShard, "moved"))));
        assert_eq!(into_scan(Reply::Scan(ScanPage::default())).unwrap(), ScanPage::default());
        assert!(matches!(into_scan(Reply::Pong), Err(Error::UnexpectedReply { request: "scan", .. })));
    }
}
