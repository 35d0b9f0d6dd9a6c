//! A replica that lost its data (its WAL, tables and manifest deleted while it was stopped, its
//! identity kept) answers no read of what it lost until anti-entropy has restored every range
//! from the other replicas: reads through it are served by the others meanwhile, a quorum is
//! never made of its empty copy, and with no read repairing anything it gets every key back.

use crate::common;

use bytes::Bytes;
use common::cluster::{start_three_nodes_with, wait_for_every_shard};
use common::healing::{
    assert_reads_every_key, field, log_lines, put_keys_at, wait_for_log, wait_for_rebuilds, wipe_engine_files,
};
use common::metrics::{scrape, total};
use common::{LISTENER, SHARDS};
use ringkv_wire::{Consistency, ErrorCode, Operation};

const KEYS: usize = 300;

#[test]
fn anti_entropy_restores_every_key_of_a_wiped_replica() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    // No hints: only anti-entropy can bring the data back.
    let flags = ["--replica-timeout-ms", "1000", "--hints-bytes-max", "0", "--metrics-listen", LISTENER];
    let [first, mut second, mut third] = start_three_nodes_with(root.path(), &flags);
    let versions = put_keys_at(&mut first.client(), KEYS, Consistency::All);
    let value_of = |index: usize| format!("v{index}");

    // Node 3 loses its data; node 2 is down too, so node 3 cannot restore its ranges yet.
    third.terminate();
    let removed = wipe_engine_files(&third.data_dir);
    assert!(removed > 0, "the node had engine files");
    second.terminate();
    third.restart();
    assert!(third.log().contains("the shard's storage files are gone"), "{}", third.log());
    wait_for_log(&third, 0, "node up node_id=1 ");
    wait_for_every_shard(&[&third], &[1, 3], &[2]);

    // Its empty copy answers nothing: a read at ONE through it is served by node 1, and a
    // quorum, which would need its copy, fails rather than answer "not found".
    let mut through_third = third.client();
    assert_reads_every_key(&mut through_third, &versions, value_of, "served by the others");
    let get = Operation::Get { key: Bytes::from_static(b"key-0") };
    let refused = through_third.execute_at(get, Some(Consistency::Quorum)).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    assert!(refused.message.contains("lost data"), "{refused}");
    assert!(log_lines(&third, 0, "serving replica reads again").is_empty());
    let metrics_port = third.listener_port(0);
    assert_eq!(total(&scrape(metrics_port), "ringkv_shard_rebuilding", &[]), SHARDS as u64);

    // Node 2 back: anti-entropy restores every range, and node 3 serves its own copy again.
    let since = third.log().len();
    second.restart();
    wait_for_rebuilds(&third, since, "node 3");
    let pulled: u64 = log_lines(&third, 0, "anti-entropy repaired keys")
        .iter()
        .filter_map(|line| field(line, "pulled"))
        .sum();
    println!("keys pulled by anti-entropy: {pulled}");
    assert!(pulled >= KEYS as u64, "{pulled} keys pulled for {KEYS} lost");
    // At ONE, node 3 answers from its own copy first.
    assert_reads_every_key(&mut through_third, &versions, value_of, "restored");
    for shard in 0..SHARDS {
        assert!(!third.data_dir.join(format!("shard-{shard}")).join("REBUILDING").exists());
    }
    assert_eq!(total(&scrape(metrics_port), "ringkv_shard_rebuilding", &[]), 0);
}
