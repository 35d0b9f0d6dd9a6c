//! A node whose clients must authenticate (`[[users]]`) but whose metrics port has no bearer
//! token still serves its metrics to anyone, as before tokens existed, and says so once in
//! its log at start; with a token configured it does not warn.

use crate::common;

use common::metrics::scrape_text;
use common::{Server, LISTENER};

const WARNING: &str = "the metrics port has no bearer token";

fn start(root: &std::path::Path, extra: &str) -> (Server, u16) {
    let config = root.join("node.toml");
    std::fs::write(&config, format!("{extra}[[users]]\nname = \"default\"\npassword = \"a password\"\n"))
        .unwrap();
    let server = Server::start_with(
        &root.join("data"),
        &["--config", config.to_str().unwrap(), "--metrics-listen", LISTENER],
    );
    let metrics_port = server.listener_port(0);
    (server, metrics_port)
}

#[test]
fn metrics_port_without_a_token_warns_when_clients_authenticate() {
    let _slot = common::test_slot();
    let open = tempfile::tempdir().unwrap();
    let (server, metrics_port) = start(open.path(), "");
    assert!(scrape_text(metrics_port).contains("ringkv_requests_total"), "served without a token");
    assert_eq!(server.log().matches(WARNING).count(), 1, "{}", server.log());
    drop(server);

    let guarded = tempfile::tempdir().unwrap();
    let (server, _) = start(guarded.path(), "metrics_token = \"a-metrics-token-0123456789\"\n");
    assert!(!server.log().contains(WARNING), "{}", server.log());
    drop(server);
}
