//! The glommio client against a real server: every operation, and many concurrent requests
//! pipelined on one connection per shard from tasks sharing one client.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Server;
use glommio::LocalExecutorBuilder;
use ringkv_client::glommio::Client;
use ringkv_client::{CasResult, Expected, Operation, Outcome};

#[test]
fn client_glommio_serves_every_operation() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let port = server.client_port;
    let executor = LocalExecutorBuilder::default()
        .name("client-test")
        .spawn(move || async move {
            let client = Client::connect(("127.0.0.1", port)).await.unwrap();
            client.ping().await.unwrap();
            assert_eq!(client.topology().expect("fetched on connect").shards.len(), common::SHARDS);

            assert_eq!(client.get("missing").await.unwrap(), None);
            let first = client.put("fruit", "apple").await.unwrap();
            let stored = client.get("fruit").await.unwrap().expect("just written");
            assert_eq!((&stored.value[..], stored.version), (&b"apple"[..], first));
            client.put_with_ttl("ephemeral", "soon gone", Duration::from_secs(3600)).await.unwrap();
            assert!(client.get("ephemeral").await.unwrap().is_some());
            let CasResult::Swapped { version } =
                client.compare_and_swap("fruit", Expected::Version(first), "banana").await.unwrap()
            else {
                panic!("the expectation held")
            };
            assert_eq!(
                client.compare_and_swap("fruit", Expected::Absent, "x").await.unwrap(),
                CasResult::Mismatch { current_version: Some(version) }
            );
            client.delete("fruit").await.unwrap();
            assert_eq!(client.get("fruit").await.unwrap(), None);
            let results = client
                .batch(vec![
                    Operation::Put {
                        key: Bytes::from_static(b"b1"),
                        value: Bytes::from_static(b"one"),
                        ttl_ms: None,
                    },
                    Operation::Get { key: Bytes::from_static(b"b1") },
                ])
                .await
                .unwrap();
            assert!(matches!(&results[1], Ok(Outcome::Value { value, .. }) if &value[..] == b"one"));

            // 2000 tasks at once share one connection per shard and pipeline on it.
            let tasks: Vec<_> = (0..2000)
                .map(|index| {
                    let client = client.clone();
                    glommio::spawn_local(async move {
                        let key = format!("concurrent-{index}");
                        client.put(&key, &key).await.unwrap();
                        let stored = client.get(&key).await.unwrap().expect("just written");
                        assert_eq!(stored.value, key.as_bytes());
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        })
        .unwrap();
    executor.join().unwrap();
}
