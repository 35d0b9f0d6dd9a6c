//! A client that starts a frame and trickles it a byte at a time (a slowloris) is closed once the
//! frame outlasts `--frame-timeout-ms`; a client that goes quiet is closed after
//! `--client-idle-timeout-ms`; both closures are counted in the log, and other clients are served
//! throughout. Only outcomes are checked: each wait is a generous guard, never a measurement.

use crate::common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{request_frame, Server};
use ringkv_wire::{Command, Reply, Request};

fn assert_served(server: &Server, round: u32) {
    let mut bystander = server.client();
    let key = format!("bystander-{round}");
    bystander.put(key.as_bytes(), b"served");
    assert_eq!(bystander.get_value(key.as_bytes()).as_deref(), Some(&b"served"[..]));
}

#[test]
fn server_closes_slow_and_idle_connections() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--frame-timeout-ms", "300", "--client-idle-timeout-ms", "1000"],
    );
    assert_served(&server, 0);

    // A slowloris: a valid ping frame, one byte every 50 ms, for at most 60 s.
    let mut slow = server.client();
    let frame = request_frame(&Request { consistency: None, id: 1, command: Command::Ping });
    let mut trickle = slow_stream(&slow);
    let stop_trickling = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = stop_trickling.clone();
        thread::spawn(move || {
            // Never the whole frame: the frame's last byte is withheld.
            for _ in 0..1200 {
                for &byte in &frame[..frame.len() - 1] {
                    if stop.load(Ordering::SeqCst) || trickle.write_all(&[byte]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };
    assert!(slow.is_closed(), "the slow client's connection stayed open");
    stop_trickling.store(true, Ordering::SeqCst);
    trickler.join().unwrap();
    assert_served(&server, 1);

    // An idle client: one ping answered, then nothing.
    let mut idle = server.client();
    idle.send(&Request { consistency: None, id: 7, command: Command::Ping });
    assert!(matches!(idle.receive().reply, Reply::Pong));
    assert!(idle.is_closed(), "the idle connection stayed open");
    assert_served(&server, 2);

    let log = server.log();
    assert!(log.contains("frame_timeout_ms"), "the frame timeout was not logged:\n{log}");
    assert!(log.contains("client_idle_timeout_ms"), "the idle closure was not logged:\n{log}");
}

/// A second handle on the client's socket, for a thread to write to.
fn slow_stream(client: &common::Client) -> std::net::TcpStream {
    client.stream().try_clone().expect("cloning the socket")
}
