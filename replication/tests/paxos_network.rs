//! Compare-and-swap across three replicas through an in-memory, seeded network: several
//! proposers race swaps of one key while messages arrive in a random order, duplicated or
//! lost. The acceptor and proposer logic are the ones the shard runs ([`AcceptorState`],
//! [`PaxosCas`]).
//!
//! What must hold, whatever the schedule: no two swaps succeed from the same state (the
//! compare-and-swap's whole promise), every successful swap compared against a version some
//! swap proposed, and every version a swap was told it wrote is one it proposed.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use rand_foca::rngs::StdRng;
use rand_foca::{RngExt, SeedableRng};
use ringkv_replication::paxos::{AcceptorState, CasOutcome, CasRequest, CasStep, PaxosCas};
use ringkv_replication::Target;
use ringkv_wire::peer::{EntryHead, PeerEntry, PeerMessage};
use ringkv_wire::Expected;

const ACCEPTORS: usize = 3;
const QUORUM: usize = 2;
const PROPOSERS: usize = 3;
const NODE_ID_BITS: u32 = 10;

#[derive(Default)]
struct Acceptor {
    state: AcceptorState,
    current: Option<PeerEntry>,
}

/// What the network carries: a request to an acceptor, or an answer to a proposer's step.
enum Message {
    Request { proposer: usize, step: u64, acceptor: usize, message: PeerMessage },
    Answer { proposer: usize, step: u64, acceptor: usize, message: PeerMessage },
    Commit { proposer: usize, step: u64, acceptor: usize, ballot: u64, based_on: u64, entry: PeerEntry },
    Committed { proposer: usize, step: u64, acceptor: usize },
}

struct Proposer {
    /// The swap under way, with the step its answers belong to.
    cas: Option<PaxosCas>,
    step: u64,
    expected: Expected,
    /// Ballots drawn: a counter above the node id bits, unique per proposer.
    counter: u64,
    /// The acceptors that acknowledged the commit under way.
    commits: HashSet<usize>,
    swaps_left: usize,
    /// Retries waiting for their ballot (the floor it must clear).
    retry_above: Option<u64>,
}

#[derive(Default)]
struct History {
    swapped: Vec<(u64, Expected)>,
    proposed: HashSet<u64>,
    mismatches: usize,
    failures: usize,
}

struct World {
    acceptors: Vec<Acceptor>,
    proposers: Vec<Proposer>,
    network: Vec<Message>,
    rng: StdRng,
    loss: f64,
    duplication: f64,
    history: History,
}

impl World {
    fn new(seed: u64, loss: f64, duplication: f64, swaps: usize) -> Self {
        World {
            acceptors: (0..ACCEPTORS).map(|_| Acceptor::default()).collect(),
            proposers: (0..PROPOSERS)
                .map(|_| Proposer {
                    cas: None,
                    step: 0,
                    expected: Expected::Absent,
                    counter: 0,
                    commits: HashSet::new(),
                    swaps_left: swaps,
                    retry_above: None,
                })
                .collect(),
            network: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            loss,
            duplication,
            history: History::default(),
        }
    }

    fn ballot(&mut self, proposer: usize, above: u64) -> u64 {
        let state = &mut self.proposers[proposer];
        state.counter = state.counter.max(above >> NODE_ID_BITS) + 1;
        (state.counter << NODE_ID_BITS) | (proposer as u64 + 1)
    }

    fn send(&mut self, message: Message) {
        if self.rng.random_bool(self.loss) {
            return;
        }
        if self.rng.random_bool(self.duplication) {
            self.network.push(clone(&message));
        }
        self.network.push(message);
    }

    fn start_swap(&mut self, proposer: usize) {
        let expected = self.proposers[proposer].expected;
        let request = CasRequest {
            key: Bytes::from_static(b"counter"),
            expected,
            data: Bytes::from(format!("{expected:?}")),
            expires_at_ms: None,
        };
        self.proposers[proposer].cas = Some(PaxosCas::new(request, ACCEPTORS, QUORUM));
        let ballot = self.ballot(proposer, 0);
        let step = self.proposers[proposer].cas.as_mut().unwrap().begin(ballot);
        self.run(proposer, step);
    }

    /// Carries out a proposer's step.
    fn run(&mut self, proposer: usize, step: CasStep) {
        self.proposers[proposer].step += 1;
        let step_id = self.proposers[proposer].step;
        match step {
            CasStep::Send(message) => {
                if let PeerMessage::PaxosPropose { entry, .. } = &message {
                    self.history.proposed.insert(entry.version);
                }
                for acceptor in 0..ACCEPTORS {
                    let message = message.clone();
                    self.send(Message::Request { proposer, step: step_id, acceptor, message });
                }
            }
            CasStep::Commit { ballot, based_on, entry } => {
                self.proposers[proposer].commits.clear();
                for acceptor in 0..ACCEPTORS {
                    let entry = entry.clone();
                    self.send(Message::Commit { proposer, step: step_id, acceptor, ballot, based_on, entry });
                }
            }
            CasStep::Retry { above, .. } => self.proposers[proposer].retry_above = Some(above),
            CasStep::Answer(answer) => {
                let state = &mut self.proposers[proposer];
                state.cas = None;
                state.swaps_left -= 1;
                match answer {
                    Ok(CasOutcome::Swapped { version }) => {
                        self.history.swapped.push((version, state.expected));
                        state.expected = Expected::Version(version);
                    }
                    Ok(CasOutcome::Mismatch { current_version }) => {
                        assert_ne!(current_version.map(Expected::Version), Some(state.expected));
                        self.history.mismatches += 1;
                        state.expected = current_version.map_or(Expected::Absent, Expected::Version);
                    }
                    Err(_) => self.history.failures += 1,
                }
            }
        }
    }

    fn deliver(&mut self, message: Message) {
        match message {
            Message::Request { proposer, step, acceptor, message } => {
                let answer = self.accept(acceptor, message);
                self.send(Message::Answer { proposer, step, acceptor, message: answer });
            }
            Message::Commit { proposer, step, acceptor, ballot, based_on, entry } => {
                self.acceptors[acceptor].state.commit(ballot, entry.version, based_on);
                let current = &mut self.acceptors[acceptor].current;
                if current.as_ref().is_none_or(|current| current.version < entry.version) {
                    *current = Some(entry);
                }
                self.send(Message::Committed { proposer, step, acceptor });
            }
            Message::Answer { proposer, step, acceptor, message } => {
                if step != self.proposers[proposer].step {
                    return;
                }
                let Some(cas) = self.proposers[proposer].cas.as_mut() else { return };
                let from = Target { node_id: acceptor as u16 + 1, shard: 0 };
                if let Some(next) = cas.on_answer(from, message, 0) {
                    self.run(proposer, next);
                }
            }
            Message::Committed { proposer, step, acceptor } => {
                let state = &mut self.proposers[proposer];
                if step != state.step || state.cas.is_none() {
                    return;
                }
                if state.commits.insert(acceptor) && state.commits.len() == QUORUM {
                    let next = state.cas.as_mut().unwrap().on_committed(Ok(()));
                    self.run(proposer, next);
                }
            }
        }
    }

    fn accept(&mut self, acceptor: usize, message: PeerMessage) -> PeerMessage {
        let acceptor = &mut self.acceptors[acceptor];
        match message {
            PeerMessage::PaxosPrepare { ballot, .. } => {
                let granted = acceptor.state.prepare(ballot);
                let current = acceptor.current.as_ref().map(EntryHead::of);
                PeerMessage::PaxosPromise { result: Ok(acceptor.state.promise(granted, current)) }
            }
            PeerMessage::PaxosPropose { ballot, based_on, entry, .. } => {
                let accepted = acceptor.state.propose(ballot, based_on, entry);
                PeerMessage::PaxosAccept { result: Ok(acceptor.state.acceptance(accepted)) }
            }
            other => panic!("not a Paxos request: {other:?}"),
        }
    }

    /// Runs until every proposer has made all its swaps. A proposer whose step has nothing left
    /// in flight times out, as its deadline would.
    fn run_to_end(&mut self) {
        for proposer in 0..PROPOSERS {
            self.start_swap(proposer);
        }
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 1_000_000, "the run did not end");
            if !self.network.is_empty() && !self.rng.random_bool(0.05) {
                let index = self.rng.random_range(0..self.network.len());
                let message = self.network.swap_remove(index);
                self.deliver(message);
                continue;
            }
            // Retries draw their ballot now; stalled steps time out; idle proposers start anew.
            let proposer = self.rng.random_range(0..PROPOSERS);
            if let Some(above) = self.proposers[proposer].retry_above.take() {
                let ballot = self.ballot(proposer, above);
                let step = self.proposers[proposer].cas.as_mut().unwrap().begin(ballot);
                self.run(proposer, step);
            } else if self.proposers[proposer].cas.is_some() && !self.in_flight(proposer) {
                let step = self.proposers[proposer].cas.as_ref().unwrap().on_deadline(1_000);
                self.run(proposer, step);
            } else if self.proposers[proposer].cas.is_none() && self.proposers[proposer].swaps_left > 0 {
                self.start_swap(proposer);
            } else if self.network.is_empty()
                && self.proposers.iter().all(|state| state.cas.is_none() && state.swaps_left == 0)
            {
                return;
            }
        }
    }

    fn in_flight(&self, proposer: usize) -> bool {
        let step = self.proposers[proposer].step;
        self.network.iter().any(|message| match message {
            Message::Request { proposer: p, step: s, .. }
            | Message::Answer { proposer: p, step: s, .. }
            | Message::Commit { proposer: p, step: s, .. }
            | Message::Committed { proposer: p, step: s, .. } => *p == proposer && *s == step,
        })
    }

    fn check(&self) {
        let mut from: BTreeMap<String, u64> = BTreeMap::new();
        for (version, expected) in &self.history.swapped {
            assert!(
                self.history.proposed.contains(version),
                "swap told of version {version} it never proposed"
            );
            if let Some(earlier) = from.insert(format!("{expected:?}"), *version) {
                panic!("two swaps from the same state {expected:?}: versions {earlier} and {version}");
            }
            if let Expected::Version(base) = expected {
                assert!(self.history.proposed.contains(base), "swap from version {base}, never proposed");
                assert!(base < version, "swap from {base} to the lower {version}");
            }
        }
    }
}

fn clone(message: &Message) -> Message {
    match message {
        Message::Request { proposer, step, acceptor, message } => Message::Request {
            proposer: *proposer,
            step: *step,
            acceptor: *acceptor,
            message: message.clone(),
        },
        Message::Answer { proposer, step, acceptor, message } => Message::Answer {
            proposer: *proposer,
            step: *step,
            acceptor: *acceptor,
            message: message.clone(),
        },
        Message::Commit { proposer, step, acceptor, ballot, based_on, entry } => Message::Commit {
            proposer: *proposer,
            step: *step,
            acceptor: *acceptor,
            ballot: *ballot,
            based_on: *based_on,
            entry: entry.clone(),
        },
        Message::Committed { proposer, step, acceptor } => {
            Message::Committed { proposer: *proposer, step: *step, acceptor: *acceptor }
        }
    }
}

#[test]
fn racing_swaps_over_a_reliable_network_each_win_from_a_distinct_state() {
    for seed in 0..200 {
        let mut world = World::new(seed, 0.0, 0.0, 20);
        world.run_to_end();
        world.check();
        assert!(world.history.swapped.len() >= 10, "seed {seed}: {} swaps", world.history.swapped.len());
    }
}

#[test]
fn racing_swaps_over_a_lossy_duplicating_network_never_win_twice_from_one_state() {
    let mut swapped = 0;
    for seed in 0..300 {
        let mut world = World::new(seed, 0.1, 0.1, 15);
        world.run_to_end();
        world.check();
        swapped += world.history.swapped.len();
    }
    assert!(swapped > 300 * 5, "{swapped} swaps in 300 runs: the faults should slow swaps, not stop them");
}
