//! `--metrics-token-file` makes the metrics port require `Authorization: Bearer <token>`: a
//! scrape without it, or with another token, is answered 401 with a `WWW-Authenticate: Bearer`
//! challenge and no figures; the right token gets the metrics. The node logs the refusals. A new
//! token moved over the file takes over without a restart.

use crate::common;

use common::metrics::{get_metrics, metrics_body, parse, total};
use common::{Server, LISTENER, SHARDS};

const TOKEN: &str = "0f3e-metrics-token-for-this-test";

#[test]
fn metrics_port_requires_its_bearer_token() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let token_file = root.path().join("metrics-token");
    // Written as `echo TOKEN > file` would: the newline is not part of the token.
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--metrics-listen", LISTENER, "--metrics-token-file", token_file.to_str().unwrap()],
    );
    let metrics_port = server.listener_port(0);

    let missing = get_metrics(metrics_port, "");
    assert!(missing.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{missing}");
    assert!(missing.contains("\r\nWWW-Authenticate: Bearer realm="), "{missing}");
    assert!(!missing.contains("ringkv_"), "no figures without the token: {missing}");
    for wrong in [
        format!("Authorization: Bearer {}x\r\n", TOKEN),
        format!("Authorization: Bearer {}\r\n", &TOKEN[..TOKEN.len() - 1]),
        format!("Authorization: Basic {TOKEN}\r\n"),
    ] {
        let refused = get_metrics(metrics_port, &wrong);
        assert!(refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{wrong}: {refused}");
        assert!(refused.contains("\r\nWWW-Authenticate: Bearer "), "{wrong}: {refused}");
        assert!(!refused.contains("ringkv_"), "{refused}");
    }

    let served = get_metrics(metrics_port, &format!("Authorization: Bearer {TOKEN}\r\n"));
    let samples = parse(&metrics_body(&served));
    assert_eq!(total(&samples, "ringkv_shard_figures_available", &[]), SHARDS as u64);
    assert!(server.log().contains("metrics scrapes refused"), "{}", server.log());

    // Rotated without a restart: a new file moved over the old one.
    let rotated = "1a2b-the-next-metrics-token";
    let staged = root.path().join("metrics-token.new");
    std::fs::write(&staged, format!("{rotated}\n")).unwrap();
    std::fs::rename(&staged, &token_file).unwrap();
    let old = get_metrics(metrics_port, &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert!(old.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{old}");
    let served = get_metrics(metrics_port, &format!("Authorization: Bearer {rotated}\r\n"));
    assert!(served.starts_with("HTTP/1.1 200 OK\r\n"), "{served}");
    drop(server);
}
