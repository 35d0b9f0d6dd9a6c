//! The blocking client's scans against a real server: one page with its limit and `next_start`,
//! `scan_all` paging through a range in order, and a bad limit refused before sending with the
//! server's own error.

mod common;

use common::Server;
use ringkv_client::blocking::Client;
use ringkv_client::{Error, ErrorCode, SCAN_LIMIT_MAX};

#[test]
fn client_scan_pages_through_a_range() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let mut client = Client::connect(("127.0.0.1", server.client_port)).unwrap();

    let keys: Vec<String> = (0..120).map(|index| format!("item-{index:03}")).collect();
    for key in &keys {
        client.put(key, key.to_uppercase()).unwrap();
    }
    client.delete("item-050").unwrap();
    let live: Vec<&String> = keys.iter().filter(|key| *key != "item-050").collect();

    let page = client.scan("item-", None, 5).unwrap();
    let first: Vec<&[u8]> = page.entries.iter().map(|entry| &entry.key[..]).collect();
    assert_eq!(first, live[..5].iter().map(|key| key.as_bytes()).collect::<Vec<_>>());
    assert_eq!(&page.entries[0].value[..], b"ITEM-000");
    assert_eq!(page.next_start.as_deref(), Some(live[5].as_bytes()));

    let page = client.scan("item-010", Some(b"item-013"), 100).unwrap();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(page.next_start, None);

    let everything: Vec<String> = client
        .scan_all("item-", Some(b"item-z"), 7)
        .map(|entry| String::from_utf8(entry.unwrap().key.to_vec()).unwrap())
        .collect();
    assert_eq!(everything.iter().collect::<Vec<_>>(), live);

    for limit in [0, SCAN_LIMIT_MAX + 1] {
        let error = client.scan("item-", None, limit).unwrap_err();
        assert!(matches!(error, Error::Limit(_)), "{error}");
        assert_eq!(error.code(), Some(ErrorCode::ScanLimitOutOfRange));
    }
    // The iterator yields the error once, then ends.
    let mut refused = client.scan_all("item-", None, 0);
    assert!(matches!(refused.next(), Some(Err(Error::Limit(_)))));
    assert!(refused.next().is_none());
}
