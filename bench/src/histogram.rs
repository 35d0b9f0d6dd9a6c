//! Per-operation latency, recorded in nanoseconds into an HDR histogram (3 significant digits)
//! and reported in microseconds.

use hdrhistogram::Histogram;
use std::time::Duration;

/// The longest latency told apart from longer ones: 100 s. Longer ones are recorded as this.
const LATENCY_NANOS_MAX: u64 = 100_000_000_000;

/// Percentiles of one benchmark's operation latencies, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencySummary {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Latencies of one benchmark (or one of its concurrent workers).
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl LatencyRecorder {
    pub fn new() -> Self {
        let histogram =
            Histogram::new_with_bounds(1, LATENCY_NANOS_MAX, 3).expect("the bounds are valid constants");
        LatencyRecorder { histogram }
    }

    /// Records one operation's latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).clamp(1, LATENCY_NANOS_MAX);
        self.histogram.saturating_record(nanos);
    }

    /// Adds another recorder's latencies to this one.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        self.histogram.add(&other.histogram).expect("recorders share their bounds");
    }

    pub fn summary(&self) -> LatencySummary {
        let micros = |nanos: u64| nanos as f64 / 1000.0;
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            mean_us: self.histogram.mean() / 1000.0,
            p50_us: micros(self.histogram.value_at_quantile(0.50)),
            p99_us: micros(self.histogram.value_at_quantile(0.99)),
            p999_us: micros(self.histogram.value_at_quantile(0.999)),
            max_us: micros(self.histogram.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_microseconds() {
        let mut recorder = LatencyRecorder::new();
        for micros in 1..=1000u64 {
            recorder.record(Duration::from_micros(micros));
        }
        let mut other = LatencyRecorder::new();
        other.record(Duration::from_secs(1000));
        recorder.merge(&other);
        let summary = recorder.summary();
        // Three significant digits: each figure is within 0.1% of the recorded value it stands for.
        let close = |actual: f64, expected: f64| (actual - expected).abs() / expected < 0.003;
        assert!(close(summary.p50_us, 501.0), "{summary:?}");
        assert!(close(summary.p99_us, 991.0), "{summary:?}");
        assert!(close(summary.max_us, 100_000_000.0), "{summary:?}");
    }
}
