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
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One point of a latency-by-percentile curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PercentilePoint {
    /// The fraction of operations that took at most `latency_us`, in `0.0..=1.0`.
    pub quantile: f64,
    pub latency_us: f64,
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

    /// Operations recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Writes the latencies in HdrHistogram's percentile-distribution text format (Java's
    /// `outputPercentileDistribution`, five steps per halving of the distance to 100%), the
    /// format HdrHistogram's online plotter and wrk2 use. Values are in milliseconds, as wrk2's are.
    pub fn write_percentile_distribution(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        const NANOS_PER_MILLI: f64 = 1_000_000.0;
        let histogram = &self.histogram;
        writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        )?;
        let mut total = 0u64;
        for step in histogram.iter_quantiles(5) {
            total += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64 / NANOS_PER_MILLI;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                writeln!(out, "{value:12.3} {quantile:2.12} {total:10} {:14.2}", 1.0 / (1.0 - quantile))?;
            } else {
                writeln!(out, "{value:12.3} {quantile:2.12} {total:10}")?;
            }
        }
        let (mean, deviation, max) = if histogram.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (histogram.mean(), histogram.stdev(), histogram.max() as f64)
        };
        writeln!(
            out,
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
            mean / NANOS_PER_MILLI,
            deviation / NANOS_PER_MILLI
        )?;
        writeln!(
            out,
            "#[Max     = {:12.3}, Total count    = {:12}]",
            max / NANOS_PER_MILLI,
            histogram.len()
        )?;
        // HdrHistogram's sub-bucket count: 2 * 10^digits rounded up to a power of two.
        let sub_buckets = (2 * 10u64.pow(u32::from(histogram.sigfig()))).next_power_of_two();
        writeln!(out, "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]", histogram.buckets())
    }

    /// The latency-by-percentile curve at the `.hgrm` file's percentiles (five steps per halving of
    /// the distance to 100%), ending at 100% with the maximum; empty when nothing was recorded.
    pub fn percentile_curve(&self) -> Vec<PercentilePoint> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        self.histogram
            .iter_quantiles(5)
            .map(|step| PercentilePoint {
                quantile: step.quantile_iterated_to(),
                latency_us: step.value_iterated_to() as f64 / 1000.0,
            })
            .collect()
    }

    pub fn summary(&self) -> LatencySummary {
        let micros = |nanos: u64| nanos as f64 / 1000.0;
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            mean_us: self.histogram.mean() / 1000.0,
            p50_us: micros(self.histogram.value_at_quantile(0.50)),
            p90_us: micros(self.histogram.value_at_quantile(0.90)),
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

    #[test]
    fn percentile_distribution_has_the_hdr_text_layout() {
        let mut recorder = LatencyRecorder::new();
        for millis in 1..=100u64 {
            recorder.record(Duration::from_millis(millis));
        }
        let mut out = Vec::new();
        recorder.write_percentile_distribution(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].trim_start().starts_with("Value     Percentile TotalCount 1/(1-Percentile)"));
        assert_eq!(lines[1], "");
        let last_row: Vec<&str> = lines[lines.len() - 4].split_whitespace().collect();
        assert_eq!(last_row.len(), 3, "the 100% row has no 1/(1-Percentile) column: {last_row:?}");
        assert_eq!(last_row[1], "1.000000000000");
        assert_eq!(last_row[2], "100");
        assert!(lines[lines.len() - 2].starts_with("#[Max     =      100.0"), "{text}");
        assert!(lines[lines.len() - 2].ends_with("Total count    =          100]"), "{text}");
    }

    #[test]
    fn percentile_curve_rises_to_the_maximum_at_100_percent() {
        let mut recorder = LatencyRecorder::new();
        assert!(recorder.percentile_curve().is_empty());
        for micros in 1..=1000u64 {
            recorder.record(Duration::from_micros(micros));
        }
        let curve = recorder.percentile_curve();
        assert_eq!(curve[0].quantile, 0.0);
        let last = curve.last().unwrap();
        assert_eq!(last.quantile, 1.0);
        assert!((last.latency_us - 1000.0).abs() < 1.0, "{last:?}");
        for pair in curve.windows(2) {
            assert!(pair[0].quantile <= pair[1].quantile, "{pair:?}");
            assert!(pair[0].latency_us <= pair[1].latency_us, "{pair:?}");
        }
        // The points are the .hgrm file's rows, one per line between the header and the footer.
        let mut out = Vec::new();
        recorder.write_percentile_distribution(&mut out).unwrap();
        let rows = String::from_utf8(out).unwrap().lines().filter(|line| !line.starts_with('#')).count();
        assert_eq!(curve.len(), rows - 2);
    }
}
