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
    /// When the schedule falls due, kept from the fields above as they change, so that the
    /// check every request makes is one comparison.
    due: Due,
}

/// When a [`RefreshSchedule`] falls due (a fetch in progress aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Now,
    At(Instant),
    Never,
}

impl RefreshSchedule {
    /// A schedule fetching the topology once it is `interval` old. Nothing fetched yet: due.
    pub fn new(interval: Duration) -> Self {
        RefreshSchedule {
            interval,
            fetched_at: None,
            attempted_at: None,
            stale: false,
            in_progress: false,
            due: Due::Now,
        }
    }

    /// Whether the next request should fetch the topology first.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.in_progress
            && match self.due {
                Due::Now => true,
                Due::At(at) => now >= at,
                Due::Never => false,
            }
    }

    /// Settles `due` from the fields it follows: the interval after the last fetch (at once
    /// when stale or never fetched), and no sooner than the retry interval after the last
    /// attempt. An instant past what `Instant` can hold is never reached.
    fn settle(&mut self) {
        let by_age = match self.fetched_at {
            _ if self.stale => Due::Now,
            None => Due::Now,
            Some(at) => at.checked_add(self.interval).map_or(Due::Never, Due::At),
        };
        let spaced = match self.attempted_at {
            None => Due::Now,
            Some(at) => at.checked_add(REFRESH_RETRY_INTERVAL).map_or(Due::Never, Due::At),
        };
        self.due = match (by_age, spaced) {
            (Due::Never, _) | (_, Due::Never) => Due::Never,
            (Due::Now, later) | (later, Due::Now) => later,
            (Due::At(age), Due::At(spacing)) => Due::At(age.max(spacing)),
        };
    }

    /// Claims the fetch when one is due: true means the caller fetches, then calls
    /// [`RefreshSchedule::end`] (whatever the outcome).
    pub fn begin(&mut self, now: Instant) -> bool {
        if !self.is_due(now) {
            return false;
        }
        self.in_progress = true;
        self.attempted_at = Some(now);
        self.settle();
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
        self.settle();
    }

    /// The topology is likely out of date: fetch it before the next request.
    pub fn mark_stale(&mut self) {
        if !self.stale {
            self.stale = true;
            self.settle();
        }
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

    /// The rule as first written, from the fields: what `due` must agree with.
    fn due_by_the_rule(schedule: &RefreshSchedule, now: Instant) -> bool {
        let since = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        let old = since(schedule.fetched_at).is_none_or(|age| age >= schedule.interval);
        let spaced = since(schedule.attempted_at).is_none_or(|age| age >= REFRESH_RETRY_INTERVAL);
        !schedule.in_progress && (schedule.stale || old) && spaced
    }

    #[test]
    fn the_settled_due_time_agrees_with_the_rule_over_any_sequence() {
        let start = Instant::now();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for interval in [Duration::from_millis(100), Duration::from_secs(1), Duration::MAX] {
            let mut schedule = RefreshSchedule::new(interval);
            let mut now = start;
            for _ in 0..5_000 {
                now += Duration::from_millis(next(120));
                match next(4) {
                    0 => {
                        let expected = due_by_the_rule(&schedule, now);
                        assert_eq!(schedule.begin(now), expected);
                    }
                    1 => schedule.end(),
                    2 => schedule.on_fetched(now),
                    _ => schedule.mark_stale(),
                }
                for ahead in [0, 1, 99, 100, 249, 250, 251, 1_000] {
                    let then = now + Duration::from_millis(ahead);
                    assert_eq!(schedule.is_due(then), due_by_the_rule(&schedule, then), "{ahead} ms ahead");
                }
            }
        }
    }
}
