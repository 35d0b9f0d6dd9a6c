//! A chaos run's figures and verdict: operations, acknowledged writes, lost writes (must be 0),
//! unknown outcomes, seconds to recover availability after the heal, and every violation the
//! checkers found.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringkv_client::Consistency;
use ringkv_sim::history::{History, Kind, Operation, Outcome};

/// The window of QUORUM operations that counts as "available again": one second in which a
/// write and a read succeeded and nothing failed.
const RECOVERY_WINDOW: Duration = Duration::from_secs(1);

/// What one scenario run measured and concluded.
pub struct ScenarioReport {
    /// The scenario's name, with the planted fault's when there is one.
    pub scenario: String,
    pub seed: u64,
    pub nodes: u16,
    pub duration_s: u64,
    /// What the schedule did, for the reader (`node 2 cut off one way at 10.0 s`, ...).
    pub schedule: Vec<String>,
    pub operations: usize,
    pub writes: usize,
    pub acknowledged: usize,
    pub reads_ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub lost: usize,
    /// Acknowledged writes superseded by a lower version acknowledged before they began
    /// (last-writer-wins under clock skew); counted, not judged, as in the simulator.
    pub inversions: usize,
    pub keys: usize,
    /// How the counters' increments (compare-and-swaps) ended: written, mismatched, unknown,
    /// failed.
    pub increments: (usize, usize, usize, usize),
    /// Seconds from the heal to the first window of QUORUM operations that all succeeded;
    /// `None` if none came before the load stopped.
    pub recovery_s: Option<f64>,
    /// Latency of the client operations that succeeded (ms, median and 99th percentile),
    /// invoked before the fault and during it; `None` where none did.
    pub latency_before_ms: Option<(f64, f64)>,
    pub latency_during_ms: Option<(f64, f64)>,
    pub violations: Vec<String>,
    /// Facts checked outside the history (the nodes' logs), each with whether it held.
    pub log_checks: Vec<(String, bool)>,
    pub run_dir: PathBuf,
    /// Whether `run_dir` is kept: always with `--keep`; its logs and history when a run fails.
    pub kept: bool,
}

impl ScenarioReport {
    /// Whether every checker passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.lost == 0 && self.log_checks.iter().all(|(_, held)| *held)
    }

    /// The terminal summary.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(
            text,
            "{verdict} {} (seed {}, {} nodes, {} s)",
            self.scenario, self.seed, self.nodes, self.duration_s
        );
        for line in &self.schedule {
            let _ = writeln!(text, "  schedule: {line}");
        }
        let recovery =
            self.recovery_s.map_or("not within the run".to_string(), |seconds| format!("{seconds:.1} s"));
        let _ = writeln!(
            text,
            "  operations {}  writes {}  acknowledged {}  reads ok {}  failed {}  unknown {}  lost {}  keys {}",
            self.operations, self.writes, self.acknowledged, self.reads_ok, self.failed, self.unknown, self.lost, self.keys
        );
        let (written, mismatched, unknown, failed) = self.increments;
        let _ = writeln!(
            text,
            "  increments by compare-and-swap: written {written}  mismatched {mismatched}  unknown {unknown}  failed {failed}"
        );
        let _ = writeln!(
            text,
            "  recovery after heal {recovery}  real-time inversions (LWW under skew, counted) {}",
            self.inversions
        );
        let latency = |window: Option<(f64, f64)>| {
            window.map_or("none".to_string(), |(median, p99)| format!("{median:.1}/{p99:.1}"))
        };
        let _ = writeln!(
            text,
            "  latency of successful operations, ms median/p99: before the fault {}, during it {}",
            latency(self.latency_before_ms),
            latency(self.latency_during_ms)
        );
        for (check, held) in &self.log_checks {
            let _ = writeln!(text, "  log check: {check}: {}", if *held { "yes" } else { "NO" });
        }
        for violation in self.violations.iter().take(20) {
            let _ = writeln!(text, "  violation: {violation}");
        }
        if self.violations.len() > 20 {
            let _ = writeln!(text, "  ... and {} more violations", self.violations.len() - 20);
        }
        if self.kept {
            let _ = writeln!(text, "  logs and history: {}", self.run_dir.display());
        } else {
            let _ = writeln!(text, "  logs and history removed (the run passed; --keep keeps them)");
        }
        text
    }
}

/// Counts of a history's client operations: (operations, writes, acknowledged, reads ok,
/// failed, unknown).
pub fn counts(history: &History) -> (usize, usize, usize, usize, usize, usize) {
    let clients: Vec<&Operation> = history.operations.iter().filter(|op| op.client.is_some()).collect();
    let writes = clients.iter().filter(|op| op.is_write()).count();
    let acknowledged = clients.iter().filter(|op| op.outcome == Outcome::Written).count();
    let reads_ok =
        clients.iter().filter(|op| matches!(op.outcome, Outcome::Read(_) | Outcome::Absent)).count();
    let failed = clients.iter().filter(|op| matches!(op.outcome, Outcome::Failed(_))).count();
    let unknown = clients.iter().filter(|op| matches!(op.outcome, Outcome::Unknown(_))).count();
    (clients.len(), writes, acknowledged, reads_ok, failed, unknown)
}

/// The median and 99th percentile latency (ms) of the client operations invoked in
/// `from..to` (µs on the history's clock) that succeeded; `None` if none did.
pub fn latency_ms(history: &History, from: u64, to: u64) -> Option<(f64, f64)> {
    let mut latencies: Vec<u64> = history
        .operations
        .iter()
        .filter(|op| op.client.is_some() && (from..to).contains(&op.invoked_step))
        .filter(|op| matches!(op.outcome, Outcome::Written | Outcome::Read(_) | Outcome::Absent))
        .filter_map(|op| op.completed_step.map(|completed| completed.saturating_sub(op.invoked_step)))
        .collect();
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = |share: f64| latencies[((latencies.len() - 1) as f64 * share).round() as usize] as f64 / 1e3;
    Some((at(0.5), at(0.99)))
}

/// Seconds from `heal_at` (µs on the history's clock) to the start of the first
/// [`RECOVERY_WINDOW`] of QUORUM client operations invoked after it in which at least one write
/// and one read succeeded and none failed.
pub fn recovery_seconds(history: &History, heal_at: u64) -> Option<f64> {
    let window = RECOVERY_WINDOW.as_micros() as u64;
    let mut quorum: Vec<&Operation> = history
        .operations
        .iter()
        .filter(|op| {
            op.client.is_some() && op.consistency == Consistency::Quorum && op.invoked_step >= heal_at
        })
        .collect();
    quorum.sort_by_key(|op| op.invoked_step);
    let last_invoked = quorum.last()?.invoked_step;
    for (start, first) in quorum.iter().enumerate() {
        if first.invoked_step + window > last_invoked {
            return None;
        }
        let in_window = quorum[start..].iter().take_while(|op| op.invoked_step < first.invoked_step + window);
        let (mut wrote, mut read, mut failed) = (false, false, false);
        for op in in_window {
            match (&op.kind, &op.outcome) {
                (Kind::Get, Outcome::Read(_) | Outcome::Absent) => read = true,
                (_, Outcome::Written) => wrote = true,
                _ => failed = true,
            }
        }
        if wrote && read && !failed {
            return Some((first.invoked_step - heal_at) as f64 / 1e6);
        }
    }
    None
}

/// The history, one operation a line, for the run directory.
pub fn history_text(history: &History) -> String {
    let mut text = String::new();
    for op in &history.operations {
        let completed = op.completed_step.map_or("-".to_string(), |step| format!("{:.6}", step as f64 / 1e6));
        let client = op.client.map_or("final".to_string(), |client| format!("c{client}"));
        let version = op.version.map_or(String::new(), |version| format!(" version {version}"));
        let _ = writeln!(
            text,
            "{:.6} {completed} {client} {op}{version} -> {}",
            op.invoked_step as f64 / 1e6,
            op.outcome
        );
    }
    text
}

/// The time now in UTC, `HH:MM:SS.mmm`, for notes in the nodes' logs.
pub fn utc_now() -> String {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn op(kind: Kind, invoked_ms: u64, outcome: Outcome) -> Operation {
        Operation {
            client: Some(0),
            node: 1,
            key: Bytes::from("k"),
            kind,
            consistency: Consistency::Quorum,
            replicas: 3,
            required: 2,
            version: None,
            invoked_step: invoked_ms * 1000,
            completed_step: Some(invoked_ms * 1000 + 500),
            outcome,
        }
    }

    #[test]
    fn recovery_starts_at_the_first_clean_window_after_the_heal() {
        let put = || Kind::Put { value: Bytes::from("v"), ttl_ms: None };
        let mut operations = vec![
            op(put(), 900, Outcome::Written),
            op(Kind::Get, 1000, Outcome::Failed("unavailable".into())),
            op(put(), 1500, Outcome::Unknown("timeout".into())),
        ];
        for step in 0..10 {
            operations.push(op(put(), 2000 + step * 300, Outcome::Written));
            operations.push(op(Kind::Get, 2100 + step * 300, Outcome::Absent));
        }
        let history = History { operations };
        assert_eq!(recovery_seconds(&history, 1_000_000), Some(1.0));
        // Latency: only the operations that succeeded within the window count.
        assert_eq!(latency_ms(&history, 0, u64::MAX), Some((0.5, 0.5)));
        assert_eq!(latency_ms(&history, u64::MAX - 1, u64::MAX), None);
        let (operations, writes, acknowledged, reads_ok, failed, unknown) = counts(&history);
        assert_eq!((operations, writes, acknowledged, reads_ok, failed, unknown), (23, 12, 11, 10, 1, 1));
    }
}
