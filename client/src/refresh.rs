//! [`RefreshSchedule`]: when a client fetches the topology again. Decisions only; the adapters
//! run the fetch on the next request that finds one due, so no background task is needed.
//!
//! ```text
//!  fetched ─(interval passes)─▶ due ─begin(now)─▶ one caller fetches ─end()─▶ ...
//!  a node unreachable, an `Unavailable` answer ─mark_stale─▶ due at once
//!  a failed fetch ─▶ due again after REFRESH_RETRY_INTERVAL, not on every request
//! ```

use std::time::{Duration, Instant};

/// Least time between two attempts to fetch the topology, so that a cluster that cannot be
/// reached costs each request at most one failed fetch per this.
pub const REFRESH_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// When the topology is due to be fetched again.
#[derive(Debug, Clone)]
pub struct RefreshSchedule {
    interval: Duration,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    /// Something suggested the topology is out of date.
    stale: bool,
    /// A caller is fetching it now; the others go on with the topology they have.
    in_progress: bool,
}

impl RefreshSchedule {
    /// A schedule fetching the topology once it is `interval` old. Nothing fetched yet: due.
    pub fn new(interval: Duration) -> Self {
        RefreshSchedule { interval, fetched_at: None, attempted_at: None, stale: false, in_progress: false }
    }

    /// Whether the next request should fetch the topology first.
    pub fn is_due(&self, now: Instant) -> bool {
        let since = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        let old = since(self.fetched_at).is_none_or(|age| age >= self.interval);
        let spaced = since(self.attempted_at).is_none_or(|age| age >= REFRESH_RETRY_INTERVAL);
        !self.in_progress && (self.stale || old) && spaced
    }

    /// Claims the fetch when one is due: true means the caller fetches, then calls
    /// [`RefreshSchedule::end`] (whatever the outcome).
    pub fn begin(&mut self, now: Instant) -> bool {
        if !self.is_due(now) {
            return false;
        }
        self.in_progress = true;
        self.attempted_at = Some(now);
        true
    }

    /// The fetch claimed by [`RefreshSchedule::begin`] is over.
    pub fn end(&mut self) {
        self.in_progress = false;
    }

    /// A topology was fetched at `now` (by the schedule or on the caller's demand).
    pub fn on_fetched(&mut self, now: Instant) {
        self.fetched_at = Some(now);
        self.stale = false;
    }

    /// The topology is likely out of date: fetch it before the next request.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_after_the_interval_or_when_stale_and_one_caller_at_a_time() {
        let start = Instant::now();
        let mut schedule = RefreshSchedule::new(Duration::from_secs(10));
        schedule.on_fetched(start);
        assert!(!schedule.is_due(start + Duration::from_secs(9)));
        let due = start + Duration::from_secs(10);
        assert!(schedule.begin(due));
        assert!(!schedule.begin(due), "one fetch at a time");
        schedule.end();
        // The fetch failed: due again, but not before the retry interval.
        assert!(!schedule.is_due(due + REFRESH_RETRY_INTERVAL / 2));
        assert!(schedule.is_due(due + REFRESH_RETRY_INTERVAL));

        let fetched = due + REFRESH_RETRY_INTERVAL;
        assert!(schedule.begin(fetched));
        schedule.on_fetched(fetched);
        schedule.end();
        let soon = fetched + REFRESH_RETRY_INTERVAL;
        assert!(!schedule.is_due(soon));
        schedule.mark_stale();
        assert!(schedule.is_due(soon), "stale: due before the interval");
        assert!(!schedule.is_due(fetched + REFRESH_RETRY_INTERVAL / 2), "but spaced from the last attempt");
    }

    #[test]
    fn nothing_fetched_yet_is_due() {
        assert!(RefreshSchedule::new(Duration::MAX).is_due(Instant::now()));
    }
}
