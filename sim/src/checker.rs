//! The checkers, run over a run's history and its final state once everything is healed,
//! restarted, settled and read back at ALL.
//!
//! 0. Every operation ends: acknowledged, failed or unknown, never left pending.
//! 1. No acknowledged write is lost: each key's final entry is at least as new as its newest
//!    acknowledged write, and is exactly some write that may have been applied (acknowledged or
//!    unknown; never one refused before anything was sent, never a value nobody wrote).
//! 2. Convergence: every replica of a key holds the same entry as the final read, and nodes that
//!    are not replicas of it hold nothing.
//! 3. No deleted key comes back: a key whose newest acknowledged write is a delete is read as
//!    that tombstone, or as a newer write that may have been applied.
//! 4. W + R > N: a read whose quorum intersects an acknowledged write's (`required` of both
//!    summing above N), invoked after that write completed, returns that version or a newer one.
//!    Replicas only ever move to higher versions and acknowledged writes are synced, so this holds
//!    whatever else is written or pending meanwhile. Every value any read returns must also have
//!    been written by some operation that may have been applied.
//! 5. Nothing a read was shown is taken back: the key settles on the version a client's read
//!    returned or a newer one (or on no live value that a delete or an expiry explains). A node
//!    tells a read only what is durable on it, so no crash can lose what a client has seen.
//!
//! 6. Compare-and-swaps ([`check_swaps`]), on keys only swaps write: no two swaps succeed from
//!    the same state; a swap told it wrote a version proposed that version with its own value,
//!    above the version it swapped from; successes follow real time (one that began after
//!    another ended wrote a higher version); every entry read back, the one the key settled on
//!    included, is a version some swap proposed, with that swap's value; a mismatch never names
//!    the state the swap expected. A swap is recorded as a put of its value without
//!    TTL (its version known once it succeeds), so checkers 0–5 judge it as the write it is: a
//!    success is an acknowledged write that must not be lost and that quorum reads must see, a
//!    swap of unknown outcome may have written, and a failed one or a mismatch must have
//!    written nothing. None of checkers 0–5 assumes more of a write than that.
//!
//! The same checkers judge the histories of real processes under real faults
//! (`ringkv-bench chaos`), recorded through the client. A client learns less than the simulator:
//! a read that finds no live value says nothing of the tombstone behind it
//! ([`Outcome::Absent`]), and a write that timed out has no version. There, a key read as absent
//! keeps an acknowledged put only if a delete or an expiring put that may have been applied, and
//! is not known to be older, explains it; a write of unknown version matches a read by its value,
//! which no other write shares.

use std::collections::BTreeMap;

use bytes::Bytes;
use ringkv_wire::peer::{PeerEntry, PeerValue};

use crate::history::{describe, History, Kind, Operation, Outcome, Swap, Swaps, Version};
use ringkv_wire::Expected;

/// What the cluster holds at the end: per node, per key, the stored entry.
pub type FinalState = BTreeMap<u16, BTreeMap<Bytes, Option<PeerEntry>>>;

/// What a read saw.
#[derive(Clone)]
enum Seen {
    /// The entry the replicas hold, tombstones included (the simulator reads these).
    Entry(Option<PeerEntry>),
    /// No live value, of unknown version (what a client sees of a tombstone or an expiry).
    Absent,
}

impl Seen {
    /// What operation `op` read, if it is a read that answered.
    fn of(op: &Operation) -> Option<Seen> {
        match &op.outcome {
            Outcome::Read(entry) => Some(Seen::Entry(entry.clone())),
            Outcome::Absent => Some(Seen::Absent),
            _ => None,
        }
    }

    /// The entry replicas should hold after this read: for an absent read, nothing live, which
    /// a client-side reader of each replica also sees as nothing.
    fn entry(&self) -> Option<PeerEntry> {
        match self {
            Seen::Entry(entry) => entry.clone(),
            Seen::Absent => None,
        }
    }
}

/// The final read at ALL of a key: the last read of the settle phase that answered, and what it
/// saw.
fn final_read<'a>(operations: &[&'a Operation]) -> Option<(&'a Operation, Seen)> {
    operations.iter().rev().find_map(|op| {
        if op.client.is_none() {
            Seen::of(op).map(|seen| (*op, seen))
        } else {
            None
        }
    })
}

/// Whether `read`, which found no live value, can be explained after `write`: `write` itself
/// hides the value (a delete, an expiring put), or some write that may have been applied, was
/// invoked before the read completed (a read cannot see a later write), hides the value, and is
/// not known to be older (a write that timed out has no known version).
fn hidden_at_or_after(operations: &[&Operation], write: &Operation, read: &Operation) -> bool {
    let read_completed = read.completed_step.unwrap_or(u64::MAX);
    write.hides()
        || operations.iter().any(|op| {
            op.may_have_applied()
                && op.hides()
                && op.invoked_step < read_completed
                && op.version.is_none_or(|version| Some(version) >= write.version)
        })
}

/// Every violation found, one sentence each; empty when the run is correct.
pub fn check(history: &History, replicas: &BTreeMap<Bytes, Vec<u16>>, stored: &FinalState) -> Vec<String> {
    let mut violations: Vec<String> = history
        .operations
        .iter()
        .enumerate()
        .filter(|(_, op)| op.outcome == Outcome::Pending)
        .map(|(index, op)| format!("#{index} [{op}] never completed"))
        .collect();
    // One pass to group the history by key: a scale run has a million keys.
    let mut by_key: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    for op in &history.operations {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, key_replicas) in replicas {
        let name = String::from_utf8_lossy(key);
        let operations: Vec<&Operation> = by_key.remove(key).unwrap_or_default();
        let Some((final_op, final_seen)) = final_read(&operations) else {
            violations.push(format!("{name}: no read at ALL succeeded after the cluster settled"));
            continue;
        };
        let acknowledged = operations
            .iter()
            .filter(|op| op.is_write() && op.outcome == Outcome::Written)
            .max_by_key(|op| op.version);
        let final_entry = final_seen.entry();
        match &final_seen {
            Seen::Entry(final_entry) => {
                check_no_lost_write(&name, &operations, acknowledged.copied(), final_entry, &mut violations);
            }
            Seen::Absent => {
                if let Some(write) =
                    acknowledged.filter(|write| !hidden_at_or_after(&operations, write, final_op))
                {
                    violations.push(format!(
                        "{name}: acknowledged write [{write}] lost: the cluster settled on no live value, \
                         and no delete or expiring write can explain it"
                    ));
                }
            }
        }
        check_convergence(&name, key, key_replicas, stored, &final_entry, &mut violations);
        if let (Some(delete), Seen::Entry(final_entry)) =
            (acknowledged.filter(|op| op.kind == Kind::Delete), &final_seen)
        {
            let stays_deleted = match final_entry {
                Some(PeerEntry { value: PeerValue::Tombstone { .. }, .. }) => true,
                Some(entry) => {
                    entry.version > delete.version.unwrap_or(0)
                        && operations.iter().any(|op| op.may_have_applied() && op.wrote(entry))
                }
                None => false,
            };
            if !stays_deleted {
                violations.push(format!(
                    "{name}: deleted by [{delete}], acknowledged, but came back as {}",
                    describe(final_entry)
                ));
            }
        }
        check_reads(&name, &operations, &mut violations);
        check_nothing_seen_is_lost(&name, &operations, &final_seen, &mut violations);
    }
    check_only_replicas_hold(replicas, stored, &mut violations);
    violations
}

/// No node outside a key's replicas holds it (keys outside `replicas` are not judged).
fn check_only_replicas_hold(
    replicas: &BTreeMap<Bytes, Vec<u16>>,
    stored: &FinalState,
    violations: &mut Vec<String>,
) {
    for (node, entries) in stored {
        for (key, held) in entries {
            let outsider = replicas.get(key).is_some_and(|key_replicas| !key_replicas.contains(node));
            if outsider && held.is_some() {
                let name = String::from_utf8_lossy(key);
                violations.push(format!("{name}: n{node} is not a replica yet holds {}", describe(held)));
            }
        }
    }
}

/// Acknowledged writes that the final read at ALL of their key does not reflect: versioned
/// above what the cluster settled on (Jepsen's lost elements of set-full). For a key settled on
/// no live value, the acknowledged puts that no delete or expiring write may explain. Keys
/// without a final read are not counted here ([`check`] reports them).
pub fn lost_acknowledged_writes(history: &History) -> usize {
    let mut by_key: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    for op in &history.operations {
        by_key.entry(&op.key).or_default().push(op);
    }
    by_key
        .values()
        .map(|operations| {
            let acknowledged = operations.iter().filter(|op| op.is_write() && op.outcome == Outcome::Written);
            match final_read(operations) {
                None => 0,
                Some((_, Seen::Entry(entry))) => {
                    let settled = entry.map(|entry| entry.version);
                    acknowledged.filter(|write| write.version > settled).count()
                }
                Some((final_op, Seen::Absent)) => {
                    acknowledged.filter(|write| !hidden_at_or_after(operations, write, final_op)).count()
                }
            }
        })
        .sum()
}

/// Acknowledged writes versioned below another acknowledged write of their key that completed
/// before they were invoked: acknowledged, yet silently superseded by an earlier write. Last-writer-wins with skewed clocks allows this (a node whose clock is behind has
/// not observed the newer version); it is counted, not judged.
pub fn real_time_inversions(history: &History) -> usize {
    let mut written: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    for op in history.operations.iter().filter(|op| op.is_write() && op.outcome == Outcome::Written) {
        written.entry(&op.key).or_default().push(op);
    }
    written
        .values()
        .map(|writes| {
            writes
                .iter()
                .filter(|second| {
                    writes.iter().any(|first| {
                        first.completed_step.is_some_and(|completed| completed < second.invoked_step)
                            && second.version < first.version
                    })
                })
                .count()
        })
        .sum()
}

fn check_no_lost_write(
    name: &str,
    operations: &[&Operation],
    acknowledged: Option<&Operation>,
    final_entry: &Option<PeerEntry>,
    violations: &mut Vec<String>,
) {
    let final_version = final_entry.as_ref().map(|entry| entry.version);
    if let Some(write) = acknowledged {
        if final_version < write.version {
            violations.push(format!(
                "{name}: acknowledged write [{write}] lost: the cluster settled on {}",
                describe(final_entry)
            ));
        }
    }
    if let Some(entry) = final_entry {
        if !operations.iter().any(|op| op.may_have_applied() && op.wrote(entry)) {
            violations
                .push(format!("{name}: settled on {}, which no applied write wrote", describe(final_entry)));
        }
    }
}

fn check_convergence(
    name: &str,
    key: &Bytes,
    key_replicas: &[u16],
    stored: &FinalState,
    final_entry: &Option<PeerEntry>,
    violations: &mut Vec<String>,
) {
    for node in key_replicas {
        let Some(entries) = stored.get(node) else { continue };
        let held = entries.get(key).cloned().flatten();
        if !same_state(&held, final_entry) {
            violations.push(format!(
                "{name}: replica n{node} holds {} but the read at ALL returned {}",
                describe(&held),
                describe(final_entry)
            ));
        }
    }
}

/// Whether two replicas' entries are the same state: equal, or one the other after compaction
/// turned an expired value into a tombstone of the same version, dead since its expiry.
fn same_state(left: &Option<PeerEntry>, right: &Option<PeerEntry>) -> bool {
    let compacted = |live: &PeerEntry, dead: &PeerEntry| match (&live.value, &dead.value) {
        (PeerValue::Live { expires_at_ms: Some(expiry), .. }, PeerValue::Tombstone { deleted_at_ms }) => {
            live.version == dead.version && expiry == deleted_at_ms
        }
        _ => false,
    };
    match (left, right) {
        (Some(left), Some(right)) => left == right || compacted(left, right) || compacted(right, left),
        (left, right) => left == right,
    }
}

fn check_reads(name: &str, operations: &[&Operation], violations: &mut Vec<String>) {
    for read in operations.iter().filter(|op| op.kind == Kind::Get) {
        let Some(seen) = Seen::of(read) else { continue };
        if let Seen::Entry(Some(entry)) = &seen {
            if !operations.iter().any(|op| op.may_have_applied() && op.wrote(entry)) {
                violations.push(format!(
                    "{name}: [{read}] returned {}, which no write wrote",
                    describe(&Some(entry.clone()))
                ));
            }
        }
        let newest_before = operations
            .iter()
            .filter(|write| {
                write.is_write()
                    && write.outcome == Outcome::Written
                    && write.completed_step.is_some_and(|completed| completed < read.invoked_step)
                    && write.required + read.required > read.replicas
            })
            .max_by_key(|write| write.version);
        let Some(write) = newest_before else { continue };
        let stale = match &seen {
            Seen::Entry(entry) => entry.as_ref().map(|entry| entry.version) < write.version,
            Seen::Absent => !hidden_at_or_after(operations, write, read),
        };
        if stale {
            let what = match &seen {
                Seen::Entry(entry) => describe(entry),
                Seen::Absent => "no live value".to_string(),
            };
            violations.push(format!(
                "{name}: [{read}] returned {what} after [{write}] was acknowledged (W + R > N)"
            ));
        }
    }
}

/// Checker 5: every entry a client's read returned is still reflected by what the key settled
/// on: that version or a newer one, or no live value that a delete or an expiring write (its
/// own, or another that may have been applied, not known to be older) explains.
fn check_nothing_seen_is_lost(
    name: &str,
    operations: &[&Operation],
    final_seen: &Seen,
    violations: &mut Vec<String>,
) {
    let settled_version = match final_seen {
        Seen::Entry(entry) => entry.as_ref().map(|entry| entry.version),
        Seen::Absent => None,
    };
    for read in operations.iter().filter(|op| op.kind == Kind::Get && op.client.is_some()) {
        let Some(Seen::Entry(Some(seen))) = Seen::of(read) else { continue };
        if settled_version >= Some(seen.version) {
            continue;
        }
        let settled_dead = match final_seen {
            Seen::Entry(Some(entry)) => matches!(entry.value, PeerValue::Tombstone { .. }),
            Seen::Entry(None) | Seen::Absent => true,
        };
        let expires = matches!(seen.value, PeerValue::Live { expires_at_ms: Some(_), .. });
        let hidden = || {
            operations.iter().any(|op| {
                op.may_have_applied()
                    && op.hides()
                    && op.version.is_none_or(|version| version >= seen.version)
            })
        };
        if settled_dead && (expires || hidden()) {
            continue;
        }
        let settled = match final_seen {
            Seen::Entry(entry) => describe(entry),
            Seen::Absent => "no live value".to_string(),
        };
        violations.push(format!(
            "{name}: [{read}] returned {}, but the key settled on {settled}: what a read was shown was taken back",
            describe(&Some(seen.clone()))
        ));
    }
}

/// How a run's compare-and-swaps ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapCounts {
    /// Answered as written.
    pub written: usize,
    /// Answered as a mismatch.
    pub mismatched: usize,
    /// Of unknown outcome: timed out, indeterminate, or unanswered (their coordinator crashed).
    pub indeterminate: usize,
    /// Of those, the unanswered.
    pub unanswered: usize,
    /// Refused before anything was sent, or by every replica before anything was proposed.
    pub failed: usize,
}

impl SwapCounts {
    /// Every swap counted.
    pub fn total(&self) -> usize {
        self.written + self.mismatched + self.indeterminate + self.failed
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &SwapCounts) {
        self.written += other.written;
        self.mismatched += other.mismatched;
        self.indeterminate += other.indeterminate;
        self.unanswered += other.unanswered;
        self.failed += other.failed;
    }
}

impl std::fmt::Display for SwapCounts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{} written, {} mismatched, {} indeterminate ({} unanswered), {} failed",
            self.written, self.mismatched, self.indeterminate, self.unanswered, self.failed
        )
    }
}

/// What the message of a coordinator that crashed says (see `Cluster::crash`).
pub const COORDINATOR_CRASHED: &str = "the coordinator crashed";

/// How the swaps of `history` ended.
pub fn swap_counts(history: &History, swaps: &Swaps) -> SwapCounts {
    let mut counts = SwapCounts::default();
    for index in swaps.swaps.keys() {
        match &history.operations[*index].outcome {
            Outcome::Written => counts.written += 1,
            Outcome::Mismatch { .. } => counts.mismatched += 1,
            Outcome::Unknown(why) => {
                counts.indeterminate += 1;
                if why == COORDINATOR_CRASHED {
                    counts.unanswered += 1;
                }
            }
            Outcome::Pending => {
                counts.indeterminate += 1;
                counts.unanswered += 1;
            }
            Outcome::Failed(_) | Outcome::Read(_) | Outcome::Absent => counts.failed += 1,
        }
    }
    counts
}

/// Checker 6: the compare-and-swaps, each key's judged on its own (`swaps` holds what each
/// asked and every entry proposed). Keys written by anything but swaps are not judged here.
pub fn check_swaps(history: &History, swaps: &Swaps) -> Vec<String> {
    let mut violations = Vec::new();
    for (key, version, first, second) in &swaps.conflicts {
        violations.push(format!(
            "{}: two proposals at {}: {} and {}",
            String::from_utf8_lossy(key),
            Version(*version),
            String::from_utf8_lossy(first),
            String::from_utf8_lossy(second)
        ));
    }
    let mut by_key: BTreeMap<&Bytes, Vec<(&Swap, &Operation)>> = BTreeMap::new();
    for swap in swaps.swaps.values() {
        let op = &history.operations[swap.index];
        by_key.entry(&op.key).or_default().push((swap, op));
    }
    for (key, key_swaps) in by_key {
        let name = String::from_utf8_lossy(key);
        let proposed = |version: u64| swaps.proposed.get(&(key.clone(), version));
        let written: Vec<(&Swap, &Operation)> =
            key_swaps.iter().copied().filter(|(_, op)| op.outcome == Outcome::Written).collect();
        // No two successes from one state: a swap writes a live value without TTL, with a version
        // no other write has, so the key is never in one state twice.
        let mut from: BTreeMap<Option<u64>, &Swap> = BTreeMap::new();
        for (swap, _) in &written {
            let state = match swap.expected {
                Expected::Absent => None,
                Expected::Version(version) => Some(version),
            };
            if let Some(earlier) = from.insert(state, swap) {
                violations
                    .push(format!("{name}: [{earlier}] and [{swap}] both succeeded from the same state"));
            }
        }
        for (swap, op) in &written {
            let Some(version) = op.version else {
                violations.push(format!("{name}: [{swap}] succeeded without a version"));
                continue;
            };
            match proposed(version) {
                Some(value) if *value == swap.value => {}
                Some(value) => violations.push(format!(
                    "{name}: [{swap}] was told it wrote {}, which was proposed with {}",
                    Version(version),
                    String::from_utf8_lossy(value)
                )),
                None => violations.push(format!(
                    "{name}: [{swap}] was told it wrote {}, which no swap proposed",
                    Version(version)
                )),
            }
            if let Expected::Version(base) = swap.expected {
                if base >= version {
                    violations.push(format!(
                        "{name}: [{swap}] wrote {}, not above the version it swapped from",
                        Version(version)
                    ));
                }
            }
            // Linearizable: a success that began after another ended comes after it.
            for (other, other_op) in &written {
                let after = other_op.completed_step.is_some_and(|completed| completed < op.invoked_step);
                if after && other_op.version >= op.version {
                    violations.push(format!(
                        "{name}: [{swap}] wrote {}, below or at the {} of [{other}], which succeeded before it began",
                        Version(version),
                        describe_version(other_op.version)
                    ));
                }
            }
        }
        for (swap, op) in &key_swaps {
            let Outcome::Mismatch { current_version } = op.outcome else { continue };
            let named = match swap.expected {
                Expected::Absent => current_version.is_none(),
                Expected::Version(version) => current_version == Some(version),
            };
            if named {
                violations.push(format!("{name}: [{swap}] answered a mismatch naming the state it expected"));
            }
        }
        // Every entry read back (by a client, or by the final read at ALL, which checker 1 holds
        // to every acknowledged write and checker 2 to every replica) is one swap's proposal.
        for read in history.operations.iter().filter(|op| op.key == *key && op.kind == Kind::Get) {
            let Outcome::Read(Some(entry)) = &read.outcome else { continue };
            let data = match &entry.value {
                PeerValue::Live { data, .. } => Some(data),
                PeerValue::Tombstone { .. } => None,
            };
            match (proposed(entry.version), data) {
                (Some(value), Some(data)) if value == data => {}
                (Some(value), _) => violations.push(format!(
                    "{name}: [{read}] returned {}, but {} was proposed with {}",
                    describe(&Some(entry.clone())),
                    Version(entry.version),
                    String::from_utf8_lossy(value)
                )),
                (None, _) => violations.push(format!(
                    "{name}: [{read}] returned {}, which no swap proposed",
                    describe(&Some(entry.clone()))
                )),
            }
        }
    }
    violations
}

fn describe_version(version: Option<u64>) -> String {
    version.map_or_else(|| "no version".to_string(), |version| Version(version).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_wire::Consistency;

    fn operation(kind: Kind, version: Option<u64>, steps: (u64, u64), outcome: Outcome) -> Operation {
        Operation {
            client: Some(0),
            node: 1,
            key: Bytes::from("k"),
            kind,
            consistency: Consistency::Quorum,
            replicas: 3,
            required: 2,
            version,
            invoked_step: steps.0,
            completed_step: Some(steps.1),
            outcome,
        }
    }

    fn live(version: u64, value: &str) -> Option<PeerEntry> {
        Some(PeerEntry {
            version,
            value: PeerValue::Live { data: Bytes::from(value.to_string()), expires_at_ms: None },
        })
    }

    fn run(operations: Vec<Operation>, stored_entry: Option<PeerEntry>) -> Vec<String> {
        let key = Bytes::from("k");
        let replicas = BTreeMap::from([(key.clone(), vec![1, 2, 3])]);
        let stored: FinalState =
            (1..=3).map(|node| (node, BTreeMap::from([(key.clone(), stored_entry.clone())]))).collect();
        check(&History { operations }, &replicas, &stored)
    }

    fn put(value: &str, version: u64, steps: (u64, u64), outcome: Outcome) -> Operation {
        operation(
            Kind::Put { value: Bytes::from(value.to_string()), ttl_ms: None },
            Some(version),
            steps,
            outcome,
        )
    }

    fn final_read(entry: Option<PeerEntry>) -> Operation {
        Operation { client: None, ..operation(Kind::Get, None, (100, 101), Outcome::Read(entry)) }
    }

    #[test]
    fn an_expired_value_compacted_into_a_tombstone_is_the_same_state() {
        let expiring = PeerEntry {
            version: 10,
            value: PeerValue::Live { data: Bytes::from("a"), expires_at_ms: Some(500) },
        };
        let compacted = PeerEntry { version: 10, value: PeerValue::Tombstone { deleted_at_ms: 500 } };
        assert!(same_state(&Some(expiring.clone()), &Some(compacted.clone())));
        assert!(same_state(&Some(compacted.clone()), &Some(expiring.clone())));
        let deleted_later = PeerEntry { version: 10, value: PeerValue::Tombstone { deleted_at_ms: 501 } };
        assert!(!same_state(&Some(expiring), &Some(deleted_later)));
        assert!(!same_state(&None, &Some(compacted)));
    }

    #[test]
    fn a_clean_history_passes() {
        let operations = vec![
            put("a", 10, (1, 2), Outcome::Written),
            put("b", 20, (3, 4), Outcome::Unknown("timeout".into())),
        ];
        let mut with_read = operations.clone();
        with_read.push(final_read(live(20, "b")));
        assert_eq!(run(with_read, live(20, "b")), Vec::<String>::new());
    }

    #[test]
    fn a_lost_acknowledged_write_is_found() {
        let operations = vec![
            put("a", 10, (1, 2), Outcome::Written),
            put("b", 20, (3, 4), Outcome::Written),
            final_read(live(10, "a")),
        ];
        let violations = run(operations, live(10, "a"));
        assert!(violations.iter().any(|violation| violation.contains("lost")), "{violations:?}");
    }

    #[test]
    fn a_stale_quorum_read_and_a_phantom_value_are_found() {
        let operations = vec![
            put("a", 10, (1, 2), Outcome::Written),
            operation(Kind::Get, None, (3, 4), Outcome::Read(None)),
            operation(Kind::Get, None, (5, 6), Outcome::Read(live(10, "zzz"))),
            final_read(live(10, "a")),
        ];
        let violations = run(operations, live(10, "a"));
        assert!(violations.iter().any(|violation| violation.contains("W + R > N")), "{violations:?}");
        assert!(violations.iter().any(|violation| violation.contains("no write wrote")), "{violations:?}");
    }

    #[test]
    fn a_value_a_read_was_shown_then_lost_is_found() {
        // A write of unknown outcome, read by a client, then gone from every replica.
        let unknown = put("b", 20, (3, 4), Outcome::Unknown("timeout".into()));
        let read = operation(Kind::Get, None, (5, 6), Outcome::Read(live(20, "b")));
        let operations = vec![put("a", 10, (1, 2), Outcome::Written), unknown.clone(), read.clone()];
        let mut lost = operations.clone();
        lost.push(final_read(live(10, "a")));
        let violations = run(lost, live(10, "a"));
        assert!(violations.iter().any(|violation| violation.contains("taken back")), "{violations:?}");
        // Kept, or overwritten by a newer write, it passes.
        let mut kept = operations.clone();
        kept.push(final_read(live(20, "b")));
        assert_eq!(run(kept, live(20, "b")), Vec::<String>::new());
        // Gone but explained by a delete that may have been applied after it, it passes too.
        let delete = operation(Kind::Delete, Some(30), (7, 8), Outcome::Unknown("timeout".into()));
        let tombstone = Some(PeerEntry { version: 30, value: PeerValue::Tombstone { deleted_at_ms: 9 } });
        let mut deleted = operations;
        deleted.extend([delete, final_read(tombstone.clone())]);
        assert_eq!(run(deleted, tombstone), Vec::<String>::new());
    }

    #[test]
    fn a_write_superseded_by_one_acknowledged_before_it_is_counted() {
        let operations = vec![
            put("early", 20, (1, 2), Outcome::Written),
            put("late", 10, (3, 4), Outcome::Written),
            put("overlapping", 5, (1, 4), Outcome::Written),
        ];
        assert_eq!(real_time_inversions(&History { operations }), 1);
    }

    #[test]
    fn an_absent_read_is_judged_by_the_deletes_that_may_explain_it() {
        let delete_unknown = operation(Kind::Delete, None, (5, 6), Outcome::Unknown("timeout".into()));
        let absent_final =
            Operation { client: None, ..operation(Kind::Get, None, (100, 101), Outcome::Absent) };
        let explained = vec![put("a", 10, (1, 2), Outcome::Written), delete_unknown, absent_final.clone()];
        assert_eq!(run(explained.clone(), None), Vec::<String>::new());
        assert_eq!(lost_acknowledged_writes(&History { operations: explained }), 0);
        let older_delete = operation(Kind::Delete, Some(5), (0, 1), Outcome::Written);
        let unexplained = vec![older_delete, put("a", 10, (1, 2), Outcome::Written), absent_final];
        let violations = run(unexplained.clone(), None);
        assert!(violations.iter().any(|violation| violation.contains("lost")), "{violations:?}");
        assert_eq!(lost_acknowledged_writes(&History { operations: unexplained }), 1);
        // A delete invoked only after a read completed cannot explain what the read saw.
        let late_delete = operation(Kind::Delete, Some(20), (7, 8), Outcome::Written);
        let early_absent = operation(Kind::Get, None, (5, 6), Outcome::Absent);
        let absent_final =
            Operation { client: None, ..operation(Kind::Get, None, (100, 101), Outcome::Absent) };
        let stale = vec![put("a", 10, (1, 2), Outcome::Written), early_absent, late_delete, absent_final];
        let violations = run(stale, None);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("W + R > N"), "{violations:?}");
    }

    #[test]
    fn a_write_of_unknown_version_matches_a_read_by_its_value() {
        let operations = vec![put("a", 10, (1, 2), Outcome::Written), {
            let mut unknown = put("b", 0, (3, 4), Outcome::Unknown("timeout".into()));
            unknown.version = None;
            unknown
        }];
        let mut with_read = operations.clone();
        with_read.push(final_read(live(20, "b")));
        assert_eq!(run(with_read, live(20, "b")), Vec::<String>::new());
        let mut phantom = operations;
        phantom.push(final_read(live(20, "c")));
        let violations = run(phantom, live(20, "c"));
        assert!(
            violations.iter().any(|violation| violation.contains("no applied write wrote")),
            "{violations:?}"
        );
    }

    #[test]
    fn a_resurrected_key_and_a_diverging_replica_are_found() {
        let delete = operation(Kind::Delete, Some(20), (3, 4), Outcome::Written);
        let operations = vec![put("a", 10, (1, 2), Outcome::Written), delete, final_read(live(10, "a"))];
        let violations = run(operations, live(10, "a"));
        assert!(violations.iter().any(|violation| violation.contains("came back")), "{violations:?}");
        let operations = vec![put("a", 10, (1, 2), Outcome::Written), final_read(live(10, "a"))];
        let violations = run(operations, None);
        assert!(
            violations.iter().any(|violation| violation.contains("replica n1 holds nothing")),
            "{violations:?}"
        );
    }

    fn swap_op(value: &str, version: Option<u64>, steps: (u64, u64), outcome: Outcome) -> Operation {
        let mut op = put(value, 0, steps, outcome);
        op.version = version;
        op
    }

    /// Swaps of key `k` from the states given, with the proposals they made.
    fn swaps(asked: &[(usize, Expected, &str)], proposals: &[(u64, &str)]) -> Swaps {
        let mut swaps = Swaps::default();
        for &(index, expected, value) in asked {
            swaps.swaps.insert(index, Swap { index, expected, value: Bytes::from(value.to_string()) });
        }
        for &(version, value) in proposals {
            swaps.proposed(&Bytes::from("k"), version, &Bytes::from(value.to_string()));
        }
        swaps
    }

    #[test]
    fn a_clean_chain_of_swaps_passes() {
        let operations = vec![
            swap_op("a", Some(10), (1, 2), Outcome::Written),
            swap_op("b", None, (3, 4), Outcome::Mismatch { current_version: Some(10) }),
            swap_op("c", None, (3, 6), Outcome::Unknown("timeout".into())),
            swap_op("d", Some(30), (7, 8), Outcome::Written),
            final_read(live(30, "d")),
        ];
        let asked = [
            (0, Expected::Absent, "a"),
            (1, Expected::Absent, "b"),
            (2, Expected::Version(10), "c"),
            (3, Expected::Version(20), "d"),
        ];
        let history = History { operations };
        let swaps = swaps(&asked, &[(10, "a"), (20, "c"), (30, "d")]);
        assert_eq!(check_swaps(&history, &swaps), Vec::<String>::new());
        let counts = swap_counts(&history, &swaps);
        assert_eq!((counts.written, counts.mismatched, counts.indeterminate, counts.failed), (2, 1, 1, 0));
    }

    #[test]
    fn two_successes_from_one_state_are_found() {
        let operations = vec![
            swap_op("a", Some(10), (1, 4), Outcome::Written),
            swap_op("b", Some(11), (2, 3), Outcome::Written),
            final_read(live(11, "b")),
        ];
        let asked = [(0, Expected::Absent, "a"), (1, Expected::Absent, "b")];
        let violations = check_swaps(&History { operations }, &swaps(&asked, &[(10, "a"), (11, "b")]));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("both succeeded from the same state"), "{violations:?}");
    }

    #[test]
    fn a_success_at_a_version_it_did_not_propose_is_found() {
        let operations = vec![swap_op("a", Some(10), (1, 2), Outcome::Written), final_read(live(10, "a"))];
        let asked = [(0, Expected::Absent, "a")];
        let violations = check_swaps(&History { operations: operations.clone() }, &swaps(&asked, &[]));
        assert!(
            violations.iter().any(|violation| violation.contains("which no swap proposed")),
            "{violations:?}"
        );
        let violations = check_swaps(&History { operations }, &swaps(&asked, &[(10, "z")]));
        assert!(violations.iter().any(|violation| violation.contains("proposed with z")), "{violations:?}");
    }

    #[test]
    fn successes_out_of_real_time_order_and_phantom_reads_are_found() {
        let operations = vec![
            swap_op("a", Some(20), (1, 2), Outcome::Written),
            swap_op("b", Some(15), (3, 4), Outcome::Written),
            operation(Kind::Get, None, (5, 6), Outcome::Read(live(20, "zzz"))),
            final_read(live(20, "a")),
        ];
        let asked = [(0, Expected::Absent, "a"), (1, Expected::Version(20), "b")];
        let violations = check_swaps(&History { operations }, &swaps(&asked, &[(20, "a"), (15, "b")]));
        assert!(
            violations.iter().any(|violation| violation.contains("succeeded before it began")),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|violation| violation.contains("not above the version")),
            "{violations:?}"
        );
        assert!(violations.iter().any(|violation| violation.contains("proposed with a")), "{violations:?}");
    }

    #[test]
    fn a_mismatch_naming_the_expected_state_is_found() {
        let operations = vec![
            swap_op("a", None, (1, 2), Outcome::Mismatch { current_version: Some(10) }),
            swap_op("b", None, (3, 4), Outcome::Mismatch { current_version: None }),
            swap_op("c", None, (5, 6), Outcome::Mismatch { current_version: Some(10) }),
        ];
        let asked = [(0, Expected::Version(10), "a"), (1, Expected::Absent, "b"), (2, Expected::Absent, "c")];
        let violations = check_swaps(&History { operations }, &swaps(&asked, &[]));
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations.iter().all(|violation| violation.contains("naming the state it expected")));
    }

    #[test]
    fn a_swap_is_judged_as_a_write_by_the_other_checkers() {
        // A success is an acknowledged write: settling below it loses it.
        let operations = vec![
            swap_op("a", Some(10), (1, 2), Outcome::Written),
            swap_op("b", Some(20), (3, 4), Outcome::Written),
            final_read(live(10, "a")),
        ];
        let violations = run(operations, live(10, "a"));
        assert!(violations.iter().any(|violation| violation.contains("lost")), "{violations:?}");
        // A mismatch wrote nothing: its value read back is a value no write wrote.
        let operations = vec![
            swap_op("a", None, (1, 2), Outcome::Mismatch { current_version: None }),
            final_read(live(10, "a")),
        ];
        let violations = run(operations, live(10, "a"));
        assert!(
            violations.iter().any(|violation| violation.contains("no applied write wrote")),
            "{violations:?}"
        );
    }
}
