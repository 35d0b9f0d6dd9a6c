//! [`Healing`]: one simulated node's hinted handoff and anti-entropy, over the same sans-IO
//! parts the shard runs (`TictacTree`, `Exchange`, `HintBook`), as `shard/src/cluster/healing.rs`
//! runs them.
//!
//! ```text
//!  every write applied ─▶ tree of its range: leaf ^= h(key, old) ^ h(key, new)
//!  Output::Hint / replica down at write ─▶ HintBook::admit ─▶ queue ─(replay event, budget)─▶ Replicate
//!  anti-entropy event ─▶ one Exchange per (range, other replica up) ─▶ TreeRequest / KeysRequest
//!                     ─▶ push: Replicate; pull: Read, applied through the replica path
//! ```
//!
//! Simplified against the shard: hints live in memory only (a crash loses them; anti-entropy
//! repairs what they held) and are replayed without waiting for acknowledgements.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use futures_executor::block_on;
use ringkv_replication::anti_entropy::{answer_tree, Exchange, ExchangeLimits, ExchangeReport, Step};
use ringkv_replication::hints::{HintBook, HintSettings};
use ringkv_replication::tictac::{TictacTree, TokenRange};
use ringkv_storage::disk::memory::MemDisk;
use ringkv_storage::{Engine, ScanRange};
use ringkv_wire::peer::{KeyList, PeerEntry, PeerErrorCode, PeerFailure, PeerMessage};
use ringkv_wire::token::token;

/// Healing requests carry ids with this bit set, so their answers go to [`Healing`].
pub const HEALING_REQUEST_BIT: u64 = 1 << 63;
/// Pulls (reads of a peer's entry) carry this bit too, beside [`HEALING_REQUEST_BIT`].
pub const PULL_REQUEST_BIT: u64 = 1 << 62;
/// An exchange without an answer this long is abandoned (its messages were lost).
pub const EXCHANGE_TIMEOUT_MS: u64 = 5_000;
/// Pulls waiting at once per node; more are left for the next round.
const PULLS_PENDING_MAX: usize = 4096;

/// The hint settings of simulated nodes: small bounds, so runs reach them.
pub const HINT_SETTINGS: HintSettings = HintSettings {
    shard_bytes_max: 64 << 10,
    destination_bytes_max: 32 << 10,
    max_hint_window_ms: 60_000,
    tombstone_grace_ms: 10 * 24 * 3_600_000,
    replay_bytes_per_s: 64 << 10,
};

/// The scans covering tokens `first..=last`, wrapping past the top when `last < first`.
fn token_scans(first: u64, last: u64) -> Vec<ScanRange> {
    let after = |token: u64| token.checked_add(1);
    if first <= last {
        vec![ScanRange::tokens(first, after(last))]
    } else {
        vec![ScanRange::tokens(first, None), ScanRange::tokens(0, after(last))]
    }
}

/// Every entry of the scans, as (key, version), over the engines of every shard of the node:
/// in each scan's token order, as one engine returns them.
fn scan_versions(engines: &[Engine<MemDisk>], scans: Vec<ScanRange>) -> Result<Vec<(Bytes, u64)>, String> {
    let mut keys = Vec::new();
    for scan in scans {
        let mut found = Vec::new();
        for engine in engines {
            let mut next = scan.clone();
            loop {
                let page = block_on(engine.scan(&next, 1024, 0, true)).map_err(|error| error.to_string())?;
                found.extend(page.entries.into_iter().map(|entry| (entry.key, entry.entry.version)));
                match page.next {
                    Some(position) => next = scan.after(position),
                    None => break,
                }
            }
        }
        // The shards own disjoint token ranges: merged, their entries go back in token order.
        if engines.len() > 1 {
            found.sort_by(|(a, _), (b, _)| (token(a), a).cmp(&(token(b), b)));
        }
        keys.extend(found);
    }
    Ok(keys)
}

/// One exchange in flight.
pub struct Running {
    pub peer: u16,
    pub exchange: Exchange,
    pub started_ms: u64,
}

/// What the driver must send for healing.
pub enum Send {
    /// A request to `to` with id `request_id`.
    Request { to: u16, request_id: u64, message: PeerMessage },
}

/// A node's healing state.
pub struct Healing {
    node_id: u16,
    /// Every ring range by end token, with its replicas and, when this node is one, its tree.
    ranges: Vec<(TokenRange, Vec<u16>, Option<TictacTree>)>,
    /// Per range (as `ranges`): when a round last found it equal on every other replica (its
    /// start, simulated ms), 0 if never; and the replicas found equal in the current round.
    repaired_at_ms: Vec<u64>,
    clean_peers: Vec<BTreeSet<u16>>,
    round_started_ms: u64,
    pub book: HintBook,
    pub hints: BTreeMap<u16, VecDeque<(Bytes, PeerEntry, u64)>>,
    pub exchanges: BTreeMap<u64, Running>,
    /// Pulls waiting for the peer's entry: request id → key.
    pub pulls: BTreeMap<u64, Bytes>,
    next_id: u64,
    /// Keys repaired and exchanges failed, since the start.
    pub repaired: u64,
    pub failed: u64,
    /// Exchanges finished that left something (incomplete, failed or repaired).
    pub unclean: u64,
}

impl Healing {
    /// Trees for the ranges `node_id` replicates, built from a scan of its `engines`.
    pub fn new(
        node_id: u16,
        ranges: &[(TokenRange, Vec<u16>)],
        engines: &[Engine<MemDisk>],
    ) -> Result<Self, String> {
        let mut tracked: Vec<(TokenRange, Vec<u16>, Option<TictacTree>)> = Vec::new();
        for (range, replicas) in ranges {
            let tree = if replicas.contains(&node_id) {
                let mut tree = TictacTree::new(*range);
                for (key, version) in
                    scan_versions(engines, token_scans(range.start.wrapping_add(1), range.end))?
                {
                    tree.insert(token(&key), &key, version);
                }
                Some(tree)
            } else {
                None
            };
            tracked.push((*range, replicas.clone(), tree));
        }
        tracked.sort_by_key(|(range, _, _)| range.end);
        Ok(Healing {
            node_id,
            repaired_at_ms: vec![0; tracked.len()],
            clean_peers: vec![BTreeSet::new(); tracked.len()],
            round_started_ms: 0,
            ranges: tracked,
            book: HintBook::new(HINT_SETTINGS),
            hints: BTreeMap::new(),
            exchanges: BTreeMap::new(),
            pulls: BTreeMap::new(),
            next_id: 0,
            repaired: 0,
            failed: 0,
            unclean: 0,
        })
    }

    fn index_of(&self, token: u64) -> usize {
        let index = self.ranges.partition_point(|(range, _, _)| range.end < token);
        if index == self.ranges.len() {
            0
        } else {
            index
        }
    }

    /// Whether the range holding `token` was found equal on every other replica by a round
    /// started at or after `since_ms`.
    pub fn repaired_since(&self, token: u64, since_ms: u64) -> bool {
        self.repaired_at_ms[self.index_of(token)] >= since_ms
    }

    /// Whether every range this node replicates was found equal on every other replica by a
    /// round started at or after `since_ms`.
    pub fn all_repaired_since(&self, since_ms: u64) -> bool {
        self.ranges
            .iter()
            .zip(&self.repaired_at_ms)
            .filter(|((_, _, tree), _)| tree.is_some())
            .all(|(_, &repaired_at_ms)| repaired_at_ms >= since_ms)
    }

    /// Notes that the exchange of `range` with `peer` found nothing to repair; the range counts
    /// as repaired once every other replica did in the same round (the shard counts a range
    /// repaired once it has repaired what differed; this stricter form needs a round more).
    fn found_equal(&mut self, range: TokenRange, peer: u16) {
        let index = self.index_of(range.end);
        if self.ranges[index].0 != range {
            return;
        }
        self.clean_peers[index].insert(peer);
        let node_id = self.node_id;
        if self.ranges[index]
            .1
            .iter()
            .filter(|&&other| other != node_id)
            .all(|other| self.clean_peers[index].contains(other))
        {
            self.repaired_at_ms[index] = self.round_started_ms;
        }
    }

    fn tree(&self, range: TokenRange) -> Option<&TictacTree> {
        let (found, _, tree) = &self.ranges[self.index_of(range.end)];
        (*found == range).then_some(tree.as_ref()).flatten()
    }

    /// Records that `key` moved from version `old` to `new`.
    pub fn update(&mut self, key: &[u8], old: Option<u64>, new: u64) {
        let key_token = token(key);
        let index = self.index_of(key_token);
        if let Some(tree) = &mut self.ranges[index].2 {
            tree.update(key_token, key, old, Some(new));
        }
    }

    /// Answers a tree or keys request; `None` for any other message.
    pub fn answer(&self, message: &PeerMessage, engines: &[Engine<MemDisk>]) -> Option<PeerMessage> {
        match message {
            PeerMessage::TreeRequest { range_start, range_end, level, branches } => {
                let range = TokenRange { start: *range_start, end: *range_end };
                let result = match self.tree(range) {
                    Some(tree) => Ok(answer_tree(tree, *level, branches)),
                    None => Err(PeerFailure::new(PeerErrorCode::WrongShard, "no tree of that range")),
                };
                Some(PeerMessage::TreeReply { result })
            }
            PeerMessage::KeysRequest { range_start, range_end, segments } => {
                let range = TokenRange { start: *range_start, end: *range_end };
                let mut list = KeyList::default();
                let mut failure = None;
                'segments: for &segment in segments {
                    let Some((first, last)) = range.segment_tokens(usize::from(segment)) else { continue };
                    match scan_versions(engines, token_scans(first, last)) {
                        Ok(keys) => {
                            for (key, version) in keys {
                                if !list.has_room_for(key.len()) {
                                    list.truncated = true;
                                    break 'segments;
                                }
                                list.keys.push((key, version));
                            }
                        }
                        Err(error) => {
                            failure = Some(PeerFailure::new(PeerErrorCode::StorageFailed, error));
                            break;
                        }
                    }
                }
                Some(PeerMessage::KeysReply { result: failure.map_or(Ok(list), Err) })
            }
            _ => None,
        }
    }

    /// The local keys and versions of `segments` of `range`.
    pub fn list_local(
        range: TokenRange,
        segments: &[u16],
        engines: &[Engine<MemDisk>],
    ) -> Result<Vec<(Bytes, u64)>, String> {
        let mut keys = Vec::new();
        for &segment in segments {
            if let Some((first, last)) = range.segment_tokens(usize::from(segment)) {
                keys.extend(scan_versions(engines, token_scans(first, last))?);
            }
        }
        Ok(keys)
    }

    fn allocate(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id | HEALING_REQUEST_BIT
    }

    /// Starts a round: one exchange per range this node replicates and other replica in `up`.
    /// Exchanges left from an earlier round that timed out are abandoned and counted.
    pub fn start_round(&mut self, node_id: u16, up: &[u16], now_ms: u64) -> Vec<Send> {
        let stale: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, running)| now_ms.saturating_sub(running.started_ms) > EXCHANGE_TIMEOUT_MS)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            self.exchanges.remove(&id);
            self.failed += 1;
            self.unclean += 1;
        }
        if !self.exchanges.is_empty() {
            return Vec::new();
        }
        self.pulls.clear();
        self.round_started_ms = now_ms;
        self.clean_peers.iter_mut().for_each(BTreeSet::clear);
        let mut sends = Vec::new();
        let wanted: Vec<(TokenRange, Vec<u16>)> = self
            .ranges
            .iter()
            .filter(|(_, _, tree)| tree.is_some())
            .map(|(range, replicas, _)| (*range, replicas.clone()))
            .collect();
        for (range, replicas) in wanted {
            for &peer in replicas.iter().filter(|&&peer| peer != node_id && up.contains(&peer)) {
                let mut exchange = Exchange::new(range, ExchangeLimits::default());
                let Step::Ask(message) = exchange.start() else {
                    unreachable!("an exchange starts by asking")
                };
                let request_id = self.allocate();
                self.exchanges.insert(request_id, Running { peer, exchange, started_ms: now_ms });
                sends.push(Send::Request { to: peer, request_id, message });
            }
        }
        sends
    }

    /// Takes an answer to exchange `request_id` from `from`; returns what to send, and the keys
    /// to push (with the peer) once the exchange is over.
    pub fn on_answer(
        &mut self,
        request_id: u64,
        from: u16,
        answer: PeerMessage,
        engines: &[Engine<MemDisk>],
    ) -> (Vec<Send>, Vec<(u16, Bytes)>) {
        let Some(mut running) = self.exchanges.remove(&request_id) else { return (Vec::new(), Vec::new()) };
        if running.peer != from {
            self.exchanges.insert(request_id, running);
            return (Vec::new(), Vec::new());
        }
        let range = running.exchange.range();
        let Some(local) = self.tree(range).cloned() else {
            self.failed += 1;
            self.unclean += 1;
            return (Vec::new(), Vec::new());
        };
        let mut steps = running.exchange.on_answer(answer, &local);
        let mut sends = Vec::new();
        let mut pushes = Vec::new();
        let mut waiting = false;
        while let Some(step) = steps.pop() {
            match step {
                Step::Ask(message) | Step::Confirm(message) => {
                    sends.push(Send::Request { to: from, request_id, message });
                    waiting = true;
                }
                Step::ListLocal { segments } => match Self::list_local(range, &segments, engines) {
                    Ok(keys) => steps.extend(running.exchange.on_local_keys(keys)),
                    Err(_) => {
                        self.failed += 1;
                        self.unclean += 1;
                        return (sends, pushes);
                    }
                },
                Step::Done(report) => {
                    if !report.incomplete {
                        self.found_equal(range, from);
                    }
                    self.finish(&report, 0);
                }
                Step::Failed(_) => {
                    self.failed += 1;
                    self.unclean += 1;
                }
                Step::Repair { push, pull, report } => {
                    self.finish(&report, push.len() + pull.len());
                    pushes.extend(push.into_iter().map(|key| (from, key)));
                    for key in pull {
                        if self.pulls.len() >= PULLS_PENDING_MAX {
                            break;
                        }
                        let pull_id = self.allocate() | PULL_REQUEST_BIT;
                        self.pulls.insert(pull_id, key.clone());
                        sends.push(Send::Request {
                            to: from,
                            request_id: pull_id,
                            message: PeerMessage::Read { key, digest_only: false },
                        });
                    }
                }
            }
        }
        if waiting {
            self.exchanges.insert(request_id, running);
        }
        (sends, pushes)
    }

    fn finish(&mut self, report: &ExchangeReport, repaired: usize) {
        self.repaired += repaired as u64;
        if repaired > 0 || report.incomplete {
            self.unclean += 1;
        }
    }
}
