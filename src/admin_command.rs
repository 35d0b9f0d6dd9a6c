//! `ringkv admin ...`: operator commands that speak the peer protocol to a node's shards.
//!
//! `ringkv admin repair [--range START:END]` asks every shard of a node to run anti-entropy now
//! (over every range it replicates, or over one range) and prints what each did: ranges
//! compared, keys repaired (pushed to and pulled from the other replicas) and bytes sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use flatbuffers::FlatBufferBuilder;
use ringkv_client::blocking::Client;
use ringkv_client::{ClientOptions, Credentials};
use ringkv_shard::cluster::peer_auth::{self, PeerKey};
use ringkv_wire::peer::{PeerEnvelope, PeerMessage, RepairReport};
use ringkv_wire::{encode_peer, parse_peer_shared, FrameDecoder};
use serde_json::json;

/// How long a repair may run on one shard before the command gives up waiting.
const REPAIR_WAIT: Duration = Duration::from_secs(3600);

/// The operator subcommands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Run anti-entropy now on every shard of the node and print, per shard, the ranges
    /// compared, the keys repaired and the bytes sent. Exit 0 when every exchange succeeded,
    /// 1 when some failed (a replica down or unreachable), 2 on error.
    Repair(RepairArgs),
}

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// Only the ring range (START, END], tokens in decimal or 0x-hexadecimal, as `ringkv ring`
    /// prints them. [default: every range the node replicates]
    #[arg(long, value_name = "START:END", value_parser = parse_range)]
    range: Option<(u64, u64)>,
    /// The node's peer address (shard i at port + i). [default: the client address's port + 1000]
    #[arg(long, value_name = "HOST:PORT")]
    peer_addr: Option<String>,
    /// Address of the node's client port (to learn its shards). [default: --addr]
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Print one JSON object per shard.
    #[arg(long)]
    json: bool,
    /// The cluster secret, when the node has one (`cluster_secret`): the peer port serves only
    /// links that prove they know it.
    #[arg(long, value_name = "SECRET", env = "RINGKV_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Password for the client port, when the node has users configured.
    #[arg(long, value_name = "PASSWORD", env = "RINGKV_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// User the password belongs to.
    #[arg(long, value_name = "USER", env = "RINGKV_USER", default_value = ringkv_wire::DEFAULT_USER)]
    user: String,
    #[command(flatten)]
    tls: crate::client_command::TlsArgs,
    /// With --tls-ca: a certificate the cluster's CA signed (a node's will do), which the peer
    /// port requires of whoever connects to it.
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

fn parse_token(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|error| format!("{text:?} is not a token: {error}"))
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (start, end) = text.split_once(':').ok_or("a range is START:END")?;
    Ok((parse_token(start)?, parse_token(end)?))
}

impl AdminCommand {
    /// Runs the subcommand; `default_address` is the node's client address.
    pub fn run(&self, default_address: &str) -> ExitCode {
        match self {
            AdminCommand::Repair(args) => match repair(args, default_address) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(error) => {
                    eprintln!("error: {}", crate::report::report(&error));
                    ExitCode::from(2)
                }
            },
        }
    }
}

fn repair(args: &RepairArgs, default_address: &str) -> anyhow::Result<bool> {
    let address = args.addr.as_deref().unwrap_or(default_address);
    let credentials = args
        .password
        .as_ref()
        .map(|password| Credentials::new(args.user.clone(), password.clone().into_bytes()));
    let options = ClientOptions { credentials, tls: args.tls.options()?, ..ClientOptions::default() };
    let client =
        Client::connect_with(address, options).with_context(|| format!("connecting to {address}"))?;
    let shards = client.topology().map(|topology| topology.shards.len()).unwrap_or(1).max(1);
    let peer: SocketAddr = match &args.peer_addr {
        Some(peer) => peer.to_socket_addrs()?.next().context("the peer address resolves to nothing")?,
        None => {
            let client_address =
                address.to_socket_addrs()?.next().context("the client address resolves to nothing")?;
            SocketAddr::new(client_address.ip(), client_address.port() + 1000)
        }
    };
    // The peer port speaks mutual TLS when the node has TLS on.
    let peer_tls = match (&args.tls_cert, &args.tls_key, &args.tls.tls_ca_file()) {
        (Some(cert), Some(key), Some(ca)) => {
            Some(ringkv_client::TlsOptions::from_ca_file_with_client_certificate(ca, cert, key)?)
        }
        _ if args.tls.enabled() => bail!("with TLS on, the peer port needs --tls-cert and --tls-key too"),
        _ => None,
    };
    let mut all_succeeded = true;
    for shard in 0..shards as u32 {
        let shard_address = SocketAddr::new(peer.ip(), peer.port() + shard as u16);
        let key = args.cluster_secret.as_ref().map(|secret| PeerKey::from_secret(secret.as_bytes()));
        let report = repair_shard(shard_address, shard, args.range, peer_tls.as_ref(), key.as_ref())
            .with_context(|| format!("repairing shard {shard} at {shard_address}"))?;
        all_succeeded &= report.exchanges_failed == 0;
        if args.json {
            println!(
                "{}",
                json!({
                    "shard": shard,
                    "ranges_compared": report.ranges_compared,
                    "exchanges": report.exchanges,
                    "exchanges_failed": report.exchanges_failed,
                    "keys_pushed": report.keys_pushed,
                    "keys_pulled": report.keys_pulled,
                    "keys_repaired": report.keys_pushed + report.keys_pulled,
                    "bytes_sent": report.bytes_sent,
                })
            );
        } else {
            println!(
                "shard {shard}: {} ranges compared, {} exchanges ({} failed), {} keys repaired ({} pushed, {} pulled), \
                 {} bytes sent",
                report.ranges_compared,
                report.exchanges,
                report.exchanges_failed,
                report.keys_pushed + report.keys_pulled,
                report.keys_pushed,
                report.keys_pulled,
                report.bytes_sent
            );
        }
    }
    Ok(all_succeeded)
}

/// A stream to the peer port, plaintext or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn repair_shard(
    address: SocketAddr,
    shard: u32,
    range: Option<(u64, u64)>,
    tls: Option<&ringkv_client::TlsOptions>,
    key: Option<&PeerKey>,
) -> anyhow::Result<RepairReport> {
    let tcp = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(REPAIR_WAIT))?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(tls.connect_std(tcp, address)?),
    };
    if let Some(key) = key {
        peer_auth::open_blocking(&mut stream, key).context("authenticating with the cluster secret")?;
    }
    let mut builder = FlatBufferBuilder::new();
    // The hello names the shard the link is for; the node id is only logged by the peer.
    let hello = PeerEnvelope {
        origin_node: 0,
        origin_shard: 0,
        request_id: 0,
        message: PeerMessage::Hello { node_id: 0, generation: 0, target_shard: shard },
    };
    stream.write_all(encode_peer(&mut builder, &hello)?)?;
    let request = PeerEnvelope {
        origin_node: 0,
        origin_shard: 0,
        request_id: 1,
        message: PeerMessage::RepairRequest { range },
    };
    stream.write_all(encode_peer(&mut builder, &request)?)?;
    stream.flush()?;
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            bail!("the node closed the link before answering");
        }
        decoder.extend_from_slice(&chunk[..read]);
        while let Some(frame) = decoder.next_frame()? {
            if let PeerMessage::RepairReply { report } = parse_peer_shared(&frame)?.message {
                return Ok(report);
            }
        }
    }
}
