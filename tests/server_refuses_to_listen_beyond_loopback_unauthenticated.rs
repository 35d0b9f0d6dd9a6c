//! A node whose ports listen beyond loopback without authentication refuses to start, naming
//! what is exposed, unless `--allow-unauthenticated` is given, in which case it starts and logs
//! a warning. With users configured, a Redis port on every address is accepted.

use crate::common;

use common::{free_port, run_to_exit, serve_args, Server, LISTENER_PORT};

#[test]
fn server_refuses_to_listen_beyond_loopback_unauthenticated() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let mut args = serve_args(&root.path().join("refused"), free_port());
    args.extend(["--resp-listen".to_owned(), format!("0.0.0.0:{}", free_port())]);
    let (status, output) = run_to_exit(&args);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("allow_unauthenticated") && output.contains("the Redis port listens on"),
        "{output}"
    );
    assert!(!root.path().join("refused").exists(), "refused before touching the data directory");

    let resp = format!("0.0.0.0:{LISTENER_PORT}");
    let allowed = Server::start_with(
        &root.path().join("allowed"),
        &["--resp-listen", &resp, "--allow-unauthenticated"],
    );
    assert!(allowed.log().contains("without authentication (allow_unauthenticated)"), "{}", allowed.log());
    drop(allowed);

    let config = root.path().join("users.toml");
    std::fs::write(&config, "[[users]]\nname = \"default\"\npassword = \"a password\"\n").unwrap();
    let with_users = Server::start_with(
        &root.path().join("with-users"),
        &["--config", config.to_str().unwrap(), "--resp-listen", &resp],
    );
    assert!(!with_users.log().contains("without authentication"), "{}", with_users.log());
}
