//! The `sweep` subcommand: the highest offered rate at which p99 latency meets an SLO.
//!
//! Without `--rate-max`, a closed-loop run first finds the peak throughput. Then open-loop runs
//! offer `rate_max * k / steps` for k = 1, 2, ..., each measured from intended start times (see
//! [`crate::run`]), until a step breaks the SLO: p99 above `--slo-p99-ms`, any error, or less than
//! [`ACHIEVED_SHARE_MIN`] of the offered rate achieved. The answer is the last rate that met it.
//! Each step's `.hgrm` files go to `OUT/rate-<ops>/`, the table to `OUT/sweep.csv`.

use crate::run::{run_transactions, ConnectionArgs, TransactionArgs};
use anyhow::{ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;

/// A step that achieves less than this share of its offered rate is saturated: the server (or
/// the generator) could not keep the schedule, whatever its percentiles say.
const ACHIEVED_SHARE_MIN: f64 = 0.9;
/// Most steps one sweep runs.
const STEPS_MAX: u32 = 100;

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
    /// Rates offered, evenly spaced up to the highest.
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// Directory for `sweep.csv` and each step's `.hgrm` files.
    #[arg(long)]
    pub out: PathBuf,
    /// Print, as the last line, the sweep as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One step's figures, from its report.
struct Step {
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
    ensure!(args.slo_p99_ms > 0.0, "--slo-p99-ms must be positive");
    ensure!((1..=STEPS_MAX).contains(&args.steps), "--steps is 1..={STEPS_MAX}");
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let closed_loop_peak = match args.rate_max {
        Some(_) => None,
        None => {
            let report = run_transactions(&args.connection, &args.transactions, None)?;
            let peak = report.to_json()["ops_per_sec"].as_f64().unwrap_or(0.0);
            println!("closed-loop peak: {peak:.0} ops/s");
            Some(peak)
        }
    };
    let rate_max = args.rate_max.or(closed_loop_peak).unwrap_or(0.0);
    ensure!(rate_max > 0.0, "no rate to sweep up to: the closed-loop run achieved nothing");

    let mut steps = Vec::new();
    for step in 1..=args.steps {
        let offered = rate_max * f64::from(step) / f64::from(args.steps);
        let report = run_transactions(&args.connection, &args.transactions, Some(offered))?;
        report.write_hgrm_files(&args.out.join(format!("rate-{offered:.0}")))?;
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
        steps.push(Step {
            offered,
            achieved,
            p50_us: number("p50_us"),
            p99_us,
            p999_us: number("p999_us"),
            max_us: number("max_us"),
            errors,
            met,
        });
        if !met {
            break;
        }
    }

    let mut csv = String::from(
        "offered_ops_per_sec,achieved_ops_per_sec,p50_us,p99_us,p999_us,max_us,errors,meets_slo\n",
    );
    for step in &steps {
        writeln!(
            csv,
            "{:.0},{:.0},{:.1},{:.1},{:.1},{:.1},{},{}",
            step.offered,
            step.achieved,
            step.p50_us,
            step.p99_us,
            step.p999_us,
            step.max_us,
            step.errors,
            step.met
        )
        .expect("writing to a String cannot fail");
    }
    let csv_path = args.out.join("sweep.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;

    let best = steps
        .iter()
        .filter(|step| step.met)
        .map(|step| step.offered)
        .fold(None, |best: Option<f64>, rate| Some(best.map_or(rate, |best| best.max(rate))));
    match best {
        Some(rate) => println!("highest rate meeting p99 <= {} ms: {rate:.0} ops/s", args.slo_p99_ms),
        None => println!("no rate tried met p99 <= {} ms", args.slo_p99_ms),
    }
    if args.json {
        let rows: Vec<Value> = steps
            .iter()
            .map(|step| {
                json!({
                    "offered_ops_per_sec": step.offered,
                    "achieved_ops_per_sec": step.achieved,
                    "p50_us": step.p50_us,
                    "p99_us": step.p99_us,
                    "p999_us": step.p999_us,
                    "max_us": step.max_us,
                    "errors": step.errors,
                    "meets_slo": step.met,
                })
            })
            .collect();
        let summary = json!({
            "target": args.connection.target.to_string(),
            "workload": args.transactions.workload.name(),
            "slo_p99_ms": args.slo_p99_ms,
            "closed_loop_peak_ops_per_sec": closed_loop_peak,
            "rate_max": rate_max,
            "best_rate": best,
            "steps": rows,
        });
        println!("{summary}");
    }
    Ok(())
}
