//! [`Ring`]: which shard of this node owns a key. The mapping is
//! [`ringkv_replication::shard_ring::ShardRing`], kept in the replication crate, free of
//! glommio, so that coordinators choosing a replica's shard and the simulator use the very code
//! the shard routes with.

pub use ringkv_replication::shard_ring::{
    token, ShardRing as Ring, SHARDS_MAX, TOKEN_SEED, VNODES_PER_SHARD_MAX,
};
