//! Many tasks using a fresh client at once: each shard's first requests race to open its
//! connection. Every request must still be answered; a second connection opened by the race must
//! not replace the first one and fail the requests already in flight on it.

use crate::common;

use common::Server;
use ringkv_client::tokio::Client;

#[test]
fn client_concurrent_first_requests_keep_their_connection() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let port = server.client_port;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        for round in 0..5 {
            // A new client each round: no shard connection is open yet.
            let client = Client::connect(("127.0.0.1", port)).await.unwrap();
            let tasks: Vec<_> = (0..256)
                .map(|index| {
                    let client = client.clone();
                    tokio::spawn(async move { client.put(format!("race-{round}-{index}"), "value").await })
                })
                .collect();
            for (index, task) in tasks.into_iter().enumerate() {
                let outcome = task.await.expect("task ran");
                assert!(outcome.is_ok(), "round {round}, request {index}: {:?}", outcome.err());
            }
            let stored = client.get(format!("race-{round}-255")).await.unwrap().expect("written");
            assert_eq!(&stored.value[..], b"value");
        }
    });
}
