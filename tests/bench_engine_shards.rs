//! `ringkv-bench engine --shards 2`: two engines, one per executor thread, each in its own
//! directory with half the key space and half the operations; each benchmark's row counts them
//! together. The reads are checked by the bench itself against what each shard wrote, so a run
//! that exits 0 read back every key it wrote. Nothing here is timed.

use crate::common;

use common::bench::{bench, bench_binary};
use serde_json::Value;

#[test]
fn bench_engine_shards() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("engine");
    let binary = bench_binary();
    let args = [
        "engine",
        "--benchmarks",
        "fillrandom,readrandom",
        "--num",
        "2001",
        "--shards",
        "2",
        "--concurrency",
        "4",
        "--memtable-mb",
        "1",
        "--json",
        "--dir",
        directory.to_str().unwrap(),
    ];
    let output = bench(&binary, &args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "ringkv-bench {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for benchmark in ["fillrandom", "readrandom"] {
        let of_benchmark: Vec<&Value> = lines.iter().filter(|line| line["benchmark"] == benchmark).collect();
        let mut shard_ops: Vec<(u64, u64)> = of_benchmark
            .iter()
            .filter_map(|line| Some((line["shard"].as_u64()?, line["ops"].as_u64().unwrap())))
            .collect();
        shard_ops.sort();
        // 2001 operations: the first shard takes the odd one.
        assert_eq!(shard_ops, vec![(0, 1001), (1, 1000)], "{benchmark}: {stdout}");
        let together: Vec<&&Value> =
            of_benchmark.iter().filter(|line| line.get("shards").is_some()).collect();
        assert_eq!(together.len(), 1, "{benchmark}: one line for the shards together: {stdout}");
        assert_eq!(together[0]["shards"], 2, "{stdout}");
        assert_eq!(together[0]["ops"], 2001, "{stdout}");
        let slowest = of_benchmark
            .iter()
            .filter(|line| line.get("shard").is_some())
            .map(|line| line["seconds"].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(
            together[0]["seconds"].as_f64().unwrap(),
            slowest,
            "time is the slowest shard's: {stdout}"
        );
    }
    for shard in 0..2 {
        let shard_directory = directory.join(format!("shard-{shard}"));
        let files = std::fs::read_dir(&shard_directory)
            .unwrap_or_else(|error| panic!("{}: {error}", shard_directory.display()))
            .count();
        assert!(files > 0, "shard {shard} wrote nothing in {}", shard_directory.display());
    }

    // Splitting an existing database into shards is refused, with the reason.
    let refused =
        bench(&binary, &["engine", "--use-existing", "--shards", "2", "--dir", directory.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--use-existing"), "{stderr}");
}
