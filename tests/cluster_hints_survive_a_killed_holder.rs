//! Hints are durable: a coordinator killed with SIGKILL while it holds hints for a replica that
//! is down reads them back at its restart and replays them once the replica returns.

use crate::common;

use common::cluster::start_three_nodes_with;
use common::healing::{assert_reads_every_key, log_lines, put_keys_at_quorum, wait_for_log, wait_for_sum};

const KEYS: usize = 150;

#[test]
fn a_hint_holder_killed_with_sigkill_replays_after_its_restart() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let flags = ["--replica-timeout-ms", "500"];
    let [mut first, _second, mut third] = start_three_nodes_with(root.path(), &flags);
    let since = first.log().len();
    third.terminate();
    wait_for_log(&first, since, "node down node_id=3 ");
    let mut client = first.client();
    let versions = put_keys_at_quorum(&mut client, KEYS);
    wait_for_sum(&first, since, "hints durable", "kept", KEYS as u64);

    // The holder dies without a chance to flush anything, then comes back.
    first.kill();
    let since = first.log().len();
    first.restart();
    wait_for_sum(&first, since, "hints recovered", "hints", KEYS as u64);
    wait_for_log(&first, since, "node up node_id=2 ");

    third.restart();
    wait_for_log(&first, since, "node up node_id=3 ");
    wait_for_sum(&first, since, "hint replay finished", "replayed", KEYS as u64);
    for line in log_lines(&first, since, "hint") {
        println!("{line}");
    }
    assert_reads_every_key(&mut third.client(), &versions, |index| format!("v{index}"), "node 3 missed it");
}
