//! SWIM membership of 3–4 nodes over an in-memory datagram network with simulated time: joining
//! through a seed, failure detection of a silent node, a restart coming back, a second node
//! claiming a node id that is taken, two halves that started apart finding each other, and how
//! often a node announces itself alone and in company.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rand_foca::rngs::StdRng;
use rand_foca::SeedableRng;
use ringkv_replication::membership::MEMBERSHIP_PACKET_BYTES_MAX;
use ringkv_replication::{default_tokens, Membership, MembershipEvent, MembershipTiming, NodeIdentity};

fn address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn identity(node_id: u16, port: u16, generation: u64) -> NodeIdentity {
    NodeIdentity {
        node_id,
        generation,
        peer_address: address(port),
        client_address: address(port - 1000),
        shard_port_base: port - 999,
        shards: 1,
        vnodes_per_shard: 16,
        tokens: default_tokens(node_id, 16),
    }
}

struct Network {
    members: BTreeMap<SocketAddr, Membership<StdRng>>,
    /// Addresses whose process is stopped: datagrams to them vanish and they never tick.
    stopped: Vec<SocketAddr>,
    /// One side of a partition: datagrams between it and the rest vanish.
    partition: Vec<SocketAddr>,
    now_ms: u64,
    events: Vec<(SocketAddr, MembershipEvent)>,
    /// Every datagram sent: (time, from, to).
    sent: Vec<(u64, SocketAddr, SocketAddr)>,
}

impl Network {
    fn new() -> Self {
        Network {
            members: BTreeMap::new(),
            stopped: Vec::new(),
            partition: Vec::new(),
            now_ms: 0,
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn start(&mut self, identity: NodeIdentity, seeds: &[SocketAddr]) {
        let address = identity.peer_address;
        let rng = StdRng::seed_from_u64(u64::from(identity.node_id) * 31 + identity.generation);
        let mut membership = Membership::new(identity, MembershipTiming::default(), rng, self.now_ms);
        membership.join(seeds, self.now_ms);
        self.stopped.retain(|&stopped| stopped != address);
        self.members.insert(address, membership);
    }

    /// Runs for `duration_ms` of simulated time, delivering datagrams at once.
    fn run(&mut self, duration_ms: u64) {
        let end = self.now_ms + duration_ms;
        while self.now_ms < end {
            self.now_ms += 10;
            let mut datagrams = Vec::new();
            for (&address, membership) in self.members.iter_mut() {
                if self.stopped.contains(&address) {
                    continue;
                }
                membership.tick(self.now_ms);
                datagrams.extend(membership.drain_outbox().map(|(to, data)| (address, to, data)));
                self.events.extend(membership.drain_events().map(|event| (address, event)));
            }
            while let Some((from, to, data)) = datagrams.pop() {
                assert!(data.len() <= MEMBERSHIP_PACKET_BYTES_MAX);
                self.sent.push((self.now_ms, from, to));
                if self.stopped.contains(&to)
                    || self.partition.contains(&from) != self.partition.contains(&to)
                {
                    continue;
                }
                let Some(membership) = self.members.get_mut(&to) else { continue };
                membership.handle_data(&data, self.now_ms);
                datagrams.extend(membership.drain_outbox().map(|(next, data)| (to, next, data)));
                self.events.extend(membership.drain_events().map(|event| (to, event)));
            }
        }
    }

    fn up_at(&self, port: u16) -> Vec<u16> {
        self.members[&address(port)].up().keys().copied().collect()
    }

    /// The times of the datagrams `from` sent to `to` in `[start_ms, end_ms)`.
    fn sent_between(&self, from: u16, to: u16, start_ms: u64, end_ms: u64) -> Vec<u64> {
        self.sent
            .iter()
            .filter(|&&(at, sender, receiver)| {
                sender == address(from) && receiver == address(to) && (start_ms..end_ms).contains(&at)
            })
            .map(|&(at, _, _)| at)
            .collect()
    }
}

#[test]
fn nodes_join_through_a_seed_and_see_each_other_with_their_tokens() {
    let mut network = Network::new();
    network.start(identity(1, 8001, 1), &[]);
    network.start(identity(2, 8002, 1), &[address(8001)]);
    network.start(identity(3, 8003, 1), &[address(8001)]);
    network.run(5_000);
    for port in [8001, 8002, 8003] {
        assert_eq!(network.up_at(port), vec![1, 2, 3], "view of {port}");
    }
    let seen = &network.members[&address(8003)].up()[&2];
    assert_eq!(seen, &identity(2, 8002, 1), "identities travel whole, tokens included");
}

#[test]
fn a_silent_node_is_declared_down_within_five_seconds_and_comes_back_after_a_restart() {
    let mut network = Network::new();
    network.start(identity(1, 8001, 1), &[]);
    network.start(identity(2, 8002, 1), &[address(8001)]);
    network.start(identity(3, 8003, 1), &[address(8001)]);
    network.run(3_000);
    assert_eq!(network.up_at(8001), vec![1, 2, 3]);
    network.stopped.push(address(8003));
    network.events.clear();
    network.run(5_000);
    assert_eq!(network.up_at(8001), vec![1, 2]);
    assert_eq!(network.up_at(8002), vec![1, 2]);
    assert!(network.events.iter().any(|(at, event)| *at == address(8001)
        && matches!(event, MembershipEvent::Down(identity) if identity.node_id == 3)));
    // A restart at the same address with a new generation replaces the down identity.
    network.start(identity(3, 8003, 2), &[address(8001)]);
    network.run(5_000);
    assert_eq!(network.up_at(8001), vec![1, 2, 3]);
    assert_eq!(network.members[&address(8002)].up()[&3].generation, 2);
}

#[test]
fn a_second_node_claiming_a_taken_id_is_refused() {
    let mut network = Network::new();
    network.start(identity(1, 8001, 1), &[]);
    network.start(identity(2, 8002, 1), &[address(8001)]);
    network.run(2_000);
    // Another process at another address claims node id 2, later (a higher generation).
    network.start(identity(2, 8009, 5), &[address(8001)]);
    network.run(3_000);
    assert_eq!(
        network.members[&address(8001)].up()[&2].peer_address,
        address(8002),
        "the first holder keeps it"
    );
    assert!(
        network
            .events
            .iter()
            .any(|(at, event)| *at == address(8009) && matches!(event, MembershipEvent::Refused { .. })),
        "the newcomer learns it must not serve: {:?}",
        network.events
    );
    assert!(network
        .events
        .iter()
        .any(|(at, event)| *at == address(8001) && matches!(event, MembershipEvent::Conflict { .. })));
}

#[test]
fn halves_that_started_apart_join_once_the_partition_heals() {
    // Each node starts while cut off from the other half, so it never sees the other side up
    // and nobody is alone afterwards: only the seeds name the other half.
    let mut network = Network::new();
    let everyone = [address(8001), address(8002), address(8003), address(8004)];
    network.partition = vec![address(8001), address(8002)];
    for (node_id, port) in [(1, 8001), (2, 8002), (3, 8003), (4, 8004)] {
        network.start(identity(node_id, port, 1), &everyone);
    }
    network.run(5_000);
    assert_eq!(network.up_at(8001), vec![1, 2]);
    assert_eq!(network.up_at(8003), vec![3, 4]);
    network.partition.clear();
    network.run(10_000);
    for port in [8001, 8002, 8003, 8004] {
        assert_eq!(network.up_at(port), vec![1, 2, 3, 4], "view of {port}");
    }
}

#[test]
fn a_lone_node_announces_each_second_and_every_two_seconds_once_it_has_company() {
    // Node 3 is a seed that never starts: every datagram to it is an announce.
    let mut network = Network::new();
    network.start(identity(1, 8001, 1), &[address(8002), address(8003)]);
    network.run(4_500);
    assert_eq!(network.sent_between(8001, 8003, 0, 4_500), vec![10, 1_000, 2_000, 3_000, 4_000]);

    network.start(identity(2, 8002, 1), &[address(8001)]);
    network.run(2_000);
    assert_eq!(network.up_at(8001), vec![1, 2]);
    let (start, end) = (network.now_ms, network.now_ms + 10_000);
    network.run(10_000);
    let announces = network.sent_between(8001, 8003, start, end);
    assert_eq!(announces.len(), 5, "{announces:?}");
    assert!(announces.windows(2).all(|pair| pair[1] - pair[0] == 2_000), "{announces:?}");

    // Node 2 stops: once node 1 sees it down it is alone again, and announces within a second
    // (at once if its last announce was a second ago or more), then each second.
    network.stopped.push(address(8002));
    while network.up_at(8001) != vec![1] {
        assert!(network.now_ms < end + 10_000, "node 2 never seen down");
        network.run(10);
    }
    let down_at = network.now_ms;
    network.run(3_500);
    let announces = network.sent_between(8001, 8003, down_at, down_at + 3_500);
    assert!(announces.len() >= 3 && announces[0] <= down_at + 1_000, "down at {down_at}: {announces:?}");
    assert!(announces.windows(2).all(|pair| pair[1] - pair[0] == 1_000), "{announces:?}");
}
