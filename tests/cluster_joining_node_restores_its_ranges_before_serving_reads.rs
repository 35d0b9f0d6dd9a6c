//! A node that joins a cluster holding data (`--join`) takes over ranges it has no data for yet.
//! Until anti-entropy has brought each range from the other replicas it answers no replica read
//! (reads go to the others, so its empty copy never answers "not found" for an acknowledged
//! write); the gate outlives a restart, and once every range is restored the node serves its own
//! copy.

use crate::common;

use common::cluster::{peer_port, start_node_with, start_three_nodes_with, wait_for_every_shard};
use common::healing::{
    assert_reads_every_key, field, log_lines, put_keys_at, wait_for_log, wait_for_rebuilds,
};
use common::metrics::{scrape, total};
use common::{LISTENER, SHARDS};
use ringkv_wire::Consistency;

const KEYS: usize = 300;

#[test]
fn a_joining_node_answers_replica_reads_only_after_anti_entropy_restored_its_ranges() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    // No hints: only anti-entropy can bring the data to the new node.
    let flags = ["--replica-timeout-ms", "1000", "--hints-bytes-max", "0", "--metrics-listen", LISTENER];
    let [first, mut second, third] = start_three_nodes_with(root.path(), &flags);
    let versions = put_keys_at(&mut first.client(), KEYS, Consistency::All);
    let value_of = |index: usize| format!("v{index}");

    // Node 2 is down, so node 4 cannot finish restoring the ranges it shares with node 2.
    second.terminate();
    let join_flags: Vec<&str> = flags.iter().copied().chain(["--join"]).collect();
    let mut fourth = start_node_with(root.path(), 4, Some(peer_port(&first)), &join_flags);
    assert!(fourth.log().contains("joining a cluster that holds data"), "{}", fourth.log());
    wait_for_log(&fourth, 0, "node up node_id=1 ");
    wait_for_every_shard(&[&first, &third, &fourth], &[1, 3, 4], &[2]);

    // At ONE through node 4, which asks its own copy first when it is a replica, every key is
    // found: its empty copy answers nothing and the others serve the read.
    let metrics_port = fourth.listener_port(0);
    assert_eq!(total(&scrape(metrics_port), "ringkv_shard_rebuilding", &[]), SHARDS as u64);
    assert_reads_every_key(&mut fourth.client(), &versions, value_of, "served by the others");

    // A restart before the restore keeps the gate (the marks are on disk).
    fourth.terminate();
    let restarted_at = fourth.log().len();
    fourth.restart();
    wait_for_log(&fourth, restarted_at, "this shard is rebuilding");
    wait_for_every_shard(&[&fourth], &[1, 3, 4], &[2]);
    assert_eq!(total(&scrape(metrics_port), "ringkv_shard_rebuilding", &[]), SHARDS as u64);
    let mut through_fourth = fourth.client();
    assert_reads_every_key(
        &mut through_fourth,
        &versions,
        value_of,
        "served by the others after the restart",
    );
    assert!(log_lines(&fourth, 0, "serving replica reads again").is_empty(), "{}", fourth.log());

    // Node 2 back: anti-entropy restores every range of node 4, which then serves its own copy.
    let since = fourth.log().len();
    second.restart();
    wait_for_rebuilds(&fourth, since, "node 4");
    let pulled: u64 = log_lines(&fourth, 0, "anti-entropy repaired keys")
        .iter()
        .filter_map(|line| field(line, "pulled"))
        .sum();
    println!("keys pulled by the joining node: {pulled}");
    // With N = 3 of 4 nodes, node 4 holds about three keys in four.
    assert!(pulled >= (KEYS / 2) as u64, "{pulled} keys pulled of {KEYS}");
    assert_reads_every_key(&mut through_fourth, &versions, value_of, "restored");
    for shard in 0..SHARDS {
        assert!(!fourth.data_dir.join(format!("shard-{shard}")).join("REBUILDING").exists());
    }
    assert_eq!(total(&scrape(metrics_port), "ringkv_shard_rebuilding", &[]), 0);
}
