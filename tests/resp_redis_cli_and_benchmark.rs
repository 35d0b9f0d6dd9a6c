//! Real Redis tools against the Redis protocol port of a real two-shard server: `redis-cli`
//! runs a script (including an unknown command, expiries kept, read and dropped, and a SCAN
//! over every key written), and
//! `redis-benchmark -t set,get -n 20000 -P 16` finishes with every request answered and no
//! error. Both tools come from Debian's `redis-tools`; a machine without them fails this test
//! with a message saying so, rather than passing it untested.

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{Server, LISTENER};

/// Fails the test with a clear message when a tool is missing.
fn require(tool: &str) {
    let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        found.is_ok_and(|status| status.success()),
        "{tool} is not installed: this test needs it (apt-get install -y redis-tools)"
    );
}

/// Runs redis-cli on `port` with `script` on its standard input.
fn redis_cli(port: u16, script: &str) -> Output {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting redis-cli");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn resp_redis_cli_and_benchmark() {
    let _slot = common::test_slot();
    require("redis-cli");
    require("redis-benchmark");
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(&root.path().join("data"), &["--resp-listen", LISTENER]);
    let port = server.listener_port(0);

    let script =
        "PING\nSET greeting hello\nGET greeting\nAPPEND greeting x\nMSET a 1 b 2 c 3\nMGET a b c missing\n\
                  INCRBY a 9\nDEL a b missing\nEXISTS a b c greeting\nDBSIZE\nSET big 1 EX 100 NX\n\
                  SET big 2 KEEPTTL\nEXPIRE big 100 NX\nPERSIST big\nTTL big\nPTTL greeting\nTTL missing\n\
                  EXPIRE big 100 NX\nEXPIRE big 200 LT\n";
    let output = redis_cli(port, script);
    assert!(output.status.success(), "redis-cli failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = [
        "PONG",
        "OK",
        "hello",
        "ERR unknown command 'APPEND', with args beginning with: 'greeting' 'x' ",
        // redis-cli follows an error with an empty line when not on a terminal.
        "",
        "OK",
        "1",
        "2",
        "3",
        "",
        "10",
        "2",
        "2",
        "2",
        "OK",
        // SET KEEPTTL keeps the expiry EXPIRE NX then sees; PERSIST drops it.
        "OK",
        "0",
        "1",
        "-1",
        "-1",
        "-2",
        "1",
        "0",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, expected, "redis-cli printed:\n{stdout}");

    // redis-cli's own key iteration (SCAN, MATCH) finds exactly the keys written.
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--scan"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let mut keys: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect();
    keys.sort();
    assert_eq!(keys, ["big", "c", "greeting"]);
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--scan", "--pattern", "g*"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().collect::<Vec<_>>(), ["greeting"]);

    // redis-benchmark, pipelined: every request answered, none with an error.
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set,get",
            "-n",
            "20000",
            "-P",
            "16",
            "--csv",
        ])
        .output()
        .expect("starting redis-benchmark");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "redis-benchmark failed:\n{stdout}\n{stderr}\n{}", server.log());
    for test in ["\"SET\"", "\"GET\""] {
        assert!(stdout.lines().any(|line| line.starts_with(test)), "no {test} result:\n{stdout}\n{stderr}");
    }
    assert!(
        !stdout.contains("ERR") && !stderr.contains("ERR") && !stderr.contains("Error"),
        "{stdout}\n{stderr}"
    );
    // The benchmark's key holds one of its values afterwards.
    let output = redis_cli(port, "EXISTS key:__rand_int__\n");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1\n");
    drop(server);
}
