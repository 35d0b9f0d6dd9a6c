//! Deletes made while a replica was down do not come back once it returns and compaction runs:
//! the other replicas keep their tombstones past the grace period until anti-entropy has
//! repaired the range with every replica, so the returning replica's old values lose to them
//! instead of being pushed back as the newest state.

use crate::common;

use bytes::Bytes;
use common::cluster::{eventually_at, start_three_nodes_with};
use common::healing::{put, read_one, repair_until_clean, wait_for_log};
use ringkv_wire::{Consistency, Operation, Outcome};

const KEYS: usize = 200;
/// About 10 MiB: four memtable flushes on each shard of each node, so compactions run.
const FILLER_KEYS: usize = 10_000;

fn fill(client: &mut common::Client, round: &str, consistency: Consistency) {
    let filler = "f".repeat(1000);
    for index in 0..FILLER_KEYS {
        eventually_at(client, put(&format!("filler-{round}-{index}"), &filler), consistency);
    }
}

#[test]
fn deletes_made_while_a_replica_was_down_stay_deleted_after_compaction() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    // No hints (the deletes reach the replica through anti-entropy only), and a grace period
    // of one second, as short as the hint window and the anti-entropy interval allow.
    let flags = [
        "--replica-timeout-ms",
        "1000",
        "--hints-bytes-max",
        "0",
        "--max-hint-window-ms",
        "500",
        "--anti-entropy-interval-ms",
        "1000",
        "--tombstone-grace-ms",
        "1000",
    ];
    let [first, second, mut third] = start_three_nodes_with(root.path(), &flags);
    let mut client = first.client();
    for index in 0..KEYS {
        eventually_at(&mut client, put(&format!("key-{index}"), "alive"), Consistency::All);
    }

    let since = first.log().len();
    third.terminate();
    wait_for_log(&first, since, "node down node_id=3 ");
    for index in 0..KEYS {
        let key = Bytes::from(format!("key-{index}"));
        eventually_at(&mut client, Operation::Delete { key }, Consistency::Quorum);
    }
    // Past the grace period, the two live replicas flush and compact their tombstones with
    // everything else; the returning replica still holds the values.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    fill(&mut client, "during", Consistency::Quorum);

    let since = first.log().len();
    third.restart();
    wait_for_log(&first, since, "node up node_id=3 ");
    for other in [1, 2] {
        wait_for_log(&third, 0, &format!("node up node_id={other} "));
    }
    let repaired = repair_until_clean(&third, 60);
    println!("keys repaired after the outage: {repaired}");
    // Compaction now runs on every replica, after the range was repaired.
    fill(&mut client, "after", Consistency::All);

    let mut through_third = third.client();
    let mut through_second = second.client();
    for index in 0..KEYS {
        let key = format!("key-{index}");
        assert_eq!(read_one(&mut through_third, &key), Outcome::NotFound, "{key} came back on node 3");
        assert_eq!(read_one(&mut through_second, &key), Outcome::NotFound, "{key} came back on node 2");
        let read_all =
            eventually_at(&mut client, Operation::Get { key: Bytes::from(key.clone()) }, Consistency::All);
        assert_eq!(read_all, Outcome::NotFound, "{key} came back");
    }
}
