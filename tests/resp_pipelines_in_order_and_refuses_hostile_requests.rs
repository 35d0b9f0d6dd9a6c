//! The Redis protocol port of a real two-shard server, spoken byte by byte: pipelined requests
//! (split at every byte, mixed with inline commands) are answered in request order, a read
//! pipelined after a write of its key sees the write, `HELLO 3` switches the encoding, a value
//! above ringkv's limit gets an error naming it and the connection keeps serving, and hostile
//! requests (huge, negative or non-numeric lengths, a request cut short) get Redis's protocol
//! error and a closed connection while other connections are untouched. QUIT answers and closes.
//! A long pipeline of GETs and plain SETs (read in place and answered in runs) on keys of both
//! shards, with commands of other kinds and errors among them, is answered in order, each GET
//! seeing the SET before it.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::resp::request;
use common::{Server, LISTENER};
use ringkv_wire::limits::VALUE_BYTES_MAX;

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads until exactly `expected` has arrived (or fails on anything else).
fn expect(stream: &mut TcpStream, expected: &[u8]) {
    let mut received = vec![0u8; expected.len()];
    stream
        .read_exact(&mut received)
        .unwrap_or_else(|error| panic!("waiting for {:?}: {error}", String::from_utf8_lossy(expected)));
    assert_eq!(String::from_utf8_lossy(&received), String::from_utf8_lossy(expected));
}

/// Reads everything until the server closes the connection.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        Err(error) => panic!("reading until the server closes: {error}"),
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[test]
fn resp_pipelines_in_order_and_refuses_hostile_requests() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(&root.path().join("data"), &["--resp-listen", LISTENER]);
    let port = server.listener_port(0);

    // A pipeline, sent one byte at a time: every split parses the same.
    let mut pipeline = Vec::new();
    pipeline.extend(request(&[b"SET", b"pipelined", b"first"]));
    pipeline.extend(request(&[b"SET", b"pipelined", b"second"]));
    pipeline.extend(request(&[b"GET", b"pipelined"]));
    pipeline.extend(b"PING\r\n");
    pipeline.extend(request(&[b"INCR", b"counter"]));
    pipeline.extend(request(&[b"INCRBY", b"counter", b"41"]));
    pipeline.extend(request(&[b"GET", b"counter"]));
    pipeline.extend(b"echo \"two words\"\n");
    pipeline.extend(request(&[b"GET", b"never-written"]));
    let mut stream = connect(port);
    for byte in &pipeline {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
    }
    expect(
        &mut stream,
        b"+OK\r\n+OK\r\n$6\r\nsecond\r\n+PONG\r\n:1\r\n:42\r\n$2\r\n42\r\n$9\r\ntwo words\r\n$-1\r\n",
    );

    gets_and_sets_in_runs_answer_in_order(&mut stream);

    // RESP3 after HELLO 3: nulls and maps change, the rest does not.
    stream.write_all(&request(&[b"HELLO", b"3"])).unwrap();
    let mut hello = [0u8; 2];
    stream.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"%7", "HELLO 3 answers a map of seven fields");
    let mut rest = Vec::new();
    while !rest.ends_with(b"*0\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
        rest.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&rest).contains("proto\r\n:3\r\n"));
    stream.write_all(&request(&[b"GET", b"never-written"])).unwrap();
    expect(&mut stream, b"_\r\n");

    // A value above ringkv's limit (but within the parser's bound) is refused by name; the
    // connection keeps serving.
    let too_large = vec![b'v'; VALUE_BYTES_MAX + 1];
    stream.write_all(&request(&[b"SET", b"big", &too_large])).unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line);
    assert!(line.starts_with("-ERR ") && line.contains("VALUE_BYTES_MAX"), "{line}");
    stream.write_all(b"PING\r\n").unwrap();
    expect(&mut stream, b"+PONG\r\n");

    // Hostile requests: each gets a protocol error, then the connection closes.
    let hostile: &[(&[u8], &str)] = &[
        (b"*1\r\n$99999999999\r\n", "BULK_BYTES_MAX"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$12x\r\n", "invalid bulk length"),
        (b"*-x\r\n", "invalid multibulk length"),
        (b"*99999999\r\n", "ARGUMENTS_MAX"),
        (b"*1\r\n:12\r\n", "expected '$'"),
        (b"*1\r\n$3\r\nGETxx", "not followed by CRLF"),
    ];
    let mut bystander = connect(port);
    for (bytes, named) in hostile {
        let mut attacker = connect(port);
        attacker.write_all(bytes).unwrap();
        let answer = read_to_close(&mut attacker);
        assert!(answer.starts_with("-ERR Protocol error") && answer.contains(named), "{answer}");
        bystander.write_all(&request(&[b"GET", b"pipelined"])).unwrap();
        expect(&mut bystander, b"$6\r\nsecond\r\n");
    }
    // A request cut short by the end of the stream is not executed.
    let mut truncated = connect(port);
    truncated.write_all(b"*3\r\n$3\r\nSET\r\n$9\r\npipelined\r\n$5\r\nlo").unwrap();
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut truncated), "");
    bystander.write_all(&request(&[b"GET", b"pipelined"])).unwrap();
    expect(&mut bystander, b"$6\r\nsecond\r\n");

    // QUIT answers, then the server closes the connection.
    bystander.write_all(&request(&[b"QUIT"])).unwrap();
    assert_eq!(read_to_close(&mut bystander), "+OK\r\n");
    drop(server);
}

/// A pipeline in one write, longer than a held run, of SETs and GETs (in either case) on a few
/// keys, which land on both shards, with other commands and a refused key among them: every
/// reply in order, every GET the value of the SET just before it.
fn gets_and_sets_in_runs_answer_in_order(stream: &mut TcpStream) {
    let too_long = vec![b'k'; ringkv_wire::limits::KEY_BYTES_MAX + 1];
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for round in 0..300usize {
        let key = format!("run-key-{}", round % 7).into_bytes();
        let value = format!("value-{round}").into_bytes();
        let (set, get): (&[u8], &[u8]) = if round % 3 == 0 { (b"set", b"get") } else { (b"SET", b"GET") };
        pipeline.extend(request(&[set, &key, &value]));
        expected.extend_from_slice(b"+OK\r\n");
        pipeline.extend(request(&[get, &key]));
        expected.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
        expected.extend_from_slice(&value);
        expected.extend_from_slice(b"\r\n");
        match round % 50 {
            17 => {
                pipeline.extend(request(&[b"PING"]));
                expected.extend_from_slice(b"+PONG\r\n");
            }
            31 => {
                pipeline.extend(request(&[b"GET", &too_long]));
                expected.extend_from_slice(b"-ERR ");
            }
            _ => {}
        }
    }
    stream.write_all(&pipeline).unwrap();
    // The refused key's error line names the limit; everything else is byte for byte.
    let mut received = Vec::new();
    for part in expected.split_inclusive(|&byte| byte == b' ') {
        let mut bytes = vec![0u8; part.len()];
        stream.read_exact(&mut bytes).unwrap();
        if bytes.ends_with(b"-ERR ") {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            assert!(
                String::from_utf8_lossy(&line).contains("KEY_BYTES_MAX"),
                "{}",
                String::from_utf8_lossy(&line)
            );
        }
        received.extend_from_slice(&bytes);
    }
    assert_eq!(String::from_utf8_lossy(&received), String::from_utf8_lossy(&expected));
}
