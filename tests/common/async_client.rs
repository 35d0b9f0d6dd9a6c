//! The checks every async client adapter must pass, written once over `AsyncClient<R>` so the
//! tokio and glommio tests run the same sequence.

use std::time::Duration;

use bytes::Bytes;
use ringkv_client::asynchronous::{AsyncClient, Transport};
use ringkv_client::{CasResult, Expected, Operation, Outcome, ScanEnd, ScanStart};

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
    // Every live key, in token order, two per page.
    let mut expected: Vec<&[u8]> = vec![b"b1", b"ephemeral", b"scan-a", b"scan-b", b"scan-c"];
    expected.sort_by_key(|key| (ringkv_client::token_of(key), *key));
    let first = client.scan(ScanStart::Token(0), ScanEnd::Last, 2).await.unwrap();
    assert_eq!(first.entries.len(), 2);
    assert_eq!(first.next_start.as_ref(), Some(&first.entries[1].key), "resume after the last entry");
    let mut keys: Vec<Bytes> = first.entries.iter().map(|entry| entry.key.clone()).collect();
    let mut next_start = first.next_start;
    while let Some(after) = next_start {
        let page = client.scan(ScanStart::After(after), ScanEnd::Last, 2).await.unwrap();
        assert!(page.entries.len() <= 2);
        keys.extend(page.entries.iter().map(|entry| entry.key.clone()));
        next_start = page.next_start;
    }
    assert_eq!(keys, expected);
    let refused = client.scan(ScanStart::key("scan-"), ScanEnd::Last, 0).await.unwrap_err();
    assert_eq!(refused.code(), Some(ringkv_client::ErrorCode::ScanLimitOutOfRange));
}
