//! A long outage under load: the hints kept for the missing replica stay under their byte
//! bound, the ones past it are dropped and counted, and once the replica is back hints replay
//! what they hold and anti-entropy repairs the rest.

use crate::common;

use common::cluster::start_three_nodes_with;
use common::healing::{
    assert_reads_every_key, field, log_lines, put_keys_at_quorum, repair_until_clean, wait_for_log,
    wait_for_sum,
};

const KEYS: usize = 1_000;
/// About a hundred hints of these writes per destination and shard.
const DESTINATION_BYTES_MAX: u64 = 8_192;

#[test]
fn hints_stay_bounded_and_anti_entropy_repairs_what_they_dropped() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let bound = DESTINATION_BYTES_MAX.to_string();
    let flags = [
        "--replica-timeout-ms",
        "1000",
        "--hints-destination-bytes-max",
        &bound,
        "--hints-bytes-max",
        &bound,
    ];
    let [first, _second, mut third] = start_three_nodes_with(root.path(), &flags);
    let since = first.log().len();
    third.terminate();
    wait_for_log(&first, since, "node down node_id=3 ");
    let mut client = first.client();
    let versions = put_keys_at_quorum(&mut client, KEYS);
    // Both shards filled their hints for node 3 and dropped the rest.
    let deadline = std::time::Instant::now() + common::cluster::SETTLE_DEADLINE;
    loop {
        let lines = figures(&first, since);
        let dropped: u64 = [0, 1]
            .iter()
            .filter_map(|shard| {
                lines
                    .iter()
                    .rev()
                    .find(|line| field(line, "shard") == Some(*shard))
                    .and_then(|line| field(line, "dropped_full"))
            })
            .sum();
        if dropped > 0 && dropped + lines_kept(&lines) >= KEYS as u64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hints never filled up:\n{}", lines.join("\n"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let lines = figures(&first, since);
    for line in &lines {
        println!("{line}");
        let kept_bytes = field(line, "kept_bytes").expect("kept_bytes");
        let shard_bytes = field(line, "shard_bytes").expect("shard_bytes");
        assert!(kept_bytes <= DESTINATION_BYTES_MAX, "{kept_bytes} bytes of hints kept past the bound");
        assert!(shard_bytes <= DESTINATION_BYTES_MAX, "{shard_bytes} bytes of hints kept past the bound");
    }
    let kept = lines_kept(&lines);
    assert!(kept > 0 && kept < KEYS as u64, "{kept} hints kept for {KEYS} writes");

    let since = first.log().len();
    third.restart();
    wait_for_log(&first, since, "node up node_id=3 ");
    for other in [1, 2] {
        wait_for_log(&third, 0, &format!("node up node_id={other} "));
    }
    wait_for_sum(&first, since, "hint replay finished", "replayed", kept);
    let repaired = repair_until_clean(&third, 30);
    println!("hints kept and replayed: {kept}; keys repaired by anti-entropy: {repaired}");
    assert!(repaired > 0, "the dropped hints' writes were repaired by anti-entropy");
    assert_reads_every_key(&mut third.client(), &versions, |index| format!("v{index}"), "node 3 missed it");
}

/// The hint figures the shards logged ("hints durable" once synced, "hints kept" when hints
/// were dropped with nothing new to sync).
fn figures(server: &common::Server, since: usize) -> Vec<String> {
    log_lines(server, since, "destination=3")
        .into_iter()
        .filter(|line| line.contains("hints durable") || line.contains("hints kept"))
        .collect()
}

/// Hints kept, over both shards, by their last figures.
fn lines_kept(lines: &[String]) -> u64 {
    [0, 1]
        .iter()
        .filter_map(|shard| {
            lines
                .iter()
                .rev()
                .find(|line| field(line, "shard") == Some(*shard))
                .and_then(|line| field(line, "kept"))
        })
        .sum()
}
