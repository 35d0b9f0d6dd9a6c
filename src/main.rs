//! The `ringkv` binary: reads the configuration (a TOML file, then flags on top), starts one
//! glommio executor per shard, and stops them cleanly on SIGINT or SIGTERM. Its other
//! subcommands are the command-line client ([`client_command`]).

mod admin_command;
mod allocator;
mod client_command;
mod report;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ringkv_shard::config::Consistency;
use ringkv_shard::{Node, NodeConfig, SyncSetting};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// ringkv: a Dynamo-style key-value store, thread-per-core on io_uring.
#[derive(Parser, Debug)]
#[command(name = "ringkv", version, about)]
struct Cli {
    /// Address of a node's client port, for the client subcommands (which also take --addr
    /// after the subcommand, and prefer it).
    #[arg(long, value_name = "HOST:PORT", env = "RINGKV_ADDR", default_value = "127.0.0.1:7379")]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: one shard per core, each serving the client port and its own shard port.
    ///
    /// Settings come from the defaults, then the --config file, then these flags. Logs go to
    /// stderr; set RINGKV_LOG (or RUST_LOG) to a tracing filter such as `debug` or
    /// `ringkv_shard=debug` to see more. SIGINT or SIGTERM stops the node cleanly: it stops
    /// accepting, finishes requests in flight, syncs and closes its files, and exits 0.
    // Boxed: the serve flags outweigh every other subcommand's arguments.
    Serve(Box<ServeArgs>),
    /// Operator commands.
    #[command(subcommand)]
    Admin(admin_command::AdminCommand),
    #[command(flatten)]
    Client(client_command::ClientCommand),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML file with any of the settings below (same names, with underscores).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the data; one sub-directory per shard. [default: ./ringkv-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Client address every shard listens on (SO_REUSEPORT). [default: 127.0.0.1:7379]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// First shard port: shard i listens on this + i, alone. [default: the client port + 1]
    #[arg(long, value_name = "PORT")]
    shard_port_base: Option<u16>,
    /// Number of shards, one executor each. [default: one per available core but one, at least one]
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Pin shard i's executor to core i. Only for machines dedicated to ringkv: where other
    /// programs (a load generator, an application) share the cores, pinned shards cannot move
    /// away from them and serve far less (see docs/benchmarks.md). [default: not pinned]
    #[arg(long)]
    pin: bool,
    /// Node id (0-1023), carried in the low bits of every version this node writes. [default: 0]
    #[arg(long, value_name = "ID")]
    node_id: Option<u16>,
    /// When a write is acknowledged: `always` (after its fdatasync; group commit shares one
    /// sync among concurrent writes) or `periodic:MS` (once buffered; synced every MS
    /// milliseconds, so up to MS of writes can be lost on power failure). [default: always]
    #[arg(long, value_name = "MODE")]
    sync: Option<SyncSetting>,
    /// Token ranges (vnodes) per shard. [default: 16]
    #[arg(long, value_name = "N")]
    vnodes_per_shard: Option<usize>,
    /// Open client connections per shard; more are answered "overloaded". [default: 1024]
    #[arg(long, value_name = "N")]
    connections_max: Option<usize>,
    /// Operations executing at once per connection, a batch counting as its operations; more are
    /// answered "overloaded". [default: 1024]
    #[arg(long, value_name = "N")]
    in_flight_max: Option<usize>,
    /// Bytes of replies waiting per connection before it stops reading requests. [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    outbox_bytes_max: Option<usize>,
    /// Request bytes a shard holds received and not yet answered, over all its connections;
    /// past it the shard stops reading sockets until some are answered. [default: a quarter of
    /// the machine's memory over the shards]
    #[arg(long, value_name = "BYTES")]
    request_memory_bytes_max: Option<usize>,
    /// A frame (or Redis command) that started arriving must finish within this, or the
    /// connection is closed. [default: 10000]
    #[arg(long, value_name = "MS")]
    frame_timeout_ms: Option<u64>,
    /// Close a client connection idle this long (nothing sent, nothing running); 0 keeps idle
    /// connections open. [default: 0]
    #[arg(long, value_name = "MS")]
    client_idle_timeout_ms: Option<u64>,
    /// Requests a shard may have waiting on other shards; more are answered "overloaded".
    /// [default: 4096]
    #[arg(long, value_name = "N")]
    forward_in_flight_max: Option<usize>,
    /// Capacity of each shard-to-shard channel, in messages. [default: 1024]
    #[arg(long, value_name = "N")]
    mesh_channel_capacity: Option<usize>,
    /// Memory each shard registers with io_uring for DMA buffers. [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    io_memory_bytes: Option<usize>,
    /// Share of each shard's time, in percent, that flushes and compactions may use while
    /// nothing waits for them (100: every moment the shard does not serve). They run at full
    /// speed once writers could stall or tables pile up. [default: 25]
    #[arg(long, value_name = "PERCENT")]
    background_share_percent: Option<u32>,
    /// Memtable size at which a shard flushes it to an SSTable. [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    memtable_bytes_max: Option<usize>,
    /// Write-ahead log bytes a shard's memtable may stand for before it is flushed even if not
    /// full, so that the log's older segments go (overwrites in place do not fill a memtable).
    /// [default: 268435456]
    #[arg(long, value_name = "BYTES")]
    wal_bytes_max: Option<u64>,
    /// SSTable block cache per shard; tables are read past the kernel's page cache, so this is
    /// the memory that keeps a data set's blocks. [default: a quarter of the machine's memory
    /// over the shards, at least 67108864]
    #[arg(long, value_name = "BYTES")]
    block_cache_bytes: Option<usize>,
    /// Row cache per shard: single keys' entries that reads found in the tables. Worth turning
    /// on when reads go to the disk though the block cache is full (the hot keys spread over more
    /// blocks than it holds); off by default. [default: 0]
    #[arg(long, value_name = "BYTES")]
    row_cache_bytes: Option<usize>,
    /// On shutdown, how long to wait for connections to finish before closing them. [default: 10000]
    #[arg(long, value_name = "MS")]
    shutdown_grace_ms: Option<u64>,
    /// Peer address of shard 0, where other nodes connect to replicate and send membership
    /// datagrams; shard i uses this port + i. [default: the client IP, the client port + 1000]
    #[arg(long, value_name = "ADDR:PORT")]
    peer_listen: Option<SocketAddr>,
    /// Peer addresses of nodes to contact to join a cluster, comma-separated. [default: none:
    /// the node starts a cluster of its own]
    #[arg(long, value_name = "ADDR:PORT,...", value_delimiter = ',')]
    seeds: Option<Vec<SocketAddr>>,
    /// Tokens this node owns on the cluster's ring (1-256). [default: 16]
    #[arg(long, value_name = "N")]
    num_tokens: Option<usize>,
    /// Copies of every key, on distinct nodes (1-7). [default: 3]
    #[arg(long, value_name = "N")]
    replication_factor: Option<usize>,
    /// Replicas that must acknowledge a write: `one`, `quorum` (a majority) or `all`.
    /// [default: quorum]
    #[arg(long, value_name = "LEVEL")]
    write_consistency: Option<Consistency>,
    /// Replicas that must answer a read: `one`, `quorum` (a majority) or `all`. [default: quorum]
    #[arg(long, value_name = "LEVEL")]
    read_consistency: Option<Consistency>,
    /// How far ahead of this node's clock another node's version may be before the write is
    /// refused. [default: 500]
    #[arg(long, value_name = "MS")]
    max_clock_skew_ms: Option<u64>,
    /// How long a coordinator waits for enough replicas before answering "timeout". [default: 2000]
    #[arg(long, value_name = "MS")]
    replica_timeout_ms: Option<u64>,
    /// Bytes of hints a shard keeps for all replicas together; 0 turns hinted handoff off.
    /// [default: 268435456]
    #[arg(long, value_name = "BYTES")]
    hints_bytes_max: Option<u64>,
    /// Bytes of hints a shard keeps for one replica. [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    hints_destination_bytes_max: Option<u64>,
    /// No hints for a replica down longer than this. [default: 10800000, 3 h]
    #[arg(long, value_name = "MS")]
    max_hint_window_ms: Option<u64>,
    /// Hint replay rate per shard. [default: 8388608]
    #[arg(long, value_name = "BYTES")]
    hints_replay_bytes_per_s: Option<u64>,
    /// How often replicas compare their anti-entropy trees. [default: 600000, 10 min]
    #[arg(long, value_name = "MS")]
    anti_entropy_interval_ms: Option<u64>,
    /// Anti-entropy repair traffic per shard. [default: 8388608]
    #[arg(long, value_name = "BYTES")]
    anti_entropy_bytes_per_s: Option<u64>,
    /// How often the anti-entropy trees are rebuilt from a scan. [default: 21600000, 6 h]
    #[arg(long, value_name = "MS")]
    tree_rebuild_interval_ms: Option<u64>,
    /// Tombstones are kept at least this long, then purged once their range was repaired; at
    /// least the hint window and the anti-entropy interval. [default: 864000000, 10 days]
    #[arg(long, value_name = "MS")]
    tombstone_grace_ms: Option<u64>,
    /// Start even when SSTables the manifest lists are missing: their data is lost on this node
    /// and anti-entropy restores it from the other replicas; until then the shard answers no
    /// read as a replica. Without it the node refuses to start.
    #[arg(long)]
    allow_missing_tables: bool,
    /// Join a cluster that already holds data: on the first start in this data directory every
    /// shard answers no replica read of a range until anti-entropy has brought the range from
    /// the other replicas (writes are taken meanwhile). Needs --seeds. [default: off, for
    /// nodes that form a new cluster together]
    #[arg(long)]
    join: bool,
    /// Start even when the WAL's last record fails its checksum though it was written whole
    /// (bit rot, not a torn write): the record, which may hold acknowledged writes, is dropped
    /// and an error logged. Without it the node refuses to start.
    #[arg(long)]
    accept_wal_tail_loss: bool,
    /// Free bytes kept on the data directory's filesystem for flushes and compactions: at or
    /// below it writes are refused with DiskFull (reads go on) until space is freed; 0 turns the
    /// check off. [default: 536870912]
    #[arg(long, value_name = "BYTES")]
    disk_reserve_bytes: Option<u64>,
    /// Replica requests a shard may have waiting as coordinator; more are answered
    /// "overloaded". [default: 4096]
    #[arg(long, value_name = "N")]
    peer_pending_max: Option<usize>,
    /// Bytes of messages waiting per peer link before it refuses more (at least one maximal
    /// frame, 1114116). [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    peer_outbox_bytes_max: Option<usize>,
    /// Serve the Redis protocol (RESP2 and RESP3: redis-cli, redis-benchmark, Redis client
    /// libraries) on this address too, on every shard (SO_REUSEPORT). [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    resp_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (text format) at http://ADDR:PORT/metrics (https:// when TLS is
    /// on, with the node's certificate), every shard's series labelled with it. [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// A file holding the bearer token every scrape of --metrics-listen must present
    /// (`Authorization: Bearer TOKEN`, 16 to 1024 printable bytes; trailing white space
    /// ignored), read again whenever it changes. Replaces `metrics_token` of the --config file.
    /// [default: no token, open port]
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Listen beyond loopback without authentication: client, shard and Redis ports without
    /// `[[users]]`, or peer ports without `cluster_secret` (both set in the --config file).
    /// Without it such a node refuses to start; with it, it starts and logs a warning.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// The node's certificate chain (PEM); with --tls-key-file and --tls-ca-file it turns TLS
    /// on for every port (client, shard, RESP, peer). [default: off]
    #[arg(long, value_name = "FILE")]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign every node's certificate: peer links use mutual TLS and
    /// verify the other node against them.
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
    /// CA certificates (PEM) for client certificates: when set, clients must present one
    /// signed by them. [default: off, no client certificates]
    #[arg(long, value_name = "FILE")]
    tls_client_ca_file: Option<PathBuf>,
    /// Check the configuration (the --config file and these flags) and exit: print what is
    /// wrong and exit 1, or print "ok" and the effective settings and exit 0. Starts nothing
    /// and leaves the data directory untouched.
    #[arg(long)]
    check_config: bool,
}

impl ServeArgs {
    /// The configuration file (or the defaults) with every given flag applied on top.
    fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None => NodeConfig::default(),
        };
        fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
            if let Some(value) = flag {
                *field = value.clone();
            }
        }
        set(&mut config.data_dir, &self.data_dir);
        set(&mut config.listen, &self.listen);
        if self.shard_port_base.is_some() {
            config.shard_port_base = self.shard_port_base;
        }
        if self.shards.is_some() {
            config.shards = self.shards;
        }
        if self.pin {
            config.pin_to_cores = true;
        }
        set(&mut config.node_id, &self.node_id);
        set(&mut config.sync, &self.sync);
        set(&mut config.vnodes_per_shard, &self.vnodes_per_shard);
        set(&mut config.connections_max, &self.connections_max);
        set(&mut config.in_flight_max, &self.in_flight_max);
        set(&mut config.outbox_bytes_max, &self.outbox_bytes_max);
        if self.request_memory_bytes_max.is_some() {
            config.request_memory_bytes_max = self.request_memory_bytes_max;
        }
        set(&mut config.frame_timeout_ms, &self.frame_timeout_ms);
        set(&mut config.client_idle_timeout_ms, &self.client_idle_timeout_ms);
        set(&mut config.forward_in_flight_max, &self.forward_in_flight_max);
        set(&mut config.mesh_channel_capacity, &self.mesh_channel_capacity);
        set(&mut config.io_memory_bytes, &self.io_memory_bytes);
        set(&mut config.background_share_percent, &self.background_share_percent);
        set(&mut config.memtable_bytes_max, &self.memtable_bytes_max);
        set(&mut config.wal_bytes_max, &self.wal_bytes_max);
        if self.block_cache_bytes.is_some() {
            config.block_cache_bytes = self.block_cache_bytes;
        }
        set(&mut config.row_cache_bytes, &self.row_cache_bytes);
        set(&mut config.shutdown_grace_ms, &self.shutdown_grace_ms);
        if self.peer_listen.is_some() {
            config.peer_listen = self.peer_listen;
        }
        set(&mut config.seeds, &self.seeds);
        set(&mut config.num_tokens, &self.num_tokens);
        set(&mut config.replication_factor, &self.replication_factor);
        set(&mut config.write_consistency, &self.write_consistency);
        set(&mut config.read_consistency, &self.read_consistency);
        set(&mut config.max_clock_skew_ms, &self.max_clock_skew_ms);
        set(&mut config.replica_timeout_ms, &self.replica_timeout_ms);
        set(&mut config.peer_pending_max, &self.peer_pending_max);
        set(&mut config.peer_outbox_bytes_max, &self.peer_outbox_bytes_max);
        if self.resp_listen.is_some() {
            config.resp_listen = self.resp_listen;
        }
        for (field, flag) in [
            (&mut config.tls_cert_file, &self.tls_cert_file),
            (&mut config.tls_key_file, &self.tls_key_file),
            (&mut config.tls_ca_file, &self.tls_ca_file),
            (&mut config.tls_client_ca_file, &self.tls_client_ca_file),
        ] {
            if flag.is_some() {
                field.clone_from(flag);
            }
        }
        if self.metrics_listen.is_some() {
            config.metrics_listen = self.metrics_listen;
        }
        if self.metrics_token_file.is_some() {
            config.metrics_token = None;
            config.metrics_token_file.clone_from(&self.metrics_token_file);
        }
        set(&mut config.hints_bytes_max, &self.hints_bytes_max);
        set(&mut config.hints_destination_bytes_max, &self.hints_destination_bytes_max);
        set(&mut config.max_hint_window_ms, &self.max_hint_window_ms);
        set(&mut config.hints_replay_bytes_per_s, &self.hints_replay_bytes_per_s);
        set(&mut config.anti_entropy_interval_ms, &self.anti_entropy_interval_ms);
        set(&mut config.anti_entropy_bytes_per_s, &self.anti_entropy_bytes_per_s);
        set(&mut config.tree_rebuild_interval_ms, &self.tree_rebuild_interval_ms);
        set(&mut config.tombstone_grace_ms, &self.tombstone_grace_ms);
        if self.allow_missing_tables {
            config.allow_missing_tables = true;
        }
        if self.join {
            config.join = true;
        }
        if self.accept_wal_tail_loss {
            config.accept_wal_tail_loss = true;
        }
        set(&mut config.disk_reserve_bytes, &self.disk_reserve_bytes);
        if self.allow_unauthenticated {
            config.allow_unauthenticated = true;
        }
        config.validate()?;
        Ok(config)
    }
}

#[global_allocator]
static ALLOCATOR: allocator::NodeAllocator = allocator::NodeAllocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Serve(args) if args.check_config => return check_config(&args),
        Command::Serve(args) => {
            allocator::map_large_blocks_alone();
            args
        }
        Command::Client(command) => return command.run(&cli.addr),
        Command::Admin(command) => return command.run(&cli.addr),
    };
    let filter = std::env::var("RINGKV_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|filter| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr on a full disk) is lost, not reported with
        // `eprintln!`, which panics when stderr fails too: a node whose disk filled up must
        // still stop cleanly.
        .log_internal_errors(false)
        .init();

    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let text = report::report(&error);
            error!("{text}");
            // Not eprintln!: it panics when stderr cannot be written.
            let _ = writeln!(std::io::stderr(), "ringkv: {text}");
            ExitCode::FAILURE
        }
    }
}

/// `serve --check-config`: reads and validates the configuration as `serve` would, and reports.
fn check_config(args: &ServeArgs) -> ExitCode {
    match args.config() {
        Ok(config) => {
            let config = config.effective();
            println!("ok");
            if let Some(path) = &args.config {
                println!("# the effective settings: {} with the flags given on top", path.display());
            } else {
                println!("# the effective settings: the defaults with the flags given on top");
            }
            print!("{}", config.to_toml());
            if !config.users.is_empty() {
                println!("# {} users configured (passwords not shown)", config.users.len());
            }
            if config.cluster_secret.is_some() {
                println!("# cluster_secret configured (not shown)");
            }
            if config.metrics_token.is_some() {
                println!("# metrics_token configured (not shown)");
            } else if let Some(path) = &config.metrics_token_file {
                println!("# metrics_token_file {} read (the token is not shown)", path.display());
            }
            if !config.data_dir.is_dir() {
                println!(
                    "# note: data_dir {} does not exist yet; the node creates it at its first start",
                    config.data_dir.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ringkv: check failed: {}", report::report(&error));
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    // Register before starting: a signal during start-up must not kill the process mid-write.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    info!(
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        shards = config.shard_count(),
        sync = %config.sync,
        node_id = config.node_id,
        peer_listen = %config.peer_address(0),
        client_auth = !config.users.is_empty(),
        peer_auth = config.cluster_secret.is_some(),
        "starting"
    );
    for exposed in config.unauthenticated_exposure() {
        warn!("{exposed} without authentication (allow_unauthenticated): anyone who can reach it can use it");
    }
    let node = Node::start(config).context("starting the node")?;
    let stop = node.stop_handle();
    std::thread::Builder::new()
        .name("ringkv-signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received == 1 {
                    info!(signal, "stopping: finishing requests in flight, then syncing and closing");
                    stop.stop();
                } else {
                    warn!(signal, "second signal: exiting without waiting");
                    std::process::exit(1);
                }
            }
        })
        .context("starting the signal thread")?;
    node.wait().context("stopping the node")?;
    info!("stopped cleanly");
    Ok(())
}
