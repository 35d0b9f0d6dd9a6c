//! Scans against a real two-shard server: keys come back in byte order across both shards, the
//! limit and the end bound hold, paging with `next_start` returns every live key exactly once
//! (also when pages are cut by the byte cap), deleted and expired keys never appear, and bad
//! limits and keys are refused with their error codes. Every shard port gives the same answer.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, Server};
use flatbuffers::FlatBufferBuilder;
use ringkv_wire::generated as fb;
use ringkv_wire::limits::{KEY_BYTES_MAX, SCAN_LIMIT_MAX, SCAN_PAGE_BYTES_MAX, VALUE_BYTES_MAX};
use ringkv_wire::{Command, ErrorCode, Failure, Reply, Response, Scan, ScanPage};

/// Keys written for the ordering and paging checks: enough that both shards hold many.
const KEYS: usize = 300;

fn numbered(index: usize) -> Vec<u8> {
    format!("key-{index:04}").into_bytes()
}

fn scan_page(client: &mut Client, start: &[u8], end: Option<&[u8]>, limit: u32) -> ScanPage {
    let scan = Scan { start: Bytes::copy_from_slice(start), end: end.map(Bytes::copy_from_slice), limit };
    match client.call(Command::Scan(scan)) {
        Reply::Scan(page) => page,
        other => panic!("scan from {:?}: unexpected reply {other:?}", String::from_utf8_lossy(start)),
    }
}

/// Pages through `[start, end)` with `limit`; every key returned, with its value, in order.
fn scan_everything(client: &mut Client, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Bytes, Bytes)> {
    let mut start = start.to_vec();
    let mut returned = Vec::new();
    for _page in 0..10_000 {
        let page = scan_page(client, &start, end, limit);
        assert!(page.entries.len() <= limit as usize, "{} entries above the limit", page.entries.len());
        if page.entries.len() > 1 {
            assert!(page.page_bytes() <= SCAN_PAGE_BYTES_MAX, "page of {} bytes", page.page_bytes());
        }
        returned.extend(page.entries.iter().map(|entry| (entry.key.clone(), entry.value.clone())));
        match page.next_start {
            Some(next) => {
                assert!(!page.entries.is_empty(), "a page that points further must make progress");
                assert!(page.entries.iter().all(|entry| entry.key < next), "next_start lies past the page");
                assert!(next.len() <= KEY_BYTES_MAX, "next_start obeys the key limit");
                start = next.to_vec();
            }
            None => return returned,
        }
    }
    panic!("paging did not finish");
}

fn keys(entries: &[(Bytes, Bytes)]) -> Vec<Vec<u8>> {
    entries.iter().map(|(key, _)| key.to_vec()).collect()
}

/// A scan request frame built without the client-side checks, as a misbehaving client sends it.
fn unchecked_scan_frame(id: u64, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let start = builder.create_vector(start);
    let end = end.map(|end| builder.create_vector(end));
    let scan = fb::Scan::create(&mut builder, &fb::ScanArgs { start: Some(start), end, limit });
    let request = fb::Request::create(
        &mut builder,
        &fb::RequestArgs { id, command_type: fb::Command::Scan, command: Some(scan.as_union_value()) },
    );
    builder.finish_size_prefixed(request, None);
    builder.finished_data().to_vec()
}

fn refused_code(client: &mut Client, start: &[u8], end: Option<&[u8]>, limit: u32) -> ErrorCode {
    let id = client.next_id();
    client.send_raw(&unchecked_scan_frame(id, start, end, limit));
    match client.receive() {
        Response { id: answered, reply: Reply::Failed(Failure { code, .. }) } if answered == id => code,
        other => panic!("expected a failure for request {id}, got {other:?}"),
    }
}

#[test]
fn server_scan() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = server.client();
    let topology = client.topology();

    // The keys land on both shards, so every check below crosses the mesh.
    let mut per_shard = BTreeMap::new();
    let mut expected = BTreeMap::new();
    for index in 0..KEYS {
        let key = numbered(index);
        let value = format!("value-{index}").into_bytes();
        let version = client.put(&key, &value);
        let shard = topology.shard_for_token(ringkv_shard::token(&key)).unwrap().shard_id;
        *per_shard.entry(shard).or_insert(0) += 1;
        expected.insert(key, (value, version));
    }
    assert_eq!(per_shard.len(), common::SHARDS, "keys on every shard: {per_shard:?}");
    assert!(per_shard.values().all(|&count| count > KEYS / 4), "{per_shard:?}");

    // Ordering across shards, with each key's value and version.
    let page = scan_page(&mut client, b"key-", None, SCAN_LIMIT_MAX);
    assert_eq!(page.next_start, None);
    let returned: Vec<_> = page
        .entries
        .iter()
        .map(|entry| (entry.key.to_vec(), (entry.value.to_vec(), entry.version)))
        .collect();
    assert_eq!(returned, expected.clone().into_iter().collect::<Vec<_>>());

    // The limit, and next_start naming the first key left out.
    let page = scan_page(&mut client, b"key-", None, 10);
    let first_ten: Vec<_> = page.entries.iter().map(|entry| entry.key.to_vec()).collect();
    assert_eq!(first_ten, (0..10).map(numbered).collect::<Vec<_>>());
    assert_eq!(page.next_start.as_deref(), Some(&numbered(10)[..]));

    // The end bound is exclusive and finishes the scan.
    let page = scan_page(&mut client, &numbered(100), Some(&numbered(150)), 1000);
    assert_eq!(
        page.entries.iter().map(|entry| entry.key.to_vec()).collect::<Vec<_>>(),
        (100..150).map(numbered).collect::<Vec<_>>()
    );
    assert_eq!(page.next_start, None);
    assert!(scan_page(&mut client, &numbered(150), Some(&numbered(100)), 10).entries.is_empty());

    // Paging through everything: every key exactly once, in order, from every port.
    let all: Vec<Vec<u8>> = expected.keys().cloned().collect();
    for limit in [1, 7, 64] {
        assert_eq!(keys(&scan_everything(&mut client, b"key-", None, limit)), all, "limit {limit}");
    }
    for shard in 0..common::SHARDS as u32 {
        let mut shard_client = server.shard_client(shard);
        assert_eq!(keys(&scan_everything(&mut shard_client, b"key-", None, 13)), all, "via shard {shard}");
    }

    // Deleted and expired keys are absent, in one page and when paging.
    for index in (0..KEYS).step_by(5) {
        client.delete(&numbered(index));
        expected.remove(&numbered(index));
    }
    for index in (1..KEYS).step_by(7) {
        client.put_with_ttl(&numbered(index), b"short-lived", Some(1));
        expected.remove(&numbered(index));
    }
    std::thread::sleep(Duration::from_millis(50));
    let live: Vec<Vec<u8>> = expected.keys().cloned().collect();
    let page = scan_page(&mut client, b"key-", None, SCAN_LIMIT_MAX);
    assert_eq!(page.entries.iter().map(|entry| entry.key.to_vec()).collect::<Vec<_>>(), live);
    assert_eq!(keys(&scan_everything(&mut client, b"key-", None, 6)), live);

    // Bad limits and keys are refused with their codes, and the connection keeps serving.
    assert_eq!(refused_code(&mut client, b"key-", None, 0), ErrorCode::ScanLimitOutOfRange);
    assert_eq!(refused_code(&mut client, b"key-", None, SCAN_LIMIT_MAX + 1), ErrorCode::ScanLimitOutOfRange);
    assert_eq!(refused_code(&mut client, b"", None, 10), ErrorCode::KeyEmpty);
    assert_eq!(
        refused_code(&mut client, b"key-", Some(&[b'z'; KEY_BYTES_MAX + 1]), 10),
        ErrorCode::KeyTooLong
    );
    assert!(expected.contains_key(&numbered(2)));
    let page = scan_page(&mut client, &numbered(2), Some(&numbered(3)), 10);
    assert_eq!(page.entries.len(), 1, "the connection keeps serving");

    // Large values: pages are cut by bytes, not by the limit, and paging still returns every key
    // once. The largest value fits in a page of its own.
    let large = vec![b'L'; 300 * 1024];
    let mut large_keys = Vec::new();
    for index in 0..8 {
        let key = format!("large-{index}").into_bytes();
        client.put(&key, &large);
        large_keys.push(key);
    }
    let largest_key = b"large-9".to_vec();
    client.put(&largest_key, &vec![b'X'; VALUE_BYTES_MAX]);
    large_keys.push(largest_key);
    let first = scan_page(&mut client, b"large-", Some(b"large-z"), 100);
    assert!(
        first.entries.len() < 8 && first.next_start.is_some(),
        "cut by bytes: {} entries",
        first.entries.len()
    );
    let returned = scan_everything(&mut client, b"large-", Some(b"large-z"), 100);
    assert_eq!(keys(&returned), large_keys);
    assert!(returned[..8].iter().all(|(_, value)| value.len() == large.len()));
    assert_eq!(returned[8].1.len(), VALUE_BYTES_MAX);
    let alone = scan_page(&mut client, b"large-9", None, 100);
    assert_eq!(alone.entries.len(), 1);
    assert_eq!(alone.entries[0].value.len(), VALUE_BYTES_MAX);
}
