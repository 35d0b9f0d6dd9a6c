//! `tools/systemd/ringkv.service` carries what docs/deploying.md promises (its own user, the
//! configuration file, the check before start, memlock and descriptor limits, restart on
//! failure), its check command runs as written, and `systemd-analyze verify` accepts it when
//! systemd is installed (otherwise that part is skipped with a printed reason).

use crate::common;
use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../tools/systemd/ringkv.service");
const INSTALLED_BINARY: &str = "/usr/local/bin/ringkv";

/// The value of `key=` in the unit (the first one), without comments.
fn directive<'unit>(key: &str) -> Option<&'unit str> {
    UNIT.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn the_unit_sets_what_a_node_needs() {
    let _slot = common::test_slot();
    assert_eq!(directive("LimitMEMLOCK"), Some("infinity"));
    let files: u64 = directive("LimitNOFILE").expect("LimitNOFILE").parse().unwrap();
    assert!(files >= 65_536, "LimitNOFILE={files}");
    assert_eq!(directive("Restart"), Some("on-failure"));
    assert_eq!(directive("User"), Some("ringkv"));
    assert_eq!(directive("KillSignal"), Some("SIGTERM"));
    let start = directive("ExecStart").expect("ExecStart");
    assert_eq!(start, format!("{INSTALLED_BINARY} serve --config /etc/ringkv/ringkv.toml"));
    let check = directive("ExecStartPre").expect("ExecStartPre");
    assert_eq!(check, format!("{INSTALLED_BINARY} serve --check-config --config /etc/ringkv/ringkv.toml"));
    let sysusers = include_str!("../tools/systemd/ringkv.sysusers");
    assert!(sysusers.lines().any(|line| line.starts_with("u ringkv ")), "the sysusers file creates the user");
}

#[test]
fn the_check_before_start_runs_as_written() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("ringkv.toml");
    std::fs::write(&config, "data_dir = \"/var/lib/ringkv\"\nnode_id = 1\n").unwrap();
    let command = directive("ExecStartPre")
        .unwrap()
        .replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_ringkv"))
        .replace("/etc/ringkv/ringkv.toml", config.to_str().unwrap());
    let mut words = command.split_whitespace();
    let output = Command::new(words.next().unwrap()).args(words).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok\n"));
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let _slot = common::test_slot();
    let available =
        Command::new("systemd-analyze").arg("--version").output().is_ok_and(|out| out.status.success());
    if !available {
        println!("skipped: systemd-analyze is not installed, so the unit is not verified by systemd");
        return;
    }
    // Verify a copy whose binary exists here; everything else is as shipped.
    let root = tempfile::tempdir().unwrap();
    let unit = root.path().join("ringkv.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_ringkv"))).unwrap();
    let output =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(Path::new(&unit)).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Lines about this unit only: verify also reports on units of the host it loads.
    let complaints: Vec<&str> = stderr.lines().filter(|line| line.contains("ringkv.service")).collect();
    assert!(output.status.success() && complaints.is_empty(), "systemd-analyze verify: {stderr}");
}
