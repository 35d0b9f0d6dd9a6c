//! [`HintBook`]: the decisions of hinted handoff for one shard, without I/O: which hints may be
//! stored, which are dropped, and how fast they replay. Time comes in as `now_ms`.
//!
//! Hints are an optimisation; anti-entropy is what makes replicas converge. So every rule here
//! errs towards dropping a hint (and counting it) rather than letting hints grow, storm or
//! resurrect data (the lessons of Cassandra's and ScyllaDB's hinted handoff):
//!
//! - bounded bytes per destination and per shard (`hints_bytes_max`); past a bound new hints are
//!   dropped and counted;
//! - no hints for a node down longer than the hint window (`max_hint_window_ms`), measured from
//!   the `down_since` kept in every hint, so the window survives restarts;
//! - a hint older than the tombstone grace period is dropped at replay: replaying it could bring
//!   back a value whose delete has been purged meanwhile;
//! - replay is throttled by a token bucket (`replay_bytes_per_s`);
//! - hints never count toward W (the coordinator does not know about them at all);
//! - a node removed from the cluster has its hints purged.
//!
//! ```text
//!  down / timeout ─▶ admit(destination, bytes, now) ─▶ Store | Refused(reason, counted)
//!  membership Up  ─▶ mark_up ─▶ replay: replay_budget(now) bytes per turn, each hint checked
//!                                by expired(hint, now) before it is sent
//! ```

use std::collections::BTreeMap;

/// Settings of hinted handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintSettings {
    /// Bytes of hints a shard keeps for all destinations together.
    pub shard_bytes_max: u64,
    /// Bytes of hints a shard keeps for one destination.
    pub destination_bytes_max: u64,
    /// No hints are stored for a node down longer than this.
    pub max_hint_window_ms: u64,
    /// Hints older than this are dropped at replay (the tombstone grace period).
    pub tombstone_grace_ms: u64,
    /// Replay rate, bytes per second per shard.
    pub replay_bytes_per_s: u64,
}

/// Why a hint was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HintRefusal {
    /// The destination's hints reached `destination_bytes_max`.
    #[error("the destination's hints are full")]
    DestinationFull,
    /// The shard's hints reached `shard_bytes_max`.
    #[error("the shard's hints are full")]
    ShardFull,
    /// The destination has been down longer than the hint window.
    #[error("the destination is down longer than the hint window")]
    PastWindow,
}

/// Counters, for logs and the admin command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintCounters {
    pub stored: u64,
    pub stored_bytes: u64,
    pub dropped_full: u64,
    pub dropped_window: u64,
    pub dropped_grace: u64,
    pub replayed: u64,
    pub replayed_bytes: u64,
    pub purged: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Destination {
    bytes: u64,
    hints: u64,
    /// Since when the destination is down, while it is.
    down_since_ms: Option<u64>,
}

/// One shard's hinted-handoff bookkeeping.
#[derive(Debug)]
pub struct HintBook {
    settings: HintSettings,
    destinations: BTreeMap<u16, Destination>,
    bytes: u64,
    counters: HintCounters,
    /// Replay token bucket: bytes available, and when it was last filled.
    bucket_bytes: u64,
    bucket_filled_ms: u64,
}

impl HintBook {
    /// A book with no hints.
    pub fn new(settings: HintSettings) -> Self {
        HintBook {
            settings,
            destinations: BTreeMap::new(),
            bytes: 0,
            counters: HintCounters::default(),
            bucket_bytes: 0,
            bucket_filled_ms: 0,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &HintSettings {
        &self.settings
    }

    /// The counters.
    pub fn counters(&self) -> HintCounters {
        self.counters
    }

    /// Bytes of hints kept for all destinations.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes of hints kept for `destination`.
    pub fn destination_bytes(&self, destination: u16) -> u64 {
        self.destinations.get(&destination).map_or(0, |state| state.bytes)
    }

    /// Hints kept for `destination`.
    pub fn destination_hints(&self, destination: u16) -> u64 {
        self.destinations.get(&destination).map_or(0, |state| state.hints)
    }

    /// Destinations with hints kept.
    pub fn destinations_with_hints(&self) -> Vec<u16> {
        self.destinations.iter().filter(|(_, state)| state.hints > 0).map(|(&node, _)| node).collect()
    }

    /// Takes a hint read back from the log at start: `down_since_ms` is the one stored with it,
    /// so the window counts from the outage's beginning, not from the restart.
    pub fn recovered(&mut self, destination: u16, bytes: u64, down_since_ms: u64) {
        let state = self.destinations.entry(destination).or_default();
        state.bytes += bytes;
        state.hints += 1;
        state.down_since_ms =
            Some(state.down_since_ms.map_or(down_since_ms, |since| since.min(down_since_ms)));
        self.bytes += bytes;
    }

    /// Membership says `destination` is down (or it did not answer): its outage starts now
    /// unless it started before.
    pub fn mark_down(&mut self, destination: u16, now_ms: u64) -> u64 {
        *self.destinations.entry(destination).or_default().down_since_ms.get_or_insert(now_ms)
    }

    /// Membership says `destination` is up: its outage is over (its hints wait for replay).
    pub fn mark_up(&mut self, destination: u16) {
        if let Some(state) = self.destinations.get_mut(&destination) {
            state.down_since_ms = None;
        }
    }

    /// Since when `destination` is down, if it is.
    pub fn down_since(&self, destination: u16) -> Option<u64> {
        self.destinations.get(&destination).and_then(|state| state.down_since_ms)
    }

    /// Whether a hint of `bytes` for `destination` may be stored at `now_ms`; if so it is
    /// counted as stored, and the `down_since` to store with it is returned. Refusals are
    /// counted as dropped.
    pub fn admit(&mut self, destination: u16, bytes: u64, now_ms: u64) -> Result<u64, HintRefusal> {
        let settings = self.settings;
        let total = self.bytes;
        let state = self.destinations.entry(destination).or_default();
        let down_since_ms = *state.down_since_ms.get_or_insert(now_ms);
        let refusal = if now_ms.saturating_sub(down_since_ms) > settings.max_hint_window_ms {
            Some(HintRefusal::PastWindow)
        } else if state.bytes + bytes > settings.destination_bytes_max {
            Some(HintRefusal::DestinationFull)
        } else if total + bytes > settings.shard_bytes_max {
            Some(HintRefusal::ShardFull)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            match refusal {
                HintRefusal::PastWindow => self.counters.dropped_window += 1,
                HintRefusal::DestinationFull | HintRefusal::ShardFull => self.counters.dropped_full += 1,
            }
            return Err(refusal);
        }
        state.bytes += bytes;
        state.hints += 1;
        self.bytes += bytes;
        self.counters.stored += 1;
        self.counters.stored_bytes += bytes;
        Ok(down_since_ms)
    }

    /// Whether a hint written at `written_at_ms` is too old to replay at `now_ms`.
    pub fn expired(&self, written_at_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(written_at_ms) > self.settings.tombstone_grace_ms
    }

    /// Bytes replay may send now: the token bucket fills at `replay_bytes_per_s` and holds at
    /// most one second's worth (so a long pause does not become a burst).
    pub fn replay_budget(&mut self, now_ms: u64) -> u64 {
        let rate = self.settings.replay_bytes_per_s;
        let elapsed = now_ms.saturating_sub(self.bucket_filled_ms);
        let earned = u64::try_from(u128::from(rate) * u128::from(elapsed) / 1000).unwrap_or(u64::MAX);
        self.bucket_bytes = self.bucket_bytes.saturating_add(earned).min(rate.max(1));
        self.bucket_filled_ms = now_ms;
        self.bucket_bytes
    }

    /// Spends `bytes` of the replay budget.
    pub fn spend(&mut self, bytes: u64) {
        self.bucket_bytes = self.bucket_bytes.saturating_sub(bytes);
    }

    /// A hint for `destination` left the book: `delivered` (replayed), or dropped at replay
    /// (too old).
    pub fn released(&mut self, destination: u16, bytes: u64, delivered: bool) {
        let state = self.destinations.entry(destination).or_default();
        state.bytes = state.bytes.saturating_sub(bytes);
        state.hints = state.hints.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        if delivered {
            self.counters.replayed += 1;
            self.counters.replayed_bytes += bytes;
        } else {
            self.counters.dropped_grace += 1;
        }
    }

    /// `destination` left the cluster: every hint for it is purged.
    pub fn purge(&mut self, destination: u16) -> u64 {
        let Some(state) = self.destinations.remove(&destination) else { return 0 };
        self.bytes = self.bytes.saturating_sub(state.bytes);
        self.counters.purged += state.hints;
        state.hints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn settings() -> HintSettings {
        HintSettings {
            shard_bytes_max: 1_000,
            destination_bytes_max: 600,
            max_hint_window_ms: 3 * HOUR_MS,
            tombstone_grace_ms: 10 * HOUR_MS,
            replay_bytes_per_s: 100,
        }
    }

    #[test]
    fn bounds_per_destination_and_per_shard_drop_and_count() {
        let mut book = HintBook::new(settings());
        for _ in 0..6 {
            book.admit(1, 100, 0).unwrap();
        }
        assert_eq!(book.admit(1, 100, 0), Err(HintRefusal::DestinationFull));
        for _ in 0..4 {
            book.admit(2, 100, 0).unwrap();
        }
        assert_eq!(book.admit(2, 100, 0), Err(HintRefusal::ShardFull));
        assert_eq!(book.admit(3, 1, 0), Err(HintRefusal::ShardFull));
        assert_eq!(book.bytes(), 1_000);
        assert_eq!(book.counters().dropped_full, 3);
        assert_eq!(book.counters().stored, 10);
        // Delivering frees room.
        book.released(1, 100, true);
        assert!(book.admit(3, 100, 0).is_ok());
        assert!(book.bytes() <= settings().shard_bytes_max);
    }

    #[test]
    fn the_window_counts_from_the_start_of_the_outage_across_restarts() {
        let mut book = HintBook::new(settings());
        assert_eq!(book.mark_down(4, 1_000), 1_000);
        assert_eq!(book.admit(4, 10, 1_000 + HOUR_MS), Ok(1_000));
        // The holder restarts: what it recovers carries the outage's start.
        let mut restarted = HintBook::new(settings());
        restarted.recovered(4, 10, 1_000);
        assert_eq!(restarted.admit(4, 10, 1_000 + 2 * HOUR_MS), Ok(1_000));
        assert_eq!(restarted.admit(4, 10, 1_001 + 3 * HOUR_MS), Err(HintRefusal::PastWindow));
        assert_eq!(restarted.counters().dropped_window, 1);
        // Back up, then down again: a new outage, a new window.
        restarted.mark_up(4);
        assert_eq!(restarted.down_since(4), None);
        assert_eq!(restarted.admit(4, 10, 5 * HOUR_MS), Ok(5 * HOUR_MS));
    }

    #[test]
    fn hints_past_the_grace_period_are_not_replayed() {
        let book = HintBook::new(settings());
        assert!(!book.expired(0, 10 * HOUR_MS));
        assert!(book.expired(0, 10 * HOUR_MS + 1));
    }

    #[test]
    fn replay_is_throttled_by_a_bucket_of_one_second() {
        let mut book = HintBook::new(settings());
        assert_eq!(book.replay_budget(0), 0);
        assert_eq!(book.replay_budget(500), 50);
        book.spend(50);
        assert_eq!(book.replay_budget(1_000), 50);
        // A long pause earns at most one second's worth.
        assert_eq!(book.replay_budget(60_000), 100);
        book.spend(100);
        assert_eq!(book.replay_budget(60_000), 0);
    }

    #[test]
    fn a_removed_node_has_its_hints_purged() {
        let mut book = HintBook::new(settings());
        for _ in 0..3 {
            book.admit(7, 50, 0).unwrap();
        }
        assert_eq!(book.purge(7), 3);
        assert_eq!((book.bytes(), book.destination_hints(7)), (0, 0));
        assert_eq!(book.counters().purged, 3);
    }
}
