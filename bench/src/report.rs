//! What a `load` or `run` measured: latencies per operation kind, errors by kind, and the load
//! generator's own CPU use; printed as a terminal summary, one JSON line, `.hgrm` files and PNG
//! charts of latency by percentile.

use crate::chart::{write_percentile_chart, Heading, LatencyCurve};
use crate::cpu_usage::CpuTime;
use crate::histogram::{LatencyRecorder, LatencySummary};
use crate::timeline::Timeline;
use crate::ycsb::OperationKind;
use anyhow::{Context, Result};
use ringkv_io::nudge;
use ringkv_io::SchedStat;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What one executor thread measured; merged across threads at the end of a run.
pub struct Measurements {
    /// Latencies of successful operations, by [`OperationKind::index`].
    pub latencies: [LatencyRecorder; OperationKind::ALL.len()],
    /// Failed operations by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Reads that found no value (YCSB's `NOT_FOUND`): not errors, but a sign of a short load.
    pub not_found: u64,
    /// Every kind's latencies by when they finished, when `--report-interval` asks for them.
    pub timeline: Option<Timeline>,
}

impl Measurements {
    /// Measurements with a timeline of `report_interval`-long windows when one is given.
    pub fn new(report_interval: Option<Duration>) -> Self {
        Measurements {
            latencies: std::array::from_fn(|_| LatencyRecorder::new()),
            errors: BTreeMap::new(),
            not_found: 0,
            timeline: report_interval.map(Timeline::new),
        }
    }

    /// Records one operation of `kind` that took `latency` and finished `finished` after the run's
    /// start.
    pub fn record(&mut self, kind: OperationKind, latency: Duration, finished: Duration) {
        self.latencies[kind.index()].record(latency);
        if let Some(timeline) = &mut self.timeline {
            timeline.record(finished, latency);
        }
    }

    pub fn record_error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Measurements) {
        for (mine, theirs) in self.latencies.iter_mut().zip(&other.latencies) {
            mine.merge(theirs);
        }
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        self.not_found += other.not_found;
        if let (Some(mine), Some(theirs)) = (&mut self.timeline, &other.timeline) {
            mine.merge(theirs);
        }
    }

    /// Successful operations of every kind.
    pub fn operations(&self) -> u64 {
        self.latencies.iter().map(LatencyRecorder::count).sum()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every kind's latencies together.
    fn all_latencies(&self) -> LatencyRecorder {
        let mut all = LatencyRecorder::new();
        for recorder in &self.latencies {
            all.merge(recorder);
        }
        all
    }

    /// The kinds that ran, with their latencies.
    fn kinds_seen(&self) -> impl Iterator<Item = (OperationKind, &LatencyRecorder)> {
        OperationKind::ALL
            .into_iter()
            .map(|kind| (kind, &self.latencies[kind.index()]))
            .filter(|(_, recorder)| recorder.count() > 0)
    }
}

/// How a run was set up, for the report.
pub struct RunDescription {
    pub target: String,
    pub workload: String,
    pub records: u64,
    pub value_size: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub threads: usize,
    pub rate: Option<f64>,
}

/// A finished run: its set-up, what it measured, how long it took and the CPU it used.
pub struct RunReport {
    pub description: RunDescription,
    pub measurements: Measurements,
    pub wall: Duration,
    pub cpu: CpuTime,
    /// The kernel's account of the worker threads (time on a CPU, time ready but waiting for
    /// one), summed; `None` where the kernel keeps none.
    pub scheduler: Option<SchedStat>,
    /// Times one of the generator's executors slept through its own timer and was woken from
    /// outside (`ringkv_io::nudge`): each may have stalled the generator for up to 100 ms.
    pub generator_nudges: u64,
}

fn latency_fields(summary: &LatencySummary, fields: &mut Map<String, Value>) {
    fields.insert("p50_us".into(), json!(summary.p50_us));
    fields.insert("p90_us".into(), json!(summary.p90_us));
    fields.insert("p99_us".into(), json!(summary.p99_us));
    fields.insert("p999_us".into(), json!(summary.p999_us));
    fields.insert("max_us".into(), json!(summary.max_us));
    fields.insert("mean_us".into(), json!(summary.mean_us));
}

/// The timeline as a table, one row per window: when it starts, its operations and their
/// percentiles (every kind together, by when each finished).
fn timeline_text(timeline: &Timeline) -> String {
    let interval = timeline.interval().as_secs_f64();
    let mut text = format!("every {interval} s, all operations by when they finished:\n");
    text += &format!(
        "{:>9} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10}\n",
        "from s", "ops", "ops/s", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    for window in timeline.summaries() {
        // The last window may hold everything after it began: no rate for it.
        let per_second =
            if window.open_ended { "-".to_string() } else { format!("{:.0}", window.ops as f64 / interval) };
        text += &format!(
            "{:>8.2}{} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10}\n",
            window.start.as_secs_f64(),
            if window.open_ended { "+" } else { " " },
            window.ops,
            per_second,
            window.p50_us,
            window.p99_us,
            window.p999_us,
            window.max_us
        );
    }
    text
}

/// The share of the run a generator thread spent waiting for a CPU, on average, from which the
/// report says its latencies overstate the server's.
const CPU_WAIT_WARNING_SHARE: f64 = 0.1;

impl RunReport {
    /// The share of the run the generator's threads, on average, spent ready to run but waiting
    /// for a CPU; `None` where the kernel keeps no account of it.
    pub fn cpu_wait_share(&self) -> Option<f64> {
        let scheduler = self.scheduler?;
        let threads = self.description.threads.min(self.description.connections).max(1);
        let thread_seconds = self.wall.as_secs_f64() * threads as f64;
        (thread_seconds > 0.0).then(|| scheduler.waiting.as_secs_f64() / thread_seconds)
    }

    fn per_second(&self, count: u64) -> f64 {
        let seconds = self.wall.as_secs_f64();
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    }

    /// The report as one JSON object (`server-vs-redis.sh` reads it).
    pub fn to_json(&self) -> Value {
        let description = &self.description;
        let measurements = &self.measurements;
        let ops = measurements.operations();
        let mut fields = Map::new();
        fields.insert("target".into(), json!(description.target));
        fields.insert("workload".into(), json!(description.workload));
        fields.insert("records".into(), json!(description.records));
        fields.insert("value_size".into(), json!(description.value_size));
        fields.insert("connections".into(), json!(description.connections));
        fields.insert("pipeline".into(), json!(description.pipeline));
        fields.insert("threads".into(), json!(description.threads));
        fields.insert("rate".into(), json!(description.rate));
        fields.insert("ops".into(), json!(ops));
        fields.insert("seconds".into(), json!(self.wall.as_secs_f64()));
        fields.insert("ops_per_sec".into(), json!(self.per_second(ops)));
        latency_fields(&measurements.all_latencies().summary(), &mut fields);
        fields.insert("errors".into(), json!(measurements.error_count()));
        fields.insert("errors_by_kind".into(), json!(measurements.errors));
        fields.insert("not_found".into(), json!(measurements.not_found));
        let mut by_op = Map::new();
        for (kind, recorder) in measurements.kinds_seen() {
            let mut op = Map::new();
            op.insert("ops".into(), json!(recorder.count()));
            op.insert("ops_per_sec".into(), json!(self.per_second(recorder.count())));
            latency_fields(&recorder.summary(), &mut op);
            by_op.insert(kind.name().into(), Value::Object(op));
        }
        fields.insert("by_op".into(), Value::Object(by_op));
        fields.insert(
            "client_cpu".into(),
            json!({
                "user_seconds": self.cpu.user.as_secs_f64(),
                "system_seconds": self.cpu.system.as_secs_f64(),
                "percent_of_one_core": self.cpu.percent_of_one_core(self.wall),
                "cpu_wait_seconds": self.scheduler.map(|scheduler| scheduler.waiting.as_secs_f64()),
                "cpu_wait_share": self.cpu_wait_share(),
            }),
        );
        fields.insert("generator_nudges".into(), json!(self.generator_nudges));
        if let Some(timeline) = &measurements.timeline {
            let windows: Vec<Value> = timeline
                .summaries()
                .iter()
                .map(|window| {
                    json!({
                        "start_s": window.start.as_secs_f64(),
                        "ops": window.ops,
                        "p50_us": window.p50_us,
                        "p99_us": window.p99_us,
                        "p999_us": window.p999_us,
                        "max_us": window.max_us,
                        "open_ended": window.open_ended,
                    })
                })
                .collect();
            fields.insert("interval_s".into(), json!(timeline.interval().as_secs_f64()));
            fields.insert("intervals".into(), Value::Array(windows));
        }
        Value::Object(fields)
    }

    /// The terminal summary: throughput, percentiles per operation, errors, the tool's own CPU.
    pub fn summary_text(&self) -> String {
        let description = &self.description;
        let measurements = &self.measurements;
        let ops = measurements.operations();
        let mut text = format!(
            "{} workload {} against {}: {} connections x {} in flight on {} thread(s), {}\n",
            if description.workload == "load" { "load" } else { "run" },
            description.workload,
            description.target,
            description.connections,
            description.pipeline,
            description.threads,
            match description.rate {
                Some(rate) => format!("open loop at {rate:.0} ops/s (latency from intended start)"),
                None => "closed loop".into(),
            }
        );
        text +=
            &format!("{ops} ops in {:.2} s: {:.0} ops/s\n", self.wall.as_secs_f64(), self.per_second(ops));
        text += &format!(
            "{:<18} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
            "operation", "ops", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
        );
        let all = measurements.all_latencies();
        let rows =
            measurements.kinds_seen().map(|(kind, recorder)| (kind.name(), recorder)).chain([("all", &all)]);
        for (name, recorder) in rows {
            let summary = recorder.summary();
            text += &format!(
                "{:<18} {:>10} {:>12.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.0}\n",
                name,
                recorder.count(),
                self.per_second(recorder.count()),
                summary.p50_us,
                summary.p90_us,
                summary.p99_us,
                summary.p999_us,
                summary.max_us
            );
        }
        if measurements.errors.is_empty() {
            text += "errors: none\n";
        } else {
            let kinds: Vec<String> =
                measurements.errors.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
            text += &format!("errors: {}\n", kinds.join(", "));
        }
        if measurements.not_found > 0 {
            text += &format!("reads that found no value: {}\n", measurements.not_found);
        }
        if self.generator_nudges > 0 {
            text += &format!(
                "the generator's executors slept through their own timers {} time(s) and were woken \
                 from outside: latencies around then include up to {} ms of the generator's own stall\n",
                self.generator_nudges,
                nudge::NUDGE_PERIOD.as_millis()
            );
        }
        text += &format!(
            "load generator CPU: {:.2} s user, {:.2} s system, {:.0}% of one core",
            self.cpu.user.as_secs_f64(),
            self.cpu.system.as_secs_f64(),
            self.cpu.percent_of_one_core(self.wall)
        );
        if let Some(scheduler) = self.scheduler {
            text += &format!("; waited {:.2} s for a CPU", scheduler.waiting.as_secs_f64());
        }
        text += "\n";
        if let Some(share) = self.cpu_wait_share() {
            if share >= CPU_WAIT_WARNING_SHARE {
                text += &format!(
                    "the generator's threads were ready to run but waited for a CPU {:.0}% of the run: \
                     every latency above includes that wait, so they overstate the server's; give the \
                     generator cores of its own\n",
                    share * 100.0
                );
            }
        }
        if let Some(timeline) = &measurements.timeline {
            text += &timeline_text(timeline);
        }
        text
    }

    /// What the charts' subtitle says about the run: the workload, the target, the load offered
    /// and the throughput achieved.
    fn chart_subtitle(&self) -> String {
        let description = &self.description;
        let ops_per_sec = self.per_second(self.measurements.operations());
        let schedule = match description.rate {
            Some(rate) => format!("open loop at {rate:.0} ops/s offered · {ops_per_sec:.0} achieved"),
            None => format!("closed loop · {ops_per_sec:.0} ops/s"),
        };
        format!(
            "workload {} against {} · {} connections × {} in flight · {schedule}",
            description.workload, description.target, description.connections, description.pipeline
        )
    }

    /// Writes, in HdrHistogram's plotter's form, a PNG chart of latency by percentile per
    /// operation kind that ran (`<kind>.png`) and one of every kind together (`latency.png`).
    pub fn write_latency_charts(&self, directory: &Path) -> Result<()> {
        std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
        let subtitle = self.chart_subtitle();
        let curves: Vec<(OperationKind, LatencyCurve)> = self
            .measurements
            .kinds_seen()
            .map(|(kind, recorder)| {
                let label = format!(
                    "{} ({} ops, {:.0} ops/s)",
                    kind.name(),
                    recorder.count(),
                    self.per_second(recorder.count())
                );
                let curve =
                    LatencyCurve { label, count: recorder.count(), points: recorder.percentile_curve() };
                (kind, curve)
            })
            .collect();
        if curves.is_empty() {
            return Ok(());
        }
        for (kind, curve) in &curves {
            let heading = Heading {
                title: format!("{} latency by percentile", kind.name()),
                subtitle: subtitle.clone(),
            };
            let path = directory.join(format!("{}.png", kind.name()));
            write_percentile_chart(&path, &heading, std::slice::from_ref(curve))?;
        }
        let heading = Heading { title: "latency by percentile".to_string(), subtitle };
        let all: Vec<LatencyCurve> = curves.into_iter().map(|(_, curve)| curve).collect();
        write_percentile_chart(&directory.join("latency.png"), &heading, &all)
    }

    /// Writes `<kind>.hgrm` per operation kind that ran, in HdrHistogram's percentile format.
    pub fn write_hgrm_files(&self, directory: &Path) -> Result<()> {
        std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
        for (kind, recorder) in self.measurements.kinds_seen() {
            let path = directory.join(format!("{}.hgrm", kind.name()));
            let mut text = Vec::new();
            recorder.write_percentile_distribution(&mut text).expect("writing to a Vec cannot fail");
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(threads: usize, scheduler: Option<SchedStat>) -> RunReport {
        let mut measurements = Measurements::new(None);
        measurements.record(OperationKind::Read, Duration::from_micros(300), Duration::from_millis(1));
        RunReport {
            description: RunDescription {
                target: "ringkv://127.0.0.1:1".into(),
                workload: "c".into(),
                records: 1,
                value_size: 1,
                connections: 8,
                pipeline: 1,
                threads,
                rate: None,
            },
            measurements,
            wall: Duration::from_secs(10),
            cpu: CpuTime::default(),
            scheduler,
            generator_nudges: 0,
        }
    }

    #[test]
    fn a_starved_generator_is_said_to_overstate_latencies() {
        // Two threads waiting 3 s in all over 10 s: 15% of the run each, on average.
        let starved = report(2, Some(SchedStat { waiting: Duration::from_secs(3), ..SchedStat::default() }));
        assert_eq!(starved.cpu_wait_share(), Some(0.15));
        let text = starved.summary_text();
        assert!(text.contains("; waited 3.00 s for a CPU\n"), "{text}");
        assert!(text.contains("waited for a CPU 15% of the run"), "{text}");
        assert_eq!(starved.to_json()["client_cpu"]["cpu_wait_seconds"], json!(3.0));
        assert_eq!(starved.to_json()["client_cpu"]["cpu_wait_share"], json!(0.15));

        // One thread waiting 0.5 s of 10: said, not warned about.
        let fed = report(1, Some(SchedStat { waiting: Duration::from_millis(500), ..SchedStat::default() }));
        let text = fed.summary_text();
        assert!(text.contains("; waited 0.50 s for a CPU\n"), "{text}");
        assert!(!text.contains("overstate"), "{text}");

        // A kernel without the account: nothing said, and null in the JSON.
        let unknown = report(1, None);
        assert_eq!(unknown.cpu_wait_share(), None);
        assert!(!unknown.summary_text().contains("for a CPU"));
        assert_eq!(unknown.to_json()["client_cpu"]["cpu_wait_seconds"], Value::Null);
    }
}
