//! A replica that lost its data (its WAL, tables and manifest deleted while it was stopped, its
//! identity kept) gets every key back from the other replicas through anti-entropy
//! (`ringkv admin repair`), with no read repairing anything.

use crate::common;

use bytes::Bytes;
use common::cluster::{eventually_at, start_three_nodes_with};
use common::healing::{put, read_one, repair_until_clean, wait_for_log, wipe_engine_files};
use ringkv_wire::{Consistency, Outcome};

const KEYS: usize = 300;

#[test]
fn anti_entropy_restores_every_key_of_a_wiped_replica() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    // No hints: only anti-entropy can bring the data back.
    let flags = ["--replica-timeout-ms", "1000", "--hints-bytes-max", "0"];
    let [first, _second, mut third] = start_three_nodes_with(root.path(), &flags);
    let mut client = first.client();
    let mut versions = Vec::new();
    for index in 0..KEYS {
        let outcome =
            eventually_at(&mut client, put(&format!("key-{index}"), &format!("v{index}")), Consistency::All);
        let Outcome::Written { version } = outcome else { panic!("expected a write, got {outcome:?}") };
        versions.push(version);
    }

    third.terminate();
    let removed = wipe_engine_files(&third.data_dir);
    assert!(removed > 0, "the node had engine files");
    let since = first.log().len();
    third.restart();
    wait_for_log(&first, since, "node up node_id=3 ");
    for other in [1, 2] {
        wait_for_log(&third, 0, &format!("node up node_id={other} "));
    }
    let mut through_third = third.client();
    // Before the repair, node 3 holds none of them.
    assert_eq!(read_one(&mut through_third, "key-0"), Outcome::NotFound);

    let repaired = repair_until_clean(&third, 20);
    println!("keys repaired by anti-entropy: {repaired}");
    assert!(repaired >= KEYS as u64, "{repaired} keys repaired for {KEYS} lost");
    let mut restored = 0;
    for (index, version) in versions.iter().enumerate() {
        let value = Bytes::from(format!("v{index}"));
        assert_eq!(
            read_one(&mut through_third, &format!("key-{index}")),
            Outcome::Value { value, version: *version, expires_at_ms: None },
            "node 3 did not get key-{index} back"
        );
        restored += 1;
    }
    println!("keys restored on the wiped replica: {restored} of {KEYS}");
}
