//! `ringkv serve --check-config` validates the configuration file and the flags and exits: 0
//! with "ok" and the effective settings, or 1 with what is wrong; it starts nothing and leaves
//! the data directory alone (not created, not locked, not changed). The configuration files in
//! docs/deploying.md pass it.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::Server;

fn check(args: &[&str]) -> Output {
    let mut all = vec!["serve", "--check-config"];
    all.extend_from_slice(args);
    Command::new(env!("CARGO_BIN_EXE_ringkv")).args(&all).output().expect("running ringkv")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(path: &Path, contents: &str) -> String {
    std::fs::write(path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_valid_file_prints_ok_and_the_effective_settings_without_creating_the_data_directory() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("never-created");
    let file = write(
        &root.path().join("node.toml"),
        &format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:17379\"\nshards = 2\nmetrics_listen = \"127.0.0.1:19100\"\n",
            data_dir.to_str().unwrap()
        ),
    );
    let output = check(&["--config", &file, "--sync", "periodic:5"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ok\n"), "{stdout}");
    for setting in [
        "shards = 2",
        "listen = \"127.0.0.1:17379\"",
        "shard_port_base = 17380",
        "peer_listen = \"127.0.0.1:18379\"",
        "metrics_listen = \"127.0.0.1:19100\"",
        "sync = \"periodic:5\"",
        "replication_factor = 3",
    ] {
        assert!(stdout.contains(setting), "{setting} missing from:\n{stdout}");
    }
    assert!(stdout.contains("does not exist yet"), "{stdout}");
    assert!(!data_dir.exists(), "the check created the data directory");
}

#[test]
fn each_problem_is_named_and_exits_1() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 5] = [
        ("shards = 0\n", &[], "shards"),
        ("shardz = 2\n", &[], "shardz"),
        ("sync = \"sometimes\"\n", &[], "sometimes"),
        ("listen = \"127.0.0.1:17379\"\n", &["--metrics-listen", "127.0.0.1:17379"], "metrics_listen"),
        ("tombstone_grace_ms = 1000\n", &[], "tombstone_grace_ms"),
    ];
    for (index, (contents, flags, named)) in cases.iter().enumerate() {
        let file = write(&root.path().join(format!("bad-{index}.toml")), contents);
        let mut args = vec!["--config", file.as_str()];
        args.extend_from_slice(flags);
        let output = check(&args);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{contents}: {stdout}{stderr}");
        assert!(!stdout.contains("ok"), "{stdout}");
        assert!(stderr.contains("check failed") && stderr.contains(named), "{contents}: {stderr}");
    }
    let missing = root.path().join("missing.toml");
    let output = check(&["--config", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).1.contains("missing.toml"), "{}", text(&output).1);
}

#[test]
fn the_data_directory_of_a_running_node_is_left_alone() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let mut server = Server::start(&data_dir);
    let listing = |dir: &Path| {
        let mut names: Vec<_> = walk(dir);
        names.sort();
        names
    };
    let before = listing(&data_dir);
    let output = check(&["--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:17379"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the lock is not taken, so a running node is no error: {stdout}{stderr}"
    );
    assert_eq!(listing(&data_dir), before, "the check changed the data directory");
    // The node still serves: the check did not take its lock or its ports.
    let mut client = server.client();
    client.put(b"still", b"serving");
    assert_eq!(server.terminate().code(), Some(0));
}

/// Every file under `dir` with its length.
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        if metadata.is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(format!("{} {}", entry.path().display(), metadata.len()));
        }
    }
    found
}

#[test]
fn the_configuration_files_in_the_deployment_guide_pass_the_check() {
    let _slot = common::test_slot();
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploying.md")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```toml" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|line| line.trim() != "```").collect();
        let file = write(&root.path().join(format!("guide-{checked}.toml")), &block.join("\n"));
        let output = check(&["--config", &file]);
        let (stdout, stderr) = text(&output);
        assert_eq!(
            output.status.code(),
            Some(0),
            "block {checked} of docs/deploying.md:\n{}\n{stdout}{stderr}",
            block.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 3, "the guide shows a 3-node cluster's files; found {checked} TOML blocks");
}

#[test]
fn the_metrics_token_file_must_be_readable_and_hold_a_token() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let token_file = root.path().join("metrics-token");
    let token_path = token_file.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--metrics-listen", "127.0.0.1:19100", "--metrics-token-file", token_path];
        args.extend_from_slice(extra);
        let output = check(&args);
        let (stdout, stderr) = text(&output);
        (output.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, Some(1), "a missing file: {stdout}{stderr}");
    assert!(stderr.contains("metrics_token_file") && stderr.contains(token_path), "{stderr}");
    for (contents, why) in [("", "empty"), ("\n", "a blank line"), ("short\n", "too short")] {
        std::fs::write(&token_file, contents).unwrap();
        let (code, stdout, stderr) = run(&[]);
        assert_eq!(code, Some(1), "{why}: {stdout}{stderr}");
        assert!(stderr.contains("metrics_token_file") && stderr.contains("bytes"), "{why}: {stderr}");
    }
    // A directory cannot be read as a file.
    let directory = root.path().join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let output = check(&["--metrics-token-file", directory.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).1.contains("metrics_token_file"), "{}", text(&output).1);

    std::fs::write(&token_file, "the-metrics-token-0123456789\n").unwrap();
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("metrics_token_file = {token_path:?}")), "{stdout}");
    assert!(!stdout.contains("the-metrics-token-0123456789"), "the token is never printed: {stdout}");

    // Set in the configuration file instead: checked the same way, never printed either.
    let inline =
        write(&root.path().join("inline.toml"), "metrics_token = \"an-inline-metrics-token-0123\"\n");
    let output = check(&["--config", &inline]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("metrics_token configured (not shown)"), "{stdout}");
    assert!(!stdout.contains("an-inline-metrics-token-0123"), "{stdout}");
    let short = write(&root.path().join("short.toml"), "metrics_token = \"short\"\n");
    let output = check(&["--config", &short]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).1.contains("metrics_token"), "{}", text(&output).1);
}
