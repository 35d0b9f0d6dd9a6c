//! Scans against a real two-shard server: keys come back in token order (by token, then bytes)
//! across both shards, the limit and the end bounds (a key's position or a token) hold, paging
//! after `next_start` returns every live key exactly once (also when pages are cut by the byte
//! cap), deleted and expired keys never appear, and bad limits and keys are refused with their
//! error codes. Every shard port gives the same answer.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, Server};
use flatbuffers::FlatBufferBuilder;
use ringkv_wire::generated as fb;
use ringkv_wire::limits::{KEY_BYTES_MAX, SCAN_LIMIT_MAX, SCAN_PAGE_BYTES_MAX, VALUE_BYTES_MAX};
use ringkv_wire::scan::position;
use ringkv_wire::{Command, ErrorCode, Failure, Reply, Response, Scan, ScanEnd, ScanPage, ScanStart};

/// Keys written for the ordering and paging checks: enough that both shards hold many.
const KEYS: usize = 300;

fn numbered(index: usize) -> Vec<u8> {
    format!("key-{index:04}").into_bytes()
}

/// Where a key is in scan order.
fn position_of(key: &[u8]) -> (u64, Vec<u8>) {
    let (token, key) = position(key);
    (token, key.to_vec())
}

fn scan_page(client: &mut Client, start: ScanStart, end: ScanEnd, limit: u32) -> ScanPage {
    let scan = Scan { start: start.clone(), end, limit };
    match client.call(Command::Scan(scan)) {
        Reply::Scan(page) => page,
        other => panic!("scan from {start:?}: unexpected reply {other:?}"),
    }
}

/// Pages through the range with `limit`, resuming after each page's `next_start`; every key
/// returned, with its value, in order.
fn scan_everything(client: &mut Client, start: ScanStart, end: ScanEnd, limit: u32) -> Vec<(Bytes, Bytes)> {
    let mut start = start;
    let mut returned: Vec<(Bytes, Bytes)> = Vec::new();
    for _page in 0..10_000 {
        let page = scan_page(client, start, end.clone(), limit);
        assert!(page.entries.len() <= limit as usize, "{} entries above the limit", page.entries.len());
        if page.entries.len() > 1 {
            assert!(page.page_bytes() <= SCAN_PAGE_BYTES_MAX, "page of {} bytes", page.page_bytes());
        }
        returned.extend(page.entries.iter().map(|entry| (entry.key.clone(), entry.value.clone())));
        match page.next_start {
            Some(next) => {
                assert_eq!(
                    page.entries.last().map(|last| &last.key),
                    Some(&next),
                    "next_start is the last key"
                );
                assert!(next.len() <= KEY_BYTES_MAX, "next_start obeys the key limit");
                start = ScanStart::After(next);
            }
            None => {
                let in_order = returned.windows(2).all(|pair| position(&pair[0].0) < position(&pair[1].0));
                assert!(in_order, "keys in token order, each once");
                return returned;
            }
        }
    }
    panic!("paging did not finish");
}

fn keys(entries: &[(Bytes, Bytes)]) -> Vec<Vec<u8>> {
    entries.iter().map(|(key, _)| key.to_vec()).collect()
}

fn page_keys(page: &ScanPage) -> Vec<Vec<u8>> {
    page.entries.iter().map(|entry| entry.key.to_vec()).collect()
}

/// A scan request frame built without the client-side checks, as a misbehaving client sends it.
fn unchecked_scan_frame(id: u64, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let start = builder.create_vector(start);
    let end = end.map(|end| builder.create_vector(end));
    let scan = fb::Scan::create(
        &mut builder,
        &fb::ScanArgs { start: Some(start), end, limit, ..Default::default() },
    );
    let request = fb::Request::create(
        &mut builder,
        &fb::RequestArgs {
            id,
            command_type: fb::Command::Scan,
            command: Some(scan.as_union_value()),
            consistency: fb::Consistency::Default,
        },
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
    let _slot = common::test_slot();
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
        expected.insert(position_of(&key), (value, version));
    }
    assert_eq!(per_shard.len(), common::SHARDS, "keys on every shard: {per_shard:?}");
    assert!(per_shard.values().all(|&count| count > KEYS / 4), "{per_shard:?}");
    // The keys in scan order.
    let ordered: Vec<Vec<u8>> = expected.keys().map(|(_, key)| key.clone()).collect();

    // Token order across shards, with each key's value and version.
    let page = scan_page(&mut client, ScanStart::Token(0), ScanEnd::Last, SCAN_LIMIT_MAX);
    assert_eq!(page.next_start, None);
    let returned: Vec<_> = page
        .entries
        .iter()
        .map(|entry| (position_of(&entry.key), (entry.value.to_vec(), entry.version)))
        .collect();
    assert_eq!(returned, expected.clone().into_iter().collect::<Vec<_>>());

    // The limit, and next_start naming the last key returned.
    let page = scan_page(&mut client, ScanStart::Token(0), ScanEnd::Last, 10);
    assert_eq!(page_keys(&page), ordered[..10].to_vec());
    assert_eq!(page.next_start.as_deref(), Some(&ordered[9][..]));
    let page = scan_page(&mut client, ScanStart::after(&ordered[9]), ScanEnd::Last, 10);
    assert_eq!(page_keys(&page), ordered[10..20].to_vec(), "resuming after it");

    // A start key is a position: the scan begins there, inclusive.
    let page = scan_page(&mut client, ScanStart::key(&ordered[42]), ScanEnd::Last, 3);
    assert_eq!(page_keys(&page), ordered[42..45].to_vec());

    // An end key's position is exclusive and finishes the scan.
    let page = scan_page(&mut client, ScanStart::key(&ordered[100]), ScanEnd::key(&ordered[150]), 1000);
    assert_eq!(page_keys(&page), ordered[100..150].to_vec());
    assert_eq!(page.next_start, None);
    let backwards = scan_page(&mut client, ScanStart::key(&ordered[150]), ScanEnd::key(&ordered[100]), 10);
    assert!(backwards.entries.is_empty());

    // Token bounds: the keys whose tokens lie in [token of the 40th, token of the 90th).
    let token_of = |index: usize| ringkv_shard::token(&ordered[index]);
    let by_token = scan_page(&mut client, ScanStart::Token(token_of(40)), ScanEnd::Token(token_of(90)), 1000);
    assert_eq!(page_keys(&by_token), ordered[40..90].to_vec());

    // Paging through everything: every key exactly once, in order, from every port.
    for limit in [1, 7, 64] {
        let all = scan_everything(&mut client, ScanStart::Token(0), ScanEnd::Last, limit);
        assert_eq!(keys(&all), ordered, "limit {limit}");
    }
    for shard in 0..common::SHARDS as u32 {
        let mut shard_client = server.shard_client(shard);
        let all = scan_everything(&mut shard_client, ScanStart::Token(0), ScanEnd::Last, 13);
        assert_eq!(keys(&all), ordered, "via shard {shard}");
    }

    // Deleted and expired keys are absent, in one page and when paging.
    for index in (0..KEYS).step_by(5) {
        client.delete(&numbered(index));
        expected.remove(&position_of(&numbered(index)));
    }
    for index in (1..KEYS).step_by(7) {
        client.put_with_ttl(&numbered(index), b"short-lived", Some(1));
        expected.remove(&position_of(&numbered(index)));
    }
    std::thread::sleep(Duration::from_millis(50));
    let live: Vec<Vec<u8>> = expected.keys().map(|(_, key)| key.clone()).collect();
    let page = scan_page(&mut client, ScanStart::Token(0), ScanEnd::Last, SCAN_LIMIT_MAX);
    assert_eq!(page_keys(&page), live);
    assert_eq!(keys(&scan_everything(&mut client, ScanStart::Token(0), ScanEnd::Last, 6)), live);

    // Bad limits and keys are refused with their codes, and the connection keeps serving.
    assert_eq!(refused_code(&mut client, b"key-", None, 0), ErrorCode::ScanLimitOutOfRange);
    assert_eq!(refused_code(&mut client, b"key-", None, SCAN_LIMIT_MAX + 1), ErrorCode::ScanLimitOutOfRange);
    assert_eq!(refused_code(&mut client, b"", None, 10), ErrorCode::KeyEmpty);
    assert_eq!(
        refused_code(&mut client, b"key-", Some(&[b'z'; KEY_BYTES_MAX + 1]), 10),
        ErrorCode::KeyTooLong
    );
    let page = scan_page(&mut client, ScanStart::key(&live[2]), ScanEnd::key(&live[3]), 10);
    assert_eq!(page_keys(&page), vec![live[2].clone()], "the connection keeps serving");

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
    large_keys.push(largest_key.clone());
    let mut everything: Vec<Vec<u8>> = live.iter().chain(&large_keys).cloned().collect();
    everything.sort_by(|left, right| position(left).cmp(&position(right)));
    let first = scan_page(&mut client, ScanStart::Token(0), ScanEnd::Last, SCAN_LIMIT_MAX);
    assert!(
        first.entries.len() < everything.len() && first.next_start.is_some(),
        "cut by bytes: {} entries",
        first.entries.len()
    );
    let returned = scan_everything(&mut client, ScanStart::Token(0), ScanEnd::Last, 100);
    assert_eq!(keys(&returned), everything);
    for (key, value) in &returned {
        let wanted = match &key[..] {
            b"large-9" => VALUE_BYTES_MAX,
            key if key.starts_with(b"large-") => large.len(),
            _ => value.len(),
        };
        assert_eq!(value.len(), wanted, "{key:?}");
    }
    let alone = scan_page(&mut client, ScanStart::key(&largest_key), ScanEnd::Last, 100);
    assert_eq!(alone.entries.len(), 1);
    assert_eq!(alone.entries[0].value.len(), VALUE_BYTES_MAX);
}
