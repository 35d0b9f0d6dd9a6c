//! The checks every async client adapter must pass, written once over `AsyncClient<R>` so the
//! tokio and glommio tests run the same sequence.

use std::time::Duration;

use bytes::Bytes;
use ringkv_client::asynchronous::{AsyncClient, Transport};
use ringkv_client::{CasResult, Expected, Operation, Outcome};

/// Ping, topology, get/put/TTL/CAS/delete, a batch and scans, each result checked.
pub async fn serves_every_operation<R: Transport>(client: &AsyncClient<R>) {
    client.ping().await.unwrap();
    assert_eq!(client.topology().expect("fetched on connect").shards.len(), super::SHARDS);

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

    for key in ["scan-a", "scan-b", "scan-c"] {
        client.put(key, key).await.unwrap();
    }
    let page = client.scan("scan-", Some(b"scan-z"), 2).await.unwrap();
    let keys: Vec<&[u8]> = page.entries.iter().map(|entry| &entry.key[..]).collect();
    assert_eq!(keys, [&b"scan-a"[..], b"scan-b"]);
    assert_eq!(page.next_start.as_deref(), Some(&b"scan-c"[..]));
    let rest = client.scan(page.next_start.unwrap(), Some(b"scan-z"), 2).await.unwrap();
    assert_eq!((rest.entries.len(), rest.next_start), (1, None));
    let refused = client.scan("scan-", None, 0).await.unwrap_err();
    assert_eq!(refused.code(), Some(ringkv_client::ErrorCode::ScanLimitOutOfRange));
}
