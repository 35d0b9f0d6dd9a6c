//! The Redis port of a node with `[[users]]`: `redis-cli` and redis-py (RESP2 with `AUTH`,
//! RESP3 with `HELLO 3 AUTH`) are served only with the right user and password, and get
//! Redis's own errors otherwise (`NOAUTH Authentication required.`, `WRONGPASS invalid
//! username-password pair or user is disabled.`). Needs Debian's `redis-tools` and the Python
//! `redis` package; without them the test fails saying so.

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{Server, LISTENER};

const DEFAULT_PASSWORD: &str = "default-password";
const APP_PASSWORD: &str = "app-password";

fn redis_cli(port: u16, args: &[&str]) -> Output {
    let found = Command::new("redis-cli").arg("--version").stdout(Stdio::null()).status();
    assert!(
        found.is_ok_and(|status| status.success()),
        "redis-cli is not installed: this test needs it (apt-get install -y redis-tools)"
    );
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--no-auth-warning"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("starting redis-cli")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

const SCRIPT: &str = r#"
import sys
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# redis-py retries a refused authentication as a lost connection, with seconds of back-off;
# the refusals below are meant, so they are asked once.
ONCE = Retry(NoBackoff(), 0)

port = int(sys.argv[1])
default_password, app_password = sys.argv[2], sys.argv[3]

def error_of(call):
    try:
        call()
    except Exception as error:
        return str(error)
    raise AssertionError("expected an error")

for protocol in (2, 3):
    anonymous = redis.Redis(host="127.0.0.1", port=port, protocol=2, retry=ONCE)
    assert "Authentication required" in error_of(lambda: anonymous.get("k")), protocol
    wrong = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, password="guess", retry=ONCE)
    message = error_of(lambda: wrong.ping())
    assert "invalid username-password pair" in message, message
    app = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, username="app", password=app_password)
    assert app.set("py%d" % protocol, "v") is True
    assert app.get("py%d" % protocol) == b"v"
    default = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, password=default_password)
    assert default.get("py%d" % protocol) == b"v"

print("ok")
"#;

#[test]
fn resp_auth_answers_as_redis_does() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("ringkv.toml");
    std::fs::write(
        &config,
        format!(
            "[[users]]\nname = \"default\"\npassword = \"{DEFAULT_PASSWORD}\"\n\n\
             [[users]]\nname = \"app\"\npassword = \"{APP_PASSWORD}\"\n"
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--config", config.to_str().unwrap(), "--resp-listen", LISTENER],
    );
    let port = server.listener_port(0);

    let refused = redis_cli(port, &["SET", "cli", "value"]);
    assert_eq!(stdout(&refused), "NOAUTH Authentication required.", "{refused:?}");
    let wrong = redis_cli(port, &["-a", "guess", "SET", "cli", "value"]);
    let text = format!("{}{}", stdout(&wrong), String::from_utf8_lossy(&wrong.stderr));
    assert!(text.contains("WRONGPASS invalid username-password pair or user is disabled."), "{text}");
    let set = redis_cli(port, &["-a", DEFAULT_PASSWORD, "SET", "cli", "value"]);
    assert_eq!(stdout(&set), "OK", "{set:?}");
    let get = redis_cli(port, &["--user", "app", "--pass", APP_PASSWORD, "GET", "cli"]);
    assert_eq!(stdout(&get), "value", "{get:?}");
    let resp3 = redis_cli(port, &["-3", "--user", "app", "--pass", APP_PASSWORD, "GET", "cli"]);
    assert_eq!(stdout(&resp3), "value", "{resp3:?}");

    // On one connection: refused, a wrong AUTH leaves it as it was, the right one opens it.
    let mut session = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!("GET cli\nAUTH app guess\nHELLO 3\nAUTH app {APP_PASSWORD}\nGET cli\n");
    session.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let session = session.wait_with_output().unwrap();
    // redis-cli follows each error with an empty line.
    let lines: Vec<String> = String::from_utf8_lossy(&session.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0], "NOAUTH Authentication required.");
    assert_eq!(lines[1], "WRONGPASS invalid username-password pair or user is disabled.");
    assert!(
        lines[2].starts_with("NOAUTH HELLO must be called with the client already authenticated"),
        "{lines:?}"
    );
    assert_eq!(lines[3..], ["OK", "value"]);

    let python = Command::new("python3")
        .args(["-c", SCRIPT, &port.to_string(), DEFAULT_PASSWORD, APP_PASSWORD])
        .output()
        .expect("python3 is needed for this test");
    assert!(
        python.status.success() && stdout(&python) == "ok",
        "redis-py checks failed (pip install redis if it is missing):\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&python.stdout),
        String::from_utf8_lossy(&python.stderr),
        server.log()
    );
    let log = server.log();
    let failed =
        log.lines().find(|line| line.contains("authentication failed")).expect("failed attempts are logged");
    assert!(failed.contains("peer=127.0.0.1:"), "a failed attempt names the client: {failed}");
}
