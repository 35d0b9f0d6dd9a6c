//! Settings come from the TOML file given with `--config`, and flags override the file.

use crate::common;

use common::{Server, SHARDS};
use ringkv_shard::HybridClock;

#[test]
fn server_reads_config_file_under_flags() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("ringkv.toml");
    std::fs::write(&config, "vnodes_per_shard = 4\nnode_id = 5\nsync = \"periodic:10\"\n").unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--config", config.to_str().unwrap(), "--node-id", "7"],
    );
    let mut client = server.client();

    // From the file.
    let topology = client.topology();
    assert_eq!(topology.shards.len(), SHARDS);
    for shard in &topology.shards {
        assert_eq!(shard.token_ranges.len(), 4, "{shard:?}");
    }
    // The flag wins over the file.
    let version = client.put(b"k", b"v");
    assert_eq!(HybridClock::node_id(version), 7);
    assert_eq!(client.get_value(b"k").as_deref(), Some(&b"v"[..]));
}
