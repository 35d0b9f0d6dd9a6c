//! The membership task: one per node, on shard 0. It drives foca ([`Membership`]) over UDP on
//! the node's peer address with one timer heap, and sends every change to every shard as a
//! [`MembershipSnapshot`].
//!
//! ```text
//!  UDP datagram ─parse_peer (Membership)─▶ Membership::handle_data ─┐
//!  next deadline ─sleep─▶ Membership::tick ─────────────────────────┤
//!                                   datagrams out ◀─ drain_outbox ──┤
//!             events (Up/Down/Conflict/Refused) ─▶ snapshot ─▶ this shard's Cluster
//!                                                             └──▶ other shards (channel)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use futures_lite::future::{or, poll_once};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use glommio::net::UdpSocket;
use rand_foca::rngs::StdRng;
use rand_foca::SeedableRng;
use ringkv_io::now_ms;
use ringkv_replication::{Membership, MembershipEvent, MembershipTiming, NodeIdentity};
use ringkv_wire::limits::UDP_DATAGRAM_BYTES_MAX;

use crate::cluster::peer_auth::PeerKey;
use ringkv_wire::peer::{PeerEnvelope, PeerMessage};
use ringkv_wire::{encode_peer, parse_peer};
use tracing::{debug, error, info, warn};

use super::{known_peers, Cluster, MembershipSnapshot};
use crate::stop_signal::StopSignal;

/// Membership datagrams received and not yet handled.
const DATAGRAMS_QUEUED_MAX: usize = 256;

/// Longest sleep between two looks at the timer heap.
const IDLE_TICK_MS: u64 = 1_000;

/// A seed for foca's generator that differs between processes and starts.
fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_ms());
    hasher.finish()
}

/// Everything the membership task needs.
pub struct GossipSetup {
    pub identity: NodeIdentity,
    pub seeds: Vec<SocketAddr>,
    /// Members known from before this start (from the data directory).
    pub known: BTreeMap<u16, NodeIdentity>,
    /// Why the node must not serve until it has joined (a new node with seeds), if so.
    pub joining: Option<String>,
    /// Where the members known are kept.
    pub data_dir: PathBuf,
    pub socket: UdpSocket,
    pub cluster: Rc<Cluster>,
    pub other_shards: Vec<ConnectedSender<Arc<MembershipSnapshot>>>,
    pub stop: Rc<StopSignal>,
}

/// Runs membership until `stop`, then tells the cluster this node leaves.
pub async fn run_membership(setup: GossipSetup) {
    let GossipSetup { identity, seeds, known, joining, data_dir, socket, cluster, other_shards, stop } =
        setup;
    let mut joining = joining;
    // Announce to the seeds and to every member known from before, so a restarted node whose
    // seeds are down still finds the cluster.
    let mut join_addresses = seeds.clone();
    join_addresses.extend(
        known
            .values()
            .filter(|member| member.node_id != identity.node_id)
            .map(|member| member.peer_address)
            .filter(|address| !seeds.contains(address)),
    );
    let node_id = identity.node_id;
    let mut membership = Membership::new(
        identity.clone(),
        MembershipTiming::default(),
        StdRng::seed_from_u64(random_seed()),
        now_ms(),
    );
    let mut members = known;
    members.insert(node_id, identity);
    let mut refused: Option<String> = None;
    let mut builder = FlatBufferBuilder::new();
    // Datagrams are received by a task of their own: a receive on an io_uring socket that is
    // abandoned for a timer (as `or` would) can lose a datagram the kernel already delivered,
    // and lost probes make healthy nodes look dead.
    let socket = Rc::new(socket);
    let (datagram_sender, datagrams) = local_channel::new_bounded(DATAGRAMS_QUEUED_MAX);
    let key = cluster.settings().peer_key;
    let receiver = glommio::spawn_local(receive_datagrams(socket.clone(), datagram_sender, key)).detach();
    // Membership announces again to every seed and member it does not see up, each second while
    // it sees no other member: a seed not listening yet (nodes started together) or a partition
    // does not leave this node alone.
    membership.join(&join_addresses, now_ms());
    loop {
        send_datagrams(&socket, &mut membership, &mut builder, node_id, key.as_ref()).await;
        let mut changed = false;
        for event in membership.drain_events() {
            changed = true;
            match event {
                MembershipEvent::Up(identity) => {
                    let known = members.get(&identity.node_id).is_some_and(|member| {
                        member.peer_address == identity.peer_address && member.tokens == identity.tokens
                    });
                    members.insert(identity.node_id, identity);
                    if !known {
                        if let Err(error) = known_peers::save(&data_dir, &members) {
                            warn!(%error, "could not record the cluster's members in the data directory");
                        }
                    }
                }
                MembershipEvent::Down(_) | MembershipEvent::Conflict { .. } => {}
                MembershipEvent::Refused { holder } => {
                    let reason = format!(
                        "node id {node_id} is already held by the member at {}; this node refuses to serve",
                        holder.peer_address
                    );
                    error!("{reason}");
                    refused = Some(reason);
                }
            }
        }
        if joining.is_some() && membership.up().len() > 1 {
            info!(members = membership.up().len(), "joined the cluster; serving");
            joining = None;
            changed = true;
        }
        if changed {
            let snapshot = Arc::new(MembershipSnapshot {
                members: members.clone(),
                up: membership.up().keys().copied().collect::<BTreeSet<u16>>(),
                refused: refused.clone().or_else(|| joining.clone()),
            });
            cluster.apply(snapshot.clone());
            for shard in &other_shards {
                if let Err(error) = shard.send(snapshot.clone()).await {
                    warn!(%error, "a shard did not take the membership snapshot");
                }
            }
        }
        if stop.is_triggered() {
            break;
        }
        let now = now_ms();
        let wake_at = membership.next_deadline().unwrap_or(now + IDLE_TICK_MS).min(now + IDLE_TICK_MS);
        let sleep = Duration::from_millis(wake_at.saturating_sub(now));
        let received = or(
            async { datagrams.recv().await },
            or(
                async {
                    glommio::timer::sleep(sleep).await;
                    None
                },
                async {
                    stop.wait().await;
                    None
                },
            ),
        )
        .await;
        if let Some(payload) = received {
            membership.handle_data(&payload, now_ms());
            // Take whatever else has arrived before looking at timers again.
            while let Some(Some(payload)) = poll_once(datagrams.recv()).await {
                membership.handle_data(&payload, now_ms());
            }
        }
        membership.tick(now_ms());
    }
    membership.leave(now_ms());
    send_datagrams(&socket, &mut membership, &mut builder, node_id, key.as_ref()).await;
    receiver.cancel();
    receiver.await;
}

/// Receives membership datagrams until cancelled, passing on the payloads that verify. When the
/// queue is full a datagram is dropped, as the network might have: SWIM tolerates loss.
async fn receive_datagrams(socket: Rc<UdpSocket>, payloads: LocalSender<Bytes>, key: Option<PeerKey>) {
    let mut buffer = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    loop {
        let received = socket.recv_from(&mut buffer).await.map(|(length, from)| {
            let datagram = &buffer[..length];
            let opened = match &key {
                Some(key) => key.open_datagram(datagram),
                None => Some(datagram),
            };
            (opened, from)
        });
        match received {
            Ok((None, from)) => {
                // Logged loudly: a node with a wrong or missing cluster secret shows up here.
                warn!(%from, "dropping a membership datagram without a valid cluster-secret tag")
            }
            Ok((Some(datagram), from)) => match parse_peer(datagram) {
                Ok(PeerEnvelope { message: PeerMessage::Membership { payload }, .. }) => {
                    if payloads.try_send(payload).is_err() {
                        debug!(%from, "membership queue full; dropping a datagram");
                    }
                }
                Ok(_) => debug!(%from, "ignoring a datagram that is not membership"),
                Err(error) => debug!(%from, %error, "ignoring a membership datagram that does not verify"),
            },
            Err(error) => {
                warn!(%error, "receiving a membership datagram failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn send_datagrams(
    socket: &UdpSocket,
    membership: &mut Membership<StdRng>,
    builder: &mut FlatBufferBuilder<'static>,
    node_id: u16,
    key: Option<&PeerKey>,
) {
    let datagrams: Vec<(SocketAddr, Bytes)> = membership.drain_outbox().collect();
    let mut signed = Vec::new();
    for (to, payload) in datagrams {
        let envelope = PeerEnvelope {
            origin_node: node_id,
            origin_shard: 0,
            request_id: 0,
            message: PeerMessage::Membership { payload },
        };
        match encode_peer(builder, &envelope) {
            Ok(frame) => {
                let frame = match key {
                    Some(key) => {
                        signed.clear();
                        signed.extend_from_slice(frame);
                        key.sign_datagram(&mut signed);
                        &signed[..]
                    }
                    None => frame,
                };
                if let Err(error) = socket.send_to(frame, to).await {
                    debug!(%to, %error, "sending a membership datagram failed");
                }
            }
            Err(error) => warn!(%error, "a membership datagram could not be encoded"),
        }
    }
}

/// On shards other than 0: applies every snapshot the membership task sends, until the channel
/// closes.
pub async fn follow_membership(receiver: ConnectedReceiver<Arc<MembershipSnapshot>>, cluster: Rc<Cluster>) {
    while let Some(snapshot) = receiver.recv().await {
        cluster.apply(snapshot);
    }
}
