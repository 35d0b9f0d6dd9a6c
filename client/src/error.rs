//! [`Error`]: every way a client call can fail, split by what the caller can do about it.

use std::net::SocketAddr;
use std::time::Duration;

use ringkv_wire::{ErrorCode, Failure, WireError};

/// Why a client call failed. A key that does not exist is not an error: reads answer
/// `Ok(None)`.
///
/// What the caller may do next follows from the variant:
/// - [`Error::Limit`]: fix the request; nothing was sent.
/// - [`Error::Server`]: the server refused or could not carry out the request; its
///   [`ErrorCode`] says whether a retry can help (`Overloaded`, `Unavailable`, `Timeout`, and
///   `DiskFull` once the node's disk has room again) or not (`StorageFailed`: the node's storage
///   failed and refuses writes until it is restarted).
/// - [`Error::Timeout`] and [`Error::ConnectionLost`]: the request may or may not have taken
///   effect; retry only what is safe to apply twice.
/// - [`Error::Connect`]: no connection could be made within the bounded back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a protocol limit and was refused before sending. The error is the one
    /// the server would have answered with: same [`ErrorCode`], same message.
    #[error("request refused before sending: {0}")]
    Limit(WireError),
    /// The server answered with an error.
    #[error("server refused the request: {0}")]
    Server(Failure),
    /// No answer arrived within the request timeout. The request may still take effect.
    #[error("no answer within {} ms; the request may still take effect", timeout.as_millis())]
    Timeout { timeout: Duration },
    /// The connection closed or failed while the request was in flight. Whether the request
    /// took effect is unknown; the next call reconnects.
    #[error("connection to {address} lost: {reason}")]
    ConnectionLost { address: SocketAddr, reason: String },
    /// Every connection attempt failed.
    #[error("could not connect to {address} after {attempts} attempts: {source}")]
    Connect {
        address: SocketAddr,
        attempts: u32,
        #[source]
        source: std::io::Error,
    },
    /// The address given to `connect` did not resolve to any socket address.
    #[error("address {address:?} does not resolve: {reason}")]
    Resolve { address: String, reason: String },
    /// The server sent bytes that do not follow the protocol; the connection was closed.
    #[error("server broke the protocol: {0}")]
    Protocol(WireError),
    /// The server answered with a reply of the wrong kind for the request.
    #[error("unexpected reply to a {request} request: {reply}")]
    UnexpectedReply { request: &'static str, reply: String },
    /// The connection already has `in_flight_max` requests waiting for answers. Only the sans-IO
    /// [`crate::Connection`] returns this; the adapters wait for room instead.
    #[error("{in_flight_max} requests already in flight on this connection (in_flight_max)")]
    InFlightFull { in_flight_max: usize },
}

impl Error {
    /// The protocol's code for this error when there is one: the server's code, or for a limit
    /// refused client-side, the code the server would have answered with.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Limit(error) => Some(error.code()),
            Error::Server(failure) => Some(failure.code),
            _ => None,
        }
    }

    /// The error as the server would report it, for a limit refused client-side or an error the
    /// server sent.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Error::Limit(error) => Some(Failure::from(error)),
            Error::Server(failure) => Some(failure.clone()),
            _ => None,
        }
    }
}

/// Results of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_side_limit_reports_the_servers_code_and_message() {
        let wire = WireError::KeyTooLong { length_bytes: 300 };
        let error = Error::Limit(wire.clone());
        assert_eq!(error.code(), Some(ErrorCode::KeyTooLong));
        assert_eq!(error.failure(), Some(Failure::new(ErrorCode::KeyTooLong, wire.to_string())));
    }
}
