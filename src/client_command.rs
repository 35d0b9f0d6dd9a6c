//! The command-line client: `ringkv get|put|del|cas|scan|ping|topology|status|ring`, over the
//! blocking `ringkv-client`.
//!
//! Exit codes are for scripts: 0 on success; 1 when a `get` finds no value, a `scan` finds no
//! key or a `cas` expectation does not hold (nothing printed on stdout); 2 on any error, with
//! one line on stderr; 3 when the node refused a write because its disk is full (retry once
//! space is freed); 4 when its storage engine failed (writes refused until it is restarted).
//!
//! The node to ask is `--addr`, given after the subcommand or before it (`ringkv --addr A get
//! k`), else `RINGKV_ADDR`, else 127.0.0.1:7379. In a cluster that node is only the first
//! contact: the client routes each key to its replicas.
//!
//! With `--json`, values go out as a JSON string when they are valid UTF-8 (`"value"`) and as
//! standard base64 otherwise (`"value_base64"`), so that any byte string survives the round
//! trip and text stays readable. `get --json` adds `expires_at_ms` (Unix milliseconds) for a
//! value that expires.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use ringkv_client::blocking::Client;
use ringkv_client::{
    CasResult, ClientOptions, Consistency, Credentials, Expected, ScanEnd, ScanEntry, ScanStart, Topology,
    SCAN_LIMIT_MAX,
};
use ringkv_wire::ErrorCode;
use serde_json::json;

/// Exit code when a `get` or `scan` finds nothing or a `cas` expectation fails.
const EXIT_NOT_MATCHED: u8 = 1;
/// Exit code for every error but the two below.
const EXIT_ERROR: u8 = 2;
/// Exit code when the node's disk is full (`DiskFull`).
const EXIT_DISK_FULL: u8 = 3;
/// Exit code when the node's storage engine failed (`StorageFailed`).
const EXIT_STORAGE_FAILED: u8 = 4;

/// The client subcommands of `ringkv`.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Print a key's value (raw bytes). Exit 0 if found, 1 if missing, 2 on error.
    Get(GetArgs),
    /// Store a value (`-` reads it from stdin) and print its version.
    Put(PutArgs),
    /// Delete a key and print the deletion's version.
    Del(DeleteArgs),
    /// Compare-and-swap: write only if the key's version matches (or it is absent). Prints the
    /// new version; exits 1 when the expectation does not hold.
    Cas(CasArgs),
    /// Print the live keys of a range in token order (by each key's token, then its bytes), one
    /// `key=value` line each (raw bytes). Exit 0 if any were found, 1 if none, 2 on error.
    Scan(ScanArgs),
    /// Check that the node answers.
    Ping(NodeArgs),
    /// Print which shard of the node owns which token ranges, and each shard's port.
    Topology(NodeArgs),
    /// Print one line per node of the cluster: id, client address, `up` or `down`, the share
    /// of the ring's tokens it holds a replica of (over all nodes, N copies add up to N ×
    /// 100%), and its shards.
    Status(NodeArgs),
    /// Print every token range of the cluster ring, (start, end] in hexadecimal, with its
    /// replicas in preference order.
    Ring(NodeArgs),
}

impl ClientCommand {
    /// Runs the subcommand against `--addr`, or `default_address` when it was not given after
    /// the subcommand, and returns the documented exit code.
    pub fn run(&self, default_address: &str) -> ExitCode {
        run(|| match self {
            ClientCommand::Get(args) => get(args, default_address),
            ClientCommand::Put(args) => put(args, default_address),
            ClientCommand::Del(args) => delete(args, default_address),
            ClientCommand::Cas(args) => cas(args, default_address),
            ClientCommand::Scan(args) => scan(args, default_address),
            ClientCommand::Ping(args) => ping(args, default_address),
            ClientCommand::Topology(args) => topology(args, default_address),
            ClientCommand::Status(args) => status(args, default_address),
            ClientCommand::Ring(args) => ring(args, default_address),
        })
    }
}

/// Options every client subcommand takes.
#[derive(Args, Debug)]
pub struct Connection {
    /// Address of a node's client port; also accepted before the subcommand. [env: RINGKV_ADDR]
    /// [default: 127.0.0.1:7379]
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Password to authenticate with, when the node has users configured. Prefer the
    /// environment variable: a flag shows in the process list.
    #[arg(long, value_name = "PASSWORD", env = "RINGKV_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// User the password belongs to.
    #[arg(long, value_name = "USER", env = "RINGKV_USER", default_value = ringkv_wire::DEFAULT_USER)]
    user: String,
    /// Print results as one JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How the client speaks TLS to the nodes.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Speak TLS, trusting the CA certificates in this PEM file to sign the nodes' certificates.
    #[arg(long, value_name = "FILE", env = "RINGKV_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name to check in the nodes' certificates. [default: the IP address connected to]
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The CA file given, if any.
    pub fn tls_ca_file(&self) -> Option<&std::path::Path> {
        self.tls_ca.as_deref()
    }

    /// Whether TLS was asked for.
    pub fn enabled(&self) -> bool {
        self.tls_ca.is_some()
    }
}

impl TlsArgs {
    /// The TLS options these flags ask for; `None` for plaintext.
    pub fn options(&self) -> anyhow::Result<Option<ringkv_client::TlsOptions>> {
        let Some(ca) = &self.tls_ca else { return Ok(None) };
        let options = ringkv_client::TlsOptions::from_ca_file(ca).context("--tls-ca")?;
        Ok(Some(match &self.tls_server_name {
            Some(name) => options.with_server_name(name).context("--tls-server-name")?,
            None => options,
        }))
    }
}

impl Connection {
    /// The address given after the subcommand, or else `default_address`.
    fn address<'a>(&'a self, default_address: &'a str) -> &'a str {
        self.addr.as_deref().unwrap_or(default_address)
    }
}

/// How many replicas a key operation waits for.
#[derive(Args, Debug)]
pub struct Level {
    /// Replicas that must answer: `one`, `quorum` (a majority) or `all`. [default: the node's
    /// --read-consistency or --write-consistency]
    #[arg(long, value_name = "LEVEL")]
    consistency: Option<Consistency>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key.
    key: String,
    #[command(flatten)]
    level: Level,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key.
    key: String,
    /// The value; `-` reads it from stdin.
    value: String,
    /// Expire the value after this long: a number with a unit, `ms`, `s`, `m`, `h` or `d`
    /// (seconds when there is none).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ttl: Option<Duration>,
    #[command(flatten)]
    level: Level,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key.
    key: String,
    #[command(flatten)]
    level: Level,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("expectation").required(true).args(["expect_version", "expect_absent"])))]
pub struct CasArgs {
    /// The key.
    key: String,
    /// The new value; `-` reads it from stdin.
    value: String,
    /// Write only if the key's current version is this.
    #[arg(long, value_name = "VERSION")]
    expect_version: Option<u64>,
    /// Write only if the key has no live value.
    #[arg(long)]
    expect_absent: bool,
    #[command(flatten)]
    level: Level,
    #[command(flatten)]
    connection: Connection,
}

/// Scans read keys in token order: by each key's token (its place on the ring), then by its
/// bytes. Bounds are positions in that order, given by a key or by a raw token (a decimal number
/// or `0x` and hex digits).
#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Begin at this key's position (inclusive). [default: the start of the ring]
    #[arg(long, value_name = "KEY", conflicts_with_all = ["start_token", "after"])]
    start: Option<String>,
    /// Begin at the first key whose token is at least this.
    #[arg(long, value_name = "TOKEN", value_parser = parse_token, conflicts_with = "after")]
    start_token: Option<u64>,
    /// Begin right after this key's position: the `next_start` a `--json` scan printed.
    #[arg(long, value_name = "KEY")]
    after: Option<String>,
    /// Stop before this key's position. [default: the end of the ring]
    #[arg(long, value_name = "KEY", conflicts_with = "end_token")]
    end: Option<String>,
    /// Stop before the first key whose token is at least this.
    #[arg(long, value_name = "TOKEN", value_parser = parse_token)]
    end_token: Option<u64>,
    /// Most entries to print; the client fetches them in pages of up to 1000 (SCAN_LIMIT_MAX).
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: u64,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    connection: Connection,
}

/// Runs a client subcommand and turns its result into the documented exit code.
fn run(command: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    match command() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringkv: {}", crate::report::report(&error));
            let code = error.chain().find_map(|cause| cause.downcast_ref::<ringkv_client::Error>()?.code());
            ExitCode::from(match code {
                Some(ErrorCode::DiskFull) => EXIT_DISK_FULL,
                Some(ErrorCode::StorageFailed) => EXIT_STORAGE_FAILED,
                _ => EXIT_ERROR,
            })
        }
    }
}

/// A client of the node at `--addr` (or `default_address`), asking `level` of the replicas.
fn connect(connection: &Connection, default_address: &str, level: Option<&Level>) -> anyhow::Result<Client> {
    let address = connection.address(default_address);
    let options = ClientOptions {
        consistency: level.and_then(|level| level.consistency),
        credentials: connection
            .password
            .as_ref()
            .map(|password| Credentials::new(connection.user.clone(), password.clone().into_bytes())),
        tls: connection.tls.options()?,
        ..ClientOptions::default()
    };
    Client::connect_with(address, options).with_context(|| format!("connecting to {address}"))
}

/// The value argument, or stdin when it is `-`.
fn value_bytes(value: &str) -> anyhow::Result<Vec<u8>> {
    if value != "-" {
        return Ok(value.as_bytes().to_vec());
    }
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("reading the value from stdin")?;
    Ok(bytes)
}

/// A value as JSON fields: text when it is UTF-8, base64 otherwise.
fn value_json(value: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(value) {
        Ok(text) => ("value", text.to_owned()),
        Err(_) => ("value_base64", base64::engine::general_purpose::STANDARD.encode(value)),
    }
}

fn print_line(text: &str) -> anyhow::Result<()> {
    writeln!(std::io::stdout().lock(), "{text}").context("writing to stdout")
}

fn get(args: &GetArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.connection, default_address, Some(&args.level))?;
    let Some(stored) = client.get(&args.key)? else {
        return Ok(ExitCode::from(EXIT_NOT_MATCHED));
    };
    if args.connection.json {
        let (field, value) = value_json(&stored.value);
        let mut line = json!({ field: value, "version": stored.version });
        if let Some(expires_at_ms) = stored.expires_at_ms {
            line["expires_at_ms"] = json!(expires_at_ms);
        }
        print_line(&line.to_string())?;
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&stored.value).and_then(|()| stdout.flush()).context("writing to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_version(json: bool, version: u64) -> anyhow::Result<ExitCode> {
    if json {
        print_line(&json!({ "version": version }).to_string())?;
    } else {
        print_line(&version.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn put(args: &PutArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let value = value_bytes(&args.value)?;
    let mut client = connect(&args.connection, default_address, Some(&args.level))?;
    let version = match args.ttl {
        Some(ttl) => client.put_with_ttl(&args.key, value, ttl)?,
        None => client.put(&args.key, value)?,
    };
    print_version(args.connection.json, version)
}

fn delete(args: &DeleteArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.connection, default_address, Some(&args.level))?;
    let version = client.delete(&args.key)?;
    print_version(args.connection.json, version)
}

fn cas(args: &CasArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let expected = match args.expect_version {
        Some(version) => Expected::Version(version),
        None => Expected::Absent,
    };
    let value = value_bytes(&args.value)?;
    let mut client = connect(&args.connection, default_address, Some(&args.level))?;
    match client.compare_and_swap(&args.key, expected, value)? {
        CasResult::Swapped { version } => print_version(args.connection.json, version),
        CasResult::Mismatch { current_version } => {
            if args.connection.json {
                print_line(&json!({ "swapped": false, "current_version": current_version }).to_string())?;
            } else {
                let current =
                    current_version.map_or_else(|| "absent".to_owned(), |version| version.to_string());
                eprintln!("ringkv: compare-and-swap did not hold; current version: {current}");
            }
            Ok(ExitCode::from(EXIT_NOT_MATCHED))
        }
    }
}

fn scan(args: &ScanArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.connection, default_address, None)?;
    let mut start = match (&args.start, args.start_token, &args.after) {
        (Some(key), _, _) => ScanStart::key(key),
        (_, _, Some(key)) => ScanStart::after(key),
        (_, token, _) => ScanStart::Token(token.unwrap_or(0)),
    };
    let end = match (&args.end, args.end_token) {
        (Some(key), _) => ScanEnd::key(key),
        (None, Some(token)) => ScanEnd::Token(token),
        (None, None) => ScanEnd::Last,
    };
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    loop {
        // A limit of 0 is sent as it is, to be refused with the protocol's own error.
        let remaining = args.limit - printed;
        let page_limit = u32::try_from(remaining).unwrap_or(u32::MAX).min(SCAN_LIMIT_MAX);
        let page = client.scan(start, end.clone(), page_limit)?;
        for entry in &page.entries {
            write_scan_entry(&mut stdout, entry, args.connection.json).context("writing to stdout")?;
            printed += 1;
        }
        match page.next_start {
            Some(next) if printed < args.limit => start = ScanStart::After(next),
            Some(next) => {
                if args.connection.json {
                    let (field, key) = key_json(&next, "next_start");
                    writeln!(stdout, "{}", json!({ field: key })).context("writing to stdout")?;
                }
                break;
            }
            None => break,
        }
    }
    stdout.flush().context("writing to stdout")?;
    if printed == 0 {
        return Ok(ExitCode::from(EXIT_NOT_MATCHED));
    }
    Ok(ExitCode::SUCCESS)
}

/// One scanned entry: `key=value` with the raw bytes, or a JSON object (with the key's token).
fn write_scan_entry(out: &mut impl Write, entry: &ScanEntry, json: bool) -> std::io::Result<()> {
    if json {
        let (key_field, key) = key_json(&entry.key, "key");
        let (value_field, value) = value_json(&entry.value);
        let object =
            json!({ key_field: key, value_field: value, "version": entry.version, "token": entry.token() });
        return writeln!(out, "{object}");
    }
    out.write_all(&entry.key)?;
    out.write_all(b"=")?;
    out.write_all(&entry.value)?;
    out.write_all(b"\n")
}

/// A key as a JSON field named `field`: text when it is UTF-8, `<field>_base64` otherwise.
fn key_json(key: &[u8], field: &'static str) -> (String, String) {
    match std::str::from_utf8(key) {
        Ok(text) => (field.to_owned(), text.to_owned()),
        Err(_) => (format!("{field}_base64"), base64::engine::general_purpose::STANDARD.encode(key)),
    }
}

fn ping(args: &NodeArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.connection, default_address, None)?;
    client.ping()?;
    if args.connection.json {
        print_line(&json!({ "pong": true }).to_string())?;
    } else {
        print_line("pong")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn topology(args: &NodeArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let client = connect(&args.connection, default_address, None)?;
    let topology = fetched_topology(&client)?;
    for shard in &topology.shards {
        if args.connection.json {
            let ranges: Vec<_> = shard
                .token_ranges
                .iter()
                .map(|range| json!({ "start": range.start, "end": range.end }))
                .collect();
            print_line(
                &json!({ "shard": shard.shard_id, "port": shard.port, "ranges": ranges }).to_string(),
            )?;
        } else {
            print_line(&format!(
                "shard {} port {} ranges {}",
                shard.shard_id,
                shard.port,
                shard.token_ranges.len()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The topology the client fetched on connecting.
fn fetched_topology(client: &Client) -> anyhow::Result<Topology> {
    client.topology().cloned().context("the node sent no topology")
}

/// One node as `ringkv status` shows it.
#[derive(Debug, Clone, PartialEq)]
struct NodeStatus {
    node_id: u16,
    address: String,
    up: bool,
    /// The share of the ring's tokens whose ranges list this node as a replica, in percent.
    ring_percent: f64,
    /// (shard id, port) of each shard.
    shards: Vec<(u32, u16)>,
}

/// Tokens on the ring: 2^64.
const RING_TOKENS: f64 = 18_446_744_073_709_551_616.0;

/// Every node of `topology` with its share of the ring. A topology without a ring (a node
/// outside a cluster, or an older server) describes one node, the one asked at
/// `contacted_address`, holding the whole ring.
fn node_statuses(topology: &Topology, contacted_address: &str) -> Vec<NodeStatus> {
    let shards_of = |shards: &[ringkv_client::ShardPlacement]| {
        shards.iter().map(|shard| (shard.shard_id, shard.port)).collect()
    };
    if topology.ring.is_empty() || topology.nodes.is_empty() {
        return vec![NodeStatus {
            node_id: topology.node_id,
            address: contacted_address.to_owned(),
            up: true,
            ring_percent: 100.0,
            shards: shards_of(&topology.shards),
        }];
    }
    let mut held: std::collections::BTreeMap<u16, u128> = std::collections::BTreeMap::new();
    for range in &topology.ring {
        // (start, end]: end - start tokens, modulo 2^64; start == end is the whole ring.
        let width =
            if range.start == range.end { 1u128 << 64 } else { range.end.wrapping_sub(range.start) as u128 };
        for node_id in &range.replicas {
            *held.entry(*node_id).or_default() += width;
        }
    }
    topology
        .nodes
        .iter()
        .map(|node| NodeStatus {
            node_id: node.node_id,
            address: node.address.clone(),
            up: node.up,
            ring_percent: held.get(&node.node_id).copied().unwrap_or(0) as f64 / RING_TOKENS * 100.0,
            shards: shards_of(&node.shards),
        })
        .collect()
}

fn status(args: &NodeArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let address = args.connection.address(default_address);
    let client = connect(&args.connection, default_address, None)?;
    for node in node_statuses(&fetched_topology(&client)?, address) {
        let line = if args.connection.json {
            let shards: Vec<_> =
                node.shards.iter().map(|&(shard, port)| json!({ "shard": shard, "port": port })).collect();
            json!({
                "node_id": node.node_id,
                "address": node.address,
                "up": node.up,
                "ring_percent": node.ring_percent,
                "shards": shards,
            })
            .to_string()
        } else {
            format!(
                "node {} {} {} {:.1}% of the ring, {} shards",
                node.node_id,
                node.address,
                if node.up { "up" } else { "down" },
                node.ring_percent,
                node.shards.len()
            )
        };
        print_line(&line)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn ring(args: &NodeArgs, default_address: &str) -> anyhow::Result<ExitCode> {
    let client = connect(&args.connection, default_address, None)?;
    let topology = fetched_topology(&client)?;
    // Without a ring the node asked holds everything: one range, the whole ring.
    let ranges = if topology.ring.is_empty() {
        vec![ringkv_client::ReplicaRange { start: 0, end: 0, replicas: vec![topology.node_id] }]
    } else {
        topology.ring
    };
    for range in ranges {
        let line = if args.connection.json {
            json!({ "start": range.start, "end": range.end, "replicas": range.replicas }).to_string()
        } else {
            let replicas: Vec<String> = range.replicas.iter().map(u16::to_string).collect();
            format!("({:#018x}, {:#018x}] {}", range.start, range.end, replicas.join(","))
        };
        print_line(&line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A token: decimal, or `0x` and hex digits.
fn parse_token(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a token (0 to 2^64 - 1, decimal or 0x hex)"))
}

/// `30s`, `500ms`, `2m`, `1h`, `1d`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_end = text.find(|character: char| !character.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} does not start with a number"))?;
    let milliseconds_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        "d" => 24 * 60 * 60 * 1000,
        other => return Err(format!("unknown unit {other:?}; use ms, s, m, h or d")),
    };
    let milliseconds = number
        .checked_mul(milliseconds_per_unit)
        .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    Ok(Duration::from_millis(milliseconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_default_to_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn json_values_are_text_when_utf8_and_base64_otherwise() {
        assert_eq!(value_json(b"hello"), ("value", "hello".to_owned()));
        assert_eq!(value_json(&[0xff, 0x00]), ("value_base64", "/wA=".to_owned()));
        assert_eq!(key_json(b"k", "key"), ("key".to_owned(), "k".to_owned()));
        assert_eq!(key_json(&[0xff], "next_start"), ("next_start_base64".to_owned(), "/w==".to_owned()));
    }

    #[test]
    fn scanned_entries_print_as_key_equals_value_or_json() {
        let entry = ScanEntry {
            key: bytes::Bytes::from_static(b"user:1"),
            value: bytes::Bytes::from_static(b"alice"),
            version: 7,
        };
        let mut plain = Vec::new();
        write_scan_entry(&mut plain, &entry, false).unwrap();
        assert_eq!(plain, b"user:1=alice\n");
        let mut json = Vec::new();
        write_scan_entry(&mut json, &entry, true).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let token = ringkv_client::token_of(b"user:1");
        assert_eq!(parsed, json!({ "key": "user:1", "value": "alice", "version": 7, "token": token }));
    }

    #[test]
    fn ring_shares_add_the_widths_of_the_ranges_listing_each_node() {
        use ringkv_client::{NodePlacement, ReplicaRange};
        let node = |node_id: u16, up: bool| NodePlacement {
            node_id,
            address: format!("10.0.0.{node_id}:7379"),
            up,
            tokens: Vec::new(),
            shards: Vec::new(),
        };
        let quarter = 1u64 << 62;
        let range =
            |start: u64, end: u64, replicas: &[u16]| ReplicaRange { start, end, replicas: replicas.to_vec() };
        let topology = Topology {
            nodes: vec![node(1, true), node(2, false), node(3, true)],
            // (q, 2q] and (2q, q] (wrapping: three quarters).
            ring: vec![range(quarter, 2 * quarter, &[1, 2]), range(2 * quarter, quarter, &[2, 3])],
            replicas: 2,
            node_id: 1,
            ..Topology::default()
        };
        let statuses = node_statuses(&topology, "ignored:1");
        let percents: Vec<(u16, bool, f64)> =
            statuses.iter().map(|status| (status.node_id, status.up, status.ring_percent)).collect();
        assert_eq!(percents, vec![(1, true, 25.0), (2, false, 100.0), (3, true, 75.0)]);

        let whole =
            Topology { ring: vec![range(7, 7, &[1])], nodes: vec![node(1, true)], ..Topology::default() };
        assert_eq!(node_statuses(&whole, "x:1")[0].ring_percent, 100.0);
        let outside_a_cluster = Topology { node_id: 4, ..Topology::default() };
        let alone = &node_statuses(&outside_a_cluster, "127.0.0.1:7379")[0];
        assert_eq!(
            (alone.node_id, alone.address.as_str(), alone.up, alone.ring_percent),
            (4, "127.0.0.1:7379", true, 100.0)
        );
    }

    #[test]
    fn tokens_are_decimal_or_hex() {
        assert_eq!(parse_token("42"), Ok(42));
        assert_eq!(parse_token("0x2a"), Ok(42));
        assert_eq!(parse_token("0xFFFFFFFFFFFFFFFF"), Ok(u64::MAX));
        assert!(parse_token("18446744073709551616").is_err());
        assert!(parse_token("-1").is_err() && parse_token("0x").is_err() && parse_token("k").is_err());
    }
}
