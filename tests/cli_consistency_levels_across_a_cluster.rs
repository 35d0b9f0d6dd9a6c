//! The command line's `--consistency` against three real nodes, N = 3: `all` writes and reads
//! with every node up and fails with `Unavailable` (exit 2, one line on stderr) once one is
//! SIGKILLed, while `quorum` and the node's default go on; a level that does not exist is a
//! usage error. The node is picked by `--addr` after or before the subcommand, or by
//! `RINGKV_ADDR`.

use crate::common;

use std::process::{Command, Output};

use common::cluster::{address, start_three_nodes, wait_for_every_shard, wait_for_logs};

fn ringkv(args: &[&str], env_address: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringkv"));
    command.args(args).env_remove("RINGKV_ADDR");
    if let Some(address) = env_address {
        command.env("RINGKV_ADDR", address);
    }
    command.output().unwrap()
}

/// (exit code, stdout, stderr).
fn outcome(output: Output) -> (Option<i32>, String, String) {
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code(), text(output.stdout), text(output.stderr))
}

#[test]
fn cli_consistency_levels_across_a_cluster() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let [first, second, mut third] = start_three_nodes(root.path());
    let [first_address, second_address, _] = [&first, &second, &third].map(address);

    let (code, _, stderr) = outcome(ringkv(
        &["put", "greeting", "hello", "--consistency", "all", "--addr", &first_address],
        None,
    ));
    assert_eq!(code, Some(0), "{stderr}");
    let read = ringkv(&["--addr", &second_address, "get", "greeting", "--consistency", "all"], None);
    assert_eq!(outcome(read), (Some(0), "hello".into(), String::new()));
    let read = ringkv(&["get", "greeting", "--consistency", "one"], Some(&first_address));
    assert_eq!(outcome(read), (Some(0), "hello".into(), String::new()));

    let (code, _, stderr) =
        outcome(ringkv(&["get", "greeting", "--consistency", "two"], Some(&first_address)));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("\"quorum\""), "{stderr}");

    // One node down: ALL cannot be met, QUORUM and the default (quorum) can.
    third.kill();
    wait_for_logs(&[(&first, 0), (&second, 0)], "node down", &[3]);
    wait_for_every_shard(&[&first, &second], &[1, 2], &[3]);
    for args in [&["get", "greeting"][..], &["put", "greeting", "hi"], &["del", "greeting"]] {
        let mut args = args.to_vec();
        args.extend(["--consistency", "all"]);
        let (code, stdout, stderr) = outcome(ringkv(&args, Some(&first_address)));
        assert_eq!((code, stdout.as_str(), stderr.lines().count()), (Some(2), "", 1), "{args:?}: {stderr}");
        assert!(stderr.contains("Unavailable"), "{args:?}: {stderr}");
    }
    let (code, _, stderr) =
        outcome(ringkv(&["put", "greeting", "hi", "--consistency", "quorum"], Some(&second_address)));
    assert_eq!(code, Some(0), "{stderr}");
    let read = ringkv(&["--addr", &first_address, "get", "greeting"], Some("127.0.0.1:1"));
    assert_eq!(
        outcome(read),
        (Some(0), "hi".into(), String::new()),
        "--addr before the subcommand wins over RINGKV_ADDR"
    );
    let read = ringkv(&["--addr", "127.0.0.1:1", "get", "greeting", "--addr", &second_address], None);
    assert_eq!(outcome(read), (Some(0), "hi".into(), String::new()), "--addr after the subcommand wins");
}
