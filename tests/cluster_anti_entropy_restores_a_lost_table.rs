//! A replica that lost one SSTable (deleted while it was stopped; it restarts with
//! `--allow-missing-tables`) answers no read of the shard's ranges until anti-entropy has
//! brought the keys of that table back.

use crate::common;

use common::cluster::{eventually_at, start_three_nodes_with};
use common::healing::{assert_reads_every_key, field, log_lines, put, wait_for_log};
use ringkv_wire::{Consistency, Outcome};

/// Enough data (about 3 MiB) to fill the tests' 1 MiB memtables a few times per shard.
const KEYS: usize = 3_000;

#[test]
fn anti_entropy_restores_the_keys_of_a_deleted_table() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let flags = ["--replica-timeout-ms", "1000", "--hints-bytes-max", "0", "--allow-missing-tables"];
    let [first, _second, mut third] = start_three_nodes_with(root.path(), &flags);
    let mut client = first.client();
    let filler = "x".repeat(1000);
    let mut versions = Vec::new();
    for index in 0..KEYS {
        let value = format!("{index}-{filler}");
        let outcome = eventually_at(&mut client, put(&format!("key-{index}"), &value), Consistency::All);
        let Outcome::Written { version } = outcome else { panic!("expected a write, got {outcome:?}") };
        versions.push(version);
    }

    third.terminate();
    let shard = third.data_dir.join("shard-0");
    let table = std::fs::read_dir(&shard)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "sst"))
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .expect("shard 0 of node 3 flushed a table");
    std::fs::remove_file(&table).unwrap();
    let since = first.log().len();
    third.restart();
    assert!(third.log().contains("a table the manifest lists is missing"));
    wait_for_log(&first, since, "node up node_id=3 ");
    for other in [1, 2] {
        wait_for_log(&third, 0, &format!("node up node_id={other} "));
    }

    let mut through_third = third.client();
    let mut read_every_key = |what: &str| {
        assert_reads_every_key(&mut through_third, &versions, |index| format!("{index}-{filler}"), what)
    };
    // Until anti-entropy has restored shard 0's ranges, its copy answers no read: node 3 sends
    // reads at ONE to the other replicas, so none comes back "not found".
    read_every_key("a read through node 3 missed it");
    wait_for_log(&third, 0, "serving replica reads again");
    let pulled: u64 = log_lines(&third, 0, "anti-entropy repaired keys")
        .iter()
        .filter_map(|line| field(line, "pulled"))
        .sum();
    println!("keys pulled by anti-entropy after losing {}: {pulled}", table.display());
    assert!(pulled > 0, "the deleted table held keys");
    // At ONE, node 3 answers from its own copy first: it holds every key again.
    read_every_key("node 3 did not get it back");
    assert!(!shard.join("REBUILDING").exists());
}
