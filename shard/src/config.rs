//! [`NodeConfig`]: everything an operator can set for one node, with defaults that work on one
//! machine with no configuration file at all.
//!
//! The binary reads a TOML file into this (every field optional) and then applies its
//! command-line flags on top.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ringkv_storage::{EngineOptions, SyncMode};
use serde::Deserialize;

use crate::clock::NODE_ID_MAX;
use crate::error::ShardError;
use crate::ring::{SHARDS_MAX, VNODES_PER_SHARD_MAX};

/// Default client port.
pub const CLIENT_PORT_DEFAULT: u16 = 7379;

/// When a write is acknowledged, as an operator writes it: `always` or `periodic:MS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SyncSetting {
    /// Acknowledge after the fdatasync that covers the write (group commit).
    Always,
    /// Acknowledge once buffered; sync every `interval_ms`. Up to that much is lost on power loss.
    Periodic { interval_ms: u64 },
}

impl FromStr for SyncSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "always" {
            return Ok(SyncSetting::Always);
        }
        let interval = text
            .strip_prefix("periodic:")
            .ok_or_else(|| format!("sync mode {text:?} is neither \"always\" nor \"periodic:MS\""))?;
        match interval.parse::<u64>() {
            Ok(interval_ms) if interval_ms > 0 => Ok(SyncSetting::Periodic { interval_ms }),
            _ => Err(format!("sync interval {interval:?} is not a positive number of milliseconds")),
        }
    }
}

impl TryFrom<String> for SyncSetting {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for SyncSetting {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncSetting::Always => formatter.write_str("always"),
            SyncSetting::Periodic { interval_ms } => write!(formatter, "periodic:{interval_ms}"),
        }
    }
}

impl From<SyncSetting> for SyncMode {
    fn from(setting: SyncSetting) -> Self {
        match setting {
            SyncSetting::Always => SyncMode::Always,
            SyncSetting::Periodic { interval_ms } => SyncMode::Periodic { interval_ms },
        }
    }
}

/// The configuration of one node. Field names are the TOML keys.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory holding one sub-directory per shard (`shard-<id>`) and the lock file.
    pub data_dir: PathBuf,
    /// Address of the client port every shard listens on (the kernel spreads connections).
    pub listen: SocketAddr,
    /// Port of shard 0's own port; shard `i` listens on `shard_port_base + i`. Default: the
    /// client port + 1.
    pub shard_port_base: Option<u16>,
    /// Number of shards, one executor each. Default: [`default_shard_count`].
    pub shards: Option<usize>,
    /// Pin shard `i`'s executor to core `i`. Off by default: pinning pays only on a machine
    /// dedicated to ringkv. With a load generator on the same 2-core machine, two pinned shards
    /// served 188k reads/s against 459k unpinned, because a pinned shard cannot move away from
    /// a core the other program is using.
    pub pin_to_cores: bool,
    /// This node's id, carried in the low bits of every version it writes.
    pub node_id: u16,
    /// When writes are acknowledged.
    pub sync: SyncSetting,
    /// Token ranges per shard.
    pub vnodes_per_shard: usize,
    /// Open client connections per shard; more are answered "overloaded" and closed.
    pub connections_max: usize,
    /// Requests executing at once per connection; more are answered "overloaded".
    pub in_flight_max: usize,
    /// Encoded replies waiting to be written per connection; above this the connection stops
    /// reading requests until the client reads its replies.
    pub outbox_bytes_max: usize,
    /// Requests a shard may have forwarded to other shards and not yet had answered; more are
    /// answered "overloaded".
    pub forward_in_flight_max: usize,
    /// Capacity of each shard-to-shard channel, in messages.
    pub mesh_channel_capacity: usize,
    /// Memory each executor registers with io_uring for DMA buffers.
    pub io_memory_bytes: usize,
    /// A shard's memtable is flushed to an SSTable past this size.
    pub memtable_bytes_max: usize,
    /// Bytes of SSTable blocks each shard caches.
    pub block_cache_bytes: usize,
    /// How long a stopping shard waits for its connections to finish their requests and write
    /// their replies before it closes them.
    pub shutdown_grace_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./ringkv-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], CLIENT_PORT_DEFAULT)),
            shard_port_base: None,
            shards: None,
            pin_to_cores: false,
            node_id: 0,
            sync: SyncSetting::Always,
            vnodes_per_shard: 16,
            connections_max: 1024,
            in_flight_max: 1024,
            outbox_bytes_max: 4 << 20,
            forward_in_flight_max: 4096,
            mesh_channel_capacity: 1024,
            io_memory_bytes: 1 << 20,
            memtable_bytes_max: 64 << 20,
            block_cache_bytes: 64 << 20,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl NodeConfig {
    /// Parses a TOML document; keys it leaves out keep their defaults, unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ShardError> {
        let failed = |reason: String| ShardError::ConfigFile { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|error| failed(error.to_string()))?;
        NodeConfig::from_toml(&text).map_err(|error| failed(error.to_string()))
    }

    /// The number of shards to run: the configured count, or [`default_shard_count`].
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            default_shard_count(std::thread::available_parallelism().map_or(1, |cores| cores.get()))
        })
    }

    /// The port shard `shard_id` alone listens on.
    pub fn shard_port(&self, shard_id: u32) -> u16 {
        let base = self.shard_port_base.unwrap_or(self.listen.port().wrapping_add(1));
        base.wrapping_add(shard_id as u16)
    }

    /// The address shard `shard_id` alone listens on.
    pub fn shard_address(&self, shard_id: u32) -> SocketAddr {
        SocketAddr::new(self.listen.ip(), self.shard_port(shard_id))
    }

    /// The storage engine options for each shard.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            sync: self.sync.into(),
            memtable_bytes_max: self.memtable_bytes_max,
            block_cache_bytes: self.block_cache_bytes,
            memtable_hash_seed: random_seed(),
            ..EngineOptions::default()
        }
    }

    /// Checks every value against its range.
    pub fn validate(&self) -> Result<(), ShardError> {
        let invalid = |field: &'static str, reason: String| Err(ShardError::ConfigValue { field, reason });
        let shards = self.shard_count();
        if !(1..=SHARDS_MAX).contains(&shards) {
            return invalid("shards", format!("is {shards}; it must be 1 to {SHARDS_MAX}"));
        }
        if self.listen.port() == 0 {
            return invalid("listen", "needs a port other than 0: clients must know it".to_string());
        }
        let base = match self.shard_port_base {
            Some(base) => u32::from(base),
            None => u32::from(self.listen.port()) + 1,
        };
        if base == 0 || base + shards as u32 - 1 > u32::from(u16::MAX) {
            return invalid(
                "shard_port_base",
                format!("{base} leaves no room for {shards} shard ports below 65536"),
            );
        }
        let client_port = u32::from(self.listen.port());
        if (base..base + shards as u32).contains(&client_port) {
            return invalid(
                "shard_port_base",
                format!("{base}: a shard port would be the client port {client_port}"),
            );
        }
        if self.node_id > NODE_ID_MAX {
            return invalid("node_id", format!("is {}; it must be at most {NODE_ID_MAX}", self.node_id));
        }
        if !(1..=VNODES_PER_SHARD_MAX).contains(&self.vnodes_per_shard) {
            return invalid(
                "vnodes_per_shard",
                format!("is {}; it must be 1 to {VNODES_PER_SHARD_MAX}", self.vnodes_per_shard),
            );
        }
        let positive = [
            ("connections_max", self.connections_max),
            ("in_flight_max", self.in_flight_max),
            ("outbox_bytes_max", self.outbox_bytes_max),
            ("forward_in_flight_max", self.forward_in_flight_max),
            ("mesh_channel_capacity", self.mesh_channel_capacity),
            ("memtable_bytes_max", self.memtable_bytes_max),
        ];
        for (field, value) in positive {
            if value == 0 {
                return invalid(field, "must be above 0".to_string());
            }
        }
        if self.io_memory_bytes < 64 << 10 {
            return invalid(
                "io_memory_bytes",
                format!("is {}; glommio needs at least 65536", self.io_memory_bytes),
            );
        }
        Ok(())
    }
}

/// Shards run when none are configured: one per available core but one, and at least one. The
/// core left over takes the kernel's network and disk work (a third of the CPU time at peak
/// throughput here) and whatever else runs on the machine. On this 2-core machine with the load
/// generator beside the node, one shard served YCSB C at 551k ops/s with p99 1.4 ms at 150k
/// offered, against 459k and p99 4.7 ms for two (docs/benchmarks.md).
pub fn default_shard_count(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}
/// A seed no client can predict, from the standard library's per-process random hash keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0x7269_6e67_6b76_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_need_no_file() {
        let config = NodeConfig::from_toml("").unwrap();
        assert_eq!(config, NodeConfig::default());
        config.validate().unwrap();
        assert_eq!(config.listen.port(), 7379);
        assert_eq!(config.shard_port(0), 7380);
        assert_eq!(config.shard_port(3), 7383);
        assert_eq!(config.data_dir, PathBuf::from("./ringkv-data"));
        assert!(!config.pin_to_cores, "pinning is for dedicated machines; it is asked for");
    }

    #[test]
    fn one_core_is_left_to_the_kernel_and_other_programs() {
        assert_eq!(default_shard_count(1), 1);
        assert_eq!(default_shard_count(2), 1);
        assert_eq!(default_shard_count(16), 15);
    }

    #[test]
    fn file_values_override_defaults() {
        let config = NodeConfig::from_toml(
            "data_dir = \"/tmp/x\"\nlisten = \"0.0.0.0:9000\"\nshards = 2\nsync = \"periodic:25\"\n\
             shard_port_base = 9100\n",
        )
        .unwrap();
        assert_eq!(config.sync, SyncSetting::Periodic { interval_ms: 25 });
        assert_eq!(config.shard_count(), 2);
        assert_eq!(config.shard_port(1), 9101);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_sync_modes_are_errors() {
        assert!(NodeConfig::from_toml("shardz = 2").is_err());
        assert!(NodeConfig::from_toml("sync = \"sometimes\"").is_err());
        assert!(NodeConfig::from_toml("sync = \"periodic:0\"").is_err());
        assert_eq!("always".parse::<SyncSetting>(), Ok(SyncSetting::Always));
        assert_eq!(SyncSetting::Periodic { interval_ms: 5 }.to_string(), "periodic:5");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let bad = [
            NodeConfig { shards: Some(0), ..NodeConfig::default() },
            NodeConfig { node_id: NODE_ID_MAX + 1, ..NodeConfig::default() },
            NodeConfig { in_flight_max: 0, ..NodeConfig::default() },
            NodeConfig { shard_port_base: Some(65535), shards: Some(2), ..NodeConfig::default() },
            NodeConfig { shard_port_base: Some(7378), shards: Some(2), ..NodeConfig::default() },
            NodeConfig { listen: "127.0.0.1:0".parse().unwrap(), ..NodeConfig::default() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
