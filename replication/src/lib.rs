//! # ringkv-replication
//!
//! The replication logic of ringkv, as state machines without I/O: no glommio, no clock, no
//! randomness. Time comes in as `now_ms` arguments, randomness as a caller's generator, and
//! every effect goes out as a command for the driver to run. The shard runs these machines under
//! glommio in production; tests (and the simulator) run the same code under a seeded scheduler.
//!
//! ```text
//!                 membership datagrams          peer messages            client requests
//!                        │                            │                         │
//!                        ▼                            ▼                         ▼
//!   Membership (foca, one timer heap) ──Up/Down──▶ ClusterRing ──preference list──▶ Coordinator
//!                        │                                                      │
//!                datagrams out                                 Send(replica message) / Reply
//!                                     replica::accept ─▶ Work (apply / read) ─▶ replica answers
//! ```
//!
//! ## Layout
//! - [`ring`]: [`ClusterRing`], tokens of every node and the preference list of a token.
//! - [`coordinator`]: [`Coordinator`], quorum writes and reads with read repair and timeouts.
//! - [`paxos`]: [`paxos::PaxosCas`] and [`paxos::AcceptorState`], compare-and-swap across
//!   replicas as single-decree Paxos per key.
//! - [`replica`]: what a replica does with a coordinator's request, and its answer.
//! - [`membership`]: [`Membership`], SWIM membership and failure detection over foca.
//! - [`clock`]: [`HybridClock`], the hybrid logical clock versions come from, and the clock-skew
//!   check on versions from other nodes.
//! - [`tictac`]: [`TictacTree`], the incremental Merkle tree of a token range's keys and versions.
//! - [`anti_entropy`]: [`anti_entropy::Exchange`], one comparison of a range's trees with a peer,
//!   root → branches → segments → keys, and the push/pull it calls for.
//! - [`shard_ring`]: [`ShardRing`], which shard of a node owns a token, and the [`Target`] of a
//!   replica.
//! - [`hints`]: [`hints::HintBook`], what hinted handoff may store, keep and replay: bounds,
//!   the hint window, the tombstone grace and the replay throttle.
//! - [`ids`]: [`ids::IdMap`], the map keyed by request and timer ids, hashed without a random
//!   seed.

pub mod anti_entropy;
pub mod clock;
pub mod coordinator;
pub mod hints;
pub mod ids;
pub mod membership;
pub mod paxos;
pub mod replica;
pub mod ring;
pub mod shard_ring;
pub mod tictac;

pub use clock::{ClockSkew, HybridClock};
pub use coordinator::{Coordinator, CoordinatorConfig, CoordinatorError, CoordinatorReply, Output, Target};
pub use membership::{Membership, MembershipEvent, MembershipTiming, NodeIdentity};
pub use ring::{default_tokens, ClusterRing};
pub use shard_ring::ShardRing;
pub use tictac::{TictacTree, TokenRange};
