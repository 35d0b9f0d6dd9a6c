//! Counters incremented by compare-and-swap during a chaos run, and their checker.
//!
//! Some of the load's operations increment a counter (`cas0`, `cas1`): a read at QUORUM, then a
//! compare-and-swap from the version read to the count read plus one. Each value is
//! `COUNT/TAG`, the tag unique to the swap, so the general checkers can tell every write apart.
//! The simulator sees every proposal on its network and checks swaps exactly; here only what the
//! clients were told is known, and linearizability shows in the counts:
//!
//! ```text
//!  swaps told Written ─▶ no two wrote the same count (none won from a state another replaced)
//!                     ─▶ ordered by version, their counts rise
//!  the final read     ─▶ count ≥ every written count, and
//!                        written ≤ count ≤ written + swaps whose outcome is unknown
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use ringkv_sim::history::{History, Kind, Operation, Outcome};
use ringkv_wire::peer::{PeerEntry, PeerValue};

/// Counters the load increments.
pub const COUNTERS: usize = 2;

/// Share of the load's operations that are increments (a read, then a swap), in percent.
pub const INCREMENT_PERCENT: u32 = 15;

/// Name of counter `index`.
pub fn counter_name(index: usize) -> Bytes {
    Bytes::from(format!("cas{index}"))
}

/// Whether `key` is a counter's.
pub fn is_counter(key: &[u8]) -> bool {
    key.starts_with(b"cas")
}

/// The value an increment to `count` writes, tagged with `tag`.
pub fn value(count: u64, tag: &str) -> Bytes {
    Bytes::from(format!("{count}/{tag}"))
}

/// The count a counter's value holds; `None` when it is not one.
pub fn count_of(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    text.split_once('/')?.0.parse().ok()
}

/// How the increments ended, over every counter: written, mismatched, unknown, failed.
pub fn outcomes(history: &History) -> (usize, usize, usize, usize) {
    let mut counts = (0, 0, 0, 0);
    for op in history.operations.iter().filter(|op| is_increment(op)) {
        match op.outcome {
            Outcome::Written => counts.0 += 1,
            Outcome::Mismatch { .. } => counts.1 += 1,
            Outcome::Unknown(_) => counts.2 += 1,
            _ => counts.3 += 1,
        }
    }
    counts
}

fn is_increment(op: &Operation) -> bool {
    op.client.is_some() && is_counter(&op.key) && matches!(op.kind, Kind::Put { .. })
}

/// Violations of the counters' linearizability (see the module's notes).
pub fn check(history: &History) -> Vec<String> {
    let mut by_key: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    for op in history.operations.iter().filter(|op| is_counter(&op.key)) {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut violations = Vec::new();
    for (key, operations) in by_key {
        let name = String::from_utf8_lossy(key);
        let count = |op: &Operation| match &op.kind {
            Kind::Put { value, .. } => count_of(value),
            _ => None,
        };
        let mut written: Vec<(u64, u64)> = operations
            .iter()
            .filter(|op| is_increment(op) && op.outcome == Outcome::Written)
            .filter_map(|op| Some((op.version?, count(op)?)))
            .collect();
        let unknown = operations
            .iter()
            .filter(|op| is_increment(op) && matches!(op.outcome, Outcome::Unknown(_)))
            .count();
        written.sort_unstable();
        let mut counts: Vec<u64> = written.iter().map(|(_, count)| *count).collect();
        if written.windows(2).any(|pair| pair[0].1 >= pair[1].1) {
            violations.push(format!("{name}: counts written do not rise with their versions: {written:?}"));
        }
        counts.sort_unstable();
        if let Some(twice) = counts.windows(2).find(|pair| pair[0] == pair[1]) {
            violations.push(format!(
                "{name}: two increments both wrote {}: one won from a replaced state",
                twice[0]
            ));
        }
        let final_read = operations
            .iter()
            .rev()
            .find(|op| op.client.is_none() && matches!(op.outcome, Outcome::Read(_) | Outcome::Absent));
        let Some(final_read) = final_read else {
            violations.push(format!("{name}: no final read"));
            continue;
        };
        let final_count = match &final_read.outcome {
            Outcome::Read(Some(PeerEntry { value: PeerValue::Live { data, .. }, .. })) => count_of(data),
            _ => Some(0),
        };
        let Some(final_count) = final_count else {
            violations.push(format!("{name}: the final read holds no count"));
            continue;
        };
        let (low, high) = (written.len() as u64, (written.len() + unknown) as u64);
        if !(low..=high).contains(&final_count) {
            violations.push(format!(
                "{name}: counts {final_count} after {low} increments written and {unknown} unknown"
            ));
        }
        if counts.last().is_some_and(|&highest| highest > final_count) {
            violations.push(format!(
                "{name}: counts {final_count}, below the written {}",
                counts[counts.len() - 1]
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_wire::Consistency;

    fn op(client: Option<usize>, kind: Kind, version: Option<u64>, outcome: Outcome) -> Operation {
        Operation {
            client,
            node: 1,
            key: counter_name(0),
            kind,
            consistency: Consistency::Quorum,
            replicas: 3,
            required: 2,
            version,
            invoked_step: 0,
            completed_step: Some(1),
            outcome,
        }
    }

    fn increment(count: u64, version: Option<u64>, outcome: Outcome) -> Operation {
        let kind = Kind::Put { value: value(count, &format!("t{count}-{version:?}")), ttl_ms: None };
        op(Some(0), kind, version, outcome)
    }

    fn final_read(count: u64, version: u64) -> Operation {
        let entry =
            PeerEntry { version, value: PeerValue::Live { data: value(count, "x"), expires_at_ms: None } };
        op(None, Kind::Get, None, Outcome::Read(Some(entry)))
    }

    #[test]
    fn counts_that_add_up_pass_and_a_count_won_twice_fails() {
        let good = History {
            operations: vec![
                increment(1, Some(10), Outcome::Written),
                increment(2, Some(20), Outcome::Written),
                increment(3, None, Outcome::Unknown("timeout".into())),
                increment(3, None, Outcome::Mismatch { current_version: Some(30) }),
                increment(3, Some(30), Outcome::Written),
                final_read(3, 30),
            ],
        };
        assert_eq!(check(&good), Vec::<String>::new());
        assert_eq!(outcomes(&good), (3, 1, 1, 0));
        let twice = History {
            operations: vec![
                increment(1, Some(10), Outcome::Written),
                increment(1, Some(11), Outcome::Written),
                final_read(1, 11),
            ],
        };
        let found = check(&twice);
        assert!(found.iter().any(|violation| violation.contains("both wrote 1")), "{found:?}");
        assert!(found.iter().any(|violation| violation.contains("do not rise")), "{found:?}");
        let lost = History {
            operations: vec![
                increment(1, Some(10), Outcome::Written),
                increment(2, Some(20), Outcome::Written),
                final_read(1, 10),
            ],
        };
        assert!(
            check(&lost).iter().any(|violation| violation.contains("counts 1 after 2")),
            "{:?}",
            check(&lost)
        );
        assert_eq!(count_of(b"12/c1-3"), Some(12));
        assert_eq!(count_of(b"oops"), None);
    }
}
