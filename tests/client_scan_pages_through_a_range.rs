//! The blocking client's scans against a real server: one page in token order with its limit and
//! `next_start` (its last key), a range between two keys' positions, `scan_all` paging through
//! the ring in order, and a bad limit refused before sending with the server's own error.

use crate::common;

use common::Server;
use ringkv_client::blocking::Client;
use ringkv_client::{token_of, Error, ErrorCode, ScanEnd, ScanStart, SCAN_LIMIT_MAX};

#[test]
fn client_scan_pages_through_a_range() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = Client::connect(("127.0.0.1", server.client_port)).unwrap();

    let keys: Vec<String> = (0..120).map(|index| format!("item-{index:03}")).collect();
    for key in &keys {
        client.put(key, key.to_uppercase()).unwrap();
    }
    client.delete("item-050").unwrap();
    // The live keys in scan order: by token, then bytes.
    let mut live: Vec<&String> = keys.iter().filter(|key| *key != "item-050").collect();
    live.sort_by_key(|key| (token_of(key.as_bytes()), key.as_bytes()));

    let page = client.scan(ScanStart::Token(0), ScanEnd::Last, 5).unwrap();
    let first: Vec<&[u8]> = page.entries.iter().map(|entry| &entry.key[..]).collect();
    assert_eq!(first, live[..5].iter().map(|key| key.as_bytes()).collect::<Vec<_>>());
    assert_eq!(&page.entries[0].value[..], live[0].to_uppercase().as_bytes());
    assert_eq!(page.next_start.as_deref(), Some(live[4].as_bytes()), "the last key returned");

    let page = client.scan(ScanStart::key(live[10]), ScanEnd::key(live[13]), 100).unwrap();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(page.next_start, None);

    let everything: Vec<String> = client
        .scan_all(ScanStart::Token(0), ScanEnd::Last, 7)
        .map(|entry| String::from_utf8(entry.unwrap().key.to_vec()).unwrap())
        .collect();
    assert_eq!(everything.iter().collect::<Vec<_>>(), live);
    let from_the_tenth: Vec<String> = client
        .scan_all(ScanStart::key(live[10]), ScanEnd::Last, 4)
        .map(|entry| String::from_utf8(entry.unwrap().key.to_vec()).unwrap())
        .collect();
    assert_eq!(from_the_tenth.iter().collect::<Vec<_>>(), live[10..]);

    for limit in [0, SCAN_LIMIT_MAX + 1] {
        let error = client.scan(ScanStart::key("item-"), ScanEnd::Last, limit).unwrap_err();
        assert!(matches!(error, Error::Limit(_)), "{error}");
        assert_eq!(error.code(), Some(ErrorCode::ScanLimitOutOfRange));
    }
    // The iterator yields the error once, then ends.
    let mut refused = client.scan_all(ScanStart::key("item-"), ScanEnd::Last, 0);
    assert!(matches!(refused.next(), Some(Err(Error::Limit(_)))));
    assert!(refused.next().is_none());
}
