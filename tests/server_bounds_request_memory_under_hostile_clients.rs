//! Many connections that each send a 1 MiB frame minus its last byte and wait: the shard stops
//! reading once its request memory (`--request-memory-bytes-max`) is spent, so the node's
//! resident memory stays under that budget plus a fixed overhead instead of growing with the
//! connections; the other shard keeps serving; and once the connections go, the memory they
//! held goes back to the operating system.
//!
//! Memory is sampled while the attack runs (the server reads as fast as it can, so without the
//! budget the growth shows at once); the samples are compared, never their timing.

use crate::common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{unchecked_put_frame, Server};

/// Hostile connections.
const CONNECTIONS: usize = 64;

/// The budget of the attacked shard.
const BUDGET_BYTES: u64 = 16 << 20;

/// Room for what is not request memory: connection state, replies, allocator slack.
const OVERHEAD_BYTES: u64 = 16 << 20;

/// What may stay resident once the connections are gone: the small buffers the allocator keeps
/// in its heaps.
const KEPT_AFTER_BYTES: u64 = 8 << 20;

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading the server's status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS in status");
    let kib: u64 = line.split_whitespace().nth(1).expect("a VmRSS figure").parse().expect("a number");
    kib * 1024
}

/// `samples` readings of the server's resident memory, 100 ms apart.
fn rss_samples(pid: u32, samples: usize) -> Vec<u64> {
    (0..samples)
        .map(|_| {
            thread::sleep(Duration::from_millis(100));
            rss_bytes(pid)
        })
        .collect()
}

#[test]
fn server_bounds_request_memory_under_hostile_clients() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let budget = BUDGET_BYTES.to_string();
    let server = Server::start_with(
        &root.path().join("data"),
        // A frame timeout far beyond the test, so nothing but the budget holds memory down.
        &["--request-memory-bytes-max", &budget, "--frame-timeout-ms", "600000"],
    );
    let pid = server.pid();
    let mut bystander = server.shard_client(1);
    bystander.put(b"warm-up", &[7u8; 4096]);
    let before = rss_bytes(pid);

    let mut frame = unchecked_put_frame(1, b"hostile", &vec![0xab; 1 << 20]);
    frame.pop();
    let frame = std::sync::Arc::new(frame);
    let port = server.shard_port(0);
    let (release, released) = mpsc::channel::<()>();
    let released = std::sync::Arc::new(std::sync::Mutex::new(released));
    let (opened, opened_all) = mpsc::channel::<()>();
    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let frame = frame.clone();
            let released = released.clone();
            let opened = opened.clone();
            thread::spawn(move || {
                let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connecting");
                opened.send(()).unwrap();
                // Blocks once the server stops reading; the stream is closed when dropped.
                let writing = {
                    let mut stream = stream.try_clone().unwrap();
                    let frame = frame.clone();
                    thread::spawn(move || {
                        let _ = stream.write_all(&frame);
                    })
                };
                let _ = released.lock().unwrap().recv();
                let _ = stream.shutdown(std::net::Shutdown::Both);
                let _ = writing.join();
            })
        })
        .collect();
    for _ in 0..CONNECTIONS {
        opened_all.recv().unwrap();
    }
    let during = rss_samples(pid, 30).into_iter().max().expect("samples");

    // The other shard serves throughout.
    bystander.put(b"during", b"the attack");
    assert_eq!(bystander.get_value(b"during").as_deref(), Some(&b"the attack"[..]));

    drop(release);
    for attacker in attackers {
        attacker.join().unwrap();
    }
    // The attacked shard serves again once the connections are gone.
    let mut attacked = server.shard_client(0);
    attacked.put(b"after", b"the attack");
    assert_eq!(attacked.get_value(b"after").as_deref(), Some(&b"the attack"[..]));
    // The lowest reading once the connections closed: closing takes the shard a moment.
    let after = rss_samples(pid, 40).into_iter().min().expect("samples");

    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "resident memory: {:.1} MiB before, {:.1} MiB at the peak of {CONNECTIONS} hostile connections, \
         {:.1} MiB after they closed (budget {:.0} MiB)",
        mib(before),
        mib(during),
        mib(after),
        mib(BUDGET_BYTES)
    );
    assert!(
        during >= before + (4 << 20),
        "the attack did not reach the server: {:.1} MiB more resident",
        mib(during.saturating_sub(before))
    );
    assert!(
        during <= before + BUDGET_BYTES + OVERHEAD_BYTES,
        "resident memory grew by {:.1} MiB, past the {:.0} MiB budget plus {:.0} MiB:\n{}",
        mib(during.saturating_sub(before)),
        mib(BUDGET_BYTES),
        mib(OVERHEAD_BYTES),
        server.log()
    );
    assert!(
        after <= before + KEPT_AFTER_BYTES,
        "{:.1} MiB more resident after the connections closed than before",
        mib(after.saturating_sub(before))
    );
}
