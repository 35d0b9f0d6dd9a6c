//! Compare-and-swap across three real nodes (N = 3): counters incremented concurrently through
//! every node, and one hot counter incremented by many clients through one node, lose no
//! increment and never count one twice; a swap's outcome is seen through every other node, and
//! swaps go on with one replica killed and stop with two.

use crate::common;

use bytes::Bytes;
use common::cluster::{start_three_nodes, wait_for_every_shard, wait_for_logs};
use common::Client;
use ringkv_wire::{Consistency, ErrorCode, Expected, Operation, Outcome};

const WRITERS_INCREMENTS: u64 = 12;

/// Clients incrementing the hot counter through one node, and the increments each makes.
const HOT_WRITERS: usize = 6;
const HOT_INCREMENTS: u64 = 15;

fn swap(key: &[u8], expected: Expected, value: &[u8]) -> Operation {
    Operation::CompareAndSwap {
        key: Bytes::copy_from_slice(key),
        expected,
        value: Bytes::copy_from_slice(value),
        ttl_ms: None,
    }
}

/// What one increment of the counter did.
enum Increment {
    /// It wrote this count, with this version.
    Wrote(u64, u64),
    /// Its outcome is unknown (the failure said so): it may have written this count.
    Maybe(u64),
}

/// Increments the counter `key` once through `client`: read at QUORUM, swap from the version
/// read, again on a mismatch.
fn increment(client: &mut Client, key: &[u8]) -> Increment {
    loop {
        let read =
            client.execute_at(Operation::Get { key: Bytes::copy_from_slice(key) }, Some(Consistency::Quorum));
        let (count, expected) = match read.expect("the read succeeds") {
            Outcome::Value { value, version, .. } => {
                (std::str::from_utf8(&value).unwrap().parse::<u64>().unwrap(), Expected::Version(version))
            }
            Outcome::NotFound => (0, Expected::Absent),
            other => panic!("a read answered {other:?}"),
        };
        let next = count + 1;
        match client.execute(swap(key, expected, next.to_string().as_bytes())) {
            Ok(Outcome::Written { version }) => return Increment::Wrote(next, version),
            Ok(Outcome::CasMismatch { current_version }) => {
                assert_ne!(current_version.map(Expected::Version).unwrap_or(Expected::Absent), expected);
            }
            Err(failure) if matches!(failure.code, ErrorCode::Indeterminate | ErrorCode::Timeout) => {
                return Increment::Maybe(next)
            }
            // Certainly not applied (no quorum answered before anything was proposed): again.
            Err(failure) if failure.code == ErrorCode::Unavailable => {}
            Err(failure) => panic!("a swap failed: {failure}"),
            Ok(other) => panic!("a swap answered {other:?}"),
        }
    }
}

#[test]
fn compare_and_swap_is_linearizable_across_three_replicas() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let [first, second, mut third] = start_three_nodes(root.path());
    let mut clients: Vec<Client> = [&first, &second, &third].iter().map(|node| node.client()).collect();

    // A swap through one node is what the others compare against.
    let Outcome::Written { version } = clients[0].execute(swap(b"cas", Expected::Absent, b"a")).unwrap()
    else {
        panic!("the first swap of an absent key is written");
    };
    assert_eq!(
        clients[1].execute(swap(b"cas", Expected::Absent, b"b")).unwrap(),
        Outcome::CasMismatch { current_version: Some(version) }
    );
    let Outcome::Written { version: next } =
        clients[2].execute(swap(b"cas", Expected::Version(version), b"c")).unwrap()
    else {
        panic!("a swap from the current version is written");
    };
    assert!(next > version);
    for client in clients.iter_mut() {
        assert_eq!(
            client
                .execute_at(Operation::Get { key: Bytes::from_static(b"cas") }, Some(Consistency::Quorum))
                .unwrap(),
            Outcome::Value { value: Bytes::from_static(b"c"), version: next, expires_at_ms: None }
        );
    }
    // The committed swap is on every replica: a read at ONE through each node finds it.
    for client in clients.iter_mut() {
        let one =
            client.execute_at(Operation::Get { key: Bytes::from_static(b"cas") }, Some(Consistency::One));
        assert!(matches!(one, Ok(Outcome::Value { version, .. }) if version == next), "{one:?}");
    }

    // Three writers, one per node, increment two counters at once.
    let ports: Vec<u16> = [&first, &second, &third].iter().map(|node| node.client_port).collect();
    let writers: Vec<_> = ports
        .iter()
        .map(|&port| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                let mut done = Vec::new();
                for round in 0..WRITERS_INCREMENTS {
                    let key: &[u8] = if round % 2 == 0 { b"counter-a" } else { b"counter-b" };
                    done.push((key, increment(&mut client, key)));
                }
                done
            })
        })
        .collect();
    let results: Vec<(&[u8], Increment)> =
        writers.into_iter().flat_map(|writer| writer.join().unwrap()).collect();
    for key in [&b"counter-a"[..], b"counter-b"] {
        check_counter(&mut clients[0], key, &results);
    }

    // Many clients through one node race on one key: their swaps contend on every ballot, and
    // commits land on each replica while other swaps' prepares read it.
    let port = first.client_port;
    let hot: Vec<_> = (0..HOT_WRITERS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                (0..HOT_INCREMENTS).map(|_| (&b"hot"[..], increment(&mut client, b"hot"))).collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(&[u8], Increment)> =
        hot.into_iter().flat_map(|writer| writer.join().unwrap()).collect();
    check_counter(&mut clients[1], b"hot", &results);

    // One replica killed: swaps go on through the other two.
    third.kill();
    wait_for_logs(&[(&first, 0), (&second, 0)], "node down", &[3]);
    wait_for_every_shard(&[&first, &second], &[1, 2], &[3]);
    let mut survivors: Vec<Client> = [&first, &second].iter().map(|node| node.client()).collect();
    // ALL cannot be met: refused before anything is proposed, so the key is unchanged.
    let refused = survivors[0]
        .execute_at(swap(b"cas", Expected::Version(next), b"x"), Some(Consistency::All))
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    let mut expected = Expected::Version(next);
    for (index, value) in [b"d", b"e", b"f", b"g"].iter().enumerate() {
        match survivors[index % 2].execute(swap(b"cas", expected, *value)).unwrap() {
            Outcome::Written { version } => expected = Expected::Version(version),
            other => panic!("a swap with one replica down answered {other:?}"),
        }
    }
    assert_eq!(survivors[1].get_value(b"cas"), Some(Bytes::from_static(b"g")));

    // Two replicas down: no majority, so no swap.
    drop(survivors);
    let mut second = second;
    second.kill();
    wait_for_logs(&[(&first, 0)], "node down", &[2]);
    wait_for_every_shard(&[&first], &[1], &[2, 3]);
    let refused = first.client().execute(swap(b"cas", expected, b"h")).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
}

/// Checks the counter `key` against the increments made: no two wrote the same count, counts
/// rise with versions, and the final count (read through `client`) is every increment that
/// wrote, plus at most those whose outcome is unknown.
fn check_counter(client: &mut Client, key: &[u8], results: &[(&[u8], Increment)]) {
    let mut wrote: Vec<(u64, u64)> = Vec::new();
    let mut maybe = Vec::new();
    for (counter, increment) in results {
        match increment {
            Increment::Wrote(count, version) if *counter == key => wrote.push((*count, *version)),
            Increment::Maybe(count) if *counter == key => maybe.push(*count),
            _ => {}
        }
    }
    // No two swaps wrote the same count: none was based on a state another swap replaced.
    let mut counts: Vec<u64> = wrote.iter().map(|(count, _)| *count).collect();
    counts.sort_unstable();
    counts.dedup();
    assert_eq!(counts.len(), wrote.len(), "two swaps of {key:?} wrote the same count: {wrote:?}");
    // Counts rise with versions: the swaps are in one order.
    wrote.sort_by_key(|(_, version)| *version);
    assert!(wrote.windows(2).all(|pair| pair[0].0 < pair[1].0), "{key:?}: {wrote:?}");
    let Outcome::Value { value, .. } = client.get(key) else { panic!("the counter is there") };
    let total: u64 = std::str::from_utf8(&value).unwrap().parse().unwrap();
    let written = wrote.len() as u64;
    assert!(
        (written..=written + maybe.len() as u64).contains(&total),
        "{key:?} counts {total}, {written} increments wrote and {} may have",
        maybe.len()
    );
}
