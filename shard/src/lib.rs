//! # ringkv-shard
//!
//! The per-core composition root of a ringkv node. Each shard is one glommio executor (pinned
//! to one core with `pin_to_cores`), owning a slice of the token ring and everything that slice needs: its storage
//! engine, its clock, its client connections and its end of the cross-shard mesh. Shards share
//! no mutable state; they talk by message.
//!
//! ```text
//!  client ─frame─▶ shard k (client port, or k's own port)
//!                   Connection ─▶ Router: owner = ring.owner_of_key(key)
//!                                   ├─ owner == k ─▶ Handler ─▶ Engine (WAL group commit, memtable)
//!                                   └─ owner == j ─▶ Forwarding ─mesh─▶ shard j's Handler
//!                                 Scan: pages of the shards owning its tokens ─▶ merge ─▶ one page
//!  client ◀─frame─ replies, batched per write, in completion order, matched by request id
//! ```
//!
//! ## Layout
//! - [`node`]: [`Node`], every shard of a node on its own executor; start, stop, wait.
//! - [`service`]: [`ShardService`], one shard composed: engine, router, sockets; `drain`/`stop`.
//! - [`connection`]: [`Connection`], one client connection: frames in, concurrent requests,
//!   batched replies out, bounded in-flight window and outbox.
//! - [`router`]: [`Router`], runs each operation on its owning shard; [`router::forwarding`]
//!   carries operations and replies between shards over glommio's channel mesh;
//!   [`router::scan`] merges the shards' pages of a scan.
//! - [`handler`]: [`Handler`], one operation (or this shard's page of a scan) on the local
//!   storage engine, versioned by the clock.
//! - [`cluster`]: [`cluster::Cluster`], this shard's part in the replicated cluster: quorum
//!   coordination, the replica side of peer links, membership.
//! - [`ring`]: [`Ring`], xxh3-64 tokens and the vnode ranges each shard owns.
//! - [`clock`]: [`HybridClock`], the hybrid logical clock versions come from.
//! - [`config`]: [`NodeConfig`], every setting, with defaults that need no file.
//! - [`data_directory`]: [`DataDirectory`], the locked data directory and its shard count.
//! - [`resp`]: the Redis protocol on every shard (`resp_listen`): [`resp::RespConnection`]
//!   serves Redis commands through the same [`Router`] as native requests.
//! - [`metrics`]: [`metrics::ShardMetrics`], each shard's counters and histograms, and the
//!   Prometheus endpoint (`metrics_listen`; HTTPS under TLS, an optional bearer token) that
//!   renders them with the engine's and cluster's figures each shard answers every scrape with.
//! - [`request_memory`]: [`request_memory::RequestMemory`], the shard's budget of request bytes
//!   received and not yet answered; every connection reads through it.
//! - [`stop_signal`]: [`StopSignal`], a shard-local stop flag tasks can wait on.
//! - [`local_event`]: [`local_event::LocalEvent`], the wake-up the tasks of one shard (a
//!   connection's reader, writer and committer) signal each other with, lock-free.
//! - [`timeouts`]: [`timeouts::ReadTimeouts`], closing client connections whose frame does not
//!   finish in time, or that sit idle.
//! - [`error`]: [`ShardError`], why a node could not start or stop cleanly.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod data_directory;
pub mod error;
pub mod handler;
pub mod local_event;
pub mod metrics;
pub mod node;
pub mod request_memory;
pub mod resp;
pub mod ring;
pub mod router;
pub mod service;
pub mod stop_signal;
pub mod timeouts;
pub mod tls;

pub use clock::HybridClock;
pub use config::{NodeConfig, SyncSetting, CLIENT_PORT_DEFAULT};
pub use connection::{Connection, ConnectionLimits};
pub use data_directory::DataDirectory;
pub use error::ShardError;
pub use handler::Handler;
pub use node::{Node, StopHandle};
pub use ring::{token, Ring};
pub use router::Router;
pub use service::ShardService;
pub use stop_signal::StopSignal;
