//! `ringkv-bench load` then `ringkv-bench run --workload a --json` against a real server: the
//! load writes every key (the run reads none missing), the run succeeds without errors, and its
//! JSON line and `.hgrm` files report the reads and updates it made, with a PNG chart of each. And
//! `ringkv-bench sweep --search bisect` writes a row and charts for every run it tried, by offered
//! rate. Nothing here is timed: no assertion depends on the latencies measured.

use crate::common;

use std::path::Path;

use common::bench::{bench_binary, bench_succeeds};
use common::Server;

/// Records loaded: small, so the test stays quick on two shared cores.
const RECORDS: &str = "2000";

/// Checks that `path` holds a PNG image (its signature and header chunk) of more than a blank
/// image's size, and returns its width and height.
fn assert_png(path: &Path) -> (u32, u32) {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    assert!(bytes.len() > 10_000, "{}: {} bytes", path.display(), bytes.len());
    assert_eq!(bytes[..8], SIGNATURE, "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR", "{}", path.display());
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

#[test]
fn bench_load_and_run_against_server() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let binary = bench_binary();
    let target = format!("ringkv://127.0.0.1:{}", server.client_port);
    let shared = ["--target", &target, "--records", RECORDS, "--value-size", "100", "--connections", "2"];

    let mut load_args = vec!["load"];
    load_args.extend(shared);
    load_args.extend(["--pipeline", "16", "--json"]);
    let load_output = bench_succeeds(&binary, &load_args, &server);
    let load: serde_json::Value = serde_json::from_str(load_output.lines().last().unwrap()).unwrap();
    assert_eq!(load["ops"], 2000, "every key inserted once: {load}");
    assert_eq!(load["errors"], 0, "{load}");

    let hdr_directory = root.path().join("hgrm");
    let mut run_args = vec!["run"];
    run_args.extend(shared);
    run_args.extend(["--workload", "a", "--duration", "1", "--pipeline", "8", "--report-interval", "0.25"]);
    run_args.extend(["--json", "--hdr-dir"]);
    run_args.push(hdr_directory.to_str().unwrap());
    let run_output = bench_succeeds(&binary, &run_args, &server);
    let last_line = run_output.lines().last().expect("the run printed something");
    let report: serde_json::Value =
        serde_json::from_str(last_line).expect("the last line is one JSON object");

    assert_eq!(report["target"], target);
    assert_eq!(report["workload"], "a");
    assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["not_found"], 0, "the load wrote every key the run reads: {report}");
    for field in ["seconds", "ops_per_sec", "p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(report[field].as_f64().is_some(), "{field} missing: {report}");
    }
    // Reported even when none happened, so a script can tell a stalled generator from a slow node.
    assert!(report["generator_nudges"].as_u64().is_some(), "generator_nudges missing: {report}");
    // The generator's wait for a CPU: a number where the kernel keeps the account (it does here
    // when /proc has schedstat), null where it does not.
    let cpu_wait = &report["client_cpu"]["cpu_wait_seconds"];
    if std::path::Path::new("/proc/self/schedstat").exists() {
        assert!(cpu_wait.as_f64().is_some_and(|seconds| seconds >= 0.0), "{report}");
    } else {
        assert!(cpu_wait.is_null(), "{report}");
    }
    let by_op = report["by_op"].as_object().expect("by_op is a map");
    let mut per_operation = 0;
    for operation in ["read", "update"] {
        let ops = by_op[operation]["ops"].as_u64().unwrap_or_else(|| panic!("no {operation} in {report}"));
        assert!(ops > 0, "{report}");
        per_operation += ops;
        // The .hgrm file holds the same operations as the JSON line.
        let hgrm = std::fs::read_to_string(hdr_directory.join(format!("{operation}.hgrm"))).unwrap();
        let total_line = hgrm.lines().find(|line| line.starts_with("#[Max")).expect("the footer");
        assert!(total_line.ends_with(&format!("Total count    = {ops:>12}]")), "{total_line} against {ops}");
        let (width, height) = assert_png(&hdr_directory.join(format!("{operation}.png")));
        assert!(width >= 800 && height >= 500, "{operation}.png is {width}x{height}");
    }
    assert_png(&hdr_directory.join("latency.png"));
    assert_eq!(per_operation, report["ops"].as_u64().unwrap(), "workload a is reads and updates only");

    // The timeline holds every operation once, in windows of the interval asked for, in order.
    assert_eq!(report["interval_s"], 0.25, "{report}");
    let windows = report["intervals"].as_array().expect("intervals is a list");
    assert!(windows.len() >= 4, "a run of a second has four windows or more: {report}");
    let mut in_windows = 0;
    for (index, window) in windows.iter().enumerate() {
        let start = window["start_s"].as_f64().unwrap();
        assert!((start - index as f64 * 0.25).abs() < 1e-9, "{window}");
        let ops = window["ops"].as_u64().unwrap();
        in_windows += ops;
        if ops > 0 {
            let (p50, max) = (window["p50_us"].as_u64().unwrap(), window["max_us"].as_u64().unwrap());
            assert!(p50 > 0 && p50 <= max, "{window}");
        }
    }
    assert_eq!(in_windows, report["ops"].as_u64().unwrap(), "{report}");
    assert!(run_output.contains("all operations by when they finished"), "{run_output}");
}

#[test]
fn bench_sweep_bisect_against_server() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let binary = bench_binary();
    let target = format!("ringkv://127.0.0.1:{}", server.client_port);
    let out = root.path().join("sweep");
    // Read-only and unloaded: every read finds nothing, which is not an error. A lenient SLO and
    // low rates, but the outcomes are not asserted: the rates tried depend on them.
    let mut args = vec!["sweep", "--target", &target, "--records", RECORDS, "--connections", "2"];
    args.extend(["--pipeline", "4", "--workload", "c", "--duration", "0.5", "--slo-p99-ms", "1000"]);
    args.extend(["--rate-max", "2000", "--search", "bisect", "--precision", "0.3", "--runs-max", "3"]);
    args.extend(["--json", "--out", out.to_str().unwrap()]);
    let output = bench_succeeds(&binary, &args, &server);
    let summary: serde_json::Value =
        serde_json::from_str(output.lines().last().expect("the sweep printed something")).unwrap();
    assert_eq!(summary["search"], "bisect", "{summary}");
    let runs = summary["steps"].as_array().expect("steps is a list");
    assert!((1..=3).contains(&runs.len()), "--runs-max 3: {summary}");
    let offered: Vec<f64> = runs.iter().map(|run| run["offered_ops_per_sec"].as_f64().unwrap()).collect();
    assert!(offered.windows(2).all(|pair| pair[0] < pair[1]), "rows by offered rate: {offered:?}");
    // Bisection starts halfway up.
    assert!(offered.contains(&1000.0), "{offered:?}");

    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let csv_offered: Vec<&str> = csv.lines().skip(1).map(|line| line.split(',').next().unwrap()).collect();
    let rates: Vec<String> = offered.iter().map(|rate| format!("{rate:.0}")).collect();
    assert_eq!(csv_offered, rates, "{csv}");
    assert_png(&out.join("sweep.png"));
    for rate in rates {
        let run_directory = out.join(format!("rate-{rate}"));
        assert!(run_directory.join("read.hgrm").is_file(), "{}", run_directory.display());
        assert_png(&run_directory.join("read.png"));
        assert_png(&run_directory.join("latency.png"));
    }
}
