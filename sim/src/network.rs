//! [`Network`]: the simulated links between nodes: random delay (so reordering), loss,
//! duplication, and partitions cut per direction.
//!
//! ```text
//!  send(from, to) ──lost?──▶ dropped
//!                 ──copies (1, or 2 when duplicated), each with its own delay──▶ Deliver events
//!  Deliver ──link cut now (from → to)? ──▶ dropped      (a partition drops what is on the wire)
//! ```
//!
//! A node's messages to itself (its coordinator asking its own replica) never touch the network:
//! the shard runs them in place.

use std::collections::BTreeSet;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::RngExt;
use ringkv_wire::peer::PeerEnvelope;

/// What a message carries.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A replica request or answer, as the peer codec encoded it (the receiver parses it, so
    /// every message crosses the real decoder).
    Peer(Bytes),
    /// A membership datagram (foca's own encoding).
    Membership(Bytes),
}

/// One message between nodes.
#[derive(Clone, Debug)]
pub struct Message {
    pub from: u16,
    pub to: u16,
    /// The sender's generation when it sent the message.
    pub from_generation: u64,
    /// For an answer: the generation of the node that asked. An answer reaches only that
    /// incarnation, as it would on the connection the request came in on; a restarted node's
    /// new coordinator never sees answers meant for its previous life.
    pub to_generation: Option<u64>,
    /// For a coordinator's request: the shard of `to` it is for (the coordinator's choice);
    /// `None` for messages that name no shard (hint replays, anti-entropy, membership), which
    /// the receiver routes by key.
    pub to_shard: Option<u32>,
    /// The shard of `from` that sent it (a replica's answer comes from the shard asked).
    pub from_shard: u32,
    pub payload: Payload,
}

impl Message {
    /// An envelope encoded for the wire, as a production peer link encodes it (request-path
    /// messages laid out by hand, the rest through the builder).
    pub fn encode_peer(envelope: &PeerEnvelope) -> Bytes {
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let mut frame = Vec::new();
        ringkv_wire::encode_peer_into(&mut builder, envelope, &mut frame)
            .expect("the simulator's envelopes are within the protocol's limits");
        Bytes::from(frame)
    }
}

/// Fault rates of the links, fixed for a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkFaults {
    /// Chance that a message is lost.
    pub loss: f64,
    /// Chance that a message arrives twice.
    pub duplication: f64,
    /// Delays are drawn from `1..=delay_ms_max`.
    pub delay_ms_max: u64,
}

/// The links of the cluster.
pub struct Network {
    faults: LinkFaults,
    /// Directed links cut now: `(from, to)`.
    cut: BTreeSet<(u16, u16)>,
}

impl Network {
    /// Links with `faults` and no partition.
    pub fn new(faults: LinkFaults) -> Self {
        Network { faults, cut: BTreeSet::new() }
    }

    /// Changes the fault rates (the settle phase turns loss and duplication off).
    pub fn set_faults(&mut self, faults: LinkFaults) {
        self.faults = faults;
    }

    /// The delays of the copies of one message from `from` to `to` that will arrive (none when
    /// it is lost, two when it is duplicated). A message to oneself arrives once, at once.
    pub fn plan(&self, rng: &mut StdRng, from: u16, to: u16) -> Vec<u64> {
        if from == to {
            return vec![0];
        }
        if rng.random_bool(self.faults.loss) {
            return Vec::new();
        }
        let copies = if rng.random_bool(self.faults.duplication) { 2 } else { 1 };
        (0..copies).map(|_| rng.random_range(1..=self.faults.delay_ms_max.max(1))).collect()
    }

    /// Whether a message from `from` reaches `to` now.
    pub fn delivers(&self, from: u16, to: u16) -> bool {
        from == to || !self.cut.contains(&(from, to))
    }

    /// Cuts the links from every node of `sources` to every node of `destinations`.
    pub fn cut(&mut self, sources: &[u16], destinations: &[u16]) {
        for &from in sources {
            for &to in destinations.iter().filter(|&&to| to != from) {
                self.cut.insert((from, to));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether some link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn cuts_are_per_direction_and_heal() {
        let mut network = Network::new(LinkFaults { loss: 0.0, duplication: 0.0, delay_ms_max: 5 });
        network.cut(&[1], &[2, 3]);
        assert!(!network.delivers(1, 2) && !network.delivers(1, 3));
        assert!(network.delivers(2, 1) && network.delivers(1, 1));
        network.heal();
        assert!(network.delivers(1, 2));
    }

    #[test]
    fn loss_and_duplication_follow_the_rates() {
        let mut rng = StdRng::seed_from_u64(1);
        let lossy = Network::new(LinkFaults { loss: 1.0, duplication: 0.0, delay_ms_max: 5 });
        assert!(lossy.plan(&mut rng, 1, 2).is_empty());
        assert_eq!(lossy.plan(&mut rng, 2, 2), vec![0], "a node's messages to itself are never lost");
        let doubling = Network::new(LinkFaults { loss: 0.0, duplication: 1.0, delay_ms_max: 5 });
        let delays = doubling.plan(&mut rng, 1, 2);
        assert_eq!(delays.len(), 2);
        assert!(delays.iter().all(|delay| (1..=5).contains(delay)));
    }
}
