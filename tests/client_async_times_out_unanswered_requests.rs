//! The tokio and glommio clients fail a request that gets no reply within the request timeout
//! with `Error::Timeout`, while requests answered in time on the same connection succeed and
//! the connection stays usable. The server is a stand-in that answers the topology and reads
//! of `fast`, and never answers reads of `slow`.

use crate::common;
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use flatbuffers::FlatBufferBuilder;
use ringkv_client::{ClientOptions, Error};
use ringkv_wire::{
    encode_response, parse_request, Command, FrameDecoder, Operation, Outcome, Reply, Response,
    ShardPlacement, TokenRange, Topology,
};

const TIMEOUT: Duration = Duration::from_millis(300);

/// Starts the stand-in server on an ephemeral port; returns the port.
fn start_silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || serve(stream, port));
        }
    });
    port
}

fn serve(mut stream: TcpStream, port: u16) {
    let topology = Topology {
        shards: vec![ShardPlacement {
            shard_id: 0,
            port,
            token_ranges: vec![TokenRange { start: 0, end: 0 }],
        }],
        ..Topology::default()
    };
    let mut decoder = FrameDecoder::new();
    let mut chunk = [0u8; 4096];
    let mut builder = FlatBufferBuilder::new();
    loop {
        let read = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        decoder.extend_from_slice(&chunk[..read]);
        while let Some(frame) = decoder.next_frame().unwrap() {
            let request = parse_request(&frame).unwrap();
            let reply = match request.command {
                Command::Topology => Reply::Topology(topology.clone()),
                Command::Single(Operation::Get { key }) if &key[..] == b"fast" => {
                    Reply::Single(Outcome::NotFound)
                }
                _ => continue, // never answered
            };
            let bytes = encode_response(&mut builder, &Response { id: request.id, reply }).unwrap().to_vec();
            if stream.write_all(&bytes).is_err() {
                return;
            }
        }
    }
}

fn options() -> ClientOptions {
    ClientOptions { request_timeout: TIMEOUT, ..ClientOptions::default() }
}

/// What each client must show; `get` runs one read of the given key. Nothing here bounds how
/// long a step may take on a loaded machine: the checks are on order (the answered request
/// completes while the unanswered one still waits) and on the timeout never firing early.
async fn check_timeouts<F, Fut>(get: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<Option<ringkv_client::Versioned>, Error>>,
{
    let slow_done = Cell::new(false);
    let started = Instant::now();
    let (slow, fast) = futures_lite::future::zip(
        async {
            let slow = get("slow").await;
            slow_done.set(true);
            (slow, started.elapsed())
        },
        async {
            let fast = get("fast").await;
            (fast, slow_done.get())
        },
    )
    .await;
    let (slow, waited) = slow;
    assert!(matches!(slow, Err(Error::Timeout { timeout }) if timeout == TIMEOUT), "got {slow:?}");
    assert!(waited >= TIMEOUT, "failed after {waited:?}, before the timeout");
    let (fast, slow_finished_first) = fast;
    assert_eq!(fast.unwrap(), None);
    assert!(!slow_finished_first, "the answered request waited behind the unanswered one");
    // The connection is still usable after a timeout.
    assert_eq!(get("fast").await.unwrap(), None);
}

#[test]
fn tokio_client_times_out_unanswered_requests() {
    let _slot = common::test_slot();
    let port = start_silent_server();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let client =
            ringkv_client::tokio::Client::connect_with(("127.0.0.1", port), options()).await.unwrap();
        check_timeouts(|key| {
            let client = client.clone();
            async move { client.get(key).await }
        })
        .await;
    });
}

#[test]
fn glommio_client_times_out_unanswered_requests() {
    let _slot = common::test_slot();
    let port = start_silent_server();
    let executor = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let client =
                ringkv_client::glommio::Client::connect_with(("127.0.0.1", port), options()).await.unwrap();
            check_timeouts(|key| {
                let client = client.clone();
                async move { client.get(key).await }
            })
            .await;
        })
        .unwrap();
    executor.join().unwrap();
}
