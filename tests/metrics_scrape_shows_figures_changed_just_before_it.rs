//! A scrape shows the storage engine's figures as they are when it is made: each put is in the
//! very next scrape's `ringkv_user_bytes_total` (its key and value bytes) and memtable bytes,
//! with every shard answering. Nothing waits for the figures to catch up. The node still stops
//! cleanly.

use crate::common;

use common::metrics::{scrape, total};
use common::{Client, Server, LISTENER, SHARDS};

#[test]
fn metrics_scrape_shows_figures_changed_just_before_it() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(&root.path().join("data"), &["--metrics-listen", LISTENER]);
    let metrics_port = server.listener_port(0);
    let mut client = Client::connect(server.client_port);
    let mut previous = scrape(metrics_port);
    assert_eq!(total(&previous, "ringkv_shard_figures_available", &[]), SHARDS as u64, "every shard answers");
    for (index, value_bytes) in [1_000usize, 3_000, 7].into_iter().enumerate() {
        let key = format!("fresh-{index}");
        client.put(key.as_bytes(), &vec![b'v'; value_bytes]);
        // Scraped as soon as the put is acknowledged.
        let samples = scrape(metrics_port);
        assert_eq!(
            total(&samples, "ringkv_user_bytes_total", &[])
                - total(&previous, "ringkv_user_bytes_total", &[]),
            (key.len() + value_bytes) as u64,
            "put {index} is in the scrape right after it"
        );
        assert!(
            total(&samples, "ringkv_memtable_bytes", &[]) > total(&previous, "ringkv_memtable_bytes", &[]),
            "put {index} is in the memtable bytes"
        );
        assert_eq!(total(&samples, "ringkv_shard_figures_available", &[]), SHARDS as u64);
        previous = samples;
    }
    drop(client);
    // The tasks answering scrapes stop with their shards: the node exits cleanly.
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.log());
}
