//! A Redis-protocol GET answered from memory that finds a write not yet durable (another
//! connection's SET waiting for its group commit) takes its place in order and is answered once
//! that commit is durable: the reply is right, later replies on the connection keep their order,
//! and the read is counted in `ringkv_reads_held_total`.
//!
//! One connection pipelines SETs of a key while readers, new connections each round (so that
//! some land on the key's shard), pipeline GETs of it straight after, so GETs reach the key's shard while the SETs' commit
//! is under way. Whether a given GET finds a SET still unsynced depends on the scheduler, so the
//! test repeats rounds until some GET was held (the first round nearly always suffices) and checks
//! every reply of every round.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::metrics::{scrape, total};
use common::resp::request;
use common::{Server, LISTENER};

/// Rounds at most before giving up on seeing a held read.
const ROUNDS_MAX: usize = 200;
/// SETs and GETs per round, each side in one socket write.
const PER_ROUND: usize = 50;
/// Reading connections: the port spreads connections over the shards.
const READERS: usize = 4;

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

/// Reads one bulk-string or null reply.
fn bulk(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut header = String::new();
    reader.read_line(&mut header).unwrap();
    match header.trim_end() {
        "$-1" | "_" => None,
        length if length.starts_with('$') => {
            let length: usize = length[1..].parse().unwrap();
            let mut body = vec![0u8; length + 2];
            std::io::Read::read_exact(reader, &mut body).unwrap();
            Some(String::from_utf8(body[..length].to_vec()).unwrap())
        }
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

#[test]
fn resp_reads_of_writes_not_yet_durable_wait() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--resp-listen", LISTENER, "--metrics-listen", LISTENER],
    );
    let (resp_port, metrics_port) = (server.listener_port(0), server.listener_port(1));
    let (mut writer, mut acks) = connect(resp_port);
    let held = || total(&scrape(metrics_port), "ringkv_reads_held_total", &[]);
    let held_before = held();

    let mut rounds = 0;
    while rounds < ROUNDS_MAX {
        // Values rise with the round and the position, so a reader can tell order.
        let value = |index: usize| format!("r{rounds:04}-{index:04}");
        let sets: Vec<u8> =
            (0..PER_ROUND).flat_map(|index| request(&[b"SET", b"hot", value(index).as_bytes()])).collect();
        let gets: Vec<u8> = (0..PER_ROUND).flat_map(|_| request(&[b"GET", b"hot"])).collect();
        // New connections each round: the port may have put every earlier one on a shard
        // other than the key's, whose reads are forwarded instead.
        let mut readers: Vec<_> = (0..READERS).map(|_| connect(resp_port)).collect();
        writer.write_all(&sets).unwrap();
        for (stream, _) in &mut readers {
            stream.write_all(&gets).unwrap();
        }
        let previous = (rounds > 0).then(|| format!("r{:04}-{:04}", rounds - 1, PER_ROUND - 1));
        for (_, reader) in &mut readers {
            // Each GET sees the last value of the round before or one of this round's, and a
            // later GET on the connection never an older value than an earlier one did.
            let mut last_seen = previous.clone();
            for _ in 0..PER_ROUND {
                let found = bulk(reader);
                assert!(
                    found.is_some() || previous.is_none(),
                    "round {rounds}: the key was written before this round, yet a GET found nothing"
                );
                if let Some(found) = &found {
                    assert!(
                        found.starts_with(&format!("r{rounds:04}-")) || Some(found) == previous.as_ref(),
                        "round {rounds}: a GET found {found:?}"
                    );
                }
                assert!(found >= last_seen, "round {rounds}: {found:?} after {last_seen:?}");
                last_seen = found;
            }
        }
        for _ in 0..PER_ROUND {
            let mut ack = String::new();
            acks.read_line(&mut ack).unwrap();
            assert_eq!(ack, "+OK\r\n");
        }
        rounds += 1;
        if held() > held_before {
            break;
        }
    }
    assert!(held() > held_before, "no GET found a SET still waiting for its commit in {rounds} rounds");
    writer.write_all(&request(&[b"GET", b"hot"])).unwrap();
    assert_eq!(bulk(&mut acks), Some(format!("r{:04}-{:04}", rounds - 1, PER_ROUND - 1)));
}
