//! The `sweep` subcommand: the highest offered rate at which p99 latency meets an SLO.
//!
//! Without `--rate-max`, a closed-loop run first finds the peak throughput. Then open-loop runs,
//! each measured from intended start times (see [`crate::run`]), offer the rates a
//! [`RateSearch`] chooses. A run breaks the SLO if p99 is above `--slo-p99-ms`, any operation
//! failed, or less than [`ACHIEVED_SHARE_MIN`] of the offered rate was achieved.
//!
//! - `--search step` (the default) offers `rate_max * k / steps` for k = 1, 2, ... until a run
//!   breaks the SLO: the latency curve at even spacing.
//! - `--search bisect` halves the interval between the highest rate that met the SLO and the
//!   lowest that broke it, until it is within `--precision` of `rate_max` or after `--runs-max`
//!   runs: a finer answer in fewer runs.
//!
//! The answer is the highest rate that met the SLO. Each run's `.hgrm` files and latency charts go
//! to `OUT/rate-<ops>/`; the table of every run, by offered rate, to `OUT/sweep.csv`, and its
//! chart (p50, p99 and p99.9 against achieved throughput, with the SLO) to `OUT/sweep.png`.

use crate::chart::{write_sweep_chart, Heading, SweepMarks, ThroughputPoint, ThroughputSeries};
use crate::rate_search::RateSearch;
use crate::run::{run_transactions, ConnectionArgs, TransactionArgs};
use anyhow::{ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;

/// A run that achieves less than this share of its offered rate is saturated: the server (or the
/// generator) could not keep the schedule, whatever its percentiles say.
const ACHIEVED_SHARE_MIN: f64 = 0.9;
/// Most steps one step sweep runs.
const STEPS_MAX: u32 = 100;
/// The highest `--runs-max` a bisect sweep accepts.
const BISECT_RUNS_MAX: u32 = 100;

/// How a sweep chooses the rates it offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Search {
    /// Evenly spaced rates up to the highest, until one breaks the SLO.
    Step,
    /// Binary search between the highest rate that met the SLO and the lowest that broke it.
    Bisect,
}

impl Search {
    fn name(self) -> &'static str {
        match self {
            Search::Step => "step",
            Search::Bisect => "bisect",
        }
    }
}

/// Options of the `sweep` subcommand.
#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub transactions: TransactionArgs,
    /// The latency objective: p99 at most this many milliseconds.
    #[arg(long)]
    pub slo_p99_ms: f64,
    /// The highest rate to offer; without it, a closed-loop run's throughput.
    #[arg(long)]
    pub rate_max: Option<f64>,
    /// How to choose the rates: `step` offers evenly spaced rates until one breaks the SLO;
    /// `bisect` binary-searches for the highest rate that meets it.
    #[arg(long, value_enum, default_value_t = Search::Step)]
    pub search: Search,
    /// For `--search step`: rates offered, evenly spaced up to the highest.
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// For `--search bisect`: stop once the answer is known within this fraction of the highest
    /// rate.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// For `--search bisect`: most open-loop runs, whatever the precision reached.
    #[arg(long, default_value_t = 12)]
    pub runs_max: u32,
    /// Directory for `sweep.csv`, `sweep.png` and each run's `.hgrm` files and charts.
    #[arg(long)]
    pub out: PathBuf,
    /// Print, as the last line, the sweep as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One open-loop run's figures, from its report.
struct Trial {
    offered: f64,
    achieved: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    errors: u64,
    met: bool,
}

/// The `sweep` subcommand.
pub fn sweep(args: SweepArgs) -> Result<()> {
    ensure!(args.slo_p99_ms > 0.0 && args.slo_p99_ms.is_finite(), "--slo-p99-ms must be positive");
    ensure!((1..=STEPS_MAX).contains(&args.steps), "--steps is 1..={STEPS_MAX}");
    ensure!(args.precision > 0.0 && args.precision < 1.0, "--precision is a fraction between 0 and 1");
    ensure!((1..=BISECT_RUNS_MAX).contains(&args.runs_max), "--runs-max is 1..={BISECT_RUNS_MAX}");
    if let Some(rate_max) = args.rate_max {
        ensure!(rate_max > 0.0 && rate_max.is_finite(), "--rate-max must be a positive rate");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let closed_loop_peak = match args.rate_max {
        Some(_) => None,
        None => {
            let report = run_transactions(&args.connection, &args.transactions, None, None)?;
            let peak = report.to_json()["ops_per_sec"].as_f64().unwrap_or(0.0);
            println!("closed-loop peak: {peak:.0} ops/s");
            Some(peak)
        }
    };
    let rate_max = args.rate_max.or(closed_loop_peak).unwrap_or(0.0);
    ensure!(rate_max > 0.0, "no rate to sweep up to: the closed-loop run achieved nothing");

    let mut search = match args.search {
        Search::Step => RateSearch::step(rate_max, args.steps),
        Search::Bisect => RateSearch::bisect(rate_max, args.precision, args.runs_max),
    };
    let mut trials = Vec::new();
    while let Some(offered) = search.next_rate() {
        let report = run_transactions(&args.connection, &args.transactions, Some(offered), None)?;
        let run_directory = args.out.join(format!("rate-{offered:.0}"));
        report.write_hgrm_files(&run_directory)?;
        report.write_latency_charts(&run_directory)?;
        let figures = report.to_json();
        let number = |field: &str| figures[field].as_f64().unwrap_or(0.0);
        let errors = figures["errors"].as_u64().unwrap_or(0);
        let achieved = number("ops_per_sec");
        let p99_us = number("p99_us");
        let met =
            p99_us <= args.slo_p99_ms * 1000.0 && errors == 0 && achieved >= ACHIEVED_SHARE_MIN * offered;
        println!(
            "offered {offered:>10.0} ops/s: achieved {achieved:>10.0}, p50 {:>8.0} us, p99 {p99_us:>8.0} us, \
             p99.9 {:>8.0} us, errors {errors}: {}",
            number("p50_us"),
            number("p999_us"),
            if met { "meets the SLO" } else { "breaks the SLO" }
        );
        search.on_outcome(offered, met);
        trials.push(Trial {
            offered,
            achieved,
            p50_us: number("p50_us"),
            p99_us,
            p999_us: number("p999_us"),
            max_us: number("max_us"),
            errors,
            met,
        });
    }
    // A bisection tries rates out of order; the table and the chart read from low to high.
    trials.sort_by(|left, right| left.offered.total_cmp(&right.offered));
    let best = search.best();

    let mut csv = String::from(
        "offered_ops_per_sec,achieved_ops_per_sec,p50_us,p99_us,p999_us,max_us,errors,meets_slo\n",
    );
    for trial in &trials {
        writeln!(
            csv,
            "{:.0},{:.0},{:.1},{:.1},{:.1},{:.1},{},{}",
            trial.offered,
            trial.achieved,
            trial.p50_us,
            trial.p99_us,
            trial.p999_us,
            trial.max_us,
            trial.errors,
            trial.met
        )
        .expect("writing to a String cannot fail");
    }
    let csv_path = args.out.join("sweep.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;

    write_chart(&args, &trials, best)?;

    match best {
        Some(rate) => println!("highest rate meeting p99 <= {} ms: {rate:.0} ops/s", args.slo_p99_ms),
        None => println!("no rate tried met p99 <= {} ms", args.slo_p99_ms),
    }
    if args.json {
        let rows: Vec<Value> = trials
            .iter()
            .map(|trial| {
                json!({
                    "offered_ops_per_sec": trial.offered,
                    "achieved_ops_per_sec": trial.achieved,
                    "p50_us": trial.p50_us,
                    "p99_us": trial.p99_us,
                    "p999_us": trial.p999_us,
                    "max_us": trial.max_us,
                    "errors": trial.errors,
                    "meets_slo": trial.met,
                })
            })
            .collect();
        let summary = json!({
            "target": args.connection.target.to_string(),
            "workload": args.transactions.workload.name(),
            "slo_p99_ms": args.slo_p99_ms,
            "search": args.search.name(),
            "closed_loop_peak_ops_per_sec": closed_loop_peak,
            "rate_max": rate_max,
            "best_rate": best,
            // Every run, by offered rate; named `steps` from when every sweep stepped.
            "steps": rows,
        });
        println!("{summary}");
    }
    Ok(())
}

/// Writes `sweep.png`: p50, p99 and p99.9 against achieved throughput, one point per run, with the
/// SLO and the highest rate meeting it.
fn write_chart(args: &SweepArgs, trials: &[Trial], best: Option<f64>) -> Result<()> {
    let percentile_series = |label: &str, latency_us: fn(&Trial) -> f64| ThroughputSeries {
        label: label.to_string(),
        points: trials
            .iter()
            .map(|trial| ThroughputPoint {
                ops_per_sec: trial.achieved,
                latency_us: latency_us(trial),
                met: trial.met,
            })
            .collect(),
    };
    let series = [
        percentile_series("p50", |trial| trial.p50_us),
        percentile_series("p99", |trial| trial.p99_us),
        percentile_series("p99.9", |trial| trial.p999_us),
    ];
    let best_trial = best.and_then(|rate| trials.iter().find(|trial| trial.offered == rate));
    let marks = SweepMarks {
        slo_us: args.slo_p99_ms * 1000.0,
        slo_label: format!("SLO: p99 ≤ {} ms", args.slo_p99_ms),
        best_ops_per_sec: best_trial.map(|trial| trial.achieved),
        best_label: match best_trial {
            Some(trial) => format!(
                "highest rate meeting the SLO:\n{:.0} ops/s offered,\n{:.0} ops/s achieved",
                trial.offered, trial.achieved
            ),
            None => String::new(),
        },
    };
    let heading = Heading {
        title: "sweep: latency against throughput".to_string(),
        subtitle: format!(
            "workload {} against {} · {} connections × {} in flight · {} s per run · {} search",
            args.transactions.workload.name(),
            args.connection.target,
            args.connection.connections,
            args.connection.pipeline,
            args.transactions.duration,
            args.search.name()
        ),
    };
    write_sweep_chart(&args.out.join("sweep.png"), &heading, &series, &marks)
}
