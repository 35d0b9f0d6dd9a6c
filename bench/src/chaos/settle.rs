//! The end of a chaos run, once every fault is healed and every node sees every other up: read
//! every key written at ALL (which repairs the replicas it reads, blocking), then read each
//! replica's own copy at ONE through that replica's node. The reads at ALL join the history as
//! the final reads (client `None`), and the copies make the [`FinalState`] the convergence
//! checker compares them with.
//!
//! The settle phase does not wait for hinted handoff or anti-entropy to repair the replicas:
//! convergence is checked for keys after their repairing read at ALL, not before it. (The
//! simulator is where anti-entropy alone must converge the replicas.)

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ringkv_client::blocking::Client;
use ringkv_client::{command, reply, token_of, Connection, Consistency, Error, Topology};
use ringkv_sim::checker::FinalState;
use ringkv_sim::history::{Kind, Operation, Outcome};
use ringkv_wire::peer::PeerEntry;

use super::workload::{client_options, failed, micros_since, read_outcome, required};

/// How long the final read of one key keeps retrying before it is recorded as failed.
const FINAL_READ_PATIENCE: Duration = Duration::from_secs(20);

/// What the settle phase learned.
pub struct Settled {
    /// The final reads at ALL, one per key (client `None`).
    pub final_reads: Vec<Operation>,
    /// Each key's replicas, in preference order.
    pub replicas: BTreeMap<Bytes, Vec<u16>>,
    /// Each replica's own copy of each of its keys, read after the repairing read at ALL.
    pub stored: FinalState,
}

/// Reads every key in `keys` at ALL, then every replica's copy at ONE. `nodes` maps node ids to
/// client addresses; `replicas` is N.
pub fn settle(
    nodes: &BTreeMap<u16, SocketAddr>,
    keys: &BTreeSet<Bytes>,
    replicas: usize,
    epoch: Instant,
) -> Result<Settled> {
    let first = *nodes.values().next().context("no nodes")?;
    let mut client = Client::connect_with(first, client_options()).context("connect for the final reads")?;
    let topology: Topology = client.refresh_topology().context("topology for the final reads")?;
    let mut final_reads = Vec::new();
    let mut placement = BTreeMap::new();
    for key in keys {
        let key_replicas = topology
            .replicas_of_token(token_of(key))
            .with_context(|| format!("no replicas for key {}", String::from_utf8_lossy(key)))?
            .to_vec();
        final_reads.push(read_at_all(&mut client, key, key_replicas[0], replicas, epoch));
        placement.insert(key.clone(), key_replicas);
    }
    let mut stored: FinalState = BTreeMap::new();
    for (&node, &address) in nodes {
        let mut reader = NodeReader::connect(address)?;
        let held = stored.entry(node).or_default();
        for (key, key_replicas) in &placement {
            if key_replicas.contains(&node) {
                held.insert(key.clone(), reader.get_one(key)?);
            }
        }
    }
    Ok(Settled { final_reads, replicas: placement, stored })
}

/// One read of `key` at ALL, retried until it answers or [`FINAL_READ_PATIENCE`] has passed.
fn read_at_all(client: &mut Client, key: &Bytes, node: u16, replicas: usize, epoch: Instant) -> Operation {
    let started = Instant::now();
    let mut operation = Operation {
        client: None,
        node,
        key: key.clone(),
        kind: Kind::Get,
        consistency: Consistency::All,
        replicas,
        required: required(Consistency::All, replicas),
        version: None,
        invoked_step: micros_since(epoch),
        completed_step: None,
        outcome: Outcome::Pending,
    };
    loop {
        operation.invoked_step = micros_since(epoch);
        let result = client.with_consistency(Consistency::All).get(key);
        operation.completed_step = Some(micros_since(epoch));
        match result {
            Ok(found) => {
                operation.outcome = read_outcome(found);
                return operation;
            }
            Err(error) if started.elapsed() < FINAL_READ_PATIENCE => {
                eprintln!("chaos: final read of {} at ALL: {error}; retrying", String::from_utf8_lossy(key));
                thread::sleep(Duration::from_millis(500));
            }
            Err(error) => {
                operation.outcome = failed(&error, false);
                return operation;
            }
        }
    }
}

/// A plain connection to one node's client port, without the client's routing: the node that
/// receives a request coordinates it, and at ONE a replica coordinator reads its own copy
/// first, so a read through a replica's node returns that replica's copy.
struct NodeReader {
    address: SocketAddr,
    stream: TcpStream,
    connection: Connection,
}

impl NodeReader {
    fn connect(address: SocketAddr) -> Result<NodeReader> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
            .with_context(|| format!("connect to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(NodeReader { address, stream, connection: Connection::new(1) })
    }

    /// The entry this node's replica holds for `key` (`None`: nothing live), read at ONE.
    fn get_one(&mut self, key: &Bytes) -> Result<Option<PeerEntry>> {
        let id = self.connection.send_operation_at(command::get(key), Some(Consistency::One))?;
        if let Some(bytes) = self.connection.take_output() {
            self.stream.write_all(&bytes)?;
        }
        let mut buffer = [0u8; 64 * 1024];
        loop {
            if let Some((reply_id, reply)) = self.connection.poll_reply()? {
                if reply_id != id {
                    continue;
                }
                return match reply::into_get(reply) {
                    Ok(found) => Ok(match read_outcome(found) {
                        Outcome::Read(entry) => entry,
                        _ => None,
                    }),
                    Err(Error::Server(failure)) => {
                        bail!("{} refused a read of its own copy at ONE: {failure}", self.address)
                    }
                    Err(error) => Err(error.into()),
                };
            }
            let read =
                self.stream.read(&mut buffer).with_context(|| format!("read from {}", self.address))?;
            if read == 0 {
                bail!("{} closed the connection", self.address);
            }
            self.connection.on_received(&buffer[..read]);
        }
    }
}
