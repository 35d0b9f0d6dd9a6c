//! Latency over time (`--report-interval`): one coarse histogram per interval of a run, so a stall
//! shows when it happened (and how many operations it caught) instead of vanishing into the whole
//! run's percentiles. YCSB's `timeseries` measurement type reports the same way.
//!
//! Each window holds two significant digits from 1 µs to 100 s in 32-bit counts, about 10 KiB,
//! and a run keeps at most [`WINDOWS_MAX`] of them (about 37 MiB a thread at most): operations
//! finishing later than that are counted in the last window, which then says it runs on to the
//! end (`run` refuses an interval that would need more).

use hdrhistogram::Histogram;
use std::time::Duration;

/// The shortest interval a run may report at.
pub const INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Most windows one run keeps.
pub const WINDOWS_MAX: usize = 3_600;
/// The longest latency told apart from longer ones, in microseconds: 100 s.
const LATENCY_MICROS_MAX: u64 = 100_000_000;

/// One window's operations and latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowSummary {
    /// Where the window starts, from the run's start.
    pub start: Duration,
    pub ops: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The last of [`WINDOWS_MAX`] windows, holding everything that finished after it began.
    pub open_ended: bool,
}

/// Latencies by the interval in which each operation finished.
pub struct Timeline {
    interval: Duration,
    windows: Vec<Histogram<u32>>,
}

impl Timeline {
    /// A timeline of `interval`-long windows; `interval` is at least [`INTERVAL_MIN`].
    pub fn new(interval: Duration) -> Self {
        Timeline { interval: interval.max(INTERVAL_MIN), windows: Vec::new() }
    }

    fn window(&mut self, index: usize) -> &mut Histogram<u32> {
        let index = index.min(WINDOWS_MAX - 1);
        while self.windows.len() <= index {
            let window =
                Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 2).expect("the bounds are valid constants");
            self.windows.push(window);
        }
        &mut self.windows[index]
    }

    /// Records an operation that finished `finished` after the run's start and took `latency`.
    pub fn record(&mut self, finished: Duration, latency: Duration) {
        let index = usize::try_from(finished.as_nanos() / self.interval.as_nanos()).unwrap_or(usize::MAX);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MICROS_MAX);
        self.window(index).saturating_record(micros);
    }

    /// Adds another thread's timeline (of the same interval) to this one.
    pub fn merge(&mut self, other: &Timeline) {
        debug_assert_eq!(self.interval, other.interval);
        for (index, theirs) in other.windows.iter().enumerate() {
            self.window(index).add(theirs).expect("windows share their bounds");
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Every window from the run's start to the last one with an operation, empty ones included.
    pub fn summaries(&self) -> Vec<WindowSummary> {
        let mut start = Duration::ZERO;
        self.windows
            .iter()
            .enumerate()
            .map(|(index, window)| {
                let open_ended = index == WINDOWS_MAX - 1;
                let summary = if window.is_empty() {
                    WindowSummary { start, ops: 0, p50_us: 0, p99_us: 0, p999_us: 0, max_us: 0, open_ended }
                } else {
                    WindowSummary {
                        start,
                        ops: window.len(),
                        p50_us: window.value_at_quantile(0.50),
                        p99_us: window.value_at_quantile(0.99),
                        p999_us: window.value_at_quantile(0.999),
                        max_us: window.max(),
                        open_ended,
                    }
                };
                start += self.interval;
                summary
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_land_in_the_window_they_finished_in() {
        let mut timeline = Timeline::new(Duration::from_millis(100));
        for micros in 1..=1000u64 {
            timeline.record(Duration::from_millis(50), Duration::from_micros(micros));
        }
        // Nothing in the second window; a stall in the third.
        timeline.record(Duration::from_millis(250), Duration::from_millis(40));
        let mut other = Timeline::new(Duration::from_millis(100));
        other.record(Duration::from_millis(299), Duration::from_millis(60));
        timeline.merge(&other);

        let summaries = timeline.summaries();
        assert_eq!(summaries.len(), 3);
        let first = summaries[0];
        assert_eq!((first.start, first.ops), (Duration::ZERO, 1000));
        // Two significant digits: each figure is within 1% of the value it stands for.
        let close =
            |actual: u64, expected: u64| (actual as f64 - expected as f64).abs() / (expected as f64) < 0.01;
        assert!(close(first.p50_us, 500), "{first:?}");
        assert!(close(first.p99_us, 990), "{first:?}");
        assert!(close(first.max_us, 1000), "{first:?}");
        assert_eq!(
            summaries[1],
            WindowSummary {
                start: Duration::from_millis(100),
                ops: 0,
                p50_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
                open_ended: false
            }
        );
        let third = summaries[2];
        assert_eq!((third.start, third.ops), (Duration::from_millis(200), 2));
        assert!(close(third.p50_us, 40_000) && close(third.max_us, 60_000), "{third:?}");
    }

    #[test]
    fn a_run_longer_than_its_windows_counts_the_rest_in_the_last() {
        let mut timeline = Timeline::new(Duration::ZERO);
        assert_eq!(timeline.interval(), INTERVAL_MIN);
        timeline.record(INTERVAL_MIN * 2 * WINDOWS_MAX as u32, Duration::from_secs(1000));
        timeline.record(Duration::MAX, Duration::from_micros(1));
        let summaries = timeline.summaries();
        assert_eq!(summaries.len(), WINDOWS_MAX);
        let last = summaries[WINDOWS_MAX - 1];
        assert_eq!(last.ops, 2);
        assert!(last.open_ended && !summaries[WINDOWS_MAX - 2].open_ended);
        // Latencies past the histogram's range are recorded as its top.
        assert!(
            last.max_us >= LATENCY_MICROS_MAX && last.max_us < LATENCY_MICROS_MAX * 101 / 100,
            "{last:?}"
        );
    }
}
