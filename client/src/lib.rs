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
//!  get(key) ─▶ Router: token_of(key) ─▶ ring: replicas ─▶ first one up: its owning shard's
//!             host:port (no ring: the node's owning shard; no topology: the shared port)
//!          ─▶ Connection (sans-IO): validate, id, consistency, encode ─▶ adapter writes
//!  adapter reads ─▶ Connection: decode, match id ─▶ reply ─▶ Option<Versioned>
//!  a node unreachable ─▶ failover: next replica (reads; writes only if never sent)
//!                     ─▶ RefreshSchedule: fetch the topology before the next request
//! ```
//!
//! Token- and shard-aware routing, like the ScyllaDB drivers: on connect the client fetches
//! the topology, which lists every node of the cluster (client address, up or down, shards
//! with their ports and token ranges) and the ring (each token range and its replicas in
//! preference order). Each key goes to the owning shard of one of its replicas that is up (the
//! client's preferred node when it holds one, see [`ReplicaChoice`]), so that node coordinates
//! the request without a hop to another node or core. A node outside a
//! cluster, or a server from before clusters, publishes no ring: keys then go to the owning
//! shard of the node connected to. Without a topology, or on a token nothing claims, requests
//! go to the shared client port, where the server forwards them. At most one connection is kept
//! per node shard used.
//!
//! The topology is fetched again by the first request after
//! [`ClientOptions::topology_refresh_interval`], after a node could not be reached or answered
//! `Unavailable`, and at once after a wrong-shard answer (the request is then resent once). When
//! the node a request was routed to cannot be reached, the request goes to the key's next
//! replica; a read also when the node stopped answering mid-request. A write that was sent and
//! then lost is not sent again: it may have been applied, and the caller gets the error.
//!
//! Each request carries a [`Consistency`] level, or none (the node's configured level):
//! [`ClientOptions::consistency`] for every call, `with_consistency` on each adapter's client for
//! some.
//!
//! A dropped connection fails the requests in flight on it ([`Error::ConnectionLost`]; whether
//! they took effect is unknown) and the next request reconnects, retrying with the bounded
//! back-off of [`ClientOptions::reconnect`].
//!
//! ## Layout
//! - [`connection`]: [`Connection`], the sans-IO core of one connection; [`command`]: the
//!   command each call sends.
//! - [`routing`]: [`Router`], key → token → replicas → shard → address; [`token`]: [`token_of`].
//! - [`failover`]: whether a failed request may go to another route; [`refresh`]:
//!   [`RefreshSchedule`], when the topology is fetched again.
//! - [`reply`]: [`Versioned`], [`CasResult`], [`ScanPage`], what each reply means.
//! - [`options`]: [`ClientOptions`], [`ReplicaChoice`], [`Backoff`]; [`error`]: [`Error`].
//! - [`blocking`], `tokio`, `glommio`: the adapters; the two async ones share `multiplexed`
//!   (replies handed to waiting tasks) and `asynchronous` (the client itself).

pub mod command;
pub mod connection;
pub mod error;
pub mod failover;
pub mod options;
pub mod refresh;
pub mod reply;
pub mod routing;
pub mod tls;
pub mod token;

#[cfg(feature = "blocking")]
pub mod blocking;

#[cfg(any(feature = "tokio", feature = "glommio"))]
pub mod asynchronous;
#[cfg(any(feature = "tokio", feature = "glommio"))]
mod clock;
#[cfg(any(feature = "tokio", feature = "glommio"))]
mod multiplexed;

#[cfg(feature = "glommio")]
pub mod glommio;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use connection::{Connection, IN_FLIGHT_MAX_DEFAULT};
pub use error::{Error, Result};
pub use options::{Backoff, ClientOptions, ReplicaChoice};
pub use refresh::RefreshSchedule;
pub use reply::{CasResult, Versioned};
pub use ringkv_wire::limits::SCAN_LIMIT_MAX;
pub use ringkv_wire::{
    Consistency, Credentials, ErrorCode, Expected, Failure, NodePlacement, Operation, Outcome, ReplicaRange,
    ScanEnd, ScanEntry, ScanPage, ScanStart, ShardPlacement, TokenRange, Topology, DEFAULT_USER,
};
pub use routing::{InlineList, Route, Router, Routes};
pub use tls::{TlsError, TlsOptions};
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
