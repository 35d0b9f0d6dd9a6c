//! [`HybridClock`]: the hybrid logical clock that stamps every write with its version. It lives
//! in `ringkv-replication`, beside the check that refuses versions from a node whose clock runs
//! too far ahead; this module re-exports it for the shard's handler.

pub use ringkv_replication::clock::*;
