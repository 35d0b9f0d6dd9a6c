//! `ringkv-bench run --workload e` against a real server after a load: the run makes scans and
//! inserts and no errors, and reports scan latency under its own operation, `scan`. Against a
//! `redis://` target, workload e is refused before anything runs. Nothing here is timed.

use crate::common;

use common::bench::{bench, bench_binary, bench_succeeds};
use common::Server;

/// Records loaded: small, so the test stays quick on two shared cores.
const RECORDS: &str = "1000";

#[test]
fn bench_workload_e() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let binary = bench_binary();
    let target = format!("ringkv://127.0.0.1:{}", server.client_port);
    let shared = ["--target", &target, "--records", RECORDS, "--value-size", "100", "--connections", "2"];

    let mut load_args = vec!["load"];
    load_args.extend(shared);
    load_args.extend(["--pipeline", "16", "--json"]);
    let load: serde_json::Value =
        serde_json::from_str(bench_succeeds(&binary, &load_args, &server).lines().last().unwrap()).unwrap();
    assert_eq!(load["errors"], 0, "{load}");

    let mut run_args = vec!["run"];
    run_args.extend(shared);
    run_args.extend(["--workload", "e", "--duration", "1", "--pipeline", "4", "--json"]);
    let output = bench_succeeds(&binary, &run_args, &server);
    let report: serde_json::Value =
        serde_json::from_str(output.lines().last().expect("the run printed something")).unwrap();
    assert_eq!(report["workload"], "e");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["not_found"], 0, "every scan starts at a loaded key: {report}");
    let by_op = report["by_op"].as_object().expect("by_op is a map");
    let scans = by_op["scan"]["ops"].as_u64().unwrap_or_else(|| panic!("no scans in {report}"));
    assert!(scans > 0, "{report}");
    assert!(by_op["scan"]["p99_us"].as_f64().is_some(), "{report}");
    let inserts = by_op.get("insert").and_then(|insert| insert["ops"].as_u64()).unwrap_or(0);
    assert_eq!(scans + inserts, report["ops"].as_u64().unwrap(), "workload e is scans and inserts only");
    assert!(by_op.keys().all(|operation| operation == "scan" || operation == "insert"), "{report}");

    // Redis has no range reads here: refused up front, with a message that says why.
    let refused =
        bench(&binary, &["run", "--target", "redis://127.0.0.1:1", "--workload", "e", "--duration", "1"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("workload e") && stderr.contains("redis://"), "{stderr}");
}
