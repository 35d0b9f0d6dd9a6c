//! [`Exchange`]: one anti-entropy exchange of one token range with one peer replica, as a state
//! machine without I/O; and [`answer_tree`], the peer's side.
//!
//! ```text
//!  start ─▶ Ask TreeRequest(Root) ─▶ equal? ─▶ Done (clean: 8 bytes exchanged)
//!           Ask TreeRequest(Branches) ─▶ differing branches (at most branches_max)
//!           Ask TreeRequest(Segments of them) ─▶ differing segments S1
//!           Confirm TreeRequest(Segments) (after a pause) ─▶ S2; keep S1 ∩ S2
//!           Ask KeysRequest(S) + ListLocal(S) ─▶ per key, the newer side wins:
//!           Repair { push: keys the peer lacks or holds older, pull: keys this side does }
//! ```
//!
//! Comparing twice and keeping the segments that differed both times ignores writes still in
//! flight: a write that reached one replica a moment before the other shows up in one
//! comparison, not in a later one (Riak's tictac exchange repeats and intersects the same way).
//! What an exchange leaves (beyond `branches_max` or `segments_max`, a truncated key list, a
//! repair that failed) is found by the next one: exchanges are periodic, and each one makes
//! progress.
//!
//! The driver owns the trees, the engine and the link: it sends what [`Step::Ask`] and
//! [`Step::Confirm`] carry, lists local keys for [`Step::ListLocal`], and runs
//! [`Step::Repair`] (push: replicate the local entry to the peer; pull: read the peer's entry
//! and apply it here, the engine keeping the higher version).

use bytes::Bytes;
use ringkv_wire::peer::{KeyList, PeerFailure, PeerMessage, TreeLevel};

use crate::tictac::{differing, TictacTree, TokenRange, BRANCHES, SEGMENTS, SEGMENTS_PER_BRANCH};

/// Bounds of one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeLimits {
    /// Differing branches whose segments one exchange compares.
    pub branches_max: usize,
    /// Differing segments whose keys one exchange lists.
    pub segments_max: usize,
}

impl Default for ExchangeLimits {
    fn default() -> Self {
        ExchangeLimits { branches_max: 64, segments_max: 1024 }
    }
}

/// What an exchange found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExchangeReport {
    /// Segments whose hashes differed in both comparisons.
    pub segments_differing: usize,
    /// Keys listed by both sides.
    pub keys_compared: usize,
    /// Keys the peer lacks or holds at an older version.
    pub pushed: usize,
    /// Keys this side lacks or holds at an older version.
    pub pulled: usize,
    /// The peer's key list stopped early, or differences were left for the next exchange.
    pub incomplete: bool,
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this request to the peer now; feed its answer to [`Exchange::on_answer`].
    Ask(PeerMessage),
    /// Send this request after the settle pause (so writes in flight land), then as `Ask`.
    Confirm(PeerMessage),
    /// List the local keys and versions of these segments (tombstones included) and feed them
    /// to [`Exchange::on_local_keys`].
    ListLocal { segments: Vec<u16> },
    /// Repair these keys, then the exchange is over.
    Repair { push: Vec<Bytes>, pull: Vec<Bytes>, report: ExchangeReport },
    /// The exchange is over with nothing to repair.
    Done(ExchangeReport),
    /// The peer refused or answered out of turn; the exchange is over.
    Failed(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Root,
    Branches,
    Segments { branches: Vec<u16>, more_branches: bool },
    Confirm { branches: Vec<u16>, first: Vec<usize>, more_branches: bool },
    Keys { remote: Option<KeyList>, local: Option<Vec<(Bytes, u64)>>, report: ExchangeReport },
    Over,
}

/// One exchange of one range's tree with one peer.
#[derive(Debug)]
pub struct Exchange {
    range: TokenRange,
    limits: ExchangeLimits,
    phase: Phase,
}

impl Exchange {
    /// An exchange of `range`; call [`Exchange::start`].
    pub fn new(range: TokenRange, limits: ExchangeLimits) -> Self {
        Exchange { range, limits, phase: Phase::Root }
    }

    /// The range compared.
    pub fn range(&self) -> TokenRange {
        self.range
    }

    fn tree_request(&self, level: TreeLevel, branches: Vec<u16>) -> PeerMessage {
        PeerMessage::TreeRequest { range_start: self.range.start, range_end: self.range.end, level, branches }
    }

    /// The first request: the peer's root.
    pub fn start(&mut self) -> Step {
        self.phase = Phase::Root;
        Step::Ask(self.tree_request(TreeLevel::Root, Vec::new()))
    }

    fn fail(&mut self, reason: String) -> Vec<Step> {
        self.phase = Phase::Over;
        vec![Step::Failed(reason)]
    }

    /// Takes the peer's answer to the last request, comparing with `local`, this side's tree of
    /// the range as it is now.
    pub fn on_answer(&mut self, answer: PeerMessage, local: &TictacTree) -> Vec<Step> {
        assert_eq!(local.range(), self.range, "compared with the tree of another range");
        match (std::mem::replace(&mut self.phase, Phase::Over), answer) {
            (
                _,
                PeerMessage::TreeReply { result: Err(failure) }
                | PeerMessage::KeysReply { result: Err(failure) },
            ) => self.fail(describe(&failure)),
            (Phase::Root, PeerMessage::TreeReply { result: Ok(hashes) }) => {
                let [root] = hashes[..] else {
                    return self.fail(format!("{} hashes for a root", hashes.len()));
                };
                if root == local.root() {
                    return vec![Step::Done(ExchangeReport::default())];
                }
                self.phase = Phase::Branches;
                vec![Step::Ask(self.tree_request(TreeLevel::Branches, Vec::new()))]
            }
            (Phase::Branches, PeerMessage::TreeReply { result: Ok(hashes) }) => {
                if hashes.len() != BRANCHES {
                    return self.fail(format!("{} hashes for the branches", hashes.len()));
                }
                let found = differing(local.branches(), &hashes);
                if found.is_empty() {
                    // The roots differed only while a write was in flight.
                    return vec![Step::Done(ExchangeReport::default())];
                }
                let branches: Vec<u16> =
                    found.iter().take(self.limits.branches_max).map(|&branch| branch as u16).collect();
                let more_branches = found.len() > branches.len();
                let request = self.tree_request(TreeLevel::Segments, branches.clone());
                self.phase = Phase::Segments { branches, more_branches };
                vec![Step::Ask(request)]
            }
            (Phase::Segments { branches, more_branches }, PeerMessage::TreeReply { result: Ok(hashes) }) => {
                if hashes.len() != branches.len() * SEGMENTS_PER_BRANCH {
                    return self.fail(format!("{} hashes for {} branches", hashes.len(), branches.len()));
                }
                let listed: Vec<usize> = branches.iter().map(|&branch| usize::from(branch)).collect();
                let first = local.differing_segments(&listed, &hashes);
                if first.is_empty() {
                    return vec![Step::Done(ExchangeReport {
                        incomplete: more_branches,
                        ..ExchangeReport::default()
                    })];
                }
                let request = self.tree_request(TreeLevel::Segments, branches.clone());
                self.phase = Phase::Confirm { branches, first, more_branches };
                vec![Step::Confirm(request)]
            }
            (
                Phase::Confirm { branches, first, more_branches },
                PeerMessage::TreeReply { result: Ok(hashes) },
            ) => {
                if hashes.len() != branches.len() * SEGMENTS_PER_BRANCH {
                    return self.fail(format!("{} hashes for {} branches", hashes.len(), branches.len()));
                }
                let listed: Vec<usize> = branches.iter().map(|&branch| usize::from(branch)).collect();
                let second = local.differing_segments(&listed, &hashes);
                let both: Vec<usize> = first.into_iter().filter(|segment| second.contains(segment)).collect();
                if both.is_empty() {
                    return vec![Step::Done(ExchangeReport {
                        incomplete: more_branches,
                        ..ExchangeReport::default()
                    })];
                }
                let chosen: Vec<u16> =
                    both.iter().take(self.limits.segments_max).map(|&segment| segment as u16).collect();
                debug_assert!(chosen.iter().all(|&segment| usize::from(segment) < SEGMENTS));
                let report = ExchangeReport {
                    segments_differing: both.len(),
                    incomplete: more_branches || both.len() > chosen.len(),
                    ..ExchangeReport::default()
                };
                self.phase = Phase::Keys { remote: None, local: None, report };
                vec![
                    Step::Ask(PeerMessage::KeysRequest {
                        range_start: self.range.start,
                        range_end: self.range.end,
                        segments: chosen.clone(),
                    }),
                    Step::ListLocal { segments: chosen },
                ]
            }
            (Phase::Keys { local, report, .. }, PeerMessage::KeysReply { result: Ok(list) }) => {
                self.phase = Phase::Keys { remote: Some(list), local, report };
                self.try_finish()
            }
            (phase, answer) => {
                let reason = format!("an answer out of turn ({answer:?}) in phase {phase:?}");
                self.fail(reason)
            }
        }
    }

    /// Takes this side's keys and versions of the segments of [`Step::ListLocal`].
    pub fn on_local_keys(&mut self, keys: Vec<(Bytes, u64)>) -> Vec<Step> {
        match &mut self.phase {
            Phase::Keys { local, .. } => {
                *local = Some(keys);
                self.try_finish()
            }
            _ => Vec::new(),
        }
    }

    fn try_finish(&mut self) -> Vec<Step> {
        let Phase::Keys { remote: Some(_), local: Some(_), .. } = &self.phase else { return Vec::new() };
        let Phase::Keys { remote: Some(remote), local: Some(local), mut report } =
            std::mem::replace(&mut self.phase, Phase::Over)
        else {
            unreachable!("checked above")
        };
        let (push, pull) = reconcile(local, &remote);
        report.keys_compared = remote.keys.len();
        report.pushed = push.len();
        report.pulled = pull.len();
        report.incomplete |= remote.truncated;
        if push.is_empty() && pull.is_empty() {
            return vec![Step::Done(report)];
        }
        vec![Step::Repair { push, pull, report }]
    }
}

/// Which keys go which way: the higher version wins. When the peer's list was truncated, keys
/// only this side holds past the peer's last listed key are left for the next exchange, since
/// the peer may hold them too.
fn reconcile(mut local: Vec<(Bytes, u64)>, remote: &KeyList) -> (Vec<Bytes>, Vec<Bytes>) {
    use std::collections::HashMap;
    let theirs: HashMap<&Bytes, u64> = remote.keys.iter().map(|(key, version)| (key, *version)).collect();
    local.sort_unstable();
    local.dedup_by(|later, earlier| {
        later.0 == earlier.0 && {
            earlier.1 = earlier.1.max(later.1);
            true
        }
    });
    let mine: HashMap<&Bytes, u64> = local.iter().map(|(key, version)| (key, *version)).collect();
    let mut push = Vec::new();
    let mut pull = Vec::new();
    for (key, version) in &local {
        match theirs.get(key) {
            Some(their_version) if their_version >= version => {}
            Some(_) => push.push(key.clone()),
            None if !remote.truncated => push.push(key.clone()),
            None => {}
        }
    }
    for (key, version) in &remote.keys {
        match mine.get(key) {
            Some(my_version) if my_version >= version => {}
            _ => pull.push(key.clone()),
        }
    }
    pull.sort_unstable();
    pull.dedup();
    (push, pull)
}

fn describe(failure: &PeerFailure) -> String {
    format!("the peer refused: {:?}: {}", failure.code, failure.message)
}

/// The peer's side of a [`PeerMessage::TreeRequest`]: the hashes of `tree` at `level`.
pub fn answer_tree(tree: &TictacTree, level: TreeLevel, branches: &[u16]) -> Vec<u64> {
    match level {
        TreeLevel::Root => vec![tree.root()],
        TreeLevel::Branches => tree.branches().to_vec(),
        TreeLevel::Segments => branches
            .iter()
            .filter(|&&branch| usize::from(branch) < BRANCHES)
            .flat_map(|&branch| tree.branch_segments(usize::from(branch)).iter().copied())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_wire::peer::PeerErrorCode;
    use ringkv_wire::token::token;
    use std::collections::BTreeMap;

    const RANGE: TokenRange = TokenRange { start: 0, end: 0 };

    /// One replica of the range: its keys with versions, and its tree kept current.
    struct Replica {
        keys: BTreeMap<Bytes, u64>,
        tree: TictacTree,
    }

    impl Replica {
        fn new() -> Self {
            Replica { keys: BTreeMap::new(), tree: TictacTree::new(RANGE) }
        }

        fn write(&mut self, key: &Bytes, version: u64) {
            let old = self.keys.get(key).copied();
            if old.is_some_and(|old| old >= version) {
                return;
            }
            self.keys.insert(key.clone(), version);
            self.tree.update(token(key), key, old, Some(version));
        }

        fn answer(&self, request: &PeerMessage) -> PeerMessage {
            match request {
                PeerMessage::TreeRequest { level, branches, .. } => {
                    PeerMessage::TreeReply { result: Ok(answer_tree(&self.tree, *level, branches)) }
                }
                PeerMessage::KeysRequest { segments, .. } => PeerMessage::KeysReply {
                    result: Ok(KeyList { keys: self.list(segments), truncated: false }),
                },
                other => panic!("not an anti-entropy request: {other:?}"),
            }
        }

        fn list(&self, segments: &[u16]) -> Vec<(Bytes, u64)> {
            self.keys
                .iter()
                .filter(|(key, _)| segments.contains(&(RANGE.segment_of(token(key)) as u16)))
                .map(|(key, version)| (key.clone(), *version))
                .collect()
        }
    }

    fn key(index: u32) -> Bytes {
        Bytes::from(format!("key-{index}"))
    }

    /// Runs an exchange from `mine` with `theirs`, calling `between` before the confirmation.
    fn run_exchange(mine: &Replica, theirs: &mut Replica, between: impl FnMut(&mut Replica)) -> Step {
        exchange_with(ExchangeLimits { branches_max: 64, segments_max: 4096 }, mine, theirs, between)
    }

    fn exchange_with(
        limits: ExchangeLimits,
        mine: &Replica,
        theirs: &mut Replica,
        mut between: impl FnMut(&mut Replica),
    ) -> Step {
        let mut exchange = Exchange::new(RANGE, limits);
        let mut steps = vec![exchange.start()];
        loop {
            let mut next = Vec::new();
            for step in steps {
                match step {
                    Step::Ask(request) => {
                        next.extend(exchange.on_answer(theirs.answer(&request), &mine.tree))
                    }
                    Step::Confirm(request) => {
                        between(theirs);
                        next.extend(exchange.on_answer(theirs.answer(&request), &mine.tree));
                    }
                    Step::ListLocal { segments } => next.extend(exchange.on_local_keys(mine.list(&segments))),
                    finished => return finished,
                }
            }
            steps = next;
        }
    }

    #[test]
    fn equal_replicas_compare_roots_only() {
        let mut mine = Replica::new();
        let mut theirs = Replica::new();
        for index in 0..1000 {
            mine.write(&key(index), 5);
            theirs.write(&key(index), 5);
        }
        let mut exchange = Exchange::new(RANGE, ExchangeLimits::default());
        let Step::Ask(request) = exchange.start() else { panic!("asks first") };
        assert_eq!(
            exchange.on_answer(theirs.answer(&request), &mine.tree),
            vec![Step::Done(ExchangeReport::default())]
        );
        assert_eq!(run_exchange(&mine, &mut theirs, |_| {}), Step::Done(ExchangeReport::default()));
    }

    #[test]
    fn the_newer_side_wins_each_differing_key() {
        let mut mine = Replica::new();
        let mut theirs = Replica::new();
        for index in 0..2000 {
            mine.write(&key(index), 5);
            theirs.write(&key(index), 5);
        }
        mine.write(&key(3), 9); // newer here: push
        theirs.write(&key(4), 9); // newer there: pull
        mine.write(&key(5000), 1); // only here: push
        theirs.write(&key(6000), 1); // only there: pull
        let Step::Repair { mut push, mut pull, report } = run_exchange(&mine, &mut theirs, |_| {}) else {
            panic!("differences must be repaired")
        };
        push.sort();
        pull.sort();
        assert_eq!(push, vec![key(3), key(5000)]);
        assert_eq!(pull, vec![key(4), key(6000)]);
        assert_eq!((report.pushed, report.pulled), (2, 2));
        assert!(report.segments_differing <= 4 && report.segments_differing >= 1);
        assert!(!report.incomplete);
        // After the repair both sides hold the same trees.
        for key in &push {
            let version = mine.keys[key];
            theirs.write(key, version);
        }
        for key in &pull {
            let version = theirs.keys[key];
            mine.write(key, version);
        }
        assert_eq!(mine.tree, theirs.tree);
        assert_eq!(run_exchange(&mine, &mut theirs, |_| {}), Step::Done(ExchangeReport::default()));
    }

    #[test]
    fn a_difference_gone_by_the_confirmation_is_ignored() {
        let mut mine = Replica::new();
        let mut theirs = Replica::new();
        for index in 0..100 {
            mine.write(&key(index), 5);
            theirs.write(&key(index), 5);
        }
        // A write in flight: applied here, not yet there; it lands there before the confirmation.
        mine.write(&key(7), 8);
        let landed = run_exchange(&mine, &mut theirs, |theirs| theirs.write(&key(7), 8));
        assert_eq!(landed, Step::Done(ExchangeReport::default()));
    }

    #[test]
    fn a_refusal_ends_the_exchange() {
        let mine = Replica::new();
        let mut exchange = Exchange::new(RANGE, ExchangeLimits::default());
        exchange.start();
        let failure = PeerFailure::new(PeerErrorCode::WrongShard, "not mine");
        let steps = exchange.on_answer(PeerMessage::TreeReply { result: Err(failure) }, &mine.tree);
        assert!(matches!(&steps[..], [Step::Failed(reason)] if reason.contains("WrongShard")));
        // Anything later is out of turn.
        let late = exchange.on_answer(PeerMessage::TreeReply { result: Ok(vec![1]) }, &mine.tree);
        assert!(matches!(&late[..], [Step::Failed(_)]));
    }

    #[test]
    fn limits_leave_the_rest_for_the_next_exchange() {
        let mut mine = Replica::new();
        let mut theirs = Replica::new();
        for index in 0..5000 {
            mine.write(&key(index), 1);
        }
        let limits = ExchangeLimits { branches_max: 2, segments_max: 10 };
        let Step::Repair { push, pull, report } = exchange_with(limits, &mine, &mut theirs, |_| {}) else {
            panic!("repairs some")
        };
        assert!(report.incomplete);
        assert!(pull.is_empty());
        // Two branches of 64 segments compared, the empty ones equal on both sides.
        assert!(report.segments_differing > 10 && report.segments_differing <= 128);
        assert!(!push.is_empty() && push.len() < 100);
    }
}
