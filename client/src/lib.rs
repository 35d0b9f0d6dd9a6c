//! # ringkv-client
//!
//! The native ringkv client. One sans-IO core encodes requests, gives them ids, matches replies
//! that come back in any order, refuses requests that break a protocol limit (with the error
//! the server would give), bounds the requests in flight, and routes each key to the shard that
//! owns it. Adapters put that core on a socket:
//!
//! | adapter | feature | for |
//! |---|---|---|
//! | [`blocking::Client`] | `blocking` (default) | scripts, tools, the `ringkv` CLI |
//! | `tokio::Client` | `tokio` | services on tokio; many requests in flight per connection |
//! | `glommio::Client` | `glommio` | thread-per-core programs such as the load generator |
//!
//! ```text
//!  get(key) ─▶ Router: token_of(key) ─▶ owning shard's port (or the shared port)
//!          ─▶ Connection (sans-IO): validate, id, encode ─▶ adapter writes
//!  adapter reads ─▶ Connection: decode, match id ─▶ reply ─▶ Option<Versioned>
//! ```
//!
//! Shard-aware routing: on connect the client fetches the node's topology (which shard owns
//! which token ranges, and each shard's own port) and keeps one connection per shard port, so
//! each request reaches its owning core without a cross-core hop on the server. Without a
//! topology, or on a token no shard claims, requests go to the shared client port, where the
//! server forwards them. A wrong-shard answer makes the client fetch the topology again and
//! resend once.
//!
//! A dropped connection fails the requests in flight on it ([`Error::ConnectionLost`]; whether
//! they took effect is unknown) and the next request reconnects, retrying with the bounded
//! back-off of [`ClientOptions::reconnect`].
//!
//! ## Layout
//! - [`connection`]: [`Connection`], the sans-IO core of one connection; [`command`]: the
//!   command each call sends.
//! - [`routing`]: [`Router`], key → token → shard → address; [`token`]: [`token_of`].
//! - [`reply`]: [`Versioned`], [`CasResult`], [`ScanPage`], what each reply means.
//! - [`options`]: [`ClientOptions`], [`Backoff`]; [`error`]: [`Error`].
//! - [`blocking`], `tokio`, `glommio`: the adapters; the two async ones share `multiplexed`
//!   (replies handed to waiting tasks) and `asynchronous` (the client itself).

pub mod command;
pub mod connection;
pub mod error;
pub mod options;
pub mod reply;
pub mod routing;
pub mod token;

#[cfg(feature = "blocking")]
pub mod blocking;

#[cfg(any(feature = "tokio", feature = "glommio"))]
pub mod asynchronous;
#[cfg(any(feature = "tokio", feature = "glommio"))]
mod multiplexed;

#[cfg(feature = "glommio")]
pub mod glommio;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use connection::{Connection, IN_FLIGHT_MAX_DEFAULT};
pub use error::{Error, Result};
pub use options::{Backoff, ClientOptions};
pub use reply::{CasResult, Versioned};
pub use ringkv_wire::limits::SCAN_LIMIT_MAX;
pub use ringkv_wire::{
    ErrorCode, Expected, Failure, Operation, Outcome, ScanEnd, ScanEntry, ScanPage, ScanStart,
    ShardPlacement, TokenRange, Topology,
};
pub use routing::{Route, Router};
pub use token::token_of;

/// The first socket address `address` resolves to.
#[cfg(any(feature = "blocking", feature = "tokio", feature = "glommio"))]
fn resolve(address: &(impl std::net::ToSocketAddrs + std::fmt::Debug)) -> Result<std::net::SocketAddr> {
    let resolve_error = |reason: String| Error::Resolve { address: format!("{address:?}"), reason };
    address
        .to_socket_addrs()
        .map_err(|error| resolve_error(error.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no addresses".into()))
}
