//! A replica down while writes go on: its coordinators keep hints for it, and once it is back
//! they replay them, so it holds every write without a read repairing it (read at ONE from it).

use crate::common;

use common::cluster::{eventually_at, start_three_nodes_with};
use common::healing::{
    assert_reads_every_key, last_per_shard, log_lines, put, put_keys_at_quorum, wait_for_log, wait_for_sum,
};
use ringkv_wire::Consistency;

const KEYS: usize = 200;

#[test]
fn hints_replay_every_write_a_returning_replica_missed() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    // Anti-entropy is left at its default interval (10 minutes): only hints can repair here.
    let flags = ["--replica-timeout-ms", "500"];
    let [first, _second, mut third] = start_three_nodes_with(root.path(), &flags);
    let mut client = first.client();
    eventually_at(&mut client, put("before", "outage"), Consistency::All);

    let since = first.log().len();
    third.terminate();
    wait_for_log(&first, since, "node down node_id=3 ");
    let versions = put_keys_at_quorum(&mut client, KEYS);
    // Every write through node 1 left a hint for node 3 on the shard that coordinated it.
    wait_for_sum(&first, since, "hints durable", "kept", KEYS as u64);

    let since = first.log().len();
    third.restart();
    wait_for_log(&first, since, "node up node_id=3 ");
    wait_for_sum(&first, since, "hint replay finished", "replayed", KEYS as u64);
    for line in log_lines(&first, 0, "hint replay finished") {
        println!("{line}");
    }
    assert_eq!(last_per_shard(&first, since, "hint replay finished", "dropped_full"), 0);

    assert_reads_every_key(&mut third.client(), &versions, |index| format!("v{index}"), "node 3 missed it");
}
