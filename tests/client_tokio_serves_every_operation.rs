//! The tokio client against a real server: every operation, and many concurrent requests
//! pipelined on one connection per shard from tasks sharing one client.

use crate::common;

use common::Server;
use ringkv_client::tokio::Client;

#[test]
fn client_tokio_serves_every_operation() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let port = server.client_port;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let client = Client::connect(("127.0.0.1", port)).await.unwrap();
        common::async_client::serves_every_operation(&client).await;

        // 2000 requests from spawned tasks at once (which also proves the client and its
        // futures are Send): they share one connection per shard and pipeline on it.
        let tasks: Vec<_> = (0..2000)
            .map(|index| {
                let client = client.clone();
                tokio::spawn(async move {
                    let key = format!("concurrent-{index}");
                    client.put(&key, &key).await.unwrap();
                    let stored = client.get(&key).await.unwrap().expect("just written");
                    assert_eq!(stored.value, key.as_bytes());
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}
