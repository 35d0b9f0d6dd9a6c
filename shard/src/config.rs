//! [`NodeConfig`]: everything an operator can set for one node, with defaults that work on one
//! machine with no configuration file at all.
//!
//! The binary reads a TOML file into this (every field optional) and then applies its
//! command-line flags on top.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ringkv_storage::{EngineOptions, SyncMode};
use ringkv_wire::limits::{
    FRAME_BYTES_MAX, FRAME_LENGTH_PREFIX_BYTES, PASSWORD_BYTES_MAX, PEER_FRAME_BYTES_MAX, USER_NAME_BYTES_MAX,
};
pub use ringkv_wire::Consistency;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::auth::{Secret, UserConfig};
use crate::clock::NODE_ID_MAX;
use crate::error::ShardError;
use crate::ring::{SHARDS_MAX, VNODES_PER_SHARD_MAX};

/// Default client port.
pub const CLIENT_PORT_DEFAULT: u16 = 7379;

/// How far above the client port shard 0's peer port is when `peer_listen` is not set: 7379
/// gives 8379.
pub const PEER_PORT_OFFSET: u16 = 1000;

/// Most ring tokens one node may own. More tokens spread load more evenly but make every ring
/// computation and every range repair slower; Cassandra 4.0 settled on 16 by default.
pub const NUM_TOKENS_MAX: usize = 256;

/// Highest replication factor. Seven copies survive three failures with quorums; more only
/// make every write slower.
pub const REPLICATION_FACTOR_MAX: usize = 7;

/// Most seed addresses a node may be given. A handful per data centre is enough to join.
pub const SEEDS_MAX: usize = 64;

/// The least `wal_bytes_max`: below it a shard under writes would flush every few groups.
pub const WAL_BYTES_MIN: u64 = 1 << 20;

// The wire protocol refuses node ids above its own limit: the two must agree.
const _: () = assert!(NODE_ID_MAX == ringkv_wire::limits::NODE_ID_MAX);

/// When a write is acknowledged, as an operator writes it: `always` or `periodic:MS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
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

impl From<SyncSetting> for String {
    fn from(setting: SyncSetting) -> String {
        setting.to_string()
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory holding one sub-directory per shard (`shard-<id>`) and the lock file.
    pub data_dir: PathBuf,
    /// Address of the client port every shard listens on (the kernel spreads connections).
    pub listen: SocketAddr,
    /// Port of shard 0's own port; shard `i` listens on `shard_port_base + i`. Default: the
    /// client port + 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_port_base: Option<u16>,
    /// Number of shards, one executor each. Default: [`default_shard_count`].
    #[serde(skip_serializing_if = "Option::is_none")]
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
    /// Operations executing at once per connection (a batch counts as its operations); more are
    /// answered "overloaded".
    pub in_flight_max: usize,
    /// Encoded replies waiting to be written per connection; above this the connection stops
    /// reading requests until the client reads its replies.
    pub outbox_bytes_max: usize,
    /// Request bytes a shard may hold received and not yet answered, over all its connections
    /// (receive buffers and requests running); past it the shard stops reading from sockets until
    /// some are answered. Default: [`default_request_memory_bytes`] (a quarter of the machine's
    /// memory over the shards).
    pub request_memory_bytes_max: Option<usize>,
    /// A frame (or Redis command, or peer frame) that has started arriving must finish within
    /// this; otherwise the connection (or peer link) is closed, so a client or peer that trickles
    /// bytes cannot hold its buffer.
    pub frame_timeout_ms: u64,
    /// A connection that sends nothing for this long, with nothing in flight, is closed. 0 (the
    /// default) keeps idle connections open.
    pub client_idle_timeout_ms: u64,
    /// Requests a shard may have forwarded to other shards and not yet had answered; more are
    /// answered "overloaded".
    pub forward_in_flight_max: usize,
    /// Capacity of each shard-to-shard channel, in messages.
    pub mesh_channel_capacity: usize,
    /// Memory each executor registers with io_uring for DMA buffers.
    pub io_memory_bytes: usize,
    /// The share of each shard's time, in percent (1–100), that flushes and compactions may use
    /// while nothing waits for them; 100 lets them use every moment the shard does not serve.
    /// They run at full speed regardless once writers could stall (the next memtable fills more
    /// than half as fast as the flush goes) or the tables pile up. See
    /// `ringkv_io::executor::Pacer`.
    pub background_share_percent: u32,
    /// A shard's memtable is flushed to an SSTable past this size.
    pub memtable_bytes_max: usize,
    /// A shard's memtable is also flushed once it stands for this many bytes of its
    /// write-ahead log, so that the log's older segments can be removed: overwrites of keys
    /// already in the memtable do not grow it, and the log (and the replay after a restart)
    /// would otherwise grow without end. A shard's log stays below about twice this plus one
    /// 128 MiB segment.
    pub wal_bytes_max: u64,
    /// Bytes of SSTable blocks each shard caches. Default: [`default_block_cache_bytes`] (a
    /// quarter of the machine's memory over the shards).
    pub block_cache_bytes: Option<usize>,
    /// Bytes of the row cache each shard keeps in front of its tables: the entries of single
    /// keys that reads found there (see `ringkv_storage::row_cache`). 0, the default, turns it
    /// off; it pays when the hot keys' blocks do not fit the block cache.
    pub row_cache_bytes: usize,
    /// How long a stopping shard waits for its connections to finish their requests and write
    /// their replies before it closes them.
    pub shutdown_grace_ms: u64,
    /// Address of shard 0's peer port, where other nodes' shards connect to replicate and
    /// membership datagrams arrive; shard `i` listens on this port + `i`. Default: the client
    /// address's IP with the client port + [`PEER_PORT_OFFSET`] (see [`NodeConfig::peer_address`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_listen: Option<SocketAddr>,
    /// Peer addresses (another node's `peer_listen`) contacted at start-up to join the cluster.
    /// Empty: the node starts a cluster of its own. Listing the node itself is harmless, so
    /// every node of a cluster can share one list.
    pub seeds: Vec<SocketAddr>,
    /// Tokens this node owns on the cluster's ring (1 to [`NUM_TOKENS_MAX`]).
    pub num_tokens: usize,
    /// Copies of every key, on distinct nodes (1 to [`REPLICATION_FACTOR_MAX`]).
    pub replication_factor: usize,
    /// Replicas that must acknowledge a write before the client is answered.
    #[serde(deserialize_with = "from_str", serialize_with = "to_str")]
    pub write_consistency: Consistency,
    /// Replicas that must answer a read before the client is answered.
    #[serde(deserialize_with = "from_str", serialize_with = "to_str")]
    pub read_consistency: Consistency,
    /// How far ahead of this node's clock a version from another node may be; a write stamped
    /// further in the future is refused, so one node with a runaway clock cannot make its
    /// writes win every conflict.
    pub max_clock_skew_ms: u64,
    /// How long a coordinator waits for enough replicas to answer before it answers the client
    /// with a timeout.
    pub replica_timeout_ms: u64,
    /// Replica requests a shard may have sent as coordinator and not yet had answered; more are
    /// answered "overloaded".
    pub peer_pending_max: usize,
    /// Encoded messages waiting to be written on one peer link, in bytes; above this the link
    /// refuses new messages until it drains. At least one maximal frame.
    pub peer_outbox_bytes_max: usize,
    /// Address every shard serves the Redis protocol (RESP2 and RESP3) on, with SO_REUSEPORT
    /// like the client port. Off when `None` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp_listen: Option<SocketAddr>,
    /// Address the node serves Prometheus metrics on, at `/metrics` (one endpoint for every
    /// shard, each shard's series labelled with it). Off when `None` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// The bearer token scrapes of `metrics_listen` must present (`Authorization: Bearer
    /// <token>`); without one (and without `metrics_token_file`) the port is open to anyone who
    /// reaches it. Never printed.
    #[serde(skip_serializing)]
    pub metrics_token: Option<Secret>,
    /// A file holding the metrics bearer token instead (trailing white space ignored), so that
    /// the token is neither on the command line nor in the configuration file. The metrics port
    /// reads it again whenever it changes, so the token rotates without a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token_file: Option<PathBuf>,
    /// Bytes of hints a shard keeps for all replicas together (hinted handoff); past it new
    /// hints are dropped and counted, and anti-entropy repairs what they held. 0 turns hints off.
    pub hints_bytes_max: u64,
    /// Bytes of hints a shard keeps for one replica.
    pub hints_destination_bytes_max: u64,
    /// No hints are kept for a replica down longer than this (counted from the outage's start,
    /// across restarts of the node keeping them).
    pub max_hint_window_ms: u64,
    /// Hint replay rate per shard, bytes per second.
    pub hints_replay_bytes_per_s: u64,
    /// How often each shard compares its anti-entropy trees with the other replicas.
    pub anti_entropy_interval_ms: u64,
    /// Anti-entropy repair traffic per shard, bytes per second.
    pub anti_entropy_bytes_per_s: u64,
    /// How often the anti-entropy trees are rebuilt from a scan (catching data lost on disk).
    pub tree_rebuild_interval_ms: u64,
    /// How long a tombstone is kept at least; it is purged after this only once its range was
    /// repaired since the delete. Must cover the hint window and the anti-entropy interval.
    pub tombstone_grace_ms: u64,
    /// Start even when SSTables the manifest lists are missing (their data is lost on this
    /// node; anti-entropy restores it from the other replicas, and until then the shard answers
    /// no read as a replica). Off: the node refuses to start.
    pub allow_missing_tables: bool,
    /// This node joins a cluster that already holds data. On the first start in its data
    /// directory each shard starts rebuilding, as one that lost its data does: it takes writes
    /// but answers no replica read of a range until anti-entropy has compared that range with
    /// every other replica and pulled what it lacks (a repair-based bootstrap, as ScyllaDB's).
    /// Without it a new node's empty copy could complete a read quorum that misses an
    /// acknowledged write. Needs `seeds`. On later starts it changes nothing: a rebuild not
    /// finished stays in force across restarts by itself.
    pub join: bool,
    /// Start even when the WAL's last record fails its checksum though it was written whole
    /// (bit rot, not a torn write), dropping it with an error logged: acknowledged writes in it
    /// are lost on this node. Off: the node refuses to start.
    pub accept_wal_tail_loss: bool,
    /// Free bytes kept on the data directory's filesystem for flushes and compactions: at or
    /// below it every shard refuses writes with `DiskFull` (reads go on) until space is freed.
    /// 0 turns the check off.
    pub disk_reserve_bytes: u64,
    /// Users clients authenticate as (`[[users]]` tables with `name` and `password`). With any,
    /// every client connection (native, shard ports and Redis) must authenticate before it is
    /// served. Never printed.
    #[serde(skip_serializing)]
    pub users: Vec<UserConfig>,
    /// The secret every node of the cluster shares: peers prove they know it (HMAC-SHA256 over
    /// nonces, so it never crosses the wire) before a peer link is used, and membership datagrams
    /// carry a tag made with it. Never printed.
    #[serde(skip_serializing)]
    pub cluster_secret: Option<Secret>,
    /// Listen on addresses other than loopback without client authentication (or, for the
    /// peer port, without a cluster secret), with a warning. Off: such a node refuses to start.
    pub allow_unauthenticated: bool,
    /// The node's certificate chain (PEM). Set with `tls_key_file` and `tls_ca_file`, it turns
    /// TLS on for every port: client, shard, RESP and peer (see the `tls` module).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the nodes' certificates: peers present their node
    /// certificate and verify each other's against these (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// CA certificates (PEM) for client certificates: when set, clients on the client ports must
    /// present a certificate signed by one of them. Off by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<PathBuf>,
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
            request_memory_bytes_max: None,
            frame_timeout_ms: 10_000,
            client_idle_timeout_ms: 0,
            forward_in_flight_max: 4096,
            mesh_channel_capacity: 1024,
            io_memory_bytes: 1 << 20,
            background_share_percent: ringkv_io::executor::BACKGROUND_SHARE_PERCENT_DEFAULT,
            memtable_bytes_max: 64 << 20,
            wal_bytes_max: 256 << 20,
            block_cache_bytes: None,
            row_cache_bytes: 0,
            shutdown_grace_ms: 10_000,
            peer_listen: None,
            seeds: Vec::new(),
            num_tokens: 16,
            replication_factor: 3,
            write_consistency: Consistency::Quorum,
            read_consistency: Consistency::Quorum,
            max_clock_skew_ms: 500,
            replica_timeout_ms: 2_000,
            peer_pending_max: 4096,
            peer_outbox_bytes_max: 4 << 20,
            resp_listen: None,
            metrics_listen: None,
            metrics_token: None,
            metrics_token_file: None,
            hints_bytes_max: 256 << 20,
            hints_destination_bytes_max: 64 << 20,
            max_hint_window_ms: 3 * 3_600_000,
            hints_replay_bytes_per_s: 8 << 20,
            anti_entropy_interval_ms: 10 * 60_000,
            anti_entropy_bytes_per_s: 8 << 20,
            tree_rebuild_interval_ms: 6 * 3_600_000,
            tombstone_grace_ms: 10 * 24 * 3_600_000,
            allow_missing_tables: false,
            join: false,
            accept_wal_tail_loss: false,
            disk_reserve_bytes: 512 << 20,
            users: Vec::new(),
            cluster_secret: None,
            allow_unauthenticated: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            tls_client_ca_file: None,
        }
    }
}

/// Deserializes through `FromStr`, for types whose text form is their `FromStr`/`Display`.
fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// Serializes through `Display`, the inverse of [`from_str`].
fn to_str<S: Serializer, T: fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

impl NodeConfig {
    /// The same configuration with every default that depends on other settings or on the
    /// machine written out: the shard count, the first shard port, shard 0's peer address, the
    /// request memory budget and the block cache.
    pub fn effective(&self) -> NodeConfig {
        NodeConfig {
            shards: Some(self.shard_count()),
            shard_port_base: Some(self.shard_port(0)),
            peer_listen: Some(self.peer_address(0)),
            request_memory_bytes_max: Some(self.request_memory_bytes()),
            block_cache_bytes: Some(self.block_cache_bytes()),
            ..self.clone()
        }
    }

    /// The configuration as a TOML document that [`NodeConfig::from_toml`] reads back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every setting has a TOML form")
    }

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

    /// The peer address of shard 0: `peer_listen`, or the client IP with the client port +
    /// [`PEER_PORT_OFFSET`].
    fn peer_listen_or_default(&self) -> SocketAddr {
        self.peer_listen.unwrap_or_else(|| {
            SocketAddr::new(self.listen.ip(), self.listen.port().wrapping_add(PEER_PORT_OFFSET))
        })
    }

    /// The address shard `shard_id` listens on for other nodes: shard 0's peer address with
    /// the port + `shard_id`.
    pub fn peer_address(&self, shard_id: u32) -> SocketAddr {
        let base = self.peer_listen_or_default();
        SocketAddr::new(base.ip(), base.port().wrapping_add(shard_id as u16))
    }

    /// Each shard's budget of request bytes: `request_memory_bytes_max`, or
    /// [`default_request_memory_bytes`].
    pub fn request_memory_bytes(&self) -> usize {
        self.request_memory_bytes_max.unwrap_or_else(|| default_request_memory_bytes(self.shard_count()))
    }

    /// Each shard's block cache: `block_cache_bytes`, or [`default_block_cache_bytes`].
    pub fn block_cache_bytes(&self) -> usize {
        self.block_cache_bytes.unwrap_or_else(|| default_block_cache_bytes(self.shard_count()))
    }

    /// The storage engine options for each shard.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            sync: self.sync.into(),
            memtable_bytes_max: self.memtable_bytes_max,
            wal_bytes_max: self.wal_bytes_max,
            block_cache_bytes: self.block_cache_bytes(),
            row_cache_bytes: self.row_cache_bytes,
            memtable_hash_seed: random_seed(),
            tombstone_grace_ms: self.tombstone_grace_ms,
            missing_tables_allowed: self.allow_missing_tables,
            wal_rotten_tail_accepted: self.accept_wal_tail_loss,
            disk_reserve_bytes: self.disk_reserve_bytes,
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
        self.validate_peer_ports(shards, base)?;
        if let Some(resp_listen) = self.resp_listen {
            let resp_port = u32::from(resp_listen.port());
            if resp_port == 0 || resp_port == client_port || (base..base + shards as u32).contains(&resp_port)
            {
                return invalid(
                    "resp_listen",
                    format!("{resp_listen} needs a port of its own: not 0, the client port or a shard port"),
                );
            }
        }
        if let Some(metrics_listen) = self.metrics_listen {
            let port = u32::from(metrics_listen.port());
            let peer_base = u32::from(self.peer_address(0).port());
            let taken = port == 0
                || port == client_port
                || (base..base + shards as u32).contains(&port)
                || (peer_base..peer_base + shards as u32).contains(&port)
                || self.resp_listen.is_some_and(|resp| u32::from(resp.port()) == port);
            if taken {
                return invalid(
                    "metrics_listen",
                    format!(
                        "{metrics_listen} needs a port of its own: not 0, the client port, a shard or peer \
                         port, or the Redis port"
                    ),
                );
            }
        }
        if self.join && self.seeds.is_empty() {
            return invalid(
                "join",
                "needs seeds: a node joins a cluster through members it can reach".to_string(),
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
        if !(1..=NUM_TOKENS_MAX).contains(&self.num_tokens) {
            return invalid(
                "num_tokens",
                format!("is {}; it must be 1 to {NUM_TOKENS_MAX}", self.num_tokens),
            );
        }
        if !(1..=REPLICATION_FACTOR_MAX).contains(&self.replication_factor) {
            return invalid(
                "replication_factor",
                format!("is {}; it must be 1 to {REPLICATION_FACTOR_MAX}", self.replication_factor),
            );
        }
        if self.seeds.len() > SEEDS_MAX {
            return invalid("seeds", format!("lists {}; at most {SEEDS_MAX} are accepted", self.seeds.len()));
        }
        if let Some(seed) = self.seeds.iter().find(|seed| seed.port() == 0) {
            return invalid("seeds", format!("{seed} needs a port other than 0"));
        }
        let peer_frame_bytes = FRAME_LENGTH_PREFIX_BYTES + PEER_FRAME_BYTES_MAX;
        if self.peer_outbox_bytes_max < peer_frame_bytes {
            return invalid(
                "peer_outbox_bytes_max",
                format!(
                    "is {}; it must hold at least one maximal peer frame, {peer_frame_bytes} bytes",
                    self.peer_outbox_bytes_max
                ),
            );
        }
        // A tombstone purged before a replica that missed its delete could hear of it lets the
        // value come back: the grace must outlast both ways a replica hears of a delete late.
        for (field, value) in [
            ("max_hint_window_ms", self.max_hint_window_ms),
            ("anti_entropy_interval_ms", self.anti_entropy_interval_ms),
        ] {
            if self.tombstone_grace_ms < value {
                return invalid(
                    "tombstone_grace_ms",
                    format!("is {}; it must be at least {field} ({value})", self.tombstone_grace_ms),
                );
            }
        }
        if self.wal_bytes_max < WAL_BYTES_MIN {
            return invalid(
                "wal_bytes_max",
                format!(
                    "is {}; it must be at least {WAL_BYTES_MIN} (a flush per few writes otherwise)",
                    self.wal_bytes_max
                ),
            );
        }
        if let Some(bytes) = self.request_memory_bytes_max {
            if bytes < REQUEST_MEMORY_BYTES_MIN {
                return invalid(
                    "request_memory_bytes_max",
                    format!("is {bytes}; it must hold two maximal frames, {REQUEST_MEMORY_BYTES_MIN} bytes"),
                );
            }
        }
        for (field, value) in [
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("max_clock_skew_ms", self.max_clock_skew_ms),
            ("replica_timeout_ms", self.replica_timeout_ms),
            ("anti_entropy_interval_ms", self.anti_entropy_interval_ms),
            ("anti_entropy_bytes_per_s", self.anti_entropy_bytes_per_s),
            ("hints_replay_bytes_per_s", self.hints_replay_bytes_per_s),
            ("tree_rebuild_interval_ms", self.tree_rebuild_interval_ms),
        ] {
            if value == 0 {
                return invalid(field, "must be above 0".to_string());
            }
        }
        let positive = [
            ("peer_pending_max", self.peer_pending_max),
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
        self.validate_auth()?;
        self.metrics_token()?;
        if !(1..=100).contains(&self.background_share_percent) {
            return invalid(
                "background_share_percent",
                format!("is {}; it is a percentage of the core, 1 to 100", self.background_share_percent),
            );
        }
        if self.io_memory_bytes < 64 << 10 {
            return invalid(
                "io_memory_bytes",
                format!("is {}; glommio needs at least 65536", self.io_memory_bytes),
            );
        }
        crate::tls::TlsSettings::load(self)?;
        Ok(())
    }

    /// Checks the users and the cluster secret, and that nothing listens beyond loopback
    /// without them unless `allow_unauthenticated` says so.
    fn validate_auth(&self) -> Result<(), ShardError> {
        let invalid = |field: &'static str, reason: String| Err(ShardError::ConfigValue { field, reason });
        for (index, user) in self.users.iter().enumerate() {
            if user.name.is_empty() || user.name.len() > USER_NAME_BYTES_MAX {
                return invalid(
                    "users",
                    format!("user {index} needs a name of 1 to {USER_NAME_BYTES_MAX} bytes"),
                );
            }
            if user.password.is_empty() || user.password.expose().len() > PASSWORD_BYTES_MAX {
                return invalid(
                    "users",
                    format!("user {:?} needs a password of 1 to {PASSWORD_BYTES_MAX} bytes", user.name),
                );
            }
            if self.users[..index].iter().any(|other| other.name == user.name) {
                return invalid("users", format!("user {:?} is listed twice", user.name));
            }
        }
        if let Some(secret) = &self.cluster_secret {
            if secret.expose().len() < CLUSTER_SECRET_BYTES_MIN {
                return invalid(
                    "cluster_secret",
                    format!("must be at least {CLUSTER_SECRET_BYTES_MIN} bytes (use a long random string)"),
                );
            }
        }
        let exposed = self.unauthenticated_exposure();
        if !exposed.is_empty() && !self.allow_unauthenticated {
            return invalid(
                "allow_unauthenticated",
                format!(
                    "{} beyond loopback without authentication; configure [[users]] and cluster_secret, or \
                     set allow_unauthenticated (--allow-unauthenticated) to accept the risk",
                    exposed.join(", ")
                ),
            );
        }
        Ok(())
    }

    /// The metrics bearer token: `metrics_token`, or what `metrics_token_file` holds less its
    /// trailing white space; `None` when neither is set. The file is read at every call, so
    /// `--check-config` finds a file that is missing, unreadable or empty.
    pub fn metrics_token(&self) -> Result<Option<Secret>, ShardError> {
        match (&self.metrics_token, &self.metrics_token_file) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ShardError::ConfigValue {
                field: "metrics_token",
                reason: "and metrics_token_file are both set; keep one".to_string(),
            }),
            (Some(token), None) => check_metrics_token(token.clone(), "metrics_token", "is").map(Some),
            (None, Some(path)) => read_metrics_token_file(path).map(Some),
        }
    }

    /// The listen addresses other than loopback that would accept connections without
    /// authentication, each named for the operator: client, shard and Redis ports without users,
    /// peer ports without a cluster secret. Empty when the node is safe to expose.
    pub fn unauthenticated_exposure(&self) -> Vec<String> {
        let mut exposed = Vec::new();
        let beyond_loopback = |address: SocketAddr| !address.ip().is_loopback();
        if self.users.is_empty() {
            if beyond_loopback(self.listen) {
                exposed.push(format!("the client and shard ports listen on {}", self.listen.ip()));
            }
            if let Some(resp) = self.resp_listen.filter(|&resp| beyond_loopback(resp)) {
                exposed.push(format!("the Redis port listens on {resp}"));
            }
        }
        if self.cluster_secret.is_none() && beyond_loopback(self.peer_listen_or_default()) {
            exposed.push(format!(
                "the peer ports listen on {} (no cluster_secret)",
                self.peer_listen_or_default().ip()
            ));
        }
        exposed
    }

    /// Checks that every shard's peer port exists and collides with no client or shard port
    /// on the same address. `shard_port_base` is the first shard port, already checked.
    fn validate_peer_ports(&self, shards: usize, shard_port_base: u32) -> Result<(), ShardError> {
        let invalid = |reason: String| Err(ShardError::ConfigValue { field: "peer_listen", reason });
        let peer = self.peer_listen_or_default();
        let peer_base = match self.peer_listen {
            Some(peer) => u32::from(peer.port()),
            None => u32::from(self.listen.port()) + u32::from(PEER_PORT_OFFSET),
        };
        if peer_base == 0 {
            return invalid("needs a port other than 0: other nodes must know it".to_string());
        }
        let peer_ports = peer_base..peer_base + shards as u32;
        if peer_ports.end - 1 > u32::from(u16::MAX) {
            let origin = match self.peer_listen {
                Some(_) => String::new(),
                None => format!(" (the client port + {PEER_PORT_OFFSET})"),
            };
            return invalid(format!(
                "port {peer_base}{origin} leaves no room for {shards} peer ports below 65536; set \
                 peer_listen"
            ));
        }
        // Ports on different addresses do not collide, unless one of them is the wildcard.
        let shares_address =
            |ip: IpAddr| ip == peer.ip() || ip.is_unspecified() || peer.ip().is_unspecified();
        if !shares_address(self.listen.ip()) {
            return Ok(());
        }
        let client_port = u32::from(self.listen.port());
        if peer_ports.contains(&client_port) {
            return invalid(format!("port {peer_base}: a peer port would be the client port {client_port}"));
        }
        let shard_ports = shard_port_base..shard_port_base + shards as u32;
        if peer_ports.start < shard_ports.end && shard_ports.start < peer_ports.end {
            return invalid(format!(
                "peer ports {peer_base} to {} overlap the shard ports {shard_port_base} to {}",
                peer_ports.end - 1,
                shard_ports.end - 1
            ));
        }
        Ok(())
    }
}

/// The shortest cluster secret accepted: 16 bytes, so that it cannot be guessed offline from a
/// recorded handshake in any useful time if it is random.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

/// The shortest metrics bearer token accepted, as for the cluster secret.
pub const METRICS_TOKEN_BYTES_MIN: usize = 16;

/// The longest metrics bearer token accepted: it must fit a request head with room to spare
/// (see `metrics::http::REQUEST_BYTES_MAX`).
pub const METRICS_TOKEN_BYTES_MAX: usize = 1024;

/// Shards run when none are configured: one per available core but one, and at least one. The
/// core left over takes the kernel's network and disk work (a third of the CPU time at peak
/// throughput here) and whatever else runs on the machine. On this 2-core machine with the load
/// generator beside the node, one shard served YCSB C at 551k ops/s with p99 1.4 ms at 150k
/// offered, against 459k and p99 4.7 ms for two (docs/benchmarks.md).
pub fn default_shard_count(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}
/// The smallest `request_memory_bytes_max`: two maximal frames, so that a connection finishing
/// a large frame never waits for room that only its own frame could free.
pub const REQUEST_MEMORY_BYTES_MIN: usize = 2 * (FRAME_LENGTH_PREFIX_BYTES + FRAME_BYTES_MAX);

/// Each shard's default budget of request bytes: a quarter of the machine's memory, shared by the
/// shards (and never below [`REQUEST_MEMORY_BYTES_MIN`]).
pub fn default_request_memory_bytes(shards: usize) -> usize {
    quarter_of_memory_per_shard(shards).max(REQUEST_MEMORY_BYTES_MIN)
}

/// The smallest default block cache, whatever the machine's memory.
pub const BLOCK_CACHE_BYTES_DEFAULT_MIN: usize = 64 << 20;

/// Each shard's default block cache: a quarter of the machine's memory, shared by the shards (and
/// never below [`BLOCK_CACHE_BYTES_DEFAULT_MIN`]). Tables are read past the kernel's page cache,
/// so this cache is all that keeps a data set's blocks in memory; it takes memory only as blocks
/// fill it.
pub fn default_block_cache_bytes(shards: usize) -> usize {
    quarter_of_memory_per_shard(shards).max(BLOCK_CACHE_BYTES_DEFAULT_MIN)
}

/// A quarter of [`machine_memory_bytes`] over `shards`.
fn quarter_of_memory_per_shard(shards: usize) -> usize {
    let per_shard = machine_memory_bytes() / 4 / shards.max(1) as u64;
    usize::try_from(per_shard).unwrap_or(usize::MAX)
}

/// The memory this process may use: the machine's, or its control group's limit when lower (a
/// container's, say). 1 GiB is assumed when the machine does not say. Read once per process:
/// every shard's defaults ask for it.
pub fn machine_memory_bytes() -> u64 {
    static MEMORY_BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MEMORY_BYTES.get_or_init(read_machine_memory_bytes)
}

/// [`machine_memory_bytes`], read from the system.
fn read_machine_memory_bytes() -> u64 {
    // SAFETY: sysconf only reads system parameters.
    let (pages, page_bytes) =
        unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let physical =
        if pages > 0 && page_bytes > 0 { (pages as u64).saturating_mul(page_bytes as u64) } else { 1 << 30 };
    let limit = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|membership| {
        cgroup_memory_limit(&membership, |path| {
            std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(path)).ok()
        })
    });
    limit.map_or(physical, |limit| limit.min(physical))
}

/// The lowest memory limit on the control group `membership` (the text of `/proc/self/cgroup`)
/// names and on its ancestors, reading each limit file through `read` (given a path under the
/// cgroup root). cgroup v2 (`0::/path`, its `memory.max`) and v1 (the `memory` controller's
/// `memory.limit_in_bytes`); `None` when no limit is set or none can be read.
fn cgroup_memory_limit(membership: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut lowest: Option<u64> = None;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (root, file) = if controllers.is_empty() {
            ("", "memory.max")
        } else if controllers.split(',').any(|controller| controller == "memory") {
            ("memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        // The group and each ancestor up to the root: a limit on a parent binds its children.
        let mut group = path.trim_end_matches('/');
        loop {
            let file_path = format!("{root}{group}/{file}");
            // "max" (v2) is no limit; v1 says so with a number near the top of the range.
            let limit = read(file_path.trim_start_matches('/'))
                .and_then(|text| text.trim().parse::<u64>().ok())
                .filter(|&limit| limit < 1 << 60);
            if let Some(limit) = limit {
                lowest = Some(lowest.map_or(limit, |lowest| lowest.min(limit)));
            }
            match group.rfind('/') {
                Some(parent) => group = &group[..parent],
                None => break,
            }
        }
    }
    lowest
}

/// A seed no client can predict, from the standard library's per-process random hash keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0x7269_6e67_6b76_u64)
}

/// The metrics bearer token a file holds, less its trailing white space, checked as
/// `metrics_token` is. The metrics port reads it again whenever the file changes.
pub fn read_metrics_token_file(path: &Path) -> Result<Secret, ShardError> {
    let text = std::fs::read_to_string(path).map_err(|error| ShardError::ConfigValue {
        field: "metrics_token_file",
        reason: format!("{}: {error}", path.display()),
    })?;
    check_metrics_token(
        Secret::new(text.trim_end()),
        "metrics_token_file",
        &format!("{} holds", path.display()),
    )
}

/// `token` if it can be a bearer token: its length within bounds, printable ASCII without
/// spaces. `source` says where it came from in the error ("is", or "FILE holds").
fn check_metrics_token(token: Secret, field: &'static str, source: &str) -> Result<Secret, ShardError> {
    let length = token.expose().len();
    if !(METRICS_TOKEN_BYTES_MIN..=METRICS_TOKEN_BYTES_MAX).contains(&length) {
        return Err(ShardError::ConfigValue {
            field,
            reason: format!(
                "{source} a token of {length} bytes; it must be {METRICS_TOKEN_BYTES_MIN} to \
                 {METRICS_TOKEN_BYTES_MAX} (use a long random string)"
            ),
        });
    }
    // What an HTTP header carries as it is: no spaces, no control characters.
    if !token.expose().iter().all(|byte| (0x21..=0x7e).contains(byte)) {
        return Err(ShardError::ConfigValue {
            field,
            reason: "must be printable ASCII without spaces (as `openssl rand -base64 32` makes)".to_string(),
        });
    }
    Ok(token)
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
    fn the_block_cache_takes_a_quarter_of_memory_over_the_shards_unless_set() {
        let memory = machine_memory_bytes();
        let one = NodeConfig { shards: Some(1), ..NodeConfig::default() };
        let four = NodeConfig { shards: Some(4), ..NodeConfig::default() };
        assert_eq!(one.block_cache_bytes() as u64, (memory / 4).max(BLOCK_CACHE_BYTES_DEFAULT_MIN as u64));
        assert_eq!(four.block_cache_bytes() as u64, (memory / 16).max(BLOCK_CACHE_BYTES_DEFAULT_MIN as u64));
        assert_eq!(four.engine_options().block_cache_bytes, four.block_cache_bytes());
        let set = NodeConfig { block_cache_bytes: Some(1 << 20), ..four };
        assert_eq!(set.engine_options().block_cache_bytes, 1 << 20);
        // What a running node uses is what it reports.
        assert_eq!(one.effective().block_cache_bytes, Some(one.block_cache_bytes()));
        assert_eq!(set.effective().block_cache_bytes, Some(1 << 20));
    }

    #[test]
    fn a_control_groups_memory_limit_bounds_the_memory_defaults() {
        let files = |entries: &'static [(&'static str, &'static str)]| {
            move |path: &str| entries.iter().find(|(name, _)| *name == path).map(|(_, text)| text.to_string())
        };
        // cgroup v2: the lowest limit of the group and its ancestors; "max" is none.
        let v2 = files(&[
            ("system.slice/db.service/memory.max", "max\n"),
            ("system.slice/memory.max", "8589934592\n"),
        ]);
        assert_eq!(cgroup_memory_limit("0::/system.slice/db.service\n", v2), Some(8 << 30));
        assert_eq!(cgroup_memory_limit("0::/\n", v2), None, "the root has no limit");
        let tighter = files(&[("a/b/memory.max", "1073741824"), ("a/memory.max", "4294967296")]);
        assert_eq!(cgroup_memory_limit("0::/a/b", tighter), Some(1 << 30));
        // cgroup v1: the memory controller's line; an unlimited group reads near 2^63.
        let v1 = files(&[
            ("memory/docker/abc/memory.limit_in_bytes", "2147483648"),
            ("memory/docker/memory.limit_in_bytes", "9223372036854771712"),
        ]);
        let membership = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n0::/\n";
        assert_eq!(cgroup_memory_limit(membership, v1), Some(2 << 30));
        assert_eq!(cgroup_memory_limit("11:memory:/docker\n", v1), None);
        // Unreadable or malformed: no limit.
        assert_eq!(cgroup_memory_limit("garbage", v2), None);
        assert_eq!(cgroup_memory_limit("0::/system.slice/db.service", files(&[])), None);
        assert!(machine_memory_bytes() > 0);
    }

    #[test]
    fn the_effective_settings_read_back_as_they_are() {
        let config = NodeConfig {
            seeds: vec!["10.0.0.1:8379".parse().unwrap()],
            sync: SyncSetting::Periodic { interval_ms: 7 },
            read_consistency: Consistency::One,
            metrics_listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..NodeConfig::default()
        }
        .effective();
        let text = config.to_toml();
        assert!(text.contains("sync = \"periodic:7\""), "{text}");
        assert!(text.contains("read_consistency = \"one\""), "{text}");
        assert!(text.contains("shard_port_base = 7380"), "{text}");
        assert!(!text.contains("resp_listen"), "an unset address is left out: {text}");
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), config);
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
             shard_port_base = 9100\nallow_unauthenticated = true\n",
        )
        .unwrap();
        assert_eq!(config.sync, SyncSetting::Periodic { interval_ms: 25 });
        assert_eq!(config.shard_count(), 2);
        assert_eq!(config.shard_port(1), 9101);
        config.validate().unwrap();
    }

    #[test]
    fn the_log_bound_comes_from_the_file_and_reaches_the_engine() {
        let config = NodeConfig::from_toml("wal_bytes_max = 67108864\n").unwrap();
        assert_eq!(config.engine_options().wal_bytes_max, 64 << 20);
        config.validate().unwrap();
        assert_eq!(NodeConfig::default().engine_options().wal_bytes_max, 256 << 20);
        let tiny = NodeConfig::from_toml("wal_bytes_max = 4096\n").unwrap();
        assert!(tiny.validate().unwrap_err().to_string().contains("wal_bytes_max"));
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
    fn cluster_defaults_need_no_file() {
        let config = NodeConfig::default();
        assert_eq!(config.peer_listen, None);
        assert_eq!(config.peer_address(0), "127.0.0.1:8379".parse().unwrap());
        assert_eq!(config.peer_address(3), "127.0.0.1:8382".parse().unwrap());
        assert!(config.seeds.is_empty(), "a node with no seeds starts a cluster of its own");
        assert_eq!(config.num_tokens, 16);
        assert_eq!(config.replication_factor, 3);
        assert_eq!(config.write_consistency, Consistency::Quorum);
        assert_eq!(config.read_consistency, Consistency::Quorum);
        assert_eq!(config.max_clock_skew_ms, 500);
        assert_eq!(config.replica_timeout_ms, 2_000);
        assert_eq!(config.peer_pending_max, 4096);
        assert_eq!(config.peer_outbox_bytes_max, 4 << 20);
    }

    #[test]
    fn default_peer_port_follows_the_client_address() {
        let config = NodeConfig {
            listen: "10.1.2.3:9000".parse().unwrap(),
            allow_unauthenticated: true,
            ..NodeConfig::default()
        };
        assert_eq!(config.peer_address(1), "10.1.2.3:10001".parse().unwrap());
        config.validate().unwrap();
    }

    #[test]
    fn users_and_the_cluster_secret_come_from_the_file_and_are_never_printed() {
        let config = NodeConfig::from_toml(
            "listen = \"0.0.0.0:9000\"\ncluster_secret = \"0123456789abcdef-cluster\"\n\
             [[users]]\nname = \"default\"\npassword = \"first password\"\n\
             [[users]]\nname = \"app\"\npassword = \"second password\"\n",
        )
        .unwrap();
        assert_eq!(config.users.len(), 2);
        assert_eq!(config.users[1].name, "app");
        assert_eq!(config.users[1].password.expose(), b"second password");
        assert_eq!(
            config.cluster_secret.as_ref().map(Secret::expose),
            Some(&b"0123456789abcdef-cluster"[..])
        );
        assert!(config.unauthenticated_exposure().is_empty());
        config.validate().unwrap();
        let printed = format!("{}{config:?}", config.effective().to_toml());
        for secret in ["first password", "second password", "0123456789abcdef-cluster"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn listening_beyond_loopback_needs_authentication_or_the_override() {
        let exposed = NodeConfig {
            listen: "0.0.0.0:9000".parse().unwrap(),
            resp_listen: Some("0.0.0.0:6379".parse().unwrap()),
            ..NodeConfig::default()
        };
        assert_eq!(exposed.unauthenticated_exposure().len(), 3, "client, Redis and peer ports");
        match exposed.validate() {
            Err(ShardError::ConfigValue { field: "allow_unauthenticated", .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        NodeConfig { allow_unauthenticated: true, ..exposed.clone() }.validate().unwrap();
        let users = vec![UserConfig { name: "default".into(), password: Secret::new("p") }];
        let clients_only = NodeConfig { users: users.clone(), ..exposed.clone() };
        assert_eq!(clients_only.unauthenticated_exposure().len(), 1, "the peer ports still are");
        assert!(clients_only.validate().is_err());
        let both =
            NodeConfig { users, cluster_secret: Some(Secret::new("0123456789abcdef")), ..exposed.clone() };
        both.validate().unwrap();
        // Only the peer port beyond loopback: the cluster secret alone is enough.
        let peers_only = NodeConfig {
            peer_listen: Some("10.0.0.1:8379".parse().unwrap()),
            cluster_secret: Some(Secret::new("0123456789abcdef")),
            ..NodeConfig::default()
        };
        peers_only.validate().unwrap();
        NodeConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_users_and_short_cluster_secrets_are_refused() {
        let user =
            |name: &str, password: &str| UserConfig { name: name.into(), password: Secret::new(password) };
        for users in [vec![user("", "p")], vec![user("a", "")], vec![user("a", "p"), user("a", "q")]] {
            let config = NodeConfig { users, ..NodeConfig::default() };
            assert!(matches!(config.validate(), Err(ShardError::ConfigValue { field: "users", .. })));
        }
        let short = NodeConfig { cluster_secret: Some(Secret::new("short")), ..NodeConfig::default() };
        assert!(matches!(short.validate(), Err(ShardError::ConfigValue { field: "cluster_secret", .. })));
    }

    #[test]
    fn the_metrics_token_comes_from_the_file_or_a_file_of_its_own_and_is_never_printed() {
        let inline = NodeConfig::from_toml("metrics_token = \"inline-token-0123456789\"\n").unwrap();
        assert_eq!(
            inline.metrics_token().unwrap().as_ref().map(Secret::expose),
            Some(&b"inline-token-0123456789"[..])
        );
        let printed = format!("{}{inline:?}", inline.effective().to_toml());
        assert!(!printed.contains("inline-token-0123456789"), "{printed}");

        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("metrics-token");
        let from_file = NodeConfig { metrics_token_file: Some(file.clone()), ..NodeConfig::default() };
        let refusal = |config: &NodeConfig| match config.validate() {
            Err(ShardError::ConfigValue { field, reason }) => format!("{field} {reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refusal(&from_file).contains("metrics_token_file"), "a missing file is named");
        for (contents, why) in [
            ("", "empty"),
            ("\n", "only white space"),
            ("short\n", "too short"),
            ("has a space in it 0123456789\n", "a space"),
        ] {
            std::fs::write(&file, contents).unwrap();
            assert!(refusal(&from_file).starts_with("metrics_token_file "), "{why}");
        }
        std::fs::write(&file, "file-token-0123456789\n").unwrap();
        from_file.validate().unwrap();
        assert_eq!(
            from_file.metrics_token().unwrap().as_ref().map(Secret::expose),
            Some(&b"file-token-0123456789"[..]),
            "the trailing newline is not part of the token"
        );
        assert!(from_file.effective().to_toml().contains("metrics_token_file"));
        let both = NodeConfig { metrics_token: inline.metrics_token.clone(), ..from_file };
        assert!(refusal(&both).starts_with("metrics_token "));
    }

    #[test]
    fn cluster_settings_come_from_the_file() {
        let config = NodeConfig::from_toml(
            "peer_listen = \"0.0.0.0:9500\"\nseeds = [\"10.0.0.1:9500\", \"10.0.0.2:9500\"]\n\
             num_tokens = 32\nreplication_factor = 5\nwrite_consistency = \"all\"\n\
             read_consistency = \"one\"\nmax_clock_skew_ms = 250\nreplica_timeout_ms = 750\n\
             peer_pending_max = 128\npeer_outbox_bytes_max = 8388608\nnode_id = 1023\nshards = 2\n\
             metrics_listen = \"0.0.0.0:9100\"\nallow_unauthenticated = true\n",
        )
        .unwrap();
        assert_eq!(config.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
        assert_eq!(config.peer_address(0), "0.0.0.0:9500".parse().unwrap());
        assert_eq!(config.peer_address(1), "0.0.0.0:9501".parse().unwrap());
        assert_eq!(config.seeds, vec!["10.0.0.1:9500".parse().unwrap(), "10.0.0.2:9500".parse().unwrap()]);
        assert_eq!(config.num_tokens, 32);
        assert_eq!(config.replication_factor, 5);
        assert_eq!(config.write_consistency, Consistency::All);
        assert_eq!(config.read_consistency, Consistency::One);
        assert_eq!(config.max_clock_skew_ms, 250);
        assert_eq!(config.replica_timeout_ms, 750);
        assert_eq!(config.peer_pending_max, 128);
        assert_eq!(config.peer_outbox_bytes_max, 8 << 20);
        assert_eq!(config.node_id, 1023);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_consistency_levels_are_errors() {
        let error = NodeConfig::from_toml("write_consistency = \"two\"").unwrap_err().to_string();
        assert!(error.contains("\"two\"") && error.contains("quorum"), "{error}");
        assert!(NodeConfig::from_toml("read_consistency = \"QUORUM\"").is_err());
        assert!(NodeConfig::from_toml("read_consistency = 2").is_err());
    }

    #[test]
    fn peer_ports_may_repeat_client_ports_on_another_address() {
        let config = NodeConfig {
            listen: "127.0.0.1:7379".parse().unwrap(),
            peer_listen: Some("127.0.0.2:7379".parse().unwrap()),
            ..NodeConfig::default()
        };
        config.validate().unwrap();
    }

    #[test]
    fn bad_cluster_values_name_their_field() {
        let seed: SocketAddr = "10.0.0.1:9500".parse().unwrap();
        let bad = [
            ("num_tokens", NodeConfig { num_tokens: 0, ..NodeConfig::default() }),
            ("num_tokens", NodeConfig { num_tokens: NUM_TOKENS_MAX + 1, ..NodeConfig::default() }),
            ("replication_factor", NodeConfig { replication_factor: 0, ..NodeConfig::default() }),
            (
                "replication_factor",
                NodeConfig { replication_factor: REPLICATION_FACTOR_MAX + 1, ..NodeConfig::default() },
            ),
            ("seeds", NodeConfig { seeds: vec!["10.0.0.1:0".parse().unwrap()], ..NodeConfig::default() }),
            ("seeds", NodeConfig { seeds: vec![seed; SEEDS_MAX + 1], ..NodeConfig::default() }),
            ("max_clock_skew_ms", NodeConfig { max_clock_skew_ms: 0, ..NodeConfig::default() }),
            ("replica_timeout_ms", NodeConfig { replica_timeout_ms: 0, ..NodeConfig::default() }),
            ("anti_entropy_interval_ms", NodeConfig { anti_entropy_interval_ms: 0, ..NodeConfig::default() }),
            (
                "tombstone_grace_ms",
                NodeConfig {
                    tombstone_grace_ms: 3_600_000,
                    max_hint_window_ms: 7_200_000,
                    ..NodeConfig::default()
                },
            ),
            (
                "tombstone_grace_ms",
                NodeConfig {
                    tombstone_grace_ms: 60_000,
                    max_hint_window_ms: 1_000,
                    anti_entropy_interval_ms: 120_000,
                    ..NodeConfig::default()
                },
            ),
            ("peer_pending_max", NodeConfig { peer_pending_max: 0, ..NodeConfig::default() }),
            (
                "request_memory_bytes_max",
                NodeConfig { request_memory_bytes_max: Some(1 << 20), ..NodeConfig::default() },
            ),
            ("frame_timeout_ms", NodeConfig { frame_timeout_ms: 0, ..NodeConfig::default() }),
            ("peer_outbox_bytes_max", NodeConfig { peer_outbox_bytes_max: 1 << 20, ..NodeConfig::default() }),
            (
                "resp_listen",
                NodeConfig { resp_listen: Some("127.0.0.1:7379".parse().unwrap()), ..NodeConfig::default() },
            ),
            (
                "resp_listen",
                NodeConfig { resp_listen: Some("127.0.0.1:0".parse().unwrap()), ..NodeConfig::default() },
            ),
            (
                "peer_listen",
                NodeConfig { peer_listen: Some("127.0.0.1:0".parse().unwrap()), ..NodeConfig::default() },
            ),
            (
                "metrics_listen",
                NodeConfig { metrics_listen: Some("127.0.0.1:0".parse().unwrap()), ..NodeConfig::default() },
            ),
            (
                "metrics_listen",
                NodeConfig { metrics_listen: Some("0.0.0.0:7380".parse().unwrap()), ..NodeConfig::default() },
            ),
            (
                "metrics_listen",
                NodeConfig {
                    metrics_listen: Some("127.0.0.1:8379".parse().unwrap()),
                    ..NodeConfig::default()
                },
            ),
            (
                "metrics_listen",
                NodeConfig {
                    resp_listen: Some("127.0.0.1:6379".parse().unwrap()),
                    metrics_listen: Some("127.0.0.1:6379".parse().unwrap()),
                    ..NodeConfig::default()
                },
            ),
            // The default peer port would be above 65535.
            (
                "peer_listen",
                NodeConfig { listen: "127.0.0.1:65000".parse().unwrap(), ..NodeConfig::default() },
            ),
            (
                "peer_listen",
                NodeConfig {
                    peer_listen: Some("127.0.0.1:65535".parse().unwrap()),
                    shards: Some(2),
                    ..NodeConfig::default()
                },
            ),
            // A node joins a cluster through its seeds.
            ("join", NodeConfig { join: true, ..NodeConfig::default() }),
            // Peer ports 7379-7380 would take the client port.
            (
                "peer_listen",
                NodeConfig {
                    peer_listen: Some("127.0.0.1:7378".parse().unwrap()),
                    shards: Some(2),
                    ..NodeConfig::default()
                },
            ),
            // Peer ports 7381-7382 would overlap the shard ports 7380-7381; the wildcard address
            // shares every port.
            (
                "peer_listen",
                NodeConfig {
                    peer_listen: Some("0.0.0.0:7381".parse().unwrap()),
                    shards: Some(2),
                    ..NodeConfig::default()
                },
            ),
        ];
        for (field, config) in bad {
            match config.validate() {
                Err(ShardError::ConfigValue { field: named, .. }) => assert_eq!(named, field, "{config:?}"),
                other => panic!("{field}: expected a configuration error, got {other:?}"),
            }
        }
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
