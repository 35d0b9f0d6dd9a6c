//! A node with `[[users]]` serves nobody who has not authenticated: on the client port and the
//! shard ports, through the native protocol, the client crate and the `ringkv` command line.
//! Missing credentials are answered `Unauthenticated` (Ping alone passes), a wrong password
//! `AuthFailed` (the connection then closes, and the failure is logged), the right one serves.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use common::Server;
use ringkv_client::blocking::Client as BlockingClient;
use ringkv_client::{ClientOptions, Credentials, Error as ClientError};
use ringkv_wire::{Command as WireCommand, ErrorCode, Operation, Reply, Request, Response};

const DEFAULT_PASSWORD: &str = "the default user's password";
const APP_PASSWORD: &str = "the app user's password";

/// A configuration file with two users.
fn write_config(directory: &Path) -> String {
    let path = directory.join("ringkv.toml");
    std::fs::write(
        &path,
        format!(
            "[[users]]\nname = \"default\"\npassword = \"{DEFAULT_PASSWORD}\"\n\n\
             [[users]]\nname = \"app\"\npassword = \"{APP_PASSWORD}\"\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn start(root: &Path) -> Server {
    let config = write_config(root);
    Server::start_with(&root.join("data"), &["--config", &config])
}

fn get(key: &[u8]) -> WireCommand {
    WireCommand::Single(Operation::Get { key: Bytes::copy_from_slice(key) })
}

fn auth(user: &str, password: &str) -> WireCommand {
    WireCommand::Auth(Credentials::new(user, password.as_bytes().to_vec()))
}

fn failure_code(reply: Reply) -> ErrorCode {
    match reply {
        Reply::Failed(failure) => failure.code,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn native_connections_need_the_right_password_on_every_port() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    for port in server.ports() {
        // Nothing but Ping before Auth.
        let mut client = common::Client::connect(port);
        assert_eq!(failure_code(client.call(get(b"k"))), ErrorCode::Unauthenticated, "port {port}");
        assert_eq!(failure_code(client.call(WireCommand::Topology)), ErrorCode::Unauthenticated);
        assert_eq!(client.call(WireCommand::Ping), Reply::Pong);
        // The connection stays open after Unauthenticated, and Auth then opens it.
        assert_eq!(client.call(auth("default", DEFAULT_PASSWORD)), Reply::Authenticated);
        assert!(matches!(client.call(get(b"k")), Reply::Single(_)));
        assert!(matches!(client.call(WireCommand::Topology), Reply::Topology(_)));

        // Another user with its own password.
        let mut app = common::Client::connect(port);
        assert_eq!(app.call(auth("app", APP_PASSWORD)), Reply::Authenticated);
        app.put(b"written by app", b"v");

        // A wrong password, or one user's password for another: AuthFailed, then closed.
        for (user, password) in [("default", "guess"), ("app", DEFAULT_PASSWORD), ("nobody", APP_PASSWORD)] {
            let mut wrong = common::Client::connect(port);
            assert_eq!(failure_code(wrong.call(auth(user, password))), ErrorCode::AuthFailed);
            assert!(wrong.is_closed(), "a failed Auth closes the connection");
        }

        // Requests pipelined behind a right Auth are served.
        let mut pipelined = common::Client::connect(port);
        pipelined.send(&Request { id: 1, command: auth("app", APP_PASSWORD), consistency: None });
        pipelined.send(&Request { id: 2, command: get(b"written by app"), consistency: None });
        assert_eq!(pipelined.receive(), Response { id: 1, reply: Reply::Authenticated });
        assert!(matches!(pipelined.receive(), Response { id: 2, reply: Reply::Single(_) }));
    }
    let failures = server.log().matches("authentication failed").count();
    assert_eq!(failures, 3 * server.ports().len(), "every failed attempt is logged:\n{}", server.log());
}

#[test]
fn the_client_crate_sends_the_credentials_on_every_connection() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let address = format!("127.0.0.1:{}", server.client_port);

    let options =
        |credentials: Option<Credentials>| ClientOptions { credentials, ..ClientOptions::default() };
    let right = Some(Credentials::new("app", APP_PASSWORD.as_bytes().to_vec()));
    // The client opens a connection per shard port; every key below lands on one of them.
    let mut client = BlockingClient::connect_with(&address, options(right)).unwrap();
    for index in 0..32 {
        let key = format!("key-{index}");
        client.put(key.as_bytes(), b"value").unwrap();
        assert_eq!(client.get(key.as_bytes()).unwrap().map(|found| found.value), Some(Bytes::from("value")));
    }

    let wrong = Some(Credentials::new("app", b"wrong".to_vec()));
    let refused =
        BlockingClient::connect_with(&address, options(wrong)).err().expect("a wrong password fails");
    assert_eq!(refused.code(), Some(ErrorCode::AuthFailed), "{refused}");

    match BlockingClient::connect_with(&address, options(None)) {
        Err(error) => assert_eq!(error.code(), Some(ErrorCode::Unauthenticated), "{error}"),
        Ok(mut client) => {
            let error: ClientError = client.get(b"key-0").unwrap_err();
            assert_eq!(error.code(), Some(ErrorCode::Unauthenticated), "{error}");
        }
    }
}

fn ringkv(args: &[&str], password: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringkv"));
    command.args(args).env_remove("RINGKV_ADDR").env_remove("RINGKV_USER").env_remove("RINGKV_PASSWORD");
    if let Some(password) = password {
        command.env("RINGKV_PASSWORD", password);
    }
    command.output().unwrap()
}

#[test]
fn the_command_line_takes_the_password_from_a_flag_or_the_environment() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let address = format!("127.0.0.1:{}", server.client_port);

    let missing = ringkv(&["put", "cli-key", "cli-value", "--addr", &address], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Unauthenticated"), "{missing:?}");

    let wrong = ringkv(&["put", "cli-key", "cli-value", "--addr", &address], Some("guess"));
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("AuthFailed"), "{wrong:?}");

    let from_environment =
        ringkv(&["put", "cli-key", "cli-value", "--addr", &address], Some(DEFAULT_PASSWORD));
    assert_eq!(from_environment.status.code(), Some(0), "{from_environment:?}");

    let from_flags =
        ringkv(&["get", "cli-key", "--addr", &address, "--user", "app", "--password", APP_PASSWORD], None);
    assert_eq!(from_flags.status.code(), Some(0), "{from_flags:?}");
    assert_eq!(from_flags.stdout, b"cli-value");
}
