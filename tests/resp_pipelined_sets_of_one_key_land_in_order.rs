//! Pipelined SETs of the same keys, sent in one stream with enough other keys between them that
//! the memtables fill and flush while they run: plain SETs (applied by the connection's reader in place),
//! SETs with KEEPTTL (run in a task: they read the key first) and SETs with EX interleave on
//! each key, and after all of them every key holds the value of its last SET, as in Redis.
//! A write applied in place must never overtake an earlier write of its key waiting in a task,
//! nor one that runs in a task only because of its form (SET with PXAT, MSET).

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::resp::request;
use common::{Server, LISTENER};

/// A value of `bytes` bytes that names its key and round.
fn value(key: usize, round: usize, bytes: usize) -> Vec<u8> {
    let mut value = format!("key{key}-round{round}-").into_bytes();
    value.resize(bytes, b'.');
    value
}

#[test]
fn resp_pipelined_sets_of_one_key_land_in_order() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    // The test servers' memtables hold 1 MiB; the fillers below write about 6 MiB.
    let server = Server::start_with(&root.path().join("data"), &["--resp-listen", LISTENER]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.listener_port(0))).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();

    let expires_at = a_day_from_now_ms();
    const KEYS: usize = 6;
    const ROUNDS: usize = 120;
    const VALUE_BYTES: usize = 2048;
    const FILLERS_PER_ROUND: usize = 12;
    let filler = vec![b'f'; 4096];
    let mut sent = Vec::new();
    let mut commands = 0;
    for round in 0..ROUNDS {
        for key in 0..KEYS {
            let name = format!("key{key}").into_bytes();
            let value = value(key, round, VALUE_BYTES);
            let command = match round % 4 {
                0 => request(&[b"SET", &name, &value]),
                1 => request(&[b"SET", &name, &value, b"KEEPTTL"]),
                2 => request(&[b"SET", &name, &value, b"PXAT", expires_at.as_bytes()]),
                _ => request(&[b"SET", &name, &value, b"EX", b"100000"]),
            };
            sent.extend_from_slice(&command);
            commands += 1;
        }
        for index in 0..FILLERS_PER_ROUND {
            sent.extend_from_slice(&request(&[
                b"SET",
                format!("filler-{round}-{index}").as_bytes(),
                &filler,
            ]));
            commands += 1;
        }
    }
    // The writer thread sends while this one reads, so neither side's buffers fill up.
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut replies = vec![0u8; commands * b"+OK\r\n".len()];
    stream.read_exact(&mut replies).unwrap();
    sending.join().unwrap();
    assert!(replies.chunks(5).all(|reply| reply == b"+OK\r\n"), "every SET answered OK");

    for key in 0..KEYS {
        stream.write_all(&request(&[b"GET", format!("key{key}").as_bytes()])).unwrap();
        let expected = value(key, ROUNDS - 1, VALUE_BYTES);
        let header = format!("${}\r\n", expected.len());
        let mut reply = vec![0u8; header.len() + expected.len() + 2];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&reply[..header.len() + 24]),
            String::from_utf8_lossy(&[header.as_bytes(), &expected[..24]].concat()),
            "key{key} holds its last SET"
        );
        assert_eq!(&reply[header.len()..header.len() + expected.len()], &expected[..]);
    }
    writes_in_tasks_are_not_overtaken(&mut stream);

    let tables = walk(&server.data_dir).into_iter().filter(|path| path.ends_with(".sst")).count();
    assert!(tables > 0, "the memtables filled and flushed during the stream");
}

/// Each key gets a write that runs in a task (SET with PXAT, or MSET) and a plain SET right after
/// it, both in one packet, so the reader takes them in one pass: the plain SET could then be
/// applied on the reader's spot while the first write's task has not run yet. The key must hold the plain
/// SET's value.
fn writes_in_tasks_are_not_overtaken(stream: &mut TcpStream) {
    const PAIRS: usize = 50;
    let expires_at = a_day_from_now_ms();
    for pair in 0..PAIRS {
        let key = format!("pair{pair}").into_bytes();
        // Held in memory first, so that the plain SET below can be decided without reading a
        // table (the stream above flushed some).
        stream.write_all(&request(&[b"SET", &key, b"zero"])).unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n");
        let first = match pair % 2 {
            0 => request(&[b"SET", &key, b"first", b"PXAT", expires_at.as_bytes()]),
            _ => request(&[b"MSET", &key, b"first", b"other", b"x"]),
        };
        let mut packet = first;
        packet.extend_from_slice(&request(&[b"SET", &key, b"last"]));
        packet.extend_from_slice(&request(&[b"GET", &key]));
        stream.write_all(&packet).unwrap();
        let expected = b"+OK\r\n+OK\r\n$4\r\nlast\r\n";
        let mut replies = vec![0u8; expected.len()];
        stream.read_exact(&mut replies).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&replies),
            String::from_utf8_lossy(expected),
            "pair {pair}: the plain SET after a write in a task lands last"
        );
    }
}

/// A day from now, in Unix milliseconds (for PXAT).
fn a_day_from_now_ms() -> String {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (since_epoch.as_millis() + 86_400_000).to_string()
}

/// Every file under `dir`, as paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path.display().to_string());
        }
    }
    files
}
